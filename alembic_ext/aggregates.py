"""Alembic operations for continuous aggregates: ops, implementations and renderers.

``import alembic_ext`` registers them on :class:`~alembic.operations.Operations`:

* ``op.create_continuous_aggregate(name, definition, schema=..., materialized_only=...)`` and
  ``op.drop_continuous_aggregate(name, schema=...)``, each the other's reverse (a drop made by
  autogenerate carries the definition its reverse needs);
* ``op.add_continuous_aggregate_policy(name, start_offset=..., end_offset=...,
  schedule_interval=...)`` and ``op.remove_continuous_aggregate_policy(name)``;
* ``op.alter_continuous_aggregate(name, materialized_only=..., compression=...)``. Turning
  compression off decompresses the aggregate's chunks first, so a downgrade works with compressed
  data present.

Compression and retention *policies* on an aggregate are the table operations
(``op.add_compression_policy(view_name, ...)``, ``op.add_retention_policy(...)``): TimescaleDB
takes an aggregate wherever it takes a hypertable. :func:`create_ops` lists the operations that
create an aggregate declared with :class:`~sa_signals.schema.aggregates.ContinuousAggregate`.

The definition is SQL text in migrations (they must not change when the model does); the SQL is
what :meth:`~sa_signals.schema.aggregates.ContinuousAggregate.definition_sql` renders.
Like the other TimescaleDB operations they warn and skip without TimescaleDB unless strict.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations

from sa_signals.errors import ConfigurationError
from sa_signals.schema import aggregates as schema
from sa_signals.schema.aggregates import ContinuousAggregate, RefreshPolicy

from .implementations import _execute, _version
from .ops import AddCompressionPolicyOp, AddRetentionPolicyOp, Interval, TimescaleOp, to_timedelta
from .render import render_interval

__all__ = [
    "AddContinuousAggregatePolicyOp",
    "AlterContinuousAggregateOp",
    "ContinuousAggregateOp",
    "CreateContinuousAggregateOp",
    "DropContinuousAggregateOp",
    "RemoveContinuousAggregatePolicyOp",
    "create_ops",
]


class ContinuousAggregateOp(TimescaleOp):
    """Base of the aggregate operations: one aggregate (``table_name`` is the view's name)."""


def _flag(name: str, value: object) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True, False or None, got {value!r}")
    return value


# --------------------------------------------------------------------------- create / drop


@Operations.register_operation("create_continuous_aggregate")
class CreateContinuousAggregateOp(ContinuousAggregateOp):
    """``CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous) AS <definition> WITH NO DATA``.

    Created empty: policies (or ``refresh_continuous_aggregate``, outside a transaction) fill it.
    """

    def __init__(
        self,
        view_name: str,
        definition: str,
        *,
        schema: str | None = None,
        materialized_only: bool = True,
    ) -> None:
        super().__init__(view_name, schema=schema)
        if not isinstance(definition, str) or not definition.strip():
            raise ConfigurationError(f"definition must be SQL text, got {definition!r}")
        # pg_get_viewdef ends with ';': a trailing one would end the statement early.
        self.definition = definition.strip().rstrip(";").rstrip()
        self.materialized_only = bool(_flag("materialized_only", materialized_only))

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.definition, self.materialized_only)

    @classmethod
    def from_aggregate(cls, aggregate: ContinuousAggregate) -> CreateContinuousAggregateOp:
        """The operation creating ``aggregate`` as declared (its definition as SQL text)."""
        return cls(
            aggregate.name,
            aggregate.definition_sql(),
            schema=aggregate.schema,
            materialized_only=aggregate.materialized_only,
        )

    @classmethod
    def create_continuous_aggregate(
        cls,
        operations: Operations,
        view_name: str,
        definition: str,
        *,
        schema: str | None = None,
        materialized_only: bool = True,
    ) -> None:
        """Create a continuous aggregate from ``definition`` (a ``SELECT`` as SQL text)."""
        operations.invoke(
            cls(view_name, definition, schema=schema, materialized_only=materialized_only)
        )

    def reverse(self) -> DropContinuousAggregateOp:
        return DropContinuousAggregateOp(self.table_name, schema=self.schema, _reverse=self)


