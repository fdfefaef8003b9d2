"""``sa-signals demo``: deterministic synthetic signals written, replayed and queried end to end."""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, Table, text
from sqlalchemy.pool import QueuePool

from ..result import WriteResult
from ..status import StorageStats
from .commands import (
    CommandError,
    check_create_extension,
    connect,
    create_table,
    define_table,
    describe_setup,
    display_url,
    read_stats,
)
from .output import Output, Section, cell, stats_sections
from .output import Table as OutputTable

__all__ = ["DEMO_URL", "DemoSignal", "cmd_demo", "demo_anchor", "demo_signals", "demo_step"]

#: The embedded default: a SQLite file in the working directory.
DEMO_URL = "sqlite:///sa_signals_demo.sqlite"

DEMO_PROVIDERS = ("ibkr_primary", "polygon", "alpaca")
DEMO_SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA")
DEMO_NAMES = ("vwap_cross_up", "volatility_spike", "momentum_signal", "rsi_oversold")
_DEMO_SEED = 20240613
#: Signals per write_signals call: the writers' default batch_threshold.
_CHUNK = 1000


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


def _write_pass(
    out: Output,
    label: str,
    signals: Iterator[DemoSignal],
    count: int,
    write: Callable[[list[DemoSignal]], WriteResult],
) -> dict[str, object]:
    """Feed ``signals`` to ``write`` in chunks with a progress bar; totals of the counts."""
    counts = dict.fromkeys(("received", "inserted", "updated", "unchanged"), 0)
    started = time.perf_counter()
    batch: list[DemoSignal] = []
    done = 0
    with out.progress(label, count, "signals") as progress:

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
            if len(batch) == _CHUNK:
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


def _flush_statistics(engine: Engine) -> bool:
    """Make every pooled PostgreSQL session publish its pending statistics; False if it cannot.

    PostgreSQL 15+ accumulates index-scan counts per session and publishes them at most once a
    second; ``pg_stat_force_next_flush()`` makes the session publish when it next goes idle.
    Every connection the demo used is in the pool, so checking them all out reaches each one.
    """
    version = engine.dialect.server_version_info
    if engine.dialect.name != "postgresql" or version is None or version < (15,):
        return False
    pool = engine.pool
    sessions = pool.checkedin() if isinstance(pool, QueuePool) else 1
    with ExitStack() as stack:
        connections = [stack.enter_context(engine.connect()) for _ in range(max(1, sessions))]
        for connection in connections:
            connection.execute(text("SELECT pg_catalog.pg_stat_force_next_flush()"))
            connection.commit()
    return True


def _without_scans(stats: StorageStats) -> StorageStats:
    return replace(stats, indexes=tuple(replace(i, scans=None) for i in stats.indexes))


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """``sa-signals demo``: write, replay and query synthetic signals end to end."""
    if args.count < 1:
        raise CommandError(f"--count must be at least 1, got {args.count}")
    check_create_extension(args)  # before connecting: SQLite would create the file
    engine = connect(args.url)
    table = define_table(args)
    try:
        created, hypertable = create_table(engine, table)
        out.line(f"database: {display_url(args.url)}")
        out.line(describe_setup(created, hypertable, table, engine.dialect.name))
        _run_demo(args, engine, table, out)
    finally:
        engine.dispose()
    return 0


def _run_demo(args: argparse.Namespace, engine: Engine, table: Table, out: Output) -> None:
    from prometheus_client import CollectorRegistry

    from ..read.query_client import SignalsQueryClient
    from ..write.store import SignalsStoreClient

    anchor = demo_anchor()
    count = args.count
    out.line(
        f"signals: {count} synthetic signals, {len(DEMO_PROVIDERS)} providers x "
        f"{len(DEMO_SYMBOLS)} symbols x {len(DEMO_NAMES)} names, over the 24 h before "
        f"{cell(anchor)} (deterministic: same keys all day)"
    )
    registry = CollectorRegistry()
    passes = []
    with SignalsStoreClient(engine, table=table, registry=registry) as store:

        def write(batch: list[DemoSignal]) -> WriteResult:
            return store.upsert(batch)

        # Full chunks reach the writer's batch_threshold (COPY on PostgreSQL); a remainder
        # smaller than that is upserted.
        passes.append(_write_pass(out, "write", demo_signals(count, anchor), count, write))
        passes.append(_write_pass(out, "replay", demo_signals(count, anchor), count, write))
    columns = ["pass", "received", "inserted", "updated", "unchanged", "seconds", "signals/s"]
    out.show(OutputTable("writes (diff-aware upsert: a replay changes nothing)", passes, columns))

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
    sections: list[Section] = [
        OutputTable(f"get_latest_signals({provider!r}, {symbol!r}, limit=5)", latest, row_columns),
        OutputTable(
            f"get_signals_history({provider!r}, {symbol!r}, start_ts={cell(history_start)}, "
            f"end_ts={cell(anchor)}, limit=8)",
            history,
            row_columns,
        ),
        OutputTable(
            f"get_signal_metrics({provider!r}, {symbol!r}, {name!r}, hours_back={hours_back})",
            [metrics],
            list(metrics),
        ),
        OutputTable(
            f"get_active_signals({provider!r}, minutes_back={minutes_back}) "
            f"(first 10 of {len(active)})",
            active[:10],
            ["symbol", "name", "value", "score", "ts"],
        ),
        OutputTable(
            f"get_signal_summary({provider!r}, hours_back={hours_back})",
            [summary],
            list(summary),
        ),
        OutputTable(
            "Prometheus metrics recorded (private CollectorRegistry)",
            _metric_rows(registry),
            ["metric", "labels", "value"],
        ),
    ]
    out.show(*sections)

    fresh = _flush_statistics(engine)
    stats = read_stats(engine, table, args)
    out.line()
    out.line("storage (sa-signals status)")
    if not fresh and stats.backend == "postgresql":
        # Before PostgreSQL 15 the statistics collector lags the queries just run.
        stats = _without_scans(stats)
    out.show(*stats_sections(stats))
