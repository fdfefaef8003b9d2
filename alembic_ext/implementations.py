"""How each TimescaleDB operation runs: the SQL comes from :mod:`sa_signals.schema.ddl.postgresql`.

Online, the installed TimescaleDB version picks the statement names (columnstore names on 2.18+).
Without the ``timescaledb`` extension an operation issues a
:class:`~sa_signals.TimescaleUnavailableWarning` and does nothing, unless strict mode is on
(:func:`configure`, or ``timescaledb_strict=True`` in ``context.configure``), which raises
:class:`~sa_signals.errors.TimescaleUnavailableError` instead.

Offline (``alembic upgrade --sql``) the database cannot be asked, so the SQL targets
``timescaledb_version`` from ``context.configure`` (default ``2.0``: the compression names and the
``create_hypertable`` signature that every 2.x release accepts), with values rendered as literals.
Each statement is guarded like an online run: a ``DO`` block runs it only where the
``timescaledb`` extension is installed and otherwise raises a ``WARNING`` (an ``EXCEPTION`` in
strict mode), so the same script also builds plain tables on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from alembic.operations import Operations
from sqlalchemy import bindparam, text
from sqlalchemy.schema import CreateSchema, DropSchema
from sqlalchemy.sql.elements import TextClause

from sa_signals.errors import (
    ConfigurationError,
    MigrationError,
    SignalsWarning,
    TimescaleUnavailableError,
    TimescaleUnavailableWarning,
)
from sa_signals.schema.ddl import postgresql as ddl

from ._warnings import warn
from .ops import (
    AddCompressionPolicyOp,
    AddRetentionPolicyOp,
    CreateHypertableOp,
    CreateSchemaOp,
    DisableCompressionOp,
    DropSchemaOp,
    EnableCompressionOp,
    KeepHypertableOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
    TimescaleOp,
)

__all__ = ["OFFLINE_VERSION", "configure", "is_strict"]

#: TimescaleDB version the offline SQL is written for unless ``timescaledb_version`` says otherwise.
OFFLINE_VERSION: tuple[int, ...] = (2, 0)


@dataclass
class _Settings:
    strict: bool = False


_settings = _Settings()


def configure(*, strict: bool | None = None) -> None:
    """Process-wide defaults; ``strict=True`` makes a missing TimescaleDB an error.

    ``context.configure(timescaledb_strict=...)`` in ``env.py`` overrides this per run.
    """
    if strict is not None:
        _settings.strict = bool(strict)


def is_strict(operations: Operations) -> bool:
    """Whether a missing TimescaleDB is an error for this migration run."""
    value = operations.migration_context.opts.get("timescaledb_strict")
    return _settings.strict if value is None else bool(value)


def _offline_version(operations: Operations) -> tuple[int, ...]:
    value = operations.migration_context.opts.get("timescaledb_version")
    if value is None:
        return OFFLINE_VERSION
    if isinstance(value, tuple):
        return tuple(int(part) for part in value)
    try:
        return tuple(int(part) for part in str(value).split("."))
    except ValueError:
        raise ConfigurationError(
            f"timescaledb_version must look like '2.18', got {value!r}"
        ) from None


def _version(operations: Operations, op: TimescaleOp, action: str) -> tuple[int, ...] | None:
    """The TimescaleDB version to write SQL for, or ``None`` when the op must be skipped."""
    context = operations.migration_context
    if context.dialect.name != "postgresql":
        _unavailable(operations, op, action, f"the {context.dialect.name} dialect")
        return None
    if context.as_sql:
        return _offline_version(operations)
    version = ddl.timescale_version(operations.get_bind())
    if version is None:
        _unavailable(operations, op, action, "a database without the timescaledb extension")
        return None
    return version


def _unavailable(operations: Operations, op: TimescaleOp, action: str, where: str) -> None:
    name = ddl.qualified_name(op.table_name, op.schema)
    if is_strict(operations):
        raise TimescaleUnavailableError(
            f"cannot {action} on {name}: this migration runs on {where}; install the "
            "timescaledb extension or turn off timescaledb_strict"
        )
    warn(
        f"timescaledb not available: skipped {action} on {name} ({where})",
        TimescaleUnavailableWarning,
    )


_DOLLAR_TAG = "$sa_signals$"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _offline_guard(operations: Operations, sql: str, op: TimescaleOp, action: str) -> str:
    """Wrap one offline statement so that it runs only where TimescaleDB is installed."""
    name = ddl.qualified_name(op.table_name, op.schema)
    if is_strict(operations):
        level = "EXCEPTION"
        message = f"cannot {action} on {name}: the timescaledb extension is not installed"
    else:
        level = "WARNING"
        message = f"timescaledb not available: skipped {action} on {name}"
    if _DOLLAR_TAG in sql:
        raise ConfigurationError(f"{name} contains {_DOLLAR_TAG!r}, which offline SQL reserves")
    body = sql.strip()
    # In PL/pgSQL a query whose result is discarded is written PERFORM.
    if body[:7].upper() == "SELECT ":
        body = "PERFORM " + body[7:]
    # RAISE reads '%' in its message as a placeholder.
    raise_ = f"RAISE {level} {_sql_literal(message.replace('%', '%%'))}"
    # ``body`` is our own statement with quoted names and literal-rendered values; the message
    # is escaped as a literal above.
    return (
        f"DO {_DOLLAR_TAG} BEGIN IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension "  # noqa: S608
        f"WHERE extname = 'timescaledb') THEN {body}; ELSE {raise_}; END IF; END {_DOLLAR_TAG}"
    )


def _execute(operations: Operations, statement: TextClause, op: TimescaleOp, action: str) -> None:
    if operations.migration_context.as_sql:
        # Offline scripts cannot carry parameters: render the bound values as SQL literals,
        # then escape colons so alembic's own text() pass leaves them alone.
        dialect = operations.migration_context.dialect
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        statement = text(_offline_guard(operations, sql, op, action).replace(":", "\\:"))
    operations.execute(statement)


def _run(operations: Operations, op: TimescaleOp, action: str, statement: TextClause) -> None:
    """Run one statement that needs no version-specific names."""
    if _version(operations, op, action) is not None:
        _execute(operations, statement, op, action)


@Operations.implementation_for(CreateSchemaOp)
def create_schema(operations: Operations, op: CreateSchemaOp) -> None:
    """``CREATE SCHEMA [IF NOT EXISTS]``."""
    operations.execute(CreateSchema(op.schema_name, if_not_exists=op.if_not_exists))


@Operations.implementation_for(DropSchemaOp)
def drop_schema(operations: Operations, op: DropSchemaOp) -> None:
    """``DROP SCHEMA [IF EXISTS]`` without ``CASCADE``."""
    operations.execute(DropSchema(op.schema_name, if_exists=op.if_exists))


@Operations.implementation_for(CreateHypertableOp)
def create_hypertable(operations: Operations, op: CreateHypertableOp) -> None:
    """Run ``create_hypertable`` (default indexes off: the model declares its own)."""
    version = _version(operations, op, "create_hypertable")
    if version is not None:
        statement = ddl.create_hypertable_sql(
            op.table_name,
            op.schema,
            op.time_column,
            op.chunk_time_interval,
            if_not_exists=op.if_not_exists,
            migrate_data=op.migrate_data,
            version=version,
        )
        _execute(operations, statement, op, "create_hypertable")


@Operations.implementation_for(KeepHypertableOp)
def keep_hypertable(operations: Operations, op: KeepHypertableOp) -> None:
    """Change nothing: TimescaleDB cannot turn a hypertable back into a plain table."""
    warn(
        f"{ddl.qualified_name(op.table_name, op.schema)} stays a hypertable: TimescaleDB cannot "
        "convert it back to a plain table (dropping the table removes it)",
        SignalsWarning,
    )


@Operations.implementation_for(SetChunkTimeIntervalOp)
def set_chunk_time_interval(operations: Operations, op: SetChunkTimeIntervalOp) -> None:
    """Run ``set_chunk_time_interval``."""
    statement = ddl.set_chunk_time_interval_sql(op.table_name, op.schema, op.chunk_time_interval)
    _run(operations, op, "set_chunk_time_interval", statement)


@Operations.implementation_for(EnableCompressionOp)
def enable_compression(operations: Operations, op: EnableCompressionOp) -> None:
    """``ALTER TABLE ... SET (timescaledb.compress ...)`` with the version's option names."""
    version = _version(operations, op, "enable_compression")
    if version is not None:
        statement = ddl.enable_compression_sql(
            op.table_name, op.schema, op.segment_by, op.order_by, version=version
        )
        _execute(operations, statement, op, "enable_compression")


