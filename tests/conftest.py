"""Real-database fixtures for every tier: ``sqlite``, ``postgres``, ``timescale`` and ``citus``.

Tests ask for ``db`` (all tiers), ``pg_db`` (PostgreSQL and TimescaleDB) or one tier's fixture;
each test gets isolated state: its own SQLite file or its own PostgreSQL schema. A tier that
cannot run here is skipped with the reason, unless ``SA_SIGNALS_REQUIRE_TIERS`` names it (CI
sets ``postgres,timescale``; ``CI=true`` implies it), in which case its tests fail.

The TimescaleDB tier is PGlite by default and a native server with
``SA_SIGNALS_TEST_TIMESCALE_URL``. The Citus tier (``citus_db``, only for the tests written for
it) is the coordinator named by ``SA_SIGNALS_TEST_CITUS_URL``; each test gets its own schema there
(Citus propagates schemas to the workers). On a native server the policies run in the background: a
test that needs the table to stay as it wrote it calls :meth:`Database.pause_jobs` before
writing; a test that expects a job to act runs it (:meth:`Database.run_job`) or waits for its
run (:meth:`Database.wait_for_job`), never sleeps. ``native_timescale_db`` skips on PGlite.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, MetaData, Table, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from sa_signals import DistributionOptions, TimescaleOptions, signals_table

from .servers import (
    TimescaleServer,
    Unavailable,
    citus_server,
    postgres_server,
    timescale_server,
)

TIERS = ("sqlite", "postgres", "timescale")
DEFAULT_TIMESCALE = TimescaleOptions()
#: How long a test waits for a background job before failing (a loaded 2-core machine).
JOB_DEADLINE = 120.0


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
def citus_url() -> URL:
    """The Citus coordinator's URL (psycopg driver) for the whole session."""
    try:
        url = citus_server()
    except Unavailable as exc:
        _unavailable("citus", str(exc))
        raise
    with create_engine(url, poolclass=NullPool).connect() as conn:
        workers = conn.execute(
            text(
                "SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND isactive "
                "AND groupid <> 0"
            )
        ).scalar_one()
    if not workers:
        _unavailable("citus", f"the Citus coordinator at {url} has no active worker")
    return url


