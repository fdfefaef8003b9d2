"""Continuous aggregates declared on a host MetaData: created, refreshed, queried and dropped.

On the native TimescaleDB server policies run in the background; tests that need quiet pause
their aggregate's jobs in the transaction that creates them, and run a policy on demand with
``CALL run_job(...)``.
"""

from __future__ import annotations

import logging
import math
import random
import statistics
import threading
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, MetaData, func, insert, literal_column, select, text
from sqlalchemy.exc import DBAPIError

from sa_signals import ConfigurationError, TimescaleOptions, signals_table
from sa_signals.schema.aggregates import (
    ContinuousAggregate,
    RefreshPolicy,
    combine_moments,
    get_continuous_aggregates,
    get_rollups,
    read_continuous_aggregate,
    signals_rollup,
)
from sa_signals.schema.functions import DEFAULT_ORIGIN, last, time_bucket

from .conftest import Database, _database, _params

UTC = timezone.utc
HOUR = timedelta(hours=1)


def _seed(db: Database, rows: list[dict[str, Any]]) -> None:
    table = db.table
    with db.engine.begin() as conn:
        for start in range(0, len(rows), 200):
            conn.execute(insert(table).values(rows[start : start + 200]))


def _row(ts: datetime, value: float, *, symbol: str = "SPY", name: str = "x") -> dict[str, Any]:
    return {
        "provider": "p",
        "symbol": symbol,
        "ts": ts,
        "name": name,
        "value": value,
        "score": None,
        "metadata": None,
    }


def _pause_jobs(conn: Connection, aggregate: ContinuousAggregate) -> None:
    conn.execute(
        text(
            "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
            "WHERE hypertable_schema = :schema AND hypertable_name = :name"
        ),
        {"schema": aggregate.schema, "name": aggregate.name},
    )


def _create(db: Database, *aggregates: ContinuousAggregate) -> None:
    """create_all, with the aggregates' jobs paused before anyone else can see them."""
    with db.engine.begin() as conn:
        db.metadata.create_all(conn)
        for aggregate in aggregates:
            _pause_jobs(conn, aggregate)


def _refresh(db: Database, aggregate: ContinuousAggregate) -> None:
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        aggregate.refresh_now(conn)


def _signals(db: Database) -> Any:
    """The test's signals table (hypertable), declared but not created yet."""
    db._table = db.make_table()
    return db._table


def _hourly_max(db: Database, **options: Any) -> ContinuousAggregate:
    c = _signals(db).c
    bucket = time_bucket(HOUR, c.ts).label("bucket")
    return ContinuousAggregate(
        "hourly_max",
        db.metadata,
        select(
            c.symbol, bucket, func.max(c.value).label("high"), last(c.value, c.ts).label("close")
        ).group_by(c.symbol, bucket),
        schema=db.schema,
        **options,
    )


def _relations(db: Database) -> set[str]:
    rows = db.sql(
        "SELECT relname FROM pg_class WHERE relnamespace = CAST(:schema AS regnamespace) "
        "AND relkind IN ('r', 'v', 'm')",
        schema=db.schema,
    )
    return {str(row[0]) for row in rows}


BASE = datetime(2024, 3, 4, tzinfo=UTC)


def test_create_all_creates_the_aggregate_with_its_policies(timescale_db: Database) -> None:
    db = timescale_db
    refresh = RefreshPolicy(
        start_offset=timedelta(days=10), end_offset=HOUR, schedule_interval=timedelta(minutes=30)
    )
    aggregate = _hourly_max(
        db,
        materialized_only=False,
        refresh=refresh,
        compress_after=timedelta(days=20),
        drop_after=timedelta(days=400),
    )
    _create(db, aggregate)
    with db.engine.connect() as conn:
        state = read_continuous_aggregate(conn, "hourly_max", db.schema)
    assert state is not None
    assert (state.source_schema, state.source_name) == (db.schema, "signals")
    assert state.materialized_only is False
    assert state.compression is True
    assert state.refresh == refresh
    assert state.compress_after == timedelta(days=20)
    assert state.drop_after == timedelta(days=400)
    assert "time_bucket" in state.definition


