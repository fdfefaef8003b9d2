"""Write benchmark through a Citus coordinator: the client against the hand-written baseline.

Usage: ``python benchmarks/citus_bench.py [--rows 100000] [--repeat 5] [--dsn ...]``

On the coordinator (default ``postgresql://postgres@127.0.0.1:55440/postgres``, the cluster of
``shared/citus/start``), in a schema of its own, with the signals of ``write_bench.py`` (same
generator, same naive statements), each contender writes into an empty table (first write) and
then writes everything again (full replay), on two layouts of the same server:

* ``distributed``: the spec's table distributed by ``symbol`` (``--shards``, default 32);
* ``local``: the same table not distributed, on the coordinator alone (a one-node figure taken
  in the same run, on the same server).

Contenders:

(n) naive psycopg: binary COPY -> temp table -> ONE ``INSERT ... SELECT ... ON CONFLICT DO
    UPDATE ... WHERE ... IS DISTINCT FROM`` (no validation, no dedupe, no sort);
(b) ``SignalsStoreClient.write_signals`` with its default batch_size (COPY path, one merge);
(d) the small-batch path: 1,000-signal calls with ``batch_threshold`` above the call size;
(e) the same 1,000-signal calls on the COPY path (``batch_threshold=100``), the setting
    docs/scaling.md suggests for Citus.

Every contender connects once, outside the timings; contenders run interleaved in every round
and the figures are medians over ``--repeat`` rounds, with the ratio client / naive. Three
PostgreSQL servers share the machine's cores here: the figures show the coordinator's overhead,
not scale-out.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, Table, create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
from write_bench import make_signal, naive_write

from sa_signals import DistributionOptions, SignalsStoreClient, signals_table

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:55440/postgres"
SCHEMA = "sa_signals_citus_bench"
TABLE = "bench_signals"  # the name write_bench's naive statements use
LAYOUTS = ("distributed", "local")


class Bench:
    def __init__(self, dsn: str, rows: int, shards: int) -> None:
        url = make_url(dsn)
        options = {"options": f"-csearch_path={SCHEMA},public"}
        self.url = url.set(drivername="postgresql+psycopg").update_query_dict(options)
        self.libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.rows = rows
        self.data = [make_signal(i) for i in range(rows)]
        self.engine = create_engine(self.url)
        with self.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
        self.tables: dict[str, Table] = {}
        for layout in LAYOUTS:
            distribution = DistributionOptions(shard_count=shards) if layout != "local" else None
            self.tables[layout] = signals_table(
                MetaData(), TABLE, schema=SCHEMA, timescale=None, distribution=distribution
            )
        # Every contender connects once, outside the timings.
        self.psycopg = psycopg.connect(self.libpq, options=f"-csearch_path={SCHEMA},public")
        self.clients = {
            (layout, kind): SignalsStoreClient(
                self.url,
                {"small": 10**9, "copy": 1000, "copy-1k": 100}[kind],
                table=table,
                registry=CollectorRegistry(),
            )
            for layout, table in self.tables.items()
            for kind in ("copy", "small", "copy-1k")
        }
        for client in self.clients.values():
            client.__enter__()

    def close(self) -> None:
        for client in self.clients.values():
            client.__exit__(None, None, None)
        self.psycopg.close()
        with self.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        self.engine.dispose()

    def reset(self, layout: str) -> None:
        table = self.tables[layout]
        table.metadata.drop_all(self.engine)
        table.metadata.create_all(self.engine)  # distributed by the DDL hook, if declared
        gc.collect()

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(f'SELECT count(*) FROM "{SCHEMA}".{TABLE}')).scalar_one())

    def naive(self) -> None:
        naive_write(self.psycopg, self.data, lift_cap=False)

    def client(self, layout: str) -> None:
        assert self.clients[(layout, "copy")].write_signals(self.data) == self.rows

    def calls(self, layout: str, kind: str) -> None:
        client = self.clients[(layout, kind)]
        for start in range(0, self.rows, 1000):
            client.write_signals(self.data[start : start + 1000])


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--rows", type=int, default=100_000, help="signals per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians)")
    parser.add_argument("--shards", type=int, default=32, help="shards of the distributed table")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    args = parser.parse_args()
    bench = Bench(args.dsn, args.rows, args.shards)
    layouts = [layout for layout in args.layouts.split(",") if layout]
    contenders: dict[str, Callable[[str], None]] = {
        "n naive": lambda layout: bench.naive(),
        "b client": bench.client,
        "d small-batch": lambda layout: bench.calls(layout, "small"),
        "e copy 1k calls": lambda layout: bench.calls(layout, "copy-1k"),
    }
    times: dict[tuple[str, str, str], list[float]] = {}
    try:
        for round_ in range(args.repeat):
            for layout in layouts:
                for name, run in contenders.items():
                    bench.reset(layout)
                    first = timed(lambda run=run, layout=layout: run(layout))  # type: ignore[misc]
                    assert bench.count() == args.rows, (layout, name)
                    replay = timed(lambda run=run, layout=layout: run(layout))  # type: ignore[misc]
                    times.setdefault((layout, name, "first"), []).append(first)
                    times.setdefault((layout, name, "replay"), []).append(replay)
            print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        bench.close()
    report(times, args.rows, layouts, list(contenders))


def report(
    times: dict[tuple[str, str, str], list[float]],
    rows: int,
    layouts: list[str],
    names: list[str],
) -> None:
    median: dict[Any, float] = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n{rows:,} signals per run, medians of {len(next(iter(times.values())))} rounds")
    print(
        f"{'layout':<12} {'contender':<15} {'phase':<7} {'seconds':>8} {'rows/s':>10} {'/naive':>7}"
    )
    for layout in layouts:
        for name in names:
            for phase in ("first", "replay"):
                seconds = median[(layout, name, phase)]
                ratio = seconds / median[(layout, "n naive", phase)]
                print(
                    f"{layout:<12} {name:<15} {phase:<7} {seconds:>8.3f} "
                    f"{rows / seconds:>10,.0f} {ratio:>7.2f}"
                )
    if set(layouts) == set(LAYOUTS):
        print("\ndistributed / local (same server, same run):")
        for name in names:
            for phase in ("first", "replay"):
                ratio = median[("distributed", name, phase)] / median[("local", name, phase)]
                print(f"  {name:<15} {phase:<7} {ratio:.2f}")


if __name__ == "__main__":
    main()
