"""Alembic operations for TimescaleDB: hypertables, compression and policies.

Each operation is a :class:`~alembic.operations.MigrateOperation` registered on
:class:`~alembic.operations.Operations`, so ``import alembic_ext`` makes ``op.create_hypertable``
and friends available in migration scripts. ``reverse()`` lets autogenerate write downgrades.

A hypertable cannot be turned back into a plain table (TimescaleDB has no such function), so the
reverse of :class:`CreateHypertableOp` is :class:`KeepHypertableOp`: it changes nothing and says
so. Operations written for a table that the same revision creates reverse to nothing
(:class:`DroppedWithTableOp`): the downgrade's ``drop_table`` removes the hypertable with its
chunks, compression settings and policies, and disabling compression first would fail once any
chunk is compressed.

:class:`CreateSchemaOp` / :class:`DropSchemaOp` create the schema of a model table that does not
exist yet (Alembic compares tables, not schemas).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from alembic.operations import MigrateOperation, Operations

from sa_signals.errors import ConfigurationError
from sa_signals.schema.options import OrderByItem

__all__ = [
    "AddCompressionPolicyOp",
    "AddRetentionPolicyOp",
    "CreateHypertableOp",
    "CreateSchemaOp",
    "DisableCompressionOp",
    "DropSchemaOp",
    "DroppedWithTableOp",
    "EnableCompressionOp",
    "Interval",
    "KeepHypertableOp",
    "RemoveCompressionPolicyOp",
    "RemoveRetentionPolicyOp",
    "SetChunkTimeIntervalOp",
    "TimescaleOp",
    "to_timedelta",
]

#: An interval given to an operation: a ``timedelta`` or text such as ``"7 days"``.
Interval = timedelta | str

_UNITS = {
    "microsecond": timedelta(microseconds=1),
    "millisecond": timedelta(milliseconds=1),
    "second": timedelta(seconds=1),
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}
_ALIASES = {"us": "microsecond", "ms": "millisecond", "s": "second", "sec": "second",
            "min": "minute", "h": "hour", "d": "day", "w": "week"}  # fmt: skip
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", re.IGNORECASE)
_CLOCK = re.compile(r"\s*(\d+):(\d{2})(?::(\d{2}(?:\.\d+)?))?\s*$")


def to_timedelta(value: Interval, name: str = "interval") -> timedelta:
    """Normalise an interval to a positive ``timedelta``.

    Text accepts ``"<number> <unit>"`` parts (microseconds up to weeks, singular or plural) and an
    optional trailing ``HH:MM[:SS]``, e.g. ``"7 days"``, ``"1 day 12:00"``. Months and years have
    no fixed length, so they are rejected.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, str):
        result = _parse_interval(value, name)
    else:
        raise ConfigurationError(f"{name} must be a timedelta or interval text, got {value!r}")
    if result <= timedelta(0):
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
    return result


def _parse_interval(text: str, name: str) -> timedelta:
    rest = text.strip()
    total = timedelta(0)
    clock = _CLOCK.search(rest)
    if clock is not None:
        hours, minutes, seconds = clock.group(1), clock.group(2), clock.group(3) or "0"
        total += timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds))
        rest = rest[: clock.start()]
    position = 0
    while position < len(rest):
        match = _PART.match(rest, position)
        if match is None:
            break
        unit = match.group(2).lower()
        unit = _ALIASES.get(unit, unit.removesuffix("s"))
        if unit not in _UNITS:
            break
        total += _UNITS[unit] * float(match.group(1))
        position = match.end()
    if position != len(rest) or (not rest.strip() and clock is None):
        raise ConfigurationError(
            f"{name} {text!r} is not an interval such as '7 days' or '12 hours' "
            "(months and years are not supported)"
        )
    return total


def _order_by_text(items: Sequence[str | OrderByItem]) -> tuple[str, ...]:
    # Keep the user's text but validate it now, so a typo fails when the migration is written.
    out = []
    for item in items:
        parsed = OrderByItem.parse(item) if isinstance(item, str) else item
        text = parsed.column + (" DESC" if parsed.descending else "")
        if parsed.nulls_first is not None:
            text += " NULLS FIRST" if parsed.nulls_first else " NULLS LAST"
        out.append(text)
    return tuple(out)


