"""The PostgreSQL write path: COPY batching, replay statistics, failures and concurrency."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from sa_signals import AsyncSignalsStoreClient, SignalRepository, SignalsStoreClient, WriteError

from .conftest import Database
from .test_write_helpers import (
    BASE,
    async_client,
    expected,
    signal,
    signals,
    stored,
    sync_client,
)


def _xact_stats(connection: Connection, db: Database) -> tuple[int, int]:
    """(n_tup_ins, n_tup_upd) of the signals table not yet flushed to pg_stat_user_tables.

    The backend flushes these only between transactions, so a difference of two readings in
    one transaction is exact (the view may also hold earlier, unflushed transactions).
    """
    row = connection.execute(
        text(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relid = to_regclass(:name)"
        ),
        {"name": f'"{db.schema}".signals'},
    ).one()
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("threshold", [10, 10**9], ids=["copy", "executemany"])
def test_replay_updates_no_row_per_pg_stat(postgres_db: Database, threshold: int) -> None:
    db = postgres_db
    items = signals(50)
    with Session(db.engine) as session:
        SignalRepository(session, db.table, batch_threshold=threshold).upsert(items)
        session.commit()
    with Session(db.engine) as session:
        repo = SignalRepository(session, db.table, batch_threshold=threshold)
        ins, upd = _xact_stats(session.connection(), db)
        result = repo.upsert(items)
        assert _xact_stats(session.connection(), db) == (ins, upd)
        assert (result.inserted, result.updated, result.unchanged) == (0, 0, 50)
        # The same measurement does see real updates (and inserts).
        changed = repo.upsert([signal(1, value=7.0), signal(2, value=7.0), signal(99)] * 4)
        assert _xact_stats(session.connection(), db) == (ins + 1, upd + 2)
        assert (changed.inserted, changed.updated, changed.unchanged) == (1, 2, 0)
        assert repo.last_method == ("COPY" if threshold == 10 else "UPSERT")
        session.commit()


@pytest.mark.parametrize(
    ("size", "methods"),
    # New keys at or above the threshold take the append fast path (COPY into the table).
    [(49, ("UPSERT",)), (50, ("COPY", "APPEND")), (51, ("COPY", "APPEND"))],
    ids=["threshold-1", "threshold", "threshold+1"],
)
def test_batch_sizes_around_the_threshold(
    postgres_db: Database, size: int, methods: tuple[str, ...]
) -> None:
    items = signals(size)
    with sync_client(postgres_db, batch_threshold=50) as client:
        assert client.write_signals(items) == size
        assert client.last_result is not None
        assert client.last_result.methods == methods
        assert client.last_result.inserted == size
        assert client.write_signals(items) == size  # replay, same path
        assert client.last_result.unchanged == size
    assert stored(postgres_db) == expected(items)


def test_many_copy_batches_in_one_call_then_a_new_transaction(postgres_db: Database) -> None:
    first = signals(1000)
    # Key 5 again in the last batch: the later batch wins across batches too.
    first[950] = signal(5, value=42.0)
    with sync_client(postgres_db, batch_threshold=100) as client:
        assert client.write_signals(first, batch_size=100) == 1000  # 10 COPY batches
        assert client.last_result is not None
        assert client.last_result.methods == ("COPY",)
        assert client.last_result.inserted == 999
        second = signals(250, start=900, value=2.0)
        assert client.write_signals(second, batch_size=100) == 250  # 3 batches, one merge
        assert client.last_result.methods == ("COPY",)
        assert (client.last_result.inserted, client.last_result.updated) == (
            151,
            99,
        )  # 1000-1149 and the missing 950
    assert stored(postgres_db) == expected(first + second)


def test_two_copy_calls_in_one_transaction_share_the_staging_table(postgres_db: Database) -> None:
    db = postgres_db
    with db.engine.connect() as conn:
        session = Session(bind=conn)
        repo = SignalRepository(session, db.table, batch_threshold=2)
        repo.upsert(signals(10), batch_size=3)
        repo.upsert(signals(10, start=5, value=3.0), batch_size=4)
        # The staging table is a bare temporary table: no primary key, no index, no constraint.
        stage = "to_regclass('pg_temp.sa_signals_stage')"
        assert (
            conn.execute(text(f"SELECT count(*) FROM pg_index WHERE indrelid = {stage}")).scalar()
            == 0
        )
        assert (
            conn.execute(
                text(f"SELECT count(*) FROM pg_constraint WHERE conrelid = {stage}")
            ).scalar()
            == 0
        )
        session.commit()
        # ON COMMIT DROP: gone with the transaction.
        assert conn.execute(text(f"SELECT {stage}")).scalar() is None
        session.close()
    assert stored(db) == expected(signals(10) + signals(10, start=5, value=3.0))


def test_duplicates_inside_one_copy_batch(postgres_db: Database) -> None:
    items = [signal(i % 7, value=float(i)) for i in range(70)]
    with sync_client(postgres_db, batch_threshold=10) as client:
        assert client.write_signals(items) == 70
        assert client.last_result is not None
        assert client.last_result.methods == ("COPY",)
        assert (client.last_result.inserted, client.last_result.duplicates) == (7, 63)
    assert stored(postgres_db) == expected(items)
    assert {v[0] for v in stored(postgres_db).values()} == set(map(float, range(63, 70)))


def _sample(registry: CollectorRegistry, method: str, status: str) -> float:
    value = registry.get_sample_value(
        "store_signals_written_total", {"method": method, "status": status}
    )
    return value or 0.0


def test_backend_killed_mid_write(postgres_db: Database) -> None:
    db = postgres_db
    app = f"victim-{uuid.uuid4().hex[:8]}"
    registry = CollectorRegistry()
    with sync_client(db, batch_threshold=100, registry=registry) as client:
        client.write_signals(signals(10, start=10_000))
        before = stored(db)

        def stream() -> Iterator[Any]:
            for i in range(3000):
                if i == 1500:  # the first 1000 were COPYed and merged in this transaction
                    killed = db.sql(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                        "FROM pg_stat_activity WHERE application_name = :app",
                        app=app,
                    )
                    assert killed == [(1,)]
                yield signal(i)

        # Each with-block keeps the client's pool: name the connections so we can find them.
        client.close()
        client = sync_client(
            db, batch_threshold=100, registry=registry, connect_args={"application_name": app}
        )
        with client:
            with pytest.raises(WriteError) as info:
                client.write_signals(stream())
            assert info.value.connection_lost
            # A generator has no length: the failure counts the signals it was read for.
            assert 1500 < _sample(registry, "COPY", "failure") <= 3000
            assert stored(db) == before  # nothing partial
            assert client.write_signals(signals(1500)) == 1500  # a fresh connection
        client.close()
    assert stored(db) == {**before, **expected(signals(1500))}
    assert _sample(registry, "COPY", "success") == 1500 + 0
    assert _sample(registry, "UPSERT", "success") == 10


PROVIDERS = ("alpha", "Beta", "émile", "Zulu")  # sorts differently in C and in en_US collations


def _keys(n: int) -> list[tuple[str, int]]:
    return [(p, i) for p in PROVIDERS for i in range(n)]


def _write_concurrently(
    db: Database, orders: list[list[tuple[str, int]]], batch_size: int, max_attempts: int
) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(orders))

    def writer(number: int, order: list[tuple[str, int]]) -> None:
        # Writers alternate between the COPY path and the executemany path.
        threshold = 50 if number % 2 else 10**9
        client = SignalsStoreClient(
            db.url,
            threshold,
            table=db.table,
            registry=CollectorRegistry(),
            max_attempts=max_attempts,
            # Detect deadlocks after 100 ms instead of 1 s (superuser-only setting; the test
            # servers run as a superuser).
            connect_args={"options": "-c deadlock_timeout=100"},
        )
        items = [signal(i, provider=p, value=float(number)) for p, i in order]
        try:
            with client:
                barrier.wait()
                for _ in range(3):
                    client.write_signals(items, batch_size=batch_size)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=item) for item in enumerate(orders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def _orders(n: int) -> list[list[tuple[str, int]]]:
    keys = _keys(n)
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    return [keys, keys[::-1], shuffled, sorted(keys, key=lambda k: (k[1], k[0]))]


def test_concurrent_writers_in_different_orders_do_not_deadlock(postgres_db: Database) -> None:
    # One batch per call: every statement locks rows in primary-key order, so no retry is
    # needed (max_attempts=1 would surface a deadlock as WriteError).
    assert _write_concurrently(postgres_db, _orders(150), batch_size=10_000, max_attempts=1) == []
    held = stored(postgres_db)
    assert len(held) == 600
    assert {value for value, _, _ in held.values()} <= {0.0, 1.0, 2.0, 3.0}


def test_concurrent_multi_batch_calls_are_retried(postgres_db: Database) -> None:
    # Several batches per transaction in opposite orders can deadlock across batches; the
    # client's bounded retry (40P01) resolves it, and every call ends up fully applied.
    assert _write_concurrently(postgres_db, _orders(150), batch_size=100, max_attempts=10) == []
    assert len(stored(postgres_db)) == 600


class _Counted:
    """A signal that counts how many of its kind are alive at once."""

    live = 0
    peak = 0
    __slots__ = ("metadata", "name", "provider", "score", "symbol", "ts", "value")

    def __init__(self, i: int) -> None:
        _Counted.live += 1
        _Counted.peak = max(_Counted.peak, _Counted.live)
        self.provider = "p"
        self.symbol = "SPY"
        self.ts = BASE + timedelta(milliseconds=i)
        self.name = "n"
        self.value = float(i)
        self.score = None
        self.metadata = {"i": i}

    def __del__(self) -> None:
        _Counted.live -= 1


def test_generator_of_200k_signals_streams_in_bounded_memory(postgres_db: Database) -> None:
    _Counted.live = _Counted.peak = 0
    with sync_client(postgres_db) as client:
        written = client.write_signals((_Counted(i) for i in range(200_000)), batch_size=2000)
    assert written == 200_000
    assert _Counted.peak <= 2001  # one batch (plus the signal being read) at a time
    assert postgres_db.sql(f'SELECT count(*), max(value) FROM "{postgres_db.schema}".signals') == [
        (200_000, 199_999.0)
    ]


def _plant_stage(db: Database) -> None:
    """A table named like the staging table, first on the search path, holding one row."""
    db.sql(
        f'CREATE TABLE "{db.schema}".sa_signals_stage (ord bigint, provider text, symbol text, '
        "ts timestamptz, name text, value float8, score float8, metadata text)"
    )
    db.sql(
        f'INSERT INTO "{db.schema}".sa_signals_stage VALUES '
        "(0, 'planted', 'EVIL', now(), 'n', 666, NULL, NULL)"
    )


@pytest.mark.parametrize("path", ["copy", "staged"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg", "psycopg-async", "psycopg2"])
async def test_a_staging_table_on_the_search_path_is_never_used(
    postgres_db: Database, driver: str, path: str
) -> None:
    db = postgres_db
    _plant_stage(db)
    # The planted schema first, pg_temp after it: unqualified names resolve to the plant.
    search_path = {"options": f"-csearch_path={db.schema},pg_temp"}
    options: dict[str, Any] = {"table": db.table, "registry": CollectorRegistry()}
    batch_size = 1000
    if path == "staged":  # below the COPY threshold but more than one batch: unnest inserts
        options["batch_threshold"] = 10**9
        batch_size = 500
    items = signals(1500)
    if driver in ("psycopg", "psycopg2"):
        url = db.url.set(drivername=f"postgresql+{driver}")
        with SignalsStoreClient(url, connect_args=search_path, **options) as client:
            client.write_signals(items, batch_size=batch_size)
            result = client.last_result
            client.write_signals(items, batch_size=batch_size)
            replay = client.last_result
    else:
        url = db.async_url if driver == "asyncpg" else db.url
        settings = (
            {"server_settings": {"search_path": f"{db.schema},pg_temp"}}
            if driver == "asyncpg"
            else search_path
        )
        async with AsyncSignalsStoreClient(url, connect_args=settings, **options) as aclient:
            await aclient.write_signals(items, batch_size=batch_size)
            result = aclient.last_result
            await aclient.write_signals(items, batch_size=batch_size)
            replay = aclient.last_result
    assert result is not None and replay is not None
    assert (result.inserted, result.updated, result.unchanged) == (1500, 0, 0)
    assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, 1500)
    assert stored(db) == expected(items)
    assert db.sql(f'SELECT provider, value FROM "{db.schema}".sa_signals_stage') == [
        ("planted", 666.0)
    ]


@pytest.mark.parametrize(
    "shape",
    ["ordered", "unique-in-time-order", "duplicates-in-time-order", "shuffled-duplicates"],
)
@pytest.mark.parametrize("threshold", [10, 10**9], ids=["copy", "staged"])
def test_one_merge_per_call_whatever_the_shape_of_the_input(
    postgres_db: Database, shape: str, threshold: int
) -> None:
    names = ("a", "b", "c")
    keys = [(second, name) for second in range(40) for name in names]  # write order
    if shape == "unique-in-time-order":
        keys = [(second, name) for second in range(40) for name in reversed(names)]
    elif shape == "duplicates-in-time-order":
        keys = [(second, name) for second in range(40) for name in (*names, "a")]
    elif shape == "shuffled-duplicates":
        keys = keys + keys[:30]
        random.Random(5).shuffle(keys)
    items = [
        signal(0, ts=BASE + timedelta(seconds=second), name=name, value=float(i))
        for i, (second, name) in enumerate(keys)
    ]
    distinct = len(set(keys))
    with sync_client(postgres_db, batch_threshold=threshold) as client:
        client.write_signals(items, batch_size=50)
        first = client.last_result
        assert first is not None
        assert (first.received, first.inserted) == (len(items), distinct)
        assert first.duplicates == len(items) - distinct
        client.write_signals(items, batch_size=50)
        replay = client.last_result
        assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, distinct)
        client.write_signals([signal(0, ts=BASE, name="a", value=-1.0)])
        changed = client.last_result
        assert (changed.updated, changed.unchanged) == (1, 0)
    assert stored(postgres_db) == expected([*items, signal(0, ts=BASE, name="a", value=-1.0)])


def test_driver_without_copy_stages_with_unnest(postgres_db: Database) -> None:
    db = postgres_db
    url = db.url.set(drivername="postgresql+psycopg2")
    items = [*signals(2500), signal(7, value=9.0)]
    with SignalsStoreClient(url, table=db.table, registry=CollectorRegistry()) as client:
        result = client.upsert(items, batch_size=1000)  # 3 batches staged, one merge
        assert result.methods == ("UPSERT",)
        assert (result.inserted, result.duplicates) == (2500, 1)
        small = client.upsert(signals(3, value=5.0))  # one batch: the direct upsert
        assert (small.updated, small.unchanged) == (3, 0)
    assert stored(db) == expected([*items, *signals(3, value=5.0)])


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_first_write_meets_a_concurrent_insert_of_one_key_and_merges(
    postgres_db: Database, flavour: str
) -> None:
    """(The append fast path off, so the call stages.) The plain INSERT of a call whose time
    range was empty waits for a concurrent writer's uncommitted key; when that one commits,
    the call rolls back to its savepoint and merges: no failed call, exact counts, the later
    value wins."""
    db = postgres_db
    items = signals(300)
    outcome: dict[str, Any] = {}

    def write() -> None:
        try:
            if flavour == "sync":
                with sync_client(
                    db, batch_threshold=50, max_attempts=1, append_fast_path=False
                ) as client:
                    client.write_signals(items)
                    outcome["result"] = client.last_result
            else:

                async def run() -> Any:
                    async with async_client(
                        db, batch_threshold=50, max_attempts=1, append_fast_path=False
                    ) as client:
                        await client.write_signals(items)
                        return client.last_result

                outcome["result"] = asyncio.run(run())
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    with Session(db.engine) as session:
        SignalRepository(session, db.table).upsert([signal(7, value=5.0)])  # not committed
        writer = threading.Thread(target=write)
        writer.start()
        with db.engine.connect() as watch:
            for _ in range(600):  # the call waits on the uncommitted key
                waiting = watch.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE :target AND pid <> pg_backend_pid()"
                    ),
                    {"target": f"%INSERT INTO %{db.schema}%signals AS target%"},
                ).scalar()
                watch.rollback()
                if waiting or not writer.is_alive():
                    break
                time.sleep(0.05)
            assert waiting, outcome
        session.commit()
    writer.join(60)
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert (result.inserted, result.updated, result.unchanged) == (299, 1, 0)
    assert stored(db) == expected(items)
