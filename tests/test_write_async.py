"""The async client and repository pass the same cases as the sync ones (asyncpg, psycopg
async, aiosqlite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalRepository,
    AsyncSignalsStoreClient,
    ClientStateError,
    InvalidSignalError,
    WriteError,
)

from .conftest import Database
from .test_write_helpers import (
    client_kwargs,
    expected,
    row_versions,
    signal,
    signals,
    stored,
)


def _async_url(db: Database, driver: str = "asyncpg") -> Any:
    return db.url if driver == "psycopg" else db.async_url


def _client(db: Database, driver: str = "asyncpg", **kwargs: Any) -> AsyncSignalsStoreClient:
    return AsyncSignalsStoreClient(_async_url(db, driver), **client_kwargs(db, **kwargs))


async def test_roundtrip_replay_and_changes(db: Database) -> None:
    db.pause_jobs()  # row_versions reads xmin, which compressed chunks do not have
    items = signals(30)
    client = _client(db)
    async with client:
        assert await client.write_signals(items) == 30
        before = row_versions(db) if db.is_postgres else None
        assert await client.write_signals(items) == 30
        assert client.last_result is not None
        assert client.last_result.unchanged == 30
        if before is not None:
            assert row_versions(db) == before
        changed = [signal(1, value=5.0), signal(2, metadata={"x": [1, 2]}), signal(3)]
        assert await client.write_signals(changed) == 3
        assert (client.last_result.updated, client.last_result.unchanged) == (2, 1)
    await client.aclose()
    assert stored(db) == expected(items + changed)


async def test_duplicates_and_lowercase_symbols(db: Database) -> None:
    items = [signal(1, symbol="spy", value=1.0), signal(1, value=2.0), signal(2, symbol="qqq")]
    client = _client(db)
    async with client:
        assert await client.write_signals(items) == 3
    await client.aclose()
    assert stored(db) == expected(items)


async def test_bad_3000th_signal_leaves_table_unchanged(db: Database) -> None:
    items = signals(3000)
    items[2999].metadata = {"price": float("inf")}
    client = _client(db)
    async with client:
        await client.write_signals(signals(2, start=5000))
        before = stored(db)
        with pytest.raises(InvalidSignalError) as info:
            await client.write_signals(items)
    await client.aclose()
    assert (info.value.index, info.value.field) == (2999, "metadata")
    assert stored(db) == before


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize(
    ("size", "methods"),
    # New keys at or above the threshold take the append fast path (COPY into the table).
    [(49, ("UPSERT",)), (50, ("COPY", "APPEND")), (51, ("COPY", "APPEND"))],
    ids=["threshold-1", "threshold", "threshold+1"],
)
async def test_batch_sizes_around_the_threshold(
    postgres_db: Database, driver: str, size: int, methods: tuple[str, ...]
) -> None:
    items = signals(size)
    client = _client(postgres_db, driver, batch_threshold=50)
    async with client:
        assert await client.write_signals(items) == size
        assert client.last_result is not None
        assert client.last_result.methods == methods
        assert await client.write_signals(items) == size
        assert client.last_result.unchanged == size
    await client.aclose()
    assert stored(postgres_db) == expected(items)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_many_copy_batches_with_duplicates(postgres_db: Database, driver: str) -> None:
    items = signals(500) + signals(100, start=450, value=9.0)
    client = _client(postgres_db, driver, batch_threshold=100)
    async with client:
        assert await client.write_signals(items, batch_size=100) == 600
        assert client.last_result is not None
        assert client.last_result.methods == ("COPY",)
        # Keys 450-549 come twice: one merge per call counts each key once.
        assert (client.last_result.inserted, client.last_result.updated) == (550, 0)
        assert client.last_result.duplicates == 50
        assert await client.write_signals(items, batch_size=100) == 600  # a new transaction
    await client.aclose()
    assert stored(postgres_db) == expected(items)


async def test_repository_joins_the_callers_transaction(db: Database) -> None:
    kwargs: dict[str, Any] = {"poolclass": NullPool} if db.tier == "timescale" else {}
    engine = create_async_engine(_async_url(db), **kwargs)
    try:
        async with AsyncSession(engine) as session:
            repo = AsyncSignalRepository(session, db.table, batch_threshold=10**9)
            bad = signals(10)
            bad[9].score = "high"
            with pytest.raises(InvalidSignalError, match=r"signal\[9\]\.score"):
                await repo.upsert(bad)
            result = await repo.upsert(signals(4))
            assert result.inserted == 4
            await session.rollback()
            assert stored(db) == {}
            await repo.upsert(signals(3))
            await session.commit()
    finally:
        await engine.dispose()
    assert stored(db) == expected(signals(3))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_repository_copy_path(postgres_db: Database, driver: str) -> None:
    engine = create_async_engine(_async_url(postgres_db, driver))
    registry = CollectorRegistry()
    try:
        async with AsyncSession(engine) as session, session.begin():
            repo = AsyncSignalRepository(
                session, postgres_db.table, batch_threshold=10, metrics=registry
            )
            result = await repo.upsert(signals(25), batch_size=10)
            assert result.methods == ("COPY", "APPEND")  # new keys: the append fast path
            assert repo.last_method == "COPY"
    finally:
        await engine.dispose()
    assert stored(postgres_db) == expected(signals(25))
    labels = {"method": "COPY", "status": "success"}
    assert registry.get_sample_value("store_signals_written_total", labels) == 25


async def test_client_state_and_reentry(db: Database) -> None:
    client = _client(db)
    with pytest.raises(ClientStateError):
        await client.write_signals(signals(1))
    engines = []
    for i in range(2):
        async with client:
            await client.write_signals([signal(i)])
            engines.append(client.engine)
    assert engines[0] is engines[1]
    with pytest.raises(ClientStateError):
        await client.write_signals(signals(1))
    await client.aclose()
    assert len(stored(db)) == 2


async def test_backend_killed_mid_write(postgres_db: Database) -> None:
    db = postgres_db
    app = f"victim-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()

    def stream() -> Iterator[Any]:
        for i in range(3000):
            if i == 1500:
                killed = db.sql(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE application_name = :app",
                    app=app,
                )
                assert killed == [(1,)]
            yield signal(i)

    client = _client(
        db,
        batch_threshold=100,
        registry=registry,
        connect_args={"server_settings": {"application_name": app}},
    )
    async with client:
        with pytest.raises(WriteError) as info:
            await client.write_signals(stream())
        assert info.value.connection_lost
        labels = {"method": "COPY", "status": "failure"}
        failed = registry.get_sample_value("store_signals_written_total", labels)
        assert failed is not None and 1500 < failed <= 3000
        assert stored(db) == {}
        assert await client.write_signals(signals(1200)) == 1200
    await client.aclose()
    assert stored(db) == expected(signals(1200))
