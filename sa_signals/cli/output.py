"""How the CLI writes: rich on a terminal (with the ``cli`` extra), plain text everywhere else.

Commands describe what to show (lines, key-value blocks, tables, progress) and :class:`Output`
decides how. Plain output is stable and parseable: fixed-width key-value lines, tables with a
header and a dashed rule, one summary line per progress bar; it is what pipes, files and CI logs
get, and what a terminal gets without rich.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from ..errors import MissingDependencyError
from ..status import StorageStats

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Output", "Progress", "format_table", "stats_json", "stats_sections"]


# -- cells ----------------------------------------------------------------------------------


def duration(value: timedelta) -> str:
    """``7 days``, ``12 hours``, ``90 minutes``; ``str()`` for anything finer."""
    seconds = int(value.total_seconds())
    if seconds != value.total_seconds() or seconds <= 0:
        return str(value)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}" + ("" if count == 1 else "s")
    raise AssertionError("unreachable")


def cell(value: object) -> str:
    """The text of one table cell."""
    if value is None:
        return "-"
    if isinstance(value, timedelta):
        return duration(value)
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= 40 else text[:37] + "..."
    return str(value)


def size(value: int | None) -> str:
    """``512 B``, ``1.5 kB``, ``3.2 MB`` (powers of 1024)."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1024 or unit == "TB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _numeric(rows: Sequence[Mapping[str, object]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


def format_table(
    rows: Sequence[Mapping[str, object]], columns: Sequence[str], right: Sequence[str] = ()
) -> str:
    """Plain-text table of ``rows``: header, dashed rule, numbers right-aligned; ``(no rows)``."""
    if not rows:
        return "  (no rows)"
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(r[i]) for r in cells)) for i, column in enumerate(columns)]
    aligned = Table("", rows, columns, right)
    right_flags = [aligned.right_aligned(column) for column in columns]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if r else v.ljust(w)
            for v, w, r in zip(values, widths, right_flags, strict=True)
        ]
        return ("  " + "  ".join(parts)).rstrip()

    rule = "  " + "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


# -- what a command shows -------------------------------------------------------------------


@dataclass(frozen=True)
class Fields:
    """Labelled values, one per line (``label   value``)."""

    pairs: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Table:
    """A titled table; numeric columns, and those named in ``right``, are right-aligned."""

    title: str
    rows: Sequence[Mapping[str, object]]
    columns: Sequence[str]
    right: Sequence[str] = ()

    def right_aligned(self, column: str) -> bool:
        """Whether ``column`` holds numbers (or is named in ``right``)."""
        return column in self.right or _numeric(self.rows, column)


Section = Fields | Table | str


