"""Citus DDL for PostgreSQL: distribute a signals table, undo it, and read Citus's catalog.

The statement builders are shared with ``alembic_ext`` so that the DDL hook and migrations emit
the same SQL; relation names are bound as text cast to ``regclass``, never inlined.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, text
from sqlalchemy.sql.elements import BindParameter, TextClause

from ...errors import CitusUnavailableError, ConfigurationError
from ..options import DistributionOptions
from .postgresql import create_extension, extension_version, qualified_name

__all__ = [
    "DistributionState",
    "after_create",
    "citus_version",
    "create_distributed_table_sql",
    "ensure_distribution",
    "read_distribution_state",
    "undistribute_table_sql",
]

logger = logging.getLogger("sa_signals.ddl")


def citus_version(connection: Connection) -> tuple[int, ...] | None:
    """The installed ``citus`` extension version in this database (``pg_extension``), or
    ``None``."""
    return extension_version(connection, "citus")


def create_distributed_table_sql(
    name: str,
    schema: str | None,
    column: str,
    *,
    shard_count: int | None = None,
    colocate_with: str = "default",
) -> TextClause:
    """``SELECT create_distributed_table(...)`` (hash distribution on ``column``).

    Rows the table already holds are copied into the shards; the coordinator's local copy is
    left behind (Citus's ``truncate_local_data_after_distributing_table`` removes it).
    """
    sql = (
        "SELECT create_distributed_table(CAST(:relation AS regclass), CAST(:column AS text), "
        "colocate_with => CAST(:colocate_with AS text)"
    )
    params: list[BindParameter[Any]] = [
        bindparam("relation", qualified_name(name, schema)),
        bindparam("column", column),
        bindparam("colocate_with", colocate_with),
    ]
    if shard_count is not None:
        sql += ", shard_count => CAST(:shard_count AS integer)"
        params.append(bindparam("shard_count", shard_count))
    return text(sql + ")").bindparams(*params)


def undistribute_table_sql(name: str, schema: str | None) -> TextClause:
    """``SELECT undistribute_table(...)``: the rows come back into a local table."""
    return text("SELECT undistribute_table(CAST(:relation AS regclass))").bindparams(
        bindparam("relation", qualified_name(name, schema))
    )


@dataclass(frozen=True)
class DistributionState:
    """What Citus's catalog (``pg_dist_partition``, ``pg_dist_shard``) says about one table."""

    is_distributed: bool
    column: str | None = None
    shard_count: int | None = None
    colocation_id: int | None = None


_STATE = text(
    "SELECT column_to_column_name(p.logicalrelid, p.partkey), p.colocationid, "
    "(SELECT count(*) FROM pg_catalog.pg_dist_shard AS s WHERE s.logicalrelid = p.logicalrelid) "
    "FROM pg_catalog.pg_dist_partition AS p "
    "WHERE p.logicalrelid = to_regclass(:relation) AND p.partmethod = 'h'"
)


def read_distribution_state(
    connection: Connection, name: str, schema: str | None
) -> DistributionState:
    """Whether ``schema.name`` is hash-distributed, on which column, in how many shards.

    Reference tables and Citus local tables count as not distributed. Needs the ``citus``
    extension (its catalog tables).
    """
    row = connection.execute(_STATE, {"relation": qualified_name(name, schema)}).first()
    if row is None:
        return DistributionState(is_distributed=False)
    return DistributionState(True, str(row[0]), int(row[2]), int(row[1]))


def _resolve_version(
    connection: Connection, table: Table, options: DistributionOptions
) -> tuple[int, ...] | None:
    version = citus_version(connection)
    if version is None and options.create_extension:
        version = create_extension(connection, "citus", error=CitusUnavailableError)
    if version is None:
        where = qualified_name(table.name, table.schema)
        if options.require_citus:
            raise CitusUnavailableError(
                f"the citus extension is not installed in this database, so {where} cannot be "
                "distributed; run CREATE EXTENSION citus on the coordinator and on every worker "
                "(or pass DistributionOptions(create_extension=True) for the coordinator), or "
                "set require_citus=False"
            )
        logger.warning(
            "citus extension not installed: %s stays a plain PostgreSQL table (not distributed)",
            where,
        )
    return version


def ensure_distribution(table: Table, connection: Connection, options: DistributionOptions) -> bool:
    """Distribute ``table`` as ``options`` say unless it is already; idempotent.

    Returns ``True`` when the table is distributed afterwards, ``False`` on a database without
    Citus. A table already distributed by another column is left as it is, with a warning
    (``alter_distributed_table`` changes it, rewriting every shard).
    """
    if options.column not in table.c:
        raise ConfigurationError(
            f"distribution column {options.column!r} is not a column of {table.name!r}"
        )
    if _resolve_version(connection, table, options) is None:
        return False
    name, schema = table.name, table.schema
    state = read_distribution_state(connection, name, schema)
    if not state.is_distributed:
        connection.execute(
            create_distributed_table_sql(
                name,
                schema,
                options.column,
                shard_count=options.shard_count,
                colocate_with=options.colocate_with,
            )
        )
    elif state.column != options.column:
        logger.warning(
            "%s is distributed by %r, not %r as declared; left as it is "
            "(alter_distributed_table changes the distribution column)",
            qualified_name(name, schema),
            state.column,
            options.column,
        )
    return True


def after_create(table: Table, connection: Connection, options: DistributionOptions) -> None:
    """``after_create`` hook: distribute the new table when Citus is installed."""
    ensure_distribution(table, connection, options)