def _decompress_chunks_sql(op: TimescaleOp) -> TextClause:
    return text(
        "SELECT decompress_chunk(chunk, if_compressed => true) "
        "FROM show_chunks(CAST(:relation AS regclass)) AS chunk"
    ).bindparams(bindparam("relation", ddl.qualified_name(op.table_name, op.schema)))


def _compressed_chunks(operations: Operations, op: TimescaleOp) -> int:
    row = (
        operations.get_bind()
        .execute(
            text(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = COALESCE(:schema, current_schema()) "
                "AND hypertable_name = :name AND is_compressed"
            ),
            {"schema": op.schema, "name": op.table_name},
        )
        .first()
    )
    return int(row[0]) if row is not None else 0


@Operations.implementation_for(DisableCompressionOp)
def disable_compression(operations: Operations, op: DisableCompressionOp) -> None:
    """``ALTER TABLE ... SET (timescaledb.compress = false)``, decompressing first if asked."""
    action = "disable_compression"
    if _version(operations, op, action) is None:
        return
    if op.decompress:
        _execute(operations, _decompress_chunks_sql(op), op, "decompress_chunk")
    elif not operations.migration_context.as_sql:
        compressed = _compressed_chunks(operations, op)
        if compressed:
            name = ddl.qualified_name(op.table_name, op.schema)
            raise MigrationError(
                f"cannot disable compression on {name}: {compressed} of its chunks are "
                "compressed and TimescaleDB keeps compression on while any is. Write "
                f"op.disable_compression({op.table_name!r}, ..., decompress=True) to decompress "
                "them first (this rewrites them and needs time and disk space), or drop the "
                "table instead if its data can go"
            )
    _execute(operations, ddl.disable_compression_sql(op.table_name, op.schema), op, action)