def stats_sections(stats: StorageStats) -> list[Section]:
    """:class:`~sa_signals.status.StorageStats` as fields, tables and notes."""
    where = f"{stats.schema}.{stats.table}" if stats.schema else stats.table
    backend = stats.backend
    if stats.timescale_version:
        backend += f" (timescaledb {stats.timescale_version})"
    rows = "-" if stats.row_estimate is None else f"{stats.row_estimate:,}"
    pairs = [
        ("table", where),
        ("backend", f"{backend}, server {stats.server_version}"),
        ("rows", f"{rows} ({'exact' if stats.row_count_exact else 'estimate'})"),
        (
            "table size",
            size(stats.table_bytes)
            + (f" (+ TOAST {size(stats.toast_bytes)})" if stats.toast_bytes else ""),
        ),
        ("index size", size(stats.index_bytes)),
        ("total size", size(stats.total_bytes)),
    ]
    if stats.file_bytes is not None or stats.page_size is not None:
        pairs.append(
            ("file", f"{size(stats.file_bytes)}, {stats.page_count} pages of {stats.page_size} B")
        )
    hyper = stats.hypertable
    if hyper is not None:
        compression = (
            f"enabled, segment by {', '.join(hyper.segment_by) or '-'}, "
            f"order by {', '.join(hyper.order_by) or '-'}, after {cell(hyper.compress_after)}"
            if hyper.compression_enabled
            else "disabled"
        )
        pairs += [
            (
                "chunks",
                f"{hyper.chunk_count} ({hyper.compressed_chunk_count} compressed), "
                f"interval {cell(hyper.chunk_time_interval)} on {hyper.time_column}",
            ),
            ("chunk range", f"{cell(hyper.oldest_chunk_start)} .. {cell(hyper.newest_chunk_end)}"),
            ("compression", compression),
        ]
        comp = hyper.compression
        if comp is not None and comp.compressed_chunks:
            ratio = f"{comp.ratio:.2f}x" if comp.ratio else "-"
            pairs.append(
                (
                    "compressed",
                    f"{comp.compressed_chunks}/{comp.total_chunks} chunks, "
                    f"{size(comp.before_bytes)} -> {size(comp.after_bytes)} (ratio {ratio})",
                )
            )
        if hyper.drop_after is not None:
            pairs.append(("retention", f"drop chunks older than {cell(hyper.drop_after)}"))
    sections: list[Section] = [Fields(pairs)]
    sections.append(
        Table(
            "indexes",
            [{"name": i.name, "size": size(i.size_bytes), "scans": i.scans} for i in stats.indexes],
            ["name", "size", "scans"],
            right=["size", "scans"],
        )
    )
    if hyper is not None:
        policies = [
            {
                "job": p.job_id,
                "on": owner,
                "kind": p.kind,
                "every": p.schedule_interval,
                "config": {
                    k: v
                    for k, v in p.config.items()
                    if k not in ("hypertable_id", "mat_hypertable_id")
                },
                "last run": p.last_run_started_at,
                "status": p.last_run_status or p.job_status,
                "next start": p.next_start,
                "runs": p.total_runs,
                "failures": p.total_failures,
            }
            for owner, owned in (
                (stats.table, hyper.policies),
                *((a.name, a.policies) for a in hyper.aggregates),
            )
            for p in owned
        ]
        if hyper.aggregates:
            sections.append(
                Table(
                    "continuous aggregates",
                    [
                        {
                            "name": a.name,
                            "size": size(a.total_bytes),
                            "chunks": f"{a.chunk_count} ({a.compressed_chunk_count} compressed)",
                            "watermark": a.watermark,
                            "real-time": not a.materialized_only,
                            "compression": a.compression_enabled,
                        }
                        for a in hyper.aggregates
                    ],
                    ["name", "size", "chunks", "watermark", "real-time", "compression"],
                    right=["size"],
                )
            )
        columns = ["job", "on", "kind", "every", "config", "last run", "status", "next start"]
        sections.append(
            Table(
                "policies (timescaledb_information.jobs / job_stats)",
                policies,
                [*columns, "runs", "failures"],
            )
        )
    sections.extend(f"note: {note}" for note in stats.notes)
    return sections


def _json_default(value: object) -> object:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def stats_json(stats: StorageStats) -> str:
    """The fields of :class:`~sa_signals.status.StorageStats` as JSON.

    Durations are seconds, timestamps ISO 8601, absent values ``null``; the compression ratio is
    added as ``hypertable.compression.ratio``.
    """
    data: dict[str, Any] = asdict(stats)
    hyper = stats.hypertable
    if hyper is not None and hyper.compression is not None:
        data["hypertable"]["compression"]["ratio"] = hyper.compression.ratio
    return json.dumps(data, default=_json_default, indent=2)


# -- progress -------------------------------------------------------------------------------


class Progress(Protocol):
    """Progress of one task: call :meth:`update` with the number of items done so far."""

    def update(self, done: int) -> None: ...


