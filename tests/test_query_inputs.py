"""Query inputs no driver can take are ``InvalidQueryError``; stored values never break a read.

Every case runs on every tier through the sync and the async client: limits past a 4-byte
integer, NUL characters and lone surrogates in text arguments, datetimes outside the range once
converted to UTC, bucket widths past the widest representable bucket, 100,000 signal names (one
bound parameter, not one per name), and values near the float maximum (means and standard
deviations computed without overflow, equal to exact arithmetic).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.pool import NullPool

from sa_signals import AsyncSignalsQueryClient, InvalidQueryError, SignalsQueryClient
from sa_signals.read.queries import MAX_BUCKET, MAX_LIMIT

from .conftest import Database

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=0)


def _options(db: Database) -> dict[str, Any]:
    # TimescaleDB-in-WASM serves one connection at a time: no idle pooled connections there.
    return {"poolclass": NullPool} if db.tier == "timescale" else {}


def _seed(db: Database, rows: list[tuple[str, datetime, float]]) -> None:
    table = db.table
    values = [
        {"provider": "p", "symbol": "SPY", "ts": ts, "name": name, "value": value}
        for name, ts, value in rows
    ]
    with db.engine.begin() as conn:
        for start in range(0, len(values), 200):
            conn.execute(insert(table).values(values[start : start + 200]))


Call = Callable[[Any], Any]


async def _both(db: Database, call: Call) -> list[Any]:
    """``call(client)`` on the sync client, then on the async client (awaited)."""
    with SignalsQueryClient(db.url, table=db.table, **_options(db)) as client:
        sync = call(client)
    async with AsyncSignalsQueryClient(db.async_url, table=db.table, **_options(db)) as aclient:
        result = call(aclient)
        asynchronous = await result if isinstance(result, Awaitable) else result
    return [sync, asynchronous]


async def _invalid(db: Database, call: Call, match: str) -> None:
    with SignalsQueryClient(db.url, table=db.table, **_options(db)) as client:
        with pytest.raises(InvalidQueryError, match=match):
            call(client)
    async with AsyncSignalsQueryClient(db.async_url, table=db.table, **_options(db)) as aclient:
        with pytest.raises(InvalidQueryError, match=match):
            result = call(aclient)
            if isinstance(result, Awaitable):
                await result


# ---------------------------------------------------------------- limit


async def test_limit_beyond_a_4_byte_integer_is_invalid(db: Database) -> None:
    _seed(db, [("n", NOW, 1.0)])
    await _invalid(db, lambda c: c.get_latest_signals("p", "SPY", limit=2**31), "at most")
    await _invalid(db, lambda c: c.get_signals_history("p", "SPY", NOW, limit=2**40), "at most")
    answers = await _both(db, lambda c: c.get_latest_signals("p", "SPY", limit=MAX_LIMIT))
    assert [len(rows) for rows in answers] == [1, 1]


# ---------------------------------------------------------------- text


TEXT_CALLS: dict[str, Callable[[Any, str], Any]] = {
    "provider": lambda c, bad: c.get_signal_summary(bad),
    "symbol": lambda c, bad: c.get_latest_signals("p", bad),
    "signal_name": lambda c, bad: c.get_signal_metrics("p", "SPY", bad),
    "signal_names": lambda c, bad: c.get_latest_signals("p", "SPY", signal_names=["n", bad]),
    "buckets": lambda c, bad: c.get_signal_buckets("p", "SPY", bad),
    "active": lambda c, bad: c.get_active_signals(bad),
    "history": lambda c, bad: c.get_signals_history("p", "SPY", NOW, signal_names=[bad]),
}


@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800", "\udfff"], ids=["nul", "high", "low"])
@pytest.mark.parametrize("argument", list(TEXT_CALLS))
async def test_nul_and_lone_surrogates_in_text_are_invalid(
    db: Database, argument: str, bad: str
) -> None:
    call = TEXT_CALLS[argument]
    match = "NUL" if "\x00" in bad else "surrogate"
    await _invalid(db, lambda c: call(c, bad), match)


async def test_non_ascii_text_is_fine(db: Database) -> None:
    _seed(db, [("señal_€_信号", NOW, 2.0)])
    answers = await _both(
        db, lambda c: c.get_latest_signals("p", "SPY", signal_names=["señal_€_信号"])
    )
    assert [[row["value"] for row in rows] for rows in answers] == [[2.0], [2.0]]


# ---------------------------------------------------------------- datetimes


EAST = timezone(timedelta(hours=5))
WEST = timezone(timedelta(hours=-5))


@pytest.mark.parametrize(
    "instant",
    [datetime(9999, 12, 31, 23, tzinfo=WEST), datetime(1, 1, 1, 2, tzinfo=EAST)],
    ids=["after-9999", "before-year-1"],
)
async def test_datetimes_outside_the_range_in_utc_are_invalid(
    db: Database, instant: datetime
) -> None:
    await _invalid(db, lambda c: c.get_signals_history("p", "SPY", instant), "start_ts")
    await _invalid(db, lambda c: c.get_signals_history("p", "SPY", NOW, end_ts=instant), "end_ts")
    await _invalid(db, lambda c: c.get_signal_buckets("p", "SPY", "n", end_ts=instant), "end_ts")


@pytest.fixture
def new_york() -> Iterator[None]:
    """Local time is New York (UTC-5): a naive 9999-12-31 23:30 is in year 10000 UTC."""
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is not available on this platform")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        try:
            yield
        finally:
            patch.undo()
            time.tzset()


@pytest.mark.usefixtures("new_york")
async def test_naive_local_datetimes_outside_the_range_in_utc_are_invalid(db: Database) -> None:
    late = datetime(9999, 12, 31, 23, 30)
    await _invalid(db, lambda c: c.get_signals_history("p", "SPY", late), "outside")
    # The same instant one hour earlier is still in range.
    answers = await _both(
        db, lambda c: c.get_signals_history("p", "SPY", datetime(9999, 12, 31, 18, 30))
    )
    assert answers == [[], []]


async def test_the_extremes_of_the_range_are_read_back(db: Database) -> None:
    first, last = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    _seed(db, [("n", first, 1.0), ("n", last, 2.0)])
    answers = await _both(db, lambda c: c.get_signals_history("p", "SPY", first, last))
    assert [[row["ts"] for row in rows] for rows in answers] == [[last, first]] * 2


# ---------------------------------------------------------------- buckets


async def test_bucket_wider_than_the_widest_is_invalid(db: Database) -> None:
    for width in (timedelta.max, MAX_BUCKET + timedelta(microseconds=1)):
        await _invalid(db, lambda c, w=width: c.get_signal_buckets("p", "SPY", "n", w), "bucket")


async def test_widest_bucket_over_the_whole_range_on_every_tier(db: Database) -> None:
    first, last = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=UTC)
    _seed(db, [("n", first, 1.0), ("n", last, 2.0)])
    window = {"start_ts": datetime(1, 1, 1, tzinfo=UTC), "end_ts": last}
    answers = await _both(db, lambda c: c.get_signal_buckets("p", "SPY", "n", MAX_BUCKET, **window))
    assert answers[0] == answers[1]
    assert [row["signal_count"] for row in answers[0]] == [1, 1]


async def test_a_bucket_starting_before_year_1_is_labelled_with_its_first_instant(
    db: Database,
) -> None:
    # 0001-01-01 00:00:01 in 7-second buckets aligned on 2000-01-03: its bucket starts in
    # year 0, which no driver can return; it is labelled 0001-01-01 00:00:00.
    first = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
    _seed(db, [("n", first, 1.0), ("n", first + timedelta(seconds=30), 2.0)])
    window = {"start_ts": datetime(1, 1, 1, tzinfo=UTC), "end_ts": first + timedelta(minutes=1)}
    answers = await _both(
        db, lambda c: c.get_signal_buckets("p", "SPY", "n", timedelta(seconds=7), **window)
    )
    for rows in answers:
        assert rows[0]["bucket"] == datetime(1, 1, 1, tzinfo=UTC)
        assert [row["last_value"] for row in rows] == [1.0, 2.0]


# ---------------------------------------------------------------- many names


async def test_one_hundred_thousand_signal_names(db: Database) -> None:
    _seed(db, [("wanted", NOW, 1.0), ("other", NOW, 2.0), ("n_99999", NOW, 3.0)])
    names = [f"n_{i}" for i in range(100_000)] + ["wanted"]
    latest = await _both(db, lambda c: c.get_latest_signals("p", "SPY", 10, names))
    history = await _both(
        db, lambda c: c.get_signals_history("p", "SPY", NOW - timedelta(hours=1), None, names)
    )
    for rows in latest + history:
        assert sorted(row["name"] for row in rows) == ["n_99999", "wanted"]


# ---------------------------------------------------------------- magnitudes


def _exact(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation in exact arithmetic, rounded once."""
    exact = [Fraction(v) for v in values]
    mean = sum(exact) / len(exact)
    variance = sum((v - mean) ** 2 for v in exact) / (len(exact) - 1)
    with localcontext() as context:
        context.prec = 60
        spread = (Decimal(variance.numerator) / Decimal(variance.denominator)).sqrt()
    return float(mean), float(spread)