class TimescaleOp(MigrateOperation):
    """Base of the TimescaleDB operations: one table, optionally schema-qualified.

    Autogenerate sets ``new_table`` on operations for a table that the same revision creates:
    their reverse is :class:`DroppedWithTableOp`, since dropping the table undoes them.
    """

    def __init__(self, table_name: str, *, schema: str | None = None) -> None:
        if not isinstance(table_name, str) or not table_name:
            raise ConfigurationError(f"table name must be a non-empty string, got {table_name!r}")
        self.table_name = table_name
        self.schema = schema
        #: Whether the same revision creates the table (then the reverse is nothing).
        self.new_table = False

    def _key(self) -> tuple[Any, ...]:
        return (type(self).__name__, self.table_name, self.schema)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimescaleOp) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._key()[1:]!r}"

    def to_diff_tuple(self) -> tuple[Any, ...]:
        """``(kind, schema, table, *settings)``, as ``alembic check`` reports differences."""
        kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__.removesuffix("Op")).lower()
        return (kind, self.schema, self.table_name, *self._key()[3:])

    def reverse(self) -> MigrateOperation:
        if self.new_table:
            return DroppedWithTableOp(self)
        return self._opposite()

    def _opposite(self) -> MigrateOperation:
        raise NotImplementedError


class DroppedWithTableOp(MigrateOperation):
    """The reverse of an operation on a table created in the same revision: nothing to run.

    The downgrade drops the table, and with it the hypertable, its chunks, compression settings
    and policies. Renders no line; never invoked.
    """

    def __init__(self, original: TimescaleOp) -> None:
        self.original = original

    def reverse(self) -> TimescaleOp:
        return self.original

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("dropped_with_table", self.original.schema, self.original.table_name)


class _SchemaOp(MigrateOperation):
    def __init__(self, schema_name: str) -> None:
        if not isinstance(schema_name, str) or not schema_name:
            raise ConfigurationError(f"schema name must be a non-empty string, got {schema_name!r}")
        self.schema_name = schema_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SchemaOp) and (type(other), other.schema_name) == (
            type(self),
            self.schema_name,
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.schema_name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schema_name!r})"


@Operations.register_operation("create_schema")
class CreateSchemaOp(_SchemaOp):
    """``CREATE SCHEMA IF NOT EXISTS``: the schema of a model table that does not exist yet."""

    def __init__(self, schema_name: str, *, if_not_exists: bool = True) -> None:
        super().__init__(schema_name)
        self.if_not_exists = if_not_exists

    @classmethod
    def create_schema(
        cls, operations: Operations, schema_name: str, *, if_not_exists: bool = True
    ) -> None:
        """Create ``schema_name`` (no error when it exists, unless ``if_not_exists=False``)."""
        operations.invoke(cls(schema_name, if_not_exists=if_not_exists))

    def reverse(self) -> DropSchemaOp:
        return DropSchemaOp(self.schema_name)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_schema", self.schema_name)


@Operations.register_operation("drop_schema")
class DropSchemaOp(_SchemaOp):
    """``DROP SCHEMA IF EXISTS`` (``RESTRICT``: fails while anything is left in it)."""

    def __init__(self, schema_name: str, *, if_exists: bool = True) -> None:
        super().__init__(schema_name)
        self.if_exists = if_exists

    @classmethod
    def drop_schema(
        cls, operations: Operations, schema_name: str, *, if_exists: bool = True
    ) -> None:
        """Drop ``schema_name`` if it is empty; objects left in it make this fail."""
        operations.invoke(cls(schema_name, if_exists=if_exists))

    def reverse(self) -> CreateSchemaOp:
        return CreateSchemaOp(self.schema_name)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_schema", self.schema_name)


