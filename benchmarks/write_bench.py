"""Write-path benchmark: the library's write paths against hand-written baselines.

Usage: ``python benchmarks/write_bench.py [--rows 200000] [--repeat 5] [--url ...] [--timescale]``

On one PostgreSQL (default ``postgresql://postgres@127.0.0.1:5432/bench_write``, created if
missing), with the same signals (small metadata dicts) and the spec's table and indexes, each
path writes into an empty table (first write) and then writes everything again (full replay).
With ``--timescale`` (the server must have TimescaleDB; the extension is created in the
database) the table is a hypertable made by the library's DDL hook (one 7-day chunk holds all
signals, compression segmented by the spec's columns, no compression policy), and a third
column replays everything once more into compressed chunks (every chunk compressed with
``compress_chunk`` after the replay; the hand-written baselines lift
``timescaledb.max_tuples_decompressed_per_dml_transaction`` for their transaction, as the
clients do by default):

(n) naive psycopg: binary COPY of every signal -> temp table -> ONE ``INSERT ... SELECT ... ON
    CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM`` (no validation, no dedupe, no sort);
(m) naive asyncpg: the same with ``copy_records_to_table`` (binary jsonb codec);
(a) the earlier baseline: psycopg COPY in ``--baseline-batch`` batches, each merged with
    ``DISTINCT ON`` (deduplicated and key-ordered per batch);
(b) ``SignalsStoreClient.write_signals`` with its DEFAULT batch_size (ratio to (n));
(c) ``AsyncSignalsStoreClient.write_signals`` on asyncpg, default batch_size (ratio to (m));
(d) the small-batch path (``batch_threshold`` above the call size, 1,000-signal calls);
(e) 100-signal calls: p50/p95 latency per call;
(p) plain binary COPY straight into the table (first write only: COPY cannot replay), the
    ceiling of any write path.

Every contender connects once, outside the timings; the contenders run interleaved in every
round (so drift on a shared machine hits them alike) and the figures are medians over
``--repeat`` rounds. Then the peak RSS of a subprocess streaming ``--rss-rows`` signals from a
generator.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import asyncpg
import psycopg
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from sqlalchemy import MetaData, Table, create_engine, text
from sqlalchemy.engine import make_url

from sa_signals import (
    AsyncSignalsStoreClient,
    SignalsStoreClient,
    TimescaleOptions,
    signals_table,
)

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


def ensure_database(dsn: str, timescale: bool) -> None:
    url = make_url(dsn)
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
        ).fetchone():
            conn.execute(f'CREATE DATABASE "{url.database}"')
    if timescale:
        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")


NAIVE_MERGE = """
    INSERT INTO bench_signals AS t (provider, symbol, ts, name, value, score, metadata)
    SELECT provider, symbol, ts, name, value, score, metadata FROM tmp_signals
    ON CONFLICT (provider, symbol, ts, name) DO UPDATE
    SET value = excluded.value, score = excluded.score, metadata = excluded.metadata
    WHERE t.value IS DISTINCT FROM excluded.value
       OR t.score IS DISTINCT FROM excluded.score
       OR t.metadata IS DISTINCT FROM excluded.metadata
