"""The ready migration ``alembic_ext/migrations/0001_signals.py`` in a host project."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

import alembic_ext
from sa_signals import TimescaleUnavailableWarning

from .conftest import Database
from .test_alembic_autogenerate import Host, make_host, schema_tables, timescale_info


@pytest.fixture
def host(pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A host project whose model is the signals table alone, like the ready migration."""
    monkeypatch.setenv("HOST_SIGNALS_ONLY", "1")
    host = make_host(pg_db, tmp_path, monkeypatch)
    monkeypatch.setenv("HOST_SIGNALS_ONLY", "1")
    return host


def _config(host: Host) -> Config:
    config = host.config()
    versions = host.path / "migrations" / "versions"
    # alembic init writes "path_separator = os" ("version_path_separator" before 1.16, with an
    # inline comment that Alembic 1.13 cannot parse): join locations with os.pathsep.
    if config.get_main_option("version_path_separator"):
        config.set_main_option("version_path_separator", "os")
    locations = os.pathsep.join([str(versions), str(alembic_ext.MIGRATIONS_DIR)])
    config.set_main_option("version_locations", locations)
    config.attributes["sa_signals_schema"] = host.db.schema
    return config


def _index_names(host: Host) -> set[str]:
    rows = host.rows(
        "SELECT indexname FROM pg_indexes WHERE schemaname = :s AND tablename = 'signals'",
        s=host.db.schema,
    )
    return {str(r[0]) for r in rows}


def test_ready_migration_matches_the_model(host: Host) -> None:
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        command.upgrade(_config(host), "sa_signals@head")
    assert schema_tables(host) == {"signals", "alembic_version"}
    assert _index_names(host) == {
        "pk_signals",
        "ix_signals_provider_symbol_name_ts",
        "ix_signals_ts",
        "ix_signals_name_ts",
    }
    assert host.rows(
        "SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = CAST(:t AS regclass)",
        t=f'"{host.db.schema}".signals',
    ) == [("ck_signals_symbol_upper",)]
    skipped = [w for w in warned if issubclass(w.category, TimescaleUnavailableWarning)]
    if host.db.tier == "timescale":
        assert not skipped
        assert timescale_info(host) == {
            "interval": timedelta(days=7),
            "segmentby": ["provider", "symbol", "name"],
            "orderby": [("ts", False)],
            "jobs": [("policy_compression", "30 days")],
        }
    else:
        assert len(skipped) == 3  # hypertable, compression, policy
    # Equivalent to signals_table(): autogenerate against the model finds nothing to do (plain
    # PostgreSQL warns that it cannot compare the TimescaleDB settings).
    if host.db.tier == "timescale":
        command.check(_config(host))
    else:
        with pytest.warns(TimescaleUnavailableWarning, match="cannot compare"):
            command.check(_config(host))

    command.downgrade(_config(host), "base")
    assert schema_tables(host) == {"alembic_version"}
    if host.db.tier == "timescale":
        assert host.rows(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = :s",
            s=host.db.schema,
        ) == [(0,)]
