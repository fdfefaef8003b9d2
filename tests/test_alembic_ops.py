"""alembic_ext operations run through Alembic's ``Operations`` against real databases."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import util
from alembic.autogenerate import compare_metadata, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, DateTime, Integer, MetaData, Table, create_engine
from sqlalchemy.exc import DBAPIError, SAWarning
from sqlalchemy.pool import NullPool

import alembic_ext
from alembic_ext import (
    AddCompressionPolicyOp,
    CreateHypertableOp,
    CreateSchemaOp,
    DisableCompressionOp,
    DroppedWithTableOp,
    DropSchemaOp,
    EnableCompressionOp,
    KeepHypertableOp,
    RemoveCompressionPolicyOp,
    RemoveRetentionPolicyOp,
    SetChunkTimeIntervalOp,
)
from sa_signals import (
    ConfigurationError,
    MigrationError,
    SignalsWarning,
    TimescaleUnavailableError,
    TimescaleUnavailableWarning,
    signals_table,
)
from sa_signals.schema.ddl.postgresql import read_timescale_state
from sa_signals.schema.options import OrderByItem

from .conftest import DEFAULT_TIMESCALE, Database


@pytest.fixture(autouse=True)
def _reset_strict() -> Iterator[None]:
    yield
    alembic_ext.configure(strict=False)


def _operations(conn: Connection, **opts: Any) -> Any:
    """Operations typed loosely: Alembic's stubs do not know registered operations."""
    return Operations(MigrationContext.configure(conn, opts=opts))


def _plain_table(db: Database, name: str = "signals") -> None:
    signals_table(db.metadata, name, schema=db.schema, timescale=None)
    db.metadata.create_all(db.engine)


def test_operations_apply_and_revert_settings(timescale_db: Database) -> None:
    db = timescale_db
    # A quoted name in a non-public schema (other libraries broke on both).
    name = "Signal Store"
    _plain_table(db, name)
    with db.engine.begin() as conn:
        op = _operations(conn)
        op.create_hypertable(name, "ts", chunk_time_interval="1 day", schema=db.schema)
        op.set_chunk_time_interval(name, timedelta(days=2), schema=db.schema)
        op.enable_compression(
            name, segment_by=["provider", "name"], order_by=["ts DESC", "symbol"], schema=db.schema
        )
        op.add_compression_policy(name, compress_after="5 days", schema=db.schema)
        op.add_retention_policy(name, drop_after=timedelta(days=60), schema=db.schema)
        state = read_timescale_state(conn, name, db.schema)
    assert state.is_hypertable and state.time_column == "ts"
    assert state.chunk_time_interval == timedelta(days=2)
    assert state.segment_by == ("provider", "name")
    assert state.order_by == (OrderByItem("ts", descending=True), OrderByItem("symbol"))
    assert state.compress_after == timedelta(days=5)
    assert state.drop_after == timedelta(days=60)

    with db.engine.begin() as conn:
        op = _operations(conn)
        op.remove_retention_policy(name, schema=db.schema)
        op.remove_compression_policy(name, schema=db.schema)
        op.disable_compression(name, schema=db.schema)
        with pytest.warns(SignalsWarning, match="stays a hypertable"):
            op.keep_hypertable(name, schema=db.schema)
        state = read_timescale_state(conn, name, db.schema)
    assert state.is_hypertable  # keep_hypertable changes nothing
    assert not state.compression
    assert state.compress_after is None and state.drop_after is None


def test_plain_postgres_skips_with_warning(postgres_db: Database) -> None:
    _plain_table(postgres_db)
    with pytest.warns(TimescaleUnavailableWarning) as warned, postgres_db.engine.begin() as c:
        op = _operations(c)
        op.create_hypertable("signals", "ts", schema=postgres_db.schema)
        op.add_retention_policy("signals", drop_after="90 days", schema=postgres_db.schema)
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "skipped create_hypertable" in messages[0]
    assert f'"{postgres_db.schema}"."signals"' in messages[0]
    # Attributed to the caller's line (a revision's op.… call), not to alembic_ext.
    assert {w.filename for w in warned} == {__file__}
    assert postgres_db.sql(
        "SELECT relkind FROM pg_class WHERE relname = 'signals' "
        "AND relnamespace = CAST(:s AS regnamespace)",
        s=postgres_db.schema,
    ) == [("r",)]


