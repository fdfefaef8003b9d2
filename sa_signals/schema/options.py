"""TimescaleDB settings of a signals table, read by the DDL hooks and by alembic_ext."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = ["TIMESCALE_INFO_KEY", "OrderByItem", "TimescaleOptions", "get_timescale_options"]

#: Key under which :class:`TimescaleOptions` is stored in ``Table.info``.
TIMESCALE_INFO_KEY = "sa_signals.timescale"

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


def get_timescale_options(table: Table) -> TimescaleOptions | None:
    """The :class:`TimescaleOptions` stored on ``table``, or ``None`` for a plain table."""
    value = table.info.get(TIMESCALE_INFO_KEY)
    return value if isinstance(value, TimescaleOptions) else None
