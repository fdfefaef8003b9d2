"""DataFrames in, and the append fast path (docs/columnar.md), on every database tier.

A frame (pyarrow Table / RecordBatch, polars, pandas) must store exactly what the same signals
as objects store, with the same counts; bad input raises InvalidSignalError naming the first
bad row and the field, and nothing is written. The append fast path COPYs new keys straight
into the table and falls back to the merge when a concurrent writer takes a key first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pl = pytest.importorskip("polars")
pd = pytest.importorskip("pandas")

from sqlalchemy import text  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from sa_signals import InvalidSignalError, SignalRepository, WriteResult  # noqa: E402

from .conftest import Database  # noqa: E402
from .test_write_helpers import BASE, NO_COPY, expected, signal, stored, sync_client  # noqa: E402

UTC = timezone.utc


def items(n: int, *, start: int = 0, value: float = 1.0) -> list[SimpleNamespace]:
    """``n`` signals over two symbols (lower case: upper-cased on the way in)."""
    return [
        signal(i, value=value, symbol="spy" if i % 2 else "qqq") for i in range(start, start + n)
    ]


def arrow(signals: list[SimpleNamespace], metadata: str = "struct") -> Any:
    """``signals`` as a pyarrow Table; ``metadata`` as a struct, JSON text or map column."""
    columns: dict[str, Any] = {
        "provider": [s.provider for s in signals],
        "symbol": [s.symbol for s in signals],
        "ts": pa.array([s.ts for s in signals], pa.timestamp("us", "UTC")),
        "name": [s.name for s in signals],
        "value": pa.array([s.value for s in signals], pa.float64()),
        "score": pa.array([s.score for s in signals], pa.float64()),
    }
    docs = [s.metadata for s in signals]
    if metadata == "struct":
        columns["metadata"] = pa.array(docs)
    elif metadata == "json":
        import json

        columns["metadata"] = pa.array([None if d is None else json.dumps(d) for d in docs])
    elif metadata == "map":
        columns["metadata"] = pa.array(
            [None if d is None else list(d.items()) for d in docs],
            pa.map_(pa.string(), pa.float64()),
        )
    return pa.table(columns)


def frame(kind: str, table: Any) -> Any:
    if kind == "arrow":
        return table
    if kind == "batch":
        return table.combine_chunks().to_batches()[0]
    if kind == "polars":
        return pl.from_arrow(table)
    return table.to_pandas()


def counts(result: WriteResult) -> tuple[int, int, int, int]:
    return result.received, result.inserted, result.updated, result.unchanged


# -- the same as objects ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["arrow", "batch", "polars", "pandas"])
def test_a_frame_stores_what_the_objects_store_with_the_same_counts(
    db: Database, kind: str
) -> None:
    first = items(60)
    # A replay of some, changed values for others, and in-call duplicates (last one wins).
    second = items(30) + items(20, start=40, value=2.0) + items(10, start=60, value=3.0)
    second += items(5, start=60, value=4.0)
    results = []
    with sync_client(db, batch_threshold=10) as client:
        for batch in (first, second):
            results.append(client.upsert(frame(kind, arrow(batch))))
    assert stored(db) == expected(first + second)
    twin = db.make_table("objects_twin")
    db.metadata.create_all(db.engine)
    with sync_client(db, batch_threshold=10, table=twin) as client:
        object_results = [client.upsert(batch) for batch in (first, second)]
    assert [counts(r) for r in results] == [counts(r) for r in object_results]
    assert counts(results[1]) == (65, 10, 20, 30)
    assert stored(db) == stored(db, twin)


@pytest.mark.parametrize("metadata", ["struct", "json", "map"])
def test_metadata_may_be_a_struct_json_text_or_map_column(db: Database, metadata: str) -> None:
    batch = [
        signal(i, metadata=None if i % 4 == 0 else {"price": 1.5 * i, "n": float(i)})
        for i in range(24)
    ]
    with sync_client(db, batch_threshold=10) as client:
        assert client.upsert(arrow(batch, metadata)).inserted == 24
    assert stored(db) == expected(batch)


def test_nested_struct_metadata_and_escapes_round_trip(db: Database) -> None:
    docs = [
        {"text": 'quote " backslash \\ newline \n tab \t bell \x07 é', "ok": True, "n": 3},
        {"text": "plain", "ok": False, "n": -1},
    ]
    nested = [{"inner": d, "list_free": "x"} for d in docs]
    batch = [signal(i, metadata=nested[i % 2]) for i in range(12)]
    with sync_client(db, batch_threshold=4) as client:
        client.upsert(arrow(batch))
    assert stored(db) == expected(batch)


def test_a_small_frame_and_a_large_one_take_the_ordinary_and_the_copy_path(db: Database) -> None:
    with sync_client(db, batch_threshold=50) as client:
        small = client.upsert(arrow(items(10)))
        large = client.upsert(arrow(items(100, start=10)))
    assert small.methods == ("UPSERT",)
    if db.is_postgres and not db.pglite:
        assert large.method == "COPY"
    assert stored(db) == expected(items(10) + items(100, start=10))


def test_an_empty_frame_writes_nothing(db: Database) -> None:
    with sync_client(db) as client:
        assert client.upsert(arrow([])) == WriteResult()
    assert stored(db) == {}


def test_a_repository_writes_a_frame_in_the_session_transaction(db: Database) -> None:
    batch = items(40)
    threshold = NO_COPY if db.pglite else 10
    with Session(db.engine) as session:
        repo = SignalRepository(session, db.table, batch_threshold=threshold)
        assert repo.upsert(frame("polars", arrow(batch))).inserted == 40
        session.rollback()
    assert stored(db) == {}
    with Session(db.engine) as session:
        SignalRepository(session, db.table, batch_threshold=threshold).upsert(arrow(batch))
        session.commit()
    assert stored(db) == expected(batch)


async def test_the_async_client_writes_frames(db: Database) -> None:
    from .test_write_helpers import async_client

    batch = items(40)
    async with async_client(db, batch_threshold=10) as client:
        first = await client.upsert(arrow(batch))
        again = await client.upsert(frame("pandas", arrow(batch)))
    assert (first.inserted, again.unchanged) == (40, 40)
    assert stored(db) == expected(batch)


# -- validation: the first bad row and its field; nothing written -----------------------------


def _ts(values: list[Any], kind: Any) -> Any:
    return pa.array(values, kind)


def _with(table: Any, name: str, column: Any) -> Any:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _replace(values: list[Any], index: int, bad: Any) -> list[Any]:
    out = list(values)
    out[index] = bad
    return out


GOOD = items(8)
TABLE = arrow(GOOD)
TEXT = [s.provider for s in GOOD]
VALUES = [s.value for s in GOOD]
STAMPS = [s.ts for s in GOOD]

BAD: dict[str, tuple[Callable[[], Any], int, str]] = {
    "provider null": (
        lambda: _with(TABLE, "provider", pa.array(_replace(TEXT, 3, None))),
        3,
        "provider",
    ),
    "provider empty": (
        lambda: _with(TABLE, "provider", pa.array(_replace(TEXT, 2, ""))),
        2,
        "provider",
    ),
    "symbol NUL": (
        lambda: _with(TABLE, "symbol", pa.array(_replace(["SPY"] * 8, 5, "S\x00PY"))),
        5,
        "symbol",
    ),
    "name not text": (lambda: _with(TABLE, "name", pa.array(range(8))), 0, "name"),
    "ts naive": (lambda: _with(TABLE, "ts", _ts(STAMPS, pa.timestamp("us"))), 0, "ts"),
    "ts null": (
        lambda: _with(TABLE, "ts", _ts(_replace(STAMPS, 4, None), pa.timestamp("us", "UTC"))),
        4,
        "ts",
    ),
    "ts before year 1": (
        lambda: _with(
            TABLE,
            "ts",
            pa.array(_replace([1_700_000_000] * 8, 6, -62_135_596_801), pa.timestamp("s", "UTC")),
        ),
        6,
        "ts",
    ),
    "ts sub-microsecond": (
        lambda: _with(
            TABLE,
            "ts",
            pa.array(_replace([10**18] * 8, 1, 10**18 + 1), pa.timestamp("ns", "UTC")),
        ),
        1,
        "ts",
    ),
    "value NaN": (
        lambda: _with(TABLE, "value", pa.array(_replace(VALUES, 1, float("nan")))),
        1,
        "value",
    ),
    "value inf": (
        lambda: _with(TABLE, "value", pa.array(_replace(VALUES, 7, float("inf")))),
        7,
        "value",
    ),
    "value null": (lambda: _with(TABLE, "value", pa.array(_replace(VALUES, 2, None))), 2, "value"),
    "value bool": (lambda: _with(TABLE, "value", pa.array([True] * 8)), 0, "value"),
    "value missing": (lambda: TABLE.drop_columns(["value"]), 0, "value"),
    "score -inf": (
        lambda: _with(TABLE, "score", pa.array(_replace([0.5] * 8, 2, float("-inf")))),
        2,
        "score",
    ),
    "metadata bad JSON": (
        lambda: _with(TABLE, "metadata", pa.array(_replace(['{"a": 1}'] * 8, 3, '{"a": NaN}'))),
        3,
        "metadata",
    ),
    "metadata JSON array": (
        lambda: _with(TABLE, "metadata", pa.array(_replace(['{"a": 1}'] * 8, 2, "[1, 2]"))),
        2,
        "metadata",
    ),
    "metadata JSON NUL": (
        lambda: _with(
            TABLE, "metadata", pa.array(_replace(['{"a": 1}'] * 8, 4, '{"a": "\\u0000"}'))
        ),
        4,
        "metadata",
    ),
    "metadata struct NaN": (
        lambda: _with(
            TABLE, "metadata", pa.array(_replace([{"p": 1.0}] * 8, 5, {"p": float("nan")}))
        ),
        5,
        "metadata",
    ),
    "metadata struct NUL": (
        lambda: _with(TABLE, "metadata", pa.array(_replace([{"s": "x"}] * 8, 6, {"s": "a\x00"}))),
        6,
        "metadata",
    ),
    "metadata not a mapping": (lambda: _with(TABLE, "metadata", pa.array(range(8))), 0, "metadata"),
    "first bad row wins across fields": (
        lambda: _with(
            _with(TABLE, "provider", pa.array(_replace(TEXT, 5, None))),
            "value",
            pa.array(_replace(VALUES, 2, float("nan"))),
        ),
        2,
        "value",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_frames_name_the_first_bad_row_and_field_and_write_nothing(
    db: Database, case: str
) -> None:
    build, index, field = BAD[case]
    with sync_client(db, batch_threshold=4) as client:
        with pytest.raises(InvalidSignalError) as error:
            client.upsert(build())
    assert (error.value.index, error.value.field) == (index, field)
    assert stored(db) == {}


def test_pandas_nan_score_is_no_score_and_object_columns_are_checked(db: Database) -> None:
    batch = items(8)
    df = arrow(batch).to_pandas()
    with sync_client(db, batch_threshold=4) as client:
        client.upsert(df)
        mixed = df.copy()
        mixed["provider"] = [*df["provider"][:3], 7, *df["provider"][4:]]
        with pytest.raises(InvalidSignalError) as error:
            client.upsert(mixed)
    assert (error.value.index, error.value.field) == (3, "provider")
    assert stored(db) == expected(batch)


def test_non_ascii_symbols_are_upper_cased_like_str_upper(db: Database) -> None:
    batch = [signal(i, symbol=s) for i, s in enumerate(["straße", "éa", "spy", "straße"] * 5)]
    with sync_client(db, batch_threshold=4) as client:
        client.upsert(arrow(batch))
    assert stored(db) == expected(batch)


# -- the append fast path ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["objects", "arrow"])
def test_new_keys_are_appended_by_copy_and_known_keys_merged(pg_db: Database, kind: str) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")

    def given(batch: list[SimpleNamespace]) -> Any:
        return batch if kind == "objects" else arrow(batch)

    with sync_client(pg_db, batch_threshold=10) as client:
        first = client.upsert(given(items(50)))
        later = client.upsert(given(items(50, start=50)))
        overlapping = client.upsert(given(items(20, start=90, value=5.0)))
        replay = client.upsert(given(items(20, start=90, value=5.0)))
    assert first.methods == later.methods == ("COPY", "APPEND")
    assert counts(first) == counts(later) == (50, 50, 0, 0)
    assert overlapping.methods == replay.methods == ("COPY",)
    assert counts(overlapping) == (20, 10, 10, 0) and counts(replay) == (20, 0, 0, 20)
    assert stored(pg_db) == expected(items(90) + items(20, start=90, value=5.0))


def test_in_call_duplicates_never_take_the_append_path(pg_db: Database) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    batch = items(30) + items(10, value=9.0)
    with sync_client(pg_db, batch_threshold=10) as client:
        result = client.upsert(arrow(batch))
    assert result.methods == ("COPY",) and counts(result) == (40, 30, 0, 0)
    assert stored(pg_db) == expected(batch)


def test_a_one_batch_list_whose_timestamps_go_back_is_appended_when_its_keys_are_unique(
    pg_db: Database,
) -> None:
    """Timestamps that go back leave the per-row loop unable to count repeats; a list held in
    one batch is counted from its keys, so unique keys still take the append path and a
    repeated one still merges (last occurrence wins)."""
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    backwards = list(reversed(items(40)))
    repeated = list(reversed(items(40, start=100))) + items(5, start=100, value=9.0)
    with sync_client(pg_db, batch_threshold=10) as client:
        first = client.upsert(backwards)
        second = client.upsert(repeated)
    assert first.methods == ("COPY", "APPEND") and counts(first) == (40, 40, 0, 0)
    assert second.methods == ("COPY",) and counts(second) == (45, 40, 0, 0)
    assert stored(pg_db) == expected(backwards + repeated)


def test_append_fast_path_can_be_turned_off(pg_db: Database) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    with sync_client(pg_db, batch_threshold=10, append_fast_path=False) as client:
        assert client.upsert(items(30)).methods == ("COPY",)


def _wait_for_lock_wait(db: Database, deadline: float = 30.0) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        waiting = db.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )[0][0]
        if waiting:
            return
        time.sleep(0.05)
    raise AssertionError("the write never waited for the concurrent writer's key")


@pytest.mark.parametrize("kind", ["objects", "arrow"])
def test_a_concurrent_writer_makes_the_append_fall_back_to_the_merge(
    pg_db: Database, kind: str
) -> None:
    """The probe sees no stored key; a concurrent transaction holds one uncommitted; the COPY
    waits for it, meets a unique violation once it commits, and the call merges instead."""
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    batch = items(40)
    taken = batch[17]
    table = pg_db.table
    target = f'"{table.schema}"."{table.name}"' if table.schema else f'"{table.name}"'
    outcome: dict[str, Any] = {}
    with pg_db.engine.connect() as other:
        transaction = other.begin()
        other.execute(
            text(
                f"INSERT INTO {target} (provider, symbol, ts, name, value) "
                "VALUES (:provider, :symbol, :ts, :name, -1.0)"
            ),
            {
                "provider": taken.provider,
                "symbol": taken.symbol.upper(),
                "ts": taken.ts,
                "name": taken.name,
            },
        )

        def write() -> None:
            try:
                with sync_client(pg_db, batch_threshold=10) as client:
                    outcome["result"] = client.upsert(batch if kind == "objects" else arrow(batch))
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=write)
        thread.start()
        try:
            _wait_for_lock_wait(pg_db)  # the COPY is blocked on the uncommitted key
        finally:
            transaction.commit()
        thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    result: WriteResult = outcome["result"]
    assert result.methods == ("COPY",)  # the append was abandoned, the merge wrote the call
    assert counts(result) == (40, 39, 1, 0)
    assert stored(pg_db) == expected(batch)


def test_a_failed_frame_call_leaves_the_session_transaction_usable(pg_db: Database) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    before = items(5, start=100)
    with Session(pg_db.engine) as session:
        repo = SignalRepository(session, pg_db.table, batch_threshold=10)
        repo.upsert(before)
        bad = _with(arrow(items(30)), "value", pa.array([1.0] * 29 + [float("nan")]))
        with pytest.raises(InvalidSignalError):
            repo.upsert(bad)
        assert repo.upsert(arrow(items(30))).methods == ("COPY", "APPEND")
        session.commit()
    assert stored(pg_db) == expected(before + items(30))


def test_timestamps_keep_their_instant_whatever_the_time_zone(db: Database) -> None:
    batch = items(12)
    table = arrow(batch)
    shifted = _with(
        table,
        "ts",
        pa.array(
            [s.ts.astimezone(timezone(timedelta(hours=-5))) for s in batch],
            pa.timestamp("ms", "America/New_York"),
        ),
    )
    with sync_client(db, batch_threshold=4) as client:
        client.upsert(shifted)
    assert stored(db) == expected(batch)
    assert all(key[2].tzinfo is not None for key in stored(db))
    assert min(key[2] for key in stored(db)) == datetime(2024, 1, 1, tzinfo=UTC) == BASE


def in_order(numbers: range, value: float = 1.0) -> list[SimpleNamespace]:
    """Signals of one series, in write order (ascending ``ts``)."""
    return [signal(i, value=value) for i in numbers]


def test_a_list_of_several_batches_is_appended_and_falls_back_when_a_later_batch_collides(
    pg_db: Database,
) -> None:
    """write_signals' default batch_size (1000) splits a list: the probe sees the first batch;
    a later batch that collides with stored keys, repeats a key or breaks write order rolls the
    COPY back to its savepoint and the call merges, reading the list again."""
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    with sync_client(pg_db, batch_threshold=10) as client:
        assert client.write_signals(in_order(range(60)), batch_size=10) == 60
        assert client.last_result is not None
        assert client.last_result.methods == ("COPY", "APPEND")
        # New keys in the first batch (the probe sees nothing), stored keys in the third.
        late = in_order(range(-30, -10)) + in_order(range(50, 60), 7.0) + in_order(range(300, 320))
        assert client.write_signals(late, batch_size=10) == 50
        assert client.last_result.methods == ("COPY",)
        assert counts(client.last_result) == (50, 40, 10, 0)
        # A key repeated in a later batch: the last occurrence wins, as on the merge path.
        repeated = in_order(range(400, 430)) + in_order(range(400, 405), 8.0)
        client.write_signals(repeated, batch_size=10)
        assert client.last_result.methods == ("COPY",)
        assert counts(client.last_result) == (35, 30, 0, 0)
        # Keys out of write order across batches (two symbols): merged, in write order.
        client.write_signals(items(30, start=600), batch_size=10)
        assert client.last_result.methods == ("COPY",)
        # A generator of several batches is never read twice: it merges.
        client.write_signals(iter(in_order(range(500, 530))), batch_size=10)
        assert client.last_result.methods == ("COPY",)
    assert stored(pg_db) == expected(
        in_order(range(60)) + late + repeated + items(30, start=600) + in_order(range(500, 530))
    )


def test_a_bad_signal_in_a_later_batch_of_the_append_path_writes_nothing(
    pg_db: Database,
) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    batch = items(40)
    batch[33] = signal(33, value=float("nan"))
    with sync_client(pg_db, batch_threshold=10) as client:
        with pytest.raises(InvalidSignalError) as error:
            client.write_signals(batch, batch_size=10)
    assert (error.value.index, error.value.field) == (33, "value")
    assert stored(pg_db) == {}


async def test_the_async_client_appends_a_list_of_several_batches(pg_db: Database) -> None:
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    from .test_write_helpers import async_client

    async with async_client(pg_db, batch_threshold=10) as client:
        await client.write_signals(in_order(range(40)), batch_size=10)
        assert client.last_result is not None and client.last_result.methods == ("COPY", "APPEND")
        await client.write_signals(in_order(range(40)), batch_size=10)
        assert client.last_result.methods == ("COPY",)
        assert counts(client.last_result) == (40, 0, 0, 40)
    assert stored(pg_db) == expected(in_order(range(40)))


@pytest.mark.parametrize("metadata", ["struct", "json"])
def test_a_frame_replaying_objects_finds_them_unchanged(db: Database, metadata: str) -> None:
    """The frame's JSON is the object path's, byte for byte (SQLite compares the text):
    integral floats stay floats (400.0, not 400) and JSON text is re-encoded compactly."""
    batch = [
        signal(i, metadata={"price": 400.0 + i % 3, "big": 1e20, "n": i, "w": "1m"})
        for i in range(30)
    ]
    with sync_client(db, batch_threshold=10) as client:
        client.upsert(batch)
        again = client.upsert(arrow(batch, metadata))
    assert counts(again) == (30, 0, 0, 30)
    held = stored(db)
    assert all(isinstance(row[2]["price"], float) for row in held.values())
    assert held == expected(batch)


def test_a_frame_is_counted_by_the_metrics_as_objects_are(db: Database) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    batch = items(40)
    with sync_client(db, batch_threshold=10, registry=registry) as client:
        method = client.upsert(arrow(batch)).method
        with pytest.raises(InvalidSignalError):
            client.upsert(_with(arrow(batch), "value", pa.array([None] * 40, pa.float64())))
    written = "store_signals_written_total"
    assert registry.get_sample_value(written, {"method": method, "status": "success"}) == 40
    # A failed call counts what it was given (the frame's length).
    assert registry.get_sample_value(written, {"method": "UPSERT", "status": "failure"}) == 40


def test_appended_objects_store_their_metadata_as_the_merge_does(pg_db: Database) -> None:
    """The append COPY sends the metadata as jsonb's binary form: the same documents as the
    merge stores, non-ASCII, escapes, nesting and missing metadata included."""
    if pg_db.pglite:
        pytest.skip("no COPY on the WebAssembly TimescaleDB server")
    documents: list[dict[str, Any] | None] = [
        None,
        {"note": "é→✓ 😀", "quote": 'a"b\\c', "tab": "\t"},
        {"nested": {"list": [1, 2.5, None, True], "empty": {}}},
        {},
    ]
    # Two symbols taking turns: not in write order, so sorted before the COPY.
    batch = [
        signal(i, symbol="spy" if i % 2 else "qqq", metadata=documents[i % 4]) for i in range(40)
    ]
    with sync_client(pg_db, batch_threshold=10) as client:
        first = client.upsert(batch)
        again = client.upsert(batch)
    assert first.methods == ("COPY", "APPEND") and counts(first) == (40, 40, 0, 0)
    assert counts(again) == (40, 0, 0, 40)
    assert stored(pg_db) == expected(batch)


def test_a_merged_frame_into_an_empty_range_counts_as_the_objects_do(db: Database) -> None:
    """A frame with repeated keys (merge path, staged in write order) into an empty time
    range, then its replay and a change: the counts and rows of the object path."""
    batch = items(30)[::-1] + items(10, value=9.0)
    changed = items(10, start=25, value=3.0)
    with sync_client(db, batch_threshold=10, append_fast_path=False) as client:
        first = client.upsert(arrow(batch))
        replay = client.upsert(arrow(batch))
        later = client.upsert(arrow(changed))
    assert counts(first) == (40, 30, 0, 0)
    assert counts(replay) == (40, 0, 0, 30)
    assert counts(later) == (10, 5, 5, 0)
    assert stored(db) == expected(batch + changed)
