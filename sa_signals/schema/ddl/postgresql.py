"""TimescaleDB DDL for PostgreSQL: hypertable, compression, policies, and catalog reads.

Names are quoted with the dialect's identifier preparer; values (intervals, relation names) are
bound parameters. ``ALTER TABLE ... SET (...)`` options cannot be bound, so their string values
are rendered as escaped literals of quoted identifiers. The statement builders are shared with
``alembic_ext`` so that hooks and migrations emit the same SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection, Table, bindparam, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause

from ...errors import ExtensionUnavailableError, TimescaleUnavailableError
from ..options import OrderByItem, TimescaleOptions

__all__ = [
    "COLUMNSTORE_VERSION",
    "PRELOADED_EXTENSIONS",
    "TimescaleState",
    "add_compression_policy_sql",
    "add_retention_policy_sql",
    "after_create",
    "create_extension",
    "create_hypertable_sql",
    "disable_compression_sql",
    "enable_compression_sql",
    "ensure_timescale",
    "extension_available",
    "extension_version",
    "interval_literal",
    "preloaded_libraries",
    "qualified_name",
    "read_timescale_state",
    "remove_compression_policy_sql",
    "remove_retention_policy_sql",
    "set_chunk_time_interval_sql",
    "timescale_version",
]

logger = logging.getLogger("sa_signals.ddl")

#: First TimescaleDB release with the columnstore names (``enable_columnstore``,
#: ``add_columnstore_policy``); older releases only know the compression names.
COLUMNSTORE_VERSION = (2, 18)
#: First release with ``by_range()`` dimension builders in ``create_hypertable``.
BY_RANGE_VERSION = (2, 13)

_preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]


def quote(identifier: str) -> str:
    """Quote an identifier for PostgreSQL (always, so names with any case survive)."""
    return _preparer.quote_identifier(identifier)


def qualified_name(name: str, schema: str | None) -> str:
    """``"schema"."name"`` (or ``"name"``), suitable as a bound value cast to ``regclass``."""
    return f"{quote(schema)}.{quote(name)}" if schema else quote(name)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interval_literal(value: timedelta) -> str:
    """A PostgreSQL interval string for ``value`` (``'7 days'``, ``'3600.5 seconds'``...)."""
    days, seconds, micros = value.days, value.seconds, value.microseconds
    parts = []
    if days:
        parts.append(f"{days} days")
    if seconds or micros or not parts:
        parts.append(f"{seconds}.{micros:06d} seconds" if micros else f"{seconds} seconds")
    return " ".join(parts)


def _parse_version(text_version: str) -> tuple[int, ...]:
    numbers = []
    for piece in text_version.split("-")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


def extension_version(connection: Connection, name: str) -> tuple[int, ...] | None:
    """The version of extension ``name`` installed in this database (``pg_extension``), or
    ``None``. This, not ``pg_available_extensions``, decides whether an extension is present."""
    row = connection.execute(
        text("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = :name"),
        {"name": name},
    ).first()
    return None if row is None else _parse_version(row[0])


def timescale_version(connection: Connection) -> tuple[int, ...] | None:
    """The installed ``timescaledb`` extension version in this database, or ``None``."""
    return extension_version(connection, "timescaledb")


def extension_available(connection: Connection, name: str) -> bool:
    """Whether the server has the package of extension ``name`` (``pg_available_extensions``).

    Available is not loadable: an extension that must be preloaded is listed here as soon as
    its files are installed, and ``CREATE EXTENSION`` still fails until the server loads it.
    """
    row = connection.execute(
        text("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = :name"),
        {"name": name},
    ).first()
    return row is not None


#: Extensions whose library must be in ``shared_preload_libraries`` before ``CREATE EXTENSION``.
PRELOADED_EXTENSIONS = frozenset({"timescaledb", "citus"})


def preloaded_libraries(connection: Connection) -> tuple[str, ...] | None:
    """The library names in ``shared_preload_libraries`` (paths and ``.so`` cut), or ``None``
    when this role may not read the setting (superusers and ``pg_read_all_settings`` may)."""
    row = connection.execute(
        text("SELECT setting FROM pg_catalog.pg_settings WHERE name = 'shared_preload_libraries'")
    ).first()
    if row is None:
        return None
    names = []
    for entry in str(row[0] or "").split(","):
        library = entry.strip().strip('"').rsplit("/", 1)[-1]
        library = library[:-3] if library.endswith(".so") else library
        if library:
            names.append(library)
    return tuple(names)


def _loaded(connection: Connection, name: str, libraries: tuple[str, ...] | None) -> bool:
    if libraries is not None:
        return name in libraries
    # Without the right to read the setting, a loaded library still shows its own settings.
    row = connection.execute(
        text("SELECT 1 FROM pg_catalog.pg_settings WHERE starts_with(name, :prefix) LIMIT 1"),
        {"prefix": f"{name}."},
    ).first()
    return row is not None


def create_extension(
    connection: Connection,
    name: str,
    *,
    error: type[ExtensionUnavailableError] = ExtensionUnavailableError,
) -> tuple[int, ...] | None:
    """``CREATE EXTENSION IF NOT EXISTS name``; return the installed version.

    Returns ``None`` when the server does not have the extension's package at all. Raises
    ``error`` (an :class:`~sa_signals.errors.ExtensionUnavailableError`) when the package is
    there but the extension cannot be created, saying what to change: for an extension that
    must be preloaded and is not, ``shared_preload_libraries`` and a restart. The preload is
    checked first because TimescaleDB ends the session (``FATAL``) on an unloaded
    ``CREATE EXTENSION``, which no savepoint could roll back.
    """
    version = extension_version(connection, name)
    if version is not None:
        return version
    if not extension_available(connection, name):
        return None
    libraries = preloaded_libraries(connection)
    if name in PRELOADED_EXTENSIONS and not _loaded(connection, name, libraries):
        current = ", ".join(libraries or ())
        wanted = f"{name}, {current}" if current else name
        now = "" if libraries is None else f" (now {current!r})" if current else " (now empty)"
        raise error(
            f"the {name} extension is installed on this server but not loaded, so CREATE "
            f"EXTENSION {name} would fail: add {name!r} to shared_preload_libraries{now}, "
            f"e.g. shared_preload_libraries = '{wanted}' in postgresql.conf or ALTER SYSTEM SET "
            f"shared_preload_libraries = '{wanted}', then restart PostgreSQL"
        )
    try:
        with connection.begin_nested():
            connection.execute(text(f"CREATE EXTENSION IF NOT EXISTS {quote(name)}"))
    except DBAPIError as exc:
        hint = ""
        if getattr(exc.orig, "sqlstate", None) == "42501":  # insufficient_privilege
            hint = " (run it as a superuser, or as the database owner for a trusted extension)"
        raise error(f"CREATE EXTENSION {name} failed: {str(exc.orig).strip()}{hint}") from exc
    return extension_version(connection, name)


# -- statement builders (shared with alembic_ext) ------------------------------------------


def create_hypertable_sql(
    name: str,
    schema: str | None,
    time_column: str,
    chunk_time_interval: timedelta,
    *,
    if_not_exists: bool = True,
    migrate_data: bool = False,
    version: tuple[int, ...] | None = None,
) -> TextClause:
    """``SELECT create_hypertable(...)``, without TimescaleDB's default indexes."""
    flags = (
        "create_default_indexes => false, "
        f"if_not_exists => {'true' if if_not_exists else 'false'}, "
        f"migrate_data => {'true' if migrate_data else 'false'}"
    )
    if version is None or version >= BY_RANGE_VERSION:
        sql = (
            "SELECT create_hypertable(CAST(:relation AS regclass), "
            f"by_range(:time_column, CAST(:interval AS interval)), {flags})"
        )
    else:
        sql = (
            "SELECT create_hypertable(CAST(:relation AS regclass), CAST(:time_column AS name), "
            f"chunk_time_interval => CAST(:interval AS interval), {flags})"
        )
    return text(sql).bindparams(
        bindparam("relation", qualified_name(name, schema)),
        bindparam("time_column", time_column),
        bindparam("interval", interval_literal(chunk_time_interval)),
    )


