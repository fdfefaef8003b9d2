"""Every failure of a query call is a ``QueryError``, on every tier, for the four callers.

Callers: the sync and async clients and the sync and async repositories (on a Session /
AsyncSession). Failures: an unreachable server, a missing table, a killed backend, a statement
timeout and a pool timeout. The driver's own exception is the ``__cause__`` (SQLAlchemy's
``TimeoutError`` for the pool, which has no driver error), and bad arguments stay
``InvalidQueryError`` whatever the state of the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, QueuePool

from sa_signals import (
    AsyncSignalQueryRepository,
    AsyncSignalsQueryClient,
    InvalidQueryError,
    QueryError,
    SignalQueryRepository,
    SignalsQueryClient,
    signals_table,
)

from .conftest import Database

CALLERS = ("client", "async_client", "repository", "async_repository")


class Caller:
    """One of the four callers, opened on a URL with engine options; ``query()`` runs
    ``get_signal_metrics`` and returns the count (or raises)."""

    def __init__(
        self, kind: str, url: URL, async_url: URL, table: Table, options: dict[str, Any]
    ) -> None:
        self.kind = kind
        self.is_async = kind.startswith("async")
        self.url = async_url if self.is_async else url
        self.table = table
        self.options = options
        self.client: Any = None
        self.engine: Any = None
        self.session: Any = None
        self.repository: Any = None

    async def __aenter__(self) -> Caller:
        if self.kind == "client":
            self.client = SignalsQueryClient(self.url, table=self.table, **self.options)
            self.client.__enter__()
            self.engine = self.client.engine
        elif self.kind == "async_client":
            self.client = AsyncSignalsQueryClient(self.url, table=self.table, **self.options)
            await self.client.__aenter__()
            self.engine = self.client.engine
        elif self.kind == "repository":
            self.engine = create_engine(self.url, **self.options)
            self.session = Session(self.engine)
            self.repository = SignalQueryRepository(self.session, self.table)
        else:
            self.engine = create_async_engine(self.url, **self.options)
            self.session = AsyncSession(self.engine)
            self.repository = AsyncSignalQueryRepository(self.session, self.table)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "client":
            self.client.__exit__(None, None, None)
        elif self.kind == "async_client":
            await self.client.__aexit__(None, None, None)
        elif self.kind == "repository":
            self.session.close()
            self.engine.dispose()
        else:
            await self.session.close()
            await self.engine.dispose()

    async def query(self) -> int:
        target = self.client or self.repository
        if self.is_async:
            metrics = await target.get_signal_metrics("p", "SPY", "n")
        else:
            metrics = target.get_signal_metrics("p", "SPY", "n")
        return int(metrics["signal_count"])

    async def after_failure(self) -> None:
        """What the owner of a session does after a failed statement: roll back."""
        if self.kind == "repository":
            self.session.rollback()
        elif self.kind == "async_repository":
            await self.session.rollback()

    @asynccontextmanager
    async def holding_a_connection(self) -> AsyncIterator[None]:
        """Keep one connection of the caller's engine checked out."""
        if self.is_async:
            engine: AsyncEngine = self.engine
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
                yield
        else:
            sync: Engine = self.engine
            with sync.connect() as connection:
                connection.execute(text("SELECT 1"))
                yield


def _pool(db: Database) -> dict[str, Any]:
    # TimescaleDB-in-WASM serves one connection at a time: no idle pooled connections there.
    return {"poolclass": NullPool} if db.tier == "timescale" else {}


def _single_connection_server(db: Database) -> bool:
    if not db.is_postgres:
        return False
    version = db.sql("SELECT version()")[0][0]
    return "emscripten" in str(version).lower() or "wasm" in str(version).lower()


def _assert_query_error(error: QueryError, cause_types: tuple[type[BaseException], ...]) -> None:
    cause = error.__cause__
    assert isinstance(cause, cause_types), repr(cause)
    if not isinstance(cause, PoolTimeoutError):
        # The driver's own error, neither SQLAlchemy's wrapper nor its asyncio translation.
        assert not isinstance(cause, SQLAlchemyError), repr(cause)
        assert not type(cause).__module__.startswith("sqlalchemy"), repr(cause)


def _driver_errors() -> tuple[type[BaseException], ...]:
    return (psycopg.Error, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError)


# ---------------------------------------------------------------- unreachable server


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
async def test_unreachable_server_raises_query_error(
    caller: str, backend: str, tmp_path: Any
) -> None:
    table = signals_table(MetaData(), "signals", timescale=None)
    if backend == "postgresql":
        # Port 1: nothing listens there, the connection is refused.
        url = URL.create("postgresql+psycopg", "postgres", host="127.0.0.1", port=1, database="x")
        async_url = url.set(drivername="postgresql+asyncpg")
        causes: tuple[type[BaseException], ...] = (psycopg.OperationalError, OSError)
        options: dict[str, Any] = {}
    else:
        path = str(tmp_path / "no" / "such" / "directory" / "signals.db")
        url = URL.create("sqlite+pysqlite", database=path)
        async_url = URL.create("sqlite+aiosqlite", database=path)
        causes = (sqlite3.OperationalError,)
        options = {"poolclass": NullPool}
    async with Caller(caller, url, async_url, table, options) as runner:
        with pytest.raises(QueryError) as excinfo:
            await runner.query()
    _assert_query_error(excinfo.value, causes)
    assert "failed" in str(excinfo.value)
    await _aiosqlite_workers_stopped()


