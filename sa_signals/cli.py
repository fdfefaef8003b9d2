"""Command line interface ``sa-signals``: ``demo``, ``init`` and ``status``.

``sa-signals demo`` runs the whole library on the embedded default (a SQLite file in the working
directory) or on ``--url``; ``init`` creates a signals table with its Timescale setup; ``status``
prints :func:`sa_signals.status.storage_stats`. Errors are one line on stderr and exit status 1
(argparse's usage errors exit 2); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from sqlalchemy import Connection, Engine, MetaData, Table, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from .engine import sync_engine
from .errors import SignalsError
from .schema.ddl import ensure_timescale
from .schema.model import signals_table
from .schema.options import TimescaleOptions
from .status import StorageStats, storage_stats

__all__ = ["DEMO_URL", "demo_signals", "main"]

#: The embedded default: a SQLite file in the working directory.
DEMO_URL = "sqlite:///sa_signals_demo.sqlite"

DEMO_PROVIDERS = ("ibkr_primary", "polygon", "alpaca")
DEMO_SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA")
DEMO_NAMES = ("vwap_cross_up", "volatility_spike", "momentum_signal", "rsi_oversold")
_DEMO_SEED = 20240613


class _CommandError(Exception):
    """A failure the CLI reports as one line (already worded for the user)."""


# -- synthetic signals ----------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSignal:
    """One synthetic signal, shaped like the spec's ``SimpleNamespace`` examples."""

    provider: str
    symbol: str
    ts: datetime
    name: str
    value: float
    score: float | None
    metadata: dict[str, Any] | None


def demo_anchor(now: datetime | None = None) -> datetime:
    """The end of the demo's time range: midnight UTC of ``now``'s day.

    Keys must be identical on every run of the same day (so a second run inserts nothing), hence
    an anchor that only moves once a day rather than ``now``.
    """
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)


