"""One repository for both directions: writes and reads share the caller's transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sa_signals import AsyncSignalRepository, SignalRepository

from .conftest import Database
from .test_write_helpers import BASE, signals


def test_repository_reads_its_own_uncommitted_writes(db: Database) -> None:
    with Session(db.engine) as session:
        repository = SignalRepository(session, db.table)
        result = repository.upsert(signals(5))
        assert result.inserted == 5
        latest = repository.get_latest_signals("ibkr_primary", "spy", limit=2)
        assert [row["ts"] for row in latest] == [
            BASE.replace(second=4),
            BASE.replace(second=3),
        ]
        history = repository.get_signals_history("ibkr_primary", "SPY", start_ts=BASE, end_ts=BASE)
        assert len(history) == 1 and history[0]["metadata"] is None
        session.rollback()
    assert db.sql(f"SELECT count(*) FROM {db.schema + '.' if db.schema else ''}signals") == [(0,)]


async def test_async_repository_reads_its_own_writes(db: Database) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    table = db.table
    # The TimescaleDB test server serves one connection at a time: no idle pooled ones there.
    pool = {"poolclass": NullPool} if db.tier == "timescale" else {}
    engine = create_async_engine(db.async_url, **pool)
    try:
        async with AsyncSession(engine) as session, session.begin():
            repository = AsyncSignalRepository(session, table)
            assert (await repository.upsert(signals(3))).inserted == 3
            metrics = await repository.get_signal_metrics(
                "ibkr_primary", "SPY", "vwap_cross_up", hours_back=24 * 365 * 100
            )
            assert metrics["signal_count"] == 3
            assert metrics["latest_ts"] == BASE.replace(second=2)
    finally:
        await engine.dispose()
