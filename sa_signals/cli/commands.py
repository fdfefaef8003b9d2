"""``sa-signals init`` and ``sa-signals status``, and the connection handling every command shares.

Each command is one library call between argument parsing and rendering: ``init`` runs
``create_all`` and :func:`~sa_signals.ensure_timescale`, ``status`` runs
:func:`~sa_signals.status.storage_stats`.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, MetaData, Table, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..engine import normalize_url, sync_engine
from ..errors import ConfigurationError, MissingDependencyError
from ..schema.ddl import ensure_timescale
from ..schema.model import signals_table
from ..schema.options import TimescaleOptions
from ..status import StorageStats, storage_stats
from .output import Output, stats_json, stats_sections

__all__ = ["CommandError", "cmd_init", "cmd_status", "connect", "display_url", "one_line"]


class CommandError(Exception):
    """A failure the CLI reports as one line (already worded for the user)."""


def one_line(exc: BaseException) -> str:
    """The first line of the error, without SQLAlchemy's statement and parameter dump.

    A server's ``HINT:`` line, when there is one, follows in parentheses: it is usually the
    way forward (e.g. which setting to change).
    """
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    lines = [line.strip() for line in text.strip().splitlines()]
    first = lines[0] if lines else type(exc).__name__
    if isinstance(exc, ArgumentError):
        first = f"invalid database URL: {first}"
    hint = next((line[5:].strip() for line in lines[1:] if line.startswith("HINT:")), "")
    if hint:
        first += f" (hint: {hint})"
    return " ".join(first.split())


def display_url(url: str | URL) -> str:
    """``url`` with its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def _sqlite_path(url: URL) -> str | None:
    """The file of a SQLite URL; ``None`` for in-memory databases and SQLite URI filenames."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _read_only(url: URL, given: str) -> URL:
    """A SQLite URL opened read-only (never creates the file); other URLs unchanged."""
    path = _sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if path is None:
        return url
    folder = Path(path).parent
    if not folder.is_dir():
        raise CommandError(f"no SQLite database at {path}: the directory {folder} does not exist")
    if not Path(path).is_file():
        raise CommandError(
            f"no SQLite database at {path}; create one with: "
            f"sa-signals init --url {shlex.quote(given)} (or run sa-signals demo)"
        )
    # SQLite's URI filename: mode=ro opens without write access and never creates the file.
    return url.set(database="file:" + quote(os.path.abspath(path))).update_query_dict(
        {"mode": "ro", "uri": "true"}
    )


def _missing_database(exc: DBAPIError) -> bool:
    text = str(exc.orig)
    return 'database "' in text and "does not exist" in text


def connect(given: str, *, read_only: bool = False) -> Engine:
    """An engine for the URL ``given`` on the command line, checked by connecting once."""
    url = normalize_url(given)
    if read_only:
        url = _read_only(url, given)
    engine = sync_engine(url)
    # Fail here, with the connection error, rather than halfway through a command.
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        message = f"cannot connect to {display_url(given)}: {one_line(exc)}"
        if _missing_database(exc):
            message += (
                f"; create it with: sa-signals init --create-database --url {shlex.quote(given)}"
            )
        raise CommandError(message) from exc
    return engine


def define_table(args: argparse.Namespace, *, timescale: bool = True) -> Table:
    """The signals table named by ``--table`` / ``--schema``.

    With ``--create-extension`` TimescaleDB is required: a server that cannot provide it makes
    the command fail with the reason instead of falling back to a plain table.
    """
    options = None
    if timescale:
        create = bool(getattr(args, "create_extension", False))
        options = TimescaleOptions(create_extension=create, require_timescale=create)
    return signals_table(MetaData(), args.table, schema=args.schema, timescale=options)


def check_create_extension(args: argparse.Namespace) -> None:
    """``--create-extension`` where TimescaleDB cannot exist fails with the reason.

    TimescaleDB is a PostgreSQL extension: on SQLite, or together with ``--no-timescale``, the
    flag could only be ignored, and a command that ignores what it was asked exits 0 wrongly.
    """
    if not getattr(args, "create_extension", False):
        return
    if getattr(args, "no_timescale", False):
        raise CommandError("--create-extension and --no-timescale contradict each other")
    dialect = normalize_url(args.url).get_backend_name()
    if dialect != "postgresql":
        raise CommandError(
            f"--create-extension needs PostgreSQL: timescaledb is a PostgreSQL extension and "
            f"this database is {dialect}"
        )


def create_table(engine: Engine, table: Table) -> tuple[bool, bool]:
    """Create ``table`` if missing, align its Timescale setup; (created, hypertable)."""
    with engine.begin() as conn:
        existed = inspect(conn).has_table(table.name, schema=table.schema)
        table.metadata.create_all(conn, tables=[table])
        # create_all skips an existing table, and with it the after_create hook.
        hypertable = ensure_timescale(table, conn)
    return not existed, hypertable


def describe_setup(created: bool, hypertable: bool, table: Table, dialect: str) -> str:
    """One line saying what ``create_table`` found or made."""
    what = "created" if created else "already existed"
    where = f"{table.schema}.{table.name}" if table.schema else table.name
    if hypertable:
        layout = "TimescaleDB hypertable (7-day chunks, compression after 30 days)"
    elif dialect == "postgresql":
        layout = "plain PostgreSQL table (timescaledb extension not installed)"
    else:
        layout = f"{dialect} table"
    return f"table {where} {what}: {layout}"


def _create_database(given: str) -> str:
    try:
        from sqlalchemy_utils import create_database, database_exists
    except ImportError:
        raise MissingDependencyError("sqlalchemy-utils", "cli") from None
    url = normalize_url(given)
    shown = display_url(given)
    try:
        if database_exists(url):
            return f"database {shown} already existed"
        create_database(url)
    except DBAPIError as exc:
        raise CommandError(f"cannot create database {shown}: {one_line(exc)}") from exc
    return f"database {shown} created"


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    """``sa-signals init``: create the table (and its Timescale setup where available)."""
    check_create_extension(args)  # before connecting: SQLite would create the file
    if args.create_database:
        out.line(_create_database(args.url))
    engine = connect(args.url)
    try:
        table = define_table(args, timescale=not args.no_timescale)
        created, hypertable = create_table(engine, table)
        out.line(describe_setup(created, hypertable, table, engine.dialect.name))
    finally:
        engine.dispose()
    return 0


def _init_command(args: argparse.Namespace) -> str:
    words = ["sa-signals", "init", "--url", shlex.quote(args.url)]
    if args.table != "signals":
        words += ["--table", shlex.quote(args.table)]
    if args.schema is not None:
        words += ["--schema", shlex.quote(args.schema)]
    return " ".join(words)


def read_stats(
    engine: Engine, table: Table, args: argparse.Namespace, *, exact: bool = False
) -> StorageStats:
    """:func:`~sa_signals.status.storage_stats`, with the way forward when the table is missing."""
    with engine.connect() as conn:
        try:
            return storage_stats(conn, table, exact_count=exact)
        except ConfigurationError as exc:
            if "does not exist" in str(exc):
                raise CommandError(f"{exc}; create it with: {_init_command(args)}") from exc
            raise


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    """``sa-signals status``: storage statistics of the table (``--json`` for scripts)."""
    engine = connect(args.url, read_only=True)
    try:
        stats = read_stats(engine, define_table(args, timescale=False), args, exact=args.exact)
    finally:
        engine.dispose()
    if args.json:
        out.json(stats_json(stats))
    else:
        out.show(*stats_sections(stats))
    return 0
