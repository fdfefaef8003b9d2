"""The comparators: model schemas and TimescaleDB settings versus the database.

The desired settings are the :class:`~sa_signals.TimescaleOptions` in each model table's
``info`` (:func:`~sa_signals.get_timescale_options`); the actual ones come from TimescaleDB's
information views through :func:`~sa_signals.schema.ddl.postgresql.read_timescale_state`.
Both sides are normalised (intervals as ``timedelta``, column lists as tuples, order-by items
parsed) so that a second autogenerate after upgrading yields nothing.

Model tables are taken from the metadata in every schema, existing or not: a table in a schema
the revision creates gets its ``create_schema`` first and its TimescaleDB operations after it.
"""

from __future__ import annotations

from alembic.operations import MigrateOperation
from sqlalchemy import Table

from sa_signals.errors import SignalsWarning, TimescaleUnavailableWarning
from sa_signals.schema.ddl import postgresql as ddl
from sa_signals.schema.options import TimescaleOptions, get_timescale_options

from ._warnings import warn
from .autogenerate import CompareContext, register_comparator
from .ops import (
    AddCompressionPolicyOp,
    AddRetentionPolicyOp,
    CreateHypertableOp,
    CreateSchemaOp,
    DisableCompressionOp,
    EnableCompressionOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
    TimescaleOp,
)

__all__ = ["compare_schemas", "compare_timescale", "diff_table"]


def _setup_ops(table: Table, options: TimescaleOptions, *, existing: bool) -> list[TimescaleOp]:
    """Hypertable, compression and policies for a new table or an existing plain one."""
    name, schema = table.name, table.schema
    ops: list[TimescaleOp] = [
        CreateHypertableOp(
            name,
            options.time_column,
            chunk_time_interval=options.chunk_time_interval,
            schema=schema,
            # An existing plain table may hold rows: move them into chunks.
            migrate_data=existing,
        )
    ]
    if options.compression:
        ops.append(
            EnableCompressionOp(
                name, segment_by=options.segment_by, order_by=options.order_by, schema=schema
            )
        )
        if options.compress_after is not None:
            ops.append(AddCompressionPolicyOp(name, options.compress_after, schema=schema))
    if options.drop_after is not None:
        ops.append(AddRetentionPolicyOp(name, options.drop_after, schema=schema))
    for op in ops:
        # On a table the revision creates, the downgrade's drop_table undoes all of them.
        op.new_table = not existing
    return ops


def diff_table(
    table: Table,
    options: TimescaleOptions,
    state: ddl.TimescaleState | None,
) -> list[MigrateOperation]:
    """Operations that bring a table in ``state`` to ``options`` (``None``: a new table)."""
    if state is None or not state.is_hypertable:
        return list(_setup_ops(table, options, existing=state is not None))
    name, schema = table.name, table.schema
    ops: list[MigrateOperation] = []
    want_after = options.compress_after if options.compression else None

    if state.time_column not in (None, options.time_column):
        warn(
            f"{ddl.qualified_name(name, schema)} is partitioned on {state.time_column!r} but the "
            f"model says {options.time_column!r}; TimescaleDB cannot change the time column, so "
            "autogenerate leaves it alone",
            SignalsWarning,
        )
    if state.chunk_time_interval != options.chunk_time_interval:
        ops.append(
            SetChunkTimeIntervalOp(
                name,
                options.chunk_time_interval,
                schema=schema,
                _previous=state.chunk_time_interval,
            )
        )
    # Policies go before the compression change they depend on (a compression policy blocks
    # turning compression off) and are added again after it.
    if state.compress_after is not None and state.compress_after != want_after:
        ops.append(RemoveCompressionPolicyOp(name, schema=schema, _previous=state.compress_after))
    previous = (state.segment_by, state.order_by) if state.compression else None
    if options.compression and (
        not state.compression
        or state.segment_by != options.segment_by
        or state.order_by != options.order_by_items
    ):
        ops.append(
            EnableCompressionOp(
                name,
                segment_by=options.segment_by,
                order_by=options.order_by,
                schema=schema,
                _previous=previous,
            )
        )
    elif not options.compression and state.compression:
        ops.append(DisableCompressionOp(name, schema=schema, _previous=previous))
    if want_after is not None and state.compress_after != want_after:
        ops.append(AddCompressionPolicyOp(name, want_after, schema=schema))
    if state.drop_after != options.drop_after:
        if state.drop_after is not None:
            ops.append(RemoveRetentionPolicyOp(name, schema=schema, _previous=state.drop_after))
        if options.drop_after is not None:
            ops.append(AddRetentionPolicyOp(name, options.drop_after, schema=schema))
    return ops


def compare_schemas(context: CompareContext) -> None:
    """``create_schema`` for each schema of a model table that the database lacks."""
    missing: dict[str, None] = {}
    for table in context.model_tables:
        schema = table.schema
        if schema is not None and schema != context.default_schema:
            if not context.schema_exists(schema):
                missing[schema] = None
    context.add_first(*(CreateSchemaOp(schema) for schema in missing))


def compare_timescale(context: CompareContext) -> None:
    """TimescaleDB operations for every model table that carries ``TimescaleOptions``."""
    for table in context.model_tables:
        options = get_timescale_options(table)
        if options is None:
            continue
        if not context.table_exists(table):
            # Written even without TimescaleDB here: the revision may run where it is.
            context.add(*diff_table(table, options, None))
            continue
        if context.timescale_version is None:
            warn(
                "timescaledb not installed: cannot compare the TimescaleDB settings of "
                f"{ddl.qualified_name(table.name, table.schema)}",
                TimescaleUnavailableWarning,
            )
            continue
        state = ddl.read_timescale_state(context.connection, table.name, table.schema)
        context.add(*diff_table(table, options, state))


register_comparator("alembic_ext.schemas", compare_schemas)
register_comparator("alembic_ext.timescale", compare_timescale)
