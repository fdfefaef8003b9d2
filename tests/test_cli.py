"""The ``sa-signals`` CLI, driven as a subprocess (``python -m sa_signals``) on every tier."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import insert

from sa_signals import signals_table

from .conftest import Database


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sa_signals", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(*args: str, cwd: Path) -> str:
    run = cli(*args, cwd=cwd)
    assert run.returncode == 0, run.stderr
    return run.stdout


def url_of(db: Database) -> str:
    return db.url.render_as_string(hide_password=False)


def writes(stdout: str) -> dict[str, dict[str, int]]:
    """The demo's write table: {pass: {received, inserted, updated, unchanged}}."""
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


def rows_in_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM signals").fetchone()
    return int(count)


# -- help and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["demo"], ["init"], ["status"]], ids=str)
def test_help_on_every_command(command: list[str], tmp_path: Path) -> None:
    stdout = ok(*command, "--help", cwd=tmp_path)
    assert stdout.startswith("usage: sa-signals")
    assert "--debug" in stdout


def _one_line_error(run: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("sa-signals: error: ") and fragment in lines[0]
    assert "Traceback" not in run.stderr


@pytest.mark.sqlite
def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    _one_line_error(cli("status", "--url", "not a url", cwd=tmp_path), "not a database URI")
    _one_line_error(cli("status", "--url", "nosuchdb://x/y", cwd=tmp_path), "invalid database URL")
    _one_line_error(
        cli("status", "--url", "postgresql://nobody@127.0.0.1:1/none", cwd=tmp_path),
        "cannot connect to postgresql://nobody@127.0.0.1:1/none",
    )
    empty = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    _one_line_error(cli("status", "--url", empty, cwd=tmp_path), "table 'signals' does not exist")
    _one_line_error(cli("demo", "--count", "0", cwd=tmp_path), "--count must be at least 1")

    debug = cli("status", "--url", empty, "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    run = cli("status", cwd=tmp_path)  # --url is required
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


def test_demo_on_postgresql_uses_copy_and_is_idempotent(postgres_db: Database) -> None:
    url, schema = url_of(postgres_db), str(postgres_db.schema)
    stdout = ok("demo", "--url", url, "--schema", schema, "--count", "1500", cwd=Path.cwd())
    assert writes(stdout)["write"]["inserted"] == 1500
    assert writes(stdout)["replay"]["unchanged"] == 1500
    assert "method=COPY,status=success" in stdout and "method=UPSERT,status=success" in stdout
    assert postgres_db.sql(f'SELECT count(*) FROM "{schema}".signals') == [(1500,)]
    assert "plain PostgreSQL table (timescaledb extension not installed)" in stdout


# -- init and status ------------------------------------------------------------------------


@pytest.mark.sqlite
def test_init_then_status_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    assert "table signals created" in ok("init", "--url", url, cwd=tmp_path)
    assert "already existed" in ok("init", "--url", url, cwd=tmp_path)
    status = ok("status", "--url", url, cwd=tmp_path)
    assert "backend         sqlite" in status and "rows            0 (exact)" in status
    assert "ix_signals_provider_symbol_name_ts" in status


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
    assert chunks >= 2

    status = ok("status", "--url", url, "--schema", schema, "--exact", cwd=Path.cwd())
    assert "backend         timescaledb" in status
    assert f"chunks          {chunks} ({chunks} compressed), interval 7 days" in status
    assert "compression     enabled, segment by provider, symbol, name, order by ts DESC" in status
    assert f"compressed      {chunks}/{chunks} chunks" in status and "(ratio " in status
    assert "policy_compression" in status and '"compress_after":"30 days"' in status
    assert f"rows            {len(rows)} (exact)" in status