def demo_step(count: int) -> timedelta:
    """Time between two points of one demo series when ``count`` signals span 24 hours."""
    series = len(DEMO_PROVIDERS) * len(DEMO_SYMBOLS) * len(DEMO_NAMES)
    return timedelta(seconds=max(1, 86_400 // max(1, math.ceil(count / series))))


def demo_signals(count: int, anchor: datetime) -> Iterator[DemoSignal]:
    """``count`` deterministic signals over the 24 hours before ``anchor``, oldest first.

    Every (provider, symbol, name) series gets points at a regular step; values, scores and
    metadata come from a fixed seed, so the same ``count`` and ``anchor`` give the same signals.
    """
    series = [(p, s, n) for p in DEMO_PROVIDERS for s in DEMO_SYMBOLS for n in DEMO_NAMES]
    points = max(1, math.ceil(count / len(series)))
    step = demo_step(count)
    rng = random.Random(_DEMO_SEED)
    prices = {symbol: 100.0 + 50.0 * i for i, symbol in enumerate(DEMO_SYMBOLS)}
    produced = 0
    for k in range(points):
        ts = anchor - step * (points - k)
        for provider, symbol, name in series:
            if produced == count:
                return
            prices[symbol] *= 1.0 + rng.gauss(0.0, 0.001)
            value = round(rng.uniform(-1.0, 1.0), 4)
            score = None if rng.random() < 0.1 else round(rng.random(), 3)
            yield DemoSignal(
                provider,
                symbol,
                ts,
                name,
                value,
                score,
                {"window": "1m", "price": round(prices[symbol], 2)},
            )
            produced += 1


# -- output helpers -------------------------------------------------------------------------


def _duration(value: timedelta) -> str:
    """``7 days``, ``12 hours``, ``90 minutes``; ``str()`` for anything finer."""
    seconds = int(value.total_seconds())
    if seconds != value.total_seconds() or seconds <= 0:
        return str(value)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" + ("" if count == 1 else "s")
    raise AssertionError("unreachable")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` with a header; ``(no rows)`` when empty."""
    if not rows:
        return "  (no rows)"
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  " + "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


class _Progress:
    """A stdlib progress bar on stderr; one final line only when stderr is not a terminal."""

    def __init__(self, total: int, stream: TextIO, label: str) -> None:
        self.total, self.stream, self.label = total, stream, label
        self.interactive = stream.isatty()

    def update(self, done: int) -> None:
        if self.interactive or done >= self.total:
            width = 30
            filled = width * done // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if done >= self.total else ""
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}{end}")
            self.stream.flush()


# -- commands -------------------------------------------------------------------------------


def _display_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _define_table(args: argparse.Namespace, *, timescale: bool = True) -> Table:
    options = TimescaleOptions(create_extension=args.create_extension) if timescale else None
    return signals_table(MetaData(), args.table, schema=args.schema, timescale=options)


def _connect(url: str) -> Engine:
    engine = sync_engine(url)
    # Fail here, with the connection error, rather than halfway through a command.
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        raise _CommandError(f"cannot connect to {_display_url(url)}: {_one_line(exc)}") from exc
    return engine


def _create(engine: Engine, table: Table) -> tuple[bool, bool]:
    """Create ``table`` if missing, align its Timescale setup; (created, hypertable)."""
    with engine.begin() as conn:
        existed = inspect(conn).has_table(table.name, schema=table.schema)
        table.metadata.create_all(conn, tables=[table])
        # create_all skips an existing table, and with it the after_create hook.
        hypertable = ensure_timescale(table, conn)
    return not existed, hypertable


def _describe_setup(created: bool, hypertable: bool, table: Table, dialect: str) -> str:
    what = "created" if created else "already existed"
    where = f"{table.schema}.{table.name}" if table.schema else table.name
    if hypertable:
        layout = "TimescaleDB hypertable (7-day chunks, compression after 30 days)"
    elif dialect == "postgresql":
        layout = "plain PostgreSQL table (timescaledb extension not installed)"
    else:
        layout = f"{dialect} table"
    return f"table {where} {what}: {layout}"


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    """``sa-signals init``: create the table (and its Timescale setup where available)."""
    engine = _connect(args.url)
    try:
        table = _define_table(args, timescale=not args.no_timescale)
        created, hypertable = _create(engine, table)
        out.write(_describe_setup(created, hypertable, table, engine.dialect.name) + "\n")
    finally:
        engine.dispose()
    return 0


def render_stats(stats: StorageStats) -> str:
    """Human-readable text of :class:`~sa_signals.status.StorageStats`."""
    where = f"{stats.schema}.{stats.table}" if stats.schema else stats.table
    backend = stats.backend
    if stats.timescale_version:
        backend += f" (timescaledb {stats.timescale_version})"
    rows = "-" if stats.row_estimate is None else f"{stats.row_estimate:,}"
    lines = [
        f"table           {where}",
        f"backend         {backend}, server {stats.server_version}",
        f"rows            {rows} ({'exact' if stats.row_count_exact else 'estimate'})",
        f"table size      {_size(stats.table_bytes)}"
        + (f" (+ TOAST {_size(stats.toast_bytes)})" if stats.toast_bytes else ""),
        f"index size      {_size(stats.index_bytes)}",
        f"total size      {_size(stats.total_bytes)}",
    ]
    if stats.file_bytes is not None or stats.page_size is not None:
        lines.append(
            f"file            {_size(stats.file_bytes)}, "
            f"{stats.page_count} pages of {stats.page_size} B"
        )
    hyper = stats.hypertable
    if hyper is not None:
        lines += [
            f"chunks          {hyper.chunk_count} ({hyper.compressed_chunk_count} compressed), "
            f"interval {_cell(hyper.chunk_time_interval)} on {hyper.time_column}",
            f"chunk range     {_cell(hyper.oldest_chunk_start)} .. {_cell(hyper.newest_chunk_end)}",
            "compression     "
            + (
                f"enabled, segment by {', '.join(hyper.segment_by) or '-'}, "
                f"order by {', '.join(hyper.order_by) or '-'}, after {_cell(hyper.compress_after)}"
                if hyper.compression_enabled
                else "disabled"
            ),
        ]
        comp = hyper.compression
        if comp is not None and comp.compressed_chunks:
            ratio = f"{comp.ratio:.2f}x" if comp.ratio else "-"
            lines.append(
                f"compressed      {comp.compressed_chunks}/{comp.total_chunks} chunks, "
                f"{_size(comp.before_bytes)} -> {_size(comp.after_bytes)} (ratio {ratio})"
            )
        if hyper.drop_after is not None:
            lines.append(f"retention       drop chunks older than {_cell(hyper.drop_after)}")
    lines.append("")
    lines.append("indexes")
    lines.append(
        format_table(
            [
                {"name": i.name, "size": _size(i.size_bytes), "scans": i.scans}
                for i in stats.indexes
            ],
            ["name", "size", "scans"],
        )
    )
    if hyper is not None:
        lines.append("")
        lines.append("policies (timescaledb_information.jobs / job_stats)")
        policies = [
            {
                "job": p.job_id,
                "kind": p.kind,
                "every": p.schedule_interval,
                "config": {k: v for k, v in p.config.items() if k != "hypertable_id"},
                "last run": p.last_run_started_at,
                "status": p.last_run_status or p.job_status,
                "next start": p.next_start,
                "runs": p.total_runs,
                "failures": p.total_failures,
            }
            for p in hyper.policies
        ]
        lines.append(
            format_table(
                policies,
                [
                    *("job", "kind", "every", "config", "last run", "status"),
                    *("next start", "runs", "failures"),
                ],
            )
        )
    for note in stats.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _stats(conn: Connection, table: Table, exact: bool) -> StorageStats:
    try:
        return storage_stats(conn, table, exact_count=exact)
    except SignalsError as exc:
        if "does not exist" in str(exc):
            raise _CommandError(f"{exc}; create it with: sa-signals init --url URL") from exc
        raise


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """``sa-signals status``: storage statistics of the table."""
    engine = _connect(args.url)
    try:
        table = _define_table(args, timescale=False)
        with engine.connect() as conn:
            stats = _stats(conn, table, args.exact)
        out.write(render_stats(stats) + "\n")
    finally:
        engine.dispose()
    return 0


# -- demo -----------------------------------------------------------------------------------


def _write_pass(
    label: str,
    signals: Iterator[DemoSignal],
    count: int,
    write: Callable[[list[DemoSignal]], Any],
    chunk: int,
) -> dict[str, object]:
    """Feed ``signals`` to ``write`` in chunks with a progress bar; totals of the counts.

    ``write`` returns an object with ``received``, ``inserted``, ``updated``, ``unchanged``.
    """
    progress = _Progress(count, sys.stderr, f"{label:<8}")
    counts = dict.fromkeys(("received", "inserted", "updated", "unchanged"), 0)
    started = time.perf_counter()
    batch: list[DemoSignal] = []
    done = 0
    progress.update(0)

    def flush() -> None:
        nonlocal done
        result = write(batch)
        for key in counts:
            counts[key] += int(getattr(result, key))
        done += len(batch)
        batch.clear()
        progress.update(done)

    for signal in signals:
        batch.append(signal)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    seconds = time.perf_counter() - started
    return {
        "pass": label,
        **counts,
        "seconds": round(seconds, 3),
        "signals/s": int(done / seconds) if seconds > 0 else None,
    }


def _metric_rows(registry: Any) -> list[dict[str, object]]:
    """The samples of the store_signals_* families, without buckets and creation times."""
    rows: list[dict[str, object]] = []
    for family in registry.collect():
        if not family.name.startswith("store_signals"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_bucket", "_created")):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            rows.append({"metric": sample.name, "labels": labels, "value": sample.value})
    return rows


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """``sa-signals demo``: write, replay and query synthetic signals end to end."""
    if args.count < 1:
        raise _CommandError(f"--count must be at least 1, got {args.count}")
    engine = _connect(args.url)
    table = _define_table(args)
    try:
        created, hypertable = _create(engine, table)
        out.write(f"database: {_display_url(args.url)}\n")
        out.write(_describe_setup(created, hypertable, table, engine.dialect.name) + "\n")
        _run_demo(args, engine, table, out)
    finally:
        engine.dispose()
    return 0


def _run_demo(args: argparse.Namespace, engine: Engine, table: Table, out: TextIO) -> None:
    from prometheus_client import CollectorRegistry

    from .read.query_client import SignalsQueryClient
    from .write.store import SignalsStoreClient

    anchor = demo_anchor()
    count = args.count
    out.write(
        f"signals: {count} synthetic signals, {len(DEMO_PROVIDERS)} providers x "
        f"{len(DEMO_SYMBOLS)} symbols x {len(DEMO_NAMES)} names, over the 24 h before "
        f"{_cell(anchor)} (deterministic: same keys all day)\n\n"
    )
    registry = CollectorRegistry()
    passes = []
    with SignalsStoreClient(engine, table=table, registry=registry) as store:

        def write(batch: list[DemoSignal]) -> Any:
            store.write_signals(batch)
            return store.last_result

        # Chunks of the writer's batch threshold: COPY on PostgreSQL, the upsert on SQLite.
        passes.append(_write_pass("write", demo_signals(count, anchor), count, write, 1000))
        passes.append(_write_pass("replay", demo_signals(count, anchor), count, write, 1000))
    out.write("writes (diff-aware upsert: a replay changes nothing)\n")
    columns = ["pass", "received", "inserted", "updated", "unchanged", "seconds", "signals/s"]
    out.write(format_table(passes, columns) + "\n\n")

    provider, symbol, name = DEMO_PROVIDERS[0], DEMO_SYMBOLS[0], DEMO_NAMES[0]
    now = datetime.now(timezone.utc)
    # Windows reaching back to the start of the demo data, which ends at ``anchor``.
    hours_back = math.ceil((now - anchor).total_seconds() / 3600) + 24
    # Active: back to the last point of each series, one step before the anchor.
    minutes_back = math.ceil((now - anchor + demo_step(count)).total_seconds() / 60) + 1
    row_columns = ["ts", "provider", "symbol", "name", "value", "score", "metadata"]
    with SignalsQueryClient(engine, table=table) as query:
        latest = query.get_latest_signals(provider, symbol, limit=5)
        # The last three points of each series (the data ends one step before the anchor).
        history_start = anchor - 3 * demo_step(count)
        history = query.get_signals_history(
            provider, symbol, start_ts=history_start, end_ts=anchor, limit=8
        )
        metrics = query.get_signal_metrics(provider, symbol, name, hours_back=hours_back)
        active = query.get_active_signals(provider, minutes_back=minutes_back)
        summary = query.get_signal_summary(provider, hours_back=hours_back)
    sections: list[tuple[str, Sequence[Mapping[str, Any]], list[str]]] = [
        (f"get_latest_signals({provider!r}, {symbol!r}, limit=5)", latest, row_columns),
        (
            f"get_signals_history({provider!r}, {symbol!r}, start_ts={_cell(history_start)}, "
            f"end_ts={_cell(anchor)}, limit=8)",
            history,
            row_columns,
        ),
        (
            f"get_signal_metrics({provider!r}, {symbol!r}, {name!r}, hours_back={hours_back})",
            [metrics],
            list(metrics),
        ),
        (
            f"get_active_signals({provider!r}, minutes_back={minutes_back}) "
            f"(first 10 of {len(active)})",
            active[:10],
            ["symbol", "name", "value", "score", "ts"],
        ),
        (
            f"get_signal_summary({provider!r}, hours_back={hours_back})",
            [summary],
            list(summary),
        ),
    ]
    for title, rows, columns in sections:
        out.write(title + "\n" + format_table(rows, columns) + "\n\n")

    out.write("Prometheus metrics recorded (private CollectorRegistry)\n")
    out.write(format_table(_metric_rows(registry), ["metric", "labels", "value"]) + "\n\n")
    with engine.connect() as conn:
        stats = storage_stats(conn, table)
    out.write("storage (sa-signals status)\n" + render_stats(stats) + "\n")


# -- entry point ----------------------------------------------------------------------------


def _add_target(parser: argparse.ArgumentParser, *, url_required: bool) -> None:
    if url_required:
        parser.add_argument(
            "--url",
            required=True,
            help="database URL, e.g. postgresql://user@host/db or sqlite:///file.sqlite",
        )
    else:
        parser.add_argument(
            "--url",
            default=DEMO_URL,
            help=f"database URL (default: {DEMO_URL}, a SQLite file in the working directory)",
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
        help="CREATE EXTENSION timescaledb when the server has it but the database does not",
    )
    parser = argparse.ArgumentParser(
        prog="sa-signals",
        description="Streaming inference signals in PostgreSQL, TimescaleDB and SQLite.",
        parents=[debug],
    )
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
        "--no-timescale", action="store_true", help="a plain table even on TimescaleDB"
    )
    init.set_defaults(handler=cmd_init)

    status = commands.add_parser(
        "status",
        parents=[debug],
        help="sizes, row estimate, chunks, compression and policies of the table",
        description="Storage statistics: table/index/total size, row estimate and, on "
        "TimescaleDB, chunks, compression settings and ratio, policies and their last run.",
    )
    _add_target(status, url_required=True)
    status.add_argument(
        "--exact", action="store_true", help="count rows exactly (reads the whole table)"
    )
    status.set_defaults(handler=cmd_status, create_extension=False)
    return parser


def _one_line(exc: BaseException) -> str:
    """The first line of the error, without SQLAlchemy's statement and parameter dump."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, ArgumentError):
        first = f"invalid database URL: {first}"
    return " ".join(first.split())


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
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, sys.stdout)
    except KeyboardInterrupt:
        sys.stderr.write("sa-signals: interrupted\n")
        return 130
    except (SignalsError, SQLAlchemyError, _CommandError, ImportError, OSError) as exc:
        if debug:
            raise
        sys.stderr.write(f"sa-signals: error: {_one_line(exc)}\n")
        return 1