def test_strict_mode_makes_missing_timescale_an_error(postgres_db: Database) -> None:
    _plain_table(postgres_db)
    with postgres_db.engine.begin() as conn:
        op = _operations(conn, timescaledb_strict=True)
        with pytest.raises(TimescaleUnavailableError, match="create_hypertable"):
            op.create_hypertable("signals", "ts", schema=postgres_db.schema)
    alembic_ext.configure(strict=True)
    with postgres_db.engine.begin() as conn:
        with pytest.raises(TimescaleUnavailableError):
            _operations(conn).enable_compression("signals", schema=postgres_db.schema)
        # The per-run option wins over the process-wide default.
        with pytest.warns(TimescaleUnavailableWarning):
            _operations(conn, timescaledb_strict=False).enable_compression(
                "signals", schema=postgres_db.schema
            )


def _offline_sql(schema: str, **opts: Any) -> list[str]:
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer, **opts}
    )
    op: Any = Operations(context)
    op.create_hypertable("signals", "ts", schema=schema)
    # TimescaleDB's spelling, as revisions written before segment_by/order_by have it.
    op.enable_compression(
        "signals", segmentby=["provider", "symbol", "name"], orderby=["ts DESC"], schema=schema
    )
    op.add_compression_policy("signals", compress_after="30 days", schema=schema)
    op.add_retention_policy("signals", drop_after="400 days", schema=schema)
    return [s.strip() for s in re.split(r";\n", buffer.getvalue()) if s.strip()]


@pytest.mark.parametrize("version", [None, "2.18"], ids=["default-2.0", "columnstore-2.18"])
def test_offline_sql_for_each_api_generation_applies(
    timescale_db: Database, version: str | None
) -> None:
    db = timescale_db
    assert db.schema is not None
    opts = {} if version is None else {"timescaledb_version": version}
    statements = _offline_sql(db.schema, **opts)
    joined = "\n".join(statements)
    if version is None:
        assert "timescaledb.compress_segmentby" in joined and "add_compression_policy" in joined
    else:
        assert "enable_columnstore" in joined and "add_columnstore_policy" in joined
    _plain_table(db)
    with db.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
        state = read_timescale_state(conn, "signals", db.schema)
    assert state.chunk_time_interval == timedelta(days=7)
    assert state.segment_by == ("provider", "symbol", "name")
    assert state.compress_after == timedelta(days=30)
    assert state.drop_after == timedelta(days=400)


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_offline_sql_on_plain_postgres_skips_or_fails_like_online(
    postgres_db: Database, strict: bool
) -> None:
    db = postgres_db
    assert db.schema is not None
    statements = _offline_sql(db.schema, timescaledb_strict=strict)
    assert all(s.startswith("DO $sa_signals$") for s in statements)
    _plain_table(db)
    notices: list[str] = []
    with db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        if strict:
            with pytest.raises(DBAPIError, match=r"cannot create_hypertable on .*not installed"):
                conn.exec_driver_sql(statements[0])
            return
        for statement in statements:
            conn.exec_driver_sql(statement)
    skipped = [n for n in notices if n.startswith("timescaledb not available: skipped")]
    assert [n.split()[4] for n in skipped] == [
        "create_hypertable",
        "enable_compression",
        "add_compression_policy",
        "add_retention_policy",
    ]
    assert db.sql(
        "SELECT relkind FROM pg_class WHERE relname = 'signals' "
        "AND relnamespace = CAST(:s AS regnamespace)",
        s=db.schema,
    ) == [("r",)]


