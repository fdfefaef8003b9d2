"""The Citus tier: a signals table distributed by symbol, written and read through the coordinator.

Each test works in a schema of its own on the coordinator (Citus creates it on the workers too).
The results of writes and of every spec query are compared with the same calls on plain
PostgreSQL; EXPLAIN shows which queries stay on one shard.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, MetaData, Table, event, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sa_signals import (
    AsyncSignalsStoreClient,
    DistributionOptions,
    InvalidSignalError,
    SignalRepository,
    SignalsQueryClient,
    SignalsStoreClient,
    WriteResult,
    ensure_distribution,
    signals_table,
)
from sa_signals.read.queries import (
    QueryPlan,
    bucket_function_for,
    plan_active,
    plan_buckets,
    plan_history,
    plan_latest,
    plan_metrics,
    plan_summary,
)
from sa_signals.result import COPY, UPSERT
from sa_signals.schema.ddl.citus import read_distribution_state

from .conftest import Database
from .test_write_helpers import async_client

UTC = timezone.utc
PROVIDERS = ("ibkr_primary", "polygon")
SYMBOLS = tuple(f"SYM{i:02d}" for i in range(24))
NAMES = ("vwap_cross_up", "rsi_14")
#: A shard count small enough that every shard gets rows, large enough to fan out.
SHARDS = 8
#: Far below the default, so a few hundred signals take the COPY path.
COPY_THRESHOLD = 100


def _distributed(db: Database, name: str = "signals", **options: Any) -> Table:
    table = db.make_table(
        name, timescale=None, distribution=DistributionOptions(shard_count=SHARDS, **options)
    )
    db.metadata.create_all(db.engine)
    return table


def _state(db: Database, table: Table) -> tuple[bool, str | None, int | None]:
    with db.engine.connect() as conn:
        state = read_distribution_state(conn, table.name, table.schema)
    return state.is_distributed, state.column, state.shard_count


def _dataset(now: datetime, *, value: float = 1.0, points: int = 10) -> list[SimpleNamespace]:
    """Rows over every provider/symbol/name: ``points`` instants per series in the last hour,
    newest 10 s before ``now`` (inside the active window)."""
    rng = random.Random(7)
    rows = []
    for p in PROVIDERS:
        for s in SYMBOLS:
            for n in NAMES:
                for k in range(points):
                    rows.append(
                        SimpleNamespace(
                            provider=p,
                            symbol=s,
                            ts=now - timedelta(seconds=10 + 300 * k),
                            name=n,
                            value=value * rng.random(),
                            score=None if k % 3 else rng.random(),
                            metadata={"k": k} if k % 2 else None,
                        )
                    )
    rng.shuffle(rows)
    return rows


def _client(db: Database, table: Table, **kwargs: Any) -> SignalsStoreClient:
    return SignalsStoreClient(db.url, table=table, registry=CollectorRegistry(), **kwargs)


def _contents(db: Database, table: Table) -> list[tuple[Any, ...]]:
    return db.sql(
        f'SELECT provider, symbol, ts, name, value, score, metadata FROM "{table.schema}".'
        f'"{table.name}" ORDER BY provider, symbol, ts, name'
    )


# -- DDL ---------------------------------------------------------------------------------


@pytest.mark.citus
def test_create_all_distributes_the_table_by_symbol(citus_db: Database) -> None:
    table = citus_db.make_table(timescale=None, distribution=DistributionOptions())
    citus_db.metadata.create_all(citus_db.engine)
    distributed, column, shards = _state(citus_db, table)
    assert (distributed, column) == (True, "symbol")
    (default,) = citus_db.sql("SHOW citus.shard_count")[0]
    assert shards == int(str(default))
    # The primary key, the check constraint and the three indexes exist on every shard.
    (indexes,) = citus_db.sql(
        "SELECT count(DISTINCT indexname) FROM pg_indexes WHERE schemaname = :s "
        "AND tablename = 'signals'",
        s=citus_db.schema,
    )[0]
    assert indexes == 4
    # Idempotent: nothing to do on an already distributed table.
    with citus_db.engine.begin() as conn:
        assert ensure_distribution(table, conn) is True
    assert _state(citus_db, table) == (True, "symbol", shards)


@pytest.mark.citus
def test_shard_count_and_colocation_are_applied(citus_db: Database) -> None:
    signals = _distributed(citus_db)
    assert _state(citus_db, signals) == (True, "symbol", SHARDS)
    metadata = MetaData()
    colocated = signals_table(
        metadata,
        "model_signals",
        schema=citus_db.schema,
        timescale=None,
        distribution=DistributionOptions(colocate_with=f'"{citus_db.schema}".signals'),
    )
    metadata.create_all(citus_db.engine)
    groups = citus_db.sql(
        "SELECT c.relname, p.colocationid FROM pg_dist_partition AS p "
        "JOIN pg_class AS c ON c.oid = p.logicalrelid "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = :s ORDER BY 1",
        s=citus_db.schema,
    )
    assert len(groups) == 2 and groups[0][1] == groups[1][1], groups
    assert _state(citus_db, colocated) == (True, "symbol", SHARDS)


@pytest.mark.citus
def test_strict_options_need_no_extension_here(citus_db: Database) -> None:
    # require_citus is satisfied on the cluster: no error, a distributed table.
    table = citus_db.make_table(
        timescale=None, distribution=DistributionOptions(require_citus=True, shard_count=4)
    )
    citus_db.metadata.create_all(citus_db.engine)
    assert _state(citus_db, table) == (True, "symbol", 4)


@pytest.mark.citus
def test_an_existing_plain_table_with_rows_is_moved_into_shards(
    citus_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    plain = citus_db.make_table(timescale=None)
    citus_db.metadata.create_all(citus_db.engine)
    rows = _dataset(datetime.now(UTC), points=3)
    with _client(citus_db, plain) as client:
        assert client.upsert(rows).inserted == len(rows)
    assert _state(citus_db, plain)[0] is False
    declared = signals_table(
        MetaData(),
        schema=citus_db.schema,
        timescale=None,
        distribution=DistributionOptions(shard_count=SHARDS),
    )
    with citus_db.engine.begin() as conn:
        assert ensure_distribution(declared, conn) is True
        conn.execute(
            text("SELECT truncate_local_data_after_distributing_table(CAST(:t AS regclass))"),
            {"t": f'"{citus_db.schema}".signals'},
        )
    assert _state(citus_db, declared) == (True, "symbol", SHARDS)
    assert citus_db.sql("SELECT count(*) FROM signals") == [(len(rows),)]
    # Declared by another column than the table's: left alone, with a warning.
    other = signals_table(
        MetaData(),
        schema=citus_db.schema,
        timescale=None,
        distribution=DistributionOptions(column="provider"),
    )
    with caplog.at_level(logging.WARNING, logger="sa_signals"), citus_db.engine.begin() as conn:
        assert ensure_distribution(other, conn) is True
    assert any("distributed by 'symbol', not 'provider'" in r.getMessage() for r in caplog.records)
    assert _state(citus_db, declared)[1] == "symbol"


# -- writes -------------------------------------------------------------------------------


def _write_twice(db: Database, table: Table, threshold: int) -> list[WriteResult]:
    """First write, a replay, a change of every other row, with duplicates in the call."""
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    rows = _dataset(now, points=4)
    changed = [
        SimpleNamespace(**{**vars(r), "value": r.value + 1.0}) if i % 2 else r
        for i, r in enumerate(rows)
    ]
    # The same key twice in one call: the last occurrence wins.
    duplicated = [SimpleNamespace(**{**vars(rows[0]), "value": -1.0}), *changed]
    results = []
    with _client(db, table, batch_threshold=threshold) as client:
        results.append(client.upsert(rows))
        results.append(client.upsert(rows))
        results.append(client.upsert(duplicated))
    return results


@pytest.mark.citus
@pytest.mark.postgres
@pytest.mark.parametrize(
    ("threshold", "method"), [(COPY_THRESHOLD, COPY), (10**6, UPSERT)], ids=["copy", "upsert"]
)
def test_both_write_paths_count_and_store_like_postgres(
    citus_db: Database, postgres_db: Database, threshold: int, method: str
) -> None:
    on_citus = _write_twice(citus_db, _distributed(citus_db), threshold)
    plain = postgres_db.make_table(timescale=None)
    postgres_db.metadata.create_all(postgres_db.engine)
    on_postgres = _write_twice(postgres_db, plain, threshold)

    def counts(result: WriteResult) -> tuple[int, int, int, int]:
        return (result.received, result.inserted, result.updated, result.unchanged)

    # The same counts; the methods may differ (plain PostgreSQL has the append fast path).
    assert [counts(r) for r in on_citus] == [counts(r) for r in on_postgres]
    n = len(PROVIDERS) * len(SYMBOLS) * len(NAMES) * 4
    first, replay, change = on_citus
    assert (first.received, first.inserted, first.updated, first.unchanged) == (n, n, 0, 0)
    assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, n)
    assert change.received == n + 1
    # Every other row changed; the first row's earlier occurrence (-1.0) lost to its last.
    assert (change.updated, change.unchanged) == (n // 2, n - n // 2)
    assert first.methods == (method,)
    assert _contents(citus_db, citus_db.metadata.tables[f"{citus_db.schema}.signals"]) == (
        _contents(postgres_db, plain)
    )


@pytest.mark.citus
def test_metrics_count_writes_through_the_coordinator(citus_db: Database) -> None:
    table = _distributed(citus_db)
    registry = CollectorRegistry()
    rows = _dataset(datetime.now(UTC), points=2)
    with SignalsStoreClient(
        citus_db.url, table=table, registry=registry, batch_threshold=COPY_THRESHOLD
    ) as client:
        client.upsert(rows)
        client.upsert(rows[:10])
    samples = {
        (m.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    written = {k: v for k, v in samples.items() if "signals" in k[0] and v}
    assert written, samples
    assert sum(v for k, v in written.items() if "inserted" in str(k)) == len(rows)


@pytest.mark.citus
async def test_async_client_writes_both_paths(citus_db: Database) -> None:
    rows = _dataset(datetime.now(UTC), points=3)
    # citus_db.table: the default signals table, distributed by symbol (Citus' shard count).
    async with async_client(citus_db, batch_threshold=COPY_THRESHOLD) as client:
        big = await client.upsert(rows)
        small = await client.upsert(rows[:20])
    assert (big.inserted, big.methods) == (len(rows), (COPY,))
    assert (small.unchanged, small.methods) == (20, (UPSERT,))
    assert citus_db.sql("SELECT count(*) FROM signals") == [(len(rows),)]
    assert _state(citus_db, citus_db.table)[:2] == (True, "symbol")


@pytest.mark.citus
def test_a_streamed_call_of_many_batches_is_one_merge_and_replays_unchanged(
    citus_db: Database,
) -> None:
    table = _distributed(citus_db)
    now = datetime(2026, 1, 5, tzinfo=UTC)

    def stream() -> Any:  # a generator: staged batch by batch, merged once
        for i in range(20_000):
            yield SimpleNamespace(
                provider=PROVIDERS[i % 2],
                symbol=SYMBOLS[i % len(SYMBOLS)],
                ts=now + timedelta(seconds=i // 48),
                name=NAMES[(i // 24) % 2],
                value=float(i),
            )

    merges: list[str] = []
    with _client(citus_db, table, batch_threshold=COPY_THRESHOLD) as client:

        @event.listens_for(client.engine, "before_cursor_execute")
        def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().startswith(("WITH", "INSERT")) and ".signals" in statement:
                merges.append(statement)

        first = client.upsert(stream(), batch_size=3_000)
        replay = client.upsert(stream(), batch_size=3_000)
    assert len(merges) == 2  # one statement into the table per call, whatever its batches
    assert (first.inserted, first.methods) == (20_000, (COPY,))
    assert (replay.received, replay.unchanged, replay.inserted, replay.updated) == (
        20_000,
        20_000,
        0,
        0,
    )
    assert citus_db.sql("SELECT count(*), count(DISTINCT symbol) FROM signals") == [
        (20_000, len(SYMBOLS))
    ]


@pytest.mark.citus
@pytest.mark.parametrize("threshold", [COPY_THRESHOLD, 10**6], ids=["copy", "upsert"])
def test_repository_failure_leaves_the_host_transaction_usable(
    citus_db: Database, threshold: int
) -> None:
    table = _distributed(citus_db)
    rows = _dataset(datetime(2026, 1, 5, tzinfo=UTC), points=3)
    bad = [*rows, SimpleNamespace(**{**vars(rows[0]), "value": float("nan")})]
    with Session(citus_db.engine) as session, session.begin():
        repository = SignalRepository(
            session, table, batch_threshold=threshold, metrics=CollectorRegistry()
        )
        assert repository.upsert(rows[:10]).inserted == 10
        with pytest.raises(InvalidSignalError):
            repository.upsert(bad)
        # The savepoint took the failed call back; the host's earlier work is still there.
        assert repository.upsert(rows).inserted == len(rows) - 10
    assert citus_db.sql("SELECT count(*) FROM signals") == [(len(rows),)]


@pytest.mark.citus
def test_storage_stats_sum_the_shards(citus_db: Database) -> None:
    table = _distributed(citus_db)
    rows = _dataset(datetime(2026, 1, 5, tzinfo=UTC), points=20)
    _fill(citus_db, table, rows)
    with SignalsQueryClient(citus_db.url, table=table, poolclass=NullPool) as client:
        stats = client.storage_stats()
        exact = client.storage_stats(exact_count=True)
    (shards_total,) = citus_db.sql(
        "SELECT sum(shard_size) FROM citus_shards WHERE table_name = CAST(:t AS regclass)",
        t=f'"{citus_db.schema}".signals',
    )[0]
    assert stats.total_bytes == int(str(shards_total)) > 0
    assert stats.table_bytes is not None and 0 < stats.table_bytes < stats.total_bytes
    assert stats.row_estimate is None and exact.row_estimate == len(rows)
    assert any(f"by 'symbol' over {SHARDS} shards" in note for note in stats.notes), stats.notes
    assert not any("plain PostgreSQL table" in note for note in stats.notes)


# -- concurrency ----------------------------------------------------------------------------

WRITERS = 8
CALLS = 8
KEYS = 2000


def _overlapping_call(writer: int, rng: random.Random) -> list[SimpleNamespace]:
    # 2,000 keys over 20 symbols (several shards, both workers), shuffled differently per call.
    base = datetime(2026, 1, 1, tzinfo=UTC)
    keys = [(f"SYM{i % 20:02d}", i // 20) for i in range(KEYS)]
    rng.shuffle(keys)
    return [
        SimpleNamespace(
            provider="p",
            symbol=s,
            ts=base + timedelta(seconds=k),
            name="n",
            value=float(writer),
            metadata={"writer": writer},
        )
        for s, k in keys
    ]


@pytest.mark.citus
@pytest.mark.parametrize("threshold", [COPY_THRESHOLD, 10**6], ids=["copy", "upsert"])
def test_eight_writers_with_overlapping_keys_all_succeed(
    citus_db: Database, threshold: int
) -> None:
    table = _distributed(citus_db)
    application = f"writers-{uuid.uuid4().hex[:8]}"
    client = SignalsStoreClient(
        citus_db.url,
        table=table,
        registry=CollectorRegistry(),
        batch_threshold=threshold,
        max_attempts=1,  # a deadlock would be a failed call, not a silent retry
        pool_size=WRITERS,
        connect_args={"application_name": application},
    )
    work = {
        w: [_overlapping_call(w, random.Random(w * 100 + c)) for c in range(CALLS)]
        for w in range(WRITERS)
    }
    failures: list[BaseException] = []
    barrier = threading.Barrier(WRITERS)

    def run(writer: int) -> None:
        barrier.wait()
        for signals in work[writer]:
            try:
                assert client.write_signals(signals, batch_size=1000) == KEYS
            except BaseException as exc:
                failures.append(exc)

    with client:
        threads = [threading.Thread(target=run, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    client.close()
    assert failures == []
    held = citus_db.sql(
        "SELECT count(*), count(DISTINCT symbol), min(value), max(value) FROM signals"
    )
    count, symbols, low, high = held[0]
    assert (count, symbols) == (KEYS, 20)
    assert 0 <= float(str(low)) <= float(str(high)) < WRITERS


@pytest.mark.citus
async def test_eight_gathered_async_writers_with_overlapping_keys_all_succeed(
    citus_db: Database,
) -> None:
    table = _distributed(citus_db)
    client = AsyncSignalsStoreClient(
        citus_db.async_url,
        table=table,
        registry=CollectorRegistry(),
        batch_threshold=COPY_THRESHOLD,
        max_attempts=1,
        pool_size=WRITERS,
    )
    work = {
        w: [_overlapping_call(w, random.Random(w * 100 + c)) for c in range(CALLS)]
        for w in range(WRITERS)
    }
    failures: list[BaseException] = []

    async def run(writer: int) -> None:
        for signals in work[writer]:
            try:
                assert await client.write_signals(signals, batch_size=1000) == KEYS
            except BaseException as exc:
                failures.append(exc)

    async with client:
        await asyncio.gather(*(run(w) for w in range(WRITERS)))
    await client.aclose()
    assert failures == []
    assert citus_db.sql("SELECT count(*) FROM signals") == [(KEYS,)]


# -- reads ----------------------------------------------------------------------------------


def _fill(db: Database, table: Table, rows: list[SimpleNamespace]) -> None:
    with _client(db, table, batch_threshold=COPY_THRESHOLD) as client:
        client.upsert(rows)


def _comparable(answer: Any) -> Any:
    """The answer without ``created_at`` (the time each server stored the row)."""
    if isinstance(answer, list):
        return [_comparable(item) for item in answer]
    if isinstance(answer, dict):
        return {k: v for k, v in answer.items() if k != "created_at"}
    return answer


def _same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-12 relative: Citus sums each shard's part, then the parts, so an
    average can differ from one server's in the last bit."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _answers(db: Database, table: Table, now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with SignalsQueryClient(db.url, table=table, poolclass=NullPool) as client:
        for s in ("SYM00", "SYM13"):
            out[f"latest {s}"] = client.get_latest_signals("polygon", s, 50)
            out[f"latest names {s}"] = client.get_latest_signals("polygon", s, 5, ["rsi_14"])
            out[f"history {s}"] = client.get_signals_history(
                "ibkr_primary", s, now - timedelta(hours=2), now
            )
            out[f"metrics {s}"] = client.get_signal_metrics("ibkr_primary", s, "rsi_14", 24)
            out[f"buckets {s}"] = client.get_signal_buckets(
                "polygon", s, "vwap_cross_up", timedelta(minutes=15), end_ts=now, hours_back=2
            )
        out["active"] = client.get_active_signals("polygon", 5)
        out["summary"] = client.get_signal_summary("ibkr_primary", 24)
    return out


@pytest.mark.citus
@pytest.mark.postgres
def test_every_spec_query_answers_like_postgres(citus_db: Database, postgres_db: Database) -> None:
    now = datetime.now(UTC)
    rows = _dataset(now)
    distributed = _distributed(citus_db)
    _fill(citus_db, distributed, rows)
    plain = postgres_db.make_table(timescale=None)
    postgres_db.metadata.create_all(postgres_db.engine)
    _fill(postgres_db, plain, rows)
    on_citus, on_postgres = _answers(citus_db, distributed, now), _answers(postgres_db, plain, now)
    assert on_citus.keys() == on_postgres.keys()
    for key in on_citus:
        assert _same(_comparable(on_citus[key]), _comparable(on_postgres[key])), (
            key,
            on_citus[key],
            on_postgres[key],
        )
    # Not vacuous: every answer holds rows from several shards' worth of data.
    assert len(on_citus["active"]) == len(SYMBOLS) * len(NAMES)
    assert on_citus["summary"]["total_signals"] == len(SYMBOLS) * len(NAMES) * 10
    assert len(on_citus["latest SYM13"]) == 20


def _tasks(conn: Connection, plan: QueryPlan[Any]) -> tuple[int, str]:
    assert plan.statement is not None
    compiled = plan.statement.params(**plan.parameters).compile(dialect=conn.dialect)
    expanded = compiled.construct_expanded_state()
    lines = [
        str(row[0])
        for row in conn.exec_driver_sql("EXPLAIN " + expanded.statement, expanded.parameters)
    ]
    counts = [int(line.split("Task Count:")[1]) for line in lines if "Task Count:" in line]
    assert counts, "\n".join(lines)
    return sum(counts), "\n".join(lines)


@pytest.mark.citus
def test_per_symbol_queries_touch_one_shard_and_provider_queries_fan_out(
    citus_db: Database,
) -> None:
    now = datetime.now(UTC)
    table = _distributed(citus_db)
    _fill(citus_db, table, _dataset(now, points=2))
    with citus_db.engine.connect() as conn:
        d = conn.dialect
        one_shard = {
            "latest": plan_latest(table, d, "polygon", "sym05", 100),
            "latest_names": plan_latest(table, d, "polygon", "SYM05", 100, ["rsi_14"]),
            "history": plan_history(table, d, "polygon", "SYM05", now - timedelta(hours=1), now),
            "metrics": plan_metrics(table, d, "polygon", "SYM05", "rsi_14", 24),
            "buckets": plan_buckets(
                table, bucket_function_for(d, False), "polygon", "SYM05", "rsi_14"
            ),
        }
        for name, plan in one_shard.items():
            tasks, text_ = _tasks(conn, plan)
            assert tasks == 1, (name, text_)
            assert "Router" in text_ or "Task Count: 1" in text_, (name, text_)
        for plan in (plan_active(table, d, "polygon", 5), plan_summary(table, d, "polygon", 24)):
            tasks, text_ = _tasks(conn, plan)
            assert tasks == SHARDS, text_
