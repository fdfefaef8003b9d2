"""Repositories on sessions with several binds find the signals table's engine.

A host with two databases binds by class or by table (``Session(binds={Base: engine})``,
``binds={signals_table: engine}``) and has no default bind: ``session.get_bind()`` without
the mapper or the table raises ``UnboundExecutionError``. Every read and the write must name
what they touch.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalQueryRepository,
    AsyncSignalRepository,
    SignalMixin,
    SignalQueryRepository,
    SignalRepository,
    TimescaleOptions,
)

from .conftest import Database

NOW = datetime.now(timezone.utc)


def _model(db: Database) -> Any:
    class HostBase(DeclarativeBase):
        pass

    class HostSignal(SignalMixin, HostBase):
        __tablename__ = "host_signals"
        __table_args__ = {"schema": db.schema}
        __timescale__ = TimescaleOptions(compress_after=None)

    HostBase.metadata.create_all(db.engine)
    return HostBase, HostSignal


def _signals() -> list[dict[str, Any]]:
    return [
        {"provider": "p", "symbol": "SPY", "ts": NOW - timedelta(minutes=i), "name": "x",
         "value": float(i)}
        for i in range(5)
    ]  # fmt: skip


def _read_all(repo: Any) -> list[Any]:
    return [
        repo.get_latest_signals("p", "SPY", limit=3),
        repo.get_signals_history("p", "SPY", NOW - timedelta(hours=1)),
        repo.get_signal_metrics("p", "SPY", "x", hours_back=1),
        repo.get_active_signals("p", minutes_back=60),
        repo.get_signal_summary("p", hours_back=1),
        repo.get_signal_buckets("p", "SPY", "x", timedelta(minutes=2), hours_back=1),
    ]


def _check(results: list[Any]) -> None:
    latest, history, metrics, active, summary, buckets = results
    assert len(latest) == 3 and len(history) == 5
    assert metrics["signal_count"] == 5 and metrics["max_value"] == 4.0
    assert len(active) == 1 and summary["total_signals"] == 5
    assert sum(b["signal_count"] for b in buckets) == 5


@pytest.mark.parametrize("by", ["class", "table"])
def test_sync_repositories_on_a_multi_bind_session(db: Database, by: str) -> None:
    base, model = _model(db)
    other = create_engine("sqlite://")  # the host's other database

    class OtherBase(DeclarativeBase):
        pass

    key = base if by == "class" else model.__table__
    with Session(binds={key: db.engine, OtherBase: other}) as session:
        # binds keyed by class need the mapper, binds keyed by table need the table.
        result = SignalRepository(session, model).upsert(_signals())
        assert result.inserted == 5
        session.commit()
        _check(_read_all(SignalRepository(session, model)))
        _check(_read_all(SignalQueryRepository(session, model)))
    other.dispose()


def test_query_repository_without_any_default_bind(db: Database) -> None:
    _, model = _model(db)
    with Session(db.engine) as session:
        SignalRepository(session, model).upsert(_signals())
        session.commit()
    with Session(binds={model.__table__: db.engine}) as session:
        _check(_read_all(SignalQueryRepository(session, model.__table__)))


@pytest.mark.parametrize("by", ["class", "table"])
def test_async_repositories_on_a_multi_bind_session(db: Database, by: str) -> None:
    base, model = _model(db)
    engine = create_async_engine(db.async_url, poolclass=NullPool)
    key = base if by == "class" else model.__table__

    async def run() -> list[Any]:
        async with AsyncSession(binds={key: engine}) as session:
            repo = AsyncSignalRepository(session, model)
            result = await repo.upsert(_signals())
            assert result.inserted == 5
            await session.commit()
            query = AsyncSignalQueryRepository(session, model)
            results = []
            for target in (repo, query):
                results.append(
                    [
                        await target.get_latest_signals("p", "SPY", limit=3),
                        await target.get_signals_history("p", "SPY", NOW - timedelta(hours=1)),
                        await target.get_signal_metrics("p", "SPY", "x", hours_back=1),
                        await target.get_active_signals("p", minutes_back=60),
                        await target.get_signal_summary("p", hours_back=1),
                        await target.get_signal_buckets(
                            "p", "SPY", "x", timedelta(minutes=2), hours_back=1
                        ),
                    ]
                )
        await engine.dispose()
        return results

    for results in asyncio.run(run()):
        _check(results)