def _compressed_hypertable(db: Database) -> Any:
    """A hypertable with rows in three chunks, the first compressed, jobs paused."""
    table = db.make_table(
        timescale=DEFAULT_TIMESCALE.replace(chunk_time_interval=timedelta(days=1))
    )
    db.metadata.create_all(db.engine)
    relation = f'"{db.schema}".signals'
    db.sql(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = :s AND hypertable_name = 'signals'",
        s=db.schema,
    )
    db.sql(
        f"INSERT INTO {relation} (provider, symbol, ts, name, value) "
        "SELECT 'p', 'S', CAST(:start AS timestamptz) + i * interval '1 hour', 'n', i "
        "FROM generate_series(0, 50) AS i",
        start=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    db.sql(
        "SELECT compress_chunk(c) FROM show_chunks(CAST(:t AS regclass)) AS c ORDER BY c LIMIT 1",
        t=relation,
    )
    return table


def test_disable_compression_refuses_compressed_chunks_unless_asked_to_decompress(
    timescale_db: Database,
) -> None:
    db = timescale_db
    _compressed_hypertable(db)
    with db.engine.begin() as conn:
        op = _operations(conn)
        op.remove_compression_policy("signals", schema=db.schema)
        with pytest.raises(
            MigrationError, match=r"1 of its chunks are compressed.*decompress=True"
        ):
            op.disable_compression("signals", schema=db.schema)
    with db.engine.begin() as conn:
        _operations(conn).disable_compression("signals", schema=db.schema, decompress=True)
        state = read_timescale_state(conn, "signals", db.schema)
    assert not state.compression
    assert db.sql(f'SELECT count(*) FROM "{db.schema}".signals') == [(51,)]


def test_default_hypertable_index_and_chunks_stay_out_of_autogenerate(
    timescale_db: Database,
) -> None:
    db = timescale_db
    model = MetaData()
    Table(
        "events",
        model,
        Column("ts", DateTime(timezone=True), nullable=False),
        Column("value", Integer),
        schema=db.schema,
    )
    model.create_all(db.engine)
    # A hypertable made elsewhere, with TimescaleDB's default (ts DESC) index and one chunk.
    db.sql("SELECT create_hypertable(CAST(:t AS regclass), 'ts')", t=f'"{db.schema}".events')
    db.sql(
        f'INSERT INTO "{db.schema}".events (ts, value) VALUES (:ts, 1)',
        ts=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    schemas = {db.schema, "_timescaledb_internal"}

    def only_ours(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "schema" or name in schemas

    # Default schema "public", so the test schema is compared by name like in a host project.
    engine = create_engine(db.url.difference_update_query(["options"]), poolclass=NullPool)

    def diffs(**opts: Any) -> list[Any]:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_schemas": True, **opts})
            return list(compare_metadata(context, model))

    with warnings.catch_warnings():
        # Unfiltered, TimescaleDB's catalog is reflected, with types SQLAlchemy does not know.
        warnings.simplefilter("ignore", SAWarning)
        unfiltered = diffs(include_name=only_ours)
    kinds = {(d[0], getattr(d[1], "name", None)) for d in unfiltered}
    assert ("remove_index", "events_ts_idx") in kinds
    assert ("remove_table", "_hyper_1_1_chunk") in kinds or any(
        kind == "remove_table" and str(name).endswith("_chunk") for kind, name in kinds
    )
    assert (
        diffs(
            include_name=alembic_ext.combine_include_name(only_ours),
            include_object=alembic_ext.include_object,
        )
        == []
    )


def test_reverse_operations_restore_previous_settings() -> None:
    create = CreateHypertableOp("s", "ts", chunk_time_interval=timedelta(days=1), schema="x")
    assert create.reverse() == KeepHypertableOp("s", schema="x")
    change = SetChunkTimeIntervalOp("s", "2 days", _previous=timedelta(days=1))
    assert change.reverse().chunk_time_interval == timedelta(days=1)
    enable = EnableCompressionOp("s", segmentby=["a"], orderby=["ts DESC"])
    assert isinstance(enable.reverse(), DisableCompressionOp)
    assert enable.reverse().reverse() == enable
    retune = EnableCompressionOp("s", segmentby=["a"], _previous=(["a", "b"], ["ts"]))
    assert retune.reverse() == EnableCompressionOp("s", segmentby=["a", "b"], orderby=["ts"])
    add = AddCompressionPolicyOp("s", "30 days")
    assert add.reverse().reverse() == add
    with pytest.raises(ValueError, match="not reversible"):
        RemoveRetentionPolicyOp("s").reverse()
    with pytest.raises(ValueError, match="not reversible"):
        SetChunkTimeIntervalOp("s", "1 day").reverse()
    assert CreateSchemaOp("a").reverse() == DropSchemaOp("a")


def test_operations_on_a_new_table_reverse_to_nothing() -> None:
    # The revision creates the table: its downgrade drops it, which undoes these too.
    for op in (
        CreateHypertableOp("s", "ts"),
        EnableCompressionOp("s", segment_by=["a"]),
        AddCompressionPolicyOp("s", "30 days"),
    ):
        op.new_table = True
        reverse = op.reverse()
        assert isinstance(reverse, DroppedWithTableOp)
        assert reverse.reverse() is op


def test_compression_columns_take_both_spellings() -> None:
    pythonic = EnableCompressionOp("s", segment_by=["a", "b"], order_by=["ts DESC"])
    timescale = EnableCompressionOp("s", segmentby=["a", "b"], orderby=["ts DESC"])
    assert pythonic == timescale
    assert pythonic.segmentby == pythonic.segment_by == ("a", "b")
    with pytest.raises(ConfigurationError, match="not both"):
        EnableCompressionOp("s", segment_by=["a"], segmentby=["a"])
    with pytest.raises(ConfigurationError, match="list of column names"):
        EnableCompressionOp("s", segment_by="a")


def test_render_writes_calls_and_imports() -> None:
    migration = MigrationContext.configure(dialect_name="postgresql")
    context = AutogenContext(migration, opts={"alembic_module_prefix": "op."}, autogenerate=False)
    context.imports = set()

    def render(op: Any) -> str:
        return "\n".join(util.to_list(renderers.dispatch(op)(context, op)))

    assert render(CreateHypertableOp("signals", "ts", schema="s")) == (
        "op.create_hypertable('signals', 'ts', "
        "chunk_time_interval=datetime.timedelta(days=7), schema='s')"
    )
    assert render(AddCompressionPolicyOp("signals", timedelta(days=30))) == (
        "op.add_compression_policy('signals', compress_after=datetime.timedelta(days=30))"
    )
    assert render(EnableCompressionOp("t", segmentby=["a"], orderby=["ts desc"])) == (
        "op.enable_compression('t', segment_by=['a'], order_by=['ts DESC'])"
    )
    assert render(DisableCompressionOp("t", decompress=True)) == (
        "op.disable_compression('t', decompress=True)"
    )
    assert render(CreateSchemaOp("analytics")) == "op.create_schema('analytics')"
    assert render(DropSchemaOp("analytics")) == "op.drop_schema('analytics')"
    assert render(DroppedWithTableOp(AddCompressionPolicyOp("t", "1 day"))) == ""
    assert render(RemoveCompressionPolicyOp("signals")) == (
        "op.remove_compression_policy('signals')"
    )
    kept = render(KeepHypertableOp("signals"))
    assert "cannot turn a hypertable back into a plain table" in kept
    assert kept.endswith("op.keep_hypertable('signals')")
    assert context.imports == {"import alembic_ext", "import datetime"}
    # What is rendered runs: the generated calls compile.
    compile(render(CreateHypertableOp("signals", "ts")), "<revision>", "exec")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("7 days", timedelta(days=7)),
        ("1 day 12:30", timedelta(days=1, hours=12, minutes=30)),
        ("2 weeks", timedelta(weeks=2)),
        ("90 min", timedelta(minutes=90)),
        ("1.5 hours", timedelta(minutes=90)),
        (timedelta(seconds=5), timedelta(seconds=5)),
    ],
)
def test_intervals_accept_timedelta_or_text(given: Any, expected: timedelta) -> None:
    assert alembic_ext.to_timedelta(given) == expected


@pytest.mark.parametrize("bad", ["1 month", "seven days", "", "0 days", "5 days; DROP", 7])
def test_bad_intervals_are_rejected(bad: Any) -> None:
    with pytest.raises(ConfigurationError):
        alembic_ext.to_timedelta(bad)


def test_offline_sql_quotes_names() -> None:
    # A name that would break SQL if it were pasted in unquoted.
    (statement, *_) = _offline_sql('we\'ird "schema"')
    assert '\'"we\'\'ird ""schema"""."signals"\'' in statement
