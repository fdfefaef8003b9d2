"""Write-path benchmark: the library's write paths against a hand-written psycopg COPY baseline.

Usage: ``python benchmarks/write_bench.py [--rows 200000] [--repeat 3] [--dsn ...]``

On one PostgreSQL (default ``postgresql://postgres@127.0.0.1:5432/bench_write``, created if
missing), with the same signals (small metadata dicts) and the spec's table and indexes, each
path writes into an empty table (first write) and then writes everything again (full replay):

(a) baseline: hand-written psycopg binary COPY -> temp table -> diff-aware merge;
(b) ``SignalsStoreClient`` (COPY path), (c) ``AsyncSignalsStoreClient`` on asyncpg,
(d) the executemany path (``batch_threshold`` above the batch size),
(e) 100-signal calls: p50/p95 latency per call.

Prints rows/s (medians over ``--repeat`` runs) and each path's ratio to (a); then the peak RSS
of a subprocess streaming ``--rss-rows`` signals from a generator.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from sqlalchemy import MetaData, Table, create_engine, text
from sqlalchemy.engine import make_url

from sa_signals import AsyncSignalsStoreClient, SignalsStoreClient, signals_table

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/bench_write"
BASE = datetime(2025, 1, 1, tzinfo=timezone.utc)
PROVIDERS = ("ibkr_primary", "polygon")
SYMBOLS = ("SPY", "QQQ", "AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META", "GOOG", "IWM")
NAMES = ("vwap_cross_up", "volatility_spike", "momentum_signal", "rsi_oversold")


def make_signal(i: int, value: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(
        provider=PROVIDERS[i % 2],
        symbol=SYMBOLS[(i // 2) % 10],
        ts=BASE + timedelta(seconds=i // 80),
        name=NAMES[(i // 20) % 4],
        value=value + (i % 7),
        score=0.5 if i % 3 else None,
        metadata={"window": "1m", "price": 400.0 + i % 50, "n": i % 11},
    )


def generate(n: int, start: int = 0) -> Iterator[SimpleNamespace]:
    for i in range(start, start + n):
        yield make_signal(i)


def ensure_database(dsn: str) -> None:
    url = make_url(dsn)
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
        ).fetchone():
            conn.execute(f'CREATE DATABASE "{url.database}"')


class Bench:
    def __init__(self, dsn: str, rows: int, batch_size: int) -> None:
        self.dsn = dsn
        self.libpq = (
            make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.rows = rows
        self.batch_size = batch_size
        self.data = [make_signal(i) for i in range(rows)]
        self.engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))
        self.metadata = MetaData()
        self.table: Table = signals_table(self.metadata, "bench_signals", timescale=None)

    def reset(self) -> None:
        self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(text("CHECKPOINT"))
        gc.collect()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM bench_signals")).scalar_one())

    # (a) ------------------------------------------------------------------------------------
    def baseline(self) -> None:
        merge = """
            INSERT INTO bench_signals AS t (provider, symbol, ts, name, value, score, metadata)
            SELECT DISTINCT ON (provider, symbol, ts, name)
                   provider, symbol, ts, name, value, score, metadata
            FROM tmp_signals ORDER BY provider, symbol, ts, name, ord DESC
            ON CONFLICT (provider, symbol, ts, name) DO UPDATE
            SET value = excluded.value, score = excluded.score, metadata = excluded.metadata
            WHERE t.value IS DISTINCT FROM excluded.value
               OR t.score IS DISTINCT FROM excluded.score
               OR t.metadata IS DISTINCT FROM excluded.metadata
        """
        types = ["int8", "text", "text", "timestamptz", "text", "float8", "float8", "jsonb"]
        with psycopg.connect(self.libpq) as conn:
            conn.execute(
                "CREATE TEMP TABLE tmp_signals (ord bigint, provider text, symbol text, "
                "ts timestamptz, name text, value float8, score float8, metadata jsonb) "
                "ON COMMIT DROP"
            )
            data = self.data
            for start in range(0, len(data), self.batch_size):
                with conn.cursor() as cur:
                    with cur.copy(
                        "COPY tmp_signals (ord, provider, symbol, ts, name, value, score, "
                        "metadata) FROM STDIN (FORMAT BINARY)"
                    ) as copy:
                        copy.set_types(types)
                        for i in range(start, min(start + self.batch_size, len(data))):
                            s = data[i]
                            copy.write_row(
                                (
                                    i,
                                    s.provider,
                                    s.symbol.upper(),
                                    s.ts,
                                    s.name,
                                    s.value,
                                    s.score,
                                    None if s.metadata is None else Jsonb(s.metadata),
                                )
                            )
                    cur.execute(merge)
                    cur.execute("TRUNCATE tmp_signals")
            conn.commit()

    # (b) ------------------------------------------------------------------------------------
    def sync_client(self) -> None:
        with SignalsStoreClient(self.dsn, table=self.table, registry=CollectorRegistry()) as c:
            c.write_signals(self.data, batch_size=self.batch_size)
        c.close()

    # (c) ------------------------------------------------------------------------------------
    def async_client(self) -> None:
        async def run() -> None:
            client = AsyncSignalsStoreClient(
                self.dsn, table=self.table, registry=CollectorRegistry()
            )
            async with client:
                await client.write_signals(self.data, batch_size=self.batch_size)
            await client.aclose()

        asyncio.run(run())

    # (d) ------------------------------------------------------------------------------------
    def executemany(self) -> None:
        with SignalsStoreClient(
            self.dsn, 10**9, table=self.table, registry=CollectorRegistry()
        ) as client:
            client.write_signals(self.data, batch_size=1000)
        client.close()

    # (e) ------------------------------------------------------------------------------------
    def small_batches(self, calls: int) -> list[float]:
        latencies = []
        with SignalsStoreClient(self.dsn, table=self.table, registry=CollectorRegistry()) as c:
            for k in range(calls):
                batch = [make_signal(i) for i in range(k * 100, k * 100 + 100)]
                started = time.perf_counter()
                c.write_signals(batch)
                latencies.append(time.perf_counter() - started)
        c.close()
        return latencies


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rss_child(rows: int, dsn: str, batch_size: int) -> None:
    """Subprocess body: stream ``rows`` signals from a generator, print peak RSS (MB)."""
    metadata = MetaData()
    table = signals_table(metadata, "bench_rss", timescale=None)
    engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    engine.dispose()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    with SignalsStoreClient(dsn, table=table, registry=CollectorRegistry()) as client:
        written = client.write_signals(generate(rows), batch_size=batch_size)
    elapsed = time.perf_counter() - started
    client.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:  # this process image's own high-water mark (not inherited across exec)
        with open("/proc/self/status") as status:
            hwm = next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        hwm = peak
    print(f"{written} {elapsed:.2f} {before:.1f} {peak:.1f} {hwm:.1f}")
    metadata.drop_all(create_engine(make_url(dsn).set(drivername="postgresql+psycopg")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--rows", type=int, default=200_000, help="signals per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (median)")
    parser.add_argument("--batch-size", type=int, default=50_000, help="COPY batch size (a-c)")
    parser.add_argument("--calls", type=int, default=500, help="100-signal calls for (e)")
    parser.add_argument("--rss-rows", type=int, default=2_000_000, help="0 to skip")
    parser.add_argument("--skip-executemany", action="store_true")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.dsn, args.batch_size)
        return

    ensure_database(args.dsn)
    # First, while this process is still small: ru_maxrss survives fork + exec on Linux.
    if args.rss_rows:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--rss-child",
                str(args.rss_rows),
                "--dsn",
                args.dsn,
                "--batch-size",
                "10000",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        written, elapsed, before, peak, hwm = int(out[0]), *map(float, out[1:5])
        print(
            f"streaming {written:,} signals from a generator (batch 10000): {elapsed:.1f}s, "
            f"{written / elapsed:,.0f} rows/s, peak RSS {peak:.0f} MB by getrusage "
            f"(after imports {before:.0f} MB), VmHWM {hwm:.0f} MB"
        )
    bench = Bench(args.dsn, args.rows, args.batch_size)
    paths: dict[str, Callable[[], None]] = {
        "(a) baseline psycopg COPY+merge": bench.baseline,
        "(b) SignalsStoreClient COPY": bench.sync_client,
        "(c) AsyncSignalsStoreClient asyncpg": bench.async_client,
    }
    if not args.skip_executemany:
        paths["(d) executemany upsert"] = bench.executemany
    first: dict[str, list[float]] = {name: [] for name in paths}
    replay: dict[str, list[float]] = {name: [] for name in paths}
    for run in range(args.repeat):
        # Interleave the contenders in each run so drift hits all of them alike.
        for name, fn in paths.items():
            bench.reset()
            first[name].append(timed(fn))
            assert bench.count() == args.rows, name
            replay[name].append(timed(fn))
            print(
                f"run {run + 1}: {name}: first {first[name][-1]:.2f}s "
                f"replay {replay[name][-1]:.2f}s",
                file=sys.stderr,
            )

    print(f"\n{args.rows} signals, batch size {args.batch_size}, medians of {args.repeat} runs")
    print(f"{'path':38} {'first rows/s':>13} {'ratio':>6} {'replay rows/s':>14} {'ratio':>6}")
    base_first = statistics.median(first["(a) baseline psycopg COPY+merge"])
    base_replay = statistics.median(replay["(a) baseline psycopg COPY+merge"])
    for name in paths:
        f, r = statistics.median(first[name]), statistics.median(replay[name])
        print(
            f"{name:38} {args.rows / f:13,.0f} {base_first / f:6.2f} "
            f"{args.rows / r:14,.0f} {base_replay / r:6.2f}"
        )

    bench.reset()
    latencies = sorted(bench.small_batches(args.calls))
    p50 = statistics.median(latencies) * 1000
    p95 = latencies[int(len(latencies) * 0.95) - 1] * 1000
    print(f"(e) 100-signal calls x{args.calls}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")

    bench.metadata.drop_all(bench.engine)


if __name__ == "__main__":
    main()
