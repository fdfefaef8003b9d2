"""Read-side use of the signals rollups: complete buckets from the aggregates, edges from the table.

When a signals table has rollups (:func:`~sa_signals.schema.aggregates.signals_rollup`,
``TimescaleOptions(rollups=...)``) and they exist in the database, ``get_signal_summary``,
``get_signal_metrics`` and ``get_signal_buckets`` (bucket widths that are multiples of a rollup's)
read them. The answer is the raw-table computation's, not an approximation of it:

* a rollup bucket is used only when TimescaleDB vouches for it: it lies below the aggregate's
  watermark (materialized) and in no pending invalidation range (rows written, replayed or
  deleted since its last refresh are logged there by TimescaleDB until the next refresh
  re-materializes them). This holds whatever ``materialized_only`` says: real-time aggregation
  covers only the buckets above the watermark, never the invalidated ones below it;
* widest level first: the window is covered by the widest rollup's trusted buckets, the gaps by
  the next level's, and what is left (the window's partial edges, the buckets written after the
  last refresh, the invalidated ones) by the signals table itself;
* one statement reads all the parts (``UNION ALL``); Python merges them: counts and extremes
  directly, means and standard deviations with Chan et al.'s formula over per-part
  ``(count, mean, M2)`` in two magnitude groups, as the raw-table queries do (nothing overflows).

The watermark and the invalidation ranges are read from TimescaleDB's catalog
(``_timescaledb_functions.cagg_watermark``, ``_timescaledb_catalog.continuous_aggs_*``) in one
small statement before the query. A write committed between the two statements can make that one
call mix the states before and after it for the buckets it touched, as any two reads would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    column,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy import Interval as SQLInterval
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import ColumnElement

from ..schema.aggregates import (
    ROLLUP_LARGE_VALUE,
    ROLLUP_SCALE_DOWN,
    Rollup,
    combine_moments,
    get_rollups,
)
from .queries import (
    BUCKET_ORIGIN,
    SCALE_UP,
    QueryPlan,
    SignalBucket,
    SignalMetrics,
    SignalSummary,
    _mean_and_stddev,
    _utc,
)

__all__ = [
    "RollupState",
    "cover",
    "plan_buckets_rollup",
    "plan_metrics_rollup",
    "plan_rollup_state",
    "plan_summary_rollup",
]

_UTC = timezone.utc
#: TimescaleDB's internal time for timestamptz: microseconds since the Unix epoch.
_PG_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_INTERNAL_INFINITY = 2**62  # beyond any finite timestamp (TimescaleDB uses int64 extremes)
#: Upper end of an open interval (the window of summary and metrics has none).
_END = datetime.max.replace(tzinfo=_UTC)
_START = datetime.min.replace(tzinfo=_UTC)
_US = timedelta(microseconds=1)

Interval = tuple[datetime, datetime]


@dataclass(frozen=True)
class RollupState:
    """One rollup level as the database has it: materialized up to ``watermark`` (exclusive),
    except the bucket-aligned ``invalid`` intervals (pending invalidations)."""

    rollup: Rollup
    watermark: datetime
    invalid: tuple[Interval, ...]

    @property
    def width(self) -> timedelta:
        return self.rollup.width


# --------------------------------------------------------------------------- catalog


def _from_internal(value: int | None) -> datetime:
    if value is None or value <= -_INTERNAL_INFINITY:
        return _START
    if value >= _INTERNAL_INFINITY:
        return _END
    try:
        return _PG_EPOCH + timedelta(microseconds=int(value))
    except OverflowError:
        return _START if value < 0 else _END


_STATE_SQL = text(
    "SELECT ca.user_view_name, "
    "_timescaledb_functions.cagg_watermark(ca.mat_hypertable_id) AS watermark, "
    "pending.lo, pending.hi "
    "FROM _timescaledb_catalog.continuous_agg AS ca "
    "LEFT JOIN LATERAL ("
    "SELECT h.lowest_modified_value AS lo, h.greatest_modified_value AS hi "
    "FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log AS h "
    "WHERE h.hypertable_id = ca.raw_hypertable_id "
    "UNION ALL "
    "SELECT m.lowest_modified_value, m.greatest_modified_value "
    "FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log AS m "
    "WHERE m.materialization_id = ca.mat_hypertable_id"
    ") AS pending ON true "
    "WHERE ca.user_view_schema = COALESCE(CAST(:schema AS text), current_schema()) "
    "AND ca.user_view_name = ANY(CAST(:names AS text[]))"
).columns(
    column("user_view_name", Text()),
    column("watermark", BigInteger()),
    column("lo", BigInteger()),
    column("hi", BigInteger()),
)


def _floor(instant: datetime, width: timedelta) -> datetime | None:
    try:
        return BUCKET_ORIGIN + ((instant - BUCKET_ORIGIN) // width) * width
    except OverflowError:
        return None


def _ceil(instant: datetime, width: timedelta) -> datetime | None:
    try:
        return BUCKET_ORIGIN - ((BUCKET_ORIGIN - instant) // width) * width
    except OverflowError:
        return None


def plan_rollup_state(table: Table) -> QueryPlan[list[RollupState]] | None:
    """The state of ``table``'s rollups that exist in the database (``None``: it has none)."""
    rollups = get_rollups(table)
    if not rollups:
        return None
    schemas = {rollup.aggregate.schema for rollup in rollups}
    by_name = {rollup.aggregate.name: rollup for rollup in rollups}
    params = {"schema": next(iter(schemas)), "names": sorted(by_name)}

    def finish(rows: Sequence[Any]) -> list[RollupState]:
        found: dict[str, tuple[int, list[tuple[int, int]]]] = {}
        for name, watermark, lo, hi in rows:
            entry = found.setdefault(name, (watermark, []))
            if lo is not None:
                entry[1].append((lo, hi))
        states = []
        for name, (watermark, pending) in found.items():
            rollup = by_name[name]
            width = rollup.width
            invalid: list[Interval] = []
            for lo, hi in pending:
                start = _floor(_from_internal(lo), width) or _START
                last = _floor(_from_internal(hi), width)
                end = _END if last is None or last >= _END - width else last + width
                invalid.append((start, end))
            mark = _from_internal(watermark)
            states.append(RollupState(rollup, _floor(mark, width) or _START, tuple(invalid)))
        # Widest first: it covers the most with the fewest rows.
        return sorted(states, key=lambda state: state.width, reverse=True)

    if len(schemas) != 1:  # pragma: no cover - signals_rollup puts them in the table's schema
        return None
    return QueryPlan(_STATE_SQL, params, finish)


