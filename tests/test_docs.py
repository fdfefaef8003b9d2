"""The docs cannot rot: every page's ```python blocks run, each page on its own, twice.

A page is what a reader copies: its blocks, in order, in one namespace. Each page runs in a fresh
interpreter state (a process forked from a runner that has only imported the libraries, so
nothing a previous page did is visible) in a fresh working directory, then once more in the same
directory and database schema, as a reader running the page again would. Pages are never
concatenated. No two pages use the same SQLite file name.

An HTML comment on the line before the fence (invisible on the site and on GitHub) says where a
block runs; an info string after ``python`` (```` ```python postgres ````) does the same:

- nothing: SQLite (files in the working directory);
- ``<!-- run: postgres -->`` / ``<!-- run: timescale -->``: that tier, with the placeholder URL
  :data:`PG_PLACEHOLDER` replaced by the test database's URL (search path: the test's schema);
- ``<!-- run: native -->``: a native TimescaleDB only (not the WebAssembly build, which has no
  COPY FROM STDIN, serves one connection and, in aggregates.md's rollup example, crashes:
  ``RuntimeError: unreachable`` in its WebAssembly, after which every later test is refused);
- ``<!-- skip -->`` (or ``python fragment``): not run (e.g. it needs a cluster).

Any other info string fails the test, so a block cannot be skipped by a typo. The Grafana
dashboard is checked here too: valid JSON, the spec's metric queries, and SQL that runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from .conftest import Database

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
DASHBOARD = ROOT / "docs" / "grafana" / "sa_signals_dashboard.json"
#: The URL the docs use for PostgreSQL examples; replaced by the test database's URL.
PG_PLACEHOLDER = "postgresql://postgres@localhost/marketdata"
TARGETS = {"sqlite", "postgres", "timescale", "native", "fragment"}
_FENCE = re.compile(r"^```(\S*)\s*(.*)$")
_MARKER = re.compile(r"^<!--\s*(?:skip|run:\s*(\w+))\s*-->$")
_SQLITE_FILE = re.compile(r"sqlite(?:\+\w+)?:///([^\"'\s)?]+)")


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block of a page."""

    page: Path
    line: int
    target: str
    code: str


def python_blocks(page: Path) -> list[Block]:
    """The ``python`` blocks of ``page`` with their targets, in page order."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if match is None:
            index += 1
            continue
        language, info = match.group(1), match.group(2).strip()
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        if language != "python":
            continue
        previous = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        marker = _MARKER.match(previous)
        # Words with "=" are attributes for the site (title="env.py"); the rest is the target.
        words = " ".join(w for w in info.split() if "=" not in w)
        if marker is not None:
            target = marker.group(1) or "fragment"
        else:
            target = words or "sqlite"
        blocks.append(Block(page, start + 1, target, "\n".join(body) + "\n"))
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def _pages_with(target: str) -> list[object]:
    pages = sorted({block.page for block in ALL_BLOCKS if block.target == target})
    return [pytest.param(page, id=page.relative_to(ROOT).as_posix()) for page in pages]


# -- running a page -------------------------------------------------------------------------

#: Reads one JSON request per line ({"blocks": [[where, code], ...], "cwd": ..., "log": ...}),
#: runs it in a forked child (fresh state, libraries already imported) and answers with the
#: child's exit status. Output and traceback go to the request's log file.
_RUNNER = """
import json, os, sys, traceback, warnings
import sa_signals, sqlalchemy.ext.asyncio  # imported once; a page still imports what it uses

def run(request):
    os.chdir(request["cwd"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    warnings.simplefilter("error")
    warnings.filterwarnings("ignore", message=".*unclosed.*", category=ResourceWarning)
    namespace = {"__name__": "__main__"}
    try:
        for where, code in request["blocks"]:
            exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = run(request)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    _, wait_status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(wait_status), flush=True)
"""


class PageRunner:
    """Runs pages in fresh forked processes of one long-lived runner."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def run(self, page: Path, target: str, cwd: Path, url: str | None, attempt: str) -> None:
        """Run the ``target`` blocks of ``page`` in ``cwd``; fail with the page's traceback."""
        blocks = [
            [
                f"{block.page.relative_to(ROOT)}:{block.line}",
                block.code if url is None else block.code.replace(PG_PLACEHOLDER, url),
            ]
            for block in python_blocks(page)
            if block.target == target
        ]
        log = cwd.parent / f"{cwd.name}.{attempt.split()[0]}.log"
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"blocks": blocks, "cwd": str(cwd), "log": str(log)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        status = int(self.process.stdout.readline())
        if status != 0:
            where = f"{page.name} ({target}), {attempt}"
            pytest.fail(f"{where} failed:\n{log.read_text()}", pytrace=False)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="session")
def runner() -> Iterator[PageRunner]:
    if not hasattr(os, "fork"):
        pytest.skip("the page runner forks a fresh process per page (POSIX)")
    page_runner = PageRunner()
    yield page_runner
    page_runner.close()