@Operations.register_operation("drop_continuous_aggregate")
class DropContinuousAggregateOp(ContinuousAggregateOp):
    """``DROP MATERIALIZED VIEW``: its policies and materialized (also compressed) data go too."""

    def __init__(
        self,
        view_name: str,
        *,
        schema: str | None = None,
        if_exists: bool = False,
        _reverse: CreateContinuousAggregateOp | None = None,
    ) -> None:
        super().__init__(view_name, schema=schema)
        self.if_exists = bool(if_exists)
        self._reverse = _reverse

    @classmethod
    def drop_continuous_aggregate(
        cls,
        operations: Operations,
        view_name: str,
        *,
        schema: str | None = None,
        if_exists: bool = False,
    ) -> None:
        """Drop a continuous aggregate (those reading it must be dropped first)."""
        operations.invoke(cls(view_name, schema=schema, if_exists=if_exists))

    def reverse(self) -> CreateContinuousAggregateOp:
        if self._reverse is None:
            raise ValueError(
                f"drop_continuous_aggregate on {self.table_name!r} is not reversible: "
                "the definition it dropped is unknown"
            )
        return self._reverse


# --------------------------------------------------------------------------- refresh policy


def _offset(name: str, value: Interval | None) -> timedelta | None:
    # Offsets may be NULL (unbounded) and, for end_offset, zero: only the schedule must be > 0.
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    return to_timedelta(value, name)


@Operations.register_operation("add_continuous_aggregate_policy")
class AddContinuousAggregatePolicyOp(ContinuousAggregateOp):
    """Refresh ``[now - start_offset, now - end_offset)`` every ``schedule_interval``."""

    def __init__(
        self,
        view_name: str,
        *,
        start_offset: Interval | None,
        end_offset: Interval | None,
        schedule_interval: Interval,
        schema: str | None = None,
    ) -> None:
        super().__init__(view_name, schema=schema)
        self.policy = RefreshPolicy(
            start_offset=_offset("start_offset", start_offset),
            end_offset=_offset("end_offset", end_offset),
            schedule_interval=to_timedelta(schedule_interval, "schedule_interval"),
        )

    def _key(self) -> tuple[Any, ...]:
        policy = self.policy
        return (*super()._key(), policy.start_offset, policy.end_offset, policy.schedule_interval)

    @classmethod
    def add_continuous_aggregate_policy(
        cls,
        operations: Operations,
        view_name: str,
        *,
        start_offset: Interval | None,
        end_offset: Interval | None,
        schedule_interval: Interval,
        schema: str | None = None,
    ) -> None:
        """Add the aggregate's refresh policy (no-op if it already has one)."""
        operations.invoke(
            cls(
                view_name,
                start_offset=start_offset,
                end_offset=end_offset,
                schedule_interval=schedule_interval,
                schema=schema,
            )
        )

    def _opposite(self) -> RemoveContinuousAggregatePolicyOp:
        return RemoveContinuousAggregatePolicyOp(
            self.table_name, schema=self.schema, _previous=self.policy
        )


@Operations.register_operation("remove_continuous_aggregate_policy")
class RemoveContinuousAggregatePolicyOp(ContinuousAggregateOp):
    """Remove the aggregate's refresh policy, if there is one."""

    def __init__(
        self,
        view_name: str,
        *,
        schema: str | None = None,
        _previous: RefreshPolicy | None = None,
    ) -> None:
        super().__init__(view_name, schema=schema)
        self._previous = _previous

    @classmethod
    def remove_continuous_aggregate_policy(
        cls, operations: Operations, view_name: str, *, schema: str | None = None
    ) -> None:
        """Remove the aggregate's refresh policy (no-op if there is none)."""
        operations.invoke(cls(view_name, schema=schema))

    def _opposite(self) -> AddContinuousAggregatePolicyOp:
        if self._previous is None:
            raise ValueError(
                f"remove_continuous_aggregate_policy on {self.table_name!r} is not reversible: "
                "the policy it removed is unknown"
            )
        policy = self._previous
        return AddContinuousAggregatePolicyOp(
            self.table_name,
            start_offset=policy.start_offset,
            end_offset=policy.end_offset,
            schedule_interval=policy.schedule_interval,
            schema=self.schema,
        )


# --------------------------------------------------------------------------- alter