def test_aggregate_rows_equal_the_raw_computation(timescale_db: Database) -> None:
    db = timescale_db
    aggregate = _hourly_max(db)
    _create(db, aggregate)
    rng = random.Random(5)
    rows = [
        _row(BASE + timedelta(minutes=rng.randrange(600), microseconds=i), rng.random(), symbol=s)
        for i, s in enumerate(["A", "B"] * 60)
    ]
    unique = {(r["symbol"], r["ts"]): r for r in rows}
    _seed(db, list(unique.values()))
    _refresh(db, aggregate)
    expected: dict[tuple[str, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for (symbol, ts), row in unique.items():
        bucket = DEFAULT_ORIGIN + ((ts - DEFAULT_ORIGIN) // HOUR) * HOUR
        expected[(symbol, bucket)].append((ts, row["value"]))
    a = aggregate.c
    with db.engine.connect() as conn:
        got = conn.execute(select(a.symbol, a.bucket, a.high, a.close).order_by(a.symbol, a.bucket))
        assert [tuple(r) for r in got] == [
            (symbol, bucket, max(v for _, v in points), max(points)[1])
            for (symbol, bucket), points in sorted(expected.items())
        ]


def test_drop_all_drops_aggregates_before_their_tables(timescale_db: Database) -> None:
    db = timescale_db
    hourly = _hourly_max(db)
    daily_bucket = time_bucket(timedelta(days=1), hourly.c.bucket).label("day")
    daily = ContinuousAggregate(
        "daily_max",
        db.metadata,
        select(hourly.c.symbol, daily_bucket, func.max(hourly.c.high).label("high")).group_by(
            hourly.c.symbol, daily_bucket
        ),
        schema=db.schema,
    )
    assert get_continuous_aggregates(db.metadata) == (hourly, daily)
    assert daily.depends_on == (hourly,)
    _create(db, hourly, daily)
    _seed(db, [_row(BASE + timedelta(hours=h), float(h)) for h in range(50)])
    _refresh(db, hourly)
    _refresh(db, daily)
    with db.engine.connect() as conn:
        days = conn.execute(select(daily.c.day, daily.c.high).order_by(daily.c.day)).all()
    assert [tuple(r) for r in days] == [
        (BASE, 23.0),
        (BASE + timedelta(days=1), 47.0),
        (BASE + timedelta(days=2), 49.0),
    ]
    assert {"signals", "hourly_max", "daily_max"} <= _relations(db)
    db.metadata.drop_all(db.engine)
    assert _relations(db) == set()
    db.metadata.drop_all(db.engine)  # nothing left: still fine


def test_create_all_twice_keeps_one_aggregate(timescale_db: Database) -> None:
    db = timescale_db
    aggregate = _hourly_max(db, refresh=RefreshPolicy(timedelta(days=3), HOUR, HOUR))
    _create(db, aggregate)
    db.metadata.create_all(db.engine)
    with db.engine.begin() as conn:
        assert aggregate.create(conn) is False
        jobs = conn.execute(
            text(
                "SELECT count(*) FROM timescaledb_information.jobs "
                "WHERE hypertable_schema = :s AND hypertable_name = 'hourly_max'"
            ),
            {"s": db.schema},
        ).scalar_one()
    assert jobs == 1


@pytest.fixture(params=_params("sqlite", "postgres"))
def plain_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """SQLite and PostgreSQL without the timescaledb extension."""
    yield from _database(request, request.param)


def test_without_timescaledb_aggregates_are_skipped_with_one_warning(
    plain_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    db = plain_db
    table = signals_table(
        db.metadata,
        schema=db.schema,
        timescale=TimescaleOptions(rollups=(HOUR, timedelta(days=1))),
    )
    with caplog.at_level(logging.WARNING, logger="sa_signals.ddl"):
        db.metadata.create_all(db.engine)
    messages = [r.getMessage() for r in caplog.records if "continuous aggregates" in r.getMessage()]
    assert len(messages) == 1
    assert "signals_1h" in messages[0] and "signals_1d" in messages[0]
    with db.engine.begin() as conn:
        conn.execute(insert(table).values([_row(BASE, 1.0)]))
    db.metadata.drop_all(db.engine)
    if db.is_postgres:
        assert _relations(db) == set()


def test_string_constants_are_written_into_the_definition_safely(timescale_db: Database) -> None:
    db = timescale_db
    c = _signals(db).c
    tricky = "it's 100% \\ odd"
    bucket = time_bucket(HOUR, c.ts).label("bucket")
    aggregate = ContinuousAggregate(
        "tricky",
        db.metadata,
        select(c.symbol, bucket, func.count().label("n"))
        .where(c.name == tricky, c.value > -1.5)
        .group_by(c.symbol, bucket),
        schema=db.schema,
    )
    _create(db, aggregate)
    _seed(
        db,
        [
            _row(BASE, 1.0, name=tricky),
            _row(BASE, 1.0, name="other"),
            _row(BASE, -2.0, name=tricky, symbol="Q"),
        ],
    )
    _refresh(db, aggregate)
    with db.engine.connect() as conn:
        rows = conn.execute(select(aggregate.c.symbol, aggregate.c.n)).all()
        state = read_continuous_aggregate(conn, "tricky", db.schema)
    assert [tuple(r) for r in rows] == [("SPY", 1)]
    assert state is not None and "it''s 100% \\ odd" in state.definition


def test_definitions_that_cannot_be_written_inline_are_rejected() -> None:
    metadata = MetaData()
    table = signals_table(metadata, timescale=TimescaleOptions())
    c = table.c
    bucket = time_bucket(HOUR, c.ts).label("bucket")

    def declare(definition: Any, name: str = "agg") -> ContinuousAggregate:
        return ContinuousAggregate(name, metadata, definition)

    with pytest.raises(ConfigurationError, match="cannot be written inline"):
        declare(
            select(bucket, func.count().label("n")).where(c.metadata == {"a": 1}).group_by(bucket)
        )
    with pytest.raises(ConfigurationError, match="text"):
        declare(select(bucket, func.count().label("n")).where(text("value > 1")).group_by(bucket))
    with pytest.raises(ConfigurationError, match="non-finite"):
        declare(select(bucket, func.count().label("n")).where(c.value < math.inf).group_by(bucket))
    with pytest.raises(ConfigurationError, match="needs a name"):
        declare(select(bucket, func.count()).group_by(bucket))
    with pytest.raises(ConfigurationError, match="duplicate"):
        declare(select(bucket, func.count().label("bucket")).group_by(bucket))
    declare(select(bucket, func.count().label("n")).group_by(bucket))
    with pytest.raises(ConfigurationError, match="already defined"):
        declare(select(bucket, func.count().label("n")).group_by(bucket))
    with pytest.raises(ConfigurationError, match="already defined"):
        declare(select(bucket, func.count().label("n")).group_by(bucket), name="signals")
    # Trusted SQL stays possible, spelled out as such.
    declare(select(bucket, literal_column("count(*)").label("n")).group_by(bucket), name="trusted")


def test_real_time_aggregation_includes_rows_not_yet_materialized(timescale_db: Database) -> None:
    db = timescale_db
    live = _hourly_max(db, materialized_only=False)
    c = db.table.c
    bucket = time_bucket(HOUR, c.ts).label("bucket")
    stored = ContinuousAggregate(
        "hourly_max_materialized",
        db.metadata,
        select(c.symbol, bucket, func.max(c.value).label("high")).group_by(c.symbol, bucket),
        schema=db.schema,
    )
    _create(db, live, stored)
    _seed(db, [_row(BASE, 1.0)])
    _refresh(db, live)
    _refresh(db, stored)
    _seed(db, [_row(BASE + timedelta(days=1), 2.0)])  # after the refresh
    with db.engine.connect() as conn:
        assert conn.execute(select(live.c.high).order_by(live.c.bucket)).scalars().all() == [
            1.0,
            2.0,
        ]
        assert conn.execute(select(stored.c.high)).scalars().all() == [1.0]


def _job(conn: Connection, aggregate: ContinuousAggregate, proc: str) -> int:
    job_id: int = conn.execute(
        text(
            "SELECT job_id FROM timescaledb_information.jobs WHERE hypertable_schema = :s "
            "AND hypertable_name = :n AND proc_name = :p"
        ),
        {"s": aggregate.schema, "n": aggregate.name, "p": proc},
    ).scalar_one()
    return job_id


def test_policies_refresh_and_compress_the_aggregate(timescale_db: Database) -> None:
    db = timescale_db
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    aggregate = _hourly_max(
        db,
        refresh=RefreshPolicy(timedelta(days=200), HOUR, timedelta(hours=12)),
        compress_after=timedelta(days=300),
    )
    _create(db, aggregate)
    # Old rows (to be compressed) and recent ones, inside the refresh window.
    old = [_row(now - timedelta(days=420, hours=h), float(h)) for h in range(5)]
    recent = [_row(now - timedelta(days=2, hours=h), float(h)) for h in range(5)]
    _seed(db, old + recent)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text("CALL run_job(:id)"),
            {"id": _job(conn, aggregate, "policy_refresh_continuous_aggregate")},
        )
        # The old rows lie before the policy's window: materialize them by hand, then let the
        # compression policy compress their chunk.
        aggregate.refresh_now(conn, None, now - timedelta(days=250))
        conn.execute(text("CALL run_job(:id)"), {"id": _job(conn, aggregate, "policy_compression")})
        compressed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE is_compressed), count(*) "
                "FROM timescaledb_information.chunks c "
                "JOIN timescaledb_information.continuous_aggregates a "
                "ON c.hypertable_schema = a.materialization_hypertable_schema "
                "AND c.hypertable_name = a.materialization_hypertable_name "
                "WHERE a.view_schema = :s AND a.view_name = 'hourly_max'"
            ),
            {"s": db.schema},
        ).one()
        count = conn.execute(select(func.count()).select_from(aggregate.table)).scalar_one()
    assert count == 10
    assert compressed[0] >= 1 and compressed[1] >= 2
    # Dropping works with materialized and compressed data present.
    db.metadata.drop_all(db.engine)
    assert _relations(db) == set()


