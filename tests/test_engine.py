"""The URIs clients accept: default drivers, async drivers on sync clients, unsupported backends."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from sa_signals import (
    AsyncSignalsStoreClient,
    ConfigurationError,
    SignalsQueryClient,
    SignalsStoreClient,
    signals_metadata,
)
from sa_signals.engine import normalize_url, sync_engine

from .conftest import Database

SIGNAL = {
    "provider": "ibkr_primary",
    "symbol": "SPY",
    "ts": datetime(2026, 1, 2, 14, 30, tzinfo=timezone.utc),
    "name": "vwap_cross_up",
    "value": 1.0,
}


@pytest.mark.parametrize(
    ("given", "sync", "asynchronous"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg", "postgresql+asyncpg"),
        ("postgresql+psycopg_async://u@h/db", "postgresql+psycopg", "postgresql+psycopg_async"),
        ("sqlite:///s.db", "sqlite", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///s.db", "sqlite", "sqlite+aiosqlite"),
    ],
)
def test_each_uri_gets_the_driver_of_its_client(given: str, sync: str, asynchronous: str) -> None:
    assert normalize_url(given).drivername == sync
    assert normalize_url(given, asynchronous=True).drivername == asynchronous


def test_ssl_options_follow_the_driver() -> None:
    assert normalize_url("postgresql://h/db?sslmode=require", asynchronous=True).query == {
        "ssl": "require"
    }
    assert normalize_url("postgresql+asyncpg://h/db?ssl=verify-full").query == {
        "sslmode": "verify-full"
    }
    assert normalize_url("postgresql+asyncpg://h/db?ssl=true").query == {"sslmode": "require"}


@pytest.mark.parametrize("uri", ["mysql://u@h/db", "mssql+pyodbc://u@dsn", "nosuch://x"])
def test_unsupported_backends_are_refused_naming_the_supported_ones(uri: str) -> None:
    backend = uri.split(":")[0].split("+")[0]
    message = (
        f"database backend {backend!r} is not supported; sa_signals runs on postgresql "
        "(plain or with TimescaleDB) and sqlite"
    )
    # Every client refuses it when it is made, before any connection is tried.
    for client in (SignalsStoreClient, AsyncSignalsStoreClient, SignalsQueryClient):
        with pytest.raises(ConfigurationError) as error:
            client(uri)
        assert str(error.value) == message


@pytest.mark.sqlite
def test_sync_clients_accept_an_aiosqlite_uri(tmp_path: Path) -> None:
    uri = f"sqlite+aiosqlite:///{tmp_path / 'signals.db'}"
    engine = sync_engine(uri)
    signals_metadata.create_all(engine)
    engine.dispose()
    with SignalsStoreClient(uri) as store:
        assert store.write_signals([SIGNAL]) == 1
    with SignalsQueryClient(uri) as query:
        assert [row["value"] for row in query.get_latest_signals("ibkr_primary", "SPY")] == [1.0]
    store.close()


def test_sync_clients_accept_an_asyncpg_uri(pg_db: Database) -> None:
    table = pg_db.table
    uri = pg_db.async_url
    with SignalsStoreClient(uri, table=table) as store:
        assert store.write_signals([SIGNAL]) == 1
        assert store.engine.dialect.driver == "psycopg"
    store.close()
    with SignalsQueryClient(uri, table=table) as query:
        assert [row["value"] for row in query.get_latest_signals("ibkr_primary", "SPY")] == [1.0]