async def _aiosqlite_workers_stopped() -> None:
    # aiosqlite stops the worker thread of a connection that failed to open in the background
    # and hands the result to the event loop: let it finish before the test's loop closes.
    deadline = time.monotonic() + 10
    while any("_connection_worker_thread" in t.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "aiosqlite worker thread still running"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("caller", ["client", "async_client"])
async def test_bad_arguments_stay_invalid_query_error_on_an_unreachable_server(
    caller: str,
) -> None:
    url = URL.create("postgresql+psycopg", "postgres", host="127.0.0.1", port=1, database="x")
    table = signals_table(MetaData(), "signals", timescale=None)
    async with Caller(caller, url, url.set(drivername="postgresql+asyncpg"), table, {}) as c:
        client = c.client
        calls = [
            lambda: client.get_latest_signals("p", "SPY", limit=0),
            lambda: client.get_signal_metrics("p", "SPY", "n", hours_back=-1),
            lambda: client.get_signal_buckets("p", "SPY", "n", timedelta(0)),
        ]
        for call in calls:
            with pytest.raises(InvalidQueryError):
                result = call()
                if c.is_async:
                    await result


# ---------------------------------------------------------------- missing table


@pytest.mark.parametrize("caller", CALLERS)
async def test_missing_table_raises_query_error(db: Database, caller: str) -> None:
    missing = signals_table(MetaData(), "absent", schema=db.schema, timescale=None)
    async with Caller(caller, db.url, db.async_url, missing, _pool(db)) as runner:
        with pytest.raises(QueryError, match="absent") as excinfo:
            await runner.query()
        await runner.after_failure()
        # The caller stays usable: the next call fails the same way, nothing worse.
        with pytest.raises(QueryError, match="absent"):
            await runner.query()
    _assert_query_error(excinfo.value, _driver_errors())


async def test_missing_table_in_get_signal_buckets_and_storage_stats(db: Database) -> None:
    missing = signals_table(MetaData(), "absent", schema=db.schema, timescale=None)
    with SignalsQueryClient(db.url, table=missing, **_pool(db)) as client:
        with pytest.raises(QueryError, match="absent"):
            client.get_signal_buckets("p", "SPY", "n", timedelta(minutes=5))
        with pytest.raises(QueryError):
            client.get_latest_signals("p", "SPY", signal_names=["a", "b"])
    async with AsyncSignalsQueryClient(db.async_url, table=missing, **_pool(db)) as aclient:
        with pytest.raises(QueryError, match="absent"):
            await aclient.get_signal_buckets("p", "SPY", "n", hours_back=2)


# ---------------------------------------------------------------- killed backend


@pytest.mark.parametrize("caller", CALLERS)
async def test_killed_backend_raises_query_error_then_recovers(
    pg_db: Database, caller: str
) -> None:
    db = pg_db
    if _single_connection_server(db):
        pytest.skip("the server serves one connection at a time: no backend to kill alongside")
    db.table  # noqa: B018 - creates it
    name = f"victim_{uuid.uuid4().hex[:8]}"
    connect = (
        {"server_settings": {"application_name": name}}
        if caller.startswith("async")
        else {"application_name": name}
    )
    async with Caller(caller, db.url, db.async_url, db.table, {"connect_args": connect}) as c:
        assert await c.query() == 0
        killed = db.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :n",
            n=name,
        )
        assert killed == [(True,)]
        with pytest.raises(QueryError) as excinfo:
            await c.query()
        await c.after_failure()
        assert await c.query() == 0
    _assert_query_error(excinfo.value, _driver_errors())


# ---------------------------------------------------------------- statement timeout


@contextmanager
def _table_locked(db: Database) -> Iterator[None]:
    """Another connection holds a lock that blocks every read of the table."""
    with db.engine.connect() as holder:
        if db.is_postgres:
            holder.execute(text(f'LOCK TABLE "{db.schema}"."signals" IN ACCESS EXCLUSIVE MODE'))
        else:
            holder.exec_driver_sql("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.rollback()


def _timeout_options(db: Database, is_async: bool) -> dict[str, Any]:
    if not db.is_postgres:
        return {"connect_args": {"timeout": 0.05}, "poolclass": NullPool}
    if is_async:
        return {"connect_args": {"server_settings": {"statement_timeout": "200"}}}
    return {"connect_args": {"options": "-c statement_timeout=200"}}


@pytest.mark.parametrize("caller", CALLERS)
async def test_statement_timeout_raises_query_error(db: Database, caller: str) -> None:
    if _single_connection_server(db):
        pytest.skip("the server serves one connection at a time: no lock can be held alongside")
    db.table  # noqa: B018 - creates it
    options = _timeout_options(db, caller.startswith("async"))
    async with Caller(caller, db.url, db.async_url, db.table, options) as runner:
        with _table_locked(db), pytest.raises(QueryError) as excinfo:
            await runner.query()
        await runner.after_failure()
        assert await runner.query() == 0
    reason = "statement timeout" if db.is_postgres else "database is locked"
    assert reason in str(excinfo.value)
    _assert_query_error(excinfo.value, _driver_errors())


# ---------------------------------------------------------------- pool timeout


@pytest.mark.parametrize("caller", CALLERS)
async def test_pool_timeout_raises_query_error(db: Database, caller: str) -> None:
    db.table  # noqa: B018 - creates it
    pool = AsyncAdaptedQueuePool if caller.startswith("async") else QueuePool
    options = {"poolclass": pool, "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.1}
    async with Caller(caller, db.url, db.async_url, db.table, options) as runner:
        async with runner.holding_a_connection():
            with pytest.raises(QueryError, match="timed out") as excinfo:
                await runner.query()
            await runner.after_failure()
        assert await runner.query() == 0
    _assert_query_error(excinfo.value, (PoolTimeoutError,))