@pytest.fixture(scope="session")
def timescale() -> Iterator[TimescaleServer]:
    """The TimescaleDB server (native or PGlite) for the whole session."""
    try:
        context = timescale_server()
        server = context.__enter__()
    except Unavailable as exc:
        _unavailable("timescale", str(exc))
        raise
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture(scope="session")
def timescale_url(timescale: TimescaleServer) -> URL:
    """A TimescaleDB server URL (psycopg driver) for the whole session."""
    return timescale.url


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
    #: TimescaleDB in WebAssembly: one connection, no COPY FROM STDIN, no background workers.
    pglite: bool = False
    metadata: MetaData = field(default_factory=MetaData)
    _table: Table | None = None

    @property
    def is_postgres(self) -> bool:
        return self.tier in ("postgres", "timescale", "citus")

    def make_table(
        self,
        name: str = "signals",
        timescale: TimescaleOptions | None = DEFAULT_TIMESCALE,
        distribution: DistributionOptions | None = None,
    ) -> Table:
        """Define a signals table in this test's schema (not created yet)."""
        return signals_table(
            self.metadata, name, schema=self.schema, timescale=timescale, distribution=distribution
        )

    @property
    def table(self) -> Table:
        """A created signals table with the default options, in this test's schema (on Citus:
        a plain table distributed by symbol)."""
        if self._table is None:
            if self.tier == "citus":
                self._table = self.make_table(timescale=None, distribution=DistributionOptions())
            else:
                self._table = self.make_table()
            self.metadata.create_all(self.engine)
        return self._table

    def sql(self, statement: str, **params: object) -> list[tuple[object, ...]]:
        """Run ``statement`` in its own transaction and return all rows (if any)."""
        with self.engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(row) for row in result] if result.returns_rows else []

    # -- TimescaleDB background jobs -------------------------------------------------------

    def job_ids(self, table: Table | None = None) -> list[int]:
        """The background jobs (policies) of ``table`` (default: :attr:`table`)."""
        table = self.table if table is None else table
        with self.engine.connect() as conn:
            return self._job_ids(conn, table)

    @staticmethod
    def _job_ids(conn: Connection, table: Table) -> list[int]:
        rows = conn.execute(
            text(
                "SELECT job_id FROM timescaledb_information.jobs "
                "WHERE hypertable_schema = :s AND hypertable_name = :n ORDER BY job_id"
            ),
            {"s": table.schema, "n": table.name},
        )
        return [int(r[0]) for r in rows]

    def pause_jobs(self, table: Table | None = None) -> list[int]:
        """Unschedule the background jobs of ``table`` (default: :attr:`table`); a no-op off
        TimescaleDB. Returns their ids.

        Called before the default table exists, it creates it and pauses its jobs in the same
        transaction: the scheduler never sees them scheduled, so none ever runs. Otherwise it
        also waits until none of them is running; call it before writing.
        """
        if self.tier != "timescale":
            return []
        if table is None and self._table is None:
            self._table = self.make_table()
            with self.engine.begin() as conn:
                self.metadata.create_all(conn)
                jobs = self._job_ids(conn, self._table)
                for job in jobs:
                    conn.execute(text("SELECT alter_job(:job, scheduled => false)"), {"job": job})
            return jobs
        jobs = self.job_ids(table)
        for job in jobs:
            self.sql("SELECT alter_job(:job, scheduled => false)", job=job)
        self.wait_until(
            lambda: not any(self._job_status(job) == "Running" for job in jobs),
            f"jobs {jobs} still running",
        )
        return jobs

    def run_job(self, job_id: int) -> None:
        """``CALL run_job(job_id)`` in this process, outside a transaction block (a policy
        commits between chunks)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("CALL run_job(:job)"), {"job": job_id})

    def wait_for_job(self, job_id: int, runs: int = 1) -> tuple[object, ...]:
        """Wait until the scheduler has finished ``runs`` runs of ``job_id`` (succeeded or
        failed); return its ``(job_status, finished runs, failures, last_run_status)``."""

        def finished() -> bool:
            row = self._job_stats(job_id)
            if row is None or row[0] == "Running":
                return False
            # total_runs counts a run from its start; successes + failures count it at its end.
            return int(row[1] or 0) >= runs  # type: ignore[call-overload]

        self.wait_until(
            finished, f"job {job_id} did not finish {runs} run(s)", explain=self._worker_slots
        )
        stats = self._job_stats(job_id)
        assert stats is not None
        return stats

    @staticmethod
    def wait_until(
        condition: Callable[[], bool], what: str, explain: Callable[[], str] | None = None
    ) -> None:
        """Poll ``condition`` until it holds; fail after :data:`JOB_DEADLINE` seconds, with
        what ``explain`` says about the server then."""
        deadline = time.monotonic() + JOB_DEADLINE
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"after {JOB_DEADLINE:.0f} s: {what}" + (explain() if explain else ""))
            time.sleep(0.05)

    def _worker_slots(self) -> str:
        """The server's background workers in use: each database with the timescaledb
        extension keeps a scheduler for good, and a job cannot start once they are all taken."""
        with self.engine.connect() as conn:
            used, limit = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE backend_type LIKE 'TimescaleDB%'), "
                    "least(current_setting('timescaledb.max_background_workers')::int, "
                    "current_setting('max_worker_processes')::int) "
                    "FROM pg_stat_activity"
                )
            ).one()
        return (
            f" (TimescaleDB background workers in use: {used} of {limit}; when all are taken "
            "by the schedulers of databases with the extension, jobs cannot start: drop unused "
            "databases)"
        )

    def _job_stats(self, job_id: int) -> tuple[object, ...] | None:
        rows = self.sql(
            "SELECT job_status, COALESCE(total_successes, 0) + COALESCE(total_failures, 0), "
            "total_failures, last_run_status "
            "FROM timescaledb_information.job_stats WHERE job_id = :job",
            job=job_id,
        )
        return rows[0] if rows else None

    def _job_status(self, job_id: int) -> str | None:
        row = self._job_stats(job_id)
        return None if row is None else str(row[0])

    def compress_chunks(self, table: Table | None = None) -> int:
        """``compress_chunk`` every chunk of ``table`` now; how many chunks it has."""
        table = self.table if table is None else table
        (count,) = self.sql(
            "SELECT count(compress_chunk(c)) FROM show_chunks(CAST(:t AS regclass)) AS c",
            t=f'"{table.schema}"."{table.name}"',
        )[0]
        return int(count)  # type: ignore[call-overload]


def _pg_database(url: URL, tier: str, pglite: bool = False) -> Iterator[Database]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    # TimescaleDB-in-WASM serves one connection at a time: never keep idle connections.
    pool = {"poolclass": NullPool} if pglite else {}
    engine = create_engine(
        url.update_query_dict({"options": f"-csearch_path={schema},public"}), **pool
    )
    admin = create_engine(url, poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    # PGlite ignores the search_path startup option: unqualified names land in public there.
    public_before = _public_relations(admin) if pglite else set()
    database = Database(tier, engine.url, asyncpg_url(url), engine, schema, pglite)
    try:
        yield database
    finally:
        if tier == "timescale" and not pglite:
            _quiet_schema(database)
        if pglite:
            _drop_leaked(admin, public_before)
        engine.dispose()
        for attempt in range(5):
            try:
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                break
            except DBAPIError as exc:
                # A job started by the scheduler between the pause and the drop.
                if attempt == 4 or getattr(exc.orig, "sqlstate", None) != "40P01":
                    raise
        admin.dispose()


def _public_relations(admin: Engine) -> set[tuple[str, str]]:
    with admin.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
            )
        )
        return {(str(r[0]), str(r[1])) for r in rows}


def _drop_leaked(admin: Engine, before: set[tuple[str, str]]) -> None:
    """Drop what a test left in ``public`` on PGlite, so the next test starts clean."""
    # Tables first: CASCADE takes their views and continuous aggregates along.
    leaked = sorted(_public_relations(admin) - before, key=lambda r: r[1] not in ("r", "p"))
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW"}
    for name, kind in leaked:
        try:
            with admin.begin() as conn:
                conn.execute(text(f'DROP {kinds[kind]} IF EXISTS public."{name}" CASCADE'))
        except DBAPIError:
            pass  # gone with an earlier CASCADE, or a view TimescaleDB drops with its table


def _quiet_schema(database: Database) -> None:
    """Stop the schema's background jobs (policies, refreshes) and let running ones finish:
    a job working on a table while DROP SCHEMA takes its locks deadlocks with it."""
    rows = database.sql(
        "SELECT job_id FROM timescaledb_information.jobs WHERE hypertable_schema = :s",
        s=database.schema,
    )
    jobs = [int(r[0]) for r in rows]  # type: ignore[call-overload]
    for job in jobs:
        database.sql("SELECT alter_job(:job, scheduled => false)", job=job)
    database.wait_until(
        lambda: not any(database._job_status(job) == "Running" for job in jobs),
        f"jobs {jobs} of schema {database.schema} still running at teardown",
    )


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
    elif tier == "citus":
        yield from _pg_database(request.getfixturevalue("citus_url"), tier)
    else:
        server: TimescaleServer = request.getfixturevalue("timescale")
        server.check()
        yield from _pg_database(server.url, tier, server.pglite)


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


@pytest.fixture(params=_params("timescale"))
def native_timescale_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on a native TimescaleDB server (skipped on PGlite, with the reason)."""
    server: TimescaleServer = request.getfixturevalue("timescale")
    if server.pglite:
        # Fails instead when SA_SIGNALS_REQUIRE_TIERS names "native" (tests/native-tier does).
        _unavailable(
            "native",
            "needs a native TimescaleDB (SA_SIGNALS_TEST_TIMESCALE_URL): PGlite serves one "
            "connection, has no COPY FROM STDIN and no background workers",
        )
    yield from _database(request, request.param)


@pytest.fixture(params=_params("citus"))
def citus_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on the Citus coordinator: a schema of its own (on every node)."""
    yield from _database(request, request.param)


@pytest.fixture(params=_params("sqlite"))
def sqlite_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """Isolated state on SQLite."""
    yield from _database(request, request.param)
