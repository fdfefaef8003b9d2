"""storage_stats(): sizes, row counts, hypertable, compression and policies on each tier."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Table, insert, text

from sa_signals import ConfigurationError, TimescaleOptions, signals_table
from sa_signals.cli.output import stats_json, stats_sections
from sa_signals.schema.aggregates import get_rollups, signals_rollup
from sa_signals.status import StorageStats, storage_stats

from .conftest import Database

HOUR = timedelta(hours=1)
SPEC_INDEXES = {"ix_signals_provider_symbol_name_ts", "ix_signals_ts", "ix_signals_name_ts"}


def _rows(count: int, *, days: int = 1) -> list[dict[str, object]]:
    """``count`` signals spread over ``days`` days ending at a fixed past instant."""
    end = datetime(2026, 1, 1, tzinfo=timezone.utc)
    step = timedelta(days=days) / count
    return [
        {
            "provider": f"p{i % 3}",
            "symbol": "SPY" if i % 2 else "QQQ",
            "ts": end - step * i,
            "name": "vwap_cross_up",
            "value": float(i),
            "score": 0.5,
            "metadata": {"window": "1m", "i": i},
        }
        for i in range(count)
    ]


def _fill(db: Database, table: Table, rows: list[dict[str, object]]) -> None:
    # Multi-row INSERTs of modest size: the TimescaleDB tier (PGlite) rejects psycopg's
    # pipelined executemany ("prepared statement already exists") and drops huge messages.
    with db.engine.begin() as conn:
        for start in range(0, len(rows), 200):
            conn.execute(insert(table).values(rows[start : start + 200]))


def _stats(db: Database, table: Table | str, **kwargs: object) -> StorageStats:
    with db.engine.connect() as conn:
        return storage_stats(conn, table, **kwargs)  # type: ignore[arg-type]


def test_missing_table_is_a_clear_error(db: Database) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"), db.engine.connect() as conn:
        storage_stats(conn, "no_such_table", schema=db.schema)


def test_sqlite_counts_rows_and_reports_pages_and_file(sqlite_db: Database) -> None:
    _fill(sqlite_db, sqlite_db.table, _rows(300))
    stats = _stats(sqlite_db, sqlite_db.table)
    assert stats.backend == "sqlite"
    assert (stats.row_estimate, stats.row_count_exact) == (300, True)
    assert stats.page_size and stats.page_count
    assert stats.file_bytes == stats.page_size * stats.page_count
    assert stats.table_bytes and stats.table_bytes > 0
    names = {index.name for index in stats.indexes}
    assert SPEC_INDEXES <= names
    assert stats.index_bytes == sum(index.size_bytes or 0 for index in stats.indexes)
    assert stats.hypertable is None


def test_plain_postgresql_sizes_add_up_and_estimate_follows_analyze(
    postgres_db: Database,
) -> None:
    _fill(postgres_db, postgres_db.table, _rows(500))
    before = _stats(postgres_db, postgres_db.table)
    assert before.backend == "postgresql"
    assert before.hypertable is None and before.timescale_version is None
    assert any("timescaledb extension not installed" in note for note in before.notes)
    assert before.total_bytes == (
        (before.table_bytes or 0) + (before.toast_bytes or 0) + (before.index_bytes or 0)
    )
    assert before.table_bytes and before.table_bytes > 0
    assert {index.name for index in before.indexes} == {*SPEC_INDEXES, "pk_signals"}
    assert before.index_bytes == sum(index.size_bytes or 0 for index in before.indexes)

    postgres_db.sql(f'ANALYZE "{postgres_db.schema}".signals')
    assert _stats(postgres_db, postgres_db.table).row_estimate == 500
    exact = _stats(postgres_db, "signals", schema=postgres_db.schema, exact_count=True)
    assert (exact.row_estimate, exact.row_count_exact) == (500, True)


def test_quoted_names_and_schema(pg_db: Database) -> None:
    table = pg_db.make_table("Odd Name", timescale=None)
    pg_db.metadata.create_all(pg_db.engine)
    _fill(pg_db, table, _rows(10))
    stats = _stats(pg_db, "Odd Name", schema=pg_db.schema, exact_count=True)
    assert (stats.table, stats.schema, stats.row_estimate) == ("Odd Name", pg_db.schema, 10)


def test_plain_table_in_timescale_database_says_so(timescale_db: Database) -> None:
    table = timescale_db.make_table("plain", timescale=None)
    timescale_db.metadata.create_all(timescale_db.engine)
    stats = _stats(timescale_db, table)
    assert stats.backend == "postgresql"
    assert stats.timescale_version is not None
    assert any("not a hypertable" in note for note in stats.notes)


def test_hypertable_chunks_settings_and_policies(timescale_db: Database) -> None:
    # The rows are older than compress_after: the policy must not compress them meanwhile.
    timescale_db.pause_jobs()
    # 3 weeks of rows in 7-day chunks: between 3 and 4 chunks depending on alignment.
    _fill(timescale_db, timescale_db.table, _rows(210, days=21))
    stats = _stats(timescale_db, timescale_db.table)
    assert stats.backend == "timescaledb"
    hyper = stats.hypertable
    assert hyper is not None
    assert hyper.time_column == "ts"
    assert hyper.chunk_time_interval == timedelta(days=7)
    (chunks,) = timescale_db.sql(
        "SELECT count(*) FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = :s AND hypertable_name = 'signals'",
        s=timescale_db.schema,
    )[0]
    assert hyper.chunk_count == chunks and 3 <= chunks <= 4
    assert hyper.compressed_chunk_count == 0
    assert hyper.segment_by == ("provider", "symbol", "name")
    assert hyper.order_by == ("ts DESC",)
    assert hyper.compress_after == timedelta(days=30)
    assert [policy.kind for policy in hyper.policies] == ["policy_compression"]
    assert hyper.policies[0].config["compress_after"] == "30 days"
    # The hypertable root holds nothing; the sizes come from its chunks.
    (root_size,) = timescale_db.sql(
        f"SELECT pg_total_relation_size('\"{timescale_db.schema}\".signals')"
    )[0]
    assert stats.total_bytes is not None and stats.total_bytes > 10 * int(root_size or 1)
    assert {index.name for index in stats.indexes} == {*SPEC_INDEXES, "pk_signals"}


def test_compression_stats_after_compress_chunk(timescale_db: Database) -> None:
    timescale_db.pause_jobs()
    _fill(timescale_db, timescale_db.table, _rows(2000, days=14))
    timescale_db.compress_chunks()
    stats = _stats(timescale_db, timescale_db.table, exact_count=True)
    hyper = stats.hypertable
    assert hyper is not None and hyper.compression is not None
    assert hyper.compressed_chunk_count == hyper.chunk_count >= 2
    assert hyper.compression.compressed_chunks == hyper.chunk_count
    before, after = hyper.compression.before_bytes, hyper.compression.after_bytes
    assert before and after
    assert hyper.compression.ratio == pytest.approx(before / after)
    assert stats.row_estimate == 2000


def test_policy_times_the_catalog_holds_as_infinite_are_none(timescale_db: Database) -> None:
    # A job that has never run reads -infinity for its last start and last success, and an
    # unscheduled one can hold next_start = infinity: no Python datetime holds either.
    (job,) = timescale_db.pause_jobs()
    timescale_db.sql("SELECT alter_job(:job, next_start => 'infinity')", job=job)
    raw = timescale_db.sql(
        "SELECT CAST(j.next_start AS text), CAST(s.last_run_started_at AS text), "
        "CAST(s.last_successful_finish AS text) FROM timescaledb_information.jobs j "
        "JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id WHERE j.job_id = :job",
        job=job,
    )
    assert raw == [("infinity", "-infinity", "-infinity")]

    stats = _stats(timescale_db, timescale_db.table)
    assert stats.hypertable is not None
    (policy,) = stats.hypertable.policies
    assert (policy.job_id, policy.scheduled, policy.job_status) == (job, False, "Paused")
    assert policy.next_start is None
    assert policy.last_run_started_at is None and policy.last_successful_finish is None
    # What `sa-signals status` prints from the same value, as text and as JSON.
    assert stats_sections(stats)
    (printed,) = json.loads(stats_json(stats))["hypertable"]["policies"]
    assert (printed["next_start"], printed["last_successful_finish"]) == (None, None)


def test_background_compression_policy_run_shows_in_stats(native_timescale_db: Database) -> None:
    db = native_timescale_db
    (job,) = db.pause_jobs()
    _fill(db, db.table, _rows(500, days=10))
    (before,) = [p.total_runs or 0 for p in _stats(db, db.table).hypertable.policies]  # type: ignore[union-attr]
    # Due now: the scheduler, not this test, runs it.
    db.sql("SELECT alter_job(:job, scheduled => true, next_start => now())", job=job)
    db.wait_for_job(job, runs=before + 1)
    db.pause_jobs()
    stats = _stats(db, db.table)
    hyper = stats.hypertable
    assert hyper is not None
    assert hyper.compressed_chunk_count == hyper.chunk_count >= 2
    (policy,) = hyper.policies
    assert policy.total_runs is not None and policy.total_runs >= before + 1
    assert policy.last_run_started_at is not None
    assert policy.last_run_status in ("Success", "Failed")


def test_continuous_aggregates_with_size_watermark_and_policy_runs(
    native_timescale_db: Database, tmp_path: Path
) -> None:
    db = native_timescale_db
    table = signals_table(db.metadata, schema=db.schema, timescale=TimescaleOptions())
    signals_rollup(table, HOUR, compress_after=timedelta(days=30))
    signals_rollup(table, timedelta(days=1))
    with db.engine.begin() as conn:
        db.metadata.create_all(conn)
        # Paused before anyone can see them: the scheduler never runs them behind the test.
        conn.execute(
            text(
                "SELECT alter_job(job_id, scheduled => false) "
                "FROM timescaledb_information.jobs WHERE hypertable_schema = :s"
            ),
            {"s": db.schema},
        )
    _fill(db, table, _rows(600, days=5))
    hourly = get_rollups(table)[0].aggregate
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        hourly.refresh_now(conn)
        conn.execute(
            text("SELECT compress_chunk(c) FROM show_chunks(CAST(:v AS regclass)) c"),
            {"v": f'"{db.schema}".signals_1h'},
        )
    stats = _stats(db, table)
    hyper = stats.hypertable
    assert hyper is not None
    by_name = {a.name: a for a in hyper.aggregates}
    assert set(by_name) == {"signals_1h", "signals_1d"}
    one_hour, one_day = by_name["signals_1h"], by_name["signals_1d"]
    assert one_hour.total_bytes and one_hour.total_bytes > 0
    assert one_hour.chunk_count >= 1 and one_hour.compressed_chunk_count >= 1
    assert one_hour.watermark is not None
    assert one_hour.watermark >= datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert one_day.watermark is None  # never refreshed: TimescaleDB's -infinity
    assert one_day.chunk_count == 0
    kinds = {p.kind: p for p in one_hour.policies}
    assert set(kinds) == {"policy_refresh_continuous_aggregate", "policy_compression"}
    policy = kinds["policy_refresh_continuous_aggregate"]
    assert policy.config["start_offset"] == "30 days" and policy.scheduled is False
    assert policy.schedule_interval == HOUR and policy.job_status == "Paused"
    # Runs are read as for the table's own jobs (test_background_compression_policy_run_...):
    # never run, the catalog's -infinity times are None.
    (never,) = one_day.policies
    assert never.last_run_started_at is None and never.last_successful_finish is None
    printed = json.loads(stats_json(stats))["hypertable"]["aggregates"]
    assert [a["name"] for a in printed] == ["signals_1d", "signals_1h"]
    assert printed[0]["watermark"] is None

    run = subprocess.run(
        [sys.executable, "-m", "sa_signals", "status", "--url",
         db.url.difference_update_query(["options"]).render_as_string(hide_password=False),
         "--schema", str(db.schema)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "continuous aggregates" in run.stdout
    assert "signals_1h" in run.stdout and "policy_refresh_continuous_aggregate" in run.stdout
