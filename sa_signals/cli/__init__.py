"""Command line interface ``sa-signals``: ``demo``, ``init`` and ``status``.

``sa-signals demo`` runs the whole library on the embedded default (a SQLite file in the working
directory) or on ``--url``; ``init`` creates a signals table with its Timescale setup (and, with
``--create-database``, the database); ``status`` prints :func:`sa_signals.status.storage_stats`
(``--json`` for scripts). On a terminal the output uses rich (the ``cli`` extra) for tables and
progress bars; piped or without rich it is plain text. Errors are one line on stderr and exit
status 1 (argparse's usage errors exit 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from .. import __version__
from ..engine import SUPPORTED_BACKENDS
from ..errors import SignalsError
from .commands import CommandError, cmd_init, cmd_status, one_line
from .demo import DEMO_URL, cmd_demo, demo_signals
from .output import Output

__all__ = ["DEMO_URL", "build_parser", "demo_signals", "main"]

_URL_HELP = (
    f"database URL ({', '.join(SUPPORTED_BACKENDS)}), e.g. postgresql://user@host/db or "
    "sqlite:///file.sqlite; async drivers (+asyncpg, +aiosqlite) are swapped for sync ones"
)


def _add_target(parser: argparse.ArgumentParser, *, url_required: bool) -> None:
    if url_required:
        parser.add_argument("--url", required=True, help=_URL_HELP)
    else:
        parser.add_argument(
            "--url",
            default=DEMO_URL,
            help=f"{_URL_HELP} (default: {DEMO_URL}, the demo's SQLite file in the working "
            "directory)",
        )
    parser.add_argument("--table", default="signals", help="table name (default: signals)")
    parser.add_argument("--schema", default=None, help="schema (default: the search path's)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sa-signals`` (``--help`` on every command)."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logging",
    )
    extension = argparse.ArgumentParser(add_help=False)
    extension.add_argument(
        "--create-extension",
        action="store_true",
        help="CREATE EXTENSION timescaledb when the server has it but the database does not; "
        "fails with the reason when the server cannot provide TimescaleDB",
    )
    parser = argparse.ArgumentParser(
        prog="sa-signals",
        description="Streaming inference signals in PostgreSQL, TimescaleDB and SQLite.",
        parents=[debug],
    )
    parser.add_argument("--version", action="version", version=f"sa-signals {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[debug, extension],
        help="write, replay and query synthetic signals (default: a local SQLite file)",
        description="Create the schema, stream synthetic signals through the writer, replay "
        "them (idempotent: 0 inserted), run the spec's queries and show the metrics. Signals "
        "are deterministic for a given --count and UTC day, so a second run inserts nothing.",
    )
    _add_target(demo, url_required=False)
    demo.add_argument("--count", type=int, default=2400, help="number of signals (default: 2400)")
    demo.set_defaults(handler=cmd_demo)

    init = commands.add_parser(
        "init",
        parents=[debug, extension],
        help="create the signals table (hypertable with compression on TimescaleDB)",
        description="Create the table, its indexes and, when the timescaledb extension is "
        "installed, the hypertable, compression settings and policies. Idempotent.",
    )
    _add_target(init, url_required=True)
    init.add_argument(
        "--create-database",
        action="store_true",
        help="create the database first when it does not exist (needs the cli extra)",
    )
    init.add_argument(
        "--no-timescale", action="store_true", help="a plain table even on TimescaleDB"
    )
    init.set_defaults(handler=cmd_init)

    status = commands.add_parser(
        "status",
        parents=[debug],
        help="sizes, row estimate, chunks, compression and policies of the table",
        description="Storage statistics: table/index/total size, row estimate and, on "
        "TimescaleDB, chunks, compression settings and ratio, policies and their last run. "
        "Read-only: a SQLite file is opened without write access and never created.",
    )
    _add_target(status, url_required=False)
    status.add_argument(
        "--exact", action="store_true", help="count rows exactly (reads the whole table)"
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="print the statistics as JSON (durations in seconds, times in ISO 8601)",
    )
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sa-signals`` console script and ``python -m sa_signals``."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not debug:
        # The commands report the Timescale setup themselves; the hook's warning is redundant.
        logging.getLogger("sa_signals").setLevel(logging.ERROR)
    out = Output(sys.stdout, sys.stderr)
    out.hint_missing_rich()
    handler: Callable[[argparse.Namespace, Output], int] = args.handler
    try:
        return handler(args, out)
    except KeyboardInterrupt:
        sys.stderr.write("sa-signals: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (``sa-signals status | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (SignalsError, SQLAlchemyError, CommandError, ImportError, OSError) as exc:
        if debug:
            raise
        sys.stderr.write(f"sa-signals: error: {one_line(exc)}\n")
        return 1