@Operations.register_operation("create_hypertable")
class CreateHypertableOp(TimescaleOp):
    """``create_hypertable``: partition a table by time (TimescaleDB's default indexes off)."""

    def __init__(
        self,
        table_name: str,
        time_column: str,
        *,
        chunk_time_interval: Interval = "7 days",
        schema: str | None = None,
        if_not_exists: bool = True,
        migrate_data: bool = False,
    ) -> None:
        super().__init__(table_name, schema=schema)
        self.time_column = time_column
        self.chunk_time_interval = to_timedelta(chunk_time_interval, "chunk_time_interval")
        self.if_not_exists = if_not_exists
        self.migrate_data = migrate_data

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.time_column, self.chunk_time_interval)

    @classmethod
    def create_hypertable(
        cls,
        operations: Operations,
        table_name: str,
        time_column: str,
        *,
        chunk_time_interval: Interval = "7 days",
        schema: str | None = None,
        if_not_exists: bool = True,
        migrate_data: bool = False,
    ) -> None:
        """Turn ``table_name`` into a hypertable partitioned on ``time_column``.

        ``migrate_data=True`` is needed when the table already holds rows.
        """
        operations.invoke(
            cls(
                table_name,
                time_column,
                chunk_time_interval=chunk_time_interval,
                schema=schema,
                if_not_exists=if_not_exists,
                migrate_data=migrate_data,
            )
        )

    def _opposite(self) -> KeepHypertableOp:
        return KeepHypertableOp(self.table_name, schema=self.schema)


@Operations.register_operation("keep_hypertable")
class KeepHypertableOp(TimescaleOp):
    """The reverse of ``create_hypertable``, which does not exist: the table stays a hypertable.

    TimescaleDB cannot convert a hypertable back into a plain table. This operation changes
    nothing; it only logs that fact. Drop the table (an autogenerated downgrade of a migration
    that created the table does so next) or copy its rows into a new plain table by hand.
    """

    @classmethod
    def keep_hypertable(
        cls, operations: Operations, table_name: str, *, schema: str | None = None
    ) -> None:
        """Record that ``table_name`` stays a hypertable (a no-op, logged)."""
        operations.invoke(cls(table_name, schema=schema))

    def _opposite(self) -> KeepHypertableOp:
        return KeepHypertableOp(self.table_name, schema=self.schema)


@Operations.register_operation("set_chunk_time_interval")
class SetChunkTimeIntervalOp(TimescaleOp):
    """``set_chunk_time_interval``: the interval of chunks created from now on."""

    def __init__(
        self,
        table_name: str,
        chunk_time_interval: Interval,
        *,
        schema: str | None = None,
        _previous: Interval | None = None,
    ) -> None:
        super().__init__(table_name, schema=schema)
        self.chunk_time_interval = to_timedelta(chunk_time_interval, "chunk_time_interval")
        self._previous = None if _previous is None else to_timedelta(_previous)

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.chunk_time_interval)

    @classmethod
    def set_chunk_time_interval(
        cls,
        operations: Operations,
        table_name: str,
        chunk_time_interval: Interval,
        *,
        schema: str | None = None,
    ) -> None:
        """Change the chunk interval of a hypertable (existing chunks keep theirs)."""
        operations.invoke(cls(table_name, chunk_time_interval, schema=schema))

    def _opposite(self) -> SetChunkTimeIntervalOp:
        if self._previous is None:
            raise ValueError(
                f"set_chunk_time_interval on {self.table_name!r} is not reversible: "
                "the previous interval is unknown"
            )
        return SetChunkTimeIntervalOp(
            self.table_name,
            self._previous,
            schema=self.schema,
            _previous=self.chunk_time_interval,
        )


def _columns(
    new: Sequence[Any] | None, old: Sequence[Any] | None, name: str, alias: str
) -> Sequence[Any]:
    # segmentby / orderby (TimescaleDB's spelling) stay accepted for revisions written with them.
    if new is not None and old is not None:
        raise ConfigurationError(f"pass {name}= or its alias {alias}=, not both")
    value = new if new is not None else old if old is not None else ()
    if isinstance(value, str):
        raise ConfigurationError(f"{name} must be a list of column names, not a string")
    return value


