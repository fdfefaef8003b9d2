"""alembic_ext's Citus operations and comparator: online on the Citus tier, offline SQL, and
an autogenerate round trip of a host project (first run emits the op, the second nothing)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from alembic import command, util
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, MetaData

from alembic_ext import CreateDistributedTableOp, UndistributeTableOp
from sa_signals import (
    CitusUnavailableError,
    CitusUnavailableWarning,
    ConfigurationError,
    DistributionOptions,
    signals_table,
)
from sa_signals.schema.ddl.citus import read_distribution_state

from .conftest import Database
from .test_alembic_autogenerate import Host, _ops, make_host


def _operations(conn: Connection, **opts: Any) -> Any:
    return Operations(MigrationContext.configure(conn, opts=opts))


def _plain_table(db: Database) -> None:
    signals_table(db.metadata, schema=db.schema, timescale=None)
    db.metadata.create_all(db.engine)


def _distributed(db: Database) -> tuple[bool, str | None, int | None]:
    with db.engine.connect() as conn:
        state = read_distribution_state(conn, "signals", db.schema)
    return state.is_distributed, state.column, state.shard_count


# -- the operations, no database ------------------------------------------------------------


def test_create_and_undistribute_reverse_each_other() -> None:
    create = CreateDistributedTableOp("signals", "symbol", shard_count=8, schema="s")
    undo = create.reverse()
    assert isinstance(undo, UndistributeTableOp)
    assert (undo.table_name, undo.schema) == ("signals", "s")
    again = undo.reverse()
    assert again == create
    with pytest.raises(ValueError, match="not reversible"):
        UndistributeTableOp("signals").reverse()
    # On a table the revision creates, the downgrade's drop_table removes the shards.
    create.new_table = True
    assert create.reverse().to_diff_tuple() == ("dropped_with_table", "s", "signals")


def test_operation_arguments_are_validated_when_written() -> None:
    with pytest.raises(ConfigurationError, match="do not combine"):
        CreateDistributedTableOp("signals", "symbol", shard_count=4, colocate_with="other")
    with pytest.raises(ConfigurationError, match="shard_count"):
        CreateDistributedTableOp("signals", "symbol", shard_count=0)
    with pytest.raises(ConfigurationError, match="table name"):
        UndistributeTableOp("")


def test_render_writes_calls_and_the_import() -> None:
    migration = MigrationContext.configure(dialect_name="postgresql")
    context = AutogenContext(migration, opts={"alembic_module_prefix": "op."}, autogenerate=False)
    context.imports = set()

    def render(op: Any) -> str:
        return "\n".join(util.to_list(renderers.dispatch(op)(context, op)))

    create = CreateDistributedTableOp("signals", "symbol", shard_count=8, schema="s")
    assert render(create) == (
        "op.create_distributed_table('signals', 'symbol', shard_count=8, schema='s')"
    )
    colocated = CreateDistributedTableOp("signals", "symbol", colocate_with="s.instruments")
    assert render(colocated) == (
        "op.create_distributed_table('signals', 'symbol', colocate_with='s.instruments')"
    )
    assert render(UndistributeTableOp("signals")) == "op.undistribute_table('signals')"
    assert "import alembic_ext" in context.imports


def _offline_sql(schema: str, **opts: Any) -> list[str]:
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer, **opts}
    )
    op: Any = Operations(context)
    op.create_distributed_table("signals", "symbol", shard_count=4, schema=schema)
    op.undistribute_table("signals", schema=schema)
    return [s.strip() for s in re.split(r";\n", buffer.getvalue()) if s.strip()]


def test_offline_sql_is_guarded_and_quotes_names() -> None:
    create, undo = _offline_sql("it's")
    assert create.startswith("DO $sa_signals$ BEGIN IF EXISTS")
    assert "extname = 'citus'" in create and "RAISE WARNING" in create
    assert "PERFORM create_distributed_table(CAST('\"it''s\".\"signals\"' AS regclass)" in create
    assert "shard_count => CAST(4 AS integer)" in create
    assert "undistribute_table(CAST('\"it''s\".\"signals\"' AS regclass))" in undo
    (strict, _) = _offline_sql("s", citus_strict=True)
    assert "RAISE EXCEPTION" in strict


# -- online ---------------------------------------------------------------------------------


@pytest.mark.citus
def test_operations_distribute_and_undistribute_keeping_rows(citus_db: Database) -> None:
    _plain_table(citus_db)
    citus_db.sql(
        "INSERT INTO signals (provider, symbol, ts, name, value) "
        "SELECT 'p', 'S' || (i % 7), now() - i * interval '1 minute', 'n', i "
        "FROM generate_series(1, 50) AS i"
    )
    with citus_db.engine.begin() as conn:
        _operations(conn).create_distributed_table(
            "signals", "symbol", shard_count=4, schema=citus_db.schema
        )
    assert _distributed(citus_db) == (True, "symbol", 4)
    citus_db.sql(
        "SELECT truncate_local_data_after_distributing_table(CAST(:t AS regclass))",
        t=f'"{citus_db.schema}".signals',
    )
    assert citus_db.sql("SELECT count(*) FROM signals") == [(50,)]
    with citus_db.engine.begin() as conn:
        _operations(conn).undistribute_table("signals", schema=citus_db.schema)
    assert _distributed(citus_db) == (False, None, None)
    assert citus_db.sql("SELECT count(*) FROM signals") == [(50,)]


@pytest.mark.citus
def test_offline_sql_applies_on_citus(citus_db: Database) -> None:
    _plain_table(citus_db)
    create, undo = _offline_sql(str(citus_db.schema))
    citus_db.sql(create)
    assert _distributed(citus_db) == (True, "symbol", 4)
    citus_db.sql(undo)
    assert _distributed(citus_db)[0] is False


@pytest.mark.postgres
def test_without_citus_operations_warn_or_fail_in_strict_mode(postgres_db: Database) -> None:
    _plain_table(postgres_db)
    with postgres_db.engine.begin() as conn:
        with pytest.warns(CitusUnavailableWarning, match="skipped create_distributed_table"):
            _operations(conn).create_distributed_table(
                "signals", "symbol", schema=postgres_db.schema
            )
        with pytest.raises(CitusUnavailableError, match="citus_strict"):
            _operations(conn, citus_strict=True).undistribute_table(
                "signals", schema=postgres_db.schema
            )
    create, _ = _offline_sql(str(postgres_db.schema))
    postgres_db.sql(create)  # a WARNING from the server, the table stays plain


# -- autogenerate round trip ----------------------------------------------------------------

ENV_PY = '''
"""env.py of a host project with a Citus-distributed signals table."""
import os

from alembic import context
from sqlalchemy import MetaData, engine_from_config, pool

import alembic_ext
from sa_signals import DistributionOptions, signals_table

config = context.config
SCHEMA = os.environ["HOST_SCHEMA"]
config.set_main_option("sqlalchemy.url", os.environ["HOST_DB_URL"].replace("%", "%%"))

target_metadata = MetaData()
shards = os.environ.get("HOST_SHARDS")
signals_table(
    target_metadata,
    schema=SCHEMA,
    timescale=None,
    distribution=DistributionOptions(shard_count=int(shards)) if shards else None,
)


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
    )
    with engine.connect() as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
'''


@pytest.fixture
def citus_host(citus_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    host = make_host(citus_db, tmp_path, monkeypatch)
    (host.path / "migrations" / "env.py").write_text(ENV_PY)
    monkeypatch.setenv("HOST_SHARDS", "4")
    return host


def _host_state(host: Host) -> tuple[bool, str | None, int | None]:
    return _distributed(host.db)


@pytest.mark.citus
def test_autogenerate_round_trip_of_a_new_distributed_table(citus_host: Host) -> None:
    host = citus_host
    first = host.autogenerate("initial")
    upgrade = _ops(first)
    assert upgrade[0] == "op.create_table" and upgrade[-1] == "op.create_distributed_table"
    assert "op.create_distributed_table('signals', 'symbol', shard_count=4, schema=" in first
    assert "op.undistribute_table" not in first  # the downgrade's drop_table removes the shards
    command.upgrade(host.config(), "head")
    assert _host_state(host) == (True, "symbol", 4)
    second = host.autogenerate("nothing")
    assert _ops(second) == [] and _ops(second, "downgrade") == []
    command.downgrade(host.config(), "base")
    assert host.rows(
        "SELECT count(*) FROM pg_tables WHERE schemaname = :s AND tablename = 'signals'",
        s=host.db.schema,
    ) == [(0,)]


@pytest.mark.citus
def test_autogenerate_distributes_an_existing_table_and_downgrades_to_plain(
    citus_host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = citus_host
    monkeypatch.delenv("HOST_SHARDS")
    host.autogenerate("plain")
    command.upgrade(host.config(), "head")
    host.rows(
        f'INSERT INTO "{host.db.schema}".signals (provider, symbol, ts, name, value) '
        "SELECT 'p', 'S' || (i % 5), now() - i * interval '1 second', 'n', i "
        "FROM generate_series(1, 40) AS i"
    )
    monkeypatch.setenv("HOST_SHARDS", "4")
    revision = host.autogenerate("distribute")
    assert _ops(revision) == ["op.create_distributed_table"]
    assert _ops(revision, "downgrade") == ["op.undistribute_table"]
    command.upgrade(host.config(), "head")
    assert _host_state(host) == (True, "symbol", 4)
    assert _ops(host.autogenerate("again")) == []
    command.downgrade(host.config(), "-1")  # the distribution ("again" was never applied)
    assert _host_state(host) == (False, None, None)
    assert host.rows(f'SELECT count(*) FROM "{host.db.schema}".signals') == [(40,)]


@pytest.mark.citus
def test_comparator_warns_about_another_distribution_column(citus_db: Database) -> None:
    from alembic.autogenerate import compare_metadata

    _plain_table(citus_db)
    citus_db.sql("SELECT create_distributed_table('signals', 'provider', shard_count => 2)")
    metadata = MetaData()
    signals_table(
        metadata, schema=citus_db.schema, timescale=None, distribution=DistributionOptions()
    )
    engine = citus_db.engine
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": lambda n, t, p: t != "schema" or n == citus_db.schema,
            },
        )
        with pytest.warns(UserWarning, match="distributed by 'provider' but the model says"):
            diffs = compare_metadata(context, metadata)
    assert not [d for d in diffs if isinstance(d, tuple) and "distributed" in str(d[0])]
