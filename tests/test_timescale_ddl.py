"""Timescale-aware DDL hooks: hypertable, compression and policies from ``create_all``."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import MetaData, create_engine, inspect
from sqlalchemy.pool import NullPool

from sa_signals import (
    ExtensionUnavailableError,
    TimescaleOptions,
    TimescaleUnavailableError,
    ensure_timescale,
    signals_table,
)
from sa_signals.schema.ddl.postgresql import (
    create_extension,
    extension_available,
    extension_version,
    preloaded_libraries,
    read_timescale_state,
    timescale_version,
)
from sa_signals.schema.options import OrderByItem
from sa_signals.status import storage_stats

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
    # This schema's jobs only: other tests may share the server.
    count_jobs = "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = :s"
    jobs_before = timescale_db.sql(count_jobs, s=timescale_db.schema)
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.begin() as conn:
        assert ensure_timescale(timescale_db.table, conn) is True
    assert _info(timescale_db) == before
    assert timescale_db.sql(count_jobs, s=timescale_db.schema) == jobs_before == [(1,)]


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


def _situation(db: Database, extension: str) -> str:
    """``installed`` (in this database), ``missing`` (no package on the server), ``unloaded``
    (package there, not preloaded) or ``loaded``."""
    with db.engine.connect() as conn:
        if extension_version(conn, extension) is not None:
            return "installed"
        if not extension_available(conn, extension):
            return "missing"
        libraries = preloaded_libraries(conn)
    assert libraries is not None, "the test servers run as a superuser"
    return "loaded" if extension in libraries else "unloaded"


def _require(db: Database, extension: str, situation: str) -> None:
    found = _situation(db, extension)
    if found != situation:
        pytest.skip(f"{extension} is {found} on this server, the test needs it {situation}")


def test_create_extension_option_without_the_package_warns(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    _require(postgres_db, "timescaledb", "missing")
    postgres_db.make_table("ext", timescale=TimescaleOptions(create_extension=True))
    with caplog.at_level(logging.WARNING, logger="sa_signals.ddl"):
        postgres_db.metadata.create_all(postgres_db.engine)
    assert any("plain PostgreSQL table" in r.message for r in caplog.records)


@pytest.mark.preload
def test_available_but_not_preloaded_timescaledb_is_not_present(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    # pg_available_extensions lists it as soon as the package is installed; only pg_extension
    # says it is in this database.
    _require(postgres_db, "timescaledb", "unloaded")
    with postgres_db.engine.connect() as conn:
        assert timescale_version(conn) is None
    with caplog.at_level(logging.WARNING, logger="sa_signals.ddl"):
        table = postgres_db.table
    assert any("timescaledb extension not installed" in r.message for r in caplog.records)
    with postgres_db.engine.connect() as conn:
        stats = storage_stats(conn, table)
    assert (stats.backend, stats.timescale_version) == ("postgresql", None)


@pytest.mark.preload
def test_create_extension_option_with_timescaledb_not_preloaded_says_what_to_change(
    postgres_db: Database,
) -> None:
    _require(postgres_db, "timescaledb", "unloaded")
    postgres_db.make_table("ext", timescale=TimescaleOptions(create_extension=True))
    with pytest.raises(TimescaleUnavailableError) as excinfo:
        postgres_db.metadata.create_all(postgres_db.engine)
    message = str(excinfo.value)
    assert "shared_preload_libraries" in message and "restart PostgreSQL" in message
    assert "'timescaledb" in message
    # Decided before CREATE EXTENSION, which would have ended the session (FATAL): the
    # server is fine, create_all rolled back whole, and nothing was created.
    assert "ext" not in inspect(postgres_db.engine).get_table_names(schema=postgres_db.schema)
    assert postgres_db.sql("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") == [
        (0,)
    ]


@pytest.mark.preload
@pytest.mark.parametrize("extension", ["timescaledb", "citus"])
def test_create_extension_not_preloaded_raises_and_leaves_the_transaction_usable(
    pg_db: Database, extension: str
) -> None:
    _require(pg_db, extension, "unloaded")
    with pg_db.engine.begin() as conn:
        with pytest.raises(ExtensionUnavailableError, match="shared_preload_libraries") as info:
            create_extension(conn, extension)
        assert f"'{extension}" in str(info.value)
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
        assert extension_version(conn, extension) is None


def test_create_extension_refused_to_the_role_raises_and_leaves_the_transaction_usable(
    postgres_db: Database,
) -> None:
    # file_fdw (contrib) is untrusted: only a superuser may create it.
    if _situation(postgres_db, "file_fdw") not in ("unloaded", "loaded"):
        pytest.skip("file_fdw is not available (or already installed) on this server")
    role = f"r_{uuid.uuid4().hex[:12]}"
    postgres_db.sql(f'CREATE ROLE "{role}" LOGIN')
    engine = create_engine(postgres_db.url.set(username=role, password=None), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            with pytest.raises(ExtensionUnavailableError, match="as a superuser") as info:
                create_extension(conn, "file_fdw")
            assert "permission denied" in str(info.value)
            assert info.value.__cause__ is not None
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    finally:
        engine.dispose()
        postgres_db.sql(f'DROP ROLE "{role}"')


def test_create_extension_of_an_installed_extension_returns_its_version(
    timescale_db: Database,
) -> None:
    with timescale_db.engine.begin() as conn:
        installed = timescale_version(conn)
        assert installed is not None
        assert create_extension(conn, "timescaledb") == installed


def test_table_in_schema_with_odd_name(timescale_db: Database) -> None:
    timescale_db.make_table("Signals-Odd")
    timescale_db.metadata.create_all(timescale_db.engine)
    with timescale_db.engine.connect() as conn:
        state = read_timescale_state(conn, "Signals-Odd", timescale_db.schema)
    assert state.is_hypertable and state.segment_by == ("provider", "symbol", "name")