# --------------------------------------------------------------------------- the cover


def _subtract(intervals: list[Interval], removals: Sequence[Interval]) -> list[Interval]:
    out = intervals
    for r_lo, r_hi in removals:
        kept: list[Interval] = []
        for lo, hi in out:
            if r_hi <= lo or r_lo >= hi:
                kept.append((lo, hi))
                continue
            if lo < r_lo:
                kept.append((lo, r_lo))
            if r_hi < hi:
                kept.append((r_hi, hi))
        out = kept
    return out


def cover(
    states: Sequence[RollupState], start: datetime, end: datetime
) -> tuple[list[list[Interval]], list[Interval]]:
    """Split ``[start, end)`` into trusted bucket ranges per level (``states`` widest first)
    and what is left for the signals table."""
    gaps: list[Interval] = [(start, end)]
    levels: list[list[Interval]] = []
    for state in states:
        width = state.width
        taken: list[Interval] = []
        remaining: list[Interval] = []
        for lo, hi in gaps:
            first = _ceil(lo, width)
            stop = _floor(hi, width)
            if first is None or stop is None:
                remaining.append((lo, hi))
                continue
            stop = min(stop, state.watermark)
            if first >= stop:
                remaining.append((lo, hi))
                continue
            pieces = _subtract([(first, stop)], state.invalid)
            taken.extend(pieces)
            remaining.extend(_subtract([(lo, hi)], pieces))
        levels.append(taken)
        gaps = remaining
    return levels, gaps


