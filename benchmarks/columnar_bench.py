"""Columnar I/O on PostgreSQL: DataFrames in, the append fast path, DataFrames out (issue #13).

One run measures, on the same 200,000 signals with small metadata dicts (``--rows``), each
contender once per round (``--repeat`` rounds, interleaved so machine noise hits all alike),
and prints medians and ratios to the per-row baseline:

write, first (empty table) and replay (same rows again, nothing changes):
  (base)   per-row hand-written psycopg binary COPY -> temp table -> one INSERT ... SELECT ...
           ON CONFLICT DO UPDATE WHERE IS DISTINCT FROM (no dedupe, no sort)
  (arrow)  SignalsStoreClient.write_signals(pyarrow.Table), merge path (append_fast_path=False)
  (polars) the same with a polars DataFrame
  (objs)   the same with the objects (for reference)
first write only, the append fast path (the default):
  (app-o)  objects (upsert: one batch);   (app-a) the pyarrow.Table
  (ceil)   plain per-row binary COPY straight into the table (no conflict handling): the ceiling
read, history of ``--read-rows`` (1,000,000) rows of one series, in a child process each (peak
RSS of that process, ``VmHWM``, and its growth during the read):
  (dicts)  SignalsQueryClient.get_signals_history(...) (list of dicts)
  (table)  the same with format="arrow" (ADBC)

Usage: python benchmarks/columnar_bench.py [--dsn postgresql://postgres@127.0.0.1:5432/bench_col]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import psycopg
import pyarrow as pa
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, Table, create_engine, text
from sqlalchemy.engine import make_url

from sa_signals import SignalsQueryClient, SignalsStoreClient, signals_table

sys.path.insert(0, str(Path(__file__).parent))
from write_bench import BASE, NAIVE_STAGE, copy_naive, make_signal

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/bench_col"
MERGE = """
    INSERT INTO bench_col AS t (provider, symbol, ts, name, value, score, metadata)
    SELECT provider, symbol, ts, name, value, score, metadata FROM tmp_signals
    ON CONFLICT (provider, symbol, ts, name) DO UPDATE
    SET value = excluded.value, score = excluded.score, metadata = excluded.metadata
    WHERE t.value IS DISTINCT FROM excluded.value
       OR t.score IS DISTINCT FROM excluded.score
       OR t.metadata IS DISTINCT FROM excluded.metadata
