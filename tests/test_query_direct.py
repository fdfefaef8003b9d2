"""The query clients' direct driver path behaves like ``Connection.execute`` (postgres tier)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import MetaData, event, insert
from sqlalchemy.exc import DBAPIError, ProgrammingError

from sa_signals import AsyncSignalsQueryClient, SignalsQueryClient, signals_table

from .conftest import Database

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _seed(db: Database, count: int = 3) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            insert(db.table),
            [
                {
                    "provider": "p",
                    "symbol": "SPY",
                    "ts": NOW - timedelta(seconds=i),
                    "name": "n",
                    "value": float(i),
                }
                for i in range(count)
            ],
        )


def test_missing_table_raises_sqlalchemy_error_once(postgres_db: Database) -> None:
    missing = signals_table(MetaData(), "absent", schema=postgres_db.schema, timescale=None)
    with SignalsQueryClient(postgres_db.url, table=missing) as client:
        statements: list[str] = []
        with pytest.raises(ProgrammingError, match="absent"):
            client.get_signals_history("p", "SPY", start_ts=NOW - timedelta(hours=1))
        # The pool connection is healthy: the next call on an existing table works.
        event.listen(
            client.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        with pytest.raises(ProgrammingError):
            client.get_signal_metrics("p", "SPY", "n")
        # With a listener the ordinary path runs, and it sees exactly one attempt.
        assert len(statements) == 1


def test_listener_on_the_engine_sees_every_query(postgres_db: Database) -> None:
    _seed(postgres_db)
    with SignalsQueryClient(postgres_db.url, table=postgres_db.table) as client:
        direct = client.get_signals_history("p", "spy", start_ts=NOW - timedelta(hours=1))
        seen: list[str] = []
        event.listen(client.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        ordinary = client.get_signals_history("p", "spy", start_ts=NOW - timedelta(hours=1))
    assert direct == ordinary and len(direct) == 3
    assert len(seen) == 1 and "signals" in seen[0]
    assert all(row["ts"].utcoffset() == timedelta(0) for row in direct)


def test_killed_backend_raises_then_the_client_recovers(postgres_db: Database) -> None:
    _seed(postgres_db)
    with SignalsQueryClient(postgres_db.url, table=postgres_db.table) as client:
        assert client.get_signal_metrics("p", "SPY", "n")["signal_count"] == 3
        with client.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        postgres_db.sql("SELECT pg_terminate_backend(:pid)", pid=pid)
        with pytest.raises(DBAPIError) as excinfo:
            client.get_signal_metrics("p", "SPY", "n")
        assert excinfo.value.connection_invalidated
        assert client.get_signal_metrics("p", "SPY", "n")["signal_count"] == 3


async def test_async_missing_table_raises_sqlalchemy_error(postgres_db: Database) -> None:
    missing = signals_table(MetaData(), "absent", schema=postgres_db.schema, timescale=None)
    async with AsyncSignalsQueryClient(postgres_db.async_url, table=missing) as client:
        with pytest.raises(ProgrammingError, match="absent"):
            await client.get_signals_history("p", "SPY", start_ts=NOW - timedelta(hours=1))