"""
NAIVE_STAGE = (
    "CREATE TEMP TABLE tmp_signals (provider text, symbol text, ts timestamptz, name text, "
    "value float8, score float8, metadata jsonb) ON COMMIT DROP"
)
NAIVE_COLUMNS = ("provider", "symbol", "ts", "name", "value", "score", "metadata")
NAIVE_TYPES = ["text", "text", "timestamptz", "text", "float8", "float8", "jsonb"]
# What the clients do by default on TimescaleDB: no cap on decompressed tuples for the call.
LIFT_CAP = "SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 0"
COMPRESS = "SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks(%s) c"


def copy_naive(cur: psycopg.Cursor[Any], target: str, data: list[SimpleNamespace]) -> None:
    """Binary COPY of ``data`` into ``target`` (``NAIVE_COLUMNS``), row by row, as a user would
    write it by hand (no validation)."""
    with cur.copy(f"COPY {target} ({', '.join(NAIVE_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(NAIVE_TYPES)
        for s in data:
            copy.write_row(
                (
                    s.provider,
                    s.symbol.upper(),
                    s.ts,
                    s.name,
                    s.value,
                    s.score,
                    None if s.metadata is None else Jsonb(s.metadata),
                )
            )


def naive_write(
    conn: psycopg.Connection[Any], data: list[SimpleNamespace], *, lift_cap: bool
) -> None:
    """The naive psycopg baseline (n): COPY into a temp table, then ONE merge; one transaction."""
    with conn.cursor() as cur:
        if lift_cap:
            cur.execute(LIFT_CAP)
        cur.execute(NAIVE_STAGE)
        copy_naive(cur, "tmp_signals", data)
        cur.execute(NAIVE_MERGE)
    conn.commit()


def _jsonb_binary(value: object) -> bytes:
    return b"\x01" + json.dumps(value).encode()


class Bench:
    def __init__(
        self, dsn: str, rows: int, baseline_batch: int, batch_size: int | None, timescale: bool
    ) -> None:
        self.dsn = dsn
        self.timescale = timescale
        self.libpq = (
            make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.rows = rows
        self.baseline_batch = baseline_batch
        self.batch = {} if batch_size is None else {"batch_size": batch_size}
        self.data = [make_signal(i) for i in range(rows)]
        self.engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))
        self.metadata = MetaData()
        # On TimescaleDB: the library's DDL hook makes the hypertable; no compression policy,
        # so no background job compresses a chunk in the middle of a measurement.
        options = TimescaleOptions(compress_after=None) if timescale else None
        self.table: Table = signals_table(self.metadata, "bench_signals", timescale=options)
        # Every contender connects once, outside the timings.
        self.loop = asyncio.new_event_loop()
        self.psycopg = psycopg.connect(self.libpq)
        self.asyncpg = self.loop.run_until_complete(self._asyncpg_connect())
        self.sync = SignalsStoreClient(dsn, table=self.table, registry=CollectorRegistry())
        self.sync.__enter__()
        self.small = SignalsStoreClient(dsn, 10**9, table=self.table, registry=CollectorRegistry())
        self.small.__enter__()
        self.aclient = AsyncSignalsStoreClient(dsn, table=self.table, registry=CollectorRegistry())
        self.loop.run_until_complete(self.aclient.__aenter__())

    async def _asyncpg_connect(self) -> Any:
        conn = await asyncpg.connect(self.libpq)
        await conn.set_type_codec(
            "jsonb",
            encoder=_jsonb_binary,
            decoder=lambda data: json.loads(data[1:]),
            schema="pg_catalog",
            format="binary",
        )
        return conn

    def close(self) -> None:
        self.sync.__exit__(None, None, None)
        self.small.__exit__(None, None, None)
        self.loop.run_until_complete(self.aclient.__aexit__(None, None, None))
        self.loop.run_until_complete(self.asyncpg.close())
        self.loop.close()
        self.psycopg.close()
        self.metadata.drop_all(self.engine)
        self.engine.dispose()

    def reset(self) -> None:
        self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(text("CHECKPOINT"))
        gc.collect()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM bench_signals")).scalar_one())

    def compress(self) -> int:
        """Compress every chunk of the hypertable (untimed); the number of chunks."""
        with psycopg.connect(self.libpq, autocommit=True) as conn:
            row = conn.execute(COMPRESS, ("bench_signals",)).fetchone()
            conn.execute("CHECKPOINT")
        gc.collect()
        return int(row[0]) if row else 0

    # (p) ------------------------------------------------------------------------------------
    def plain_copy(self) -> None:
        with self.psycopg.cursor() as cur:
            copy_naive(cur, "bench_signals", self.data)
        self.psycopg.commit()

    # (n) ------------------------------------------------------------------------------------
    def naive_psycopg(self) -> None:
        naive_write(self.psycopg, self.data, lift_cap=self.timescale)

    # (m) ------------------------------------------------------------------------------------
    def naive_asyncpg(self) -> None:
        async def run() -> None:
            conn = self.asyncpg
            async with conn.transaction():
                if self.timescale:
                    await conn.execute(LIFT_CAP)
                await conn.execute(NAIVE_STAGE)
                await conn.copy_records_to_table(
                    "tmp_signals",
                    records=(
                        (s.provider, s.symbol.upper(), s.ts, s.name, s.value, s.score, s.metadata)
                        for s in self.data
                    ),
                    columns=NAIVE_COLUMNS,
                )
                await conn.execute(NAIVE_MERGE)

        self.loop.run_until_complete(run())

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
        conn = self.psycopg
        if self.timescale:
            conn.execute(LIFT_CAP)
        conn.execute(
            "CREATE TEMP TABLE tmp_signals (ord bigint, provider text, symbol text, "
            "ts timestamptz, name text, value float8, score float8, metadata jsonb) "
            "ON COMMIT DROP"
        )
        data = self.data
        for start in range(0, len(data), self.baseline_batch):
            with conn.cursor() as cur:
                with cur.copy(
                    "COPY tmp_signals (ord, provider, symbol, ts, name, value, score, "
                    "metadata) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(types)
                    for i in range(start, min(start + self.baseline_batch, len(data))):
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
        self.sync.write_signals(self.data, **self.batch)

    # (c) ------------------------------------------------------------------------------------
    def async_client(self) -> None:
        self.loop.run_until_complete(self.aclient.write_signals(self.data, **self.batch))

    # (d) ------------------------------------------------------------------------------------
    def executemany(self) -> None:
        for start in range(0, len(self.data), 1000):
            self.small.write_signals(self.data[start : start + 1000])

    # (e) ------------------------------------------------------------------------------------
    def small_batches(self, calls: int) -> list[float]:
        latencies = []
        for k in range(calls):
            batch = [make_signal(i) for i in range(k * 100, k * 100 + 100)]
            started = time.perf_counter()
            self.sync.write_signals(batch)
            latencies.append(time.perf_counter() - started)
        return latencies


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time, and CPU time of this process plus the server's backends on the database.

    On a shared machine the wall time of a contender depends on what else runs; the CPU it
    spends (client process + its server backends, read from ``/proc`` when the server runs on
    this machine) does much less. Every contender connects once, before the timings, to a
    database of the benchmark's own, so the backends of that database are the contenders'.
    """

    def __init__(self, libpq: str) -> None:
        self.conn = psycopg.connect(libpq, autocommit=True)

    def _server(self) -> float | None:
        pids = [
            row[0]
            for row in self.conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:  # a remote server, or the backend just left
                return None
            total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        return total

    def timed(self, fn: Callable[[], None]) -> tuple[float, float | None, float]:
        server = self._server()
        client = time.process_time()
        started = time.perf_counter()
        fn()
        wall = time.perf_counter() - started
        client = time.process_time() - client
        after = self._server()
        if server is None or after is None:
            return wall, None, client
        return wall, after - server, client

    def close(self) -> None:
        self.conn.close()


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
    parser.add_argument("--url", "--dsn", dest="dsn", default=DEFAULT_DSN)
    parser.add_argument(
        "--timescale",
        action="store_true",
        help="hypertable mode (TimescaleDB server): adds the replay into compressed chunks",
    )
    parser.add_argument("--rows", type=int, default=200_000, help="signals per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="clients' batch_size (default: theirs)"
    )
    parser.add_argument("--baseline-batch", type=int, default=50_000, help="batches of (a)")
    parser.add_argument("--calls", type=int, default=500, help="100-signal calls for (e)")
    parser.add_argument("--rss-rows", type=int, default=2_000_000, help="0 to skip")
    parser.add_argument("--only", default="", help="comma-separated letters, e.g. n,b,m,c")
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.dsn, args.batch_size or 10_000)
        return

    ensure_database(args.dsn, args.timescale)
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
    bench = Bench(args.dsn, args.rows, args.baseline_batch, args.batch_size, args.timescale)
    # key: (label, function, baseline key, can replay)
    paths: dict[str, tuple[str, Callable[[], None], str, bool]] = {
        "n": ("(n) naive psycopg COPY + one merge", bench.naive_psycopg, "n", True),
        "b": ("(b) SignalsStoreClient", bench.sync_client, "n", True),
        "m": ("(m) naive asyncpg COPY + one merge", bench.naive_asyncpg, "m", True),
        "c": ("(c) AsyncSignalsStoreClient (asyncpg)", bench.async_client, "m", True),
        "a": ("(a) psycopg COPY, DISTINCT ON per batch", bench.baseline, "n", True),
        "d": ("(d) small-batch upsert, 1,000 per call", bench.executemany, "n", True),
        "p": ("(p) plain binary COPY into the table", bench.plain_copy, "n", False),
    }
    if args.only:
        keep = set(args.only.split(","))
        paths = {key: value for key, value in paths.items() if key in keep}
    phases = ["first", "replay", *(["compressed"] if args.timescale else [])]
    times: dict[str, dict[str, list[float]]] = {
        phase: {key: [] for key in paths} for phase in phases
    }
    cpus: dict[str, dict[str, list[float]]] = {
        phase: {key: [] for key in paths} for phase in phases
    }
    clients: dict[str, dict[str, list[float]]] = {
        phase: {key: [] for key in paths} for phase in phases
    }
    meter = Meter(bench.libpq)

    def measure(phase: str, key: str, fn: Callable[[], None]) -> float:
        wall, server, client = meter.timed(fn)
        times[phase][key].append(wall)
        clients[phase][key].append(client)
        if server is not None:
            cpus[phase][key].append(client + server)
        return wall

    loads: list[float] = []
    for run in range(args.repeat):
        # Interleave the contenders in each round so drift hits all of them alike; the first
        # contender changes every round.
        keys = list(paths)
        keys = keys[run % len(keys) :] + keys[: run % len(keys)]
        for key in keys:
            name, fn, _, replays = paths[key]
            bench.reset()
            loads.append(os.getloadavg()[0])
            line = f"round {run + 1}: {name}: first {measure('first', key, fn):.2f}s"
            assert bench.count() == args.rows, name
            if replays:
                line += f" replay {measure('replay', key, fn):.2f}s"
                if args.timescale:
                    bench.compress()
                    line += f" compressed {measure('compressed', key, fn):.2f}s"
                    assert bench.count() == args.rows, name
            print(line, file=sys.stderr)

    batch = args.batch_size or "default"
    server = "TimescaleDB hypertable" if args.timescale else "PostgreSQL table"
    print(
        f"\n{args.rows} signals into a {server}, clients' batch_size {batch}, medians of "
        f"{args.repeat} rounds, load average (1 min) median {statistics.median(loads):.1f} "
        f"(min {min(loads):.1f}, max {max(loads):.1f}); "
        "ratio = baseline time / contender time (>1: faster than the baseline)"
    )
    header = f"{'path':44}"
    for phase in phases:
        header += f" {phase + ' rows/s':>17} {'ratio':>6}"
    print(header + "  vs")
    for key, (name, _, base, _replays) in paths.items():
        line = f"{name:44}"
        for phase in phases:
            mine = times[phase][key]
            if not mine:
                line += f" {'-':>17} {'-':>6}"
                continue
            median = statistics.median(mine)
            ratio = "-"
            if base in paths and times[phase][base]:
                ratio = f"{statistics.median(times[phase][base]) / median:.2f}"
            line += f" {args.rows / median:17,.0f} {ratio:>6}"
        print(f"{line}  ({base})")
    if all(cpus[phase][key] for phase in phases for key in paths if paths[key][3]):
        print(
            "\nCPU seconds: client process + its server backends (the client's part), medians; "
            "ratio = baseline CPU / contender CPU"
        )
        print(f"{'path':44}" + "".join(f" {phase + ' CPU':>17} {'ratio':>6}" for phase in phases))
        for key, (name, _, base, _replays) in paths.items():
            line = f"{name:44}"
            for phase in phases:
                mine = cpus[phase][key]
                if not mine:
                    line += f" {'-':>17} {'-':>6}"
                    continue
                median = statistics.median(mine)
                ratio = "-"
                if base in paths and cpus[phase][base]:
                    ratio = f"{statistics.median(cpus[phase][base]) / median:.2f}"
                own = statistics.median(clients[phase][key])
                line += f" {median:7.2f}s ({own:5.2f}s) {ratio:>6}"
            print(f"{line}  ({base})")
    meter.close()
    # Per-round ratios of the clients to their baselines (paired within a round).
    for key, base in (("b", "n"), ("c", "m"), ("p", "n")):
        if key in paths and base in paths:
            parts = []
            for phase in phases:
                pairs = [b / c for b, c in zip(times[phase][base], times[phase][key], strict=False)]
                if pairs and times[phase][key]:
                    parts.append(
                        f"{phase} {' '.join(f'{x:.2f}' for x in pairs)} "
                        f"(median {statistics.median(pairs):.2f})"
                    )
            print(f"{paths[key][0]}: per-round ratio to ({base}): " + "; ".join(parts))

    if args.calls:
        bench.reset()
        latencies = sorted(bench.small_batches(args.calls))
        p50 = statistics.median(latencies) * 1000
        p95 = latencies[int(len(latencies) * 0.95) - 1] * 1000
        print(f"(e) 100-signal calls x{args.calls}: p50 {p50:.2f} ms, p95 {p95:.2f} ms")

    bench.close()


if __name__ == "__main__":
    main()