@Operations.register_operation("alter_continuous_aggregate")
class AlterContinuousAggregateOp(ContinuousAggregateOp):
    """Turn real-time aggregation (``materialized_only``) or compression on or off.

    ``existing_*`` are the values before the change (for the reverse); a value left out is taken
    to be the opposite of the new one, since altering a setting to its current value changes
    nothing.
    """

    def __init__(
        self,
        view_name: str,
        *,
        materialized_only: bool | None = None,
        compression: bool | None = None,
        existing_materialized_only: bool | None = None,
        existing_compression: bool | None = None,
        schema: str | None = None,
    ) -> None:
        super().__init__(view_name, schema=schema)
        self.materialized_only = _flag("materialized_only", materialized_only)
        self.compression = _flag("compression", compression)
        if self.materialized_only is None and self.compression is None:
            raise ConfigurationError(
                "alter_continuous_aggregate needs materialized_only or compression"
            )
        self.existing_materialized_only = _flag(
            "existing_materialized_only", existing_materialized_only
        )
        self.existing_compression = _flag("existing_compression", existing_compression)

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.materialized_only, self.compression)

    @classmethod
    def alter_continuous_aggregate(
        cls,
        operations: Operations,
        view_name: str,
        *,
        materialized_only: bool | None = None,
        compression: bool | None = None,
        existing_materialized_only: bool | None = None,
        existing_compression: bool | None = None,
        schema: str | None = None,
    ) -> None:
        """Change ``materialized_only`` and/or ``compression`` of an aggregate."""
        operations.invoke(
            cls(
                view_name,
                materialized_only=materialized_only,
                compression=compression,
                existing_materialized_only=existing_materialized_only,
                existing_compression=existing_compression,
                schema=schema,
            )
        )

    def _opposite(self) -> AlterContinuousAggregateOp:
        def before(new: bool | None, existing: bool | None) -> bool | None:
            if new is None:
                return None
            return (not new) if existing is None else existing

        return AlterContinuousAggregateOp(
            self.table_name,
            materialized_only=before(self.materialized_only, self.existing_materialized_only),
            compression=before(self.compression, self.existing_compression),
            existing_materialized_only=self.materialized_only,
            existing_compression=self.compression,
            schema=self.schema,
        )


def create_ops(aggregate: ContinuousAggregate) -> list[MigrateOperation]:
    """The operations that create ``aggregate`` as declared, in order: the view, its refresh
    policy, compression and its policy, retention. Reversed, their ``reverse()`` s drop it."""
    ops: list[MigrateOperation] = [CreateContinuousAggregateOp.from_aggregate(aggregate)]
    name, where = aggregate.name, aggregate.schema
    if aggregate.refresh is not None:
        ops.append(
            AddContinuousAggregatePolicyOp(
                name,
                start_offset=aggregate.refresh.start_offset,
                end_offset=aggregate.refresh.end_offset,
                schedule_interval=aggregate.refresh.schedule_interval,
                schema=where,
            )
        )
    if aggregate.compression:
        ops.append(
            AlterContinuousAggregateOp(
                name, compression=True, existing_compression=False, schema=where
            )
        )
    if aggregate.compress_after is not None:
        ops.append(AddCompressionPolicyOp(name, aggregate.compress_after, schema=where))
    if aggregate.drop_after is not None:
        ops.append(AddRetentionPolicyOp(name, aggregate.drop_after, schema=where))
    return ops


# --------------------------------------------------------------------------- implementations


@Operations.implementation_for(CreateContinuousAggregateOp)
def create_continuous_aggregate(operations: Operations, op: CreateContinuousAggregateOp) -> None:
    """``CREATE MATERIALIZED VIEW ... WITH (timescaledb.continuous ...) ... WITH NO DATA``."""
    if _version(operations, op, "create_continuous_aggregate") is not None:
        operations.execute(
            schema.CreateContinuousAggregate(
                op.table_name,
                op.definition,
                schema=op.schema,
                materialized_only=op.materialized_only,
            )
        )


@Operations.implementation_for(DropContinuousAggregateOp)
def drop_continuous_aggregate(operations: Operations, op: DropContinuousAggregateOp) -> None:
    """``DROP MATERIALIZED VIEW [IF EXISTS]``."""
    if _version(operations, op, "drop_continuous_aggregate") is not None:
        operations.execute(
            schema.DropContinuousAggregate(op.table_name, schema=op.schema, if_exists=op.if_exists)
        )


