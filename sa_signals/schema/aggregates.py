"""Continuous aggregates as schema objects of the host's ``MetaData``, and the signals rollup.

A :class:`ContinuousAggregate` is declared next to the tables it reads::

    hourly = ContinuousAggregate(
        "signals_hourly",
        metadata,
        select(time_bucket(timedelta(hours=1), t.c.ts).label("bucket"), ...).group_by(...),
        refresh=RefreshPolicy(start_offset=timedelta(days=3), end_offset=timedelta(hours=1),
                              schedule_interval=timedelta(minutes=30)),
    )

``metadata.create_all()`` creates it after the tables (so after its hypertable), with its refresh,
compression and retention policies; ``metadata.drop_all()`` drops it before them. Aggregates are
created in dependency order (a hierarchical aggregate after the one it reads) and dropped in
reverse. Without TimescaleDB (plain PostgreSQL, SQLite) ``create_all`` skips them with one
warning on the ``sa_signals.ddl`` logger.

The view body cannot take parameters, so it is compiled with ``literal_binds``; every bound value
in it is checked first (strings, numbers, booleans, dates, times and intervals only), and the
hyperfunctions render their own constants.

:func:`signals_rollup` builds the opt-in rollup of a signals table (also made by
``TimescaleOptions(rollups=(...))``): per provider, symbol, name and bucket the count, sum, min,
max, mean and M2 (sum of squared deviations from the bucket mean, in two magnitude groups), the
last value and its time, and the first time. :func:`combine_moments` merges buckets exactly
(Chan et al.'s formula).
"""

from __future__ import annotations

import decimal
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from time import monotonic, sleep
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    MetaData,
    Select,
    Table,
    bindparam,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import CompileError, DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import DDLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnClause, Label, TextClause
from sqlalchemy.sql.selectable import Alias, FromClause, Join, TableClause

from ..errors import ConfigurationError
from .ddl import postgresql as ddl
from .functions import TIMESCALE_COMPILE_OPTION, last, time_bucket
from .options import get_timescale_options, table_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect

__all__ = [
    "AGGREGATES_INFO_KEY",
    "ROLLUPS_INFO_KEY",
    "AlterContinuousAggregate",
    "ContinuousAggregate",
    "ContinuousAggregateState",
    "CreateContinuousAggregate",
    "DropContinuousAggregate",
    "Moments",
    "RefreshPolicy",
    "Rollup",
    "add_continuous_aggregate_policy_sql",
    "combine_moments",
    "decompress_sql",
    "get_continuous_aggregates",
    "get_rollups",
    "read_continuous_aggregate",
    "refresh_continuous_aggregate_sql",
    "remove_continuous_aggregate_policy_sql",
    "rollup_name",
    "signals_rollup",
]

logger = logging.getLogger("sa_signals.ddl")

#: Key of ``MetaData.info`` holding the aggregates declared on it, by ``(schema, name)``.
AGGREGATES_INFO_KEY = "sa_signals.continuous_aggregates"
#: Key of ``Table.info`` holding the :class:`Rollup` s of a signals table.
ROLLUPS_INFO_KEY = "sa_signals.rollups"
_TABLE_INFO_KEY = "sa_signals.continuous_aggregate"

_DEFINITION_DIALECT = postgresql.dialect(paramstyle="named")  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------- options


def _interval(name: str, value: object, *, optional: bool, positive: bool = True) -> None:
    if value is None:
        if optional:
            return
        raise ConfigurationError(f"{name} must be a datetime.timedelta, not None")
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a datetime.timedelta, got {value!r}")
    if positive and value <= timedelta(0):
        raise ConfigurationError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class RefreshPolicy:
    """When TimescaleDB refreshes an aggregate: every ``schedule_interval``, the buckets between
    ``now - start_offset`` and ``now - end_offset`` (``None``: unbounded on that side)."""

    start_offset: timedelta | None
    end_offset: timedelta | None
    schedule_interval: timedelta

    def __post_init__(self) -> None:
        _interval("start_offset", self.start_offset, optional=True, positive=False)
        _interval("end_offset", self.end_offset, optional=True, positive=False)
        _interval("schedule_interval", self.schedule_interval, optional=False)
        if (
            self.start_offset is not None
            and self.end_offset is not None
            and self.start_offset <= self.end_offset
        ):
            raise ConfigurationError(
                f"start_offset ({self.start_offset}) must be larger than end_offset "
                f"({self.end_offset}): the window is [now - start_offset, now - end_offset)"
            )


