"""Alembic operations for Citus: distribute a table and undo it, with their comparator.

``import alembic_ext`` registers them on :class:`~alembic.operations.Operations`:

* ``op.create_distributed_table(name, column, shard_count=..., colocate_with=..., schema=...)``
  runs Citus's ``create_distributed_table`` (hash distribution; rows already in the table are
  copied into the shards);
* ``op.undistribute_table(name, schema=...)`` runs ``undistribute_table``, which brings the rows
  back into a local table on the coordinator.

Each is the other's reverse (an undistribute made by autogenerate carries the column and shard
count its reverse needs). For a table the same revision creates, the reverse of the distribution
is nothing: the downgrade's ``drop_table`` drops the shards too.

The comparator (registered as ``alembic_ext.citus``) reads ``pg_dist_partition`` through
:func:`~sa_signals.schema.ddl.citus.read_distribution_state`: a model table with
:class:`~sa_signals.DistributionOptions` that is not distributed gets ``create_distributed_table``;
one distributed by another column is reported with a warning and left alone (moving the
distribution column rewrites every shard: write ``alter_distributed_table`` by hand).

Without the ``citus`` extension an operation warns and does nothing (an error when
``citus_strict=True`` in ``context.configure``). Offline (``--sql``) each statement is wrapped
in a ``DO`` block that runs it only where the extension is installed, so the same script builds a
plain table elsewhere.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

from sa_signals.errors import (
    CitusUnavailableError,
    CitusUnavailableWarning,
    ConfigurationError,
    SignalsWarning,
)
from sa_signals.schema.ddl import citus as ddl
from sa_signals.schema.ddl.postgresql import qualified_name
from sa_signals.schema.options import DistributionOptions, get_distribution_options

from ._warnings import warn
from .autogenerate import CompareContext, register_comparator
from .ops import TimescaleOp

__all__ = [
    "CitusOp",
    "CreateDistributedTableOp",
    "UndistributeTableOp",
    "compare_distribution",
]


class CitusOp(TimescaleOp):
    """Base of the Citus operations: one table, optionally schema-qualified.

    Shares the table-operation shape (``new_table``, ``reverse()``) of the TimescaleDB ones.
    """


def _options(
    column: str, shard_count: int | None, colocate_with: str | None
) -> DistributionOptions:
    # The same validation as the model's options: a typo fails when the migration is written.
    return DistributionOptions(
        column=column, shard_count=shard_count, colocate_with=colocate_with or "default"
    )


@Operations.register_operation("create_distributed_table")
class CreateDistributedTableOp(CitusOp):
    """``create_distributed_table``: hash-distribute a table by ``column`` over the workers."""

    def __init__(
        self,
        table_name: str,
        column: str,
        *,
        shard_count: int | None = None,
        colocate_with: str = "default",
        schema: str | None = None,
    ) -> None:
        super().__init__(table_name, schema=schema)
        options = _options(column, shard_count, colocate_with)
        self.column = options.column
        self.shard_count = options.shard_count
        self.colocate_with = options.colocate_with

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.column, self.shard_count, self.colocate_with)

    @classmethod
    def from_options(
        cls, table_name: str, options: DistributionOptions, *, schema: str | None = None
    ) -> CreateDistributedTableOp:
        """The operation that applies ``options`` to ``table_name``."""
        return cls(
            table_name,
            options.column,
            shard_count=options.shard_count,
            colocate_with=options.colocate_with,
            schema=schema,
        )

    @classmethod
    def create_distributed_table(
        cls,
        operations: Operations,
        table_name: str,
        column: str,
        *,
        shard_count: int | None = None,
        colocate_with: str = "default",
        schema: str | None = None,
    ) -> None:
        """Distribute ``table_name`` by ``column`` (rows it holds are moved to the shards)."""
        operations.invoke(
            cls(
                table_name,
                column,
                shard_count=shard_count,
                colocate_with=colocate_with,
                schema=schema,
            )
        )

    def _opposite(self) -> UndistributeTableOp:
        return UndistributeTableOp(
            self.table_name,
            schema=self.schema,
            _previous=(self.column, self.shard_count, self.colocate_with),
        )


@Operations.register_operation("undistribute_table")
class UndistributeTableOp(CitusOp):
    """``undistribute_table``: turn a distributed table back into a local one (rows kept)."""

    def __init__(
        self,
        table_name: str,
        *,
        schema: str | None = None,
        _previous: tuple[str, int | None, str] | None = None,
    ) -> None:
        super().__init__(table_name, schema=schema)
        #: ``(column, shard_count, colocate_with)`` before this op, for ``reverse()``.
        self._previous = _previous

    @classmethod
    def undistribute_table(
        cls, operations: Operations, table_name: str, *, schema: str | None = None
    ) -> None:
        """Bring ``table_name``'s rows back into a local table on the coordinator."""
        operations.invoke(cls(table_name, schema=schema))

    def _opposite(self) -> CreateDistributedTableOp:
        if self._previous is None:
            raise ValueError(
                f"undistribute_table on {self.table_name!r} is not reversible: the "
                "distribution column is unknown"
            )
        column, shard_count, colocate_with = self._previous
        return CreateDistributedTableOp(
            self.table_name,
            column,
            shard_count=shard_count,
            colocate_with=colocate_with,
            schema=self.schema,
        )


