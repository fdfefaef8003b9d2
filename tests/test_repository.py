"""One repository for both directions: writes and reads share the caller's transaction."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalRepository,
    SignalMixin,
    SignalQueryRepository,
    SignalRepository,
    SignalsQueryClient,
    SignalsStoreClient,
)

from .conftest import Database
from .test_write_helpers import BASE, expected, signals, stored


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


def _model(db: Database) -> tuple[type[DeclarativeBase], type[Any]]:
    """A host's own declarative base and signals model, created in this test's schema."""

    class Base(DeclarativeBase):
        pass

    class ModelSignal(SignalMixin, Base):  # type: ignore[misc]
        __tablename__ = "model_signals"
        __table_schema__ = db.schema
        __timescale__ = None

    Base.metadata.create_all(db.engine)
    return Base, ModelSignal


def test_a_mapped_class_is_accepted_wherever_a_table_is(db: Database) -> None:
    _, model = _model(db)
    registry = CollectorRegistry()
    pool = {"poolclass": NullPool} if db.tier == "timescale" else {}
    with Session(db.engine) as session:
        assert SignalRepository(session, model).upsert(signals(2)).inserted == 2
        session.commit()
    with SignalsStoreClient(db.url, table=model, registry=registry, **pool) as client:
        assert client.upsert(signals(3)).inserted == 1
    with SignalsQueryClient(db.url, table=model, **pool) as reader:
        assert len(reader.get_latest_signals("ibkr_primary", "SPY")) == 3
    with Session(db.engine) as session:
        assert (
            len(SignalQueryRepository(session, model).get_latest_signals("ibkr_primary", "SPY"))
            == 3
        )
    assert stored(db, model.__table__) == expected(signals(3))


def test_session_with_several_binds_writes_through_the_models_bind(db: Database) -> None:
    base, model = _model(db)
    with Session(binds={base: db.engine}) as session:
        repository = SignalRepository(session, model)
        assert repository.upsert(signals(3)).inserted == 3
        session.commit()
    assert stored(db, model.__table__) == expected(signals(3))