# --------------------------------------------------------------------------- the schema object


class ContinuousAggregate:
    """A TimescaleDB continuous aggregate declared on the host's ``MetaData``.

    ``definition`` is a ``select()`` grouping by a :func:`~sa_signals.schema.functions.time_bucket`
    of a hypertable's time column (or of another aggregate's bucket: hierarchical aggregates);
    every selected expression needs a name (``.label()``). ``materialized_only=False`` turns on
    real-time aggregation (recent rows not yet materialized are aggregated at query time).
    ``compression`` (implied by ``compress_after``) compresses the materialized data;
    ``drop_after`` is a retention policy on it.

    ``table`` (and ``c``) is a :class:`~sqlalchemy.Table` for querying the aggregate; it lives in
    a private ``MetaData`` so that ``create_all`` and Alembic never take it for a table.
    """

    def __init__(
        self,
        name: str,
        metadata: MetaData,
        definition: Select[Any],
        *,
        schema: str | None = None,
        materialized_only: bool = True,
        refresh: RefreshPolicy | None = None,
        compression: bool | None = None,
        compress_after: timedelta | None = None,
        drop_after: timedelta | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"aggregate name must be a non-empty string, got {name!r}")
        if not isinstance(metadata, MetaData):
            raise ConfigurationError(f"metadata must be a MetaData, got {metadata!r}")
        if not isinstance(definition, Select):
            raise ConfigurationError(f"definition must be a select(), got {definition!r}")
        if not isinstance(materialized_only, bool):
            raise ConfigurationError(f"materialized_only must be a bool, got {materialized_only!r}")
        if refresh is not None and not isinstance(refresh, RefreshPolicy):
            raise ConfigurationError(f"refresh must be a RefreshPolicy, got {refresh!r}")
        _interval("compress_after", compress_after, optional=True)
        _interval("drop_after", drop_after, optional=True)
        if compression is None:
            compression = compress_after is not None
        elif compression is False and compress_after is not None:
            raise ConfigurationError("compress_after needs compression=True")
        self.name = name
        self.metadata = metadata
        self.schema = schema if schema is not None else metadata.schema
        self.definition = definition
        self.materialized_only = materialized_only
        self.refresh = refresh
        self.compression = bool(compression)
        self.compress_after = compress_after
        self.drop_after = drop_after
        _check_values(definition)
        self.sources = _sources(definition)
        self.table = Table(
            name,
            MetaData(),
            *(Column(column_name, column.type) for column_name, column in _columns(definition)),
            schema=self.schema,
            info={_TABLE_INFO_KEY: self},
        )
        _register(self)

    @property
    def c(self) -> Any:
        """The aggregate's columns (``aggregate.table.c``)."""
        return self.table.c

    @property
    def key(self) -> tuple[str | None, str]:
        """``(schema, name)``."""
        return (self.schema, self.name)

    @property
    def qualified_name(self) -> str:
        """The quoted, schema-qualified name."""
        return ddl.qualified_name(self.name, self.schema)

    @property
    def depends_on(self) -> tuple[ContinuousAggregate, ...]:
        """The aggregates this one reads (hierarchical aggregates)."""
        return tuple(source for source in self.sources if isinstance(source, ContinuousAggregate))

    def definition_sql(self, dialect: Dialect | None = None) -> str:
        """The view body as SQL text with its constants inline (TimescaleDB's function forms)."""
        compiled = self.definition.compile(
            dialect=dialect or _DEFINITION_DIALECT,
            compile_kwargs={"literal_binds": True, TIMESCALE_COMPILE_OPTION: True},
        )
        return str(compiled)

    def __repr__(self) -> str:
        return f"ContinuousAggregate({self.qualified_name})"

    # -- DDL -------------------------------------------------------------------------------

    def create(self, connection: Connection, *, checkfirst: bool = True) -> bool:
        """Create the aggregate and its policies; ``False`` when skipped (no TimescaleDB, or it
        exists and ``checkfirst``). Logs the skip; :meth:`ContinuousAggregate.create_all` logs
        once for many."""
        version = _timescale(connection)
        if version is None:
            logger.warning(
                "timescaledb extension not installed: continuous aggregate %s not created",
                self.qualified_name,
            )
            return False
        return self._create(connection, version, checkfirst=checkfirst)

    def _create(
        self, connection: Connection, version: tuple[int, ...], *, checkfirst: bool
    ) -> bool:
        if checkfirst and _exists(connection, self.name, self.schema):
            return False
        connection.execute(
            CreateContinuousAggregate(
                self.name,
                self.definition,
                schema=self.schema,
                materialized_only=self.materialized_only,
            )
        )
        for statement in self.policy_statements(version):
            connection.execute(statement)
        return True

    def policy_statements(self, version: tuple[int, ...] | None) -> list[Any]:
        """What follows ``CREATE``: refresh policy, compression and its policy, retention."""
        statements: list[Any] = []
        if self.refresh is not None:
            statements.append(
                add_continuous_aggregate_policy_sql(self.name, self.schema, self.refresh)
            )
        if self.compression:
            statements.append(
                AlterContinuousAggregate(
                    self.name, schema=self.schema, compression=True, version=version
                )
            )
        if self.compress_after is not None:
            statements.append(
                ddl.add_compression_policy_sql(
                    self.name, self.schema, self.compress_after, version=version
                )
            )
        if self.drop_after is not None:
            statements.append(ddl.add_retention_policy_sql(self.name, self.schema, self.drop_after))
        return statements

    def drop(self, connection: Connection, *, checkfirst: bool = True) -> None:
        """Drop the aggregate (its policies and materialized data go with it)."""
        if connection.dialect.name != "postgresql":
            return
        connection.execute(
            DropContinuousAggregate(self.name, schema=self.schema, if_exists=checkfirst)
        )

    def refresh_now(
        self,
        connection: Connection,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        wait: float = 60.0,
    ) -> None:
        """Materialize ``[start, end)`` now (``None``: unbounded).

        TimescaleDB refuses to refresh inside a transaction: ``connection`` must be in autocommit
        mode (``engine.connect().execution_options(isolation_level="AUTOCOMMIT")``).

        While a refresh of an overlapping window runs elsewhere (the refresh policy's job,
        another session), TimescaleDB refuses this one ("due to a concurrent refresh"). That
        refresh started earlier and may miss later writes, so this call waits for it and
        retries, for up to ``wait`` seconds (0: raise at once); then the server's error is
        raised.
        """
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise ConfigurationError(f"wait must be a number of seconds >= 0, got {wait!r}")
        statement = refresh_continuous_aggregate_sql(self.name, self.schema, start, end)
        deadline = monotonic() + wait
        delay = 0.05
        while True:
            try:
                connection.execute(statement)
                return
            except DBAPIError as exc:
                if not _concurrent_refresh(exc) or monotonic() + delay > deadline:
                    raise
            sleep(delay)
            delay = min(delay * 2, 1.0)


