"""The ``sa-signals`` CLI, driven as a subprocess (``python -m sa_signals``) on every tier.

Off a terminal (pipes, as here by default) the output is plain text without escape codes; on a
terminal (a pseudo-terminal from :mod:`pty`) it uses rich: tables with right-aligned numbers and
progress bars with rate and ETA. Without rich installed the CLI still works, in plain text.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import sqlite3
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from shlex import quote

import pytest
from sqlalchemy import create_engine, insert, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

import sa_signals
from sa_signals import signals_table

from .bare_env import make_env
from .conftest import Database

PYTHON = Path(sys.executable)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def cli(
    *args: str, cwd: Path, timeout: float = 180, python: Path = PYTHON
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "sa_signals", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, cwd: Path) -> str:
    run = cli(*args, cwd=cwd)
    assert run.returncode == 0, run.stderr
    return run.stdout


def on_terminal(
    *args: str, cwd: Path, python: Path = PYTHON, timeout: float = 180
) -> tuple[int, str]:
    """Run the CLI with stdin, stdout and stderr on a 160x50 pseudo-terminal: (status, screen).

    The screen text has escape codes removed and, per line, only what the last carriage return
    left visible (the final state of a progress bar).
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES"}
    }
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(
        [str(python), "-m", "sa_signals", *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        status = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    lines = _ANSI.sub("", raw).replace("\r\n", "\n").split("\n")
    return status, "\n".join(line.split("\r")[-1] for line in lines)


def url_of(db: Database) -> str:
    return db.url.render_as_string(hide_password=False)


def writes(stdout: str) -> dict[str, dict[str, int]]:
    """The demo's plain write table: {pass: {received, inserted, updated, unchanged}}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("writes ("))
    header = lines[start + 1].split()
    out = {}
    for line in lines[start + 3 : start + 5]:
        cells = dict(zip(header, line.split(), strict=True))
        out[cells["pass"]] = {
            key: int(cells[key]) for key in ("received", "inserted", "updated", "unchanged")
        }
    return out


def index_scans(stdout: str) -> dict[str, int | None]:
    """The plain ``indexes`` table of ``status`` / ``demo``: {index name: scans}."""
    lines = stdout.splitlines()
    start = len(lines) - 1 - lines[::-1].index("indexes")
    scans: dict[str, int | None] = {}
    for line in lines[start + 3 :]:
        if not line.startswith("  ") or not line.strip():
            break
        name, *_, count = line.split()
        scans[name] = None if count == "-" else int(count)
    return scans


def rows_in_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM signals").fetchone()
    return int(count)


def _one_line_error(run: subprocess.CompletedProcess[str], fragment: str) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("sa-signals: error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in run.stderr
    return lines[0]


@pytest.fixture(scope="session")
def python_without_rich(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An environment where rich is not installed (nor any other optional dependency)."""
    return make_env(tmp_path_factory.mktemp("no_rich") / "venv")


# -- help, version and errors ---------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["demo"], ["init"], ["status"]], ids=str)
def test_help_on_every_command(command: list[str], tmp_path: Path) -> None:
    stdout = ok(*command, "--help", cwd=tmp_path)
    assert stdout.startswith("usage: sa-signals")
    assert "--debug" in stdout


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    assert ok("--version", cwd=tmp_path) == f"sa-signals {sa_signals.__version__}\n"


@pytest.mark.sqlite
def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    _one_line_error(cli("status", "--url", "not a url", cwd=tmp_path), "not a database URI")
    _one_line_error(
        cli("status", "--url", "postgresql://nobody@127.0.0.1:1/none", cwd=tmp_path),
        "cannot connect to postgresql://nobody@127.0.0.1:1/none",
    )
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    cli("init", "--url", empty, "--table", "other", cwd=tmp_path)
    missing = _one_line_error(
        cli("status", "--url", empty, cwd=tmp_path), "table 'signals' does not exist"
    )
    assert missing.endswith(f"create it with: sa-signals init --url {quote(empty)}")
    _one_line_error(cli("demo", "--count", "0", cwd=tmp_path), "--count must be at least 1")

    debug = cli("status", "--url", empty, "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "url", ["mysql://u@localhost/db", "mssql+pyodbc://u@dsn", "oracle://u@h/db", "nosuch://x/y"]
)
def test_unsupported_backends_are_named_in_one_line(url: str, tmp_path: Path) -> None:
    backend = url.split(":")[0].split("+")[0]
    line = _one_line_error(
        cli("status", "--url", url, cwd=tmp_path),
        f"database backend {backend!r} is not supported",
    )
    assert line.endswith("sa_signals runs on postgresql (plain or with TimescaleDB) and sqlite")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    run = cli("init", cwd=tmp_path)  # --url is required
    assert run.returncode == 2 and "--url" in run.stderr


# -- demo -----------------------------------------------------------------------------------


@pytest.mark.sqlite
def test_demo_twice_on_the_embedded_default_inserts_nothing_the_second_time(
    tmp_path: Path,
) -> None:
    day = datetime.now(timezone.utc).date()
    first = ok("demo", "--count", "600", cwd=tmp_path)
    second = ok("demo", "--count", "600", cwd=tmp_path)
    if datetime.now(timezone.utc).date() != day:
        pytest.skip("the UTC day changed between the runs: the demo's keys moved with it")
    database = tmp_path / "sa_signals_demo.sqlite"
    assert rows_in_sqlite(database) == 600

    assert writes(first) == {
        "write": {"received": 600, "inserted": 600, "updated": 0, "unchanged": 0},
        "replay": {"received": 600, "inserted": 0, "updated": 0, "unchanged": 600},
    }
    assert writes(second)["write"] == {
        "received": 600,
        "inserted": 0,
        "updated": 0,
        "unchanged": 600,
    }
    for title in (
        "get_latest_signals(",
        "get_signals_history(",
        "get_signal_metrics(",
        "get_active_signals(",
        "get_signal_summary(",
        "store_signals_written_total",
        "store_signals_write_latency_seconds_count",
        "rows            600 (exact)",
    ):
        assert title in first
    assert "(no rows)" not in first


@pytest.mark.sqlite
def test_demo_off_a_terminal_is_plain_text_with_one_summary_line_per_pass(tmp_path: Path) -> None:
    run = cli("demo", "--count", "1500", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "\x1b" not in run.stdout + run.stderr
    summary = re.compile(r"^(write|replay): 1,500/1,500 signals in [\d.]+ s \([\d,]+ signals/s\)$")
    lines = run.stderr.splitlines()
    assert [summary.match(line) is not None for line in lines] == [True, True], run.stderr
    # Plain tables: header, dashed rule, numbers right-aligned under their header.
    table = run.stdout.splitlines()
    header = next(line for line in table if line.startswith("  pass "))
    replay = next(line for line in table if line.startswith("  replay "))
    assert replay.index("1500") + len("1500") == header.index("received") + len("received")


@pytest.mark.sqlite
def test_demo_on_a_terminal_shows_progress_with_rate_and_eta_and_rich_tables(
    tmp_path: Path,
) -> None:
    status, screen = on_terminal("demo", "--count", "2400", cwd=tmp_path)
    assert status == 0, screen
    for label in ("write", "replay"):
        bar = re.search(
            rf"^{label} .*2400/2400 ([\d,]+) signals/s eta \d+:\d\d:\d\d$", screen, re.M
        )
        assert bar is not None, screen
        assert int(bar.group(1).replace(",", "")) > 0
    lines = screen.splitlines()
    header = next(line for line in lines if "received" in line and "pass" in line)
    replay = next(line for line in lines if "replay" in line and "│" in line)
    assert header.startswith("┃") and replay.startswith("│")  # rich's box drawing
    # Numbers are right-aligned: "2400" ends where the "received" header ends.
    assert replay.index("2400") + len("2400") == header.index("received") + len("received")
    assert rows_in_sqlite(tmp_path / "sa_signals_demo.sqlite") == 2400


@pytest.mark.sqlite
def test_without_rich_the_cli_works_in_plain_text_and_names_the_extra_on_a_terminal(
    python_without_rich: Path, tmp_path: Path
) -> None:
    piped = cli("demo", "--count", "300", cwd=tmp_path, python=python_without_rich)
    assert piped.returncode == 0, piped.stderr
    assert writes(piped.stdout)["write"]["received"] == 300
    assert "rich" not in piped.stderr  # no hint where nobody reads it as a terminal

    status, screen = on_terminal("demo", "--count", "300", cwd=tmp_path, python=python_without_rich)
    assert status == 0, screen
    assert screen.startswith(
        "sa-signals: note: rich is not installed; install it with: pip install 'sa_signals[cli]'"
    )
    assert re.search(r"^write: 300/300 signals in [\d.]+ s \([\d,]+ signals/s\)$", screen, re.M)
    assert "rows            300 (exact)" in screen and "┃" not in screen


def test_demo_on_postgresql_uses_copy_and_is_idempotent(postgres_db: Database) -> None:
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    stdout = ok("demo", "--url", url, "--schema", schema, "--count", "1500", cwd=Path.cwd())
    assert writes(stdout)["write"]["inserted"] == 1500
    assert writes(stdout)["replay"]["unchanged"] == 1500
    # 1,000 signals per call: the full chunk takes COPY, the 500 left over the upsert.
    assert "method=COPY,status=success" in stdout and "method=UPSERT,status=success" in stdout
    assert postgres_db.sql(f'SELECT count(*) FROM "{schema}".signals') == [(1500,)]
    assert "plain PostgreSQL table (timescaledb extension not installed)" in stdout


def test_demo_on_postgresql_prints_fresh_index_scan_counts(postgres_db: Database) -> None:
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    version = postgres_db.sql("SELECT current_setting('server_version_num')::int")[0][0]
    stdout = ok("demo", "--url", url, "--schema", schema, "--count", "300", cwd=Path.cwd())
    scans = index_scans(stdout)
    if isinstance(version, int) and version < 150000:
        assert set(scans.values()) == {None}  # not flushed yet: none rather than stale zeros
    else:
        # The spec's queries just ran on this index; the counts include them.
        assert (scans["ix_signals_provider_symbol_name_ts"] or 0) > 0, stdout


# -- status ---------------------------------------------------------------------------------


@pytest.mark.sqlite
def test_status_without_url_reads_the_demo_default(tmp_path: Path) -> None:
    ok("demo", "--count", "120", cwd=tmp_path)
    status = ok("status", cwd=tmp_path)
    assert "rows            120 (exact)" in status and "backend         sqlite" in status


@pytest.mark.sqlite
def test_status_on_a_missing_sqlite_file_fails_without_creating_it(tmp_path: Path) -> None:
    _one_line_error(cli("status", "--url", "sqlite:///missing.sqlite", cwd=tmp_path), "missing")
    _one_line_error(cli("status", cwd=tmp_path), "sa-signals demo")
    # No advice to run init where init cannot create the file either.
    _one_line_error(
        cli("status", "--url", "sqlite:///no_dir/x.sqlite", cwd=tmp_path),
        "the directory no_dir does not exist",
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.sqlite
def test_status_json_on_sqlite(tmp_path: Path) -> None:
    ok("demo", "--count", "60", cwd=tmp_path)
    data = json.loads(ok("status", "--json", cwd=tmp_path))
    assert data["backend"] == "sqlite" and data["table"] == "signals"
    assert data["row_estimate"] == 60 and data["row_count_exact"] is True
    assert data["hypertable"] is None and data["total_bytes"] > 0
    assert "ix_signals_provider_symbol_name_ts" in {i["name"] for i in data["indexes"]}


@pytest.mark.sqlite
def test_status_on_a_terminal_is_rich_and_json_stays_plain(tmp_path: Path) -> None:
    ok("demo", "--count", "60", cwd=tmp_path)
    status, screen = on_terminal("status", cwd=tmp_path)
    assert status == 0, screen
    assert re.search(r"^rows\s+60 \(exact\)\s*$", screen, re.M), screen
    # Sizes and counts right-aligned under their headers.
    assert re.search(r"^┃ name\s+┃\s+size ┃ scans ┃$", screen, re.M), screen
    assert re.search(r"^│ ix_signals_ts\s+│\s+\d+\.\d kB │\s+- │$", screen, re.M), screen

    status, screen = on_terminal("status", "--json", cwd=tmp_path)
    assert status == 0
    assert json.loads(screen)["row_estimate"] == 60


# -- init -----------------------------------------------------------------------------------


@pytest.mark.sqlite
def test_init_then_status_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    assert "table signals created" in ok("init", "--url", url, cwd=tmp_path)
    assert "already existed" in ok("init", "--url", url, cwd=tmp_path)
    status = ok("status", "--url", url, cwd=tmp_path)
    assert "backend         sqlite" in status and "rows            0 (exact)" in status
    assert "ix_signals_provider_symbol_name_ts" in status


@pytest.mark.sqlite
def test_async_sqlite_url_uses_the_sync_driver(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite'}"
    init = cli("init", "--url", url, cwd=tmp_path)
    assert init.returncode == 0 and init.stderr == ""
    assert "table signals created: sqlite table" in init.stdout
    status = cli("status", "--url", url, cwd=tmp_path)
    assert status.returncode == 0 and status.stderr == ""
    assert "rows            0 (exact)" in status.stdout


@pytest.mark.sqlite
def test_init_create_database_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    first = ok("init", "--create-database", "--url", url, cwd=tmp_path)
    assert first.splitlines() == [f"database {url} created", "table signals created: sqlite table"]
    second = ok("init", "--create-database", "--url", url, cwd=tmp_path)
    assert second.splitlines()[0] == f"database {url} already existed"
    assert rows_in_sqlite(tmp_path / "fresh.sqlite") == 0


@pytest.fixture
def new_database(postgres_url: URL) -> Iterator[URL]:
    """The URL of a database that does not exist yet on the PostgreSQL server (dropped after)."""
    name = f"sa_signals_cli_{uuid.uuid4().hex[:10]}"
    yield postgres_url.set(database=name)
    admin = create_engine(postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.mark.postgres
def test_init_create_database_on_postgresql(new_database: URL, tmp_path: Path) -> None:
    url = new_database.render_as_string(hide_password=False)
    shown = new_database.render_as_string(hide_password=True)
    missing = _one_line_error(cli("init", "--url", url, cwd=tmp_path), "does not exist")
    assert missing.endswith(f"create it with: sa-signals init --create-database --url {quote(url)}")

    first = ok("init", "--create-database", "--url", url, cwd=tmp_path)
    assert first.splitlines()[0] == f"database {shown} created"
    engine = create_engine(new_database, poolclass=NullPool)
    assert inspect(engine).has_table("signals")
    engine.dispose()
    second = ok("init", "--create-database", "--url", url, cwd=tmp_path)
    assert second.splitlines()[0] == f"database {shown} already existed"


def test_init_and_status_on_postgresql(postgres_db: Database) -> None:
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    out = ok("init", "--url", url, "--schema", schema, "--table", "Model Signals", cwd=Path.cwd())
    assert f"table {schema}.Model Signals created" in out
    tables = postgres_db.sql(
        "SELECT count(*) FROM pg_tables WHERE schemaname = :s AND tablename = 'Model Signals'",
        s=schema,
    )
    assert tables == [(1,)]
    status = ok(
        "status",
        "--url",
        url,
        "--schema",
        schema,
        "--table",
        "Model Signals",
        "--exact",
        cwd=Path.cwd(),
    )
    assert "backend         postgresql" in status and "rows            0 (exact)" in status
    assert "note: timescaledb extension not installed" in status
    assert "pk_Model Signals" in status


def test_async_postgresql_url_uses_the_sync_driver(postgres_db: Database) -> None:
    url = postgres_db.async_url.render_as_string(hide_password=False)
    assert url.startswith("postgresql+asyncpg://")
    schema = str(postgres_db.schema)
    init = cli("init", "--url", url, "--schema", schema, cwd=Path.cwd())
    assert init.returncode == 0, init.stderr
    assert init.stderr == ""  # no "coroutine was never awaited" warning
    assert f"table {schema}.signals created" in init.stdout
    status = cli("status", "--url", url, "--schema", schema, "--json", cwd=Path.cwd())
    assert status.returncode == 0 and status.stderr == ""
    assert json.loads(status.stdout)["backend"] == "postgresql"


def test_init_create_extension_without_timescaledb_fails_with_the_reason(
    postgres_db: Database,
) -> None:
    preload = str(postgres_db.sql("SELECT current_setting('shared_preload_libraries')")[0][0])
    if "timescaledb" in preload:
        pytest.skip("this PostgreSQL server preloads TimescaleDB: CREATE EXTENSION would work")
    available = postgres_db.sql(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    ) == [(1,)]
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    run = cli("init", "--url", url, "--schema", schema, "--create-extension", cwd=Path.cwd())
    line = _one_line_error(run, "timescaledb")
    if available:
        # Installed on the server but not loaded: the fix is a server setting and a restart.
        assert "shared_preload_libraries" in line
    tables = postgres_db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=schema)
    assert tables == [(0,)]  # nothing half-made


def test_create_extension_where_timescaledb_cannot_exist_fails(
    tmp_path: Path, postgres_db: Database
) -> None:
    # SQLite: the flag used to be ignored (exit 0, a plain table); nothing may be created.
    for command in ("init", "demo"):
        run = cli(command, "--url", "sqlite:///ext.sqlite", "--create-extension", cwd=tmp_path)
        _one_line_error(run, "--create-extension needs PostgreSQL")
        assert not (tmp_path / "ext.sqlite").exists()
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    run = cli(
        "init",
        "--url",
        url,
        "--schema",
        schema,
        "--create-extension",
        "--no-timescale",
        cwd=tmp_path,
    )
    _one_line_error(run, "contradict")
    tables = postgres_db.sql("SELECT count(*) FROM pg_tables WHERE schemaname = :s", s=schema)
    assert tables == [(0,)]


def test_init_create_extension_on_timescaledb_makes_a_hypertable(timescale_db: Database) -> None:
    url, schema = url_of(timescale_db), str(timescale_db.schema)
    out = ok("init", "--url", url, "--schema", schema, "--create-extension", cwd=Path.cwd())
    assert "TimescaleDB hypertable" in out


def test_status_on_timescaledb_shows_chunks_compression_and_policies(
    timescale_db: Database,
) -> None:
    url, schema = url_of(timescale_db), str(timescale_db.schema)
    assert "TimescaleDB hypertable" in ok("init", "--url", url, "--schema", schema, cwd=Path.cwd())
    table = signals_table(timescale_db.metadata, "signals", schema=schema)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [
        {
            "provider": "ibkr_primary",
            "symbol": "SPY",
            "ts": start + timedelta(hours=i),
            "name": "vwap_cross_up",
            "value": float(i % 7),
            "metadata": {"window": "1m"},
        }
        for i in range(24 * 15)
    ]
    with timescale_db.engine.begin() as conn:
        for offset in range(0, len(rows), 120):
            conn.execute(insert(table).values(rows[offset : offset + 120]))
    chunks = timescale_db.sql(
        f"SELECT count(compress_chunk(c)) FROM show_chunks('\"{schema}\".signals') c"
    )[0][0]
    assert isinstance(chunks, int) and chunks >= 2

    status = ok("status", "--url", url, "--schema", schema, "--exact", cwd=Path.cwd())
    assert "backend         timescaledb" in status
    assert f"chunks          {chunks} ({chunks} compressed), interval 7 days" in status
    assert "compression     enabled, segment by provider, symbol, name, order by ts DESC" in status
    assert f"compressed      {chunks}/{chunks} chunks" in status and "(ratio " in status
    assert "policy_compression" in status and '"compress_after":"30 days"' in status
    assert f"rows            {len(rows)} (exact)" in status

    data = json.loads(
        ok("status", "--url", url, "--schema", schema, "--exact", "--json", cwd=Path.cwd())
    )
    hyper = data["hypertable"]
    assert data["backend"] == "timescaledb" and data["row_estimate"] == len(rows)
    assert hyper["chunk_time_interval"] == 7 * 86_400  # durations in seconds
    assert hyper["compressed_chunk_count"] == chunks
    assert hyper["compression"]["ratio"] > 0
    assert [p["kind"] for p in hyper["policies"]] == ["policy_compression"]