"""


def as_arrow(signals: list[SimpleNamespace]) -> pa.Table:
    return pa.table(
        {
            "provider": [s.provider for s in signals],
            "symbol": [s.symbol for s in signals],
            "ts": pa.array([s.ts for s in signals], pa.timestamp("us", "UTC")),
            "name": [s.name for s in signals],
            "value": pa.array([s.value for s in signals], pa.float64()),
            "score": pa.array([s.score for s in signals], pa.float64()),
            "metadata": pa.array([s.metadata for s in signals]),
        }
    )


def ensure_database(dsn: str) -> None:
    url = make_url(dsn)
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)
        ).fetchone():
            conn.execute(f'CREATE DATABASE "{url.database}"')


class Bench:
    def __init__(self, dsn: str, rows: int) -> None:
        self.libpq = (
            make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        self.data = [make_signal(i) for i in range(rows)]
        self.arrow = as_arrow(self.data)
        self.polars = pl.from_arrow(self.arrow)
        self.engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))
        self.metadata = MetaData()
        self.table: Table = signals_table(self.metadata, "bench_col", timescale=None)
        self.psycopg = psycopg.connect(self.libpq)
        self.merge = SignalsStoreClient(
            dsn, table=self.table, registry=CollectorRegistry(), append_fast_path=False
        ).__enter__()
        self.append = SignalsStoreClient(dsn, table=self.table, registry=CollectorRegistry())
        self.append.__enter__()

    def reset(self) -> None:
        self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(text("CHECKPOINT"))
        gc.collect()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM bench_col")).scalar_one())

    def baseline(self) -> None:
        with self.psycopg.cursor() as cur:
            cur.execute(NAIVE_STAGE)
            copy_naive(cur, "tmp_signals", self.data)
            cur.execute(MERGE)
        self.psycopg.commit()

    def ceiling(self) -> None:
        with self.psycopg.cursor() as cur:
            copy_naive(cur, "bench_col", self.data)
        self.psycopg.commit()

    def close(self) -> None:
        self.merge.__exit__(None, None, None)
        self.append.__exit__(None, None, None)
        self.psycopg.close()
        self.metadata.drop_all(self.engine)
        self.engine.dispose()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _hwm_mb() -> float:
    # This process image's own high-water mark (ru_maxrss would carry the parent's over).
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM"))


def read_child(dsn: str, rows: int, form: str) -> None:
    """Child body: read the history once in ``form``; print seconds, rows and memory."""
    table = signals_table(MetaData(), "bench_col_read", timescale=None)
    start, end = BASE - timedelta(days=1), BASE + timedelta(days=400)
    with SignalsQueryClient(dsn, table=table) as client:
        client.get_latest_signals("p", "SPY", 1, format="arrow")  # imports and connections
        client.get_latest_signals("p", "SPY", 1)
        before = _hwm_mb()
        started = time.perf_counter()
        if form == "arrow":
            result: Any = client.get_signals_history(
                "p", "SPY", start, end, limit=rows, format="arrow"
            )
            got = result.num_rows
        else:
            result = client.get_signals_history("p", "SPY", start, end, limit=rows)
            got = len(result)
        elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed, "rows": got, "before": before, "peak": _hwm_mb()}))


def measure_read(dsn: str, rows: int, form: str) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, growth MB during the read) of one read in a fresh process."""
    out = subprocess.run(
        [sys.executable, __file__, "--dsn", dsn, "--read-child", form, "--read-rows", str(rows)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    if data["rows"] != rows:
        raise SystemExit(f"read {data['rows']} rows, expected {rows}")
    return float(data["seconds"]), float(data["peak"]), float(data["peak"] - data["before"])


def fill_read_table(dsn: str, rows: int) -> None:
    metadata = MetaData()
    table = signals_table(metadata, "bench_col_read", timescale=None)
    engine = create_engine(make_url(dsn).set(drivername="postgresql+psycopg"))
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('bench_col_read')")).scalar()
        if exists is not None:
            count = conn.execute(text("SELECT count(*) FROM bench_col_read")).scalar_one()
            if count == rows:
                engine.dispose()
                return
    metadata.drop_all(engine)
    metadata.create_all(engine)
    names = [f"signal_{k}" for k in range(10)]
    frame = pa.table(
        {
            "provider": pa.array(["p"] * rows),
            "symbol": pa.array(["SPY"] * rows),
            "ts": pa.array(
                [BASE + timedelta(seconds=i // 10) for i in range(rows)], pa.timestamp("us", "UTC")
            ),
            "name": pa.array([names[i % 10] for i in range(rows)]),
            "value": pa.array([float(i % 1000) for i in range(rows)]),
            "score": pa.array([None if i % 3 == 0 else 0.5 for i in range(rows)], pa.float64()),
            "metadata": pa.array([{"window": "1m", "n": i % 11} for i in range(rows)]),
        }
    )
    with SignalsStoreClient(engine, table=table, registry=CollectorRegistry()) as client:
        client.write_signals(frame)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE bench_col_read"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--read-rows", type=int, default=1_000_000, help="0 to skip reads")
    parser.add_argument("--read-repeat", type=int, default=3)
    parser.add_argument("--read-child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_child:
        read_child(args.dsn, args.read_rows, args.read_child)
        return
    ensure_database(args.dsn)
    bench = Bench(args.dsn, args.rows)
    n = args.rows
    first: dict[str, list[float]] = {}
    replay: dict[str, list[float]] = {}
    write_contenders: dict[str, Callable[[], Any]] = {
        "base": bench.baseline,
        "arrow": lambda: bench.merge.write_signals(bench.arrow),
        "polars": lambda: bench.merge.write_signals(bench.polars),
        "objs": lambda: bench.merge.write_signals(bench.data),
    }
    first_only: dict[str, Callable[[], Any]] = {
        # upsert(): the whole list is one batch (write_signals' batch_size=1000 would split it,
        # and these rows are not in write order, so a split list merges).
        "app-o": lambda: bench.append.upsert(bench.data),
        "app-a": lambda: bench.append.write_signals(bench.arrow),
        "ceil": bench.ceiling,
    }
    for round_ in range(args.repeat):
        for name, fn in write_contenders.items():
            bench.reset()
            first.setdefault(name, []).append(timed(fn))
            assert bench.count() == n, name
            replay.setdefault(name, []).append(timed(fn))
        for name, fn in first_only.items():
            bench.reset()
            first.setdefault(name, []).append(timed(fn))
            assert bench.count() == n, name
            if name.startswith("app-"):
                result = bench.append.last_result
                assert result is not None and "APPEND" in result.methods, name
        print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    bench.close()

    def line(label: str, times: list[float], base: list[float]) -> str:
        # The machine is shared and noisy: each round's contender is compared with the same
        # round's baseline, and the median of those paired ratios is quoted with the medians.
        med = statistics.median(times)
        paired = statistics.median(b / t for b, t in zip(base, times, strict=True))
        return (
            f"  {label:7s} median {med:6.3f} s  {n / med / 1000:7.1f}k rows/s  "
            f"x{statistics.median(base) / med:5.2f} vs base (medians)  x{paired:5.2f} (paired)"
            f"   (runs: {', '.join(f'{t:.2f}' for t in times)})"
        )

    print(f"write, {n} signals with metadata, {args.repeat} rounds, medians")
    print(" first write:")
    for name in (*write_contenders, *first_only):
        print(line(name, first[name], first["base"]))
    print(" replay:")
    for name in write_contenders:
        print(line(name, replay[name], replay["base"]))
    sys.stdout.flush()

    if args.read_rows:
        fill_read_table(args.dsn, args.read_rows)
        del bench
        gc.collect()
        reads: dict[str, list[tuple[float, float, float]]] = {"dicts": [], "arrow": []}
        for _ in range(args.read_repeat):
            for form in reads:
                gc.collect()
                reads[form].append(measure_read(args.dsn, args.read_rows, form))
        dict_s = statistics.median(t for t, _, _ in reads["dicts"])
        print(f"read, history of {args.read_rows} rows, {args.read_repeat} rounds, medians")
        for form, runs in reads.items():
            seconds = statistics.median(t for t, _, _ in runs)
            rss = statistics.median(r for _, r, _ in runs)
            grew = statistics.median(g for _, _, g in runs)
            print(
                f"  {form:6s} median {seconds:6.3f} s  x{dict_s / seconds:5.2f} vs dicts  "
                f"peak RSS {rss:7.1f} MB (+{grew:.1f} MB during the read)   "
                f"(runs: {', '.join(f'{t:.2f}' for t, _, _ in runs)})"
            )


if __name__ == "__main__":
    main()
