"""Read-side statement builders: pure functions of a table, a dialect and validated arguments.

Every ``plan_*`` function validates its arguments and returns a :class:`QueryPlan`: a cached
statement whose values are all named bound parameters (windows and limits included, never
formatted into SQL), the parameters, and the conversion of the result rows. The sync and async
repositories execute a plan the same way; only the I/O differs.

Dialect-specific parts are isolated: ``DISTINCT ON`` (PostgreSQL) vs ``row_number()`` (SQLite
and others) for active signals, ``stddev_samp`` vs a two-pass variance on SQLite, and bucketing
by ``time_bucket`` (TimescaleDB), ``date_bin`` (PostgreSQL >= 14), an epoch arithmetic
fallback (older PostgreSQL) or integer microseconds (SQLite). Results are the same everywhere.

Timestamps: aware datetimes are used as given; a naive datetime is *local time* (Python's own
convention, ``datetime.astimezone()``), so ``datetime.now() - timedelta(hours=1)`` means the
last hour. Returned timestamps are aware UTC datetimes on every dialect.

Nothing stored can break a read: text arguments are checked before any driver sees them, a
list of signal names is bound as one parameter (PostgreSQL array, SQLite JSON), and means and
standard deviations are computed so that no sum overflows, whatever the magnitude of the values
(see :func:`_mean_and_stddev`).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Generic, Literal, TypedDict, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    Interval,
    Table,
    Text,
    TextClause,
    any_,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from ..errors import InvalidQueryError

__all__ = [
    "BUCKET_ORIGIN",
    "LARGE_VALUE",
    "MAX_BUCKET",
    "MAX_LIMIT",
    "SCALE_DOWN",
    "SCALE_UP",
    "TIMESCALE_PROBE",
    "ActiveSignal",
    "BucketFunction",
    "NameBinding",
    "QueryPlan",
    "SignalBucket",
    "SignalMetrics",
    "SignalRecord",
    "SignalSummary",
    "bucket_function_for",
    "name_binding",
    "plan_active",
    "plan_buckets",
    "plan_history",
    "plan_latest",
    "plan_metrics",
    "plan_summary",
]

T = TypeVar("T")

#: How buckets are computed: chosen per database by :func:`bucket_function_for`.
BucketFunction = Literal["time_bucket", "date_bin", "epoch", "sqlite"]

#: Bucket boundaries are aligned on this instant on every dialect (TimescaleDB's own default
#: origin for timestamptz: a Monday, so weekly buckets start on Mondays).
BUCKET_ORIGIN = datetime(2000, 1, 3, tzinfo=timezone.utc)

#: How a list of signal names is bound: chosen per database by :func:`name_binding`.
NameBinding = Literal["array", "json", "expanding"]

#: The largest ``limit``: PostgreSQL binds it as a 4-byte integer.
MAX_LIMIT = 2**31 - 1

#: The widest bucket: no timestamp can be stored before 0001-01-01 UTC and PostgreSQL's earliest
#: timestamp is 4714-11-24 BC, 1,721,426 days before it, so every bucket start (never more than
#: one width before its timestamps) stays a valid timestamp on every backend.
MAX_BUCKET = timedelta(days=1_721_426)

#: Values of larger magnitude are aggregated apart, multiplied by :data:`SCALE_DOWN`, so that no
#: float sum (count * 2**460) or sum of squared deviations (its square) can overflow.
LARGE_VALUE = 2.0**460
SCALE_DOWN = 2.0**-600
SCALE_UP = 2.0**600

#: Whether the connected PostgreSQL database has the timescaledb extension installed.
TIMESCALE_PROBE: TextClause = text(
    "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_FIRST_INSTANT = datetime(1, 1, 1, tzinfo=timezone.utc)
_DEFAULT_WINDOW = timedelta(hours=24)
_MICROSECOND = timedelta(microseconds=1)
_ORIGIN_US = (BUCKET_ORIGIN - _EPOCH) // _MICROSECOND
_ROW_KEYS = ("provider", "symbol", "ts", "name", "value", "score", "metadata", "created_at")
_ACTIVE_KEYS = ("symbol", "name", "value", "score", "ts", "metadata")


class SignalRecord(TypedDict):
    """One stored signal, as returned by latest and history queries."""

    provider: str
    symbol: str
    ts: datetime
    name: str
    value: float
    score: float | None
    metadata: Any
    created_at: datetime


class ActiveSignal(TypedDict):
    """The latest signal of one ``(symbol, name)`` within the active window."""

    symbol: str
    name: str
    value: float
    score: float | None
    ts: datetime
    metadata: Any


class SignalMetrics(TypedDict):
    """Statistics of one signal series over a window (count 0 and ``None`` when empty)."""

    signal_count: int
    min_value: float | None
    max_value: float | None
    avg_value: float | None
    latest_ts: datetime | None
    earliest_ts: datetime | None
    latest_value: float | None
    stddev_value: float | None


class SignalSummary(TypedDict):
    """Counts over all of one provider's signals in a window."""

    total_signals: int
    unique_symbols: int
    unique_signal_types: int
    latest_signal_ts: datetime | None
    earliest_signal_ts: datetime | None