# --------------------------------------------------------------------------- implementations


def is_strict(operations: Operations) -> bool:
    """Whether a missing Citus is an error for this run (``citus_strict`` in ``configure``)."""
    return bool(operations.migration_context.opts.get("citus_strict", False))


def _available(operations: Operations, op: CitusOp, action: str) -> bool:
    """Whether to run ``op`` here (offline: always, guarded in SQL)."""
    context = operations.migration_context
    if context.dialect.name != "postgresql":
        where = f"the {context.dialect.name} dialect"
    elif context.as_sql or ddl.citus_version(operations.get_bind()) is not None:
        return True
    else:
        where = "a database without the citus extension"
    name = qualified_name(op.table_name, op.schema)
    if is_strict(operations):
        raise CitusUnavailableError(
            f"cannot {action} on {name}: this migration runs on {where}; install the citus "
            "extension (coordinator and workers) or turn off citus_strict"
        )
    warn(f"citus not available: skipped {action} on {name} ({where})", CitusUnavailableWarning)
    return False


_DOLLAR_TAG = "$sa_signals$"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _offline(operations: Operations, statement: TextClause, op: CitusOp, action: str) -> Any:
    """The statement as one guarded ``DO`` block: runs only where ``citus`` is installed."""
    dialect = operations.migration_context.dialect
    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    name = qualified_name(op.table_name, op.schema)
    if _DOLLAR_TAG in sql:
        raise ConfigurationError(f"{name} contains {_DOLLAR_TAG!r}, which offline SQL reserves")
    if is_strict(operations):
        otherwise = "RAISE EXCEPTION " + _literal(
            f"cannot {action} on {name}: the citus extension is not installed".replace("%", "%%")
        )
    else:
        otherwise = "RAISE WARNING " + _literal(
            f"citus not available: skipped {action} on {name}".replace("%", "%%")
        )
    body = "PERFORM " + sql.strip()[len("SELECT ") :]
    # ``body`` is our own statement with quoted names and literal-rendered values; the message
    # is escaped as a literal above.
    block = (
        f"DO {_DOLLAR_TAG} BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension "  # noqa: S608
        f"WHERE extname = 'citus') THEN {body}; ELSE {otherwise}; END IF; END {_DOLLAR_TAG}"
    )
    # Escape colons so alembic's own text() pass leaves the literals alone.
    return text(block.replace(":", "\\:"))


def _run(operations: Operations, op: CitusOp, action: str, statement: TextClause) -> None:
    if not _available(operations, op, action):
        return
    if operations.migration_context.as_sql:
        operations.execute(_offline(operations, statement, op, action))
    else:
        operations.execute(statement)