@Operations.register_operation("enable_compression")
class EnableCompressionOp(TimescaleOp):
    """Turn compression (the columnstore) on, or change its segment-by / order-by.

    ``segment_by`` / ``order_by`` are spelled as in :class:`~sa_signals.TimescaleOptions`;
    TimescaleDB's ``segmentby`` / ``orderby`` are accepted aliases.
    """

    def __init__(
        self,
        table_name: str,
        *,
        segment_by: Sequence[str] | None = None,
        order_by: Sequence[str | OrderByItem] | None = None,
        schema: str | None = None,
        segmentby: Sequence[str] | None = None,
        orderby: Sequence[str | OrderByItem] | None = None,
        _previous: tuple[Sequence[str], Sequence[str | OrderByItem]] | None = None,
    ) -> None:
        super().__init__(table_name, schema=schema)
        self.segment_by: tuple[str, ...] = tuple(
            _columns(segment_by, segmentby, "segment_by", "segmentby")
        )
        self.order_by: tuple[str, ...] = _order_by_text(
            _columns(order_by, orderby, "order_by", "orderby")
        )
        #: Settings before this op (for ``reverse()``); ``None`` when compression was off.
        self._previous = (
            None if _previous is None else (tuple(_previous[0]), _order_by_text(_previous[1]))
        )

    @property
    def segmentby(self) -> tuple[str, ...]:
        """Alias of :attr:`segment_by`."""
        return self.segment_by

    @property
    def orderby(self) -> tuple[str, ...]:
        """Alias of :attr:`order_by`."""
        return self.order_by

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.segment_by, self.order_by)

    @classmethod
    def enable_compression(
        cls,
        operations: Operations,
        table_name: str,
        *,
        segment_by: Sequence[str] | None = None,
        order_by: Sequence[str] | None = None,
        schema: str | None = None,
        segmentby: Sequence[str] | None = None,
        orderby: Sequence[str] | None = None,
    ) -> None:
        """Enable compression segmented by ``segment_by`` and ordered by ``order_by``."""
        operations.invoke(
            cls(
                table_name,
                segment_by=segment_by,
                order_by=order_by,
                schema=schema,
                segmentby=segmentby,
                orderby=orderby,
            )
        )

    def _opposite(self) -> EnableCompressionOp | DisableCompressionOp:
        if self._previous is not None:
            segment_by, order_by = self._previous
            return EnableCompressionOp(
                self.table_name,
                segment_by=segment_by,
                order_by=order_by,
                schema=self.schema,
                _previous=(self.segment_by, self.order_by),
            )
        return DisableCompressionOp(
            self.table_name, schema=self.schema, _previous=(self.segment_by, self.order_by)
        )


@Operations.register_operation("disable_compression")
class DisableCompressionOp(TimescaleOp):
    """Turn compression off.

    TimescaleDB refuses while any chunk is compressed. ``decompress=True`` decompresses every
    compressed chunk first (it rewrites them: time and disk space grow with the data); without
    it the operation raises :class:`~sa_signals.MigrationError` naming the chunks' count. A
    compression policy must be removed before (autogenerate writes that first).
    """

    def __init__(
        self,
        table_name: str,
        *,
        schema: str | None = None,
        decompress: bool = False,
        _previous: tuple[Sequence[str], Sequence[str | OrderByItem]] | None = None,
    ) -> None:
        super().__init__(table_name, schema=schema)
        self.decompress = decompress
        self._previous = (
            None if _previous is None else (tuple(_previous[0]), _order_by_text(_previous[1]))
        )

    @classmethod
    def disable_compression(
        cls,
        operations: Operations,
        table_name: str,
        *,
        schema: str | None = None,
        decompress: bool = False,
    ) -> None:
        """Disable compression; ``decompress=True`` decompresses compressed chunks first."""
        operations.invoke(cls(table_name, schema=schema, decompress=decompress))

    def _opposite(self) -> EnableCompressionOp:
        segment_by, order_by = self._previous if self._previous is not None else ((), ())
        return EnableCompressionOp(
            self.table_name, segment_by=segment_by, order_by=order_by, schema=self.schema
        )