# ------------------------------------------------------------------------------- the rollup


def test_rollup_options_declare_one_aggregate_per_width() -> None:
    metadata = MetaData()
    table = signals_table(
        metadata,
        "ticks",
        schema="market",
        timescale=TimescaleOptions(rollups=[timedelta(days=1), timedelta(minutes=15), HOUR]),
    )
    rollups = get_rollups(table)
    assert [r.width for r in rollups] == [timedelta(minutes=15), HOUR, timedelta(days=1)]
    assert [r.aggregate.name for r in rollups] == ["ticks_15m", "ticks_1h", "ticks_1d"]
    assert all(r.aggregate.schema == "market" for r in rollups)
    assert get_continuous_aggregates(metadata) == tuple(r.aggregate for r in rollups)
    daily = rollups[2].aggregate
    assert daily.refresh == RefreshPolicy(timedelta(days=30), timedelta(days=1), HOUR)
    assert daily.materialized_only is True
    assert set(daily.c.keys()) == {
        "provider", "symbol", "name", "bucket", "signal_count", "min_value", "max_value",
        "mean_value", "m2_value", "large_count", "large_mean", "large_m2", "last_value",
        "last_ts", "first_ts",
    }  # fmt: skip


def test_rollup_refresh_window_stays_inside_retention() -> None:
    table = signals_table(
        MetaData(), timescale=TimescaleOptions(drop_after=timedelta(days=7), rollups=[HOUR])
    )
    assert get_rollups(table)[0].aggregate.refresh == RefreshPolicy(
        timedelta(days=7) - HOUR, HOUR, HOUR
    )
    with pytest.raises(ConfigurationError, match="refresh window"):
        signals_table(
            MetaData(),
            timescale=TimescaleOptions(drop_after=timedelta(days=2), rollups=[timedelta(days=1)]),
        )
    with pytest.raises(ConfigurationError, match="whole seconds"):
        TimescaleOptions(rollups=[timedelta(milliseconds=1500)])
    with pytest.raises(ConfigurationError, match="distinct"):
        TimescaleOptions(rollups=[HOUR, HOUR])