def _concurrent_refresh(exc: DBAPIError) -> bool:
    """Whether TimescaleDB refused a refresh because one of an overlapping window runs."""
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "55P03" and "concurrent refresh" in str(orig)


def _columns(definition: Select[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for column in definition.selected_columns:
        if isinstance(column, Label) or isinstance(column, ColumnClause):
            name = column.name
        else:
            name = None
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"every column of a continuous aggregate needs a name: label {column!r} "
                "with .label('name')"
            )
        out.append((name, column))
    names = [name for name, _ in out]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigurationError(f"duplicate column names in the aggregate: {duplicates}")
    return out


def _sources(definition: Select[Any]) -> tuple[Table | TableClause | ContinuousAggregate, ...]:
    found: list[Table | TableClause | ContinuousAggregate] = []

    def walk(element: FromClause) -> None:
        if isinstance(element, Join):
            walk(element.left)
            walk(element.right)
        elif isinstance(element, Alias):
            walk(element.element)
        elif isinstance(element, TableClause):
            owner = element.info.get(_TABLE_INFO_KEY) if isinstance(element, Table) else None
            source = owner if isinstance(owner, ContinuousAggregate) else element
            if source not in found:
                found.append(source)

    for element in definition.get_final_froms():
        walk(element)
    if not found:
        raise ConfigurationError("a continuous aggregate must select from a hypertable")
    return tuple(found)


_LITERAL_TYPES = (str, int, float, decimal.Decimal, datetime, date, time, timedelta)


def _check_value(value: object, where: BindParameter[Any]) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, where)
        return
    if not isinstance(value, _LITERAL_TYPES):
        raise ConfigurationError(
            f"continuous aggregate definitions cannot take parameters and {value!r} "
            f"({type(value).__name__}, in {where.key!r}) cannot be written inline safely"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigurationError(f"non-finite number {value!r} in an aggregate definition")
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        raise ConfigurationError(f"non-finite number {value!r} in an aggregate definition")
    if isinstance(value, str) and "\x00" in value:
        raise ConfigurationError("NUL character in a string of an aggregate definition")


def _check_values(definition: Select[Any]) -> None:
    """Only plain values are rendered into the view body (it cannot take parameters)."""
    for element in visitors.iterate(definition):
        if isinstance(element, BindParameter):
            if element.callable is not None:
                raise ConfigurationError(
                    f"bound parameter {element.key!r} has a callable value; continuous "
                    "aggregate definitions need constants"
                )
            _check_value(element.value, element)
        elif isinstance(element, TextClause):
            raise ConfigurationError(
                "text() fragments cannot be checked; build the definition from SQLAlchemy "
                "expressions (literal_column() for trusted SQL)"
            )


# --------------------------------------------------------------------------- registry, events


def get_continuous_aggregates(metadata: MetaData) -> tuple[ContinuousAggregate, ...]:
    """The aggregates declared on ``metadata``, sources before the aggregates that read them."""
    registry: dict[tuple[str | None, str], ContinuousAggregate] = metadata.info.get(
        AGGREGATES_INFO_KEY, {}
    )
    ordered: list[ContinuousAggregate] = []
    visiting: set[int] = set()

    def visit(aggregate: ContinuousAggregate) -> None:
        if aggregate in ordered:
            return
        if id(aggregate) in visiting:
            raise ConfigurationError(f"continuous aggregates read each other: {aggregate!r}")
        visiting.add(id(aggregate))
        for source in aggregate.depends_on:
            visit(source)
        visiting.discard(id(aggregate))
        ordered.append(aggregate)

    for aggregate in registry.values():
        visit(aggregate)
    return tuple(ordered)


def _register(aggregate: ContinuousAggregate) -> None:
    metadata = aggregate.metadata
    registry: dict[tuple[str | None, str], ContinuousAggregate] | None = metadata.info.get(
        AGGREGATES_INFO_KEY
    )
    if registry is None:
        registry = metadata.info[AGGREGATES_INFO_KEY] = {}
        event.listen(metadata, "after_create", _after_create)
        event.listen(metadata, "before_drop", _before_drop)
    fullname = f"{aggregate.schema}.{aggregate.name}" if aggregate.schema else aggregate.name
    if aggregate.key in registry or fullname in metadata.tables:
        raise ConfigurationError(f"{fullname!r} is already defined on this MetaData")
    registry[aggregate.key] = aggregate


def _timescale(connection: Connection) -> tuple[int, ...] | None:
    if connection.dialect.name != "postgresql":
        return None
    return ddl.timescale_version(connection)


def _exists(connection: Connection, name: str, schema: str | None) -> bool:
    row = connection.execute(
        text("SELECT to_regclass(:relation)"),
        {"relation": ddl.qualified_name(name, schema)},
    ).first()
    return row is not None and row[0] is not None


def _after_create(metadata: MetaData, connection: Connection, **kw: Any) -> None:
    aggregates = get_continuous_aggregates(metadata)
    if not aggregates:
        return
    version = _timescale(connection)
    if version is None:
        where = (
            "a database without the timescaledb extension"
            if connection.dialect.name == "postgresql"
            else connection.dialect.name
        )
        logger.warning(
            "continuous aggregates need TimescaleDB; not created on %s: %s",
            where,
            ", ".join(aggregate.qualified_name for aggregate in aggregates),
        )
        return
    checkfirst = bool(kw.get("checkfirst", True))
    for aggregate in aggregates:
        aggregate._create(connection, version, checkfirst=checkfirst)


def _before_drop(metadata: MetaData, connection: Connection, **kw: Any) -> None:
    if connection.dialect.name != "postgresql":
        return
    checkfirst = bool(kw.get("checkfirst", True))
    for aggregate in reversed(get_continuous_aggregates(metadata)):
        aggregate.drop(connection, checkfirst=checkfirst)


# --------------------------------------------------------------------------- DDL elements


class CreateContinuousAggregate(ExecutableDDLElement):
    """``CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous) AS ... WITH NO DATA``.

    ``definition`` is a ``select()`` (compiled with its constants inline) or SQL text, as
    migrations store it.
    """

    def __init__(
        self,
        name: str,
        definition: Select[Any] | str,
        *,
        schema: str | None = None,
        materialized_only: bool = True,
    ) -> None:
        self.name = name
        self.schema = schema
        self.definition = definition
        self.materialized_only = materialized_only


class DropContinuousAggregate(ExecutableDDLElement):
    """``DROP MATERIALIZED VIEW [IF EXISTS] ...`` (policies and materialized data go too)."""

    def __init__(self, name: str, *, schema: str | None = None, if_exists: bool = False) -> None:
        self.name = name
        self.schema = schema
        self.if_exists = if_exists


class AlterContinuousAggregate(ExecutableDDLElement):
    """``ALTER MATERIALIZED VIEW ... SET (...)``: real-time aggregation and compression.

    ``version`` picks the compression option's name (``enable_columnstore`` on 2.18+).
    """

    def __init__(
        self,
        name: str,
        *,
        schema: str | None = None,
        materialized_only: bool | None = None,
        compression: bool | None = None,
        version: tuple[int, ...] | None = None,
    ) -> None:
        if materialized_only is None and compression is None:
            raise ConfigurationError("nothing to alter: give materialized_only or compression")
        self.name = name
        self.schema = schema
        self.materialized_only = materialized_only
        self.compression = compression
        self.version = version


def _percent_safe(compiler: DDLCompiler, sql: str) -> str:
    # DDL runs with a parameter dict: "format" paramstyles would read '%' as a placeholder.
    if compiler.dialect.paramstyle in ("format", "pyformat"):
        return sql.replace("%", "%%")
    return sql


def _bool(value: bool) -> str:
    return "true" if value else "false"


@compiles(CreateContinuousAggregate)
@compiles(DropContinuousAggregate)
@compiles(AlterContinuousAggregate)
def _not_postgresql(element: ExecutableDDLElement, compiler: DDLCompiler, **kw: Any) -> str:
    raise CompileError(
        f"continuous aggregates need TimescaleDB (PostgreSQL), not {compiler.dialect.name}"
    )


@compiles(CreateContinuousAggregate, "postgresql")
def _create_postgresql(element: CreateContinuousAggregate, compiler: DDLCompiler, **kw: Any) -> str:
    if isinstance(element.definition, str):
        body = _percent_safe(compiler, element.definition)
    else:
        body = compiler.sql_compiler.process(
            element.definition, literal_binds=True, **{TIMESCALE_COMPILE_OPTION: True}
        )
    name = ddl.qualified_name(element.name, element.schema)
    options = (
        "timescaledb.continuous, "
        f"timescaledb.materialized_only = {_bool(element.materialized_only)}"
    )
    return f"CREATE MATERIALIZED VIEW {name} WITH ({options}) AS {body} WITH NO DATA"


@compiles(DropContinuousAggregate, "postgresql")
def _drop_postgresql(element: DropContinuousAggregate, compiler: DDLCompiler, **kw: Any) -> str:
    exists = "IF EXISTS " if element.if_exists else ""
    return f"DROP MATERIALIZED VIEW {exists}{ddl.qualified_name(element.name, element.schema)}"


@compiles(AlterContinuousAggregate, "postgresql")
def _alter_postgresql(element: AlterContinuousAggregate, compiler: DDLCompiler, **kw: Any) -> str:
    options = []
    if element.materialized_only is not None:
        options.append(f"timescaledb.materialized_only = {_bool(element.materialized_only)}")
    if element.compression is not None:
        version = element.version
        key = (
            "timescaledb.enable_columnstore"
            if version is not None and version >= ddl.COLUMNSTORE_VERSION
            else "timescaledb.compress"
        )
        options.append(f"{key} = {_bool(element.compression)}")
    name = ddl.qualified_name(element.name, element.schema)
    return f"ALTER MATERIALIZED VIEW {name} SET ({', '.join(options)})"


# --------------------------------------------------------------------------- function calls


def _interval_param(name: str, value: timedelta | None) -> BindParameter[Any]:
    return bindparam(name, None if value is None else ddl.interval_literal(value))


def add_continuous_aggregate_policy_sql(
    name: str, schema: str | None, policy: RefreshPolicy
) -> TextClause:
    """``add_continuous_aggregate_policy(...)``; ``if_not_exists`` so reruns are no-ops."""
    return text(
        "SELECT add_continuous_aggregate_policy(CAST(:relation AS regclass), "
        "start_offset => CAST(:start_offset AS interval), "
        "end_offset => CAST(:end_offset AS interval), "
        "schedule_interval => CAST(:schedule_interval AS interval), if_not_exists => true)"
    ).bindparams(
        bindparam("relation", ddl.qualified_name(name, schema)),
        _interval_param("start_offset", policy.start_offset),
        _interval_param("end_offset", policy.end_offset),
        _interval_param("schedule_interval", policy.schedule_interval),
    )


def remove_continuous_aggregate_policy_sql(name: str, schema: str | None) -> TextClause:
    """Remove the refresh policy, if there is one."""
    return text(
        "SELECT remove_continuous_aggregate_policy(CAST(:relation AS regclass), if_exists => true)"
    ).bindparams(bindparam("relation", ddl.qualified_name(name, schema)))


def decompress_sql(name: str, schema: str | None) -> TextClause:
    """Decompress every compressed chunk of a hypertable or aggregate (before disabling it)."""
    return text(
        "SELECT decompress_chunk(chunk, true) "
        "FROM show_chunks(CAST(:relation AS regclass)) AS chunk"
    ).bindparams(bindparam("relation", ddl.qualified_name(name, schema)))


def refresh_continuous_aggregate_sql(
    name: str, schema: str | None, start: datetime | None, end: datetime | None
) -> TextClause:
    """``CALL refresh_continuous_aggregate(...)`` (cannot run inside a transaction)."""
    return text(
        "CALL refresh_continuous_aggregate(CAST(:relation AS regclass), "
        "CAST(:window_start AS timestamptz), CAST(:window_end AS timestamptz))"
    ).bindparams(
        bindparam("relation", ddl.qualified_name(name, schema)),
        bindparam("window_start", start),
        bindparam("window_end", end),
    )


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class ContinuousAggregateState:
    """What TimescaleDB's catalog says about one continuous aggregate, normalised."""

    name: str
    schema: str
    definition: str
    materialized_only: bool
    compression: bool
    refresh: RefreshPolicy | None
    compress_after: timedelta | None
    drop_after: timedelta | None
    source_schema: str
    source_name: str


def read_continuous_aggregate(
    connection: Connection, name: str, schema: str | None
) -> ContinuousAggregateState | None:
    """The catalog's view of ``schema.name``, or ``None`` if it is not a continuous aggregate."""
    params = {"schema": schema, "name": name}
    row = connection.execute(
        text(
            "SELECT view_schema, materialized_only, compression_enabled, view_definition, "
            "hypertable_schema, hypertable_name "
            "FROM timescaledb_information.continuous_aggregates "
            "WHERE view_schema = COALESCE(:schema, current_schema()) AND view_name = :name"
        ),
        params,
    ).first()
    if row is None:
        return None
    jobs = connection.execute(
        text(
            "SELECT proc_name, schedule_interval, "
            "CAST(config ->> 'start_offset' AS interval), "
            "CAST(config ->> 'end_offset' AS interval), "
            "CAST(config ->> 'compress_after' AS interval), "
            "CAST(config ->> 'drop_after' AS interval) "
            "FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = COALESCE(:schema, current_schema()) "
            "AND hypertable_name = :name"
        ),
        params,
    ).all()
    refresh = next(
        (
            RefreshPolicy(start_offset=job[2], end_offset=job[3], schedule_interval=job[1])
            for job in jobs
            if job[0] == "policy_refresh_continuous_aggregate"
        ),
        None,
    )
    return ContinuousAggregateState(
        name=name,
        schema=row[0],
        definition=row[3],
        materialized_only=bool(row[1]),
        compression=bool(row[2]),
        refresh=refresh,
        compress_after=next((job[4] for job in jobs if job[0] == "policy_compression"), None),
        drop_after=next((job[5] for job in jobs if job[0] == "policy_retention"), None),
        source_schema=row[4],
        source_name=row[5],
    )


# --------------------------------------------------------------------------- the signals rollup


@dataclass(frozen=True)
class Rollup:
    """One rollup level of a signals table: its bucket width and its aggregate."""

    width: timedelta
    aggregate: ContinuousAggregate


#: The rollup's columns besides ``provider, symbol, name, bucket``.
ROLLUP_COLUMNS: tuple[str, ...] = (
    "signal_count",
    "min_value",
    "max_value",
    "mean_value",
    "m2_value",
    "large_count",
    "large_mean",
    "large_m2",
    "last_value",
    "last_ts",
    "first_ts",
)

#: Values of larger magnitude are rolled up apart (``large_*``), multiplied by
#: :data:`ROLLUP_SCALE_DOWN`: PostgreSQL raises an error, rather than returning infinity, when a
#: float sum or sum of squares overflows, which would stop the aggregate's refresh for good.
#: (The same split as the raw-table queries, :data:`sa_signals.read.queries.LARGE_VALUE`.)
ROLLUP_LARGE_VALUE = 2.0**460
ROLLUP_SCALE_DOWN = 2.0**-600

_UNITS = (("d", timedelta(days=1)), ("h", timedelta(hours=1)), ("m", timedelta(minutes=1)))


def rollup_name(table_name: str, width: timedelta) -> str:
    """``signals_1h``, ``signals_1d``, ``signals_15m``, ``signals_30s``..."""
    for suffix, unit in _UNITS:
        if width % unit == timedelta(0):
            return f"{table_name}_{width // unit}{suffix}"
    return f"{table_name}_{width // timedelta(seconds=1)}s"


def _default_refresh(width: timedelta, drop_after: timedelta | None) -> RefreshPolicy:
    start = timedelta(days=30)
    if drop_after is not None:
        # Never refresh over raw data that retention has dropped: that would empty buckets.
        start = min(start, drop_after - width)
    if start < 3 * width:
        raise ConfigurationError(
            f"a {width} rollup needs a refresh window of at least three buckets, but the "
            f"table's retention (drop_after={drop_after}) leaves {start}; build it with "
            "signals_rollup(..., refresh=RefreshPolicy(...)) or drop the rollup"
        )
    return RefreshPolicy(
        start_offset=start,
        end_offset=width,
        schedule_interval=min(width, timedelta(hours=1)),
    )


def signals_rollup(
    table: Table | object,
    width: timedelta,
    *,
    name: str | None = None,
    materialized_only: bool = True,
    refresh: RefreshPolicy | None = None,
    compress_after: timedelta | None = None,
    drop_after: timedelta | None = None,
) -> ContinuousAggregate:
    """The rollup of a signals table at ``width``, declared on the table's ``MetaData``.

    Per provider, symbol, name and bucket: ``signal_count``, ``min_value``, ``max_value``,
    ``mean_value`` and ``m2_value`` (mean and sum of squared deviations from it of the values
    with ``|v| <= 2**460``, every value of any real series: with their count they give an exact
    sample standard deviation over any set of buckets, see :func:`combine_moments`),
    ``large_count``, ``large_mean`` and ``large_m2`` (the same for the larger values, multiplied
    by ``2**-600`` so that nothing overflows), ``last_value`` and ``last_ts``, ``first_ts``.
    The small group's count is ``signal_count - large_count``.

    Every level reads the signals table itself, not a finer level: merging M2 across buckets
    inside an aggregate needs the merged mean first, which a continuous aggregate cannot compute
    (the one-pass alternative, sums of squares, loses digits: measured 1e-5 relative on values
    around 50000). The default refresh policy covers the last 30 days (less when the table's
    retention is shorter) up to one bucket ago, every ``min(width, 1 hour)``.
    """
    _interval("width", width, optional=False)
    if width % timedelta(seconds=1):
        raise ConfigurationError(f"rollup width must be whole seconds, got {width!r}")
    table = table_of(table)
    options = get_timescale_options(table)
    c = table.c
    time_column = c[options.time_column if options is not None else "ts"]
    if refresh is None:
        refresh = _default_refresh(width, options.drop_after if options is not None else None)
    bucket = time_bucket(width, time_column).label("bucket")
    small = func.abs(c.value) <= literal(ROLLUP_LARGE_VALUE, Float())
    large = func.abs(c.value) > literal(ROLLUP_LARGE_VALUE, Float())
    scaled = c.value * literal(ROLLUP_SCALE_DOWN, Float())
    definition = select(
        c.provider,
        c.symbol,
        c.name,
        bucket,
        func.count().label("signal_count"),
        func.min(c.value).label("min_value"),
        func.max(c.value).label("max_value"),
        # PostgreSQL's var_pop is computed with the Youngs-Cramer update: stable, unlike a
        # sum of squares. Two magnitude groups, so that nothing can overflow (see
        # ROLLUP_LARGE_VALUE); the large group is scaled down by a power of two (exact).
        func.avg(c.value).filter(small).label("mean_value"),
        (func.var_pop(c.value).filter(small) * func.count().filter(small)).label("m2_value"),
        func.count().filter(large).label("large_count"),
        func.avg(scaled).filter(large).label("large_mean"),
        (func.var_pop(scaled).filter(large) * func.count().filter(large)).label("large_m2"),
        last(c.value, time_column).label("last_value"),
        func.max(time_column).label("last_ts"),
        func.min(time_column).label("first_ts"),
    ).group_by(c.provider, c.symbol, c.name, bucket)
    aggregate = ContinuousAggregate(
        name or rollup_name(table.name, width),
        table.metadata,
        definition,
        schema=table.schema,
        materialized_only=materialized_only,
        refresh=refresh,
        compress_after=compress_after,
        drop_after=drop_after,
    )
    rollups = (*get_rollups(table), Rollup(width, aggregate))
    table.info[ROLLUPS_INFO_KEY] = tuple(sorted(rollups, key=lambda rollup: rollup.width))
    return aggregate


def get_rollups(table: Table | object) -> tuple[Rollup, ...]:
    """The rollups declared for ``table`` (a ``Table`` or a mapped class), narrowest first."""
    rollups: tuple[Rollup, ...] = table_of(table).info.get(ROLLUPS_INFO_KEY, ())
    return rollups


@dataclass(frozen=True)
class Moments:
    """Count, mean and M2 (sum of squared deviations from the mean) of a set of values."""

    count: int
    mean: float
    m2: float
    #: The standard deviation computed in scaled units (finite even where ``m2`` is ``inf``).
    scaled_stddev: float | None = field(default=None, repr=False, compare=False)

    @property
    def sample_variance(self) -> float | None:
        """``m2 / (count - 1)``; ``None`` below two values."""
        return self.m2 / (self.count - 1) if self.count > 1 else None

    @property
    def sample_stddev(self) -> float | None:
        """The sample standard deviation; ``None`` below two values."""
        if self.count > 1 and self.scaled_stddev is not None:
            return self.scaled_stddev
        variance = self.sample_variance
        return None if variance is None else math.sqrt(max(variance, 0.0))


def combine_moments(parts: Iterable[tuple[int, float, float]]) -> Moments:
    """Merge per-bucket ``(count, mean, m2)`` triples exactly (Chan, Golub and LeVeque).

    Two passes: the overall mean first, then each bucket's M2 plus its count times the squared
    distance of its mean from the overall mean. Buckets with a zero count are ignored. Works in
    units scaled by a power of two (exact) chosen from the largest mean and spread, so no
    intermediate overflows whatever the magnitude; an M2 beyond the float range is ``inf``.
    """
    rows = [(int(n), float(mean), float(m2)) for n, mean, m2 in parts if n]
    total = sum(n for n, _, _ in rows)
    if total == 0:
        return Moments(0, math.nan, 0.0)
    largest = max(max(abs(m), math.sqrt(max(m2, 0.0) / n)) for n, m, m2 in rows)
    # 2**exponent >= largest: scaled means and spreads are at most 1 (or tiny values kept).
    exponent = math.frexp(largest)[1] if largest > 1.0 and math.isfinite(largest) else 0
    down = math.ldexp(1.0, -exponent)
    scaled = [(n, m * down, m2 * down * down) for n, m, m2 in rows]
    mean = math.fsum(n * m for n, m, _ in scaled) / total
    m2 = math.fsum(m2 + n * ((m - mean) * (m - mean)) for n, m, m2 in scaled)
    up = math.ldexp(1.0, exponent)
    stddev = math.sqrt(max(m2, 0.0) / (total - 1)) * up if total > 1 else None
    return Moments(total, mean * up, m2 * up * up, stddev)