class SignalBucket(TypedDict):
    """Aggregates of one time bucket; ``bucket`` is the bucket's start (aware UTC)."""

    bucket: datetime
    signal_count: int
    min_value: float
    max_value: float
    avg_value: float
    last_value: float


@dataclass(slots=True)
class QueryPlan(Generic[T]):
    """A statement ready to run, its parameters and how to turn its rows into the result.

    ``statement`` is ``None`` when the answer is known without asking the database (an empty
    ``signal_names`` list); ``finish([])`` is then the result. (Made on every call: a plain
    slotted class, a third of the cost of a frozen dataclass.)
    """

    statement: Executable | None
    parameters: dict[str, Any]
    finish: Callable[[Sequence[Any]], T]


# --------------------------------------------------------------------------- validation


def _encodable(name: str, value: str) -> None:
    # Neither PostgreSQL nor any driver can carry NUL in text, and a lone surrogate has no
    # UTF-8 encoding: the driver would fail on either, so refuse them here with the reason.
    if "\x00" in value:
        raise InvalidQueryError(f"{name} must not contain NUL characters, got {value!r}")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidQueryError(
                f"{name} is not valid Unicode (lone surrogate), got {value!r}"
            ) from None


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidQueryError(f"{name} must be a non-empty string, got {value!r}")
    _encodable(name, value)
    return value


def _limit(value: object) -> int:
    # bool is an int subclass but never a meaningful limit.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InvalidQueryError(f"limit must be a positive integer, got {value!r}")
    if int(value) > MAX_LIMIT:
        raise InvalidQueryError(f"limit must be at most {MAX_LIMIT} (2**31 - 1), got {value!r}")
    return int(value)