def run_twice(
    runner: PageRunner, page: Path, target: str, tmp_path: Path, url: str | None = None
) -> None:
    """The page alone in a fresh directory, then again in the same directory."""
    cwd = tmp_path / "page"
    cwd.mkdir()
    runner.run(page, target, cwd, url, "first run, in a fresh directory")
    runner.run(page, target, cwd, url, "second run, in the same directory")


# -- tests ----------------------------------------------------------------------------------


def test_every_block_has_a_known_target() -> None:
    assert ALL_BLOCKS, "no python blocks found in the docs"
    unknown = [
        f"{b.page.name}:{b.line} {b.target!r}" for b in ALL_BLOCKS if b.target not in TARGETS
    ]
    assert not unknown, f"unknown info strings (use {sorted(TARGETS)}): {unknown}"
    # Every database-bound page example is really run somewhere.
    assert {b.target for b in ALL_BLOCKS} >= {"sqlite", "postgres", "timescale"}


def test_no_two_pages_share_a_sqlite_file() -> None:
    users: dict[str, set[str]] = {}
    for block in ALL_BLOCKS:
        for name in _SQLITE_FILE.findall(block.code):
            users.setdefault(Path(name).name, set()).add(block.page.name)
    shared = {name: sorted(pages) for name, pages in users.items() if len(pages) > 1}
    assert not shared, f"SQLite files used by several pages: {shared}"


@pytest.mark.sqlite
@pytest.mark.parametrize("page", _pages_with("sqlite"))
def test_sqlite_page_runs_alone_twice(page: Path, runner: PageRunner, tmp_path: Path) -> None:
    run_twice(runner, page, "sqlite", tmp_path)


@pytest.mark.parametrize("page", _pages_with("postgres"))
def test_postgres_page_runs_alone_twice(
    page: Path, runner: PageRunner, postgres_db: Database, tmp_path: Path
) -> None:
    url = postgres_db.url.render_as_string(hide_password=False)
    run_twice(runner, page, "postgres", tmp_path, url)


@pytest.mark.parametrize("page", _pages_with("timescale"))
def test_timescale_page_runs_alone_twice(
    page: Path, runner: PageRunner, timescale_db: Database, tmp_path: Path
) -> None:
    url = timescale_db.url.render_as_string(hide_password=False)
    run_twice(runner, page, "timescale", tmp_path, url)


@pytest.mark.parametrize("page", _pages_with("native"))
def test_native_timescale_page_runs_alone_twice(
    page: Path, runner: PageRunner, native_timescale_db: Database, tmp_path: Path
) -> None:
    url = native_timescale_db.url.render_as_string(hide_password=False)
    run_twice(runner, page, "native", tmp_path, url)


# -- Grafana dashboard ----------------------------------------------------------------------


def _dashboard() -> dict[str, object]:
    data: dict[str, object] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _targets(kind: str) -> list[dict[str, str]]:
    panels = _dashboard()["panels"]
    assert isinstance(panels, list)
    return [
        target
        for panel in panels
        for target in panel["targets"]
        if kind in target["datasource"]["type"]
    ]


def test_dashboard_uses_the_spec_metric_queries() -> None:
    data = _dashboard()
    assert data["title"] and data["uid"] and data["panels"]
    exprs = [target["expr"] for target in _targets("prometheus")]
    assert any("rate(store_signals_written_total[5m])" in e for e in exprs)
    assert any(
        e.startswith("histogram_quantile(0.95,")
        and "rate(store_signals_write_latency_seconds_bucket[5m])" in e
        for e in exprs
    )
    assert any("store_signals_rows_total" in e for e in exprs)
    # Every panel's data source is one of the dashboard's variables, so import asks for them.
    variables = {v["name"] for v in data["templating"]["list"]}  # type: ignore[index]
    assert {"prometheus", "postgres", "table"} <= variables


def _run_dashboard_sql(db: Database, *, timescale: bool) -> list[str]:
    db.table  # noqa: B018 - create the signals table in the test schema
    relation = f'"{db.schema}".signals'
    ran = []
    for target in _targets("postgresql"):
        sql = target["rawSql"]
        needs_timescale = "hypertable" in sql or "timescaledb_information" in sql
        if needs_timescale and not timescale:
            continue
        with db.engine.connect() as conn:
            rows = conn.execute(text(sql.replace("$table", relation))).all()
        assert rows is not None
        ran.append(sql)
    return ran


def test_dashboard_sql_runs_on_postgresql(postgres_db: Database) -> None:
    ran = _run_dashboard_sql(postgres_db, timescale=False)
    assert any("pg_total_relation_size" in sql for sql in ran)


def test_dashboard_sql_runs_on_timescaledb(timescale_db: Database) -> None:
    ran = _run_dashboard_sql(timescale_db, timescale=True)
    assert len(ran) == len(_targets("postgresql"))
    assert any("hypertable_size" in sql for sql in ran)


# -- the site -------------------------------------------------------------------------------


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is not installed (pip install -e '.[dev]')"
    run = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").exists()