@Operations.implementation_for(AddCompressionPolicyOp)
def add_compression_policy(operations: Operations, op: AddCompressionPolicyOp) -> None:
    """``add_compression_policy`` (``add_columnstore_policy`` on 2.18+)."""
    version = _version(operations, op, "add_compression_policy")
    if version is not None:
        statement = ddl.add_compression_policy_sql(
            op.table_name, op.schema, op.compress_after, version=version
        )
        _execute(operations, statement, op, "add_compression_policy")


@Operations.implementation_for(RemoveCompressionPolicyOp)
def remove_compression_policy(operations: Operations, op: RemoveCompressionPolicyOp) -> None:
    """``remove_compression_policy(..., if_exists => true)``."""
    statement = ddl.remove_compression_policy_sql(op.table_name, op.schema)
    _run(operations, op, "remove_compression_policy", statement)


@Operations.implementation_for(AddRetentionPolicyOp)
def add_retention_policy(operations: Operations, op: AddRetentionPolicyOp) -> None:
    """``add_retention_policy``."""
    statement = ddl.add_retention_policy_sql(op.table_name, op.schema, op.drop_after)
    _run(operations, op, "add_retention_policy", statement)


@Operations.implementation_for(RemoveRetentionPolicyOp)
def remove_retention_policy(operations: Operations, op: RemoveRetentionPolicyOp) -> None:
    """``remove_retention_policy(..., if_exists => true)``."""
    statement = ddl.remove_retention_policy_sql(op.table_name, op.schema)
    _run(operations, op, "remove_retention_policy", statement)