def _window(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidQueryError(f"{name} must be a positive number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidQueryError(f"{name} must be a positive finite number, got {value!r}")
    return number


def _instant(name: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidQueryError(f"{name} must be a datetime, got {value!r}")
    try:
        # Naive means local time, as datetime.astimezone() itself assumes.
        return value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        # Python's datetime range ends at 9999-12-31 in UTC too; an instant beyond it (e.g.
        # 9999-12-31 23:00-05:00) cannot be compared with any stored timestamp.
        raise InvalidQueryError(
            f"{name} is outside the supported range once converted to UTC "
            f"(0001-01-01 to 9999-12-31 UTC), got {value!r}"
        ) from None


def _names(value: Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise InvalidQueryError(f"signal_names must be a list of names, not a string: {value!r}")
    try:
        names = list(value)
    except TypeError:
        raise InvalidQueryError(f"signal_names must be a list of names, got {value!r}") from None
    for item in names:
        if not isinstance(item, str) or not item:
            raise InvalidQueryError(f"signal_names item must be a non-empty string, got {item!r}")
    if names:
        # One check over all names (100,000 names cost one pass, not 100,000 calls); the
        # offending name is looked up only when there is one.
        try:
            _encodable("signal_names", "\n".join(names))
        except InvalidQueryError:
            for item in names:
                _encodable("signal_names item", item)
            raise
    return names


def _since(delta: timedelta, end: datetime | None = None) -> datetime:
    try:
        return (datetime.now(timezone.utc) if end is None else end) - delta
    except OverflowError:
        # A window reaching before year 1 means "everything".
        return _EARLIEST


def _hours(name: str, value: object) -> timedelta:
    try:
        return timedelta(hours=_window(name, value))
    except OverflowError:
        raise InvalidQueryError(f"{name} is too large: {value!r}") from None


def _minutes(name: str, value: object) -> timedelta:
    try:
        return timedelta(minutes=_window(name, value))
    except OverflowError:
        raise InvalidQueryError(f"{name} is too large: {value!r}") from None


def _bucket_width(value: object) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidQueryError(f"bucket must be a positive timedelta, got {value!r}")
    if value > MAX_BUCKET:
        raise InvalidQueryError(
            f"bucket must be at most {MAX_BUCKET.days:,} days (about 4,700 years: every "
            f"bucket start must be a valid timestamp), got {value!r}"
        )
    return value


# --------------------------------------------------------------------------- conversion


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    tz = value.tzinfo
    if tz is timezone.utc:
        return value
    # Drivers hand out their own zero-offset timezone objects; equal to UTC means a cheap swap.
    if tz is None or tz == timezone.utc:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _records(rows: Sequence[Any]) -> list[SignalRecord]:
    # Hot path (every row of every call): unpack once, skip the helper call when already UTC
    # (ts and created_at are NOT NULL).
    utc = timezone.utc
    return [
        {
            "provider": provider,
            "symbol": symbol,
            "ts": ts if ts.tzinfo is utc else _utc(ts),  # type: ignore[typeddict-item]
            "name": name,
            "value": value,
            "score": score,
            "metadata": metadata,
            "created_at": created if created.tzinfo is utc else _utc(created),  # type: ignore[typeddict-item]
        }
        for provider, symbol, ts, name, value, score, metadata, created in rows
    ]


def _active(rows: Sequence[Any]) -> list[ActiveSignal]:
    utc = timezone.utc
    return [
        {
            "symbol": symbol,
            "name": name,
            "value": value,
            "score": score,
            "ts": ts if ts.tzinfo is utc else _utc(ts),  # type: ignore[typeddict-item]
            "metadata": metadata,
        }
        for symbol, name, value, score, ts, metadata in rows
    ]


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _mean_and_stddev(
    count: int, large: int, small_mean: Any, small_var: Any, large_mean: Any, large_var: Any
) -> tuple[float | None, float | None]:
    """Mean and sample stddev of a series from its two magnitude groups.

    ``small_*`` are the mean and sample variance of the values with ``|v| <= LARGE_VALUE``,
    ``large_*`` those of the others multiplied by ``SCALE_DOWN`` (variances ``None`` below two
    values). Without large values the answer is the database's own ``avg`` / ``stddev_samp``;
    otherwise the groups are merged with Chan et al.'s pairwise formula in the scaled units,
    where nothing overflows (a stddev beyond the float range is ``inf``).
    """
    small = count - large
    if large == 0:
        return _float(small_mean), (None if small_var is None else math.sqrt(max(small_var, 0.0)))
    big_mean = float(large_mean)
    big_m2 = 0.0 if large_var is None else max(float(large_var), 0.0) * (large - 1)
    if small == 0:
        mean = big_mean * SCALE_UP
        m2 = big_m2
    else:
        # Weighted before scaling up, so no intermediate exceeds the float range.
        mean = float(small_mean) * (small / count) + big_mean * (large / count) * SCALE_UP
        small_m2 = 0.0 if small_var is None else max(float(small_var), 0.0) * (small - 1)
        delta = big_mean - float(small_mean) * SCALE_DOWN
        m2 = small_m2 * SCALE_DOWN * SCALE_DOWN + big_m2 + delta * delta * (small * large / count)
    stddev = math.sqrt(m2 / (count - 1)) * SCALE_UP if count > 1 else None
    return mean, stddev


def _scaled_moments(values: Sequence[float]) -> tuple[int, float, float | None]:
    """Count, mean and sample variance of ``values`` multiplied by :data:`SCALE_DOWN`."""
    scaled = [value * SCALE_DOWN for value in values]
    mean = math.fsum(scaled) / len(scaled)
    m2 = math.fsum((value - mean) * (value - mean) for value in scaled)
    return len(scaled), mean, (m2 / (len(scaled) - 1) if len(scaled) > 1 else None)


def _metrics(sqlite: bool) -> Callable[[Sequence[Any]], SignalMetrics]:
    def finish(rows: Sequence[Any]) -> SignalMetrics:
        row: Sequence[Any] = rows[0] if rows else (0, *([None] * 10))
        count, low, high, latest, earliest, last, small_mean, small_spread, *large = row
        count = int(count or 0)
        if count == 0:
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
        if sqlite:
            # SQLite returned the large group's count and scaled mean, and each group's sum of
            # squared deviations: make those sample variances.
            n_large, large_mean, large_spread = large
            n_large = int(n_large or 0)
            small = count - n_large
            small_spread = small_spread / (small - 1) if small > 1 else None
            large_spread = large_spread / (n_large - 1) if n_large > 1 else None
        elif large[0]:
            # PostgreSQL returned the (rare) large values themselves.
            n_large, large_mean, large_spread = _scaled_moments(large[0])
        else:
            n_large, large_mean, large_spread = 0, None, None
        mean, stddev = _mean_and_stddev(
            count, n_large, small_mean, small_spread, large_mean, large_spread
        )
        return {
            "signal_count": count,
            "min_value": _float(low),
            "max_value": _float(high),
            "avg_value": mean,
            "latest_ts": _utc(latest),
            "earliest_ts": _utc(earliest),
            "latest_value": _float(last),
            "stddev_value": stddev,
        }

    return finish


def _summary(rows: Sequence[Any]) -> SignalSummary:
    total, symbols, names, latest, earliest = rows[0] if rows else (0, 0, 0, None, None)
    return {
        "total_signals": int(total or 0),
        "unique_symbols": int(symbols or 0),
        "unique_signal_types": int(names or 0),
        "latest_signal_ts": _utc(latest),
        "earliest_signal_ts": _utc(earliest),
    }


def _buckets(integer_start: bool) -> Callable[[Sequence[Any]], list[SignalBucket]]:
    first_us = (_FIRST_INSTANT - _EPOCH) // timedelta(microseconds=1)
    scale_up = SCALE_UP

    def finish(rows: Sequence[Any]) -> list[SignalBucket]:
        out: list[SignalBucket] = []
        for start, count, low, high, last, small_sum, large_sum in rows:
            bucket = (
                _EPOCH + timedelta(microseconds=max(start, first_us))
                if integer_start
                else _utc(start)
            )
            if large_sum is None:
                mean = small_sum / count  # the database's own avg(): same sum, same division
            else:
                # Divided by the count before scaling up: no intermediate beyond the range.
                mean = (small_sum or 0.0) / count + (large_sum / count) * scale_up
            out.append(
                {
                    "bucket": bucket,  # type: ignore[typeddict-item]
                    "signal_count": count,
                    "min_value": low,
                    "max_value": high,
                    "avg_value": mean,
                    "last_value": last,
                }
            )
        return out

    return finish


# Made once: a plan takes one of these as is.
_METRICS = {True: _metrics(sqlite=False), False: _metrics(sqlite=True)}
_BUCKETS = {True: _buckets(integer_start=True), False: _buckets(integer_start=False)}


# --------------------------------------------------------------------------- statements


def _is_postgresql(dialect: Dialect) -> bool:
    return dialect.name == "postgresql"


def _row_columns(table: Table) -> list[Any]:
    return [table.c[key] for key in _ROW_KEYS]


def name_binding(dialect: Dialect) -> NameBinding:
    """How a list of signal names is bound: always one parameter where the database allows.

    PostgreSQL takes one array (``name = ANY(:names)``), SQLite one JSON text read with
    ``json_each``; other databases get an expanding ``IN`` list.
    """
    if dialect.name == "postgresql":
        return "array"
    if dialect.name == "sqlite":
        return "json"
    return "expanding"


def _names_parameter(binding: NameBinding, names: list[str]) -> Any:
    return json.dumps(names) if binding == "json" else names


def _name_in(table: Table, binding: NameBinding) -> ColumnElement[bool]:
    name = table.c.name
    if binding == "array":
        from sqlalchemy.dialects.postgresql import ARRAY

        return name == any_(bindparam("names", type_=ARRAY(Text())))
    if binding == "json":
        values = func.json_each(bindparam("names", type_=Text())).table_valued("value")
        return name.in_(select(values.c.value))
    return name.in_(bindparam("names", expanding=True))


@lru_cache(maxsize=512)
def _latest_statement(table: Table, names: NameBinding | None) -> Executable:
    c = table.c
    stmt = select(*_row_columns(table)).where(
        c.provider == bindparam("provider"), c.symbol == bindparam("symbol")
    )
    if names is not None:
        stmt = stmt.where(_name_in(table, names))
    return stmt.order_by(c.ts.desc(), c.name).limit(bindparam("limit", type_=Integer))


@lru_cache(maxsize=512)
def _history_statement(table: Table, names: NameBinding | None) -> Executable:
    c = table.c
    stmt = select(*_row_columns(table)).where(
        c.provider == bindparam("provider"),
        c.symbol == bindparam("symbol"),
        c.ts >= bindparam("start_ts"),
        c.ts <= bindparam("end_ts"),
    )
    if names is not None:
        stmt = stmt.where(_name_in(table, names))
    return stmt.order_by(c.ts.desc(), c.name).limit(bindparam("limit", type_=Integer))


def _magnitude_groups(value: ColumnElement[Any]) -> tuple[ColumnElement[bool], ...]:
    # Values above LARGE_VALUE in magnitude are aggregated apart, multiplied by SCALE_DOWN (a
    # power of two: exact), so no float8 sum or sum of squares can overflow; the filter runs
    # before the multiplication, so no small value is ever scaled (no underflow either).
    large = bindparam("large_value", LARGE_VALUE, type_=Float())
    return func.abs(value) <= large, func.abs(value) > large


def _scaled(value: ColumnElement[Any]) -> ColumnElement[Any]:
    return value * bindparam("scale_down", SCALE_DOWN, type_=Float())


@lru_cache(maxsize=512)
def _metrics_statement(table: Table, postgresql: bool) -> Executable:
    c = table.c
    series = (
        c.provider == bindparam("provider"),
        c.symbol == bindparam("symbol"),
        c.name == bindparam("name"),
        c.ts >= bindparam("since"),
    )
    # The newest value through the (provider, symbol, name, ts DESC) index: one row read.
    latest_value = select(c.value).where(*series).order_by(c.ts.desc()).limit(1)
    small, large = _magnitude_groups(c.value)
    moments: list[ColumnElement[Any]]
    if postgresql:
        # Two filters a row: avg and var_samp of the small group share one transition state
        # (float8_accum, Youngs-Cramer: numerically stable); the values of the large group,
        # none in any real series, come back as they are for Python to reduce exactly.
        moments = [
            func.avg(c.value).filter(small),
            func.var_samp(c.value).filter(small),
            func.array_agg(c.value, type_=NullType()).filter(large),
        ]
    else:
        # No variance on SQLite: a second pass over the same rows gives each group's sum of
        # squared deviations from its mean (stable, unlike sum-of-squares formulas).
        scaled = _scaled(c.value)
        small_mean = select(func.avg(c.value)).where(*series, small).scalar_subquery()
        large_mean = select(func.avg(scaled)).where(*series, large).scalar_subquery()
        moments = [
            small_mean,
            func.sum((c.value - small_mean) * (c.value - small_mean)).filter(small),
            func.count().filter(large),
            large_mean,
            func.sum((scaled - large_mean) * (scaled - large_mean)).filter(large),
        ]
    return select(
        func.count(),
        func.min(c.value),
        func.max(c.value),
        func.max(c.ts),
        func.min(c.ts),
        latest_value.scalar_subquery(),
        *moments,
    ).where(*series)


@lru_cache(maxsize=512)
def _active_statement(table: Table, postgresql: bool) -> Executable:
    c = table.c
    where = (c.provider == bindparam("provider"), c.ts >= bindparam("since"))
    columns = [c[key] for key in _ACTIVE_KEYS]
    if postgresql:
        query = select(*columns).where(*where).order_by(c.symbol, c.name, c.ts.desc())
        try:
            from sqlalchemy.dialects.postgresql import distinct_on
        except ImportError:
            # SQLAlchemy 2.0: DISTINCT ON is spelled select().distinct(*columns) there
            # (deprecated in 2.1 in favour of the distinct_on() extension).
            return query.distinct(c.symbol, c.name)
        return query.ext(distinct_on(c.symbol, c.name))
    rank = (
        func.row_number().over(partition_by=(c.symbol, c.name), order_by=c.ts.desc()).label("rank")
    )
    ranked = select(*columns, rank).where(*where).subquery("ranked")
    r = ranked.c
    return (
        select(*(r[key] for key in _ACTIVE_KEYS)).where(r["rank"] == 1).order_by(r.symbol, r.name)
    )


@lru_cache(maxsize=512)
def _summary_statement(table: Table) -> Executable:
    c = table.c
    return select(
        func.count(),
        func.count(c.symbol.distinct()),
        func.count(c.name.distinct()),
        func.max(c.ts),
        func.min(c.ts),
    ).where(c.provider == bindparam("provider"), c.ts >= bindparam("since"))


def _bucket_expression(table: Table, function: BucketFunction) -> ColumnElement[Any]:
    ts = table.c.ts
    if function == "sqlite":
        # Integer microseconds since the epoch, from the fixed-width text SQLAlchemy stores
        # ("YYYY-MM-DD HH:MM:SS.ffffff"); SQLite's own date functions keep milliseconds only.
        seconds = cast(func.strftime("%s", func.substr(ts, 1, 19)), BigInteger)
        micros = seconds * 1_000_000 + cast(func.substr(ts, 21, 6), BigInteger)
        width = bindparam("width_us", type_=BigInteger)
        offset = micros - bindparam("origin_us", type_=BigInteger)
        # SQLite's % truncates towards zero; fold negatives so buckets floor like date_bin.
        return micros - (((offset % width) + width) % width)
    stride = cast(bindparam("bucket", type_=Interval()), Interval())
    origin = cast(bindparam("origin", type_=DateTime(timezone=True)), DateTime(timezone=True))
    if function == "time_bucket":
        return func.time_bucket(stride, ts, origin)
    if function == "date_bin":
        return func.date_bin(stride, ts, origin)
    # PostgreSQL < 14 without TimescaleDB: floor the offset from the origin in microseconds.
    width = bindparam("width_us", type_=BigInteger)
    offset_us = func.floor(func.extract("epoch", ts - origin) * 1_000_000 / width) * width
    return origin + func.make_interval(0, 0, 0, 0, 0, 0, offset_us / 1_000_000.0)


@lru_cache(maxsize=512)
def _buckets_statement(table: Table, function: BucketFunction) -> Executable:
    c = table.c
    binned = (
        select(_bucket_expression(table, function).label("bucket"), c.ts, c.value)
        .where(
            c.provider == bindparam("provider"),
            c.symbol == bindparam("symbol"),
            c.name == bindparam("name"),
            c.ts >= bindparam("start_ts"),
            c.ts <= bindparam("end_ts"),
        )
        .subquery("binned")
    )
    b = binned.c
    last: ColumnElement[Any]
    start: ColumnElement[Any]
    if function == "sqlite":
        ranked = select(
            b.bucket,
            b.value,
            func.first_value(b.value)
            .over(partition_by=b.bucket, order_by=b.ts.desc())
            .label("last_value"),
        ).subquery("ranked")
        source, last = ranked.c, func.max(ranked.c.last_value)
        start = source.bucket  # clamped to the first representable instant in Python
    else:
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        source = b
        last = func.array_agg(aggregate_order_by(b.value, b.ts.desc()))[1]
        # A bucket of a timestamp in the first moments of year 1 may start before it, which
        # no driver can return: it is labelled with the first representable instant. Sent as
        # text: asyncpg would send that datetime as -infinity.
        first = bindparam("first_instant", _FIRST_INSTANT.isoformat(), type_=Text())
        start = func.greatest(source.bucket, cast(first, DateTime(timezone=True)))
    # Each group's sum (the mean is sum / count): two filters a row, nothing to weigh.
    small, large = _magnitude_groups(source.value)
    return (
        select(
            start,
            func.count(),
            func.min(source.value),
            func.max(source.value),
            last,
            func.sum(source.value).filter(small),
            func.sum(_scaled(source.value)).filter(large),
        )
        .group_by(source.bucket)
        .order_by(source.bucket)
    )


# --------------------------------------------------------------------------- plans


def plan_latest(
    table: Table,
    dialect: Dialect,
    provider: str,
    symbol: str,
    limit: int = 100,
    signal_names: Iterable[str] | None = None,
) -> QueryPlan[list[SignalRecord]]:
    """Newest signals of ``provider``/``symbol``: newest first, then by name."""
    params: dict[str, Any] = {
        "provider": _text("provider", provider),
        "symbol": _text("symbol", symbol).upper(),
        "limit": _limit(limit),
    }
    names = _names(signal_names)
    if names is None:
        return QueryPlan(_latest_statement(table, None), params, _records)
    if not names:
        return QueryPlan(None, params, _records)
    binding = name_binding(dialect)
    params["names"] = _names_parameter(binding, names)
    return QueryPlan(_latest_statement(table, binding), params, _records)


def plan_history(
    table: Table,
    dialect: Dialect,
    provider: str,
    symbol: str,
    start_ts: datetime,
    end_ts: datetime | None = None,
    signal_names: Iterable[str] | None = None,
    limit: int = 1000,
) -> QueryPlan[list[SignalRecord]]:
    """Signals with ``start_ts <= ts <= end_ts`` (``None``: now), newest first, then by name."""
    params: dict[str, Any] = {
        "provider": _text("provider", provider),
        "symbol": _text("symbol", symbol).upper(),
        "start_ts": _instant("start_ts", start_ts),
        "end_ts": datetime.now(timezone.utc) if end_ts is None else _instant("end_ts", end_ts),
        "limit": _limit(limit),
    }
    names = _names(signal_names)
    if names is None:
        return QueryPlan(_history_statement(table, None), params, _records)
    if not names:
        return QueryPlan(None, params, _records)
    binding = name_binding(dialect)
    params["names"] = _names_parameter(binding, names)
    return QueryPlan(_history_statement(table, binding), params, _records)


def plan_metrics(
    table: Table,
    dialect: Dialect,
    provider: str,
    symbol: str,
    signal_name: str,
    hours_back: float = 24,
) -> QueryPlan[SignalMetrics]:
    """Count, min, max, mean, sample stddev, first/last time and last value of one series."""
    params = {
        "provider": _text("provider", provider),
        "symbol": _text("symbol", symbol).upper(),
        "name": _text("signal_name", signal_name),
        "since": _since(_hours("hours_back", hours_back)),
    }
    postgresql = _is_postgresql(dialect)
    return QueryPlan(_metrics_statement(table, postgresql), params, _METRICS[postgresql])


def plan_active(
    table: Table, dialect: Dialect, provider: str, minutes_back: float = 5
) -> QueryPlan[list[ActiveSignal]]:
    """The latest row per ``(symbol, name)`` seen in the window, ordered by symbol, name."""
    params = {
        "provider": _text("provider", provider),
        "since": _since(_minutes("minutes_back", minutes_back)),
    }
    return QueryPlan(_active_statement(table, _is_postgresql(dialect)), params, _active)


def plan_summary(
    table: Table, dialect: Dialect, provider: str, hours_back: float = 24
) -> QueryPlan[SignalSummary]:
    """Totals of one provider's signals in the window."""
    params = {
        "provider": _text("provider", provider),
        "since": _since(_hours("hours_back", hours_back)),
    }
    return QueryPlan(_summary_statement(table), params, _summary)


def bucket_function_for(dialect: Dialect, has_timescale: bool) -> BucketFunction:
    """The bucketing function a database supports, best first."""
    if dialect.name == "sqlite":
        return "sqlite"
    if has_timescale:
        return "time_bucket"
    version = dialect.server_version_info or (0,)
    return "date_bin" if version >= (14,) else "epoch"


def plan_buckets(
    table: Table,
    function: BucketFunction,
    provider: str,
    symbol: str,
    signal_name: str,
    bucket: timedelta = timedelta(minutes=1),
    start_ts: datetime | None = None,
    end_ts: datetime | None = None,
    *,
    hours_back: float | None = None,
    minutes_back: float | None = None,
) -> QueryPlan[list[SignalBucket]]:
    """Per-bucket count/min/max/avg/last of one series between ``start_ts`` and ``end_ts``.

    ``end_ts=None`` means now. The window starts at ``start_ts``, or ``hours_back`` /
    ``minutes_back`` before ``end_ts`` (at most one of the three; none: 24 hours). Buckets
    are aligned on :data:`BUCKET_ORIGIN` and ordered oldest first.
    """
    width = _bucket_width(bucket)
    if (start_ts is not None) + (hours_back is not None) + (minutes_back is not None) > 1:
        given = [
            name
            for name, value in (
                ("start_ts", start_ts),
                ("hours_back", hours_back),
                ("minutes_back", minutes_back),
            )
            if value is not None
        ]
        raise InvalidQueryError(
            f"give at most one of start_ts, hours_back, minutes_back; got {', '.join(given)}"
        )
    end = datetime.now(timezone.utc) if end_ts is None else _instant("end_ts", end_ts)
    if start_ts is not None:
        start = _instant("start_ts", start_ts)
    elif hours_back is not None:
        start = _since(_hours("hours_back", hours_back), end)
    elif minutes_back is not None:
        start = _since(_minutes("minutes_back", minutes_back), end)
    else:
        start = _since(_DEFAULT_WINDOW, end)
    params: dict[str, Any] = {
        "provider": _text("provider", provider),
        "symbol": _text("symbol", symbol).upper(),
        "name": _text("signal_name", signal_name),
        "start_ts": start,
        "end_ts": end,
    }
    if function == "sqlite":
        params["width_us"] = width // _MICROSECOND
        params["origin_us"] = _ORIGIN_US
    else:
        params["bucket"] = width
        params["origin"] = BUCKET_ORIGIN
        if function == "epoch":
            params["width_us"] = width // _MICROSECOND
    return QueryPlan(_buckets_statement(table, function), params, _BUCKETS[function == "sqlite"])
