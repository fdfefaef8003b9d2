"""The signals table as the database sees it, on every tier."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session

from sa_signals import (
    DEFAULT_NAMING,
    ConfigurationError,
    Signal,
    SignalMixin,
    TimescaleOptions,
    get_timescale_options,
    signals_metadata,
    signals_table,
)

from .conftest import Database

EXPECTED_INDEXES = {
    "ix_signals_provider_symbol_name_ts": ["provider", "symbol", "name", "ts"],
    "ix_signals_ts": ["ts"],
    "ix_signals_name_ts": ["name", "ts"],
}


def _columns(db: Database, name: str = "signals") -> dict[str, dict[str, object]]:
    inspector = inspect(db.engine)
    return {c["name"]: c for c in inspector.get_columns(name, schema=db.schema)}


def test_columns_types_and_nullability(db: Database) -> None:
    db.table  # noqa: B018 - creates it
    columns = _columns(db)
    assert list(columns) == [
        "provider",
        "symbol",
        "ts",
        "name",
        "value",
        "score",
        "metadata",
        "created_at",
    ]
    nullable = {name: c["nullable"] for name, c in columns.items()}
    assert nullable == {
        "provider": False,
        "symbol": False,
        "ts": False,
        "name": False,
        "value": False,
        "score": True,
        "metadata": True,
        "created_at": False,
    }
    assert columns["created_at"]["default"] is not None
    if db.is_postgres:
        types = {name: str(c["type"]) for name, c in columns.items()}
        assert types == {
            "provider": "TEXT",
            "symbol": "TEXT",
            "ts": "TIMESTAMP",
            "name": "TEXT",
            "value": "DOUBLE PRECISION",
            "score": "DOUBLE PRECISION",
            "metadata": "JSONB",
            "created_at": "TIMESTAMP",
        }
        assert columns["ts"]["type"].timezone is True  # type: ignore[attr-defined]
        assert "now()" in str(columns["created_at"]["default"])


def test_primary_key_check_and_indexes(db: Database) -> None:
    db.table  # noqa: B018
    inspector = inspect(db.engine)
    pk = inspector.get_pk_constraint("signals", schema=db.schema)
    assert pk["constrained_columns"] == ["provider", "symbol", "ts", "name"]
    assert pk["name"] == "pk_signals"
    checks = inspector.get_check_constraints("signals", schema=db.schema)
    assert [c["name"] for c in checks] == ["ck_signals_symbol_upper"]
    assert "upper(symbol)" in checks[0]["sqltext"].lower()
    indexes = {
        ix["name"]: ix["column_names"] for ix in inspector.get_indexes("signals", schema=db.schema)
    }
    assert indexes == EXPECTED_INDEXES
    if db.is_postgres:
        sorting = dict(
            db.sql(
                "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = CAST(:t AS regclass)",
                t=f'"{db.schema}"."signals"',
            )
        )
        definitions = {k.split(".")[-1]: v for k, v in sorting.items()}
        assert (
            "(provider, symbol, name, ts DESC)" in definitions["ix_signals_provider_symbol_name_ts"]
        )
        assert "(ts DESC)" in definitions["ix_signals_ts"]
        assert "(name, ts DESC)" in definitions["ix_signals_name_ts"]


def test_lowercase_symbol_violates_check(db: Database) -> None:
    table = db.table
    with pytest.raises(IntegrityError) as excinfo, db.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                provider="p", symbol="spy", ts=datetime.now(timezone.utc), name="n", value=1.0
            )
        )
    assert "ck_signals_symbol_upper" in str(excinfo.value) or db.tier == "sqlite"
    assert db.sql(f"SELECT count(*) FROM {_qualified(db)}") == [(0,)]


def _qualified(db: Database, name: str = "signals") -> str:
    return f'"{db.schema}"."{name}"' if db.schema else f'"{name}"'


def test_roundtrip_created_at_default_and_aware_ts(db: Database) -> None:
    table = db.table
    ts = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    with db.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                provider="p", symbol="SPY", ts=ts, name="n", value=1.5, metadata={"a": [1, 2]}
            )
        )
        row = conn.execute(table.select()).one()
    assert row.ts == ts
    assert row.metadata == {"a": [1, 2]}
    assert row.score is None
    assert row.created_at.tzinfo is not None


def test_create_all_twice_is_a_no_op(db: Database) -> None:
    table = db.table
    with db.engine.begin() as conn:
        conn.execute(
            table.insert().values(
                provider="p", symbol="S", ts=datetime.now(timezone.utc), name="n", value=1.0
            )
        )
    db.metadata.create_all(db.engine)
    db.metadata.create_all(db.engine)
    assert db.sql(f"SELECT count(*) FROM {_qualified(db)}") == [(1,)]


def test_custom_name_and_host_metadata_with_own_tables(db: Database) -> None:
    host = MetaData(schema=db.schema)
    Table("orders", host, Column("id", Integer, primary_key=True))
    signals_table(host, "model_signals", schema=db.schema, timescale=TimescaleOptions())
    host.create_all(db.engine)
    inspector = inspect(db.engine)
    assert {"orders", "model_signals"} <= set(inspector.get_table_names(schema=db.schema))
    names = {ix["name"] for ix in inspector.get_indexes("model_signals", schema=db.schema)}
    assert names == {
        "ix_model_signals_provider_symbol_name_ts",
        "ix_model_signals_ts",
        "ix_model_signals_name_ts",
    }


def test_naming_override(sqlite_db: Database) -> None:
    md = MetaData()
    signals_table(md, "sig", naming={"ix": "%(table_name)s_%(constraint_name)s_idx"})
    md.create_all(sqlite_db.engine)
    names = {ix["name"] for ix in inspect(sqlite_db.engine).get_indexes("sig")}
    assert names == {"sig_provider_symbol_name_ts_idx", "sig_ts_idx", "sig_name_ts_idx"}


def test_host_naming_convention_does_not_rename_ours(sqlite_db: Database) -> None:
    md = MetaData(
        naming_convention={"ix": "idx_%(column_0_label)s", "ck": "chk_%(constraint_name)s"}
    )
    table = signals_table(md)
    assert {ix.name for ix in table.indexes} == set(EXPECTED_INDEXES)
    md.create_all(sqlite_db.engine)
    checks = inspect(sqlite_db.engine).get_check_constraints("signals")
    assert [c["name"] for c in checks] == ["ck_signals_symbol_upper"]


def test_declarative_mixin_in_host_base(db: Database) -> None:
    class Base(DeclarativeBase):
        pass

    class ModelSignal(SignalMixin, Base):
        __tablename__ = "orm_signals"
        __table_args__ = {"schema": db.schema}  # SQLAlchemy's own convention
        __timescale__ = TimescaleOptions(compress_after=None)

    Base.metadata.create_all(db.engine)
    assert "orm_signals" in inspect(db.engine).get_table_names(schema=db.schema)
    ts = datetime(2024, 5, 1, tzinfo=timezone.utc)
    with Session(db.engine) as session:
        session.add(
            ModelSignal(provider="p", symbol="SPY", ts=ts, name="x", value=2.0, metadata_={"k": 1})
        )
        # metadata= is the column's name: the constructor maps it to the metadata_ attribute.
        session.add(
            ModelSignal(provider="p", symbol="SPY", ts=ts, name="y", value=3.0, metadata={"j": 2})
        )
        session.commit()
        loaded = session.get(ModelSignal, ("p", "SPY", ts, "x"))
        assert loaded is not None
        assert loaded.metadata_ == {"k": 1}
        assert loaded.created_at is not None
    table = f'"{db.schema}".orm_signals' if db.schema else "orm_signals"
    assert db.sql(f"SELECT name, metadata FROM {table} ORDER BY name") == [
        ("x", {"k": 1} if db.is_postgres else '{"k": 1}'),
        ("y", {"j": 2} if db.is_postgres else '{"j": 2}'),
    ]
    assert isinstance(ModelSignal.__table__, Table)
    options = get_timescale_options(ModelSignal.__table__)
    assert options is not None and options.compress_after is None


def test_mixin_metadata_and_metadata_underscore_together_are_refused() -> None:
    class Base(DeclarativeBase):
        pass

    class ModelSignal(SignalMixin, Base):
        __tablename__ = "model_signals"

    with pytest.raises(ConfigurationError, match="both metadata= and metadata_="):
        ModelSignal(provider="p", metadata={"a": 1}, metadata_={"a": 2})


def test_mixin_schema_spellings() -> None:
    class Base(DeclarativeBase):
        pass

    class TupleArgs(SignalMixin, Base):
        __tablename__ = "a"
        __table_args__ = ({"schema": "analytics"},)

    class Legacy(SignalMixin, Base):
        __tablename__ = "b"
        __table_schema__ = "analytics"

    class Both(SignalMixin, Base):
        __tablename__ = "c"
        __table_args__ = {"schema": "analytics"}
        __table_schema__ = "analytics"

    assert {TupleArgs.__table__.schema, Legacy.__table__.schema, Both.__table__.schema} == {
        "analytics"
    }


@pytest.mark.parametrize(
    ("table_args", "legacy", "message"),
    [
        ({"schema": "a"}, "b", "keep one"),
        ({"comment": "x"}, None, "supports only 'schema'"),
        ((Column("extra", Integer),), None, "only hold table keyword arguments"),
    ],
)
def test_mixin_refuses_table_args_it_cannot_honour(
    table_args: object, legacy: str | None, message: str
) -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match=message):

        class ModelSignal(SignalMixin, Base):
            __tablename__ = "model_signals"
            __table_args__ = table_args
            __table_schema__ = legacy


def test_mixin_naming(sqlite_db: Database) -> None:
    class Base(DeclarativeBase):
        pass

    class ModelSignal(SignalMixin, Base):
        __tablename__ = "model_signals"
        __signals_naming__ = {**DEFAULT_NAMING, "ix": "idx_%(table_name)s_%(constraint_name)s"}
        __timescale__ = None

    Base.metadata.create_all(sqlite_db.engine)
    names = {ix["name"] for ix in inspect(sqlite_db.engine).get_indexes("model_signals")}
    assert names == {
        "idx_model_signals_provider_symbol_name_ts",
        "idx_model_signals_ts",
        "idx_model_signals_name_ts",
    }


def test_default_model_is_on_library_metadata() -> None:
    assert Signal.__table__.metadata is signals_metadata
    assert Signal.__table__.name == "signals"
    assert get_timescale_options(Signal.__table__) == TimescaleOptions()


def test_plain_table_has_no_timescale_options(sqlite_db: Database) -> None:
    table = signals_table(MetaData(), timescale=None)
    assert get_timescale_options(table) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_time_interval": 7}, "chunk_time_interval"),
        ({"compress_after": __import__("datetime").timedelta(0)}, "compress_after"),
        ({"order_by": ("ts; DROP TABLE x",)}, "order_by"),
        ({"segment_by": ("",)}, "column names"),
    ],
)
def test_invalid_timescale_options(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TimescaleOptions(**kwargs)  # type: ignore[arg-type]


def test_unknown_time_column_rejected() -> None:
    with pytest.raises(ConfigurationError, match="time_column"):
        signals_table(MetaData(), timescale=TimescaleOptions(time_column="when"))


def test_sqlite_file_engine_outside_fixture(tmp_path: object) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    signals_metadata.create_all(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM signals")).scalar() == 0
    engine.dispose()
