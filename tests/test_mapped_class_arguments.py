"""Issue 10, point 7 beyond ``table=``: the public functions that take a signals table take a
mapped class (``class ModelSignal(SignalMixin, Base)``) as well, on a real database.

Before, ``storage_stats(conn, ModelSignal)`` raised ``ConfigurationError("table name must be a
non-empty string")`` and ``get_timescale_options`` / ``get_distribution_options`` /
``ensure_timescale`` / ``ensure_distribution`` a raw ``AttributeError`` (``no attribute
'info'``).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from sa_signals import (
    ConfigurationError,
    SignalMixin,
    ensure_distribution,
    ensure_timescale,
    get_distribution_options,
    get_rollups,
    get_timescale_options,
    signals_rollup,
    storage_stats,
)
from sa_signals.schema.model import resolve_table

from .conftest import Database


def _model(db: Database) -> type[SignalMixin]:
    class Base(DeclarativeBase):
        metadata = MetaData()

    class ModelSignal(SignalMixin, Base):
        __tablename__ = "mapped_arguments"
        __table_args__ = {"schema": db.schema}

    return ModelSignal


def test_mapped_class_is_accepted_where_a_table_is(db: Database) -> None:
    model = _model(db)
    table = resolve_table(model)
    table.metadata.create_all(db.engine)
    try:
        assert get_timescale_options(model) is get_timescale_options(table)
        assert get_timescale_options(model) is not None
        assert get_distribution_options(model) is None
        with db.engine.begin() as conn:
            # Idempotent after create_all: the same answer for the class and its table.
            assert ensure_timescale(model, conn) == ensure_timescale(table, conn)
            assert ensure_distribution(model, conn) is False
            by_class = storage_stats(conn, model)
            by_table = storage_stats(conn, table)
        assert (by_class.table, by_class.schema) == (by_table.table, by_table.schema)
        assert by_class.table == "mapped_arguments"
        assert get_rollups(model) == get_rollups(table) == ()
    finally:
        table.metadata.drop_all(db.engine)


def test_anything_else_is_a_configuration_error(db: Database) -> None:
    for function in (get_timescale_options, get_distribution_options):
        with pytest.raises(ConfigurationError, match="mapped class with __table__"):
            function(object())
    with db.engine.begin() as conn, pytest.raises(ConfigurationError):
        ensure_timescale(object(), conn)


def test_rollup_functions_take_a_mapped_class(db: Database) -> None:
    model = _model(db)
    rollup = signals_rollup(model, timedelta(hours=1))
    assert [(r.width, r.aggregate) for r in get_rollups(model)] == [(timedelta(hours=1), rollup)]
    assert rollup.metadata is resolve_table(model).metadata
    with pytest.raises(ConfigurationError, match="mapped class with __table__"):
        get_rollups(object())
    with pytest.raises(ConfigurationError, match="mapped class with __table__"):
        signals_rollup(object(), timedelta(hours=1))
