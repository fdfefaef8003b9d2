"""Concurrent writers of overlapping keys never deadlock, whatever the order they send them in.

Each call is ONE merge that locks its rows in one global order, so eight writers sending the
same 2,000 keys in eight different orders, with the default ``batch_size`` (two batches per
call), all succeed at the first attempt. Runs in a database of its own, so the server's
deadlock counter (``pg_stat_database.deadlocks``) counts these writers only.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, MetaData, Table, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from sa_signals import AsyncSignalsStoreClient, SignalsStoreClient, signals_table

from .conftest import asyncpg_url
from .test_write_helpers import BASE

pytestmark = pytest.mark.postgres

WRITERS = 8
CALLS = 8
KEYS = 2000
PROVIDERS = ("alpha", "Beta", "émile", "Zulu")  # sorts differently in C and in en_US collations


@pytest.fixture
def private_database(postgres_url: URL) -> Iterator[tuple[URL, Engine, Table]]:
    """A database of its own (URL, engine, created signals table); dropped afterwards."""
    name = f"sa_signals_deadlock_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_url.set(database=name)
    engine = create_engine(url, poolclass=NullPool)
    table = signals_table(MetaData(), timescale=None)
    table.metadata.create_all(engine)
    try:
        yield url, engine, table
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _keys() -> list[tuple[str, int]]:
    # Four providers x 500 instants: the write order (ts first) differs from the key's order.
    return [(provider, i) for provider in PROVIDERS for i in range(KEYS // len(PROVIDERS))]


def _calls(writer: int) -> list[list[SimpleNamespace]]:
    rng = random.Random(writer)
    calls = []
    for _ in range(CALLS):
        keys = _keys()
        rng.shuffle(keys)
        calls.append(
            [
                SimpleNamespace(
                    provider=provider,
                    symbol="SPY",
                    ts=BASE + timedelta(seconds=i),
                    name="n",
                    value=float(writer),
                    metadata={"writer": writer},
                )
                for provider, i in keys
            ]
        )
    return calls


def _deadlocks(engine: Engine) -> int:
    # A fresh connection: a stats snapshot taken earlier in a session would be reused.
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def _wait_for_backends_to_exit(
    engine: Engine, application: str, failures: list[BaseException]
) -> None:
    # Backends report their statistics when they exit: wait for that (bounded, so that a
    # client that kept its connections fails here instead of hanging). Autocommit: within one
    # transaction PostgreSQL answers pg_stat_activity from the snapshot taken at its first read,
    # so a poll that began while the backends were exiting saw them "open" forever.
    deadline = time.monotonic() + 60
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while True:
            states = conn.execute(
                text(
                    "SELECT state, wait_event_type, wait_event, left(query, 60) "
                    "FROM pg_stat_activity WHERE application_name = :app"
                ),
                {"app": application},
            ).all()
            if not states:
                return
            if time.monotonic() > deadline:
                break
            conn.execute(text("SELECT pg_sleep(0.05)"))
    # A failed call's exception keeps its connection alive: show the failures too.
    raise AssertionError(
        f"{len(states)} connections of the writers are still open after 60 s: {states}; "
        f"failed calls: {failures[:3]!r}"
    )


def _held(engine: Engine) -> dict[tuple[str, object], float]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT provider, ts, value FROM signals")).all()
    return {(row[0], row[1]): float(row[2]) for row in rows}


def _check(engine: Engine, failures: list[BaseException], deadlocks_before: int) -> None:
    assert failures == []
    assert _deadlocks(engine) - deadlocks_before == 0
    held = _held(engine)
    assert len(held) == KEYS
    assert set(held.values()) <= set(map(float, range(WRITERS)))


def test_threads_sharing_one_client_never_deadlock(
    private_database: tuple[URL, Engine, Table],
) -> None:
    url, engine, table = private_database
    application = f"writers-{uuid.uuid4().hex[:8]}"
    before = _deadlocks(engine)
    client = SignalsStoreClient(
        url,
        table=table,
        registry=CollectorRegistry(),
        max_attempts=1,  # a deadlock would be a failed call, not a silent retry
        pool_size=WRITERS,
        connect_args={"application_name": application, "options": "-c deadlock_timeout=50"},
    )
    work = {writer: _calls(writer) for writer in range(WRITERS)}
    failures: list[BaseException] = []
    barrier = threading.Barrier(WRITERS)

    def run(writer: int) -> None:
        barrier.wait()
        for signals in work[writer]:
            try:
                assert client.write_signals(signals) == KEYS  # default batch_size
            except BaseException as exc:
                failures.append(exc)

    with client:
        threads = [threading.Thread(target=run, args=(writer,)) for writer in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    client.close()
    _wait_for_backends_to_exit(engine, application, failures)
    _check(engine, failures, before)


async def test_gathered_calls_on_one_async_client_never_deadlock(
    private_database: tuple[URL, Engine, Table],
) -> None:
    url, engine, table = private_database
    application = f"writers-{uuid.uuid4().hex[:8]}"
    before = _deadlocks(engine)
    client = AsyncSignalsStoreClient(
        asyncpg_url(url),
        table=table,
        registry=CollectorRegistry(),
        max_attempts=1,
        pool_size=WRITERS,
        connect_args={
            "server_settings": {"application_name": application, "deadlock_timeout": "50"}
        },
    )
    work = {writer: _calls(writer) for writer in range(WRITERS)}
    failures: list[BaseException] = []

    async def run(writer: int) -> None:
        for signals in work[writer]:
            try:
                assert await client.write_signals(signals) == KEYS
            except BaseException as exc:
                failures.append(exc)

    async with client:
        await asyncio.gather(*(run(writer) for writer in range(WRITERS)))
    await client.aclose()
    _wait_for_backends_to_exit(engine, application, failures)
    _check(engine, failures, before)
