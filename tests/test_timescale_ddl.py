"""Timescale-aware DDL hooks: hypertable, compression and policies from ``create_all``."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import MetaData, inspect

from sa_signals import TimescaleOptions, TimescaleUnavailableError, ensure_timescale, signals_table
from sa_signals.schema.ddl.postgresql import read_timescale_state
from sa_signals.schema.options import OrderByItem

from .conftest import Database


def _info(db: Database, name: str = "signals") -> dict[str, object]:
    where = "hypertable_schema = :s AND hypertable_name = :n"
    params = {"s": db.schema, "n": name}
    (interval,) = db.sql(
        f"SELECT time_interval FROM timescaledb_information.dimensions WHERE {where}", **params
    )[0]
    settings = db.sql(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
        f"FROM timescaledb_information.compression_settings WHERE {where}",
        **params,
    )
    jobs = db.sql(
        "SELECT proc_name, config ->> 'compress_after', config ->> 'drop_after' "
        f"FROM timescaledb_information.jobs WHERE {where} ORDER BY proc_name",
        **params,
    )
    return {
        "interval": interval,
        "segmentby": [r[0] for r in sorted((s for s in settings if s[1]), key=lambda s: s[1])],
        "orderby": [(r[0], r[3]) for r in settings if r[2] is not None],
        "jobs": jobs,
    }


def test_default_hypertable_settings(timescale_db: Database) -> None:
    timescale_db.table  # noqa: B018
    info = _info(timescale_db)
    assert info["interval"] == timedelta(days=7)
    assert info["segmentby"] == ["provider", "symbol", "name"]
    assert info["orderby"] == [("ts", False)]
    assert info["jobs"] == [("policy_compression", "30 days", None)]


def test_no_default_timescale_index_added(timescale_db: Database) -> None:
    timescale_db.table  # noqa: B018
    names = {
        ix["name"]
        for ix in inspect(timescale_db.engine).get_indexes("signals", timescale_db.schema)
    }
    assert names == {"ix_signals_provider_symbol_name_ts", "ix_signals_ts", "ix_signals_name_ts"}


def test_non_default_options_and_retention(timescale_db: Database) -> None:
    options = TimescaleOptions(
        chunk_time_interval=timedelta(days=1),
        segment_by=("provider", "name"),
        order_by=("ts DESC", "symbol"),
        compress_after=timedelta(days=3),
        drop_after=timedelta(days=90),
    )
    timescale_db.make_table("custom", timescale=options)
    timescale_db.metadata.create_all(timescale_db.engine)
    info = _info(timescale_db, "custom")
    assert info["interval"] == timedelta(days=1)
    assert info["segmentby"] == ["provider", "name"]
    assert info["orderby"] == [("ts", False), ("symbol", True)]
    assert info["jobs"] == [
        ("policy_compression", "3 days", None),
        ("policy_retention", None, "90 days"),
    ]


def test_compression_off(timescale_db: Database) -> None:
    timescale_db.make_table("nocomp", timescale=TimescaleOptions(compression=False))
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.connect() as conn:
        state = read_timescale_state(conn, "nocomp", timescale_db.schema)
    assert state.is_hypertable and not state.compression and state.compress_after is None


def test_create_all_twice_changes_nothing(timescale_db: Database) -> None:
    timescale_db.table  # noqa: B018
    before = _info(timescale_db)
    jobs_before = timescale_db.sql("SELECT count(*) FROM timescaledb_information.jobs")
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.begin() as conn:
        assert ensure_timescale(timescale_db.table, conn) is True
    assert _info(timescale_db) == before
    assert timescale_db.sql("SELECT count(*) FROM timescaledb_information.jobs") == jobs_before


def test_ensure_timescale_applies_changed_options(timescale_db: Database) -> None:
    timescale_db.table  # noqa: B018
    changed = signals_table(
        MetaData(),
        schema=timescale_db.schema,
        timescale=TimescaleOptions(
            compress_after=timedelta(days=10), drop_after=timedelta(days=400)
        ),
    )
    with timescale_db.engine.begin() as conn:
        ensure_timescale(changed, conn)
        state = read_timescale_state(conn, "signals", timescale_db.schema)
    assert state.compress_after == timedelta(days=10)
    assert state.drop_after == timedelta(days=400)
    assert state.order_by == (OrderByItem("ts", descending=True),)


def test_existing_plain_table_with_rows_becomes_hypertable(timescale_db: Database) -> None:
    plain = signals_table(
        timescale_db.metadata, "legacy", schema=timescale_db.schema, timescale=None
    )
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.begin() as conn:
        conn.execute(
            plain.insert().values(
                provider="p",
                symbol="S",
                ts=datetime(2024, 1, 1, tzinfo=timezone.utc),
                name="n",
                value=1.0,
            )
        )
    target = signals_table(MetaData(), "legacy", schema=timescale_db.schema)
    with timescale_db.engine.begin() as conn:
        ensure_timescale(target, conn)
        assert read_timescale_state(conn, "legacy", timescale_db.schema).is_hypertable
    assert timescale_db.sql(f'SELECT count(*) FROM "{timescale_db.schema}".legacy') == [(1,)]


def test_plain_postgres_warns_once_and_works(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sa_signals.ddl"):
        postgres_db.table  # noqa: B018
    warnings = [r for r in caplog.records if "timescaledb extension not installed" in r.message]
    assert len(warnings) == 1
    assert postgres_db.sql(
        "SELECT count(*) FROM pg_class WHERE relname = 'signals' AND relkind = 'r' "
        "AND relnamespace = CAST(:s AS regnamespace)",
        s=postgres_db.schema,
    ) == [(1,)]


def test_require_timescale_raises_and_creates_nothing(postgres_db: Database) -> None:
    postgres_db.make_table("strict", timescale=TimescaleOptions(require_timescale=True))
    with pytest.raises(TimescaleUnavailableError, match="timescaledb extension is not installed"):
        postgres_db.metadata.create_all(postgres_db.engine)
    # create_all runs in one transaction: the failed hook leaves no table behind.
    assert "strict" not in inspect(postgres_db.engine).get_table_names(schema=postgres_db.schema)


def test_create_extension_option_without_server_support_still_warns(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    postgres_db.make_table("ext", timescale=TimescaleOptions(create_extension=True))
    with caplog.at_level(logging.WARNING, logger="sa_signals.ddl"):
        postgres_db.metadata.create_all(postgres_db.engine)
    assert any("plain PostgreSQL table" in r.message for r in caplog.records)


def test_table_in_schema_with_odd_name(timescale_db: Database) -> None:
    timescale_db.make_table("Signals-Odd")
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.connect() as conn:
        state = read_timescale_state(conn, "Signals-Odd", timescale_db.schema)
    assert state.is_hypertable and state.segment_by == ("provider", "symbol", "name")
