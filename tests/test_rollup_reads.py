"""The clients read the rollups: same answers as the raw table, to 1e-9 relative.

Each test compares the rollup path (a table declared with ``rollups=``) with the raw path (the
same physical table declared without them) on the same data: after a refresh, after writes
that came later, after replays that changed old values (invalidations), with real-time
aggregation on and off. A statement listener proves which path ran.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import MetaData, event, insert, select, text

from sa_signals import (
    AsyncSignalsQueryClient,
    SignalQueryRepository,
    SignalRepository,
    SignalsQueryClient,
    TimescaleOptions,
    signals_table,
)
from sa_signals.errors import QueryError
from sa_signals.read import rollups
from sa_signals.read.rollups import RollupState, _horizon, cover, cover_ctes
from sa_signals.schema.aggregates import Rollup, get_rollups

from .conftest import Database

UTC = timezone.utc
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
NOW = datetime.now(UTC)
SERIES = [
    ("BTC", "price", 50_000.0, 0.5),
    ("BTC", "spread", 1.0, 0.25),
    ("ETH", "price", 3_000.0, 1e-3),
]


def _rows(start: datetime, end: datetime, step: timedelta, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for symbol, name, mean, spread in SERIES:
        ts = start + timedelta(seconds=rng.randrange(60))
        while ts < end:
            rows.append(
                {
                    "provider": "p",
                    "symbol": symbol,
                    "ts": ts,
                    "name": name,
                    "value": mean + rng.gauss(0, spread),
                    "score": None,
                    "metadata": None,
                }
            )
            ts += step + timedelta(seconds=rng.randrange(120))
    return rows


class Pair:
    """The same physical table read through its rollups and without them."""

    def __init__(self, db: Database, materialized_only: bool) -> None:
        self.db = db
        self.table = signals_table(
            db.metadata,
            schema=db.schema,
            timescale=TimescaleOptions(rollups=(HOUR, DAY)),
        )
        for rollup in get_rollups(self.table):
            object.__setattr__(rollup.aggregate, "materialized_only", materialized_only)
        self.raw = signals_table(MetaData(), schema=db.schema, timescale=None)
        with db.engine.begin() as conn:
            db.metadata.create_all(conn)
            conn.execute(
                text(
                    "SELECT alter_job(job_id, scheduled => false) "
                    "FROM timescaledb_information.jobs WHERE hypertable_schema = :s"
                ),
                {"s": db.schema},
            )
        self.statements: list[str] = []
        event.listen(db.engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def seed(self, rows: list[dict[str, Any]]) -> None:
        with self.db.engine.begin() as conn:
            for start in range(0, len(rows), 500):
                conn.execute(insert(self.table).values(rows[start : start + 500]))

    def refresh(self) -> None:
        with self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for rollup in get_rollups(self.table):
                rollup.aggregate.refresh_now(conn)

    def used_rollup(self) -> bool:
        return any("signals_1h" in s or "signals_1d" in s for s in self.statements)

    def both(self, method: str, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        with self.db.engine.connect() as conn:
            raw = getattr(SignalQueryRepository(conn, self.raw), method)(*args, **kwargs)
            self.statements.clear()
            rolled = getattr(SignalQueryRepository(conn, self.table), method)(*args, **kwargs)
        return rolled, raw


def _same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} != {len(b)}"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{index}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{where}: {a!r} != {b!r}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(params=[True, False], ids=["materialized_only", "real_time"])
def pair(native_timescale_db: Database, request: pytest.FixtureRequest) -> Iterator[Pair]:
    pair = Pair(native_timescale_db, request.param)
    pair.seed(_rows(NOW - timedelta(days=9), NOW - timedelta(hours=5), timedelta(minutes=9), 1))
    pair.refresh()
    yield pair
    event.remove(pair.db.engine, "before_cursor_execute", pair._seen)


def _check_all(pair: Pair) -> None:
    for hours in (24 * 8, 24 * 3 + 0.37, 24, 7.5):
        rolled, raw = pair.both("get_signal_summary", "p", hours_back=hours)
        _same(rolled, raw, f"summary {hours}")
        assert rolled["total_signals"] > 0
        for symbol, name, _, _ in SERIES:
            rolled, raw = pair.both("get_signal_metrics", "p", symbol, name, hours_back=hours)
            _same(rolled, raw, f"metrics {symbol} {name} {hours}")
    assert pair.used_rollup()
    end = NOW - timedelta(minutes=17, seconds=3)
    for width in (HOUR, 3 * HOUR, DAY):
        for symbol, name, _, _ in SERIES:
            rolled, raw = pair.both(
                "get_signal_buckets", "p", symbol, name, width,
                start_ts=NOW - timedelta(days=8, minutes=41), end_ts=end,
            )  # fmt: skip
            assert pair.used_rollup(), width
            _same(rolled, raw, f"buckets {width} {symbol} {name}")
            assert len(rolled) > 5


def test_rollup_reads_equal_the_raw_table_after_a_refresh(pair: Pair) -> None:
    _check_all(pair)


def test_rollup_reads_see_writes_after_the_last_refresh_and_replays(pair: Pair) -> None:
    # New rows after the refresh, and replays that change values in materialized buckets.
    pair.seed(_rows(NOW - timedelta(hours=5), NOW, timedelta(minutes=3), 2))
    with pair.db.engine.begin() as conn:
        old = (
            conn.execute(
                select(pair.table).where(pair.table.c.ts < NOW - timedelta(days=2)).limit(40)
            )
            .mappings()
            .all()
        )
    replayed = [{**row, "value": row["value"] * 3 + 7} for row in old]
    from sqlalchemy.orm import Session

    with Session(pair.db.engine) as session, session.begin():
        SignalRepository(session, pair.table).upsert(replayed)
    # The aggregate itself is stale for those buckets until its next refresh...
    hourly = get_rollups(pair.table)[0].aggregate
    with pair.db.engine.connect() as conn:
        a = hourly.c
        bucket = (
            datetime(2000, 1, 3, tzinfo=UTC)
            + ((old[0]["ts"] - datetime(2000, 1, 3, tzinfo=UTC)) // HOUR) * HOUR
        )
        stale = conn.execute(
            select(a.max_value).where(
                a.symbol == old[0]["symbol"], a.name == old[0]["name"], a.bucket == bucket
            )
        ).scalar_one()
    assert stale < max(
        r["value"] for r in replayed if r["ts"] >= bucket and r["ts"] < bucket + HOUR
    )
    # ... but the reads are not.
    _check_all(pair)
    pair.refresh()
    _check_all(pair)


def _transaction_cases() -> list[tuple[str, dict[str, Any]]]:
    return [
        ("get_signal_summary", {"provider": "p", "hours_back": 24 * 8}),
        ("get_signal_metrics", {"provider": "p", "symbol": "BTC", "signal_name": "price",
                                "hours_back": 24 * 8}),
        ("get_signal_buckets", {"provider": "p", "symbol": "BTC", "signal_name": "price",
                                "bucket": DAY, "start_ts": NOW - timedelta(days=8),
                                "end_ts": NOW}),
    ]  # fmt: skip


def _replays(pair: Pair) -> list[dict[str, Any]]:
    with pair.db.engine.connect() as conn:
        old = (
            conn.execute(
                select(pair.table)
                .where(
                    pair.table.c.ts.between(NOW - timedelta(days=6), NOW - timedelta(days=2)),
                    pair.table.c.symbol == "BTC",
                    pair.table.c.name == "price",
                )
                .limit(40)
            )
            .mappings()
            .all()
        )
    return [{**row, "value": row["value"] * 3 + 7} for row in old]


def test_reads_after_writes_in_the_same_transaction_see_the_writes(pair: Pair) -> None:
    """TimescaleDB logs a transaction's writes into materialized buckets only when it commits:
    a rollup read after a write in the same transaction (repositories in the caller's Session)
    is answered by the raw table, so it sees the uncommitted replay as the raw path does."""
    from sqlalchemy.orm import Session

    replayed = _replays(pair)
    with Session(pair.db.engine) as session, session.begin():
        for method, args in _transaction_cases():
            pair.statements.clear()
            getattr(SignalQueryRepository(session, pair.table), method)(**args)
            assert "signals_1h" in pair.statements[-1]  # nothing written yet: the rollups
        SignalRepository(session, pair.table).upsert(replayed)
        for method, args in _transaction_cases():
            raw = getattr(SignalQueryRepository(session, pair.raw), method)(**args)
            pair.statements.clear()
            rolled = getattr(SignalQueryRepository(session, pair.table), method)(**args)
            assert pair.used_rollup() and "signals_1h" not in pair.statements[-1], method
            _same(rolled, raw, method)
        session.rollback()
    # The replay moved the series' maximum: a read trusting the stale buckets would differ.
    with pair.db.engine.connect() as conn:
        metrics = SignalQueryRepository(conn, pair.raw).get_signal_metrics(
            "p", "BTC", "price", hours_back=24 * 8
        )
    assert len(replayed) == 40 and metrics["max_value"] < max(row["value"] for row in replayed)


def test_async_reads_after_writes_in_the_same_transaction_see_the_writes(pair: Pair) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from sa_signals import AsyncSignalQueryRepository, AsyncSignalRepository

    replayed = _replays(pair)

    async def run() -> None:
        engine = create_async_engine(pair.db.async_url)
        try:
            async with AsyncSession(engine) as session, session.begin():
                await AsyncSignalRepository(session, pair.table).upsert(replayed)
                for method, args in _transaction_cases():
                    raw = await getattr(AsyncSignalQueryRepository(session, pair.raw), method)(
                        **args
                    )
                    rolled = await getattr(AsyncSignalQueryRepository(session, pair.table), method)(
                        **args
                    )
                    _same(rolled, raw, method)
                await session.rollback()
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_the_query_clients_use_the_rollups(pair: Pair) -> None:
    with SignalsQueryClient(pair.db.url, table=pair.table) as client:
        rolled = client.get_signal_summary("p", hours_back=24 * 8)
        metrics = client.get_signal_metrics("p", "BTC", "price", hours_back=24 * 8)
    raw_summary, raw_metrics = (
        pair.both("get_signal_summary", "p", hours_back=24 * 8)[1],
        pair.both("get_signal_metrics", "p", "BTC", "price", hours_back=24 * 8)[1],
    )
    _same(rolled, raw_summary)
    _same(metrics, raw_metrics)

    async def read() -> tuple[Any, Any]:
        async with AsyncSignalsQueryClient(pair.db.async_url, table=pair.table) as client:
            summary = await client.get_signal_summary("p", hours_back=24 * 8)
            buckets = await client.get_signal_buckets("p", "ETH", "price", DAY, hours_back=24 * 8)
        return summary, buckets

    summary, buckets = asyncio.run(read())
    _same(summary, raw_summary)
    end = NOW  # the async call's own "now" differs; compare on the closed days only
    raw_buckets = pair.both("get_signal_buckets", "p", "ETH", "price", DAY, hours_back=24 * 8)[1]
    assert [b["bucket"] for b in buckets][1:-1] == [b["bucket"] for b in raw_buckets][1:-1]
    _same(buckets[1:-1], raw_buckets[1:-1])
    assert end


def test_the_horizon_is_the_windows_age_and_a_day_rounded_up_on_the_ladder() -> None:
    now = datetime.now(UTC)
    assert _horizon(now - timedelta(days=30)) == 32
    assert _horizon(now - timedelta(hours=24)) == 2
    assert _horizon(now - timedelta(days=7)) == 8
    assert _horizon(now - timedelta(days=7, hours=1)) == 32
    assert _horizon(now + timedelta(days=3)) == 2  # a window starting in the future
    assert _horizon(now - timedelta(days=2047)) == 2048
    assert _horizon(now - timedelta(days=2048)) is None
    assert _horizon(datetime.min.replace(tzinfo=UTC)) is None


@pytest.mark.parametrize("query", ["summary", "metrics", "buckets"])
def test_a_horizon_that_would_cut_the_window_falls_back_to_the_raw_table(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    """The signals-table reads are bounded by ``now() - horizon`` on the server's clock; where
    that bound lies inside the window (a server clock days ahead of the client's, simulated
    here by a negative margin: an 8-day window gets a 2-day horizon), the statement says so
    and the raw table answers: the answer is still the raw table's, never a truncated one."""
    monkeypatch.setattr(rollups, "_HORIZON_MARGIN_DAYS", -29)
    args: dict[str, Any]
    if query == "summary":
        method, args = "get_signal_summary", {"provider": "p", "hours_back": 24 * 8}
    elif query == "metrics":
        method = "get_signal_metrics"
        args = {"provider": "p", "symbol": "BTC", "signal_name": "price", "hours_back": 24 * 8}
    else:
        method = "get_signal_buckets"
        args = {
            "provider": "p", "symbol": "ETH", "signal_name": "price", "bucket": DAY,
            "start_ts": NOW - timedelta(days=8, minutes=41), "end_ts": NOW,
        }  # fmt: skip
    rolled, raw = pair.both(method, **args)
    # The rollup statement ran, said its bound cut the window, and the raw one answered.
    assert pair.used_rollup() and "signals_1h" not in pair.statements[-1]
    assert "now() - CAST('2 days' AS interval)" in "".join(pair.statements)
    _same(rolled, raw)
    assert (rolled["total_signals"] if query == "summary" else len(rolled)) > 0
    monkeypatch.undo()
    rolled, raw = pair.both(method, **args)
    assert "signals_1h" in pair.statements[-1]  # the real margin: the rollups answer
    assert "now() - CAST('8 days' AS interval)" not in pair.statements[-1]
    assert "now() - CAST('32 days' AS interval)" in pair.statements[-1]
    _same(rolled, raw)


def test_without_the_rollup_in_the_database_nothing_changes(native_timescale_db: Database) -> None:
    db = native_timescale_db
    table = signals_table(db.metadata, schema=db.schema, timescale=TimescaleOptions())
    db.metadata.create_all(db.engine)
    declared = signals_table(
        MetaData(), schema=db.schema, timescale=TimescaleOptions(rollups=(HOUR,))
    )
    with db.engine.begin() as conn:
        conn.execute(insert(table).values(_rows(NOW - DAY, NOW, timedelta(minutes=30), 3)))
    with db.engine.connect() as conn:
        got = SignalQueryRepository(conn, declared).get_signal_summary("p", hours_back=48)
    assert got["total_signals"] > 0


def test_rollups_created_or_dropped_later_are_seen(native_timescale_db: Database) -> None:
    """Which rollups exist is remembered per engine: one created after the first call is used
    from the next call; one dropped fails one call (named), then the raw table answers."""
    db = native_timescale_db
    plain = signals_table(MetaData(), schema=db.schema, timescale=None)
    declared = signals_table(
        MetaData(), schema=db.schema, timescale=TimescaleOptions(rollups=(HOUR,))
    )
    signals_table(db.metadata, schema=db.schema, timescale=TimescaleOptions())
    db.metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(insert(plain).values(_rows(NOW - 3 * DAY, NOW, timedelta(minutes=20), 6)))
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", listen)
    try:

        def read() -> tuple[Any, Any]:
            seen.clear()
            with db.engine.connect() as conn:
                rolled = SignalQueryRepository(conn, declared).get_signal_metrics(
                    "p", "BTC", "price", hours_back=48
                )
                raw = SignalQueryRepository(conn, plain).get_signal_metrics(
                    "p", "BTC", "price", hours_back=48
                )
            return rolled, raw

        rolled, raw = read()
        _same(rolled, raw)
        assert not any("signals_1h" in s for s in seen)
        hourly = get_rollups(declared)[0].aggregate
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            hourly.create(conn)
            hourly.refresh_now(conn)
        rolled, raw = read()
        _same(rolled, raw)
        assert any("signals_1h" in s for s in seen)
        rolled, raw = read()  # the existence is remembered: the catalog is not asked again
        assert sum("continuous_agg " in s for s in seen) == 1  # only the one statement's CTE
        _same(rolled, raw)
        with db.engine.begin() as conn:
            hourly.drop(conn)
        with pytest.raises(QueryError, match="signals_1h"):
            read()
        rolled, raw = read()
        _same(rolled, raw)
        assert not any("signals_1h" in s for s in seen)
    finally:
        event.remove(db.engine, "before_cursor_execute", listen)


def test_rollups_declared_on_sqlite_are_ignored(sqlite_db: Database) -> None:
    db = sqlite_db
    table = signals_table(db.metadata, timescale=TimescaleOptions(rollups=(HOUR,)))
    db.metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        conn.execute(insert(table).values(_rows(NOW - DAY, NOW, timedelta(minutes=30), 4)))
    with db.engine.connect() as conn:
        got = SignalQueryRepository(conn, table).get_signal_metrics("p", "BTC", "price", 48)
    assert got["signal_count"] > 0


def _state(
    width: timedelta, watermark: datetime, *invalid: tuple[datetime, datetime]
) -> RollupState:
    return RollupState(Rollup(width, None), watermark, tuple(invalid))  # type: ignore[arg-type]


def test_cover_takes_wide_buckets_first_and_leaves_edges_and_invalidations_to_the_table() -> None:
    t0 = datetime(2024, 3, 4, tzinfo=UTC)  # a midnight
    end = datetime.max.replace(tzinfo=UTC)
    daily = _state(DAY, t0 + 5 * DAY, (t0 + 2 * DAY, t0 + 3 * DAY))
    hourly = _state(HOUR, t0 + 5 * DAY + 6 * HOUR)
    levels, raw = cover([daily, hourly], t0 + 90 * timedelta(minutes=1), end)
    assert levels[0] == [(t0 + DAY, t0 + 2 * DAY), (t0 + 3 * DAY, t0 + 5 * DAY)]
    assert levels[1] == [
        (t0 + 2 * HOUR, t0 + DAY),
        (t0 + 2 * DAY, t0 + 3 * DAY),
        (t0 + 5 * DAY, t0 + 5 * DAY + 6 * HOUR),
    ]
    assert raw == [(t0 + 90 * timedelta(minutes=1), t0 + 2 * HOUR), (t0 + 5 * DAY + 6 * HOUR, end)]


def test_huge_and_tiny_values_roll_up_without_overflow(native_timescale_db: Database) -> None:
    pair = Pair(native_timescale_db, True)
    try:
        rng = random.Random(5)
        rows = []
        for i in range(300):
            ts = NOW - timedelta(days=3) + timedelta(minutes=13 * i)
            value = rng.choice([1e300, -1e300, 1.5e-300, 3.0, 2.0**470, 1e308])
            rows.append({"provider": "p", "symbol": "X", "ts": ts, "name": "v", "value": value,
                         "score": None, "metadata": None})  # fmt: skip
        pair.seed(rows)
        pair.refresh()  # PostgreSQL would raise on an overflowing sum: the refresh must pass
        rolled, raw = pair.both("get_signal_metrics", "p", "X", "v", hours_back=24 * 4)
        assert pair.used_rollup()
        _same(rolled, raw)
        rolled, raw = pair.both("get_signal_buckets", "p", "X", "v", 6 * HOUR, hours_back=24 * 4)
        _same(rolled, raw)
    finally:
        event.remove(pair.db.engine, "before_cursor_execute", pair._seen)


def _multirange(intervals: list[tuple[datetime, datetime]]) -> str:
    def bound(value: datetime) -> str:
        if value >= datetime.max.replace(tzinfo=UTC):
            return "infinity"
        return value.isoformat()

    return "{" + ",".join(f"[{bound(lo)},{bound(hi)})" for lo, hi in intervals) + "}"


def test_the_servers_cover_is_the_reference_cover(native_timescale_db: Database) -> None:
    """The SQL that splits a window among the levels (run by the server inside each rollup
    read) agrees with the Python reference :func:`cover`, on random watermarks, pending
    invalidations (open-ended ones too) and windows."""
    rng = random.Random(12)
    t0 = datetime(2024, 3, 4, tzinfo=UTC)
    end = datetime.max.replace(tzinfo=UTC)
    widths = [DAY, HOUR]
    sql = text(
        "WITH state AS (SELECT * FROM (VALUES "
        "('d', CAST(:mark_d AS timestamptz), CAST(:invalid_d AS tstzmultirange)), "
        "('h', CAST(:mark_h AS timestamptz), CAST(:invalid_h AS tstzmultirange))"
        ") AS s(view_name, mark, invalid)), "
        + cover_ctes(widths)
        + " SELECT c1.trusted = CAST(:t1 AS tstzmultirange), "
        "c2.trusted = CAST(:t2 AS tstzmultirange), c2.gaps = CAST(:raw AS tstzmultirange), "
        "CAST(c1.trusted AS text), CAST(c2.trusted AS text), CAST(c2.gaps AS text) FROM c2, c1"
    )
    with native_timescale_db.engine.connect() as conn:
        for case in range(60):
            marks = {k: t0 + timedelta(minutes=rng.randrange(0, 10 * 24 * 60)) for k in "dh"}
            invalid: dict[str, list[tuple[datetime, datetime]]] = {}
            for k in "dh":
                spans = []
                for _ in range(rng.randrange(0, 3)):
                    lo = t0 + timedelta(minutes=rng.randrange(0, 10 * 24 * 60))
                    hi = end if rng.random() < 0.2 else lo + timedelta(minutes=rng.randrange(90))
                    spans.append((lo, hi))
                invalid[k] = spans
            since = t0 + timedelta(minutes=rng.randrange(-600, 8 * 24 * 60), seconds=1.5)
            until = end if rng.random() < 0.5 else since + timedelta(hours=rng.randrange(1, 120))
            states = []
            for k, width in zip("dh", widths, strict=True):
                aligned = []
                for lo, hi in invalid[k]:
                    top = end if hi >= end else _floor(hi, width) + width
                    aligned.append((_floor(lo, width), top))
                states.append(_state(width, _floor(marks[k], width), *aligned))
            levels, raw = cover(states, since, until)
            params = {
                "mark_d": marks["d"], "mark_h": marks["h"],
                # The server's invalid ranges are the logged [lowest, greatest] values.
                "invalid_d": "{" + ",".join(
                    f"[{lo.isoformat()},{'infinity' if hi >= end else hi.isoformat()}]"
                    for lo, hi in invalid["d"]) + "}",
                "invalid_h": "{" + ",".join(
                    f"[{lo.isoformat()},{'infinity' if hi >= end else hi.isoformat()}]"
                    for lo, hi in invalid["h"]) + "}",
                "since": since, "until": None if until >= end else until,
                "rollup_1": "d", "rollup_2": "h",
                "t1": _multirange(levels[0]), "t2": _multirange(levels[1]),
                "raw": _multirange(raw),
            }  # fmt: skip
            row = conn.execute(sql, params).one()
            assert row[:3] == (True, True, True), (case, params, row[3:])


def _floor(instant: datetime, width: timedelta) -> datetime:
    origin = datetime(2000, 1, 3, tzinfo=UTC)
    return origin + ((instant - origin) // width) * width
