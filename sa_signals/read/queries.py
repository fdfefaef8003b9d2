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
"""

from __future__ import annotations

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
    Integer,
    Interval,
    Table,
    TextClause,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import ColumnElement

from ..errors import InvalidQueryError

__all__ = [
    "BUCKET_ORIGIN",
    "TIMESCALE_PROBE",
    "ActiveSignal",
    "BucketFunction",
    "QueryPlan",
    "SignalBucket",
    "SignalMetrics",
    "SignalRecord",
    "SignalSummary",
    "bucket_function_for",
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

#: Whether the connected PostgreSQL database has the timescaledb extension installed.
TIMESCALE_PROBE: TextClause = text(
    "SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'"
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
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


@dataclass(frozen=True)
class QueryPlan(Generic[T]):
    """A statement ready to run, its parameters and how to turn its rows into the result.

    ``statement`` is ``None`` when the answer is known without asking the database (an empty
    ``signal_names`` list); ``finish([])`` is then the result.
    """

    statement: Executable | None
    parameters: dict[str, Any]
    finish: Callable[[Sequence[Any]], T]


# --------------------------------------------------------------------------- validation


def _text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidQueryError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _limit(value: object) -> int:
    # bool is an int subclass but never a meaningful limit.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise InvalidQueryError(f"limit must be a positive integer, got {value!r}")
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
    # Naive means local time, as datetime.astimezone() itself assumes.
    return value.astimezone(timezone.utc)


def _names(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise InvalidQueryError(f"signal_names must be a list of names, not a string: {value!r}")
    try:
        names = tuple(value)
    except TypeError:
        raise InvalidQueryError(f"signal_names must be a list of names, got {value!r}") from None
    for item in names:
        _text("signal_names item", item)
    return names


def _since(delta: timedelta) -> datetime:
    try:
        return datetime.now(timezone.utc) - delta
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


def _metrics(sqlite: bool) -> Callable[[Sequence[Any]], SignalMetrics]:
    def finish(rows: Sequence[Any]) -> SignalMetrics:
        row: Sequence[Any] = rows[0] if rows else (0, *([None] * 7))
        count, low, high, mean, latest, earliest, last, spread = row
        count = int(count or 0)
        if sqlite:
            # SQLite returned the sum of squared deviations; finish the sample stddev here.
            spread = math.sqrt(max(spread, 0.0) / (count - 1)) if count > 1 else None
        if count == 0:
            low = high = mean = latest = earliest = last = spread = None
        return {
            "signal_count": count,
            "min_value": _float(low),
            "max_value": _float(high),
            "avg_value": _float(mean),
            "latest_ts": _utc(latest),
            "earliest_ts": _utc(earliest),
            "latest_value": _float(last),
            "stddev_value": _float(spread),
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
    def finish(rows: Sequence[Any]) -> list[SignalBucket]:
        out: list[SignalBucket] = []
        for start, count, low, high, mean, last in rows:
            bucket = _EPOCH + timedelta(microseconds=start) if integer_start else _utc(start)
            out.append(
                {
                    "bucket": bucket,  # type: ignore[typeddict-item]
                    "signal_count": int(count),
                    "min_value": float(low),
                    "max_value": float(high),
                    "avg_value": float(mean),
                    "last_value": float(last),
                }
            )
        return out

    return finish


# --------------------------------------------------------------------------- statements


def _is_postgresql(dialect: Dialect) -> bool:
    return dialect.name == "postgresql"


def _row_columns(table: Table) -> list[Any]:
    return [table.c[key] for key in _ROW_KEYS]


@lru_cache(maxsize=512)
def _latest_statement(table: Table, by_names: bool) -> Executable:
    c = table.c
    stmt = select(*_row_columns(table)).where(
        c.provider == bindparam("provider"), c.symbol == bindparam("symbol")
    )
    if by_names:
        stmt = stmt.where(c.name.in_(bindparam("names", expanding=True)))
    return stmt.order_by(c.ts.desc(), c.name).limit(bindparam("limit", type_=Integer))


@lru_cache(maxsize=512)
def _history_statement(table: Table, by_names: bool) -> Executable:
    c = table.c
    stmt = select(*_row_columns(table)).where(
        c.provider == bindparam("provider"),
        c.symbol == bindparam("symbol"),
        c.ts >= bindparam("start_ts"),
        c.ts <= bindparam("end_ts"),
    )
    if by_names:
        stmt = stmt.where(c.name.in_(bindparam("names", expanding=True)))
    return stmt.order_by(c.ts.desc(), c.name).limit(bindparam("limit", type_=Integer))


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
    spread: ColumnElement[Any]
    if postgresql:
        spread = func.stddev_samp(c.value)
    else:
        # No stddev on SQLite: a second pass over the same rows gives the sum of squared
        # deviations from the mean (numerically stable, unlike sum-of-squares formulas).
        mean = select(func.avg(c.value)).where(*series).scalar_subquery()
        spread = func.sum((c.value - mean) * (c.value - mean))
    return select(
        func.count(),
        func.min(c.value),
        func.max(c.value),
        func.avg(c.value),
        func.max(c.ts),
        func.min(c.ts),
        latest_value.scalar_subquery(),
        spread,
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
    if function == "sqlite":
        ranked = select(
            b.bucket,
            b.value,
            func.first_value(b.value)
            .over(partition_by=b.bucket, order_by=b.ts.desc())
            .label("last_value"),
        ).subquery("ranked")
        source, last = ranked.c, func.max(ranked.c.last_value)
    else:
        from sqlalchemy.dialects.postgresql import aggregate_order_by

        source = b
        last = func.array_agg(aggregate_order_by(b.value, b.ts.desc()))[1]
    return (
        select(
            source.bucket,
            func.count(),
            func.min(source.value),
            func.max(source.value),
            func.avg(source.value),
            last,
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
    if names is not None:
        if not names:
            return QueryPlan(None, params, _records)
        params["names"] = names
    return QueryPlan(_latest_statement(table, names is not None), params, _records)


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
    if names is not None:
        if not names:
            return QueryPlan(None, params, _records)
        params["names"] = names
    return QueryPlan(_history_statement(table, names is not None), params, _records)


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
    return QueryPlan(_metrics_statement(table, postgresql), params, _metrics(sqlite=not postgresql))


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
) -> QueryPlan[list[SignalBucket]]:
    """Per-bucket count/min/max/avg/last of one series between ``start_ts`` and ``end_ts``.

    ``end_ts=None`` means now and ``start_ts=None`` 24 hours before ``end_ts``; buckets are
    aligned on :data:`BUCKET_ORIGIN` and ordered oldest first.
    """
    if not isinstance(bucket, timedelta) or bucket <= timedelta(0):
        raise InvalidQueryError(f"bucket must be a positive timedelta, got {bucket!r}")
    end = datetime.now(timezone.utc) if end_ts is None else _instant("end_ts", end_ts)
    start = end - timedelta(hours=24) if start_ts is None else _instant("start_ts", start_ts)
    width_us = bucket // timedelta(microseconds=1)
    params: dict[str, Any] = {
        "provider": _text("provider", provider),
        "symbol": _text("symbol", symbol).upper(),
        "name": _text("signal_name", signal_name),
        "start_ts": start,
        "end_ts": end,
    }
    if function == "sqlite":
        params["width_us"] = width_us
        params["origin_us"] = (BUCKET_ORIGIN - _EPOCH) // timedelta(microseconds=1)
    else:
        params["bucket"] = bucket
        params["origin"] = BUCKET_ORIGIN
        if function == "epoch":
            params["width_us"] = width_us
    return QueryPlan(
        _buckets_statement(table, function), params, _buckets(integer_start=function == "sqlite")
    )
