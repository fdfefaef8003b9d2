"""The comparators: model schemas and TimescaleDB settings versus the database.

The desired settings are the :class:`~sa_signals.TimescaleOptions` in each model table's
``info`` (:func:`~sa_signals.get_timescale_options`); the actual ones come from TimescaleDB's
information views through :func:`~sa_signals.schema.ddl.postgresql.read_timescale_state`.
Both sides are normalised (intervals as ``timedelta``, column lists as tuples, order-by items
parsed) so that a second autogenerate after upgrading yields nothing.

Continuous aggregates declared on the target metadata
(:class:`~sa_signals.schema.aggregates.ContinuousAggregate`, the signals rollups) are compared
with TimescaleDB's catalog: their definitions as the server normalises them (the model's is
created as a temporary view in a rolled-back savepoint and both are read with
``pg_get_viewdef``), ``materialized_only``, compression and the refresh, compression and
retention policies.

Model tables are taken from the metadata in every schema, existing or not: a table in a schema
the revision creates gets its ``create_schema`` first and its TimescaleDB operations after it.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import MigrateOperation
from sqlalchemy import MetaData, Table, text
from sqlalchemy.exc import DBAPIError

from sa_signals.errors import SignalsWarning, TimescaleUnavailableWarning
from sa_signals.schema.aggregates import (
    ContinuousAggregate,
    ContinuousAggregateState,
    get_continuous_aggregates,
    read_continuous_aggregate,
)
from sa_signals.schema.ddl import postgresql as ddl
from sa_signals.schema.options import TimescaleOptions, get_timescale_options

from ._warnings import warn
from .aggregates import (
    AddContinuousAggregatePolicyOp,
    AlterContinuousAggregateOp,
    CreateContinuousAggregateOp,
    DropContinuousAggregateOp,
    RemoveContinuousAggregatePolicyOp,
    create_ops,
)
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

__all__ = [
    "compare_aggregates",
    "compare_schemas",
    "compare_timescale",
    "diff_aggregate",
    "diff_table",
]


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


# --------------------------------------------------------------------------- continuous aggregates


def _declared_aggregates(context: CompareContext) -> list[ContinuousAggregate]:
    metadata = context.autogen_context.metadata
    if metadata is None:
        return []
    found: list[ContinuousAggregate] = []
    for item in [metadata] if isinstance(metadata, MetaData) else list(metadata):
        found.extend(get_continuous_aggregates(item))
    return found


def _normalised_definition(context: CompareContext, aggregate: ContinuousAggregate) -> str | None:
    """How the server deparses the model's definition: created as a temporary view inside a
    savepoint that is rolled back, read back with ``pg_get_viewdef`` (as alembic_utils does)."""
    connection = context.connection
    probe = "sa_signals_definition_probe"
    savepoint = connection.begin_nested()
    try:
        # Sent as is, without parameters: no driver reads a '%' in it as a placeholder.
        connection.exec_driver_sql(
            f"CREATE TEMPORARY VIEW {probe} AS {aggregate.definition_sql(connection.dialect)}"
        )
        row = connection.execute(
            text("SELECT pg_get_viewdef(CAST(:view AS regclass))"), {"view": f"pg_temp.{probe}"}
        ).first()
    except DBAPIError as exc:
        savepoint.rollback()
        warn(
            f"cannot compare the definition of {aggregate.qualified_name}: the server refused "
            f"it ({exc.orig}); autogenerate leaves it alone",
            SignalsWarning,
        )
        return None
    savepoint.rollback()
    return None if row is None else str(row[0])


def _same_sql(a: str, b: str) -> bool:
    return " ".join(a.split()).rstrip(";") == " ".join(b.split()).rstrip(";")


def _policy_removals(name: str, schema: str | None, state: ContinuousAggregateState) -> list[Any]:
    """Operations that take an existing aggregate's settings off before it is dropped, so that
    the downgrade (their reverses, after re-creating it) puts them back."""
    ops: list[Any] = []
    if state.drop_after is not None:
        ops.append(RemoveRetentionPolicyOp(name, schema=schema, _previous=state.drop_after))
    if state.compress_after is not None:
        ops.append(RemoveCompressionPolicyOp(name, schema=schema, _previous=state.compress_after))
    if state.compression:
        ops.append(
            AlterContinuousAggregateOp(
                name, compression=False, existing_compression=True, schema=schema
            )
        )
    if state.refresh is not None:
        ops.append(RemoveContinuousAggregatePolicyOp(name, schema=schema, _previous=state.refresh))
    return ops


def _drop_ops(name: str, schema: str | None, state: ContinuousAggregateState) -> list[Any]:
    recreate = CreateContinuousAggregateOp(
        name, state.definition, schema=schema, materialized_only=state.materialized_only
    )
    return [
        *_policy_removals(name, schema, state),
        DropContinuousAggregateOp(name, schema=schema, _reverse=recreate),
    ]


def _new_aggregate_ops(aggregate: ContinuousAggregate) -> list[Any]:
    ops = create_ops(aggregate)
    for op in ops[1:]:
        # Dropping the aggregate (the reverse of its creation) removes these with it.
        if isinstance(op, TimescaleOp):
            op.new_table = True
    return ops


def diff_aggregate(
    aggregate: ContinuousAggregate, state: ContinuousAggregateState
) -> list[MigrateOperation]:
    """Operations that bring an existing aggregate's settings to the declaration's (not its
    definition: see :func:`compare_aggregates`)."""
    name, schema = aggregate.name, aggregate.schema
    ops: list[MigrateOperation] = []
    if state.materialized_only != aggregate.materialized_only:
        ops.append(
            AlterContinuousAggregateOp(
                name,
                materialized_only=aggregate.materialized_only,
                existing_materialized_only=state.materialized_only,
                schema=schema,
            )
        )
    if state.refresh != aggregate.refresh:
        if state.refresh is not None:
            ops.append(
                RemoveContinuousAggregatePolicyOp(name, schema=schema, _previous=state.refresh)
            )
        if aggregate.refresh is not None:
            policy = aggregate.refresh
            ops.append(
                AddContinuousAggregatePolicyOp(
                    name,
                    start_offset=policy.start_offset,
                    end_offset=policy.end_offset,
                    schedule_interval=policy.schedule_interval,
                    schema=schema,
                )
            )
    want_after = aggregate.compress_after if aggregate.compression else None
    # The compression policy goes before turning compression off, and after turning it on.
    if state.compress_after is not None and state.compress_after != want_after:
        ops.append(RemoveCompressionPolicyOp(name, schema=schema, _previous=state.compress_after))
    if state.compression != aggregate.compression:
        ops.append(
            AlterContinuousAggregateOp(
                name,
                compression=aggregate.compression,
                existing_compression=state.compression,
                schema=schema,
            )
        )
    if want_after is not None and state.compress_after != want_after:
        ops.append(AddCompressionPolicyOp(name, want_after, schema=schema))
    if state.drop_after != aggregate.drop_after:
        if state.drop_after is not None:
            ops.append(RemoveRetentionPolicyOp(name, schema=schema, _previous=state.drop_after))
        if aggregate.drop_after is not None:
            ops.append(AddRetentionPolicyOp(name, aggregate.drop_after, schema=schema))
    return ops


def _existing_aggregates(context: CompareContext) -> list[tuple[str, str, str, str]]:
    """``(view_schema, view_name, hypertable_schema, hypertable_name)`` of every aggregate."""
    rows = context.connection.execute(
        text(
            "SELECT view_schema, view_name, hypertable_schema, hypertable_name "
            "FROM timescaledb_information.continuous_aggregates ORDER BY view_schema, view_name"
        )
    ).all()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def compare_aggregates(context: CompareContext) -> None:
    """Continuous aggregates: created when declared and absent, dropped when they read a model
    table but are no longer declared, re-created when the server's normalised definition
    differs, altered when ``materialized_only``, compression or a policy differs."""
    declared = _declared_aggregates(context)
    default = context.default_schema
    model_tables = {(table.schema or default, table.name) for table in context.model_tables}
    if context.timescale_version is None:
        for aggregate in declared:
            sources = [s for s in aggregate.sources if isinstance(s, Table)]
            if any(not context.table_exists(source) for source in sources):
                # Written even without TimescaleDB here: the revision may run where it is.
                context.add(*_new_aggregate_ops(aggregate))
            else:
                warn(
                    "timescaledb not installed: cannot compare continuous aggregate "
                    f"{aggregate.qualified_name}",
                    TimescaleUnavailableWarning,
                )
        return
    existing = _existing_aggregates(context)
    wanted = {(aggregate.schema or default, aggregate.name) for aggregate in declared}
    # Dropped first (a re-created one may take the name back), readers before what they read.
    for view_schema, view_name, source_schema, source_name in reversed(existing):
        if (view_schema, view_name) in wanted or (source_schema, source_name) not in model_tables:
            continue
        schema = None if view_schema == default else view_schema
        state = read_continuous_aggregate(context.connection, view_name, view_schema)
        if state is not None:
            context.add(*_drop_ops(view_name, schema, state))
    present = {(schema, name) for schema, name, _, _ in existing}
    for aggregate in declared:
        if (aggregate.schema or default, aggregate.name) not in present:
            context.add(*_new_aggregate_ops(aggregate))
            continue
        state = read_continuous_aggregate(context.connection, aggregate.name, aggregate.schema)
        if state is None:  # pragma: no cover - listed a moment ago
            continue
        normalised = _normalised_definition(context, aggregate)
        if normalised is not None and not _same_sql(normalised, state.definition):
            context.add(
                *_drop_ops(aggregate.name, aggregate.schema, state),
                *_new_aggregate_ops(aggregate),
            )
            continue
        context.add(*diff_aggregate(aggregate, state))


register_comparator("alembic_ext.continuous_aggregates", compare_aggregates)
