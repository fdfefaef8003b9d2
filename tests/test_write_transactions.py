"""One call is one transaction (clients), and a failed call leaves the caller's transaction
usable (repositories): whatever engine, driver or moment of failure."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, insert, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalRepository,
    AsyncSignalsStoreClient,
    InvalidSignalError,
    SignalRepository,
    SignalsQueryClient,
    SignalsStoreClient,
    WriteError,
)

from .conftest import Database
from .test_write_helpers import NO_COPY, expected, signal, signals, stored


class Boom(RuntimeError):
    """Raised by the caller's own generator."""


def _failing_at(n: int) -> Iterator[SimpleNamespace]:
    for i in range(n):
        yield signal(i)
    raise Boom(f"the source failed at item {n}")


def _pool(db: Database) -> dict[str, Any]:
    # The TimescaleDB test server serves one connection at a time: no idle pooled ones there.
    return {"poolclass": NullPool} if db.tier == "timescale" else {}


def _threshold(db: Database) -> int:
    return NO_COPY if db.tier == "timescale" else 1000


@pytest.mark.parametrize("how", ["engine", "keyword", "query-client-engine"])
def test_autocommit_engine_still_gets_one_transaction_per_call(db: Database, how: str) -> None:
    table = db.table
    options: dict[str, Any] = {
        "table": table,
        "registry": CollectorRegistry(),
        "batch_threshold": _threshold(db),
    }
    query_client = None
    if how == "engine":
        uri: Any = create_engine(db.url, isolation_level="AUTOCOMMIT", **_pool(db))
    elif how == "keyword":
        uri = db.url
        options.update(isolation_level="AUTOCOMMIT", **_pool(db))
    else:
        query_client = SignalsQueryClient(db.url, table=table, **_pool(db))
        uri = query_client.__enter__().engine
    client = SignalsStoreClient(uri, **options)
    try:
        with client:
            client.write_signals(signals(3, start=10_000))
            before = stored(db)
            with pytest.raises(Boom):
                client.write_signals(_failing_at(5000))  # batches of 1000 went first
            assert stored(db) == before
            assert client.write_signals(signals(2)) == 2
    finally:
        if query_client is not None:
            query_client.__exit__(None, None, None)
        elif how == "engine":
            uri.dispose()
    assert stored(db) == {**before, **expected(signals(2))}


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_async_autocommit_engine_still_gets_one_transaction_per_call(
    pg_db: Database, driver: str
) -> None:
    db = pg_db
    url = db.async_url if driver == "asyncpg" else db.url
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", **_pool(db))
    client = AsyncSignalsStoreClient(
        engine, table=db.table, registry=CollectorRegistry(), batch_threshold=_threshold(db)
    )
    try:
        async with client:
            with pytest.raises(Boom):
                await client.write_signals(_failing_at(5000))
            assert stored(db) == {}
    finally:
        await engine.dispose()


def _host_row(session: Session, db: Database) -> None:
    """The host's own earlier work in its transaction: one signal inserted with plain SQL."""
    s = signal(99_999, value=7.0)
    session.execute(
        insert(db.table).values(
            provider=s.provider, symbol=s.symbol, ts=s.ts, name=s.name, value=s.value
        )
    )


@pytest.mark.parametrize(
    ("path", "threshold", "batch_size"),
    [("copy", 1000, None), ("staged", NO_COPY, 500), ("upsert", NO_COPY, None)],
)
def test_failed_repository_call_keeps_the_hosts_transaction(
    db: Database, path: str, threshold: int, batch_size: int | None
) -> None:
    if path == "copy" and db.pglite:
        pytest.skip("COPY FROM STDIN aborts the WebAssembly TimescaleDB server")
    items = signals(3000)
    items[2500].value = "not a number"  # found half-way through the call's streaming
    with Session(db.engine) as session:
        repository = SignalRepository(session, db.table, batch_threshold=threshold)
        _host_row(session, db)
        with pytest.raises(InvalidSignalError, match=r"signal\[2500\]\.value"):
            repository.upsert(items, batch_size=batch_size)
        # The transaction is usable: reads and writes go on, and the host's row is there.
        assert session.execute(text("SELECT 1")).scalar_one() == 1
        assert len(repository.get_latest_signals("ibkr_primary", "SPY", limit=5000)) == 1
        result = repository.upsert(signals(3))
        assert (result.inserted, result.duplicates) == (3, 0)
        session.commit()
    assert stored(db) == expected([signal(99_999, value=7.0), *signals(3)])


def test_repository_database_error_keeps_the_hosts_transaction(postgres_db: Database) -> None:
    db = postgres_db
    with Session(db.engine) as session:
        SignalRepository(session, db.table).upsert(signals(1500))
        session.commit()
    table = f'"{db.schema}".signals'
    with Session(db.engine) as session:
        repository = SignalRepository(session, db.table)
        _host_row(session, db)
        session.execute(text("SET LOCAL lock_timeout = '100ms'"))
        with db.engine.connect() as holder:
            holder.execute(text(f"SELECT 1 FROM {table} FOR UPDATE"))
            with pytest.raises(WriteError, match="lock timeout") as info:
                repository.upsert(signals(1500, value=2.0))  # must update locked rows
            holder.rollback()
        assert info.value.sqlstate == "55P03"
        assert repository.upsert(signals(2, start=5000)).inserted == 2
        session.commit()
    assert stored(db) == expected(
        [*signals(1500), signal(99_999, value=7.0), *signals(2, start=5000)]
    )


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_failed_async_repository_copy_keeps_the_hosts_transaction(
    postgres_db: Database, driver: str
) -> None:
    db = postgres_db
    engine = create_async_engine(db.async_url if driver == "asyncpg" else db.url)
    items = signals(3000)
    items[2500].metadata = {"bad": float("nan")}
    try:
        async with AsyncSession(engine) as session:
            repository = AsyncSignalRepository(session, db.table)
            await session.run_sync(_host_row, db)
            with pytest.raises(InvalidSignalError, match=r"signal\[2500\]\.metadata"):
                await repository.upsert(items)
            assert (await repository.upsert(signals(3))).inserted == 3
            await session.commit()
    finally:
        await engine.dispose()
    assert stored(db) == expected([signal(99_999, value=7.0), *signals(3)])


def test_generator_failing_mid_copy_keeps_nothing_and_propagates(postgres_db: Database) -> None:
    with SignalsStoreClient(
        postgres_db.url, table=postgres_db.table, registry=CollectorRegistry()
    ) as client:
        with pytest.raises(Boom):
            client.write_signals(_failing_at(2500))
        assert client.write_signals(signals(2)) == 2  # the connection went back clean
    assert stored(postgres_db) == expected(signals(2))
