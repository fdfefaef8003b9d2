"""Real-database fixtures for every tier: ``sqlite``, ``postgres`` and ``timescale``.

Tests ask for ``db`` (all tiers), ``pg_db`` (PostgreSQL and TimescaleDB) or one tier's fixture;
each test gets isolated state: its own SQLite file or its own PostgreSQL schema. A tier that
cannot run here is skipped with the reason, unless ``SA_SIGNALS_REQUIRE_TIERS`` names it (CI
sets ``postgres,timescale``; ``CI=true`` implies it), in which case its tests fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from sa_signals import TimescaleOptions, signals_table

from .servers import Unavailable, postgres_server, timescale_server

TIERS = ("sqlite", "postgres", "timescale")
DEFAULT_TIMESCALE = TimescaleOptions()


def _required() -> set[str]:
    default = "postgres,timescale" if os.environ.get("CI", "").lower() == "true" else ""
    raw = os.environ.get("SA_SIGNALS_REQUIRE_TIERS", default)
    return {part.strip() for part in raw.split(",") if part.strip()}


def _unavailable(tier: str, reason: str) -> None:
    if tier in _required():
        pytest.fail(f"{tier} tier required (SA_SIGNALS_REQUIRE_TIERS) but unavailable: {reason}")
    pytest.skip(f"{tier} tier unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[URL]:
    """A PostgreSQL server URL (psycopg driver) for the whole session."""
    try:
        context = postgres_server()
        url = context.__enter__()
    except Unavailable as exc:
        _unavailable("postgres", str(exc))
        raise
    try:
        yield url
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def timescale_url() -> Iterator[URL]:
    """A TimescaleDB server URL (psycopg driver) for the whole session."""
    try:
        context = timescale_server()
        url = context.__enter__()
    except Unavailable as exc:
        _unavailable("timescale", str(exc))
        raise
    try:
        yield url
    finally:
        context.__exit__(None, None, None)


def asyncpg_url(url: URL) -> URL:
    """The same server for the asyncpg driver (``sslmode`` becomes asyncpg's ``ssl``)."""
    query = dict(url.query)
    sslmode = query.pop("sslmode", None)
    if sslmode is not None:
        query["ssl"] = sslmode
    return url.set(drivername="postgresql+asyncpg", query=query)


@dataclass
class Database:
    """One test's isolated database state."""

    tier: str
    url: URL
    async_url: URL
    engine: Engine
    schema: str | None
    metadata: MetaData = field(default_factory=MetaData)
    _table: Table | None = None

    @property
    def is_postgres(self) -> bool:
        return self.tier in ("postgres", "timescale")

    def make_table(
        self, name: str = "signals", timescale: TimescaleOptions | None = DEFAULT_TIMESCALE
    ) -> Table:
        """Define a signals table in this test's schema (not created yet)."""
        return signals_table(self.metadata, name, schema=self.schema, timescale=timescale)

    @property
    def table(self) -> Table:
        """A created signals table with the default options, in this test's schema."""
        if self._table is None:
            self._table = self.make_table()
            self.metadata.create_all(self.engine)
        return self._table

    def sql(self, statement: str, **params: object) -> list[tuple[object, ...]]:
        """Run ``statement`` in its own transaction and return all rows (if any)."""
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []


def _pg_database(url: URL, tier: str) -> Iterator[Database]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    # TimescaleDB-in-WASM serves one connection at a time: never keep idle connections.
    pool = {"poolclass": NullPool} if tier == "timescale" else {}
    engine = create_engine(
        url.update_query_dict({"options": f"-csearch_path={schema},public"}), **pool
    )
    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield Database(
            tier,
            engine.url,
            asyncpg_url(url),
            engine,
            schema,
        )
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _sqlite_database(tmp_path: Path) -> Iterator[Database]:
    path = tmp_path / "signals.sqlite"
    url = URL.create("sqlite+pysqlite", database=str(path))
    engine = create_engine(url)
    try:
        yield Database(
            "sqlite",
            url,
            URL.create("sqlite+aiosqlite", database=str(path)),
            engine,
            None,
        )
    finally:
        engine.dispose()


def _database(request: pytest.FixtureRequest, tier: str) -> Iterator[Database]:
    if tier == "sqlite":
        yield from _sqlite_database(request.getfixturevalue("tmp_path"))
    elif tier == "postgres":
        yield from _pg_database(request.getfixturevalue("postgres_url"), tier)
    else:
        yield from _pg_database(request.getfixturevalue("timescale_url"), tier)


def _params(*tiers: str) -> list[object]:
    return [pytest.param(tier, marks=getattr(pytest.mark, tier), id=tier) for tier in tiers]


@pytest.fixture(params=_params(*TIERS))
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on each tier in turn."""
    yield from _database(request, request.param)


@pytest.fixture(params=_params("postgres", "timescale"))
def pg_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on PostgreSQL and on TimescaleDB."""
    yield from _database(request, request.param)


@pytest.fixture(params=_params("postgres"))
def postgres_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on plain PostgreSQL (no timescaledb extension)."""
    yield from _database(request, request.param)


@pytest.fixture(params=_params("timescale"))
def timescale_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on TimescaleDB."""
    yield from _database(request, request.param)


@pytest.fixture(params=_params("sqlite"))
def sqlite_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on SQLite."""
    yield from _database(request, request.param)
