"""How each TimescaleDB operation runs: the SQL comes from :mod:`sa_signals.schema.ddl.postgresql`.

Online, the installed TimescaleDB version picks the statement names (columnstore names on 2.18+).
Without the ``timescaledb`` extension an operation logs a warning and does nothing, unless strict
mode is on (:func:`configure`, or ``timescaledb_strict=True`` in ``context.configure``), which
raises :class:`~sa_signals.errors.TimescaleUnavailableError` instead.

Offline (``alembic upgrade --sql``) the database cannot be asked, so the SQL targets
``timescaledb_version`` from ``context.configure`` (default ``2.0``: the compression names and the
``create_hypertable`` signature that every 2.x release accepts), with values rendered as literals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alembic.operations import Operations
from sqlalchemy import text
from sqlalchemy.sql.elements import TextClause

from sa_signals.errors import ConfigurationError, TimescaleUnavailableError
from sa_signals.schema.ddl import postgresql as ddl

from .ops import (
    AddCompressionPolicyOp,
    AddRetentionPolicyOp,
    CreateHypertableOp,
    DisableCompressionOp,
    EnableCompressionOp,
    KeepHypertableOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
    TimescaleOp,
)

__all__ = ["OFFLINE_VERSION", "configure", "is_strict"]

logger = logging.getLogger("alembic_ext")

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
    logger.warning("timescaledb not available: skipped %s on %s (%s)", action, name, where)


def _execute(operations: Operations, statement: TextClause) -> None:
    if operations.migration_context.as_sql:
        # Offline scripts cannot carry parameters: render the bound values as SQL literals,
        # then escape colons so alembic's own text() pass leaves them alone.
        dialect = operations.migration_context.dialect
        sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        statement = text(sql.replace(":", "\\:"))
    operations.execute(statement)


@Operations.implementation_for(CreateHypertableOp)
def create_hypertable(operations: Operations, op: CreateHypertableOp) -> None:
    """Run ``create_hypertable`` (default indexes off: the model declares its own)."""
    version = _version(operations, op, "create_hypertable")
    if version is not None:
        _execute(
            operations,
            ddl.create_hypertable_sql(
                op.table_name,
                op.schema,
                op.time_column,
                op.chunk_time_interval,
                if_not_exists=op.if_not_exists,
                migrate_data=op.migrate_data,
                version=version,
            ),
        )


@Operations.implementation_for(KeepHypertableOp)
def keep_hypertable(operations: Operations, op: KeepHypertableOp) -> None:
    """Change nothing: TimescaleDB cannot turn a hypertable back into a plain table."""
    logger.info(
        "%s stays a hypertable: TimescaleDB cannot convert it back to a plain table "
        "(dropping the table removes it)",
        ddl.qualified_name(op.table_name, op.schema),
    )


@Operations.implementation_for(SetChunkTimeIntervalOp)
def set_chunk_time_interval(operations: Operations, op: SetChunkTimeIntervalOp) -> None:
    """Run ``set_chunk_time_interval``."""
    if _version(operations, op, "set_chunk_time_interval") is not None:
        _execute(
            operations,
            ddl.set_chunk_time_interval_sql(op.table_name, op.schema, op.chunk_time_interval),
        )


@Operations.implementation_for(EnableCompressionOp)
def enable_compression(operations: Operations, op: EnableCompressionOp) -> None:
    """``ALTER TABLE ... SET (timescaledb.compress ...)`` with the version's option names."""
    version = _version(operations, op, "enable_compression")
    if version is not None:
        _execute(
            operations,
            ddl.enable_compression_sql(
                op.table_name, op.schema, op.segmentby, op.orderby, version=version
            ),
        )


@Operations.implementation_for(DisableCompressionOp)
def disable_compression(operations: Operations, op: DisableCompressionOp) -> None:
    """``ALTER TABLE ... SET (timescaledb.compress = false)``."""
    if _version(operations, op, "disable_compression") is not None:
        _execute(operations, ddl.disable_compression_sql(op.table_name, op.schema))


@Operations.implementation_for(AddCompressionPolicyOp)
def add_compression_policy(operations: Operations, op: AddCompressionPolicyOp) -> None:
    """``add_compression_policy`` (``add_columnstore_policy`` on 2.18+)."""
    version = _version(operations, op, "add_compression_policy")
    if version is not None:
        _execute(
            operations,
            ddl.add_compression_policy_sql(
                op.table_name, op.schema, op.compress_after, version=version
            ),
        )


@Operations.implementation_for(RemoveCompressionPolicyOp)
def remove_compression_policy(operations: Operations, op: RemoveCompressionPolicyOp) -> None:
    """``remove_compression_policy(..., if_exists => true)``."""
    if _version(operations, op, "remove_compression_policy") is not None:
        _execute(operations, ddl.remove_compression_policy_sql(op.table_name, op.schema))


@Operations.implementation_for(AddRetentionPolicyOp)
def add_retention_policy(operations: Operations, op: AddRetentionPolicyOp) -> None:
    """``add_retention_policy``."""
    if _version(operations, op, "add_retention_policy") is not None:
        _execute(operations, ddl.add_retention_policy_sql(op.table_name, op.schema, op.drop_after))


@Operations.implementation_for(RemoveRetentionPolicyOp)
def remove_retention_policy(operations: Operations, op: RemoveRetentionPolicyOp) -> None:
    """``remove_retention_policy(..., if_exists => true)``."""
    if _version(operations, op, "remove_retention_policy") is not None:
        _execute(operations, ddl.remove_retention_policy_sql(op.table_name, op.schema))
