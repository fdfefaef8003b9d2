"""alembic_ext's continuous aggregate operations, from revision files to the database and back.

A host project (``alembic init``) declares the signals table and an hourly aggregate; its
``env.py`` puts the aggregate's operations (``create_ops``) in a revision through
``process_revision_directives`` (the comparator is tested on its own), so the revision files
are written by Alembic with our renderers, then upgraded, downgraded with materialized and
compressed data present, and emitted offline (``--sql``) and applied.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import render_python_code
from alembic.operations import Operations
from alembic.operations.ops import UpgradeOps
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, func, insert, select, text

import alembic_ext  # noqa: F401  (registers the operations)
from alembic_ext import AddCompressionPolicyOp, RemoveCompressionPolicyOp
from alembic_ext.aggregates import (
    AddContinuousAggregatePolicyOp,
    AlterContinuousAggregateOp,
    CreateContinuousAggregateOp,
    DropContinuousAggregateOp,
    RemoveContinuousAggregatePolicyOp,
    create_ops,
)
from sa_signals import ConfigurationError, TimescaleUnavailableWarning, signals_table
from sa_signals.schema.aggregates import (
    ContinuousAggregate,
    RefreshPolicy,
    read_continuous_aggregate,
)
from sa_signals.schema.functions import last, time_bucket

from .conftest import Database
from .test_alembic_autogenerate import Host, _ops, make_host

UTC = timezone.utc

ENV_PY = '''
"""env.py of a host project declaring its own continuous aggregate."""
import os
from datetime import timedelta
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, engine_from_config, func, pool, select

import alembic_ext
from alembic_ext import RemoveCompressionPolicyOp
from alembic_ext.aggregates import AlterContinuousAggregateOp, create_ops
from sa_signals import signals_table
from sa_signals.schema.aggregates import ContinuousAggregate, RefreshPolicy
from sa_signals.schema.functions import last, time_bucket

config = context.config
if config.config_file_name is not None and not config.attributes.get("in_process"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

SCHEMA = os.environ["HOST_SCHEMA"]
config.set_main_option("sqlalchemy.url", os.environ["HOST_DB_URL"].replace("%", "%%"))

target_metadata = MetaData()
signals = signals_table(target_metadata, schema=SCHEMA)
c = signals.c
bucket = time_bucket(timedelta(hours=1), c.ts).label("bucket")
hourly = ContinuousAggregate(
    "hourly_close",
    target_metadata,
    select(c.symbol, c.name, bucket, last(c.value, c.ts).label("close"), func.count().label("n"))
    .where(c.provider == "it's 100%")
    .group_by(c.symbol, c.name, bucket),
    schema=SCHEMA,
    materialized_only=False,
    refresh=RefreshPolicy(timedelta(days=30), timedelta(hours=1), timedelta(hours=1)),
    compress_after=timedelta(days=60),
    drop_after=timedelta(days=3650),
)


def _about_the_aggregate(op):
    op = getattr(op, "original", op)  # DroppedWithTableOp wraps the operation it reverses
    return getattr(op, "table_name", None) == "hourly_close"


def process_revision_directives(context, revision, directives):
    # These revisions are written by hand from create_ops(); the autogenerate comparator's own
    # operations for the aggregate are tested in test_alembic_aggregates_autogenerate.py.
    step = os.environ.get("HOST_STEP")
    script = directives[0]
    if step is None:
        for ops in (script.upgrade_ops, script.downgrade_ops):
            ops.ops[:] = [op for op in ops.ops if not _about_the_aggregate(op)]
        return
    if step == "aggregate":
        ops = create_ops(hourly)
        # Dropping the aggregate removes its policies, compression and data: one operation
        # (turning compression off first would decompress everything for nothing).
        script.upgrade_ops.ops[:] = ops
        script.downgrade_ops.ops[:] = [ops[0].reverse()]
        return
    if step == "no-compression":
        ops = [
            RemoveCompressionPolicyOp(
                "hourly_close", schema=SCHEMA, _previous=hourly.compress_after
            ),
            AlterContinuousAggregateOp(
                "hourly_close", compression=False, existing_compression=True, schema=SCHEMA
            ),
        ]
    else:
        return
    script.upgrade_ops.ops[:] = ops
    script.downgrade_ops.ops[:] = [op.reverse() for op in reversed(ops)]


def include_name(name, type_, parent_names):
    if type_ == "schema":
        return name == SCHEMA
    return alembic_ext.include_name(name, type_, parent_names)


OPTIONS = dict(
    target_metadata=target_metadata,
    include_schemas=True,
    include_name=include_name,
    include_object=alembic_ext.include_object,
    render_item=alembic_ext.render_item,
    version_table_schema=SCHEMA,
    process_revision_directives=process_revision_directives,
    autogenerate_plugins=alembic_ext.AUTOGENERATE_PLUGINS,
)

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
        connect_args={"prepare_threshold": None},
    )
    with engine.connect() as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
'''

PROVIDER = "it's 100%"
BASE = datetime(2024, 3, 4, tzinfo=UTC)


@pytest.fixture
def host(timescale_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    project = make_host(timescale_db, tmp_path, monkeypatch)
    (project.path / "migrations" / "env.py").write_text(ENV_PY)
    monkeypatch.delenv("HOST_STEP", raising=False)
    return project


def _revision(host: Host, monkeypatch: pytest.MonkeyPatch, step: str | None, message: str) -> str:
    if step is None:
        monkeypatch.delenv("HOST_STEP", raising=False)
    else:
        monkeypatch.setenv("HOST_STEP", step)
    text_ = host.autogenerate(message)
    monkeypatch.delenv("HOST_STEP", raising=False)
    return text_


def _state(host: Host) -> Any:
    engine = host.db.engine
    with engine.connect() as conn:
        return read_continuous_aggregate(conn, "hourly_close", host.db.schema)


def _pause_jobs(host: Host) -> None:
    # The native server runs policies in the background; this test wants quiet.
    host.rows(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = :s AND hypertable_name = 'hourly_close'",
        s=host.db.schema,
    )


def _seed_and_materialize(host: Host) -> int:
    db = host.db
    table = signals_table(MetaData(), schema=db.schema, timescale=None)
    rows = [
        {"provider": PROVIDER, "symbol": "SPY", "ts": BASE + timedelta(minutes=20 * i),
         "name": "x", "value": float(i), "score": None, "metadata": None}
        for i in range(30)
    ]  # fmt: skip
    with db.engine.begin() as conn:
        conn.execute(insert(table).values(rows))
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(
            text("CALL refresh_continuous_aggregate(CAST(:v AS regclass), NULL, NULL)"),
            {"v": f'"{db.schema}".hourly_close'},
        )
        conn.execute(
            text("SELECT compress_chunk(c) FROM show_chunks(CAST(:v AS regclass)) c"),
            {"v": f'"{db.schema}".hourly_close'},
        )
        compressed: int = conn.execute(
            text(
                "SELECT count(*) FROM timescaledb_information.chunks c "
                "JOIN timescaledb_information.continuous_aggregates a "
                "ON c.hypertable_name = a.materialization_hypertable_name "
                "WHERE a.view_schema = :s AND a.view_name = 'hourly_close' AND c.is_compressed"
            ),
            {"s": db.schema},
        ).scalar_one()
    return compressed


def _closes(host: Host) -> list[tuple[object, ...]]:
    return host.rows(
        f'SELECT bucket, close, n FROM "{host.db.schema}".hourly_close ORDER BY bucket'
    )


EXPECTED_CLOSES = [(BASE + timedelta(hours=h), float(3 * h + 2), 3) for h in range(10)]


def test_revisions_upgrade_and_downgrade_with_compressed_data(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    _revision(host, monkeypatch, None, "signals")
    command.upgrade(host.config(), "head")
    revision = _revision(host, monkeypatch, "aggregate", "hourly close")
    assert _ops(revision) == [
        "op.create_continuous_aggregate",
        "op.add_continuous_aggregate_policy",
        "op.alter_continuous_aggregate",
        "op.add_compression_policy",
        "op.add_retention_policy",
    ]
    assert _ops(revision, "downgrade") == ["op.drop_continuous_aggregate"]
    assert "import alembic_ext" in revision and "import datetime" in revision
    assert "it''s 100%" in revision and "time_bucket(CAST('3600 seconds' AS INTERVAL)" in revision

    command.upgrade(host.config(), "head")
    _pause_jobs(host)
    state = _state(host)
    assert state is not None
    assert (state.materialized_only, state.compression) == (False, True)
    assert state.refresh == RefreshPolicy(
        timedelta(days=30), timedelta(hours=1), timedelta(hours=1)
    )
    assert (state.compress_after, state.drop_after) == (timedelta(days=60), timedelta(days=3650))
    assert _seed_and_materialize(host) >= 1
    assert _closes(host) == EXPECTED_CLOSES

    # Turning compression off while compressed chunks exist, and back.
    _revision(host, monkeypatch, "no-compression", "no compression")
    command.upgrade(host.config(), "head")
    state = _state(host)
    assert (state.compression, state.compress_after) == (False, None)
    assert _closes(host) == EXPECTED_CLOSES
    command.downgrade(host.config(), "-1")
    state = _state(host)
    assert (state.compression, state.compress_after) == (True, timedelta(days=60))

    # Downgrading the aggregate's revision drops it, compressed data and all.
    host.rows(
        "SELECT compress_chunk(c, true) FROM show_chunks(CAST(:v AS regclass)) c",
        v=f'"{host.db.schema}".hourly_close',
    )
    command.downgrade(host.config(), "-1")
    assert _state(host) is None
    assert host.rows(f'SELECT count(*) FROM "{host.db.schema}".signals') == [(30,)]
    command.upgrade(host.config(), "+1")
    _pause_jobs(host)
    assert _closes(host) == EXPECTED_CLOSES  # real-time aggregation: nothing materialized yet


def test_offline_sql_of_the_aggregate_revision_applies(
    host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    _revision(host, monkeypatch, None, "signals")
    command.upgrade(host.config(), "head")
    _revision(host, monkeypatch, "aggregate", "hourly close")
    revisions = host.rows(f'SELECT version_num FROM "{host.db.schema}".alembic_version')
    current = str(revisions[0][0])
    result = host.cli("upgrade", f"{current}:head", "--sql")
    sql = result.stdout
    assert "CREATE MATERIALIZED VIEW" in sql and "add_continuous_aggregate_policy" in sql
    assert "%%" not in sql and "it''s 100%" in sql
    statements = [s.strip() for s in re.split(r";\s*\n", sql) if s.strip()]
    statements = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    with host.connect() as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement.encode())
    _pause_jobs(host)
    state = _state(host)
    assert state is not None and state.compression is True
    assert state.refresh == RefreshPolicy(
        timedelta(days=30), timedelta(hours=1), timedelta(hours=1)
    )
    _seed_and_materialize(host)
    assert _closes(host) == EXPECTED_CLOSES


def test_operations_skip_without_timescaledb(postgres_db: Database) -> None:
    db = postgres_db
    with pytest.warns(TimescaleUnavailableWarning) as warned, db.engine.begin() as conn:
        op: Any = Operations(MigrationContext.configure(conn))
        op.create_continuous_aggregate("agg", "SELECT 1", schema=db.schema)
        op.add_continuous_aggregate_policy(
            "agg", start_offset=None, end_offset="1 hour", schedule_interval="1 hour",
            schema=db.schema,
        )  # fmt: skip
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2
    assert "skipped create_continuous_aggregate" in messages[0]
    assert db.sql("SELECT to_regclass(:r)", r=f'"{db.schema}".agg') == [(None,)]


def test_operations_run_directly_on_timescaledb(timescale_db: Database) -> None:
    db = timescale_db
    db.table  # noqa: B018 - the hypertable
    c = db.table.c
    bucket = time_bucket(timedelta(days=1), c.ts).label("day")
    definition = str(
        select(c.name, bucket, func.max(c.value).label("high"))
        .group_by(c.name, bucket)
        .compile(compile_kwargs={"literal_binds": True})
    )
    with db.engine.begin() as conn:
        op: Any = Operations(MigrationContext.configure(conn))
        op.create_continuous_aggregate("daily_high", definition, schema=db.schema)
        op.add_continuous_aggregate_policy(
            "daily_high", start_offset="10 days", end_offset=None,
            schedule_interval=timedelta(hours=6), schema=db.schema,
        )  # fmt: skip
        op.alter_continuous_aggregate("daily_high", materialized_only=False, schema=db.schema)
        state = read_continuous_aggregate(conn, "daily_high", db.schema)
        assert state is not None and state.materialized_only is False
        assert state.refresh == RefreshPolicy(timedelta(days=10), None, timedelta(hours=6))
        op.remove_continuous_aggregate_policy("daily_high", schema=db.schema)
        op.drop_continuous_aggregate("daily_high", schema=db.schema)
        op.drop_continuous_aggregate("daily_high", schema=db.schema, if_exists=True)
        assert read_continuous_aggregate(conn, "daily_high", db.schema) is None


# ------------------------------------------------------------------------ ops without a database


def _aggregate() -> ContinuousAggregate:
    metadata = MetaData()
    table = signals_table(metadata, schema="market")
    c = table.c
    bucket = time_bucket(timedelta(hours=1), c.ts).label("bucket")
    return ContinuousAggregate(
        "hourly",
        metadata,
        select(c.symbol, bucket, last(c.value, c.ts).label("close")).group_by(c.symbol, bucket),
        schema="market",
        refresh=RefreshPolicy(None, timedelta(hours=1), timedelta(minutes=30)),
        compress_after=timedelta(days=7),
    )


def test_each_operation_reverses_to_its_counterpart() -> None:
    create = CreateContinuousAggregateOp.from_aggregate(_aggregate())
    drop = create.reverse()
    assert isinstance(drop, DropContinuousAggregateOp) and drop.reverse() == create
    with pytest.raises(ValueError, match="definition it dropped is unknown"):
        DropContinuousAggregateOp("hourly").reverse()
    add = AddContinuousAggregatePolicyOp(
        "hourly", start_offset="3 days", end_offset="1 hour", schedule_interval="30 minutes"
    )
    remove = add.reverse()
    assert isinstance(remove, RemoveContinuousAggregatePolicyOp) and remove.reverse() == add
    with pytest.raises(ValueError, match="policy it removed is unknown"):
        RemoveContinuousAggregatePolicyOp("hourly").reverse()
    alter = AlterContinuousAggregateOp("hourly", materialized_only=False, compression=True)
    back = alter.reverse()
    assert (back.materialized_only, back.compression) == (True, False)
    assert back.reverse() == alter
    with pytest.raises(ConfigurationError, match="needs materialized_only or compression"):
        AlterContinuousAggregateOp("hourly")
    with pytest.raises(ConfigurationError, match="must be larger than end_offset"):
        AddContinuousAggregatePolicyOp(
            "hourly", start_offset="1 hour", end_offset="1 day", schedule_interval="1 hour"
        )
    assert add.to_diff_tuple() == (
        "add_continuous_aggregate_policy", None, "hourly",
        timedelta(days=3), timedelta(hours=1), timedelta(minutes=30),
    )  # fmt: skip


def test_create_ops_follow_the_declaration() -> None:
    aggregate = _aggregate()
    ops = create_ops(aggregate)
    assert [type(op) for op in ops] == [
        CreateContinuousAggregateOp,
        AddContinuousAggregatePolicyOp,
        AlterContinuousAggregateOp,
        AddCompressionPolicyOp,
    ]
    code = render_python_code(UpgradeOps(ops=ops))
    assert 'op.create_continuous_aggregate(\'hourly\', """SELECT market.signals.symbol' in code
    assert "FROM market.signals GROUP BY" in code
    assert (
        "op.add_continuous_aggregate_policy('hourly', start_offset=None, "
        "end_offset=datetime.timedelta(seconds=3600), "
        "schedule_interval=datetime.timedelta(seconds=1800), schema='market')"
    ) in code
    assert (
        "op.alter_continuous_aggregate('hourly', compression=True, existing_compression=False, "
        "schema='market')"
    ) in code
    downgrade = [op.reverse() for op in reversed(ops)]
    assert isinstance(downgrade[0], RemoveCompressionPolicyOp)
    assert isinstance(downgrade[-1], DropContinuousAggregateOp)


def test_offline_sql_uses_the_requested_compression_names() -> None:
    for version, expected in (
        (None, "timescaledb.compress = true"),
        ("2.18", "enable_columnstore"),
    ):
        buffer = io.StringIO()
        opts: dict[str, Any] = {"as_sql": True, "output_buffer": buffer}
        if version is not None:
            opts["timescaledb_version"] = version
        context = MigrationContext.configure(dialect_name="postgresql", opts=opts)
        op: Any = Operations(context)
        op.alter_continuous_aggregate("hourly", compression=True, schema="market")
        op.alter_continuous_aggregate("hourly", compression=False, schema="market")
        out = buffer.getvalue()
        assert expected in out
        assert (
            "decompress_chunk" in out
            and 'show_chunks(CAST(\'"market"."hourly"\' AS regclass))' in out
        )