class _PolicyOp(TimescaleOp):
    def __init__(self, table_name: str, after: Interval, *, schema: str | None, name: str) -> None:
        super().__init__(table_name, schema=schema)
        self.after = to_timedelta(after, name)

    def _key(self) -> tuple[Any, ...]:
        return (*super()._key(), self.after)


class _RemovePolicyOp(TimescaleOp):
    def __init__(
        self, table_name: str, *, schema: str | None = None, _previous: Interval | None = None
    ) -> None:
        super().__init__(table_name, schema=schema)
        self._previous = None if _previous is None else to_timedelta(_previous)

    def _previous_or_fail(self, op_name: str) -> timedelta:
        if self._previous is None:
            raise ValueError(
                f"{op_name} on {self.table_name!r} is not reversible: the policy it removed "
                "is unknown"
            )
        return self._previous


@Operations.register_operation("add_compression_policy")
class AddCompressionPolicyOp(_PolicyOp):
    """Compress chunks older than ``compress_after`` (``add_columnstore_policy`` on >= 2.18)."""

    def __init__(
        self, table_name: str, compress_after: Interval, *, schema: str | None = None
    ) -> None:
        super().__init__(table_name, compress_after, schema=schema, name="compress_after")

    @property
    def compress_after(self) -> timedelta:
        """Chunks whose data is older than this are compressed."""
        return self.after

    @classmethod
    def add_compression_policy(
        cls,
        operations: Operations,
        table_name: str,
        compress_after: Interval,
        *,
        schema: str | None = None,
    ) -> None:
        """Add a compression policy (no-op if the table already has one)."""
        operations.invoke(cls(table_name, compress_after, schema=schema))

    def _opposite(self) -> RemoveCompressionPolicyOp:
        return RemoveCompressionPolicyOp(
            self.table_name, schema=self.schema, _previous=self.compress_after
        )


@Operations.register_operation("remove_compression_policy")
class RemoveCompressionPolicyOp(_RemovePolicyOp):
    """Remove the compression policy, if there is one."""

    @classmethod
    def remove_compression_policy(
        cls, operations: Operations, table_name: str, *, schema: str | None = None
    ) -> None:
        """Remove the table's compression policy (no-op if there is none)."""
        operations.invoke(cls(table_name, schema=schema))

    def _opposite(self) -> AddCompressionPolicyOp:
        after = self._previous_or_fail("remove_compression_policy")
        return AddCompressionPolicyOp(self.table_name, after, schema=self.schema)


@Operations.register_operation("add_retention_policy")
class AddRetentionPolicyOp(_PolicyOp):
    """Drop chunks whose data is older than ``drop_after``."""

    def __init__(self, table_name: str, drop_after: Interval, *, schema: str | None = None) -> None:
        super().__init__(table_name, drop_after, schema=schema, name="drop_after")

    @property
    def drop_after(self) -> timedelta:
        """Chunks whose data is older than this are dropped."""
        return self.after

    @classmethod
    def add_retention_policy(
        cls,
        operations: Operations,
        table_name: str,
        drop_after: Interval,
        *,
        schema: str | None = None,
    ) -> None:
        """Add a retention policy (no-op if the table already has one)."""
        operations.invoke(cls(table_name, drop_after, schema=schema))

    def _opposite(self) -> RemoveRetentionPolicyOp:
        return RemoveRetentionPolicyOp(
            self.table_name, schema=self.schema, _previous=self.drop_after
        )


@Operations.register_operation("remove_retention_policy")
class RemoveRetentionPolicyOp(_RemovePolicyOp):
    """Remove the retention policy, if there is one."""

    @classmethod
    def remove_retention_policy(
        cls, operations: Operations, table_name: str, *, schema: str | None = None
    ) -> None:
        """Remove the table's retention policy (no-op if there is none)."""
        operations.invoke(cls(table_name, schema=schema))

    def _opposite(self) -> AddRetentionPolicyOp:
        after = self._previous_or_fail("remove_retention_policy")
        return AddRetentionPolicyOp(self.table_name, after, schema=self.schema)
