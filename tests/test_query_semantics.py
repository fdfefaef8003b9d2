"""The spec's read queries on every tier: same cases, same answers on SQLite, PG and TimescaleDB.

Rows are inserted with plain SQLAlchemy Core inserts; the queries run through the sync client
(``SignalsQueryClient``) and the answers are compared with values computed in Python.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.pool import NullPool

from sa_signals import AsyncSignalsQueryClient, InvalidQueryError
from sa_signals.read.query_client import SignalsQueryClient

from .conftest import Database

UTC = timezone.utc


def client_for(db: Database) -> SignalsQueryClient:
    """A sync client on the test's database; TimescaleDB-in-WASM takes one connection at a time."""
    options: dict[str, Any] = {"poolclass": NullPool} if db.tier == "timescale" else {}
    return SignalsQueryClient(db.url, table=db.table, **options)


def signal(
    ts: datetime,
    name: str = "vwap_cross_up",
    value: float = 1.0,
    *,
    provider: str = "ibkr_primary",
    symbol: str = "SPY",
    score: float | None = 0.5,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "provider": provider,
        "symbol": symbol,
        "ts": ts,
        "name": name,
        "value": value,
        "score": score,
        "metadata": metadata,
    }


def seed(db: Database, rows: list[dict[str, Any]]) -> None:
    # Multi-row INSERT ... VALUES: the TimescaleDB tier (PGlite) rejects psycopg's pipelined
    # executemany. The table is created first: that tier serves one connection at a time.
    table = db.table
    with db.engine.begin() as conn:
        for start in range(0, len(rows), 200):
            conn.execute(insert(table).values(rows[start : start + 200]))


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=123456)


# ---------------------------------------------------------------- latest


def test_latest_newest_first_then_by_name(db: Database, now: datetime) -> None:
    seed(
        db,
        [
            signal(now - timedelta(seconds=30), "b", 1.0),
            signal(now - timedelta(seconds=10), "z", 2.0),
            signal(now - timedelta(seconds=10), "a", 3.0),
            signal(now - timedelta(seconds=20), "a", 4.0),
            signal(now, "a", 5.0, symbol="QQQ"),
            signal(now, "a", 6.0, provider="other"),
        ],
    )
    with client_for(db) as client:
        rows = client.get_latest_signals("ibkr_primary", "SPY")
    assert [(r["ts"], r["name"], r["value"]) for r in rows] == [
        (now - timedelta(seconds=10), "a", 3.0),
        (now - timedelta(seconds=10), "z", 2.0),
        (now - timedelta(seconds=20), "a", 4.0),
        (now - timedelta(seconds=30), "b", 1.0),
    ]


def test_latest_row_shape_types_and_utc(db: Database, now: datetime) -> None:
    seed(db, [signal(now, "vwap", 425.15, score=0.85, metadata={"window": "1m", "n": [1, 2]})])
    with client_for(db) as client:
        (row,) = client.get_latest_signals("ibkr_primary", "SPY")
    assert list(row) == [
        "provider",
        "symbol",
        "ts",
        "name",
        "value",
        "score",
        "metadata",
        "created_at",
    ]
    assert row["provider"] == "ibkr_primary" and row["symbol"] == "SPY" and row["name"] == "vwap"
    assert row["value"] == 425.15 and row["score"] == 0.85
    assert row["metadata"] == {"window": "1m", "n": [1, 2]}
    assert row["ts"] == now and row["ts"].tzinfo is UTC
    assert row["created_at"].tzinfo is UTC
    assert abs(row["created_at"] - datetime.now(UTC)) < timedelta(minutes=5)


def test_latest_limit_symbol_case_and_names(db: Database, now: datetime) -> None:
    seed(db, [signal(now - timedelta(seconds=i), f"n{i % 3}", float(i)) for i in range(12)])
    with client_for(db) as client:
        assert [r["value"] for r in client.get_latest_signals("ibkr_primary", "spy", limit=3)] == [
            0.0,
            1.0,
            2.0,
        ]
        named = client.get_latest_signals("ibkr_primary", "Spy", signal_names=["n1", "n2"])
        assert {r["name"] for r in named} == {"n1", "n2"} and len(named) == 8
        assert (
            client.get_latest_signals("ibkr_primary", "SPY", signal_names=("n0",), limit=2)[0][
                "value"
            ]
            == 0.0
        )
        assert client.get_latest_signals("ibkr_primary", "SPY", signal_names=["nope"]) == []
        assert client.get_latest_signals("nobody", "SPY") == []