class _PlainProgress:
    """A stdlib bar with rate and ETA on a terminal; elsewhere only the final summary line."""

    def __init__(self, stream: TextIO, label: str, total: int, unit: str) -> None:
        self.stream, self.label, self.total, self.unit = stream, label, total, unit
        self.interactive = stream.isatty()
        self.started = time.perf_counter()

    def _rate(self, done: int, seconds: float) -> str:
        return (
            f"{done / seconds:,.0f} {self.unit}/s" if seconds > 0 and done else f"- {self.unit}/s"
        )

    def update(self, done: int) -> None:
        seconds = time.perf_counter() - self.started
        if done >= self.total:
            clear = "\r\033[K" if self.interactive else ""
            self.stream.write(
                f"{clear}{self.label}: {done:,}/{self.total:,} {self.unit} in {seconds:.2f} s "
                f"({self._rate(done, seconds)})\n"
            )
        elif self.interactive:
            width = 30
            filled = width * done // max(self.total, 1)
            eta = f"{(self.total - done) * seconds / done:.0f} s" if done else "-"
            self.stream.write(
                f"\r{self.label} [{'#' * filled}{'-' * (width - filled)}] "
                f"{done:,}/{self.total:,} {self._rate(done, seconds)} eta {eta}"
            )
        self.stream.flush()


class _RichProgress:
    def __init__(self, task: Any, progress: Any) -> None:
        self.task, self.progress = task, progress

    def update(self, done: int) -> None:
        self.progress.update(self.task, completed=done)


# -- output ---------------------------------------------------------------------------------


def _rich_installed() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _rich_console(stream: TextIO) -> Console:
    from rich.console import Console

    return Console(file=stream, highlight=False)


class Output:
    """The CLI's stdout and stderr: rich where the stream is a terminal and rich is installed."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout, self.stderr = stdout, stderr
        terminal = stdout.isatty() or stderr.isatty()
        rich = terminal and _rich_installed()
        self.rich_missing = terminal and not rich
        self.out_console = _rich_console(stdout) if rich and stdout.isatty() else None
        self.err_console = _rich_console(stderr) if rich and stderr.isatty() else None

    def hint_missing_rich(self) -> None:
        """On a terminal without rich: one line saying which extra brings it."""
        if self.rich_missing:
            error = MissingDependencyError("rich", "cli")
            self.stderr.write(f"sa-signals: note: {error} (for tables and progress bars)\n")

    def line(self, text: str = "") -> None:
        """One line of text on stdout."""
        if self.out_console is not None:
            self.out_console.print(text, markup=False)
        else:
            self.stdout.write(text + "\n")

    def show(self, *sections: Section) -> None:
        """Fields, tables and lines on stdout, a blank line between tables."""
        for section in sections:
            if isinstance(section, Fields):
                self._fields(section)
            elif isinstance(section, Table):
                self._table(section)
            else:
                self.line(section)

    def _fields(self, fields: Fields) -> None:
        if self.out_console is None:
            for label, value in fields.pairs:
                self.stdout.write(f"{label:<16}{value}\n")
            return
        from rich.table import Table as RichTable

        grid = RichTable.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        for label, value in fields.pairs:
            grid.add_row(label, value)
        self.out_console.print(grid)

    def _table(self, table: Table) -> None:
        if self.out_console is None:
            text = format_table(table.rows, table.columns, table.right)
            self.stdout.write(f"\n{table.title}\n{text}\n")
            return
        from rich.table import Table as RichTable

        rich_table = RichTable(title=table.title, title_justify="left", title_style="bold")
        for column in table.columns:
            right = table.right_aligned(column)
            rich_table.add_column(column, justify="right" if right else "left")
        for row in table.rows:
            rich_table.add_row(*(cell(row.get(column)) for column in table.columns))
        if not table.rows:
            rich_table.caption = "(no rows)"
        self.out_console.print()
        self.out_console.print(rich_table)

    def json(self, text: str) -> None:
        """Machine-readable output: written as is, never styled."""
        self.stdout.write(text + "\n")

    @contextmanager
    def progress(self, label: str, total: int, unit: str) -> Iterator[Progress]:
        """A progress bar on stderr with rate and ETA (rich or plain)."""
        if self.err_console is None:
            plain = _PlainProgress(self.stderr, label, total, unit)
            plain.update(0)
            yield plain
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:,.0f} {unit}/s" if speed else f"- {unit}/s")

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        # No redirection: stdout stays the command's own stream while the bar runs.
        with RichProgress(
            *columns, console=self.err_console, redirect_stdout=False, redirect_stderr=False
        ) as bar:
            task = bar.add_task(label, total=total)
            yield _RichProgress(task, bar)