def set_chunk_time_interval_sql(
    name: str, schema: str | None, chunk_time_interval: timedelta
) -> TextClause:
    """``SELECT set_chunk_time_interval(...)``: applies to chunks created from now on."""
    return text(
        "SELECT set_chunk_time_interval(CAST(:relation AS regclass), CAST(:interval AS interval))"
    ).bindparams(
        bindparam("relation", qualified_name(name, schema)),
        bindparam("interval", interval_literal(chunk_time_interval)),
    )


def enable_compression_sql(
    name: str,
    schema: str | None,
    segment_by: Sequence[str],
    order_by: Sequence[OrderByItem | str],
    *,
    version: tuple[int, ...] | None = None,
) -> TextClause:
    """``ALTER TABLE ... SET (timescaledb.compress ...)`` (columnstore names on >= 2.18)."""
    items = [OrderByItem.parse(i) if isinstance(i, str) else i for i in order_by]
    segment = ", ".join(quote(column) for column in segment_by)
    order = ", ".join(item.sql(quote(item.column)) for item in items)
    if version is not None and version >= COLUMNSTORE_VERSION:
        keys = (
            "timescaledb.enable_columnstore = true",
            "timescaledb.segmentby",
            "timescaledb.orderby",
        )
    else:
        keys = (
            "timescaledb.compress",
            "timescaledb.compress_segmentby",
            "timescaledb.compress_orderby",
        )
    options = [keys[0], f"{keys[1]} = {_literal(segment)}"]
    if order:
        options.append(f"{keys[2]} = {_literal(order)}")
    sql = f"ALTER TABLE {qualified_name(name, schema)} SET ({', '.join(options)})"
    # text() reads ":word" as a bind parameter; a colon inside a quoted name must stay literal.
    return text(sql.replace(":", "\\:"))


