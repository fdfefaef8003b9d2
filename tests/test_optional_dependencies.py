"""A missing optional dependency gives one message shape everywhere, naming the extra to install.

Each test runs real code in a venv where the dependency is really absent (:mod:`tests.bare_env`):
``<package> is not installed; install it with: pip install 'sa_signals[<extra>]'``, raised as
:class:`~sa_signals.MissingDependencyError` (an ``ImportError``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .bare_env import installed, make_env

pytestmark = [
    pytest.mark.sqlite,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX venv layout and fork"),
]

#: Imports sa_signals once, then runs each call (argv[1], JSON) in a forked child, so every call
#: starts from a fresh process state without paying the import again; prints one JSON object
#: {call: "<error class>|<is ImportError>|<message>" or "no error"}.
PROBE = """
import asyncio, json, os, sys
import sa_signals

async def enter(client):
    async with client:
        pass

results = {}
for call in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            exec(call)
            outcome = "no error"
        except Exception as error:
            outcome = f"{type(error).__name__}|{isinstance(error, ImportError)}|{error}"
        os.write(write, outcome.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        results[call] = pipe.read().decode()
    os.waitpid(pid, 0)
print(json.dumps(results))
"""

SYNC_PG = "sa_signals.SignalsStoreClient('postgresql://u@localhost/db').__enter__()"
ASYNC_STORE_PG = "asyncio.run(enter(sa_signals.AsyncSignalsStoreClient('postgresql://u@h/db')))"
ASYNC_QUERY_PG = "sa_signals.AsyncSignalsQueryClient('postgresql://u@h/db')"
ASYNC_STORE_SQLITE = "asyncio.run(enter(sa_signals.AsyncSignalsStoreClient('sqlite:///s.db')))"
ASYNC_QUERY_SQLITE = "sa_signals.AsyncSignalsQueryClient('sqlite:///signals.db')"
IMPORT_ALEMBIC_EXT = "import alembic_ext"
IMPORT_GREENLET = "import greenlet"
#: A frame asked of a query (the table need not exist: the check comes before any SQL).
ARROW_READ = (
    "c = sa_signals.SignalsQueryClient('sqlite:///frames.db'); c.__enter__(); "
    "c.get_latest_signals('p', 'S', format='arrow')"
)
#: A frame handed to a write: a pandas-like object without pyarrow (nothing imported to tell).
ARROW_WRITE = (
    "import sys, types; m = types.ModuleType('pandas'); "
    "DataFrame = type('DataFrame', (), {'__module__': 'pandas.core.frame'}); "
    "c = sa_signals.SignalsStoreClient('sqlite:///frames.db'); c.__enter__(); "
    "c.write_signals(DataFrame())"
)
CALLS = [
    IMPORT_GREENLET,
    SYNC_PG,
    ASYNC_STORE_PG,
    ASYNC_QUERY_PG,
    ASYNC_STORE_SQLITE,
    ASYNC_QUERY_SQLITE,
    IMPORT_ALEMBIC_EXT,
    ARROW_READ,
    ARROW_WRITE,
]


def message(package: str, extra: str) -> str:
    return f"MissingDependencyError|True|{package} is not installed; install it with: " + (
        f"pip install 'sa_signals[{extra}]'"
    )


def run_probes(python: Path, cwd: Path) -> dict[str, str]:
    run = subprocess.run(
        [str(python), "-c", PROBE, json.dumps(CALLS)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    results: dict[str, str] = json.loads(run.stdout)
    return results


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the core dependencies: no greenlet, drivers, alembic, rich or sqlalchemy-utils."""
    return make_env(tmp_path_factory.mktemp("bare") / "venv")


@pytest.fixture(scope="session")
def bare(bare_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What each call raised in the bare environment."""
    return run_probes(bare_python, tmp_path_factory.mktemp("bare_cwd"))


@pytest.fixture(scope="session")
def no_greenlet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What each call raised with the async drivers installed but not greenlet."""
    modules = ["asyncpg", "aiosqlite"]
    # asyncpg needs async_timeout before Python 3.11.
    modules += [m for m in ("async_timeout",) if installed(m)]
    python = make_env(tmp_path_factory.mktemp("no_greenlet") / "venv", *modules)
    return run_probes(python, tmp_path_factory.mktemp("no_greenlet_cwd"))


def test_the_bare_environment_lacks_every_optional_dependency(bare_python: Path) -> None:
    modules = ["greenlet", "asyncpg", "aiosqlite", "psycopg", "alembic", "rich", "sqlalchemy_utils"]
    modules += ["pyarrow", "pgpq", "polars", "pandas", "adbc_driver_postgresql"]
    code = (
        "import importlib.util, sys; "
        f"print([m for m in {modules!r} if importlib.util.find_spec(m)])"
    )
    run = subprocess.run([str(bare_python), "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_sync_client_without_psycopg_names_the_psycopg_extra(bare: dict[str, str]) -> None:
    assert bare[SYNC_PG] == message("psycopg", "psycopg")


def test_async_store_client_without_asyncpg_names_the_asyncpg_extra(bare: dict[str, str]) -> None:
    assert bare[ASYNC_STORE_PG] == message("asyncpg", "asyncpg")


def test_async_query_client_without_asyncpg_names_the_asyncpg_extra(bare: dict[str, str]) -> None:
    assert bare[ASYNC_QUERY_PG] == message("asyncpg", "asyncpg")


def test_async_clients_without_aiosqlite_name_the_sqlite_async_extra(bare: dict[str, str]) -> None:
    assert bare[ASYNC_STORE_SQLITE] == message("aiosqlite", "sqlite-async")
    assert bare[ASYNC_QUERY_SQLITE] == message("aiosqlite", "sqlite-async")


def test_async_clients_without_greenlet_name_the_extra_that_brings_it(
    no_greenlet: dict[str, str],
) -> None:
    assert no_greenlet[IMPORT_GREENLET].startswith("ModuleNotFoundError|")
    assert no_greenlet[ASYNC_STORE_PG] == message("greenlet", "asyncpg")
    assert no_greenlet[ASYNC_QUERY_PG] == message("greenlet", "asyncpg")
    assert no_greenlet[ASYNC_STORE_SQLITE] == message("greenlet", "sqlite-async")
    assert no_greenlet[ASYNC_QUERY_SQLITE] == message("greenlet", "sqlite-async")


def test_frames_without_pyarrow_name_the_arrow_extra(bare: dict[str, str]) -> None:
    assert bare[ARROW_READ] == message("pyarrow", "arrow")
    assert bare[ARROW_WRITE] == message("pyarrow", "arrow")


def test_sa_signals_imports_no_frame_library_until_one_is_used() -> None:
    code = (
        "import sys, sa_signals, sa_signals.write.writer, sa_signals.read.query_client; "
        "print(sorted(m for m in ('pyarrow', 'polars', 'pandas', 'pgpq', "
        "'adbc_driver_postgresql') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout.strip() == "[]", run.stderr


def test_import_alembic_ext_without_alembic_names_the_alembic_extra(bare: dict[str, str]) -> None:
    assert bare[IMPORT_ALEMBIC_EXT] == message("alembic", "alembic")


def test_cli_create_database_without_sqlalchemy_utils_names_the_cli_extra(
    bare_python: Path, tmp_path: Path
) -> None:
    run = subprocess.run(
        [
            str(bare_python),
            "-m",
            "sa_signals",
            "init",
            "--create-database",
            "--url",
            "sqlite:///new.sqlite",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr == (
        "sa-signals: error: sqlalchemy-utils is not installed; install it with: "
        "pip install 'sa_signals[cli]'\n"
    )
    assert not (tmp_path / "new.sqlite").exists()