def test_empty_signal_names_returns_nothing_without_a_query(db: Database, now: datetime) -> None:
    seed(db, [signal(now)])
    statements: list[str] = []
    with client_for(db) as client:
        event.listen(
            client.engine,
            "before_cursor_execute",
            lambda conn, cursor, stmt, *rest: statements.append(stmt),
        )
        assert client.get_latest_signals("ibkr_primary", "SPY", signal_names=[]) == []
        assert (
            client.get_signals_history(
                "ibkr_primary", "SPY", now - timedelta(hours=1), signal_names=[]
            )
            == []
        )
        assert statements == []
        assert len(client.get_latest_signals("ibkr_primary", "SPY")) == 1
        assert len(statements) == 1


# ---------------------------------------------------------------- history


def test_history_inclusive_range(db: Database, now: datetime) -> None:
    start, end = now - timedelta(minutes=10), now - timedelta(minutes=5)
    seed(
        db,
        [
            signal(start - timedelta(microseconds=1), value=1.0),
            signal(start, value=2.0),
            signal(start + timedelta(minutes=2), value=3.0),
            signal(end, value=4.0),
            signal(end + timedelta(microseconds=1), value=5.0),
        ],
    )
    with client_for(db) as client:
        rows = client.get_signals_history("ibkr_primary", "spy", start_ts=start, end_ts=end)
        assert [r["value"] for r in rows] == [4.0, 3.0, 2.0]
        assert [
            r["value"]
            for r in client.get_signals_history("ibkr_primary", "SPY", start, end, limit=2)
        ] == [4.0, 3.0]