def disable_compression_sql(name: str, schema: str | None) -> TextClause:
    """``ALTER TABLE ... SET (timescaledb.compress = false)``."""
    return text(f"ALTER TABLE {qualified_name(name, schema)} SET (timescaledb.compress = false)")


def add_compression_policy_sql(
    name: str, schema: str | None, compress_after: timedelta, *, version: tuple[int, ...] | None
) -> TextClause:
    """Add the compression (columnstore) policy; ``if_not_exists`` so reruns are no-ops."""
    if version is not None and version >= COLUMNSTORE_VERSION:
        sql = (
            "CALL add_columnstore_policy(CAST(:relation AS regclass), "
            "after => CAST(:after AS interval), if_not_exists => true)"
        )
    else:
        sql = (
            "SELECT add_compression_policy(CAST(:relation AS regclass), "
            "compress_after => CAST(:after AS interval), if_not_exists => true)"
        )
    return text(sql).bindparams(
        bindparam("relation", qualified_name(name, schema)),
        bindparam("after", interval_literal(compress_after)),
    )


def remove_compression_policy_sql(name: str, schema: str | None) -> TextClause:
    """Remove the compression policy if there is one."""
    return text(
        "SELECT remove_compression_policy(CAST(:relation AS regclass), if_exists => true)"
    ).bindparams(bindparam("relation", qualified_name(name, schema)))


def add_retention_policy_sql(name: str, schema: str | None, drop_after: timedelta) -> TextClause:
    """Add the retention policy (drop chunks older than ``drop_after``)."""
    return text(
        "SELECT add_retention_policy(CAST(:relation AS regclass), "
        "drop_after => CAST(:after AS interval), if_not_exists => true)"
    ).bindparams(
        bindparam("relation", qualified_name(name, schema)),
        bindparam("after", interval_literal(drop_after)),
    )


def remove_retention_policy_sql(name: str, schema: str | None) -> TextClause:
    """Remove the retention policy if there is one."""
    return text(
        "SELECT remove_retention_policy(CAST(:relation AS regclass), if_exists => true)"
    ).bindparams(bindparam("relation", qualified_name(name, schema)))


# -- catalog ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimescaleState:
    """What TimescaleDB's catalog says about one table, normalised for comparison."""

    is_hypertable: bool
    time_column: str | None = None
    chunk_time_interval: timedelta | None = None
    compression: bool = False
    segment_by: tuple[str, ...] = ()
    order_by: tuple[OrderByItem, ...] = ()
    compress_after: timedelta | None = None
    drop_after: timedelta | None = None