#: The shape of one read: the rollup views used and how many ranges each part has (the last
#: range of the raw part is open-ended when the window has no end).
Shape = tuple[tuple[Table, ...], tuple[int, ...], bool]


def _bounds(prefix: str, intervals: Sequence[Interval], params: dict[str, Any]) -> bool:
    """Put the ranges' bounds in ``params``; whether the last one is open-ended."""
    open_end = bool(intervals) and intervals[-1][1] >= _END
    for index, (lo, hi) in enumerate(intervals):
        params[f"{prefix}_lo_{index}"] = lo
        if not (open_end and index == len(intervals) - 1):
            params[f"{prefix}_hi_{index}"] = hi
    return open_end


def _in_ranges(
    target: ColumnElement[Any], prefix: str, count: int, open_end: bool = False
) -> ColumnElement[bool]:
    # Plain range predicates ORed (not a join with unnest()): the planner sees them, so the
    # index ranges and TimescaleDB's chunk exclusion apply to each.
    kind = DateTime(timezone=True)
    ranges = []
    for index in range(count):
        low = target >= bindparam(f"{prefix}_lo_{index}", type_=kind)
        if open_end and index == count - 1:
            ranges.append(low)
        else:
            ranges.append(and_(low, target < bindparam(f"{prefix}_hi_{index}", type_=kind)))
    return or_(*ranges)


def _magnitudes(value: ColumnElement[Any]) -> tuple[Any, Any, Any]:
    limit = literal(ROLLUP_LARGE_VALUE, Float())
    scaled = value * literal(ROLLUP_SCALE_DOWN, Float())
    return func.abs(value) <= limit, func.abs(value) > limit, scaled


def _series(table: Any, *, name: bool = True) -> list[ColumnElement[bool]]:
    c = table.c
    where = [c.provider == bindparam("provider"), c.symbol == bindparam("symbol")]
    if name:
        where.append(c.name == bindparam("name"))
    return where


@lru_cache(maxsize=256)
def _summary_statement(table: Table, shape: Shape) -> Executable:
    views, counts, open_end = shape
    parts = []
    for index, view in enumerate(views):
        v = view.c
        parts.append(
            select(
                v.symbol,
                v.name,
                cast(v.signal_count, BigInteger).label("n"),
                v.first_ts.label("first_ts"),
                v.last_ts.label("last_ts"),
            ).where(
                v.provider == bindparam("provider"),
                _in_ranges(v.bucket, f"l{index}", counts[index]),
            )
        )
    c = table.c
    if counts[-1]:
        parts.append(
            select(c.symbol, c.name, func.count(), func.min(c.ts), func.max(c.ts))
            .where(
                c.provider == bindparam("provider"),
                _in_ranges(c.ts, "raw", counts[-1], open_end),
            )
            .group_by(c.symbol, c.name)
        )
    p = union_all(*parts).subquery("parts").c
    return select(
        func.sum(p.n),
        func.count(p.symbol.distinct()),
        func.count(p.name.distinct()),
        func.max(p.last_ts),
        func.min(p.first_ts),
    )


_MOMENT_KEYS = (
    "signal_count",
    "min_value",
    "max_value",
    "mean_value",
    "m2_value",
    "large_count",
    "large_mean",
    "large_m2",
    "last_value",
    "last_ts",
    "first_ts",
)


def _raw_moments(table: Table, bucket: ColumnElement[Any] | None) -> list[Any]:
    c = table.c
    small, large, scaled = _magnitudes(c.value)
    columns: list[Any] = [] if bucket is None else [bucket]
    return [
        *columns,
        func.count(),
        func.min(c.value),
        func.max(c.value),
        func.avg(c.value).filter(small),
        func.var_pop(c.value).filter(small) * func.count().filter(small),
        func.count().filter(large),
        func.avg(scaled).filter(large),
        func.var_pop(scaled).filter(large) * func.count().filter(large),
        func.array_agg(aggregate_order_by(c.value, c.ts.desc()))[1],
        func.max(c.ts),
        func.min(c.ts),
    ]


