"""Autogenerate renderers: write the TimescaleDB operations into revision files.

Each renderer adds ``import alembic_ext`` (which registers the operations when the revision runs)
and, for intervals, ``import datetime`` to the revision's imports. The reverse of an operation on
a table the revision creates (:class:`~alembic_ext.ops.DroppedWithTableOp`) renders no line.
"""

from __future__ import annotations

from datetime import timedelta

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext

from .ops import (
    AddCompressionPolicyOp,
    AddRetentionPolicyOp,
    CreateHypertableOp,
    CreateSchemaOp,
    DisableCompressionOp,
    DroppedWithTableOp,
    DropSchemaOp,
    EnableCompressionOp,
    KeepHypertableOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
    TimescaleOp,
)

__all__ = ["render_interval"]


def render_interval(value: timedelta, context: AutogenContext) -> str:
    """``datetime.timedelta(days=7)``, adding ``import datetime`` to the revision."""
    if context.imports is not None:
        context.imports.add("import datetime")
    return repr(value)  # repr(timedelta) is "datetime.timedelta(days=7)"


def _render(context: AutogenContext, name: str, args: list[str], kwargs: dict[str, str]) -> str:
    if context.imports is not None:
        context.imports.add("import alembic_ext")
    prefix = context.opts.get("alembic_module_prefix") or "op."
    parts = [*args, *(f"{key}={value}" for key, value in kwargs.items())]
    return f"{prefix}{name}({', '.join(parts)})"


def _call(context: AutogenContext, name: str, op: TimescaleOp, *args: str, **kwargs: str) -> str:
    if op.schema is not None:
        kwargs["schema"] = repr(op.schema)
    return _render(context, name, [repr(op.table_name), *args], kwargs)


@renderers.dispatch_for(DroppedWithTableOp)
def _dropped_with_table(context: AutogenContext, op: DroppedWithTableOp) -> list[str]:
    return []


@renderers.dispatch_for(CreateSchemaOp)
def _create_schema(context: AutogenContext, op: CreateSchemaOp) -> str:
    extra = {} if op.if_not_exists else {"if_not_exists": "False"}
    return _render(context, "create_schema", [repr(op.schema_name)], extra)


@renderers.dispatch_for(DropSchemaOp)
def _drop_schema(context: AutogenContext, op: DropSchemaOp) -> str:
    extra = {} if op.if_exists else {"if_exists": "False"}
    return _render(context, "drop_schema", [repr(op.schema_name)], extra)


@renderers.dispatch_for(CreateHypertableOp)
def _create_hypertable(context: AutogenContext, op: CreateHypertableOp) -> str:
    extra = {"migrate_data": "True"} if op.migrate_data else {}
    if not op.if_not_exists:
        extra["if_not_exists"] = "False"
    return _call(
        context,
        "create_hypertable",
        op,
        repr(op.time_column),
        chunk_time_interval=render_interval(op.chunk_time_interval, context),
        **extra,
    )


@renderers.dispatch_for(KeepHypertableOp)
def _keep_hypertable(context: AutogenContext, op: KeepHypertableOp) -> list[str]:
    return [
        "# TimescaleDB cannot turn a hypertable back into a plain table: this changes nothing;",
        "# dropping the table removes the hypertable and its chunks.",
        _call(context, "keep_hypertable", op),
    ]


@renderers.dispatch_for(SetChunkTimeIntervalOp)
def _set_chunk_time_interval(context: AutogenContext, op: SetChunkTimeIntervalOp) -> str:
    return _call(
        context,
        "set_chunk_time_interval",
        op,
        render_interval(op.chunk_time_interval, context),
    )


@renderers.dispatch_for(EnableCompressionOp)
def _enable_compression(context: AutogenContext, op: EnableCompressionOp) -> str:
    return _call(
        context,
        "enable_compression",
        op,
        segment_by=repr(list(op.segment_by)),
        order_by=repr(list(op.order_by)),
    )


@renderers.dispatch_for(DisableCompressionOp)
def _disable_compression(context: AutogenContext, op: DisableCompressionOp) -> str:
    extra = {"decompress": "True"} if op.decompress else {}
    return _call(context, "disable_compression", op, **extra)


@renderers.dispatch_for(AddCompressionPolicyOp)
def _add_compression_policy(context: AutogenContext, op: AddCompressionPolicyOp) -> str:
    return _call(
        context,
        "add_compression_policy",
        op,
        compress_after=render_interval(op.compress_after, context),
    )


@renderers.dispatch_for(RemoveCompressionPolicyOp)
def _remove_compression_policy(context: AutogenContext, op: RemoveCompressionPolicyOp) -> str:
    return _call(context, "remove_compression_policy", op)


@renderers.dispatch_for(AddRetentionPolicyOp)
def _add_retention_policy(context: AutogenContext, op: AddRetentionPolicyOp) -> str:
    return _call(
        context, "add_retention_policy", op, drop_after=render_interval(op.drop_after, context)
    )


@renderers.dispatch_for(RemoveRetentionPolicyOp)
def _remove_retention_policy(context: AutogenContext, op: RemoveRetentionPolicyOp) -> str:
    return _call(context, "remove_retention_policy", op)
