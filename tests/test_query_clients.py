"""Query clients and repositories: lifecycle, URIs, async parity, bound parameters, bucketing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalQueryRepository,
    AsyncSignalsQueryClient,
    ClientStateError,
    ConfigurationError,
    Signal,
    SignalQueryRepository,
    SignalsQueryClient,
)
from sa_signals.read.queries import plan_active, plan_buckets, plan_latest, plan_metrics

from .conftest import Database

UTC = timezone.utc


def _pool(db: Database) -> dict[str, Any]:
    # TimescaleDB-in-WASM serves one connection at a time: no idle pooled connections there.
    return {"poolclass": NullPool} if db.tier == "timescale" else {}


def _async_url(db: Database) -> Any:
    return db.async_url


def _seed(db: Database, now: datetime) -> None:
    table = db.table
    rows = [
        {
            "provider": "ibkr_primary",
            "symbol": symbol,
            "ts": now - timedelta(seconds=37 * i),
            "name": f"sig_{i % 4}",
            "value": i * 0.75 - 3,
            "score": None if i % 5 == 0 else i / 100,
            "metadata": {"i": i, "tags": ["a", "b"]} if i % 2 else None,
        }
        for symbol in ("SPY", "QQQ")
        for i in range(60)
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(table).values(rows))


def _sync_answers(client: SignalsQueryClient | SignalQueryRepository, now: datetime) -> list[Any]:
    return [
        client.get_latest_signals("ibkr_primary", "spy", limit=7),
        client.get_latest_signals("ibkr_primary", "SPY", 5, ["sig_1", "sig_3"]),
        client.get_signals_history(
            "ibkr_primary", "QQQ", now - timedelta(minutes=20), now - timedelta(minutes=5)
        ),
        client.get_signal_metrics("ibkr_primary", "SPY", "sig_2", hours_back=1),
        client.get_active_signals("ibkr_primary", minutes_back=10),
        client.get_signal_summary("ibkr_primary", hours_back=1),
        client.get_signal_buckets(
            "ibkr_primary",
            "SPY",
            "sig_0",
            timedelta(minutes=5),
            start_ts=now - timedelta(hours=1),
            end_ts=now,
        ),
    ]


async def _async_answers(
    client: AsyncSignalsQueryClient | AsyncSignalQueryRepository, now: datetime
) -> list[Any]:
    return [
        await client.get_latest_signals("ibkr_primary", "spy", limit=7),
        await client.get_latest_signals("ibkr_primary", "SPY", 5, ["sig_1", "sig_3"]),
        await client.get_signals_history(
            "ibkr_primary", "QQQ", now - timedelta(minutes=20), now - timedelta(minutes=5)
        ),
        await client.get_signal_metrics("ibkr_primary", "SPY", "sig_2", hours_back=1),
        await client.get_active_signals("ibkr_primary", minutes_back=10),
        await client.get_signal_summary("ibkr_primary", hours_back=1),
        await client.get_signal_buckets(
            "ibkr_primary",
            "SPY",
            "sig_0",
            timedelta(minutes=5),
            start_ts=now - timedelta(hours=1),
            end_ts=now,
        ),
    ]


async def test_async_client_and_repositories_answer_like_the_sync_client(db: Database) -> None:
    now = datetime.now(UTC)
    _seed(db, now)
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        expected = _sync_answers(client, now)
    assert all(expected[:6]) and expected[3]["signal_count"] > 0 and expected[6]
    async with AsyncSignalsQueryClient(_async_url(db), table=db.table, **_pool(db)) as aclient:
        assert await _async_answers(aclient, now) == expected
    with Session(db.engine) as session:
        assert _sync_answers(SignalQueryRepository(session, db.table), now) == expected
    engine = create_async_engine(_async_url(db), poolclass=NullPool)
    try:
        async with AsyncSession(engine) as asession:
            repository = AsyncSignalQueryRepository(asession, db.table)
            assert await _async_answers(repository, now) == expected
    finally:
        await engine.dispose()


def test_repository_on_a_core_connection(db: Database) -> None:
    now = datetime.now(UTC)
    _seed(db, now)
    with Session(db.engine) as session:
        expected = _sync_answers(SignalQueryRepository(session, db.table), now)
    with db.engine.connect() as conn:
        assert _sync_answers(SignalQueryRepository(conn, db.table), now) == expected


def test_repository_keeps_session_and_defaults_to_the_default_table(
    sqlite_db: Database,
) -> None:
    with Session(sqlite_db.engine) as session:
        repository = SignalQueryRepository(session)
        assert repository.session is session and repository.table is Signal.__table__
        assert SignalQueryRepository(session, sqlite_db.table).table is sqlite_db.table


def test_repository_runs_in_the_callers_transaction(db: Database) -> None:
    now = datetime.now(UTC)
    table = db.table
    with Session(db.engine) as session:
        session.execute(
            insert(table).values(provider="p", symbol="SPY", ts=now, name="uncommitted", value=1.0)
        )
        repository = SignalQueryRepository(session, table)
        assert [r["name"] for r in repository.get_latest_signals("p", "SPY")] == ["uncommitted"]
        session.rollback()
        assert repository.get_latest_signals("p", "SPY") == []


def test_client_outside_its_context_raises_client_state_error(sqlite_db: Database) -> None:
    client = SignalsQueryClient(sqlite_db.url, table=sqlite_db.table)
    with pytest.raises(ClientStateError, match="with SignalsQueryClient"):
        client.get_latest_signals("p", "SPY")
    with client:
        assert client.get_latest_signals("p", "SPY") == []
    with pytest.raises(ClientStateError):
        client.get_signal_summary("p")
    with pytest.raises(ClientStateError):
        client.storage_stats()


async def test_async_client_outside_its_context_raises(sqlite_db: Database) -> None:
    client = AsyncSignalsQueryClient(sqlite_db.async_url, table=sqlite_db.table)
    with pytest.raises(ClientStateError, match="async with"):
        await client.get_active_signals("p")
    async with client:
        assert await client.get_active_signals("p") == []
    with pytest.raises(ClientStateError):
        await client.get_active_signals("p")


def test_client_is_reenterable_with_one_engine(db: Database) -> None:
    now = datetime.now(UTC)
    _seed(db, now)
    client = SignalsQueryClient(db.url, table=db.table, **_pool(db))
    engine = client.engine
    for _ in range(3):
        with client:
            assert len(client.get_latest_signals("ibkr_primary", "SPY", limit=3)) == 3
            with client:  # nested use keeps it open
                assert client.get_signal_summary("ibkr_primary")["total_signals"] == 120
            assert client.get_active_signals("ibkr_primary")
        assert client.engine is engine
    if db.tier != "timescale":  # NullPool there keeps no count
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_spec_style_plain_uris(pg_db: Database) -> None:
    now = datetime.now(UTC)
    _seed(pg_db, now)
    plain = pg_db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    assert plain.startswith("postgresql://")
    with SignalsQueryClient(plain, table=pg_db.table, **_pool(pg_db)) as client:
        assert client.engine.dialect.driver == "psycopg"
        assert client.get_signal_summary("ibkr_primary")["total_signals"] == 120


async def test_async_spec_style_plain_uri(postgres_db: Database) -> None:
    now = datetime.now(UTC)
    _seed(postgres_db, now)
    url = postgres_db.async_url.set(drivername="postgresql")
    plain = url.render_as_string(hide_password=False)
    async with AsyncSignalsQueryClient(plain, table=postgres_db.table) as client:
        assert client.engine.dialect.driver == "asyncpg"
        assert (await client.get_signal_summary("ibkr_primary"))["total_signals"] == 120


def test_sqlite_file_uri(tmp_path: Any) -> None:
    uri = f"sqlite:///{tmp_path / 'signals.db'}"
    engine = create_engine(uri)
    Signal.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(Signal.__table__).values(
                provider="p", symbol="SPY", ts=datetime.now(UTC), name="n", value=2.0
            )
        )
    engine.dispose()
    with SignalsQueryClient(uri) as client:
        assert client.get_latest_signals("p", "spy")[0]["value"] == 2.0


def test_client_accepts_an_engine_and_leaves_it_open(sqlite_db: Database) -> None:
    engine: Engine = sqlite_db.engine
    sqlite_db.table  # noqa: B018 - creates it
    with SignalsQueryClient(engine, table=sqlite_db.table) as client:
        assert client.engine is engine
        assert client.get_latest_signals("p", "SPY") == []
    with pytest.raises(ConfigurationError):
        SignalsQueryClient(engine, pool_size=3)


def test_client_storage_stats(db: Database) -> None:
    _seed(db, datetime.now(UTC))
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        stats = client.storage_stats(exact_count=True)
    assert stats.table == "signals" and stats.row_estimate == 120


# ---------------------------------------------------------------- statements


@pytest.mark.parametrize("dialect", [postgresql.psycopg.dialect(), sqlite.dialect()])  # type: ignore[attr-defined]
def test_windows_and_limits_are_bound_parameters(dialect: Any) -> None:
    table = Signal.__table__
    now = datetime.now(UTC)

    def sql(plan: Any) -> str:
        return str(plan.statement.compile(dialect=dialect))

    small, large = (
        plan_latest(table, dialect, "p", "S", 3),
        plan_latest(table, dialect, "p", "S", 987654),
    )
    assert sql(small) == sql(large) and "987654" not in sql(large)
    assert large.parameters["limit"] == 987654
    m1 = plan_metrics(table, dialect, "p", "S", "n", hours_back=1)
    m2 = plan_metrics(table, dialect, "p", "S", "n", hours_back=765)
    assert sql(m1) == sql(m2) and "765" not in sql(m2)
    assert m2.parameters["since"] < now - timedelta(hours=764)
    a1, a2 = plan_active(table, dialect, "p", 1), plan_active(table, dialect, "p", 4321)
    assert sql(a1) == sql(a2) and "4321" not in sql(a2)
    b = plan_buckets(
        table,
        "sqlite" if dialect.name == "sqlite" else "date_bin",
        "p",
        "S",
        "n",
        timedelta(seconds=7777),
    )
    assert "7777" not in sql(b)
    # Names are bound too, including hostile ones.
    evil = plan_latest(table, dialect, "p'; DROP TABLE signals; --", "S", 1, ["x'--"])
    assert "DROP" not in sql(evil) and "x'--" not in sql(evil)


def test_bucket_function_per_tier(db: Database) -> None:
    table = db.table
    with Session(db.engine) as session:
        chosen = SignalQueryRepository(session, table)._bucket_function()
    assert (
        chosen == {"sqlite": "sqlite", "postgres": "date_bin", "timescale": "time_bucket"}[db.tier]
    )


def test_timescale_tier_table_is_a_hypertable(timescale_db: Database) -> None:
    timescale_db.table  # noqa: B018 - creates it
    rows = timescale_db.sql(
        "SELECT count(*) FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = :s AND hypertable_name = 'signals'",
        s=timescale_db.schema,
    )
    assert rows == [(1,)]


@pytest.mark.parametrize("width", [timedelta(minutes=1), timedelta(seconds=45), timedelta(hours=6)])
def test_epoch_fallback_buckets_equal_date_bin(postgres_db: Database, width: timedelta) -> None:
    """The PostgreSQL < 14 fallback (no date_bin, no TimescaleDB) gives date_bin's answer."""
    now = datetime(2026, 5, 4, 10, 0, 0, 500000, tzinfo=UTC)
    _seed(postgres_db, now)
    table = postgres_db.table
    answers = []
    with Session(postgres_db.engine) as session:
        for function in ("date_bin", "epoch"):
            plan = plan_buckets(
                table,
                function,
                "ibkr_primary",
                "SPY",
                "sig_1",
                width,
                start_ts=now - timedelta(hours=2),
                end_ts=now,
            )
            assert plan.statement is not None
            answers.append(plan.finish(session.execute(plan.statement, plan.parameters).all()))
    assert answers[0] and answers[0] == answers[1]