def test_history_end_none_means_now(db: Database, now: datetime) -> None:
    real_now = datetime.now(UTC)
    seed(
        db,
        [
            signal(real_now - timedelta(seconds=5), "a", 1.0),
            signal(real_now - timedelta(seconds=5), "b", 2.0),
            signal(real_now + timedelta(minutes=10), "a", 3.0),
        ],
    )
    with client_for(db) as client:
        rows = client.get_signals_history("ibkr_primary", "SPY", real_now - timedelta(hours=1))
        assert [(r["name"], r["value"]) for r in rows] == [("a", 1.0), ("b", 2.0)]
        only_b = client.get_signals_history(
            "ibkr_primary", "SPY", real_now - timedelta(hours=1), signal_names=["b"]
        )
        assert [r["value"] for r in only_b] == [2.0]


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """Make the process's local time UTC-5/-4, so naive-as-local differs from naive-as-UTC."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


@pytest.mark.usefixtures("new_york_local_time")
def test_naive_datetimes_are_local_time_as_in_the_spec(db: Database) -> None:
    real_now = datetime.now(UTC)
    seed(
        db,
        [
            signal(real_now - timedelta(minutes=30), value=1.0),
            signal(real_now - timedelta(hours=2), value=2.0),
        ],
    )
    with client_for(db) as client:
        # The spec's own call: naive local datetimes meaning "the last hour".
        rows = client.get_signals_history(
            "ibkr_primary",
            "SPY",
            start_ts=datetime.now() - timedelta(hours=1),
            end_ts=datetime.now(),
        )
    assert [r["value"] for r in rows] == [1.0]


# ---------------------------------------------------------------- metrics


def test_metrics_of_a_series_in_the_window(db: Database, now: datetime) -> None:
    values = [3.5, -1.25, 10.0, 7.75, 0.5]
    rows = [signal(now - timedelta(minutes=10 * i), "mom", v) for i, v in enumerate(values)]
    rows += [
        signal(now - timedelta(hours=30), "mom", 1000.0),  # outside 24 h
        signal(now, "other", 99.0),
        signal(now, "mom", 55.0, symbol="QQQ"),
    ]
    seed(db, rows)
    with client_for(db) as client:
        metrics = client.get_signal_metrics("ibkr_primary", "spy", "mom")
        assert list(metrics) == [
            "signal_count",
            "min_value",
            "max_value",
            "avg_value",
            "latest_ts",
            "earliest_ts",
            "latest_value",
            "stddev_value",
        ]
        assert metrics["signal_count"] == 5
        assert metrics["min_value"] == -1.25 and metrics["max_value"] == 10.0
        assert metrics["avg_value"] == pytest.approx(statistics.mean(values))
        assert metrics["latest_ts"] == now and metrics["latest_ts"].tzinfo is UTC
        assert metrics["earliest_ts"] == now - timedelta(minutes=40)
        assert metrics["latest_value"] == 3.5
        assert metrics["stddev_value"] == pytest.approx(statistics.stdev(values), rel=1e-12)
        wider = client.get_signal_metrics("ibkr_primary", "SPY", "mom", hours_back=48)
        assert wider["signal_count"] == 6 and wider["max_value"] == 1000.0
        assert client.get_signal_metrics("ibkr_primary", "SPY", "mom", 0.4)["signal_count"] == 3


def test_metrics_stddev_is_stable_for_large_close_values(db: Database, now: datetime) -> None:
    values = [1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.3, 1e9 + 0.4]
    seed(db, [signal(now - timedelta(minutes=i), "px", v) for i, v in enumerate(values)])
    with client_for(db) as client:
        metrics = client.get_signal_metrics("ibkr_primary", "SPY", "px")
    # A naive sum-of-squares formula would be off by orders of magnitude here.
    assert metrics["stddev_value"] == pytest.approx(statistics.stdev(values), rel=1e-5)


def test_metrics_empty_and_single_row(db: Database, now: datetime) -> None:
    seed(db, [signal(now, "one", 4.0)])
    with client_for(db) as client:
        assert client.get_signal_metrics("ibkr_primary", "SPY", "none") == {
            "signal_count": 0,
            "min_value": None,
            "max_value": None,
            "avg_value": None,
            "latest_ts": None,
            "earliest_ts": None,
            "latest_value": None,
            "stddev_value": None,
        }
        single = client.get_signal_metrics("ibkr_primary", "SPY", "one")
    assert single["signal_count"] == 1 and single["latest_value"] == 4.0
    assert single["stddev_value"] is None


# ---------------------------------------------------------------- active


def test_active_latest_per_symbol_and_name_in_window(db: Database) -> None:
    real_now = datetime.now(UTC)
    seed(
        db,
        [
            signal(real_now - timedelta(minutes=1), "a", 1.0, metadata={"k": 1}),
            signal(real_now - timedelta(minutes=2), "a", 2.0),
            signal(real_now - timedelta(minutes=3), "b", 3.0, score=None),
            signal(real_now - timedelta(minutes=10), "c", 4.0),  # outside 5 min
            signal(real_now - timedelta(minutes=4), "a", 5.0, symbol="AAPL"),
            signal(real_now - timedelta(minutes=1), "a", 6.0, provider="other"),
        ],
    )
    with client_for(db) as client:
        active = client.get_active_signals("ibkr_primary")
        assert [list(row) for row in active[:1]] == [
            ["symbol", "name", "value", "score", "ts", "metadata"]
        ]
        assert [(r["symbol"], r["name"], r["value"], r["score"]) for r in active] == [
            ("AAPL", "a", 5.0, 0.5),
            ("SPY", "a", 1.0, 0.5),
            ("SPY", "b", 3.0, None),
        ]
        assert active[1]["ts"] == real_now - timedelta(minutes=1) and active[1]["ts"].tzinfo is UTC
        assert active[1]["metadata"] == {"k": 1}
        assert len(client.get_active_signals("ibkr_primary", minutes_back=15)) == 4
        assert len(client.get_active_signals("ibkr_primary", minutes_back=1.5)) == 1


# ---------------------------------------------------------------- summary


def test_summary_counts_in_window(db: Database, now: datetime) -> None:
    seed(
        db,
        [
            signal(now - timedelta(hours=1), "a", symbol="SPY"),
            signal(now - timedelta(hours=2), "b", symbol="SPY"),
            signal(now - timedelta(hours=3), "a", symbol="QQQ"),
            signal(now - timedelta(hours=30), "c", symbol="IWM"),
            signal(now, "d", provider="other"),
        ],
    )
    with client_for(db) as client:
        assert client.get_signal_summary("ibkr_primary") == {
            "total_signals": 3,
            "unique_symbols": 2,
            "unique_signal_types": 2,
            "latest_signal_ts": now - timedelta(hours=1),
            "earliest_signal_ts": now - timedelta(hours=3),
        }
        assert client.get_signal_summary("ibkr_primary", hours_back=48)["unique_symbols"] == 3
        empty = client.get_signal_summary("nobody")
    assert empty == {
        "total_signals": 0,
        "unique_symbols": 0,
        "unique_signal_types": 0,
        "latest_signal_ts": None,
        "earliest_signal_ts": None,
    }


# ---------------------------------------------------------------- buckets


def expected_buckets(
    points: list[tuple[datetime, float]], width: timedelta, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    origin = datetime(2000, 1, 3, tzinfo=UTC)
    groups: dict[datetime, list[tuple[datetime, float]]] = {}
    for ts, value in points:
        if start <= ts <= end:
            groups.setdefault(origin + ((ts - origin) // width) * width, []).append((ts, value))
    out = []
    for bucket in sorted(groups):
        values = [v for _, v in groups[bucket]]
        out.append(
            {
                "bucket": bucket,
                "signal_count": len(values),
                "min_value": min(values),
                "max_value": max(values),
                "avg_value": pytest.approx(statistics.mean(values)),
                "last_value": max(groups[bucket])[1],
            }
        )
    return out


@pytest.mark.parametrize("width", [timedelta(minutes=1), timedelta(seconds=90), timedelta(days=7)])
def test_buckets_match_python_on_every_tier(db: Database, width: timedelta) -> None:
    base = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    offsets = [0, 1, 59_999_999, 60_000_000, 61_500_000, 89_999_999, 90_000_000, 200_000_001]
    points = [
        (base + timedelta(microseconds=us), float(i) * 1.5 - 2) for i, us in enumerate(offsets)
    ]
    points.append((base - timedelta(days=3, microseconds=1), 42.0))
    seed(db, [signal(ts, "px", v) for ts, v in points] + [signal(base, "other", 7.0)])
    start, end = base - timedelta(days=4), base + timedelta(microseconds=90_000_000)
    with client_for(db) as client:
        got = client.get_signal_buckets(
            "ibkr_primary", "spy", "px", width, start_ts=start, end_ts=end
        )
    assert got == expected_buckets(points, width, start, end)
    assert all(row["bucket"].tzinfo is UTC for row in got)


def test_buckets_default_window_is_last_24_hours(db: Database) -> None:
    real_now = datetime.now(UTC)
    seed(
        db,
        [
            signal(real_now - timedelta(minutes=5), "px", 1.0),
            signal(real_now - timedelta(hours=25), "px", 2.0),
        ],
    )
    with client_for(db) as client:
        got = client.get_signal_buckets("ibkr_primary", "SPY", "px", timedelta(hours=1))
    assert [row["last_value"] for row in got] == [1.0]


def test_bucket_windows_count_back_from_the_end(db: Database) -> None:
    real_now = datetime.now(UTC)
    ago = {"10m": 10, "50m": 50, "3h": 180, "30h": 1800}
    seed(db, [signal(real_now - timedelta(minutes=m), "px", float(m)) for m in ago.values()])
    day = timedelta(days=1)

    def total(rows: list[Any]) -> float:
        return sum(row["signal_count"] for row in rows)

    with client_for(db) as client:
        assert total(client.get_signal_buckets("ibkr_primary", "SPY", "px", day)) == 3
        assert total(client.get_signal_buckets("ibkr_primary", "SPY", "px", day, hours_back=2)) == 2
        assert (
            total(client.get_signal_buckets("ibkr_primary", "SPY", "px", day, hours_back=48)) == 4
        )
        assert (
            total(client.get_signal_buckets("ibkr_primary", "SPY", "px", day, minutes_back=30)) == 1
        )
        earlier = client.get_signal_buckets(
            "ibkr_primary", "SPY", "px", day, hours_back=3.5, end_ts=real_now - timedelta(hours=1)
        )
        assert [row["last_value"] for row in earlier] == [180.0]


async def test_async_bucket_windows(db: Database) -> None:
    real_now = datetime.now(UTC)
    seed(db, [signal(real_now - timedelta(minutes=m), "px", float(m)) for m in (5, 40, 200)])
    options: dict[str, Any] = {"poolclass": NullPool} if db.tier == "timescale" else {}
    async with AsyncSignalsQueryClient(db.async_url, table=db.table, **options) as client:
        rows = await client.get_signal_buckets(
            "ibkr_primary", "SPY", "px", timedelta(days=1), minutes_back=60
        )
    assert sum(row["signal_count"] for row in rows) == 2


@pytest.mark.parametrize(
    "window",
    [
        {"hours_back": 1, "minutes_back": 30},
        {"hours_back": 1, "start_ts": datetime(2026, 1, 1, tzinfo=UTC)},
        {"minutes_back": 5, "start_ts": datetime(2026, 1, 1, tzinfo=UTC)},
        {"hours_back": 0},
        {"hours_back": -2},
        {"minutes_back": math.nan},
        {"hours_back": True},
        {"minutes_back": "5"},
        {"hours_back": 1e30},
    ],
)
def test_invalid_bucket_windows(sqlite_db: Database, window: dict[str, Any]) -> None:
    with client_for(sqlite_db) as client, pytest.raises(InvalidQueryError):
        client.get_signal_buckets("p", "SPY", "n", timedelta(minutes=1), **window)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("get_latest_signals", {"limit": 0}),
        ("get_latest_signals", {"limit": -5}),
        ("get_latest_signals", {"limit": True}),
        ("get_latest_signals", {"limit": 2.5}),
        ("get_latest_signals", {"limit": "10"}),
        ("get_latest_signals", {"signal_names": "vwap"}),
        ("get_latest_signals", {"signal_names": [""]}),
        ("get_latest_signals", {"symbol": ""}),
        ("get_latest_signals", {"provider": None}),
        ("get_signals_history", {"start_ts": "2024-01-01"}),
        ("get_signals_history", {"start_ts": None}),
        ("get_signals_history", {"limit": 0}),
        ("get_signal_metrics", {"hours_back": 0}),
        ("get_signal_metrics", {"hours_back": -1}),
        ("get_signal_metrics", {"hours_back": True}),
        ("get_signal_metrics", {"hours_back": "24"}),
        ("get_signal_metrics", {"hours_back": math.nan}),
        ("get_signal_metrics", {"hours_back": math.inf}),
        ("get_signal_metrics", {"hours_back": 1e30}),
        ("get_active_signals", {"minutes_back": 0}),
        ("get_active_signals", {"minutes_back": False}),
        ("get_active_signals", {"minutes_back": None}),
        ("get_signal_summary", {"hours_back": -0.5}),
        ("get_signal_buckets", {"bucket": timedelta(0)}),
        ("get_signal_buckets", {"bucket": 60}),
        ("get_latest_signals", {"limit": 2**31}),
        ("get_latest_signals", {"signal_names": ["ok", 3]}),
        ("get_signal_summary", {"provider": "a\x00"}),
    ],
)
def test_invalid_arguments_raise_invalid_query_error(
    sqlite_db: Database, call: str, args: dict[str, Any]
) -> None:
    defaults: dict[str, dict[str, Any]] = {
        "get_latest_signals": {"provider": "p", "symbol": "SPY"},
        "get_signals_history": {
            "provider": "p",
            "symbol": "SPY",
            "start_ts": datetime.now(UTC),
        },
        "get_signal_metrics": {"provider": "p", "symbol": "SPY", "signal_name": "n"},
        "get_active_signals": {"provider": "p"},
        "get_signal_summary": {"provider": "p"},
        "get_signal_buckets": {"provider": "p", "symbol": "SPY", "signal_name": "n"},
    }
    with client_for(sqlite_db) as client, pytest.raises(InvalidQueryError):
        getattr(client, call)(**{**defaults[call], **args})


def test_huge_windows_mean_everything(db: Database, now: datetime) -> None:
    seed(db, [signal(datetime(1990, 1, 1, tzinfo=UTC), "old", 1.0), signal(now, "old", 2.0)])
    with client_for(db) as client:
        assert client.get_signal_metrics("ibkr_primary", "SPY", "old", 10**7)["signal_count"] == 2
        assert client.get_signal_summary("ibkr_primary", 10**7)["total_signals"] == 2