def _adversarial_rows() -> list[dict[str, Any]]:
    # Large means with small spreads: where sums of squares lose every digit.
    rng = random.Random(9)
    rows = []
    for symbol, (mean, spread) in {"BTC": (50_000.0, 0.5), "ETH": (3_000.0, 1e-3)}.items():
        for name in ("price", "spread"):
            for i in range(400):
                ts = BASE + timedelta(minutes=7 * i, seconds=rng.randrange(60))
                rows.append(_row(ts, mean + rng.gauss(0, spread), symbol=symbol, name=name))
    return rows


@pytest.fixture
def rollup_db(timescale_db: Database) -> Iterator[tuple[Database, list[dict[str, Any]]]]:
    db = timescale_db
    db._table = signals_table(
        db.metadata, schema=db.schema, timescale=TimescaleOptions(rollups=(HOUR, timedelta(days=1)))
    )
    _create(db, *(r.aggregate for r in get_rollups(db.table)))
    rows = _adversarial_rows()
    _seed(db, rows)
    for rollup in get_rollups(db.table):
        _refresh(db, rollup.aggregate)
    yield db, rows


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.mark.parametrize("width", [HOUR, timedelta(days=1)], ids=["1h", "1d"])
def test_rollup_buckets_equal_the_raw_computation(
    rollup_db: tuple[Database, list[dict[str, Any]]], width: timedelta
) -> None:
    db, rows = rollup_db
    rollup = next(r for r in get_rollups(db.table) if r.width == width)
    groups: dict[tuple[str, str, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for row in rows:
        bucket = DEFAULT_ORIGIN + ((row["ts"] - DEFAULT_ORIGIN) // width) * width
        groups[(row["symbol"], row["name"], bucket)].append((row["ts"], row["value"]))
    a = rollup.aggregate.c
    with db.engine.connect() as conn:
        got = conn.execute(
            select(a.symbol, a.name, a.bucket, *(a[k] for k in (
                "signal_count", "large_count", "min_value", "max_value", "mean_value",
                "m2_value", "last_value", "last_ts", "first_ts",
            ))).order_by(a.symbol, a.name, a.bucket)
        ).all()  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in got] == sorted(groups)
    for row in got:
        points = sorted(groups[(row[0], row[1], row[2])])
        values = [v for _, v in points]
        mean = statistics.fmean(values)
        count, large, low, high, avg, m2, last_value, last_ts, first_ts = row[3:]
        assert (count, low, high, last_value, last_ts, first_ts) == (
            len(values), min(values), max(values), points[-1][1], points[-1][0], points[0][0]
        )  # fmt: skip
        assert large == 0 and _close(avg, mean)
        assert _close(m2, math.fsum((v - mean) ** 2 for v in values), rel=1e-7)


def test_rollup_moments_give_the_exact_sample_stddev(
    rollup_db: tuple[Database, list[dict[str, Any]]],
) -> None:
    db, rows = rollup_db
    for rollup in get_rollups(db.table):
        a = rollup.aggregate.c
        with db.engine.connect() as conn:
            parts = conn.execute(
                select(a.symbol, a.name, a.signal_count, a.mean_value, a.m2_value)
            ).all()
        series: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
        for symbol, name, n, mean, m2 in parts:
            series[(symbol, name)].append((n, mean, m2))
        for (symbol, name), triples in series.items():
            values = [r["value"] for r in rows if (r["symbol"], r["name"]) == (symbol, name)]
            merged = combine_moments(triples)
            assert merged.count == len(values)
            assert merged.sample_stddev is not None
            assert _close(merged.sample_stddev, statistics.stdev(values)), (rollup.width, symbol)
            assert _close(merged.mean, statistics.fmean(values))


def test_combine_moments_of_nothing_and_of_one() -> None:
    empty = combine_moments([])
    assert empty.count == 0 and empty.sample_stddev is None
    one = combine_moments([(1, 5.0, 0.0), (0, 0.0, 0.0)])
    assert (one.count, one.mean, one.sample_stddev) == (1, 5.0, None)


def test_combine_moments_of_huge_values_does_not_overflow() -> None:
    values = [1e300, -1e300, 3e300, 1e299]
    parts = [(1, v, 0.0) for v in values]
    merged = combine_moments(parts)
    assert merged.count == 4
    assert math.isclose(merged.mean, statistics.fmean(values), rel_tol=1e-12)
    scaled = [v * 1e-300 for v in values]
    assert merged.sample_stddev is not None
    assert math.isclose(merged.sample_stddev, statistics.stdev(scaled) * 1e300, rel_tol=1e-12)
    # Buckets whose spreads are near the float limit: M2 itself is out of range (inf), the
    # mean is still exact.
    wide = combine_moments([(2, 1e154, 1e308), (2, -1e154, 1e308)])
    assert wide.mean == 0.0 and wide.m2 == math.inf


def test_explicit_rollup_with_compression_and_retention(timescale_db: Database) -> None:
    db = timescale_db
    table = _signals(db)
    aggregate = signals_rollup(
        table,
        timedelta(minutes=5),
        name="signals_five",
        materialized_only=False,
        refresh=RefreshPolicy(timedelta(days=2), timedelta(minutes=5), timedelta(minutes=5)),
        compress_after=timedelta(days=3),
        drop_after=timedelta(days=90),
    )
    _create(db, aggregate)
    with db.engine.connect() as conn:
        state = read_continuous_aggregate(conn, "signals_five", db.schema)
    assert state is not None
    assert (state.materialized_only, state.compression) == (False, True)
    assert (state.compress_after, state.drop_after) == (timedelta(days=3), timedelta(days=90))
    assert [r.aggregate for r in get_rollups(table)] == [aggregate]


def test_refresh_now_waits_for_a_concurrent_refresh_of_its_window(
    native_timescale_db: Database,
) -> None:
    """TimescaleDB refuses a refresh while one of an overlapping window runs (a policy's job
    racing an explicit refresh failed the docs' example): refresh_now waits and retries;
    ``wait=0`` raises at once."""
    db = native_timescale_db
    aggregate = _hourly_max(db)
    _create(db, aggregate)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    _seed(db, [_row(base + timedelta(minutes=i), float(i)) for i in range(600)])
    ((schema, name),) = db.sql(
        "SELECT materialization_hypertable_schema, materialization_hypertable_name "
        "FROM timescaledb_information.continuous_aggregates "
        "WHERE view_schema = :schema AND view_name = 'hourly_max'",
        schema=db.schema,
    )
    materialized = f'"{schema}"."{name}"'
    # The first refresh registers its window, then waits for this lock.
    holder = db.engine.connect()
    holder.execute(text(f"LOCK TABLE {materialized} IN ACCESS EXCLUSIVE MODE"))
    errors: list[BaseException] = []

    def first() -> None:
        try:
            _refresh(db, aggregate)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        db.wait_until(
            lambda: bool(
                db.sql(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'CALL refresh_continuous_aggregate%' "
                    "AND datname = current_database()"
                )
            ),
            "the first refresh never waited for the lock",
        )
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with pytest.raises(DBAPIError, match="concurrent refresh"):
                aggregate.refresh_now(conn, wait=0)
            release = threading.Timer(0.5, holder.rollback)
            release.start()
            aggregate.refresh_now(conn)  # waits for the first one, then refreshes
            release.join()
    finally:
        holder.close()
        thread.join()
    assert errors == []
    assert db.sql(f"SELECT count(*) FROM {materialized}") == [(10,)]


def test_refresh_now_rejects_a_negative_wait() -> None:
    aggregate = ContinuousAggregate(
        "a",
        MetaData(),
        select(time_bucket(HOUR, signals_table(MetaData(), "s").c.ts).label("b")).group_by("b"),
    )
    with pytest.raises(ConfigurationError, match="wait"):
        aggregate.refresh_now(None, wait=-1)  # type: ignore[arg-type]