@lru_cache(maxsize=256)
def _moments_statement(table: Table, shape: Shape, bucketed: bool) -> Executable:
    views, counts, open_end = shape
    parts = []
    for index, view in enumerate(views):
        v = view.c
        keys = [v.bucket] if bucketed else []
        parts.append(
            select(
                *keys,
                cast(v.signal_count, BigInteger),
                *(v[key] for key in _MOMENT_KEYS[1:5]),
                cast(v.large_count, BigInteger),
                *(v[key] for key in _MOMENT_KEYS[6:]),
            ).where(*_series(view), _in_ranges(v.bucket, f"l{index}", counts[index]))
        )
    c = table.c
    bucket = None
    if bucketed:
        stride = cast(bindparam("bucket", type_=SQLInterval()), SQLInterval())
        origin = cast(bindparam("origin", type_=DateTime(timezone=True)), DateTime(timezone=True))
        bucket = func.time_bucket(stride, c.ts, origin)
    if counts[-1]:
        raw = select(*_raw_moments(table, bucket)).where(
            *_series(table), _in_ranges(c.ts, "raw", counts[-1], open_end)
        )
        if bucket is not None:
            raw = raw.group_by(bucket)
        parts.append(raw)
    return union_all(*parts)


# --------------------------------------------------------------------------- merging


@dataclass
class _Merged:
    count: int
    low: float
    high: float
    small: list[tuple[int, float, float]]
    large: list[tuple[int, float, float]]
    last_value: float
    last_ts: datetime
    first_ts: datetime


def _merge(rows: Sequence[Sequence[Any]]) -> _Merged | None:
    merged: _Merged | None = None
    for n, low, high, mean, m2, n_large, l_mean, l_m2, last_value, last_ts, first_ts in rows:
        n = int(n or 0)
        if n == 0:
            continue
        n_large = int(n_large or 0)
        last_ts, first_ts = _utc(last_ts), _utc(first_ts)
        assert last_ts is not None and first_ts is not None
        small = [(n - n_large, float(mean), float(m2 or 0.0))] if n > n_large else []
        large = [(n_large, float(l_mean), float(l_m2 or 0.0))] if n_large else []
        if merged is None:
            merged = _Merged(n, low, high, small, large, last_value, last_ts, first_ts)
            continue
        merged.count += n
        merged.low = min(merged.low, low)
        merged.high = max(merged.high, high)
        merged.small.extend(small)
        merged.large.extend(large)
        if last_ts > merged.last_ts:
            merged.last_ts, merged.last_value = last_ts, last_value
        merged.first_ts = min(merged.first_ts, first_ts)
    return merged


def _variance(moments: Any) -> float | None:
    return moments.m2 / (moments.count - 1) if moments.count > 1 else None


def _empty_metrics() -> SignalMetrics:
    return {
        "signal_count": 0,
        "min_value": None,
        "max_value": None,
        "avg_value": None,
        "latest_ts": None,
        "earliest_ts": None,
        "latest_value": None,
        "stddev_value": None,
    }


def _finish_metrics(rows: Sequence[Any]) -> SignalMetrics:
    merged = _merge(rows)
    if merged is None:
        return _empty_metrics()
    small = combine_moments(merged.small)
    large = combine_moments(merged.large)
    mean, stddev = _mean_and_stddev(
        merged.count,
        large.count,
        small.mean if small.count else None,
        _variance(small),
        large.mean if large.count else None,
        _variance(large),
    )
    return {
        "signal_count": merged.count,
        "min_value": float(merged.low),
        "max_value": float(merged.high),
        "avg_value": mean,
        "latest_ts": merged.last_ts,
        "earliest_ts": merged.first_ts,
        "latest_value": float(merged.last_value),
        "stddev_value": stddev,
    }