def read_timescale_state(connection: Connection, name: str, schema: str | None) -> TimescaleState:
    """Read the hypertable, compression and policy settings of ``schema.name``."""
    params = {"schema": schema, "name": name}
    hypertable = connection.execute(
        text(
            "SELECT compression_enabled FROM timescaledb_information.hypertables WHERE "
            "hypertable_schema = COALESCE(:schema, current_schema()) AND hypertable_name = :name"
        ),
        params,
    ).first()
    if hypertable is None:
        return TimescaleState(is_hypertable=False)
    dimension = connection.execute(
        text(
            "SELECT column_name, time_interval FROM timescaledb_information.dimensions "
            "WHERE hypertable_schema = COALESCE(:schema, current_schema()) "
            "AND hypertable_name = :name ORDER BY dimension_number LIMIT 1"
        ),
        params,
    ).first()
    settings = connection.execute(
        text(
            "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc, "
            "orderby_nullsfirst FROM timescaledb_information.compression_settings "
            "WHERE hypertable_schema = COALESCE(:schema, current_schema()) "
            "AND hypertable_name = :name"
        ),
        params,
    ).all()
    segment = tuple(
        row[0] for row in sorted((r for r in settings if r[1] is not None), key=lambda r: r[1])
    )
    order = tuple(
        OrderByItem(
            row[0],
            descending=not row[3],
            # Normalised like OrderByItem.parse: None when it is the direction's default.
            nulls_first=None if bool(row[4]) == (not row[3]) else bool(row[4]),
        )
        for row in sorted((r for r in settings if r[2] is not None), key=lambda r: r[2])
    )
    jobs = connection.execute(
        text(
            "SELECT proc_name, CAST(config ->> 'compress_after' AS interval), "
            "CAST(config ->> 'drop_after' AS interval) FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = COALESCE(:schema, current_schema()) "
            "AND hypertable_name = :name "
            "AND proc_name IN ('policy_compression', 'policy_retention')"
        ),
        params,
    ).all()
    compress_after = next((r[1] for r in jobs if r[0] == "policy_compression"), None)
    drop_after = next((r[2] for r in jobs if r[0] == "policy_retention"), None)
    return TimescaleState(
        is_hypertable=True,
        time_column=dimension[0] if dimension else None,
        chunk_time_interval=dimension[1] if dimension else None,
        compression=bool(hypertable[0]),
        segment_by=segment,
        order_by=order,
        compress_after=compress_after,
        drop_after=drop_after,
    )


# -- hooks --------------------------------------------------------------------------------


def _resolve_version(
    connection: Connection, table: Table, options: TimescaleOptions
) -> tuple[int, ...] | None:
    version = timescale_version(connection)
    if version is None and options.create_extension:
        version = create_extension(connection, "timescaledb", error=TimescaleUnavailableError)
    if version is None:
        where = qualified_name(table.name, table.schema)
        if options.require_timescale:
            raise TimescaleUnavailableError(
                f"the timescaledb extension is not installed in this database, so {where} "
                "cannot become a hypertable; run CREATE EXTENSION timescaledb (or pass "
                "TimescaleOptions(create_extension=True)), or set require_timescale=False"
            )
        logger.warning(
            "timescaledb extension not installed: %s stays a plain PostgreSQL table "
            "(no hypertable, compression or retention)",
            where,
        )
    return version


def ensure_timescale(table: Table, connection: Connection, options: TimescaleOptions) -> bool:
    """Make ``table`` match ``options`` on TimescaleDB, touching only what differs."""
    version = _resolve_version(connection, table, options)
    if version is None:
        return False
    name, schema = table.name, table.schema
    state = read_timescale_state(connection, name, schema)
    if not state.is_hypertable:
        connection.execute(
            create_hypertable_sql(
                name,
                schema,
                options.time_column,
                options.chunk_time_interval,
                migrate_data=True,
                version=version,
            )
        )
        state = read_timescale_state(connection, name, schema)
    elif state.chunk_time_interval != options.chunk_time_interval:
        connection.execute(set_chunk_time_interval_sql(name, schema, options.chunk_time_interval))

    want_compression = options.compression
    if want_compression and (
        not state.compression
        or state.segment_by != options.segment_by
        or state.order_by != options.order_by_items
    ):
        connection.execute(
            enable_compression_sql(
                name, schema, options.segment_by, options.order_by_items, version=version
            )
        )
    compress_after = options.compress_after if want_compression else None
    if state.compress_after != compress_after:
        if state.compress_after is not None:
            connection.execute(remove_compression_policy_sql(name, schema))
        if compress_after is not None:
            connection.execute(
                add_compression_policy_sql(name, schema, compress_after, version=version)
            )
    if not want_compression and state.compression:
        connection.execute(disable_compression_sql(name, schema))
    if state.drop_after != options.drop_after:
        if state.drop_after is not None:
            connection.execute(remove_retention_policy_sql(name, schema))
        if options.drop_after is not None:
            connection.execute(add_retention_policy_sql(name, schema, options.drop_after))
    return True


def after_create(table: Table, connection: Connection, options: TimescaleOptions) -> None:
    """``after_create`` hook: turn the new table into a configured hypertable when possible."""
    ensure_timescale(table, connection, options)
