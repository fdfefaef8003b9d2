"""Shared builders for the write-path tests (no tests here)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Table, select
from sqlalchemy.pool import NullPool

from sa_signals import AsyncSignalsStoreClient, SignalsStoreClient

from .conftest import Database

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
#: Never reached: on PGlite COPY aborts the server, so the clients there always take the
#: small-batch path (a native TimescaleDB takes COPY like PostgreSQL).
NO_COPY = 10**9


def signal(i: int, *, value: float = 1.0, **changes: Any) -> SimpleNamespace:
    """The spec's ``SimpleNamespace`` signal number ``i`` (distinct key per ``i``)."""
    fields: dict[str, Any] = {
        "provider": "ibkr_primary",
        "symbol": "SPY",
        "ts": BASE + timedelta(seconds=i),
        "name": "vwap_cross_up",
        "value": value,
        "score": 0.85 if i % 2 == 0 else None,
        "metadata": {"window": "1m", "price": 425.15, "i": i} if i % 3 else None,
    }
    fields.update(changes)
    return SimpleNamespace(**fields)


def signals(n: int, *, start: int = 0, value: float = 1.0) -> list[SimpleNamespace]:
    return [signal(i, value=value) for i in range(start, start + n)]


def client_kwargs(db: Database, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"table": db.table, "registry": CollectorRegistry()}
    options.update(kwargs)
    if db.pglite:
        # One connection at a time on this server: never keep one idle in a pool; and no COPY
        # (PGlite's COPY FROM STDIN aborts the WebAssembly server).
        options.update(poolclass=NullPool, batch_threshold=NO_COPY)
    return options


def sync_client(db: Database, **kwargs: Any) -> SignalsStoreClient:
    return SignalsStoreClient(db.url, **client_kwargs(db, **kwargs))


def async_client(db: Database, **kwargs: Any) -> AsyncSignalsStoreClient:
    return AsyncSignalsStoreClient(db.async_url, **client_kwargs(db, **kwargs))


Key = tuple[str, str, datetime, str]


def stored(db: Database, table: Table | None = None) -> dict[Key, tuple[Any, ...]]:
    """Everything the table holds: key -> (value, score, metadata)."""
    table = db.table if table is None else table
    c = table.c
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(c.provider, c.symbol, c.ts, c.name, c.value, c.score, c.metadata)
        )
        return {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6]) for r in rows}


def expected(items: list[SimpleNamespace]) -> dict[Key, tuple[Any, ...]]:
    """What the table should hold after writing ``items`` (last occurrence wins)."""
    out: dict[Key, tuple[Any, ...]] = {}
    for s in items:
        out[(s.provider, s.symbol.upper(), s.ts, s.name)] = (s.value, s.score, s.metadata)
    return out


def row_versions(db: Database, table: Table | None = None) -> dict[Key, str]:
    """PostgreSQL: key -> xmin; an UPDATE always gives the row a new xmin.

    Compressed chunks have no xmin: on TimescaleDB call ``db.pause_jobs()`` before writing.
    """
    table = db.table if table is None else table
    name = f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'
    rows = db.sql(f"SELECT provider, symbol, ts, name, xmin::text FROM {name}")
    return {(r[0], r[1], r[2], r[3]): str(r[4]) for r in rows}  # type: ignore[misc]
