"""End to end, as a user runs it: a host application in a stock ``alembic init`` project.

The host (``tests/host_project/myapp``) has its own ``DeclarativeBase`` with a naming
convention, two tables, an ORM signals model (``SignalMixin``) in a schema ``analytics`` that
does not exist yet, and a Core signals table with a retention policy. The project is made by
``alembic init``; its ``env.py`` and ``alembic.ini`` are the template's, with only the lines
docs/alembic.md documents (:data:`ENV_EDITS`) and the database URL changed. Every command runs
the ``alembic`` CLI in a subprocess, so the template's ``fileConfig()`` logging is in force.

Alembic versions: ``installed`` is this environment's Alembic; ``oldest`` is the ``alembic``
executable named by ``SA_SIGNALS_TEST_ALEMBIC_OLDEST`` (a virtualenv with Alembic 1.13 and
sa_signals installed; CI sets it). Without it those cases skip, unless
``SA_SIGNALS_REQUIRE_TIERS`` names ``alembic-oldest``.

Isolation: each test has its own schema as the connection's default schema (``search_path`` in
the URL) and its own ``analytics`` schema name; on the PGlite TimescaleDB, which ignores startup
options, the default schema is ``public`` and the host's tables there are dropped afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .conftest import Database, _required

HERE = Path(__file__).parent
MYAPP = HERE / "host_project" / "myapp"
DOCS = HERE.parent / "docs" / "alembic.md"
INSTALLED_ALEMBIC = Path(sys.executable).with_name("alembic")
OLDEST_ENV = "SA_SIGNALS_TEST_ALEMBIC_OLDEST"

#: The options docs/alembic.md adds to both ``context.configure()`` calls of the template.
CONFIGURE_OPTIONS = (
    "include_schemas=True,",
    "include_name=alembic_ext.combine_include_name(models.only_own_schemas),",
    "include_object=alembic_ext.include_object,",
    "render_item=alembic_ext.render_item,",
)
PLUGIN_OPTION = "autogenerate_plugins=alembic_ext.AUTOGENERATE_PLUGINS,"
GEO_OPTIONS = (
    "include_schemas=True,",
    "include_name=alembic_ext.combine_include_name(models.only_own_schemas),",
    "include_object=alembic_ext.combine_include_object(alembic_helpers.include_object),",
    "render_item=alembic_ext.combine_render_item(alembic_helpers.render_item),",
)
#: The template's lines and what the documented env.py has instead (each must match once).
ENV_EDITS = (
    ("from alembic import context\n", "from alembic import context\n\n{imports}"),
    ("target_metadata = None\n", "target_metadata = models.Base.metadata\n"),
    (
        "        target_metadata=target_metadata,\n        literal_binds=True,\n",
        "        target_metadata=target_metadata,\n{options8}        literal_binds=True,\n",
    ),
    (
        "            connection=connection, target_metadata=target_metadata\n",
        "            connection=connection,\n            target_metadata=target_metadata,\n"
        "{options12}",
    ),
)
IMPORTS = "import alembic_ext\nfrom myapp import models\n"
GEO_IMPORTS = IMPORTS + "from geoalchemy2 import alembic_helpers\n"


@pytest.fixture(
    params=[
        pytest.param("installed", id="alembic-installed"),
        pytest.param("oldest", id="alembic-oldest"),
    ]
)
def alembic_exe(request: pytest.FixtureRequest) -> Path:
    """The ``alembic`` executable of the Alembic version under test."""
    if request.param == "installed":
        return INSTALLED_ALEMBIC
    value = os.environ.get(OLDEST_ENV)
    if not value:
        reason = f"{OLDEST_ENV} is not set (an alembic executable of a venv with Alembic 1.13)"
        if "alembic-oldest" in _required():
            pytest.fail(f"alembic-oldest required (SA_SIGNALS_REQUIRE_TIERS) but {reason}")
        pytest.skip(reason)
    return Path(value)


@dataclass
class HostProject:
    """A stock ``alembic init`` project of the host application, bound to one test's schemas."""

    path: Path
    alembic: Path
    db: Database
    url: URL
    analytics: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def versions(self) -> Path:
        return self.path / "migrations" / "versions"

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """``alembic <args>`` in the project directory, as a user types it."""
        environment = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        environment.update({"MYAPP_ANALYTICS_SCHEMA": self.analytics, **self.env})
        result = subprocess.run(
            [str(self.alembic), *args],
            cwd=self.path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if ok:
            assert result.returncode == 0, f"alembic {' '.join(args)}:\n{result.stderr}"
        return result

    def revision(self, message: str) -> tuple[Path, str]:
        """``alembic revision --autogenerate``: the new file, and what the CLI wrote on stderr."""
        result = self.run("revision", "--autogenerate", "-m", message)
        match = re.search(r"Generating (\S+\.py)", result.stdout)
        assert match is not None, result.stdout
        return Path(match.group(1)), result.stderr

    def configure_env(self, imports: str, options: tuple[str, ...]) -> None:
        """Write the template's ``env.py`` with the documented edits."""
        template = self.path / "migrations" / "env.py.orig"
        source = template.read_text()
        for old, new in ENV_EDITS:
            assert source.count(old) == 1, f"the template's env.py changed: {old!r}"
            source = source.replace(
                old,
                new.format(
                    imports=imports,
                    options8="".join(f"        {line}\n" for line in options),
                    options12="".join(f"            {line}\n" for line in options),
                ),
            )
        (self.path / "migrations" / "env.py").write_text(source)

    def import_models(self) -> ModuleType:
        """The host's ``myapp.models`` as the project's own code imports it (a fresh copy)."""
        name = f"myapp_models_{self.analytics}"
        spec = importlib.util.spec_from_file_location(name, self.path / "myapp" / "models.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        previous = os.environ.get("MYAPP_ANALYTICS_SCHEMA")
        os.environ["MYAPP_ANALYTICS_SCHEMA"] = self.analytics
        # Declarative resolves the annotations through sys.modules while the classes are built.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
            if previous is None:
                del os.environ["MYAPP_ANALYTICS_SCHEMA"]
            else:
                os.environ["MYAPP_ANALYTICS_SCHEMA"] = previous
        return module

    def sql(self, statement: str, **params: object) -> list[tuple[object, ...]]:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    @property
    def default_schema(self) -> str:
        return str(self.sql("SELECT current_schema()")[0][0])

    def tables(self, schema: str) -> set[str]:
        rows = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = :s", s=schema)
        return {str(row[0]) for row in rows}

    def schema_exists(self, schema: str) -> bool:
        return bool(self.sql("SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema))

    def hypertables(self) -> dict[str, dict[str, object]]:
        """Hypertables of this project: compression and policies, by table name."""
        schemas = {"a": self.analytics, "d": self.default_schema}
        out: dict[str, dict[str, object]] = {}
        for name, compression in self.sql(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables "
            "WHERE hypertable_schema IN (:a, :d)",
            **schemas,
        ):
            out[str(name)] = {"compression": compression, "jobs": {}}
        for name, proc, config in self.sql(
            "SELECT hypertable_name, proc_name, config FROM timescaledb_information.jobs "
            "WHERE hypertable_schema IN (:a, :d)",
            **schemas,
        ):
            assert isinstance(config, dict)
            after = config.get("compress_after") or config.get("drop_after")
            out[str(name)]["jobs"][str(proc)] = after  # type: ignore[index]
        return out


def _database_url(db: Database) -> URL:
    assert db.schema is not None
    # The test's schema first: the host's default-schema tables and alembic_version land there.
    return db.url.update_query_dict({"options": f"-csearch_path={db.schema},public"})


def _make_project(db: Database, tmp_path: Path, alembic: Path) -> Iterator[HostProject]:
    path = tmp_path / f"project_{db.tier}"
    path.mkdir()
    url = _database_url(db)
    analytics = f"{db.schema}_analytics"
    host = HostProject(path, alembic, db, url, analytics)
    host.run("init", "migrations")
    env_py = path / "migrations" / "env.py"
    shutil.copy(env_py, path / "migrations" / "env.py.orig")
    host.configure_env(IMPORTS, CONFIGURE_OPTIONS)
    ini = (path / "alembic.ini").read_text()
    rendered = url.render_as_string(hide_password=False).replace("%", "%%")
    ini, count = re.subn(r"(?m)^sqlalchemy\.url = .*$", f"sqlalchemy.url = {rendered}", ini)
    assert count == 1
    (path / "alembic.ini").write_text(ini)
    shutil.copytree(MYAPP, path / "myapp", ignore=shutil.ignore_patterns("__pycache__"))
    default = host.default_schema
    try:
        yield host
    finally:
        host.sql(f'DROP SCHEMA IF EXISTS "{analytics}" CASCADE')
        if default != db.schema:  # PGlite: the host's tables went to public
            for table in ("orders", "accounts", "raw_signals", "alembic_version", "places"):
                host.sql(f'DROP TABLE IF EXISTS "{default}"."{table}" CASCADE')


@pytest.fixture
def host(pg_db: Database, tmp_path: Path, alembic_exe: Path) -> Iterator[HostProject]:
    """The host project on PostgreSQL and on TimescaleDB, for each Alembic version."""
    yield from _make_project(pg_db, tmp_path, alembic_exe)


@pytest.fixture
def versions_host(
    postgres_db: Database, tmp_path: Path, alembic_exe: Path
) -> Iterator[HostProject]:
    """The host project on PostgreSQL, for each Alembic version."""
    yield from _make_project(postgres_db, tmp_path, alembic_exe)


@pytest.fixture
def ts_host(timescale_db: Database, tmp_path: Path) -> Iterator[HostProject]:
    """The host project on TimescaleDB with the installed Alembic."""
    yield from _make_project(timescale_db, tmp_path, INSTALLED_ALEMBIC)


@pytest.fixture
def pg_host(postgres_db: Database, tmp_path: Path) -> Iterator[HostProject]:
    """The host project on plain PostgreSQL with the installed Alembic."""
    yield from _make_project(postgres_db, tmp_path, INSTALLED_ALEMBIC)


def body(revision: str, function: str = "upgrade") -> str:
    """The text of ``upgrade()`` or ``downgrade()``."""
    return revision.split(f"def {function}()", 1)[1].split("\ndef ", 1)[0]


def statements(revision: str, function: str = "upgrade") -> list[str]:
    """Each ``op.`` statement of the function (multi-line ones whole), in order."""
    return re.split(r"\n(?=    op\.)", body(revision, function).split("###\n", 1)[1])


def calls(revision: str, function: str = "upgrade") -> list[tuple[str, str]]:
    """``op.<name>('<table or schema>'`` of each call in the function, in order."""
    return re.findall(r"^    op\.(\w+)\((?:op\.f\()?'([^']*)'", body(revision, function), re.M)


TIMESCALE_OPS = {
    "create_hypertable",
    "set_chunk_time_interval",
    "enable_compression",
    "disable_compression",
    "add_compression_policy",
    "remove_compression_policy",
    "add_retention_policy",
    "remove_retention_policy",
    "keep_hypertable",
}


def _pause_jobs(host: HostProject, schema: str, table: str) -> None:
    # On a server with background workers a policy could compress or drop chunks under the test.
    host.sql(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
        "WHERE hypertable_schema = :s AND hypertable_name = :t",
        s=schema,
        t=table,
    )


def _compress_one_chunk(host: HostProject) -> None:
    """Rows over three daily chunks of model_signals; compress_chunk on the first."""
    table = f'"{host.analytics}".model_signals'
    _pause_jobs(host, host.analytics, "model_signals")
    host.sql(
        f"INSERT INTO {table} (provider, symbol, ts, name, value) "
        "SELECT 'ibkr', 'SPY', CAST(:start AS timestamptz) + i * interval '1 hour', 'vwap', i "
        "FROM generate_series(0, 50) AS i",
        start=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )
    host.sql(
        "SELECT compress_chunk(c) FROM show_chunks(CAST(:t AS regclass)) AS c ORDER BY c LIMIT 1",
        t=table,
    )
    compressed = host.sql(
        "SELECT count(*) FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = :s AND hypertable_name = 'model_signals' AND is_compressed",
        s=host.analytics,
    )
    assert compressed == [(1,)]


# -- points 2, 3, 1, 4: the first revision, upgrade, second autogenerate, downgrade ----------


def test_first_revision_upgrade_check_and_downgrade(host: HostProject) -> None:
    path, _ = host.revision("initial")
    revision = path.read_text()
    upgrade = calls(revision)
    # The new schema comes first; Alembic writes the tables; the TimescaleDB operations of
    # both signals tables follow, each once, on the first autogenerate.
    assert upgrade[0] == ("create_schema", host.analytics)
    # (Alembic's own order of tables with no dependency between them varies from run to run.)
    assert sorted(name for op, name in upgrade if op == "create_table") == [
        "accounts",
        "model_signals",
        "orders",
        "raw_signals",
    ]
    timescale = [(op, name) for op, name in upgrade if op in TIMESCALE_OPS]
    assert [op for op, name in timescale if name == "model_signals"] == [
        "create_hypertable",
        "enable_compression",
        "add_compression_policy",
    ]
    assert [op for op, name in timescale if name == "raw_signals"] == [
        "create_hypertable",
        "enable_compression",
        "add_retention_policy",
    ]
    assert upgrade[-len(timescale) :] == timescale  # after every create_table
    assert f"schema='{host.analytics}'" in revision.split("op.create_hypertable('model_signals'")[1]
    assert "segment_by=['provider', 'symbol'], order_by=['ts DESC']" in revision
    assert "info=" not in revision  # TimescaleOptions stay out of create_table
    assert {"import alembic_ext", "import datetime", "import sa_signals.types"} <= set(
        revision.splitlines()
    )
    # Point 1: the downgrade drops what the upgrade created, and nothing of TimescaleDB's.
    downgrade = calls(revision, "downgrade")
    assert not [op for op, _ in downgrade if op in TIMESCALE_OPS]
    assert downgrade[-1] == ("drop_schema", host.analytics)

    upgraded = host.run("upgrade", "head")
    default = host.default_schema
    assert {"accounts", "orders", "raw_signals", "alembic_version"} <= host.tables(default)
    assert host.tables(host.analytics) == {"model_signals"}
    if host.db.tier == "timescale":
        assert host.hypertables() == {
            "model_signals": {"compression": True, "jobs": {"policy_compression": "14 days"}},
            "raw_signals": {"compression": True, "jobs": {"policy_retention": "400 days"}},
        }
        assert "Warning" not in upgraded.stderr
    else:
        # Point 4: under the template's logging the skipped steps are on stderr, pointing at
        # the revision's lines.
        warning = r"TimescaleUnavailableWarning: timescaledb not available: (.*)"
        skipped = re.findall(warning, upgraded.stderr)
        assert len(skipped) == 6, upgraded.stderr
        assert f'skipped create_hypertable on "{host.analytics}"."model_signals"' in str(skipped)
        assert f"{path.name}:" in upgraded.stderr

    # The host's own code writes through its ORM model (metadata= reaches the JSON column).
    if host.db.tier == "timescale":
        _pause_jobs(host, host.analytics, "model_signals")
    models = host.import_models()
    engine = create_engine(host.url, poolclass=NullPool)
    ts = datetime(2024, 1, 1, tzinfo=timezone.utc)
    try:
        with Session(engine) as session, session.begin():
            session.add(
                models.ModelSignal(
                    provider="ibkr", symbol="SPY", ts=ts, name="orm", value=1.0, metadata={"w": 1}
                )
            )
    finally:
        engine.dispose()
    assert host.sql(f'SELECT metadata FROM "{host.analytics}".model_signals') == [({"w": 1},)]

    # The second autogenerate finds nothing on either server (alembic check fails otherwise).
    checked = host.run("check")
    assert "No new upgrade operations detected" in checked.stdout
    if host.db.tier == "postgres":
        assert checked.stderr.count("cannot compare the TimescaleDB settings") == 2

    if host.db.tier == "timescale":
        _compress_one_chunk(host)
    host.run("downgrade", "base")
    assert not host.schema_exists(host.analytics)
    assert host.tables(default) & {"accounts", "orders", "raw_signals"} == set()
    if host.db.tier == "timescale":
        assert host.hypertables() == {}


def test_plugin_form_writes_the_same_revision(versions_host: HostProject) -> None:
    host = versions_host
    plain, _ = host.revision("import only")
    expected = sorted(statements(plain.read_text()))
    plain.unlink()
    host.configure_env(IMPORTS, (*CONFIGURE_OPTIONS, PLUGIN_OPTION))
    listed, _ = host.revision("plugin listed")
    # Same operations, each once: the comparator never runs twice.
    assert sorted(statements(listed.read_text())) == expected
    assert sum(s.startswith("    op.create_hypertable(") for s in expected) == 2


def test_postgres_and_timescale_write_the_same_first_revision(
    pg_host: HostProject, ts_host: HostProject
) -> None:
    def normalised(host: HostProject) -> list[list[str]]:
        path, _ = host.revision("initial")
        revision = path.read_text().replace(host.analytics, "analytics")
        # Alembic orders independent tables differently from run to run: compare as sets.
        return [sorted(statements(revision, fn)) for fn in ("upgrade", "downgrade")]

    assert normalised(pg_host) == normalised(ts_host)


def test_import_alone_writes_a_revision_that_runs(versions_host: HostProject) -> None:
    """Point 3: ``env.py`` with only ``import alembic_ext`` and ``target_metadata``.

    Alembic writes the signals table's ``ts`` as ``sa_signals.types.UTCDateTime()`` (its SQLite
    variant) without importing the module; without ``render_item`` in ``env.py`` the revision
    failed at upgrade with ``NameError: name 'sa_signals' is not defined``.
    """
    host = versions_host
    host.configure_env(IMPORTS, ())
    path, _ = host.revision("import only")
    revision = path.read_text()
    assert "sa_signals.types.UTCDateTime()" in revision
    assert "import sa_signals.types" in revision.splitlines()
    assert ("create_hypertable", "model_signals") in calls(revision)
    host.run("upgrade", "head")
    assert host.tables(host.analytics) == {"model_signals"}
    host.run("downgrade", "base")
    assert not host.schema_exists(host.analytics)


# -- point 1: disable_compression with compressed chunks --------------------------------------


def test_disable_compression_needs_decompress_when_chunks_are_compressed(
    ts_host: HostProject,
) -> None:
    host = ts_host
    host.revision("initial")
    host.run("upgrade", "head")
    _compress_one_chunk(host)

    host.env["MYAPP_COMPRESSION"] = "0"
    path, _ = host.revision("no compression")
    revision = path.read_text()
    assert calls(revision) == [
        ("remove_compression_policy", "model_signals"),
        ("disable_compression", "model_signals"),
    ]
    assert calls(revision, "downgrade") == [
        ("enable_compression", "model_signals"),
        ("add_compression_policy", "model_signals"),
    ]

    failed = host.run("upgrade", "head", ok=False)
    assert failed.returncode != 0
    assert "MigrationError: cannot disable compression" in failed.stderr
    assert "1 of its chunks are compressed" in failed.stderr
    assert "decompress=True" in failed.stderr
    # The failed revision changed nothing (transactional DDL): the policy is still there.
    assert host.hypertables()["model_signals"]["jobs"] == {"policy_compression": "14 days"}

    # Following the message: decompress first.
    call = f"op.disable_compression('model_signals', schema='{host.analytics}')"
    assert call in revision
    path.write_text(revision.replace(call, call[:-1] + ", decompress=True)"))
    host.run("upgrade", "head")
    assert host.hypertables()["model_signals"] == {"compression": False, "jobs": {}}
    assert host.sql(f'SELECT count(*) FROM "{host.analytics}".model_signals') == [(51,)]
    assert host.run("check").stdout.strip().endswith("No new upgrade operations detected.")

    host.run("downgrade", "-1")
    assert host.hypertables()["model_signals"] == {
        "compression": True,
        "jobs": {"policy_compression": "14 days"},
    }


# -- point 12: offline --sql --------------------------------------------------------------


def test_offline_sql_skips_timescale_steps_with_warnings_on_postgres(pg_host: HostProject) -> None:
    _offline_round(pg_host)


def test_offline_sql_builds_hypertables_on_timescale(ts_host: HostProject) -> None:
    _offline_round(ts_host)


def _offline_round(host: HostProject) -> None:
    host.revision("initial")
    script = host.run("upgrade", "head", "--sql").stdout
    assert "DO $sa_signals$" in script and ":relation" not in script
    # Autogenerate left an empty version table behind; the script creates its own.
    host.sql(f'DROP TABLE IF EXISTS "{host.default_schema}".alembic_version')
    notices: list[str] = []
    conninfo = host.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        conn.execute(script.encode())
    assert host.tables(host.analytics) == {"model_signals"}
    skipped = [n for n in notices if n.startswith("timescaledb not available: skipped")]
    if host.db.tier == "timescale":
        assert not skipped
        assert set(host.hypertables()) == {"model_signals", "raw_signals"}
    else:
        assert len(skipped) == 6
    # The database the script built is what the model describes.
    assert "No new upgrade operations detected" in host.run("check").stdout


# -- point 14: hooks of another library -----------------------------------------------------


def test_geoalchemy2_hooks_combine_with_ours(pg_host: HostProject) -> None:
    host = pg_host
    host.env["MYAPP_GEO"] = "1"
    host.configure_env(GEO_IMPORTS, GEO_OPTIONS)
    default = host.default_schema
    # Reflected tables each hook must hide: geoalchemy2's spatial_ref_sys, our chunk table.
    host.sql(f'CREATE TABLE "{default}".spatial_ref_sys (srid integer PRIMARY KEY)')
    host.sql(f'CREATE TABLE "{default}"._hyper_1_1_chunk (ts timestamptz)')
    path, _ = host.revision("geo")
    revision = path.read_text()
    dropped = [name for op, name in calls(revision) if op == "drop_table"]
    assert dropped == []
    # geoalchemy2 rendered its type and import; ours added the sa_signals types import.
    assert "from geoalchemy2 import Geometry" in revision
    assert "Geometry(geometry_type='POINT', srid=4326" in revision
    assert "import sa_signals.types" in revision
    assert ("create_hypertable", "model_signals") in calls(revision)
    host.sql(f'DROP TABLE "{default}".spatial_ref_sys, "{default}"._hyper_1_1_chunk')


# -- point 15: the docs show what this suite runs -------------------------------------------


def test_docs_show_the_env_py_lines_this_suite_uses() -> None:
    docs = DOCS.read_text()
    for line in (*IMPORTS.splitlines(), "target_metadata = models.Base.metadata"):
        assert line in docs, line
    for line in (*CONFIGURE_OPTIONS, PLUGIN_OPTION, *GEO_OPTIONS):
        assert line in docs, line
    assert "from geoalchemy2 import alembic_helpers" in docs
