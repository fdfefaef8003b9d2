"""TimescaleDB and Citus settings of a signals table, read by the DDL hooks and by alembic_ext."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = [
    "DISTRIBUTION_INFO_KEY",
    "TIMESCALE_INFO_KEY",
    "DistributionOptions",
    "OrderByItem",
    "TimescaleOptions",
    "get_distribution_options",
    "get_timescale_options",
]

#: Key under which :class:`TimescaleOptions` is stored in ``Table.info``.
TIMESCALE_INFO_KEY = "sa_signals.timescale"
#: Key under which :class:`DistributionOptions` is stored in ``Table.info``.
DISTRIBUTION_INFO_KEY = "sa_signals.distribution"

_ORDER_BY = re.compile(
    r"^\s*(?P<column>[A-Za-z_][A-Za-z0-9_$]*)"
    r"(?:\s+(?P<direction>ASC|DESC))?"
    r"(?:\s+NULLS\s+(?P<nulls>FIRST|LAST))?\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class OrderByItem:
    """One ``column [ASC|DESC] [NULLS FIRST|LAST]`` element of a compression order-by."""

    column: str
    descending: bool = False
    nulls_first: bool | None = None

    @classmethod
    def parse(cls, text: str) -> OrderByItem:
        """Parse ``"ts DESC"`` style text; raise :class:`ConfigurationError` on anything else."""
        match = _ORDER_BY.match(text)
        if match is None:
            raise ConfigurationError(
                f"order_by item {text!r} is not of the form 'column [ASC|DESC] [NULLS FIRST|LAST]'"
            )
        direction = (match["direction"] or "ASC").upper()
        nulls = match["nulls"]
        descending = direction == "DESC"
        nulls_first = None if nulls is None else nulls.upper() == "FIRST"
        # PostgreSQL's defaults: NULLS LAST for ASC, NULLS FIRST for DESC; normalise them away so
        # that "ts DESC" and "ts DESC NULLS FIRST" compare equal.
        if nulls_first is not None and nulls_first == descending:
            nulls_first = None
        return cls(match["column"], descending, nulls_first)

    def sql(self, quote: str) -> str:
        """Render with the column already quoted as ``quote``."""
        out = quote + (" DESC" if self.descending else " ASC")
        if self.nulls_first is not None:
            out += " NULLS FIRST" if self.nulls_first else " NULLS LAST"
        return out


def _interval(name: str, value: timedelta | None, *, optional: bool) -> None:
    if value is None:
        if optional:
            return
        raise ConfigurationError(f"{name} must be a timedelta, not None")
    if not isinstance(value, timedelta):
        raise ConfigurationError(f"{name} must be a datetime.timedelta, got {value!r}")
    if value <= timedelta(0):
        raise ConfigurationError(f"{name} must be positive, got {value!r}")


def _rollup_widths(values: object) -> tuple[timedelta, ...]:
    if isinstance(values, timedelta) or not isinstance(values, (list, tuple)):
        raise ConfigurationError(f"rollups must be a list of timedelta widths, got {values!r}")
    for value in values:
        _interval("rollups item", value, optional=False)
        if value % timedelta(seconds=1):
            raise ConfigurationError(f"rollup widths must be whole seconds, got {value!r}")
    if len(set(values)) != len(values):
        raise ConfigurationError(f"rollup widths must be distinct, got {values!r}")
    return tuple(sorted(values))


@dataclass(frozen=True)
class TimescaleOptions:
    """How a signals table is laid out on TimescaleDB.

    The defaults follow the spec: 7-day chunks on ``ts``, compression segmented by
    ``provider, symbol, name`` and ordered by ``ts DESC`` after 30 days, no retention.

    ``require_timescale`` turns a missing ``timescaledb`` extension into
    :class:`~sa_signals.errors.TimescaleUnavailableError` instead of a warning;
    ``create_extension`` runs ``CREATE EXTENSION IF NOT EXISTS timescaledb`` first when the
    extension is available on the server but not installed in the database.

    ``rollups`` (bucket widths, e.g. ``(timedelta(hours=1), timedelta(days=1))``) declares one
    continuous aggregate per width on the table's ``MetaData``
    (:func:`~sa_signals.schema.aggregates.signals_rollup` with its defaults).
    """

    time_column: str = "ts"
    chunk_time_interval: timedelta = timedelta(days=7)
    compression: bool = True
    segment_by: tuple[str, ...] = ("provider", "symbol", "name")
    order_by: tuple[str, ...] = ("ts DESC",)
    compress_after: timedelta | None = timedelta(days=30)
    drop_after: timedelta | None = None
    require_timescale: bool = False
    create_extension: bool = False
    rollups: tuple[timedelta, ...] = ()
    _order_by_items: tuple[OrderByItem, ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # Accept lists from callers but keep the value hashable and comparable.
        object.__setattr__(self, "segment_by", tuple(self.segment_by))
        object.__setattr__(self, "order_by", tuple(self.order_by))
        object.__setattr__(self, "rollups", _rollup_widths(self.rollups))
        _interval("chunk_time_interval", self.chunk_time_interval, optional=False)
        _interval("compress_after", self.compress_after, optional=True)
        _interval("drop_after", self.drop_after, optional=True)
        for column in (self.time_column, *self.segment_by):
            if not isinstance(column, str) or not column:
                raise ConfigurationError(f"column names must be non-empty strings, got {column!r}")
        items = tuple(OrderByItem.parse(item) for item in self.order_by)
        object.__setattr__(self, "_order_by_items", items)

    @property
    def order_by_items(self) -> tuple[OrderByItem, ...]:
        """The parsed order-by elements."""
        return self._order_by_items

    def replace(self, **changes: object) -> TimescaleOptions:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def table_of(table: object) -> Table:
    """The Core ``Table`` of ``table``: a ``Table``, a mapped class or anything with a
    ``__table__`` that is a ``Table``; :class:`~sa_signals.errors.ConfigurationError` otherwise.
    """
    from sqlalchemy import Table

    if not isinstance(table, Table):
        table = getattr(table, "__table__", table)
    if not isinstance(table, Table):
        raise ConfigurationError(
            f"table must be a sqlalchemy Table or a mapped class with __table__, got {table!r}"
        )
    return table


def get_timescale_options(table: Table | object) -> TimescaleOptions | None:
    """The :class:`TimescaleOptions` stored on ``table`` (a ``Table`` or a mapped class), or
    ``None`` for a plain table."""
    value = table_of(table).info.get(TIMESCALE_INFO_KEY)
    return value if isinstance(value, TimescaleOptions) else None


#: Citus's own ``colocate_with`` values: the default colocation group of the column's type, or
#: a new group of the table's own.
_COLOCATE_KEYWORDS = frozenset({"default", "none"})


@dataclass(frozen=True)
class DistributionOptions:
    """How a signals table is distributed on Citus (a hash-distributed table).

    ``column`` is the distribution column; it must be part of the primary key
    ``(provider, symbol, ts, name)``, since Citus enforces a unique constraint only when it
    contains the distribution column. ``symbol`` (the default) spreads the load over as many
    shards as there are symbols and keeps every per-symbol query (latest, history, metrics) on
    one shard.

    ``shard_count`` (``None``: Citus's ``citus.shard_count``, 32 by default) and
    ``colocate_with`` (``"default"``, ``"none"`` or the name of a distributed table, optionally
    schema-qualified: shards of equal distribution values then live on the same node) are passed
    to ``create_distributed_table``. Citus refuses a ``shard_count`` together with a table to
    colocate with (the table's count applies), and so does this class.

    ``require_citus`` turns a missing ``citus`` extension into
    :class:`~sa_signals.errors.CitusUnavailableError` instead of a warning; ``create_extension``
    runs ``CREATE EXTENSION IF NOT EXISTS citus`` first when the server has it loaded but the
    database does not have it (the workers need it in the same database too).
    """

    column: str = "symbol"
    shard_count: int | None = None
    colocate_with: str = "default"
    require_citus: bool = False
    create_extension: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.column, str) or not self.column:
            raise ConfigurationError(
                f"distribution column must be a non-empty string, got {self.column!r}"
            )
        count = self.shard_count
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64000
        ):
            raise ConfigurationError(
                f"shard_count must be None or an int from 1 to 64000, got {count!r}"
            )
        colocate = self.colocate_with
        if not isinstance(colocate, str) or not colocate.strip():
            raise ConfigurationError(
                "colocate_with must be 'default', 'none' or a distributed table's name, "
                f"got {colocate!r}"
            )
        if colocate.lower() in _COLOCATE_KEYWORDS:
            object.__setattr__(self, "colocate_with", colocate.lower())
        elif count is not None:
            raise ConfigurationError(
                f"shard_count={count} and colocate_with={colocate!r} do not combine: a table "
                "colocated with another has that table's shard count; pass one of them"
            )
        for flag in ("require_citus", "create_extension"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigurationError(f"{flag} must be True or False")

    @property
    def colocates_with_table(self) -> bool:
        """Whether ``colocate_with`` names a table (not ``"default"`` / ``"none"``)."""
        return self.colocate_with not in _COLOCATE_KEYWORDS

    def replace(self, **changes: object) -> DistributionOptions:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def get_distribution_options(table: Table | object) -> DistributionOptions | None:
    """The :class:`DistributionOptions` stored on ``table`` (a ``Table`` or a mapped class), or
    ``None`` when not distributed."""
    value = table_of(table).info.get(DISTRIBUTION_INFO_KEY)
    return value if isinstance(value, DistributionOptions) else None
