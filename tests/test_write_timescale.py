"""Writing into TimescaleDB hypertables: compressed chunks, the COPY path, concurrent writers, and
writes while a compression job compresses the chunk being written.

PGlite (the default TimescaleDB tier) has no ``COPY FROM STDIN`` and serves one connection, so
the clients there keep to the small-batch path (see ``client_kwargs``). The tests that need COPY,
several connections or scale ask for ``native_timescale_db`` and are skipped on PGlite with the
reason; ``.ci/run`` runs them against a native server.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from psycopg.types.json import Jsonb
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

from sa_signals import SignalsStoreClient, WriteResult

from .conftest import Database
from .test_write_helpers import (
    BASE,
    NO_COPY,
    async_client,
    client_kwargs,
    expected,
    signal,
    stored,
    sync_client,
)


def _compressed_chunks(db: Database) -> tuple[int, int]:
    """(compressed chunks, all chunks) of the default table."""
    rows = db.sql(
        "SELECT count(*) FILTER (WHERE is_compressed), count(*) "
        "FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = :schema AND hypertable_name = 'signals'",
        schema=db.schema,
    )
    return int(rows[0][0]), int(rows[0][1])  # type: ignore[call-overload]


def _counts(result: WriteResult | None) -> tuple[int, int, int, int]:
    assert result is not None
    return (result.received, result.inserted, result.updated, result.unchanged)


def test_upsert_into_a_compressed_chunk_inserts_and_updates(timescale_db: Database) -> None:
    db = timescale_db
    db.pause_jobs()
    items = [signal(i, ts=BASE + timedelta(hours=i)) for i in range(20)]  # one 7-day chunk
    with sync_client(db) as client:
        client.write_signals(items)
    db.compress_chunks()
    assert _compressed_chunks(db) == (1, 1)
    changed = [signal(i, ts=BASE + timedelta(hours=i), value=9.0) for i in range(5)]
    added = [signal(i, ts=BASE + timedelta(hours=i, minutes=30)) for i in range(5)]
    with sync_client(db) as client:
        assert client.write_signals(changed + added + items[10:]) == 20
        result = client.last_result
    assert result is not None
    assert (result.inserted, result.updated, result.unchanged) == (5, 5, 10)
    assert stored(db) == expected(items + changed + added)


# -- a 200,000-signal replay into compressed chunks (native server) --------------------------

REPLAY = 200_000
#: Every 100th signal of the replay carries a new value, and as many keys are new.
EVERY = 100


def _series_signal(i: int, series: int, **changes: Any) -> SimpleNamespace:
    """Signal ``i`` of ``series`` interleaved series (4 providers), one second apart per
    series: 200,000 signals in 20 series span 10,000 s, all in one 7-day chunk."""
    number = i % series
    changes.setdefault("ts", BASE + timedelta(seconds=i // series))
    return signal(i, provider=f"provider_{number % 4}", symbol=f"SYM{number // 4:02d}", **changes)


def _replay(n: int, series: int) -> tuple[list[SimpleNamespace], list[SimpleNamespace]]:
    """(first write, replay): the replay repeats every key, changes every ``EVERY``-th value
    and adds one new key (half a second later) per ``EVERY`` signals."""
    first = [_series_signal(i, series) for i in range(n)]
    replay: list[SimpleNamespace] = []
    for i, item in enumerate(first):
        if i % EVERY == 0:
            replay.append(_series_signal(i, series, value=2.0))
            replay.append(_series_signal(i, series, ts=item.ts + timedelta(milliseconds=500)))
        else:
            replay.append(item)
    return first, replay


def _load(db: Database, items: list[SimpleNamespace]) -> None:
    """Plain binary COPY straight into the hypertable: test setup, not the path under test."""
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with (
            conn.cursor() as cur,
            cur.copy(
                f'COPY "{db.schema}"."{db.table.name}" '
                "(provider, symbol, ts, name, value, score, metadata) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["text", "text", "timestamptz", "text", "float8", "float8", "jsonb"])
            for s in items:
                metadata = None if s.metadata is None else Jsonb(s.metadata)
                copy.write_row((s.provider, s.symbol, s.ts, s.name, s.value, s.score, metadata))
        conn.commit()
    finally:
        raw.close()


def _client_options(path: str) -> dict[str, Any]:
    # The COPY path is the clients' default for batches of batch_threshold (1,000) or more.
    return {} if path == "copy" else {"batch_threshold": NO_COPY}


def _replay_into_compressed_chunk(db: Database, path: str, mode: str, series: int) -> None:
    (limit,) = db.sql("SHOW timescaledb.max_tuples_decompressed_per_dml_transaction")[0]
    # The replay touches more compressed rows than the server lets one DML statement
    # decompress by default (100,000): a write path that ignores the cap fails here.
    assert 0 < int(str(limit)) < REPLAY
    db.pause_jobs()  # compressed by this test, not by the policy halfway through
    first, replay = _replay(REPLAY, series)
    _load(db, first)
    db.compress_chunks()
    assert _compressed_chunks(db) == (1, 1)

    if mode == "sync":
        with sync_client(db, **_client_options(path)) as client:
            assert client.write_signals(replay) == len(replay)
            result = client.last_result
    else:

        async def write() -> WriteResult | None:
            client = async_client(db, **_client_options(path))
            try:
                async with client:
                    assert await client.write_signals(replay) == len(replay)
                    return client.last_result
            finally:
                await client.aclose()

        result = asyncio.run(write())

    new = REPLAY // EVERY
    assert _counts(result) == (REPLAY + new, new, new, REPLAY - new)
    assert result is not None and result.method == ("COPY" if path == "copy" else "UPSERT")
    assert stored(db) == expected(first + replay)


@pytest.mark.slow  # several seconds each (more on a loaded machine); PGlite skips them
@pytest.mark.parametrize("path", ["copy", "small_batch"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_replay_of_200k_signals_into_compressed_chunks(
    native_timescale_db: Database, path: str, mode: str
) -> None:
    # 20 series: each 1,000-signal batch touches about 20 compressed batches of 1,000 rows.
    _replay_into_compressed_chunk(native_timescale_db, path, mode, series=20)


@pytest.mark.slow
@pytest.mark.parametrize("path", ["copy", "small_batch"])
def test_replay_into_a_compressed_chunk_of_many_series(
    native_timescale_db: Database, path: str
) -> None:
    # 200 series of 1,000 rows each: one compressed batch per series, so a single 1,000-signal
    # batch of the replay already touches 200,000 compressed rows.
    _replay_into_compressed_chunk(native_timescale_db, path, "sync", series=200)


# -- writes while a compression job runs, and concurrent writers (native server) -------------

WRITERS = 4
CALLS = 5
PER_CALL = 2_000  # half updates of existing keys, half new keys


def _writer_signals(writer: int, call: int) -> list[SimpleNamespace]:
    """Writer ``writer``'s call ``call``: its own keys only (disjoint across writers)."""
    out = []
    for k in range(PER_CALL // 2):
        i = (writer * CALLS + call) * (PER_CALL // 2) + k
        out.append(signal(i, value=float(100 + writer)))  # an update of a loaded key
        out.append(signal(i, ts=BASE + timedelta(seconds=i, milliseconds=250)))  # a new key
    return out


def _store_client(
    db: Database, path: str, *, fast_deadlocks: bool = True, max_attempts: int = 3
) -> SignalsStoreClient:
    return SignalsStoreClient(
        db.url,
        registry=CollectorRegistry(),
        table=db.table,
        max_attempts=max_attempts,
        # Deadlocks are detected after 100 ms instead of 1 s (the test servers run as a
        # superuser, who may set it).
        connect_args={"options": "-c deadlock_timeout=100"} if fast_deadlocks else {},
        **_client_options(path),
    )


def test_writes_while_the_compression_policy_compresses_the_chunk_being_written(
    native_timescale_db: Database,
) -> None:
    db = native_timescale_db
    (job,) = db.pause_jobs()
    loaded = WRITERS * CALLS * PER_CALL // 2
    with sync_client(db) as client:
        client.write_signals([signal(i) for i in range(loaded)], batch_size=10_000)
    assert _compressed_chunks(db) == (0, 1)

    done = threading.Event()
    runs: list[int] = []
    job_errors: list[BaseException] = []

    def compressor() -> None:
        # The policy job itself, in its own connection, again and again while the writers
        # write: each run compresses (or recompresses) the chunk they are writing into.
        engine = create_engine(db.url, poolclass=NullPool)
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                while not done.is_set() or not runs:
                    try:
                        conn.execute(text("CALL run_job(:job)"), {"job": job})
                        runs.append(1)
                    except Exception as exc:  # the job's failure, not a write's
                        job_errors.append(exc)
                        if len(job_errors) > 20:
                            raise
        finally:
            engine.dispose()

    results: dict[tuple[int, int], WriteResult | None] = {}
    write_errors: list[BaseException] = []

    def writer(number: int) -> None:
        # The server's own deadlock_timeout, as in production: compress_chunk and a write into
        # the chunk can deadlock (TimescaleDB takes the chunk's locks in its own order); the
        # one whose deadlock_timeout runs out first is aborted: a job is run again by its
        # scheduler, a writer retries (max_attempts). With 100 ms on the writers only, the
        # writers are always the victims. The job here runs back to back, not every 12 hours:
        # a writer lost three deadlocks in a row in 1 of 7 runs, and five in a row once in
        # about 12 clean-clone CI runs (backoff 20 ms doubling), hence 8 attempts.
        client = _store_client(
            db, "copy" if number % 2 else "small_batch", fast_deadlocks=False, max_attempts=8
        )
        try:
            with client:
                for call in range(CALLS):
                    client.write_signals(_writer_signals(number, call))
                    results[(number, call)] = client.last_result
        except BaseException as exc:
            write_errors.append(exc)
        finally:
            client.close()

    compressing = threading.Thread(target=compressor)
    compressing.start()
    # The writers start once the job is running in the other connection.
    db.wait_until(
        lambda: (
            bool(
                db.sql(
                    "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                    "AND query LIKE 'CALL run_job%'"
                )
            )
            or bool(runs)
        ),
        "the compression job did not start",
    )
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    compressing.join()

    assert write_errors == []
    assert runs, f"the compression job never completed: {job_errors[:3]}"
    half = PER_CALL // 2
    assert {key: _counts(r) for key, r in results.items()} == {
        (n, c): (PER_CALL, half, half, 0) for n in range(WRITERS) for c in range(CALLS)
    }
    everything = [signal(i) for i in range(loaded)]
    for n in range(WRITERS):
        for c in range(CALLS):
            everything += _writer_signals(n, c)
    assert stored(db) == expected(everything)
    db.pause_jobs()


def _overlap_ts(i: int) -> Any:
    # Even keys in the first (compressed) chunk, odd keys in the next one.
    return BASE + timedelta(days=7 * (i % 2), seconds=i)


def test_concurrent_writers_with_overlapping_keys_on_both_paths(
    native_timescale_db: Database,
) -> None:
    db = native_timescale_db
    db.pause_jobs()
    keys = 3_000
    with sync_client(db) as client:
        client.write_signals([signal(i, ts=_overlap_ts(i)) for i in range(0, keys, 2)])
    db.compress_chunks()
    every = list(range(keys))
    orders = [every, every[::-1], every[1::2] + every[::2], sorted(every, key=lambda i: i % 7)]
    barrier = threading.Barrier(len(orders))
    errors: list[BaseException] = []
    results: list[WriteResult | None] = []

    def writer(number: int, order: list[int]) -> None:
        # Writers alternate between the COPY path and the small-batch path.
        client = _store_client(db, "copy" if number % 2 else "small_batch")
        items = [signal(i, ts=_overlap_ts(i), value=float(number)) for i in order]
        try:
            with client:
                barrier.wait()
                for _ in range(3):
                    # One batch per call: a call spanning several batches locks them in
                    # per-batch key order and can deadlock with another (PITFALLS).
                    client.write_signals(items, batch_size=keys)
                    results.append(client.last_result)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=item) for item in enumerate(orders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(results) == 3 * len(orders)
    for result in results:
        received, inserted, updated, unchanged = _counts(result)
        assert received == keys == inserted + updated + unchanged
    # Each new (odd) key was inserted by exactly one call; every key holds one writer's value.
    assert sum(_counts(result)[1] for result in results) == keys // 2
    held = stored(db)
    assert set(held) == {("ibkr_primary", "SPY", _overlap_ts(i), "vwap_cross_up") for i in every}
    assert {value for value, _, _ in held.values()} <= {0.0, 1.0, 2.0, 3.0}


@pytest.mark.parametrize("path", ["copy", "upsert"])
def test_max_tuples_decompressed_caps_the_call_or_leaves_the_servers_setting(
    native_timescale_db: Database, path: str
) -> None:
    """docs/performance.md: ``max_tuples_decompressed`` set to a number caps the call (it fails
    whole, nothing kept); ``None`` leaves the server's cap; a repository puts the previous
    value back after its call, inside the host's transaction."""
    from sqlalchemy.orm import Session

    from sa_signals import SignalRepository, WriteError

    db = native_timescale_db
    db.pause_jobs()
    first, replay = _replay(20_000, series=4)  # replay: 200 changed, 200 new keys
    _load(db, first)
    db.compress_chunks()
    assert _compressed_chunks(db) == (1, 1)
    before = stored(db)
    options = _client_options(path)

    with sync_client(db, max_tuples_decompressed=1_000, **options) as client:
        with pytest.raises(WriteError, match="decompression limit") as raised:
            client.write_signals(replay)
    assert "current limit: 1000" in str(raised.value)
    assert stored(db) == before  # nothing of the call kept

    # The server's setting, as a host configures it (here per connection): None leaves it.
    capped = create_engine(db.url, poolclass=NullPool)

    @event.listens_for(capped, "connect")
    def _server_cap(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET timescaledb.max_tuples_decompressed_per_dml_transaction = 500")
        dbapi_connection.commit()

    try:
        client = SignalsStoreClient(
            capped, **client_kwargs(db, max_tuples_decompressed=None, **options)
        )
        with client, pytest.raises(WriteError, match="current limit: 500"):
            client.write_signals(replay)
    finally:
        capped.dispose()
    assert stored(db) == before

    with Session(db.engine) as session:
        session.execute(
            text("SET LOCAL timescaledb.max_tuples_decompressed_per_dml_transaction = 12345")
        )
        result = SignalRepository(session, db.table).upsert(replay)  # default: no cap
        assert (result.updated, result.inserted) == (200, 200)
        setting = session.execute(
            text("SHOW timescaledb.max_tuples_decompressed_per_dml_transaction")
        ).scalar()
        assert setting == "12345"  # put back for the rest of the host's transaction
        session.commit()
    assert stored(db) == expected(replay)


def _merges(engine: Any) -> list[str]:
    """The statements into the signals table a client runs: 'insert' (the plain INSERT of a
    call into an empty time range) or 'merge' (INSERT ... ON CONFLICT)."""
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "WITH merged AS (INSERT INTO" in statement:
            seen.append("merge" if "ON CONFLICT" in statement else "insert")

    return seen


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_staged_first_write_takes_the_plain_insert_only_where_no_chunk_exists(
    native_timescale_db: Database, mode: str
) -> None:
    """A staged call into a time range no chunk covers yet takes the plain INSERT (no chunk
    to meet a compression job on); one into an existing chunk, even with new keys only, merges.
    Counts are exact either way."""
    db = native_timescale_db
    db.pause_jobs()
    first = [signal(i) for i in range(3000)]
    later = [signal(i, ts=BASE + timedelta(hours=2, seconds=i)) for i in range(3000)]  # same chunk
    results: list[WriteResult | None] = []
    if mode == "sync":
        client = sync_client(db, batch_threshold=100, append_fast_path=False)
        seen = _merges(client.engine)
        with client:
            for items in (first, later):
                client.write_signals(items)
                results.append(client.last_result)
    else:
        aclient = async_client(db, batch_threshold=100, append_fast_path=False)
        seen = _merges(aclient.engine.sync_engine)

        async def run() -> None:
            async with aclient:
                for items in (first, later):
                    await aclient.write_signals(items)
                    results.append(aclient.last_result)

        asyncio.run(run())
    assert seen == ["insert", "merge"]
    assert [_counts(result) for result in results] == [(3000, 3000, 0, 0)] * 2
    assert stored(db) == expected(first + later)
