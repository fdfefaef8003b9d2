"""Failures of a write: each is a WriteError (the driver's error as __cause__), the call fails
whole, and the client works afterwards."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import create_async_engine

from sa_signals import AsyncSignalsStoreClient, SignalsStoreClient, WriteError

from .conftest import Database
from .test_write_helpers import expected, signal, signals, stored, sync_client


@pytest.mark.parametrize("threshold", [10**9, 10], ids=["upsert", "copy"])
def test_lock_conflict_fails_whole_then_client_recovers(
    postgres_db: Database, threshold: int
) -> None:
    db = postgres_db
    registry = CollectorRegistry()
    method = "COPY" if threshold == 10 else "UPSERT"
    with sync_client(
        db,
        batch_threshold=threshold,
        registry=registry,
        # Give up on a row lock after 200 ms instead of waiting for the other transaction.
        connect_args={"options": "-c lock_timeout=200"},
    ) as client:
        client.write_signals(signals(20))
        before = stored(db)
        table = f'"{db.schema}"."signals"'
        with db.engine.connect() as holder:
            holder.exec_driver_sql(f"SELECT 1 FROM {table} ORDER BY ts LIMIT 1 FOR UPDATE")
            # 40 signals: the first 20 change the existing (one of them locked), 20 are new.
            with pytest.raises(WriteError, match="lock"):
                client.write_signals(signals(40, value=2.0))
            assert stored(db) == before  # nothing of the call, not even the new keys
            holder.rollback()
        failures = registry.get_sample_value(
            "store_signals_written_total", {"method": method, "status": "failure"}
        )
        assert failures == 40
        assert client.write_signals(signals(40, value=2.0)) == 40
    assert stored(db) == expected(signals(40, value=2.0))


def _slow_stream(n: int, pause_at: int) -> Iterator[Any]:
    for i in range(n):
        if i == pause_at:
            time.sleep(0.5)  # longer than the statement_timeout: the COPY is cancelled
        yield signal(i)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg", "psycopg-async"])
async def test_statement_timeout_during_copy_is_a_write_error(
    postgres_db: Database, driver: str
) -> None:
    db = postgres_db
    options: dict[str, Any] = {"table": db.table, "registry": CollectorRegistry()}
    if driver == "psycopg":
        with SignalsStoreClient(
            db.url, connect_args={"options": "-c statement_timeout=200"}, **options
        ) as client:
            with pytest.raises(WriteError) as info:
                client.write_signals(_slow_stream(3000, 1500))
            # One COPY of 100,000 signals outlasts the timeout too (the raw driver error
            # escaped here before).
            with pytest.raises(WriteError, match="statement timeout"):
                client.write_signals(signals(100_000), batch_size=100_000)
            assert client.write_signals(signals(2)) == 2  # the pool still works
    else:
        url = db.async_url if driver == "asyncpg" else db.url
        settings: dict[str, Any] = (
            {"server_settings": {"statement_timeout": "200"}}
            if driver == "asyncpg"
            else {"options": "-c statement_timeout=200"}
        )
        async with AsyncSignalsStoreClient(url, connect_args=settings, **options) as aclient:
            with pytest.raises(WriteError) as info:
                await aclient.write_signals(_slow_stream(3000, 1500))
            assert await aclient.write_signals(signals(2)) == 2
    assert info.value.sqlstate == "57014"  # query_canceled
    assert info.value.__cause__ is not None
    assert "statement timeout" in str(info.value)
    assert stored(db) == expected(signals(2))


@contextlib.contextmanager
def _closing_server() -> Iterator[tuple[int, list[int]]]:
    """A TCP server that accepts connections and closes them at once: (port, accepted)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join()
        listener.close()


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_unreachable_server_is_a_write_error_and_is_retried(
    postgres_db: Database, driver: str
) -> None:
    db = postgres_db
    options: dict[str, Any] = {"table": db.table, "registry": CollectorRegistry()}

    def at(port: int) -> URL:
        return URL.create(f"postgresql+{driver}", "postgres", None, "127.0.0.1", port, "test")

    async def write(url: URL, items: Any) -> None:
        if driver == "psycopg":
            with SignalsStoreClient(url, **options) as client:
                client.write_signals(items)
        else:
            async with AsyncSignalsStoreClient(url, **options) as aclient:
                await aclient.write_signals(items)

    with pytest.raises(WriteError, match="cannot connect") as info:
        await write(at(_refused_port()), signals(3))
    assert info.value.connection_lost
    assert "sqlalche.me" not in str(info.value)  # the driver's message, not the wrapper's
    if driver == "asyncpg":
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
    with _closing_server() as (port, accepted):
        with pytest.raises(WriteError):
            await write(at(port), signals(3))
        assert len(accepted) == 3  # max_attempts: the list can be read again
        with pytest.raises(WriteError):
            await write(at(port), iter(signals(3)))
        assert len(accepted) == 4  # a generator is never replayed


async def test_exhausted_pool_is_a_write_error(postgres_db: Database) -> None:
    db = postgres_db
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.1}
    engine = create_engine(db.url, **pool)
    try:
        with engine.connect(), SignalsStoreClient(engine, table=db.table) as client:
            with pytest.raises(WriteError, match="pool") as info:
                client.write_signals(signals(3))
        assert isinstance(info.value.__cause__, PoolTimeoutError)
        assert not info.value.connection_lost
    finally:
        engine.dispose()
    async_engine = create_async_engine(db.async_url, **pool)
    try:
        async with (
            async_engine.connect(),
            AsyncSignalsStoreClient(async_engine, table=db.table) as aclient,
        ):
            with pytest.raises(WriteError, match="pool") as info:
                await aclient.write_signals(signals(3))
        assert isinstance(info.value.__cause__, PoolTimeoutError)
    finally:
        await async_engine.dispose()
    assert stored(db) == {}