EXTREMES = {
    "near-max": [1.7e308, 1.6e308, 1.75e308, 1.5e308],
    "both-signs": [1.7e308, -1.7e308, 1.6e308, -1.0e308, 5e-324],
    "mixed": [1e300, -3e299, 2.5, -7.25, 1e-3, 4.0e200],
    "tiny": [5e-324, 1e-320, 2.5e-310, 1e-300],
}


@pytest.mark.parametrize("case", list(EXTREMES))
async def test_metrics_and_buckets_of_extreme_values(db: Database, case: str) -> None:
    values = EXTREMES[case]
    start = datetime(2026, 1, 5, tzinfo=UTC)
    _seed(db, [("x", start + timedelta(seconds=i), v) for i, v in enumerate(values)])
    mean, spread = _exact(values)
    metrics = await _both(db, lambda c: c.get_signal_metrics("p", "SPY", "x", hours_back=10**6))
    window = {"start_ts": start, "end_ts": start + timedelta(minutes=1)}
    buckets = await _both(
        db, lambda c: c.get_signal_buckets("p", "SPY", "x", timedelta(hours=1), **window)
    )
    for answer in metrics:
        assert answer["signal_count"] == len(values)
        assert answer["avg_value"] == pytest.approx(mean, rel=1e-12, abs=1e-323)
        assert answer["stddev_value"] == pytest.approx(spread, rel=1e-12)
        assert (answer["min_value"], answer["max_value"]) == (min(values), max(values))
    for rows in buckets:
        assert len(rows) == 1 and rows[0]["signal_count"] == len(values)
        assert rows[0]["avg_value"] == pytest.approx(mean, rel=1e-12, abs=1e-323)


async def test_normal_data_keeps_its_statistics(db: Database) -> None:
    rng = random.Random(11)
    values = [rng.gauss(425.0, 12.5) for _ in range(400)] + [1e-9, -3.0e6, 7.5e12]
    start = datetime(2026, 2, 2, tzinfo=UTC)
    _seed(db, [("x", start + timedelta(seconds=i), v) for i, v in enumerate(values)])
    metrics = await _both(db, lambda c: c.get_signal_metrics("p", "SPY", "x", hours_back=10**6))
    for answer in metrics:
        assert answer["avg_value"] == pytest.approx(statistics.fmean(values), rel=1e-9)
        assert answer["stddev_value"] == pytest.approx(statistics.stdev(values), rel=1e-9)
    window = {"start_ts": start, "end_ts": start + timedelta(hours=1)}
    buckets = await _both(
        db, lambda c: c.get_signal_buckets("p", "SPY", "x", timedelta(minutes=1), **window)
    )
    assert buckets[0] == buckets[1]
    for row in buckets[0]:
        offset = int((row["bucket"] - start).total_seconds())
        chunk = values[offset : offset + 60]
        assert row["avg_value"] == pytest.approx(statistics.fmean(chunk), rel=1e-9)
