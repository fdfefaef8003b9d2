"""DistributionOptions on the table factory and the mixin: validation, and portability.

The Citus behaviour itself is tested on the Citus tier (tests/test_citus.py); these run
everywhere, without a Citus cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import MetaData, inspect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.schema import CreateTable

from sa_signals import (
    CitusUnavailableError,
    ConfigurationError,
    DistributionOptions,
    SignalMixin,
    TimescaleOptions,
    ensure_distribution,
    get_distribution_options,
    get_timescale_options,
    signals_table,
)

from .conftest import Database


def test_defaults_distribute_by_symbol_with_citus_defaults() -> None:
    options = DistributionOptions()
    assert (options.column, options.shard_count, options.colocate_with) == (
        "symbol",
        None,
        "default",
    )
    assert not options.colocates_with_table
    assert DistributionOptions(colocate_with="NONE").colocate_with == "none"
    assert DistributionOptions(colocate_with="instruments").colocates_with_table


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"column": ""}, "non-empty string"),
        ({"column": 3}, "non-empty string"),
        ({"shard_count": 0}, "shard_count"),
        ({"shard_count": True}, "shard_count"),
        ({"shard_count": "32"}, "shard_count"),
        ({"colocate_with": ""}, "colocate_with"),
        ({"colocate_with": None}, "colocate_with"),
        ({"shard_count": 8, "colocate_with": "instruments"}, "do not combine"),
        ({"require_citus": "yes"}, "require_citus"),
    ],
)
def test_invalid_options_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DistributionOptions(**changes)


def test_hypertable_and_distribution_on_one_table_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="hypertable cannot be distributed") as info:
        signals_table(MetaData(), distribution=DistributionOptions())
    assert "timescale=None" in str(info.value)
    with pytest.raises(ConfigurationError, match="hypertable cannot be distributed"):
        signals_table(MetaData(), timescale=TimescaleOptions(), distribution=DistributionOptions())


@pytest.mark.parametrize("column", ["value", "created_at", "metadata", "nope"])
def test_distribution_column_outside_the_primary_key_is_refused_saying_so(column: str) -> None:
    with pytest.raises(ConfigurationError, match="not part of the primary key") as info:
        signals_table(MetaData(), timescale=None, distribution=DistributionOptions(column=column))
    assert "('provider', 'symbol', 'ts', 'name')" in str(info.value)


@pytest.mark.parametrize("column", ["provider", "symbol", "ts", "name"])
def test_every_primary_key_column_may_distribute(column: str) -> None:
    table = signals_table(
        MetaData(), timescale=None, distribution=DistributionOptions(column=column)
    )
    assert get_distribution_options(table) == DistributionOptions(column=column)
    assert get_timescale_options(table) is None


def test_distribution_must_be_options() -> None:
    with pytest.raises(ConfigurationError, match="DistributionOptions or None"):
        signals_table(MetaData(), timescale=None, distribution="symbol")  # type: ignore[arg-type]


def test_mixin_carries_distribution() -> None:
    class Base(DeclarativeBase):
        pass

    class Distributed(SignalMixin, Base):
        __tablename__ = "distributed_signals"
        __timescale__ = None
        __distribution__ = DistributionOptions(shard_count=8)

    table = Distributed.__table__
    assert get_distribution_options(table) == DistributionOptions(shard_count=8)  # type: ignore[arg-type]

    with pytest.raises(ConfigurationError, match="hypertable cannot be distributed"):

        class Both(SignalMixin, Base):
            __tablename__ = "both"
            __distribution__ = DistributionOptions()


@pytest.mark.sqlite
def test_distributed_metadata_compiles_and_creates_on_sqlite(
    sqlite_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    table = sqlite_db.make_table(timescale=None, distribution=DistributionOptions())
    assert "CREATE TABLE" in str(CreateTable(table).compile(sqlite_db.engine))
    with caplog.at_level(logging.WARNING, logger="sa_signals"):
        sqlite_db.metadata.create_all(sqlite_db.engine)
    assert inspect(sqlite_db.engine).has_table("signals")
    assert not caplog.records  # nothing to warn about: Citus is a PostgreSQL extension
    with sqlite_db.engine.begin() as conn:
        assert ensure_distribution(table, conn) is False


@pytest.mark.postgres
def test_plain_postgres_keeps_a_plain_table_with_one_warning(
    postgres_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    postgres_db.make_table(timescale=None, distribution=DistributionOptions())
    with caplog.at_level(logging.WARNING, logger="sa_signals"):
        postgres_db.metadata.create_all(postgres_db.engine)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "citus extension not installed" in warnings[0]
    assert "stays a plain PostgreSQL table" in warnings[0]
    assert postgres_db.sql("SELECT count(*) FROM signals") == [(0,)]


@pytest.mark.postgres
def test_strict_mode_without_citus_is_an_error_and_creates_nothing(postgres_db: Database) -> None:
    postgres_db.make_table(timescale=None, distribution=DistributionOptions(require_citus=True))
    with pytest.raises(CitusUnavailableError, match="CREATE EXTENSION citus"):
        postgres_db.metadata.create_all(postgres_db.engine)
    assert not inspect(postgres_db.engine).has_table("signals", schema=postgres_db.schema)
