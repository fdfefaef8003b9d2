"""The query clients' lifecycle (the same for all four clients).

The engine is made on first entry and kept; leaving the outermost ``with`` / ``async with``
closes the connections of an engine the client made, never of one it was given; the client may
be entered again; ``close()`` / ``aclose()`` release the pool at any time and are idempotent.
Connections are counted by the server (``pg_stat_activity``) on PostgreSQL and by the pool on
SQLite.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import QueuePool

from sa_signals import AsyncSignalsQueryClient, ConfigurationError, SignalsQueryClient

from .conftest import Database


class Connections:
    """Counts the server's connections that carry a unique application name."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.name = f"lifecycle_{uuid.uuid4().hex[:8]}"

    def __call__(self) -> int:
        rows = self.db.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n", n=self.name
        )
        return int(rows[0][0])  # type: ignore[call-overload]

    def closed(self) -> bool:
        """Whether all are closed; a backend leaves ``pg_stat_activity`` a moment after the
        client closed its socket, so this waits for that (at most 10 s)."""
        deadline = time.monotonic() + 10
        while self() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self() == 0


def _sync_connect(name: str) -> dict[str, Any]:
    return {"connect_args": {"application_name": name}}


def _async_connect(name: str) -> dict[str, Any]:
    return {"connect_args": {"server_settings": {"application_name": name}}}


def test_outermost_exit_closes_the_connections_and_the_client_reenters(
    postgres_db: Database,
) -> None:
    connections = Connections(postgres_db)
    name = connections.name
    client = SignalsQueryClient(postgres_db.url, table=postgres_db.table, **_sync_connect(name))
    assert connections() == 0  # nothing is opened before the first entry
    with client:
        engine = client.engine
        client.get_signal_summary("p")
        with client:  # nested: leaving it keeps the pool
            client.get_signal_summary("p")
        assert connections() == 1
        client.get_signal_summary("p")
    assert connections.closed()
    for _ in range(2):
        with client:
            assert client.engine is engine  # one engine for the client's life
            assert client.get_signal_summary("p")["total_signals"] == 0
            assert connections() == 1
        assert connections.closed()


def test_close_is_idempotent_and_the_client_stays_usable(postgres_db: Database) -> None:
    connections = Connections(postgres_db)
    name = connections.name
    client = SignalsQueryClient(postgres_db.url, table=postgres_db.table, **_sync_connect(name))
    client.close()  # never entered: nothing to release
    with client:
        client.get_signal_summary("p")
        client.close()
        client.close()
        assert connections.closed()
        client.get_signal_summary("p")  # a new connection
        assert connections() == 1
    assert connections.closed()
    client.close()


def test_an_engine_given_to_the_client_is_never_disposed(postgres_db: Database) -> None:
    connections = Connections(postgres_db)
    name = connections.name
    engine = create_engine(postgres_db.url, **_sync_connect(name))
    try:
        client = SignalsQueryClient(engine, table=postgres_db.table)
        with client:
            assert client.engine is engine
            client.get_signal_summary("p")
        client.close()
        assert connections() == 1  # still pooled by its owner
        assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        engine.dispose()
    assert connections.closed()


async def test_async_outermost_exit_and_reentry(postgres_db: Database) -> None:
    connections = Connections(postgres_db)
    name = connections.name
    client = AsyncSignalsQueryClient(
        postgres_db.async_url, table=postgres_db.table, **_async_connect(name)
    )
    assert connections() == 0
    async with client:
        engine = client.engine
        await client.get_signal_summary("p")
        async with client:
            await client.get_signal_summary("p")
        assert connections() == 1
    assert connections.closed()
    async with client:
        assert client.engine is engine
        await client.get_active_signals("p")
        await client.aclose()
        await client.aclose()
        assert connections.closed()
        await client.get_active_signals("p")
        assert connections() == 1
    assert connections.closed()
    await client.aclose()


async def test_async_engine_given_to_the_client_is_never_disposed(postgres_db: Database) -> None:
    connections = Connections(postgres_db)
    name = connections.name
    engine = create_async_engine(postgres_db.async_url, **_async_connect(name))
    try:
        async with AsyncSignalsQueryClient(engine, table=postgres_db.table) as client:
            await client.get_signal_summary("p")
        await client.aclose()
        assert connections() == 1
        assert engine.sync_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    assert connections.closed()


def test_sqlite_pool_is_released_on_the_outermost_exit(sqlite_db: Database) -> None:
    client = SignalsQueryClient(sqlite_db.url, table=sqlite_db.table, poolclass=QueuePool)
    with client:
        client.get_signal_summary("p")
        pool = client.engine.pool
        assert pool.checkedin() == 1  # type: ignore[attr-defined]
    # Disposal replaced the pool; the connections of the old one are closed.
    assert pool.checkedin() == 0  # type: ignore[attr-defined]
    with client:
        assert client.get_signal_summary("p")["total_signals"] == 0


def test_a_bad_uri_fails_when_the_client_is_made(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="not a database URI"):
        SignalsQueryClient("not a uri")
    with pytest.raises(ConfigurationError, match="not a database URI"):
        AsyncSignalsQueryClient("::")