@Operations.implementation_for(AddContinuousAggregatePolicyOp)
def add_continuous_aggregate_policy(
    operations: Operations, op: AddContinuousAggregatePolicyOp
) -> None:
    """``add_continuous_aggregate_policy(..., if_not_exists => true)``."""
    if _version(operations, op, "add_continuous_aggregate_policy") is not None:
        _execute(
            operations,
            schema.add_continuous_aggregate_policy_sql(op.table_name, op.schema, op.policy),
            op,
            "add_continuous_aggregate_policy",
        )


@Operations.implementation_for(RemoveContinuousAggregatePolicyOp)
def remove_continuous_aggregate_policy(
    operations: Operations, op: RemoveContinuousAggregatePolicyOp
) -> None:
    """``remove_continuous_aggregate_policy(..., if_exists => true)``."""
    if _version(operations, op, "remove_continuous_aggregate_policy") is not None:
        _execute(
            operations,
            schema.remove_continuous_aggregate_policy_sql(op.table_name, op.schema),
            op,
            "remove_continuous_aggregate_policy",
        )


@Operations.implementation_for(AlterContinuousAggregateOp)
def alter_continuous_aggregate(operations: Operations, op: AlterContinuousAggregateOp) -> None:
    """``ALTER MATERIALIZED VIEW ... SET (...)``; decompresses before turning compression off."""
    version = _version(operations, op, "alter_continuous_aggregate")
    if version is None:
        return
    if op.compression is False:
        # TimescaleDB refuses to disable compression while compressed chunks exist.
        _execute(
            operations, schema.decompress_sql(op.table_name, op.schema), op, "decompress_chunk"
        )
    operations.execute(
        schema.AlterContinuousAggregate(
            op.table_name,
            schema=op.schema,
            materialized_only=op.materialized_only,
            compression=op.compression,
            version=version,
        )
    )


# --------------------------------------------------------------------------- renderers


def _call(
    context: AutogenContext, name: str, op: ContinuousAggregateOp, *args: str, **kwargs: str
) -> str:
    if context.imports is not None:
        context.imports.add("import alembic_ext")
    prefix = context.opts.get("alembic_module_prefix") or "op."
    parts = [repr(op.table_name), *args]
    parts.extend(f"{key}={value}" for key, value in kwargs.items())
    if op.schema is not None:
        parts.append(f"schema={op.schema!r}")
    return f"{prefix}{name}({', '.join(parts)})"


def _sql_text(sql: str) -> str:
    # Readable in the revision: a triple-quoted string when that needs no escaping.
    if '"""' not in sql and "\\" not in sql and not sql.endswith('"'):
        return '"""' + sql + '"""'
    return repr(sql)


def _optional_interval(value: timedelta | None, context: AutogenContext) -> str:
    return "None" if value is None else render_interval(value, context)


@renderers.dispatch_for(CreateContinuousAggregateOp)
def _render_create(context: AutogenContext, op: CreateContinuousAggregateOp) -> str:
    extra = {} if op.materialized_only else {"materialized_only": "False"}
    return _call(context, "create_continuous_aggregate", op, _sql_text(op.definition), **extra)


@renderers.dispatch_for(DropContinuousAggregateOp)
def _render_drop(context: AutogenContext, op: DropContinuousAggregateOp) -> str:
    extra = {"if_exists": "True"} if op.if_exists else {}
    return _call(context, "drop_continuous_aggregate", op, **extra)


@renderers.dispatch_for(AddContinuousAggregatePolicyOp)
def _render_add_policy(context: AutogenContext, op: AddContinuousAggregatePolicyOp) -> str:
    policy = op.policy
    return _call(
        context,
        "add_continuous_aggregate_policy",
        op,
        start_offset=_optional_interval(policy.start_offset, context),
        end_offset=_optional_interval(policy.end_offset, context),
        schedule_interval=render_interval(policy.schedule_interval, context),
    )


@renderers.dispatch_for(RemoveContinuousAggregatePolicyOp)
def _render_remove_policy(context: AutogenContext, op: RemoveContinuousAggregatePolicyOp) -> str:
    return _call(context, "remove_continuous_aggregate_policy", op)


@renderers.dispatch_for(AlterContinuousAggregateOp)
def _render_alter(context: AutogenContext, op: AlterContinuousAggregateOp) -> str:
    settings = {
        "materialized_only": op.materialized_only,
        "compression": op.compression,
        "existing_materialized_only": op.existing_materialized_only,
        "existing_compression": op.existing_compression,
    }
    kwargs = {key: repr(value) for key, value in settings.items() if value is not None}
    return _call(context, "alter_continuous_aggregate", op, **kwargs)
