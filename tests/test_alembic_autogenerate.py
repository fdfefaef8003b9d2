"""End to end: a host project made with ``alembic init`` autogenerates and runs migrations.

The host's ``env.py`` holds the signals table and one unrelated table in the test's schema; its
settings come from environment variables so a test can change the model between runs. Most
commands run in-process through ``alembic.command``; one autogenerate and the offline ``--sql``
run go through the real ``alembic`` CLI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

import alembic_ext
from alembic_ext import CreateSchemaOp
from sa_signals import TimescaleUnavailableWarning, signals_table

from .conftest import Database

ALEMBIC = Path(sys.executable).with_name("alembic")

ENV_PY = '''
"""env.py of a host project: its own MetaData with the signals table and one table of its own."""
import os
from datetime import timedelta
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Column, Integer, MetaData, Table, Text, engine_from_config, pool

import alembic_ext
from sa_signals import TimescaleOptions, signals_table

config = context.config
if config.config_file_name is not None and not config.attributes.get("in_process"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

SCHEMA = os.environ["HOST_SCHEMA"]
config.set_main_option("sqlalchemy.url", os.environ["HOST_DB_URL"].replace("%", "%%"))

target_metadata = MetaData()
signals_table(
    target_metadata,
    schema=SCHEMA,
    timescale=TimescaleOptions(
        compress_after=timedelta(days=int(os.environ.get("HOST_COMPRESS_AFTER_DAYS", "30"))),
        segment_by=os.environ.get("HOST_SEGMENT_BY", "provider,symbol,name").split(","),
    ),
)
if not os.environ.get("HOST_SIGNALS_ONLY"):
    Table(
        "host_items",
        target_metadata,
        Column("id", Integer, primary_key=True),
        Column("label", Text),
        schema=SCHEMA,
    )


def include_name(name, type_, parent_names):
    # Only this project's schema; inside it, TimescaleDB's own objects stay out.
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
    # The TimescaleDB test server serves one connection at a time: no pooled connections.
    # It also runs every connection on one backend, where psycopg's named prepared statements
    # of an earlier connection still exist: do not prepare.
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


@dataclass
class Host:
    """A temporary host project bound to one test database schema."""

    path: Path
    db: Database
    url: URL

    @property
    def ini(self) -> Path:
        return self.path / "alembic.ini"

    def config(self) -> Config:
        config = Config(str(self.ini))
        config.attributes["in_process"] = True
        return config

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        result = subprocess.run(
            [str(ALEMBIC), "-c", str(self.ini), *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), *python_path])},
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result

    def autogenerate(self, message: str) -> str:
        script = command.revision(self.config(), message=message, autogenerate=True)
        assert script is not None and not isinstance(script, list)
        return Path(script.path).read_text()

    def connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            self.url.set(drivername="postgresql").render_as_string(hide_password=False),
            autocommit=True,
        )

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        engine = create_engine(
            self.url, poolclass=NullPool, connect_args={"prepare_threshold": None}
        )
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()


def make_host(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """``alembic init`` in ``tmp_path`` with the env.py above, pointed at the test's schema."""
    project = tmp_path / "host"
    config = Config(str(tmp_path / "alembic.ini"))
    command.init(config, str(project / "migrations"))
    (project / "alembic.ini").write_text((tmp_path / "alembic.ini").read_text())
    (project / "migrations" / "env.py").write_text(ENV_PY)
    ini = (project / "alembic.ini").read_text()
    ini = re.sub(r"(?m)^script_location = .*$", f"script_location = {project / 'migrations'}", ini)
    (project / "alembic.ini").write_text(ini)
    url = db.url.difference_update_query(["options"])
    monkeypatch.setenv("HOST_DB_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("HOST_SCHEMA", str(db.schema))
    monkeypatch.delenv("HOST_COMPRESS_AFTER_DAYS", raising=False)
    monkeypatch.delenv("HOST_SEGMENT_BY", raising=False)
    monkeypatch.delenv("HOST_SIGNALS_ONLY", raising=False)
    return Host(project, db, url)


@pytest.fixture
def ts_host(timescale_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A host project on TimescaleDB."""
    return make_host(timescale_db, tmp_path, monkeypatch)


@pytest.fixture
def pg_host(postgres_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    """A host project on plain PostgreSQL."""
    return make_host(postgres_db, tmp_path, monkeypatch)


def _ops(revision_text: str, function: str = "upgrade") -> list[str]:
    """The ``op.*`` calls in the revision's upgrade (or downgrade) function, one per call."""
    body = revision_text.split(f"def {function}()", 1)[1].split("\ndef ", 1)[0]
    calls = re.findall(r"^    (op\.\w+)\(", body, flags=re.MULTILINE)
    return calls


def timescale_info(host: Host) -> dict[str, object]:
    where = "hypertable_schema = :s AND hypertable_name = 'signals'"
    schema = host.db.schema
    interval = host.rows(
        f"SELECT time_interval FROM timescaledb_information.dimensions WHERE {where}", s=schema
    )
    settings = host.rows(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc "
        f"FROM timescaledb_information.compression_settings WHERE {where}",
        s=schema,
    )
    jobs = host.rows(
        "SELECT proc_name, config ->> 'compress_after' FROM timescaledb_information.jobs "
        f"WHERE {where} ORDER BY proc_name",
        s=schema,
    )
    return {
        "interval": interval[0][0] if interval else None,
        "segmentby": [
            r[0] for r in sorted((s for s in settings if s[1]), key=lambda s: int(str(s[1])))
        ],
        "orderby": [(r[0], r[3]) for r in settings if r[2] is not None],
        "jobs": jobs,
    }


def schema_tables(host: Host) -> set[str]:
    rows = host.rows(
        "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = :s", s=host.db.schema
    )
    return {str(r[0]) for r in rows}


def test_autogenerate_upgrade_change_and_downgrade_on_timescale(
    ts_host: Host, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = ts_host
    # 1. The real CLI writes the first revision.
    host.cli("revision", "--autogenerate", "-m", "initial")
    (first,) = (host.path / "migrations" / "versions").glob("*initial.py")
    revision = first.read_text()
    upgrade = _ops(revision)
    assert upgrade.count("op.create_table") == 2
    assert upgrade[-3:] == [
        "op.create_hypertable",
        "op.enable_compression",
        "op.add_compression_policy",
    ]
    assert "import alembic_ext" in revision and "import datetime" in revision
    assert "chunk_time_interval=datetime.timedelta(days=7)" in revision
    assert "segment_by=['provider', 'symbol', 'name'], order_by=['ts DESC']" in revision
    assert "compress_after=datetime.timedelta(days=30)" in revision

    # 2. Upgrade leaves the spec's settings.
    command.upgrade(host.config(), "head")
    assert timescale_info(host) == {
        "interval": timedelta(days=7),
        "segmentby": ["provider", "symbol", "name"],
        "orderby": [("ts", False)],
        "jobs": [("policy_compression", "30 days")],
    }
    assert {"signals", "host_items", "alembic_version"} <= schema_tables(host)

    # 3. Nothing left to generate (alembic check raises on any difference).
    command.check(host.config())

    # 4. A model change yields exactly the matching operations, and upgrading applies them.
    monkeypatch.setenv("HOST_COMPRESS_AFTER_DAYS", "10")
    monkeypatch.setenv("HOST_SEGMENT_BY", "provider,symbol")
    changed = host.autogenerate("tune compression")
    assert _ops(changed) == [
        "op.remove_compression_policy",
        "op.enable_compression",
        "op.add_compression_policy",
    ]
    assert "segment_by=['provider', 'symbol']" in changed
    assert "compress_after=datetime.timedelta(days=10)" in changed
    # The downgrade restores the previous settings.
    assert _ops(changed, "downgrade") == [
        "op.remove_compression_policy",
        "op.enable_compression",
        "op.add_compression_policy",
    ]
    assert "segment_by=['provider', 'symbol', 'name']" in changed.split("def downgrade")[1]
    command.upgrade(host.config(), "head")
    info = timescale_info(host)
    assert info["segmentby"] == ["provider", "symbol"]
    assert info["jobs"] == [("policy_compression", "10 days")]
    command.check(host.config())

    # 5. Downgrading one step restores the first settings.
    command.downgrade(host.config(), "-1")
    info = timescale_info(host)
    assert info["segmentby"] == ["provider", "symbol", "name"]
    assert info["jobs"] == [("policy_compression", "30 days")]

    # 6. With a chunk in place, downgrading to base leaves nothing behind.
    host.rows(
        f'INSERT INTO "{host.db.schema}".signals (provider, symbol, ts, name, value) '
        "VALUES ('p', 'S', :ts, 'n', 1.0)",
        ts=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    assert host.rows(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = :s",
        s=host.db.schema,
    ) == [(1,)]
    command.downgrade(host.config(), "base")
    assert schema_tables(host) == {"alembic_version"}
    assert host.rows("SELECT count(*) FROM " + f'"{host.db.schema}".alembic_version') == [(0,)]
    for view in ("hypertables", "jobs", "chunks"):
        assert host.rows(
            f"SELECT count(*) FROM timescaledb_information.{view} WHERE hypertable_schema = :s",
            s=host.db.schema,
        ) == [(0,)]


def test_offline_sql_applies_cleanly(ts_host: Host) -> None:
    host = ts_host
    command.revision(host.config(), message="initial", autogenerate=True)
    sql = host.cli("upgrade", "head", "--sql").stdout
    assert "create_hypertable" in sql and "add_compression_policy" in sql
    assert ":relation" not in sql  # values were rendered as literals
    # Autogenerate created the version table; start from an empty schema.
    host.rows(f'DROP TABLE "{host.db.schema}".alembic_version')
    assert schema_tables(host) == set()
    with host.connect() as conn:
        conn.execute(sql.encode())
    assert timescale_info(host) == {
        "interval": timedelta(days=7),
        "segmentby": ["provider", "symbol", "name"],
        "orderby": [("ts", False)],
        "jobs": [("policy_compression", "30 days")],
    }
    # The database the script built is what the model describes.
    command.check(host.config())


def test_plain_postgres_upgrades_with_warnings(pg_host: Host) -> None:
    host = pg_host
    revision = host.autogenerate("initial")
    # The revision is still right for TimescaleDB, where it may run later.
    assert _ops(revision)[-3:] == [
        "op.create_hypertable",
        "op.enable_compression",
        "op.add_compression_policy",
    ]
    with pytest.warns(TimescaleUnavailableWarning) as warned:
        command.upgrade(host.config(), "head")
    skipped = [str(w.message) for w in warned if "timescaledb not available" in str(w.message)]
    assert len(skipped) == 3
    assert any("create_hypertable" in message for message in skipped)
    engine = create_engine(host.url, poolclass=NullPool)
    try:
        assert set(inspect(engine).get_table_names(schema=host.db.schema)) == {
            "signals",
            "host_items",
            "alembic_version",
        }
    finally:
        engine.dispose()
    assert host.rows(
        "SELECT relkind FROM pg_class WHERE relname = 'signals' "
        "AND relnamespace = CAST(:s AS regnamespace)",
        s=host.db.schema,
    ) == [("r",)]
    command.downgrade(host.config(), "base")
    assert schema_tables(host) == {"alembic_version"}


# -- registration: one comparator, run once, by default, extensible -------------------------


def _diffs(db: Database, metadata: MetaData, **opts: object) -> list[tuple[object, ...]]:
    """``compare_metadata`` as ``alembic check`` runs it, against the test's schema."""
    engine = create_engine(db.url.difference_update_query(["options"]), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_schemas": True, "include_name": _only(db), **opts}
            )
            return [d for d in compare_metadata(context, metadata) if isinstance(d, tuple)]
    finally:
        engine.dispose()


def _only(db: Database) -> Callable[[str | None, str, Mapping[str, object]], bool]:
    schemas = {db.schema, f"{db.schema}_new"}
    return lambda name, type_, parents: type_ != "schema" or name in schemas


@pytest.mark.parametrize("listed", [False, True], ids=["import-only", "plugin-listed"])
def test_comparator_runs_once_by_default_and_with_the_plugin_listed(
    postgres_db: Database, listed: bool
) -> None:
    metadata = MetaData()
    signals_table(metadata, schema=f"{postgres_db.schema}_new")
    opts = {"autogenerate_plugins": alembic_ext.AUTOGENERATE_PLUGINS} if listed else {}
    kinds = [d[0] for d in _diffs(postgres_db, metadata, **opts) if d[0] != "add_index"]
    # A schema that does not exist yet: its create_schema, then the table's TimescaleDB ops.
    assert kinds == [
        "add_schema",
        "add_table",
        "create_hypertable",
        "enable_compression",
        "add_compression_policy",
    ]


def test_registered_comparators_run_after_ours(postgres_db: Database) -> None:
    seen: list[list[str]] = []

    def extra(context: alembic_ext.CompareContext) -> None:
        seen.append([type(op).__name__ for op in context.upgrade_ops.ops])
        context.add(CreateSchemaOp("extra_schema"))

    metadata = MetaData()
    signals_table(metadata, schema=postgres_db.schema)
    alembic_ext.register_comparator("tests.extra", extra)
    try:
        diffs = _diffs(postgres_db, metadata)
    finally:
        alembic_ext.unregister_comparator("tests.extra")
    assert seen == [
        [
            "CreateTableOp",
            "ModifyTableOps",
            "CreateHypertableOp",
            "EnableCompressionOp",
            "AddCompressionPolicyOp",
        ]
    ]
    assert diffs[-1] == ("add_schema", "extra_schema")
    assert _diffs(postgres_db, metadata)[-1][0] == "add_compression_policy"


def test_timescale_settings_stay_out_of_create_table_on_every_dialect(tmp_path: Path) -> None:
    metadata = MetaData()
    signals_table(metadata)
    engine = create_engine(f"sqlite:///{tmp_path / 'host.db'}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"render_item": alembic_ext.render_item}
            )
            script = produce_migrations(context, metadata)
            rendered = render_python_code(script.upgrade_ops, render_item=alembic_ext.render_item)
    finally:
        engine.dispose()
    assert "op.create_table('signals'" in rendered
    assert "info=" not in rendered and "TimescaleOptions" not in rendered
