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
* one statement does all of it. Its first CTEs read the watermarks
  (``_timescaledb_catalog.continuous_aggs_watermark``, in the statement's snapshot) and the
  pending invalidations (``_timescaledb_catalog.continuous_aggs_*_invalidation_log``) and
  derive the ranges as multiranges (:func:`cover_ctes`, the SQL form of :func:`cover`); the
  rest reads each range
  (a ``LATERAL`` index scan per range, rollups and signals table ``UNION ALL``). Catalog and
  data come from one snapshot: a write, replay or refresh committed meanwhile is seen entirely or
  not at all. The SQL text depends only on the table, its rollups and the horizon, so
  prepared statements and PostgreSQL's cached generic plans serve repeated calls (planning the
  statement costs more than running it);
* the signals-table reads are also bounded by ``now()`` minus a horizon a day longer than the
  window (rounded up on a ladder), which TimescaleDB evaluates when planning: the cached plan
  holds the chunks of the horizon, not those of the whole history. The statement reports
  whether that bound cut into the window (a server clock well ahead of the client's), and
  whether its transaction has written (TimescaleDB logs the invalidations of a transaction's
  writes only at commit); either way, the raw-table query answers (:class:`RawTableNeeded`);
* the parts are merged with Chan et al.'s formula over per-part ``(count, mean, M2)`` in two
  magnitude groups, as the raw-table queries do (nothing overflows): by the statement itself
  for the metrics (one row comes back), by Python per bucket for the buckets.

Which declared rollups exist is read once per engine (:func:`plan_rollup_state`, by the
repositories): the statement can only name views that exist.
"""

# The SQL below is built from identifiers quoted by the dialect (tables, columns) and
# interval literals of validated widths; every value is a bound parameter.
# ruff: noqa: S608
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Table,
    Text,
    bindparam,
    column,
    text,
)
from sqlalchemy import Interval as SQLInterval
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql import Executable

from ..schema.aggregates import (
    ROLLUP_LARGE_VALUE,
    ROLLUP_SCALE_DOWN,
    Rollup,
    get_rollups,
)
from ..schema.options import get_timescale_options
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
    "RawTableNeeded",
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
    """The state of ``table``'s rollups that exist in the database (``None``: it has none).

    The repositories run it to learn which rollups exist (once per engine while all do); the
    reads themselves read the state inside their own statement (:func:`cover_ctes`)."""
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
    and what is left for the signals table.

    The reference for :func:`cover_ctes`, which does the same on the server inside each rollup
    read (the tests compare both on random states)."""
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


_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

#: TimescaleDB's internal time (microseconds since 1970) as timestamptz; its extremes (the
#: open ends of invalidation ranges, "nothing materialized") as -infinity / infinity.
_TIME = (
    "(CASE WHEN {0} < -210866803200000000 THEN '-infinity'::timestamptz "
    "WHEN {0} >= 9223371331200000000 THEN 'infinity'::timestamptz "
    "ELSE _timescaledb_functions.to_timestamp({0}) END)"
)

#: The rollups' state as the statement's own snapshot sees it: per aggregate, its watermark and
#: the union of its pending invalidation ranges (raw hypertable's log and its own).
_STATE_CTE = (
    "state AS MATERIALIZED (SELECT ca.user_view_name AS view_name, "
    # The watermark's catalog row, read by SQL in the statement's own snapshot, rather than
    # cagg_watermark(): that reads it through TimescaleDB's internal scanner, whose snapshot is
    # not documented to be the statement's (a newer one could vouch for buckets that a refresh
    # committed after the statement began, which this snapshot sees unrefreshed).
    "(SELECT " + _TIME.format("z.watermark") + " FROM "
    "_timescaledb_catalog.continuous_aggs_watermark AS z "
    "WHERE z.mat_hypertable_id = ca.mat_hypertable_id) AS mark, "
    "(SELECT range_agg(tstzrange("
    + _TIME.format("p.lo")
    + ", "
    + _TIME.format("p.hi")
    + ", '[]')) "
    "FROM (SELECT h.lowest_modified_value AS lo, h.greatest_modified_value AS hi "
    "FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log AS h "
    "WHERE h.hypertable_id = ca.raw_hypertable_id "
    "UNION ALL SELECT m.lowest_modified_value, m.greatest_modified_value "
    "FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log AS m "
    "WHERE m.materialization_id = ca.mat_hypertable_id) AS p) AS invalid "
    "FROM _timescaledb_catalog.continuous_agg AS ca "
    "WHERE ca.user_view_schema = COALESCE(CAST(:rollup_schema AS text), current_schema()) "
    "AND ca.user_view_name IN ({names}))"
)


def _state_cte(levels: int) -> str:
    # The levels' names are the parameters the levels' CTEs read anyway (no array to send).
    return _STATE_CTE.format(names=", ".join(f":rollup_{k}" for k in range(1, levels + 1)))


def _interval(width: timedelta) -> str:
    return f"CAST('{int(width.total_seconds())} seconds' AS interval)"


def _level_cte(index: int, width: timedelta, state: str) -> str:
    """``c{index}``: the level's trusted bucket ranges within the gaps the wider levels left
    (whole buckets, below the watermark, outside pending invalidations) and the gaps left."""
    w = _interval(width)
    return (
        f"c{index} AS MATERIALIZED (SELECT t.trusted, g.gaps - t.trusted AS gaps "
        f"FROM c{index - 1} AS g CROSS JOIN LATERAL (SELECT "
        "COALESCE((SELECT range_agg(tstzrange(x.a, x.b)) FROM unnest(g.gaps) AS r "
        f"CROSS JOIN LATERAL (SELECT time_bucket({w}, lower(r) - CAST('1 microsecond' AS "
        f"interval)) + {w} AS a, least(time_bucket({w}, upper(r)), "
        f"COALESCE(time_bucket({w}, s.mark), '-infinity'::timestamptz)) AS b) AS x "
        "WHERE x.a < x.b), '{}'::tstzmultirange) - COALESCE((SELECT "
        f"range_agg(tstzrange(time_bucket({w}, lower(i)), time_bucket({w}, upper(i)) + {w})) "
        "FROM unnest(s.invalid) AS i), '{}'::tstzmultirange) AS trusted "
        f"FROM (SELECT 1) AS one LEFT JOIN {state} AS s ON s.view_name = :rollup_{index}"
        # OFFSET 0: computed once; pulled up, ``trusted`` would be computed for both columns.
        " OFFSET 0) AS t)"
    )


def cover_ctes(widths: Sequence[timedelta], state: str = "state") -> str:
    """The CTEs ``c0`` (the window ``[:since, :until)``, ``:until`` ``NULL``: open) to ``c{n}``
    that split the window among the levels (``widths`` widest first; level ``k`` reads row
    ``:rollup_{k}`` of ``state``): ``c{k}.trusted`` is what level ``k`` answers,
    ``c{n}.gaps`` what is left for the signals table."""
    parts = [
        "c0 AS MATERIALIZED (SELECT tstzmultirange(tstzrange("
        "CAST(:since AS timestamptz), COALESCE(CAST(:until AS timestamptz), "
        "'infinity'::timestamptz))) AS gaps)"
    ]
    parts += [_level_cte(k, width, state) for k, width in enumerate(widths, start=1)]
    return ", ".join(parts)


def _q(name: str) -> str:
    return str(_PREPARER.quote(name))


def _relation(table: Table) -> str:
    return str(_PREPARER.format_table(table))


def _ranges(source: str, field: str) -> str:
    # An array, not the multirange itself: the planner then expects 10 ranges, not 100.
    return f"CROSS JOIN LATERAL unnest(ARRAY(SELECT unnest({source}.{field}))) AS r "


#: True for every range of a multirange (never empty, bounds never NULL here: every bound is the
#: window's, a bucket boundary or a logged time), but the planner cannot know it and expects
#: about one range instead of 10: without it the estimated cost of a summary over the signals
#: table's ranges passes ``jit_above_cost`` and JIT compilation costs 100 ms per call.
_FEW = " WHERE lower(r) < upper(r) AND upper(r) > lower(r)"


def _in_range(column: str) -> str:
    return f"{column} >= lower(r) AND {column} < upper(r)"


#: ``ts >= :since`` (implied: every range lies in the window) in a form the planner cannot fold
#: but TimescaleDB's ChunkAppend evaluates when the plan starts: the chunks older than the
#: window are excluded at executor startup instead of being checked again for every range, on
#: the cached generic plan too. A bare parameter would be folded into every custom plan, whose
#: lower estimated cost would keep PostgreSQL planning each call (planning costs more than the
#: read). ``statement_timestamp() - statement_timestamp()`` is an exact zero that is only stable.
_SINCE_AT_STARTUP = (
    "COALESCE(CAST(:since AS timestamptz), '-infinity'::timestamptz) "
    "+ (statement_timestamp() - statement_timestamp())"
)


#: The signals-table reads also carry ``ts > now() - <horizon>``, a bound TimescaleDB evaluates
#: when it plans (``now()`` only grows, so chunks it excludes stay excluded): the cached generic
#: plan then holds only the chunks of the last ``horizon`` days instead of every chunk of the
#: table. Each chunk in the plan costs at every execution (its constraints are parsed again, its
#: scan set up, its memory touched), and most when the call follows other work: with a year of
#: 7-day chunks the plan would hold 52 of them. The window's age is rounded up on this ladder (a
#: few statements per table, each with its own cached plan) and the horizon is a day more, so
#: that a server clock up to a day ahead of the client's changes nothing (further ahead, the
#: statement says so and the raw table answers); beyond the last step there is no bound.
_WINDOW_DAYS = (1, 7, 31, 127, 511, 2047)
_HORIZON_MARGIN_DAYS = 1
#: The time between the plan's ``since`` and its horizon being chosen, generously.
_SLACK = timedelta(minutes=1)


def _horizon(since: datetime) -> int | None:
    """The horizon in days for a window starting at ``since`` (client clock), or ``None``."""
    try:
        age = datetime.now(_UTC) - since - _SLACK
    except OverflowError:
        return None
    for days in _WINDOW_DAYS:
        if age <= timedelta(days=days):
            return days + _HORIZON_MARGIN_DAYS
    return None


def _horizon_bound(ts: str, days: int | None) -> str:
    return "" if days is None else f" AND {ts} > now() - CAST('{days} days' AS interval)"


#: The transaction has written nothing (it has no transaction id): TimescaleDB logs a
#: transaction's writes into materialized buckets as invalidations only when it commits, so a
#: read after a write in the same transaction (a repository in the caller's ``Session``) would
#: trust buckets that the write has made stale.
_NO_WRITES = "pg_current_xact_id_if_assigned() IS NULL"


def _trust_check(days: int | None) -> str:
    """True when the rollups may answer: the transaction has written nothing and the horizon's
    bound cut nothing from the window (the server's ``now()`` minus the horizon lies before
    ``:since``; false only with a server clock far ahead of the client's)."""
    if days is None:
        return f"({_NO_WRITES})"
    return (
        f"({_NO_WRITES} AND now() - CAST('{days} days' AS interval) < CAST(:since AS timestamptz))"
    )


class RawTableNeeded(Exception):
    """A rollup read's answer cannot be trusted (its transaction has written, or its
    signals-table bound may have cut rows from the window, see :data:`_WINDOW_DAYS`): the
    repositories run the raw-table plan instead."""


def _where_series(alias: str, table: Table, name: bool = True) -> str:
    c = table.c
    where = [
        f"{alias}.{_q(c.provider.name)} = :provider",
        f"{alias}.{_q(c.symbol.name)} = :symbol",
    ]
    if name:
        where.append(f"{alias}.{_q(c.name.name)} = :name")
    return " AND ".join(where)


def _time_name(table: Table) -> str:
    options = get_timescale_options(table)
    return options.time_column if options is not None else "ts"


def _summary_sql(table: Table, levels: tuple[Rollup, ...], days: int | None) -> str:
    c = table.c
    symbol, name = _q(c.symbol.name), _q(c.name.name)
    ts = f"v.{_q(_time_name(table))}"
    parts = []
    for k, rollup in enumerate(levels, start=1):
        parts.append(
            f"SELECT s.symbol, s.name, s.n, s.first_ts, s.last_ts FROM c{k} "
            + _ranges(f"c{k}", "trusted")
            + f"CROSS JOIN LATERAL (SELECT v.symbol, v.name, CAST(v.signal_count AS bigint) AS n, "
            f"v.first_ts, v.last_ts FROM {_relation(rollup.aggregate.table)} AS v "
            f"WHERE v.provider = :provider AND {_in_range('v.bucket')} OFFSET 0) AS s{_FEW}"
        )
    last = len(levels)
    parts.append(
        f"SELECT s.symbol, s.name, s.n, s.first_ts, s.last_ts FROM c{last} "
        + _ranges(f"c{last}", "gaps")
        + f"CROSS JOIN LATERAL (SELECT v.{symbol} AS symbol, v.{name} AS name, count(*) AS n, "
        f"min({ts}) AS first_ts, max({ts}) AS last_ts FROM {_relation(table)} AS v "
        f"WHERE v.{_q(c.provider.name)} = :provider AND {ts} >= {_SINCE_AT_STARTUP}"
        f"{_horizon_bound(ts, days)} AND {_in_range(ts)} GROUP BY v.{symbol}, v.{name}) AS s{_FEW}"
    )
    return (
        "SELECT CAST(sum(p.n) AS bigint), count(DISTINCT p.symbol), count(DISTINCT p.name), "
        f"max(p.last_ts), min(p.first_ts), {_trust_check(days)} "
        "FROM (" + " UNION ALL ".join(parts) + ") AS p"
    )


_ROLLUP_MOMENTS = (
    "CAST(v.signal_count AS bigint), v.min_value, v.max_value, v.mean_value, v.m2_value, "
    "CAST(v.large_count AS bigint), v.large_mean, v.large_m2, v.last_value, v.last_ts, "
    "v.first_ts"
)
_NAMES = "n, lo, hi, mean, m2, large_n, large_mean, large_m2, last, last_ts, first_ts"
_OUT = ", ".join(f"s.{name}" for name in _NAMES.split(", "))


def _moments_sql(table: Table, levels: tuple[Rollup, ...], bucketed: bool, days: int | None) -> str:
    ts = f"v.{_q(_time_name(table))}"
    value = f"v.{_q(table.c.value.name)}"
    small = f"abs({value}) <= :large_value"
    large = f"abs({value}) > :large_value"
    scaled = f"{value} * :scale_down"
    key = "s.bucket, " if bucketed else ""
    parts = []
    for k, rollup in enumerate(levels, start=1):
        parts.append(
            f"SELECT {key}{_OUT} FROM c{k} " + _ranges(f"c{k}", "trusted")
            + "CROSS JOIN LATERAL (SELECT "
            + ("v.bucket, " if bucketed else "")
            + f"{_ROLLUP_MOMENTS} FROM {_relation(rollup.aggregate.table)} AS v "
            f"WHERE v.provider = :provider AND v.symbol = :symbol AND v.name = :name "
            f"AND {_in_range('v.bucket')} OFFSET 0) AS s({'bucket, ' if bucketed else ''}{_NAMES})"
            + _FEW
        )  # fmt: skip
    bucket = f"time_bucket(CAST(:bucket AS interval), {ts}, CAST(:origin AS timestamptz))"
    last = len(levels)
    parts.append(
        f"SELECT {key}{_OUT} FROM c{last} " + _ranges(f"c{last}", "gaps")
        + "CROSS JOIN LATERAL (SELECT "
        + (f"{bucket}, " if bucketed else "")
        + f"count(*), min({value}), max({value}), avg({value}) FILTER (WHERE {small}), "
        f"var_pop({value}) FILTER (WHERE {small}) * count(*) FILTER (WHERE {small}), "
        f"count(*) FILTER (WHERE {large}), avg({scaled}) FILTER (WHERE {large}), "
        f"var_pop({scaled}) FILTER (WHERE {large}) * count(*) FILTER (WHERE {large}), "
        f"(array_agg({value} ORDER BY {ts} DESC))[1], max({ts}), min({ts}) "
        f"FROM {_relation(table)} AS v WHERE {_where_series('v', table)} "
        f"AND {ts} >= {_SINCE_AT_STARTUP}{_horizon_bound(ts, days)} AND {_in_range(ts)}"
        + (f" GROUP BY {bucket}" if bucketed else "")
        + f") AS s({'bucket, ' if bucketed else ''}{_NAMES}){_FEW}"
    )  # fmt: skip
    if bucketed:
        # The trust check as one more row, told apart by its NULL bucket (a part's never is):
        # the result has it even when the window holds no signal.
        parts.append(
            f"SELECT NULL, CAST(CASE WHEN {_trust_check(days)} THEN 1 ELSE 0 END AS bigint)"
            + ", NULL" * (len(_NAMES.split(", ")) - 1)
        )
    return " UNION ALL ".join(parts)


_TZ = DateTime(timezone=True)
_MOMENT_COLUMNS = (
    ("n", BigInteger()),
    ("lo", Float()),
    ("hi", Float()),
    ("mean", Float()),
    ("m2", Float()),
    ("large_n", BigInteger()),
    ("large_mean", Float()),
    ("large_m2", Float()),
    ("last", Float()),
    ("last_ts", _TZ),
    ("first_ts", _TZ),
)


def _binds(statement: Any, *, moments: bool = False, bucketed: bool = False) -> Any:
    binds = [
        bindparam("since", type_=_TZ),
        bindparam("until", type_=_TZ),
        bindparam("rollup_schema", type_=Text()),
    ]
    if moments:
        binds += [
            bindparam("large_value", type_=Float()),
            bindparam("scale_down", type_=Float()),
        ]
    if bucketed:
        binds += [bindparam("bucket", type_=SQLInterval()), bindparam("origin", type_=_TZ)]
    return statement.bindparams(*binds)


@lru_cache(maxsize=256)
def _summary_statement(table: Table, levels: tuple[Rollup, ...], days: int | None) -> Executable:
    widths = [rollup.width for rollup in levels]
    summary = _summary_sql(table, levels, days)
    sql = f"WITH {_state_cte(len(levels))}, {cover_ctes(widths)} {summary}"
    statement = _binds(text(sql)).columns(
        column("total", BigInteger()),
        column("symbols", BigInteger()),
        column("names", BigInteger()),
        column("latest", _TZ),
        column("earliest", _TZ),
        column("rollup_ok", Boolean()),
    )
    return statement  # type: ignore[no-any-return]


#: The parts' moments merged on the server into one row (Chan et al., per magnitude group, two
#: passes: the group's mean, then each part's M2 plus its count times the squared distance of its
#: mean from that mean): one row to send and convert instead of one per bucket. Nothing
#: overflows: the small group's values are at most ``2**460`` in magnitude, the large group's
#: are scaled down by ``2**-600``. A part of no rows (an empty edge) has a zero count.
_MERGED = (
    ", p AS MATERIALIZED ({parts}), "
    "q AS (SELECT CAST(sum(p.n) AS bigint) AS n, min(p.lo) AS lo, max(p.hi) AS hi, "
    "CAST(sum(p.n - p.large_n) AS bigint) AS small_n, "
    "sum((p.n - p.large_n) * p.mean) / nullif(sum(p.n - p.large_n), 0) AS small_mean, "
    "CAST(sum(p.large_n) AS bigint) AS large_n, "
    "sum(p.large_n * p.large_mean) / nullif(sum(p.large_n), 0) AS large_mean, "
    "max(p.last_ts) AS last_ts, min(p.first_ts) AS first_ts FROM p WHERE p.n > 0) "
    "SELECT q.n, q.lo, q.hi, q.small_n, q.small_mean, (SELECT sum(COALESCE(p.m2, 0) + "
    "(p.n - p.large_n) * ((p.mean - q.small_mean) * (p.mean - q.small_mean))) FROM p "
    "WHERE p.n > p.large_n), q.large_n, q.large_mean, (SELECT sum(COALESCE(p.large_m2, 0) + "
    "p.large_n * ((p.large_mean - q.large_mean) * (p.large_mean - q.large_mean))) FROM p "
    "WHERE p.large_n > 0), (SELECT p.last FROM p WHERE p.n > 0 ORDER BY p.last_ts DESC "
    "LIMIT 1), q.last_ts, q.first_ts, {check} FROM q"
)
_MERGED_COLUMNS = (
    ("n", BigInteger()),
    ("lo", Float()),
    ("hi", Float()),
    ("small_n", BigInteger()),
    ("small_mean", Float()),
    ("small_m2", Float()),
    ("large_n", BigInteger()),
    ("large_mean", Float()),
    ("large_m2", Float()),
    ("last", Float()),
    ("last_ts", _TZ),
    ("first_ts", _TZ),
    ("rollup_ok", Boolean()),
)


@lru_cache(maxsize=256)
def _moments_statement(
    table: Table, levels: tuple[Rollup, ...], bucketed: bool, days: int | None
) -> Executable:
    widths = [rollup.width for rollup in levels]
    parts = _moments_sql(table, levels, bucketed, days)
    columns: list[Any]
    if bucketed:
        sql = f"WITH {_state_cte(len(levels))}, {cover_ctes(widths)} {parts}"
        columns = [column("bucket", _TZ)]
        columns += [column(name, kind) for name, kind in _MOMENT_COLUMNS]
    else:
        sql = f"WITH {_state_cte(len(levels))}, {cover_ctes(widths)}" + _MERGED.format(
            parts=parts, check=_trust_check(days)
        )
        columns = [column(name, kind) for name, kind in _MERGED_COLUMNS]
    statement = _binds(text(sql), moments=True, bucketed=bucketed).columns(*columns)
    return statement  # type: ignore[no-any-return]


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
    (count, low, high, small, small_mean, small_m2, large, large_mean, large_m2, last_value,
     last_ts, first_ts, rollup_ok) = rows[0]  # fmt: skip
    if not rollup_ok:
        raise RawTableNeeded
    if not count:
        return _empty_metrics()
    mean, stddev = _mean_and_stddev(
        count,
        large,
        small_mean if small else None,
        small_m2 / (small - 1) if small > 1 else None,
        large_mean if large else None,
        large_m2 / (large - 1) if large > 1 else None,
    )
    return {
        "signal_count": count,
        "min_value": float(low),
        "max_value": float(high),
        "avg_value": mean,
        "latest_ts": _utc(last_ts),
        "earliest_ts": _utc(first_ts),
        "latest_value": float(last_value),
        "stddev_value": stddev,
    }


def _finish_buckets(width: timedelta) -> Any:
    def finish(rows: Sequence[Any]) -> list[SignalBucket]:
        groups: dict[datetime, list[Sequence[Any]]] = {}
        rollup_ok = False
        for row in rows:
            start = _utc(row[0])
            if start is None:  # the trust check's row
                rollup_ok = row[1] == 1
                continue
            key = _floor(start, width) or start
            groups.setdefault(key, []).append(row[1:])
        if not rollup_ok:
            raise RawTableNeeded
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


def _levels(rollups: Sequence[Rollup]) -> tuple[Rollup, ...]:
    return tuple(sorted(rollups, key=lambda rollup: rollup.width, reverse=True))


def _state_params(levels: tuple[Rollup, ...], params: dict[str, Any]) -> dict[str, Any]:
    params["rollup_schema"] = levels[0].aggregate.schema
    for k, rollup in enumerate(levels, start=1):
        params[f"rollup_{k}"] = rollup.aggregate.name
    return params


def plan_summary_rollup(
    table: Table, rollups: Sequence[Rollup], base: QueryPlan[SignalSummary]
) -> QueryPlan[SignalSummary] | None:
    """``get_signal_summary`` through ``rollups`` (those that exist in the database; ``base``
    is the raw plan, already checked): one statement that reads the rollups' state and the
    data in the same snapshot; ``None`` without rollups."""
    if not rollups:
        return None
    levels = _levels(rollups)
    params = {
        "since": base.parameters["since"],
        "until": None,
        "provider": base.parameters["provider"],
    }
    statement = _summary_statement(table, levels, _horizon(params["since"]))
    finish = base.finish

    def checked(rows: Sequence[Any]) -> SignalSummary:
        *summary, rollup_ok = rows[0]
        if not rollup_ok:
            raise RawTableNeeded
        return finish([summary])

    return QueryPlan(statement, _state_params(levels, params), checked)


def _moments_params(levels: tuple[Rollup, ...], base: QueryPlan[Any]) -> dict[str, Any]:
    params = {key: base.parameters[key] for key in ("provider", "symbol", "name")}
    params["large_value"] = ROLLUP_LARGE_VALUE
    params["scale_down"] = ROLLUP_SCALE_DOWN
    return _state_params(levels, params)


def plan_metrics_rollup(
    table: Table, rollups: Sequence[Rollup], base: QueryPlan[SignalMetrics]
) -> QueryPlan[SignalMetrics] | None:
    """``get_signal_metrics`` through the rollups, or ``None`` (see :func:`plan_summary_rollup`)."""
    if not rollups:
        return None
    levels = _levels(rollups)
    params = _moments_params(levels, base)
    params["since"], params["until"] = base.parameters["since"], None
    statement = _moments_statement(table, levels, False, _horizon(params["since"]))
    return QueryPlan(statement, params, _finish_metrics)


def plan_buckets_rollup(
    table: Table, rollups: Sequence[Rollup], base: QueryPlan[list[SignalBucket]]
) -> QueryPlan[list[SignalBucket]] | None:
    """``get_signal_buckets`` through the rollups whose width divides the bucket's, or ``None``.

    ``base`` must be the ``time_bucket`` raw plan (it carries ``bucket`` and ``origin``).
    """
    width: timedelta = base.parameters["bucket"]
    usable = [rollup for rollup in rollups if width % rollup.width == timedelta(0)]
    if not usable:
        return None
    start: datetime = base.parameters["start_ts"]
    end: datetime = base.parameters["end_ts"]
    if end < start:
        return None
    levels = _levels(usable)
    params = _moments_params(levels, base)
    # The raw window is start <= ts <= end: end is inclusive.
    params["since"] = start
    params["until"] = None if end >= _END - _US else end + _US
    params["bucket"], params["origin"] = width, base.parameters["origin"]
    statement = _moments_statement(table, levels, True, _horizon(start))
    return QueryPlan(statement, params, _finish_buckets(width))