@Operations.implementation_for(CreateDistributedTableOp)
def create_distributed_table(operations: Operations, op: CreateDistributedTableOp) -> None:
    """``SELECT create_distributed_table(...)``."""
    statement = ddl.create_distributed_table_sql(
        op.table_name,
        op.schema,
        op.column,
        shard_count=op.shard_count,
        colocate_with=op.colocate_with,
    )
    _run(operations, op, "create_distributed_table", statement)


@Operations.implementation_for(UndistributeTableOp)
def undistribute_table(operations: Operations, op: UndistributeTableOp) -> None:
    """``SELECT undistribute_table(...)``."""
    statement = ddl.undistribute_table_sql(op.table_name, op.schema)
    _run(operations, op, "undistribute_table", statement)


# --------------------------------------------------------------------------- renderers


def _call(context: AutogenContext, name: str, op: CitusOp, *args: str, **kwargs: str) -> str:
    if context.imports is not None:
        context.imports.add("import alembic_ext")
    prefix = context.opts.get("alembic_module_prefix") or "op."
    parts = [repr(op.table_name), *args, *(f"{key}={value}" for key, value in kwargs.items())]
    if op.schema is not None:
        parts.append(f"schema={op.schema!r}")
    return f"{prefix}{name}({', '.join(parts)})"


@renderers.dispatch_for(CreateDistributedTableOp)
def _render_create(context: AutogenContext, op: CreateDistributedTableOp) -> str:
    extra: dict[str, str] = {}
    if op.shard_count is not None:
        extra["shard_count"] = repr(op.shard_count)
    if op.colocate_with != "default":
        extra["colocate_with"] = repr(op.colocate_with)
    return _call(context, "create_distributed_table", op, repr(op.column), **extra)


@renderers.dispatch_for(UndistributeTableOp)
def _render_undistribute(context: AutogenContext, op: UndistributeTableOp) -> str:
    return _call(context, "undistribute_table", op)


# --------------------------------------------------------------------------- comparator


def diff_distribution(
    table_name: str,
    schema: str | None,
    options: DistributionOptions,
    state: ddl.DistributionState | None,
) -> list[MigrateOperation]:
    """Operations that bring a table in ``state`` to ``options`` (``None``: a new table)."""
    if state is None or not state.is_distributed:
        op = CreateDistributedTableOp.from_options(table_name, options, schema=schema)
        op.new_table = state is None
        return [op]
    name = qualified_name(table_name, schema)
    if state.column != options.column:
        warn(
            f"{name} is distributed by {state.column!r} but the model says {options.column!r}; "
            "autogenerate leaves it alone: changing the distribution column rewrites every "
            'shard (write op.execute("SELECT alter_distributed_table(...)") deliberately)',
            SignalsWarning,
        )
    elif options.shard_count is not None and state.shard_count != options.shard_count:
        warn(
            f"{name} has {state.shard_count} shards but the model says {options.shard_count}; "
            "autogenerate leaves it alone (alter_distributed_table(shard_count => ...) "
            "rewrites every shard)",
            SignalsWarning,
        )
    return []


def compare_distribution(context: CompareContext) -> None:
    """``create_distributed_table`` for each model table with distribution options that the
    database has not distributed (written for new tables too: the revision may run on Citus)."""
    asked, version = False, None  # the database is asked once, when a table needs it
    for table in context.model_tables:
        options = get_distribution_options(table)
        if options is None:
            continue
        if not context.table_exists(table):
            context.add(*diff_distribution(table.name, table.schema, options, None))
            continue
        if not asked:
            asked, version = True, ddl.citus_version(context.connection)
        if version is None:
            warn(
                "citus not installed: cannot compare the distribution of "
                f"{qualified_name(table.name, table.schema)}",
                CitusUnavailableWarning,
            )
            continue
        state = ddl.read_distribution_state(context.connection, table.name, table.schema)
        context.add(*diff_distribution(table.name, table.schema, options, state))


register_comparator("alembic_ext.citus", compare_distribution)
