"""Autogenerate comparator: model TimescaleDB settings versus the database catalog.

The desired settings are the :class:`~sa_signals.TimescaleOptions` in each model table's
``info`` (:func:`~sa_signals.get_timescale_options`); the actual ones come from TimescaleDB's
information views through :func:`~sa_signals.schema.ddl.postgresql.read_timescale_state`.
Both sides are normalised (intervals as ``timedelta``, column lists as tuples, order-by items
parsed) so that a second autogenerate after upgrading yields nothing.

On Alembic 1.18+ the comparator is the plugin :data:`PLUGIN_NAME`; name it in
``context.configure(autogenerate_plugins=[...])`` (see :data:`AUTOGENERATE_PLUGINS`). Older
Alembic has no plugin API, so there it joins the global comparator registry on import.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from alembic.operations import MigrateOperation
from alembic.operations.ops import CreateTableOp
from sqlalchemy import Table, inspect

from sa_signals.schema.ddl import postgresql as ddl
from sa_signals.schema.options import TimescaleOptions, get_timescale_options

from .ops import (
    AddCompressionPolicyOp,
    AddRetentionPolicyOp,
    CreateHypertableOp,
    DisableCompressionOp,
    EnableCompressionOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
)

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.operations.ops import UpgradeOps
    from sqlalchemy import Connection

__all__ = ["AUTOGENERATE_PLUGINS", "PLUGIN_NAME", "compare_timescale", "diff_table", "setup"]

logger = logging.getLogger("alembic_ext")

#: Name of the autogenerate plugin (Alembic 1.18+).
PLUGIN_NAME = "alembic_ext.timescale"
#: ``autogenerate_plugins`` value for ``env.py``: Alembic's own comparators plus ours.
AUTOGENERATE_PLUGINS: list[str] = ["alembic.autogenerate.*", PLUGIN_NAME]


def diff_table(
    table: Table,
    options: TimescaleOptions,
    state: ddl.TimescaleState | None,
) -> list[MigrateOperation]:
    """Operations that bring a table in ``state`` to ``options`` (``None``: a new table)."""
    name, schema = table.name, table.schema
    ops: list[MigrateOperation] = []
    want_after = options.compress_after if options.compression else None
    if state is None or not state.is_hypertable:
        ops.append(
            CreateHypertableOp(
                name,
                options.time_column,
                chunk_time_interval=options.chunk_time_interval,
                schema=schema,
                # An existing plain table may hold rows; a table created alongside cannot.
                migrate_data=state is not None,
            )
        )
        if options.compression:
            ops.append(
                EnableCompressionOp(
                    name, segmentby=options.segment_by, orderby=options.order_by, schema=schema
                )
            )
        if want_after is not None:
            ops.append(AddCompressionPolicyOp(name, want_after, schema=schema))
        if options.drop_after is not None:
            ops.append(AddRetentionPolicyOp(name, options.drop_after, schema=schema))
        return ops

    if state.time_column not in (None, options.time_column):
        logger.warning(
            "%s is partitioned on %r but the model says %r; TimescaleDB cannot change the "
            "time column, so autogenerate leaves it alone",
            ddl.qualified_name(name, schema),
            state.time_column,
            options.time_column,
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
                segmentby=options.segment_by,
                orderby=options.order_by,
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


def _model_tables(
    context: AutogenContext, schemas: Iterable[str | None], default_schema: str | None
) -> list[tuple[Table, TimescaleOptions]]:
    wanted = {None if s == default_schema else s for s in schemas}
    out = []
    for table in context.sorted_tables:
        options = get_timescale_options(table)
        if options is None:
            continue
        schema = None if table.schema == default_schema else table.schema
        if schema not in wanted:
            continue
        names: dict[Any, str | None] = {"schema_name": table.schema} if table.schema else {}
        if not context.run_name_filters(table.name, "table", names):
            continue
        if not context.run_object_filters(table, table.name, "table", False, None):
            continue
        out.append((table, options))
    return out


def _strip_info(upgrade_ops: UpgradeOps) -> None:
    # Table.info holds our TimescaleOptions (Python-side settings that the Timescale ops below
    # express); Alembic would otherwise write the dict, unimportable, into create_table().
    for op in upgrade_ops.ops:
        info = getattr(op, "info", None)
        if isinstance(op, CreateTableOp) and info:
            op.info = {k: v for k, v in info.items() if not str(k).startswith("sa_signals.")}


def compare_timescale(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: Iterable[str | None]
) -> Any:
    """The ``schema``-level comparator: append Timescale ops for every model table."""
    connection: Connection | None = autogen_context.connection
    if connection is None or connection.dialect.name != "postgresql":
        return _continue()
    default_schema = connection.dialect.default_schema_name
    tables = _model_tables(autogen_context, schemas, default_schema)
    _strip_info(upgrade_ops)
    if not tables:
        return _continue()
    version = ddl.timescale_version(connection)
    inspector = inspect(connection)
    for table, options in tables:
        exists = inspector.has_table(table.name, schema=table.schema)
        if version is None:
            # The catalog cannot be read, but a table created by this revision should still
            # become a hypertable where the revision later runs on TimescaleDB.
            if not exists:
                upgrade_ops.ops.extend(diff_table(table, options, None))
            else:
                logger.warning(
                    "timescaledb not installed: cannot compare the Timescale settings of %s",
                    ddl.qualified_name(table.name, table.schema),
                )
            continue
        state = ddl.read_timescale_state(connection, table.name, table.schema) if exists else None
        upgrade_ops.ops.extend(diff_table(table, options, state))
    return _continue()


def _continue() -> Any:
    try:
        from alembic.util import PriorityDispatchResult
    except ImportError:  # Alembic < 1.18 ignores comparator results
        return None
    return PriorityDispatchResult.CONTINUE


def setup(plugin: Any) -> None:
    """Plugin entry (Alembic 1.18+): compare after the tables, so hypertables follow tables."""
    from alembic.util import DispatchPriority

    plugin.add_autogenerate_comparator(
        compare_timescale, "schema", "timescale", priority=DispatchPriority.LAST
    )


def register() -> None:
    """Register the comparator: as a plugin when Alembic has the API, globally otherwise."""
    try:
        from alembic.runtime.plugins import Plugin
    except ImportError:
        from alembic.autogenerate.compare import comparators

        comparators.dispatch_for("schema")(compare_timescale)
        return
    import sys

    try:
        Plugin.setup_plugin_from_module(sys.modules[__name__], PLUGIN_NAME)
    except ValueError:  # already registered (module imported again)
        pass