def _finish_buckets(width: timedelta) -> Any:
    def finish(rows: Sequence[Any]) -> list[SignalBucket]:
        groups: dict[datetime, list[Sequence[Any]]] = {}
        for row in rows:
            start = _utc(row[0])
            assert start is not None
            key = _floor(start, width) or start
            groups.setdefault(key, []).append(row[1:])
        out: list[SignalBucket] = []
        for key in sorted(groups):
            merged = _merge(groups[key])
            if merged is None:
                continue
            count = merged.count
            small_sum = math.fsum(n * mean for n, mean, _ in merged.small)
            large_sum = math.fsum(n * mean for n, mean, _ in merged.large)
            mean = small_sum / count
            if merged.large:
                mean += (large_sum / count) * SCALE_UP
            out.append(
                {
                    "bucket": key,
                    "signal_count": count,
                    "min_value": merged.low,
                    "max_value": merged.high,
                    "avg_value": mean,
                    "last_value": merged.last_value,
                }
            )
        return out

    return finish


# --------------------------------------------------------------------------- plans


def _level_params(
    states: Sequence[RollupState], start: datetime, end: datetime
) -> tuple[Shape, dict[str, Any]] | None:
    levels, raw = cover(states, start, end)
    views: list[Table] = []
    counts: list[int] = []
    params: dict[str, Any] = {}
    for state, spans in zip(states, levels, strict=True):
        if not spans:
            continue
        _bounds(f"l{len(views)}", spans, params)
        views.append(state.rollup.aggregate.table)
        counts.append(len(spans))
    if not views:
        return None  # no complete trusted bucket in the window: the raw query is as good
    open_end = _bounds("raw", raw, params)
    return (tuple(views), (*counts, len(raw)), open_end), params


def plan_summary_rollup(
    table: Table, states: Sequence[RollupState], base: QueryPlan[SignalSummary]
) -> QueryPlan[SignalSummary] | None:
    """``get_signal_summary`` through the rollups (``base`` is the raw plan, already checked);
    ``None`` when no rollup bucket fits the window."""
    found = _level_params(states, base.parameters["since"], _END)
    if found is None:
        return None
    shape, params = found
    params["provider"] = base.parameters["provider"]
    return QueryPlan(_summary_statement(table, shape), params, base.finish)


def plan_metrics_rollup(
    table: Table, states: Sequence[RollupState], base: QueryPlan[SignalMetrics]
) -> QueryPlan[SignalMetrics] | None:
    """``get_signal_metrics`` through the rollups, or ``None`` (see :func:`plan_summary_rollup`)."""
    found = _level_params(states, base.parameters["since"], _END)
    if found is None:
        return None
    shape, params = found
    for key in ("provider", "symbol", "name"):
        params[key] = base.parameters[key]
    return QueryPlan(_moments_statement(table, shape, False), params, _finish_metrics)


def plan_buckets_rollup(
    table: Table, states: Sequence[RollupState], base: QueryPlan[list[SignalBucket]]
) -> QueryPlan[list[SignalBucket]] | None:
    """``get_signal_buckets`` through the rollups whose width divides the bucket's, or ``None``.

    ``base`` must be the ``time_bucket`` raw plan (it carries ``bucket`` and ``origin``).
    """
    width: timedelta = base.parameters["bucket"]
    usable = [state for state in states if width % state.width == timedelta(0)]
    if not usable:
        return None
    start: datetime = base.parameters["start_ts"]
    end: datetime = base.parameters["end_ts"]
    if end < start:
        return None
    # The raw window is start <= ts <= end: end is inclusive.
    stop = _END if end >= _END - _US else end + _US
    found = _level_params(usable, start, stop)
    if found is None:
        return None
    shape, params = found
    for key in ("provider", "symbol", "name", "bucket", "origin"):
        params[key] = base.parameters[key]
    return QueryPlan(_moments_statement(table, shape, True), params, _finish_buckets(width))
