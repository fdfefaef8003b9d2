"""Writing signals through the spec's client and the session repository, on every tier."""

from __future__ import annotations

import asyncio
from datetime import timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from sa_signals import (
    AsyncSignalsStoreClient,
    ClientStateError,
    InvalidSignalError,
    Signal,
    SignalRepository,
    SignalsStoreClient,
    WriteResult,
)

from .conftest import Database
from .test_write_helpers import (
    BASE,
    NO_COPY,
    async_client,
    expected,
    row_versions,
    signal,
    signals,
    stored,
    sync_client,
)


def test_roundtrip_every_field(db: Database) -> None:
    items = signals(7)
    with sync_client(db) as client:
        assert client.write_signals(items) == 7
        result = client.last_result
    assert result is not None
    assert (result.received, result.inserted, result.updated, result.unchanged) == (7, 7, 0, 0)
    assert result.methods == ("UPSERT",)
    held = stored(db)
    assert held == expected(items)
    assert held[("ibkr_primary", "SPY", BASE, "vwap_cross_up")] == (1.0, 0.85, None)
    assert held[("ibkr_primary", "SPY", BASE + timedelta(seconds=1), "vwap_cross_up")] == (
        1.0,
        None,
        {"window": "1m", "price": 425.15, "i": 1},
    )


def test_spec_example_metadata_dict_over_copy(db: Database) -> None:
    # The reference failed with "cannot adapt type 'dict'" on exactly this on its COPY path.
    items = signals(30)
    with sync_client(db, batch_threshold=10) as client:
        assert client.write_signals(items) == 30
    assert stored(db) == expected(items)


def test_replay_returns_same_count_and_changes_nothing(db: Database) -> None:
    db.pause_jobs()  # row_versions reads xmin, which compressed chunks do not have
    items = signals(40)
    with sync_client(db) as client:
        assert client.write_signals(items) == 40
        before = row_versions(db) if db.is_postgres else None
        assert client.write_signals(items) == 40
        result = client.last_result
    assert result is not None
    assert (result.inserted, result.updated, result.unchanged) == (0, 0, 40)
    assert stored(db) == expected(items)
    if before is not None:
        assert row_versions(db) == before  # no row got a new version


def test_changed_value_score_metadata_update_exactly_those_rows(db: Database) -> None:
    db.pause_jobs()  # row_versions reads xmin, which compressed chunks do not have
    items = signals(20)
    with sync_client(db) as client:
        client.write_signals(items)
        before = row_versions(db) if db.is_postgres else None
        changed = [
            signal(3, value=9.5),
            signal(4, score=0.1),
            signal(5, metadata={"window": "5m"}),
            signal(7, metadata=None),  # had metadata: becomes NULL
            signal(8),  # unchanged
        ]
        assert client.write_signals(changed) == 5
        result = client.last_result
    assert result is not None
    assert (result.inserted, result.updated, result.unchanged) == (0, 4, 1)
    assert stored(db) == expected(items + changed)
    if before is not None:
        after = row_versions(db)
        moved = {key for key in before if before[key] != after[key]}
        assert moved == set(expected(changed[:4]))


def test_duplicate_keys_last_occurrence_wins(db: Database) -> None:
    items = [signal(1, value=1.0), signal(2), signal(1, value=2.0), signal(1, value=3.0)]
    with sync_client(db) as client:
        assert client.write_signals(items) == 4
        result = client.last_result
    assert result is not None
    assert (result.inserted, result.duplicates) == (2, 2)
    assert stored(db) == expected(items)
    assert stored(db)[("ibkr_primary", "SPY", BASE + timedelta(seconds=1), "vwap_cross_up")][0] == 3


def test_lowercase_symbols_are_uppercased(db: Database) -> None:
    items = [signal(0, symbol="spy"), signal(1, symbol="Qqq")]
    with sync_client(db) as client:
        client.write_signals(items)
        client.write_signals([signal(0, symbol="SPY", value=2.0)])  # same key as "spy"
    assert {key[1] for key in stored(db)} == {"SPY", "QQQ"}
    assert stored(db)[("ibkr_primary", "SPY", BASE, "vwap_cross_up")][0] == 2.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", BASE.replace(tzinfo=None)),
        ("value", True),
        ("value", float("nan")),
        ("score", float("inf")),
        ("metadata", {"bad": float("nan")}),
        ("symbol", ""),
    ],
)
def test_bad_input_raises_and_leaves_table_unchanged(
    db: Database, field: str, value: object
) -> None:
    with sync_client(db) as client:
        client.write_signals(signals(3, value=5.0))
        before = stored(db)
        items = signals(5)
        setattr(items[4], field, value)
        with pytest.raises(InvalidSignalError) as info:
            client.write_signals(items, batch_size=2)  # batches 0-1 and 2-3 go first
    assert (info.value.index, info.value.field) == (4, field)
    assert stored(db) == before


def test_bad_3000th_signal_of_a_copy_sized_call(db: Database) -> None:
    items = signals(3000)
    items[2999].ts = items[2999].ts.replace(tzinfo=None)
    with sync_client(db) as client:
        with pytest.raises(InvalidSignalError) as info:
            client.write_signals(items)  # two batches of 1000 are merged before the error
        assert client.last_result is None
    assert (info.value.index, info.value.field) == (2999, "ts")
    assert stored(db) == {}


def _two_bad(case: str) -> tuple[list[SimpleNamespace], tuple[int, str]]:
    items = signals(3000)
    if case == "metadata before a bad field":
        items[5].metadata = {"bad": float("nan")}
        items[9].value = "x"  # validated first: the keys and numbers are checked up front
        return items, (5, "metadata")
    # Reversed: the COPY (in write order) meets index 2000 before index 10.
    items.reverse()
    items[10].metadata = {"bad": float("inf")}
    items[2000].metadata = {1: "non-string key"}
    return items, (10, "metadata")


@pytest.mark.parametrize("case", ["metadata before a bad field", "two, met out of order"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_one_batch_copy_reports_the_lowest_invalid_index(
    db: Database, mode: str, case: str
) -> None:
    """A COPY-sized call in one batch encodes its metadata while the COPY streams: the error
    still names the lowest-indexed invalid signal, nothing is kept, the client works on."""
    items, wanted = _two_bad(case)
    if mode == "sync":
        with sync_client(db) as client:
            with pytest.raises(InvalidSignalError) as info:
                client.upsert(items)
            assert client.upsert(signals(2)).inserted == 2
    else:

        async def run() -> Any:
            async with async_client(db) as client:
                with pytest.raises(InvalidSignalError) as info:
                    await client.upsert(items)
                assert (await client.upsert(signals(2))).inserted == 2
                return info

        info = asyncio.run(run())
    assert (info.value.index, info.value.field) == wanted
    assert stored(db) == expected(signals(2))


def test_repository_validates_a_whole_sequence_before_sending_sql(db: Database) -> None:
    table = db.table
    items = signals(3000)
    items[2999].value = "1.0"
    with Session(db.engine) as session:
        repo = SignalRepository(session, table)
        with pytest.raises(InvalidSignalError, match=r"signal\[2999\]\.value"):
            repo.upsert(items)
        # Nothing was sent, so the transaction is still usable and commits nothing.
        repo.upsert(signals(2))
        session.commit()
    assert stored(db) == expected(signals(2))


def test_repository_joins_the_callers_transaction(db: Database) -> None:
    with Session(db.engine) as session:
        repo = SignalRepository(session, db.table, batch_threshold=10**9)
        result = repo.upsert(signals(5))
        assert result.inserted == 5
        assert repo.session is session
        session.rollback()
    assert stored(db) == {}


def test_accepts_dicts_dataclass_like_objects_and_model_instances(db: Database) -> None:
    as_dict = {"provider": "p", "symbol": "a", "ts": BASE, "name": "n", "value": 1}
    as_model = Signal(provider="p", symbol="B", ts=BASE, name="n", value=2.0, metadata_={"k": 1})
    as_namespace = SimpleNamespace(provider="p", symbol="C", ts=BASE, name="n", value=3.5)
    with sync_client(db) as client:
        assert client.write_signals([as_dict, as_model, as_namespace]) == 3
    assert stored(db) == {
        ("p", "A", BASE, "n"): (1.0, None, None),
        ("p", "B", BASE, "n"): (2.0, None, {"k": 1}),
        ("p", "C", BASE, "n"): (3.5, None, None),
    }


def test_empty_input_writes_nothing(db: Database) -> None:
    with sync_client(db) as client:
        assert client.write_signals([]) == 0
        assert client.write_signals(iter(())) == 0
    assert stored(db) == {}


def test_client_outside_its_context_manager_is_an_error(db: Database) -> None:
    client = sync_client(db)
    with pytest.raises(ClientStateError, match="context manager"):
        client.write_signals(signals(1))
    with client:
        pass
    with pytest.raises(ClientStateError):
        client.write_signals(signals(1))
    client.close()


def test_client_reenters_with_the_same_engine(db: Database) -> None:
    client = sync_client(db)
    engines = []
    for i in range(3):
        with client:
            client.write_signals([signal(i)])
            engines.append(client.engine)
    assert engines[0] is engines[1] is engines[2]
    client.close()
    assert len(stored(db)) == 3


def test_client_accepts_an_existing_engine(db: Database) -> None:
    with SignalsStoreClient(db.engine, table=db.table) as client:
        assert client.engine is db.engine
        client.write_signals(signals(2))
    client.close()
    with db.engine.connect() as conn:  # still usable: the client did not dispose it
        conn.execute(text("SELECT 1"))
    assert len(stored(db)) == 2


def test_upsert_returns_the_counts_of_the_call(db: Database) -> None:
    with sync_client(db) as client:
        first = client.upsert(signals(4))
        assert isinstance(first, WriteResult)
        assert (first.received, first.inserted, first.method) == (4, 4, "UPSERT")
        replay = client.upsert(signals(4))
        assert (replay.inserted, replay.unchanged) == (0, 4)
        assert client.last_result is replay
        assert client.write_signals(signals(4)) == 4  # the spec's form still answers a count


async def test_async_upsert_returns_the_counts_of_the_call(db: Database) -> None:
    async with async_client(db) as client:
        result = await client.upsert(signals(4))
        assert (result.received, result.inserted) == (4, 4)
        assert await client.write_signals(signals(4)) == 4


@pytest.mark.parametrize("batch_size", [2, 3, 1000])
def test_counts_are_exact_when_a_key_repeats_across_batches(db: Database, batch_size: int) -> None:
    items = [*signals(5), signal(1, value=9.0), signal(2), signal(1, value=8.0)]
    with sync_client(db) as client:
        result = client.upsert(items, batch_size=batch_size)
        assert (result.received, result.inserted, result.updated, result.unchanged) == (8, 5, 0, 0)
        assert result.duplicates == 3
        replay = client.upsert(items, batch_size=batch_size)
        assert (replay.inserted, replay.updated, replay.unchanged, replay.duplicates) == (
            0,
            0,
            5,
            3,
        )
    assert stored(db) == expected(items)
    assert (
        stored(db)[("ibkr_primary", "SPY", BASE + timedelta(seconds=1), "vwap_cross_up")][0] == 8.0
    )


ODD_OFFSETS = [
    timezone(timedelta(microseconds=1)),
    timezone(timedelta(seconds=-30)),
    timezone(timedelta(hours=13, minutes=59, seconds=59, microseconds=999_999)),
]


@pytest.mark.parametrize("threshold", [NO_COPY, 10], ids=["upsert", "copy"])
def test_odd_utc_offsets_and_escaped_backslashes_round_trip_on_every_path(
    db: Database, threshold: int
) -> None:
    if threshold == 10 and (db.tier == "sqlite" or db.pglite):
        pytest.skip("no COPY path on SQLite or the WebAssembly TimescaleDB server")
    instants = [BASE + timedelta(minutes=i) for i in range(12)]
    items = [
        signal(
            i,
            ts=instant.astimezone(ODD_OFFSETS[i % len(ODD_OFFSETS)]),
            metadata={"path": "C:\\u0000dir", "i": i},
        )
        for i, instant in enumerate(instants)
    ]
    with sync_client(db, batch_threshold=threshold) as client:
        result = client.upsert(items)
        assert result.inserted == 12
        assert client.upsert(items).unchanged == 12  # the same instants: nothing changes
    held = stored(db)
    assert sorted(key[2] for key in held) == instants
    assert {value[2]["path"] for value in held.values()} == {"C:\\u0000dir"}


def _pooled(db: Database) -> None:
    if db.pglite:
        pytest.skip("the WebAssembly TimescaleDB tier runs without a pool")


def test_leaving_the_outermost_with_disposes_the_clients_own_pool(db: Database) -> None:
    _pooled(db)
    client = sync_client(db)
    with client:
        with client:
            client.write_signals(signals(1))
        assert client.engine.pool.checkedin() == 1  # an inner exit keeps the pool
        client.write_signals(signals(1))
    assert client.engine.pool.checkedin() == 0
    with client:  # entered again: new connections
        assert client.write_signals(signals(2)) == 2
    client.close()
    client.close()  # idempotent
    assert client.engine.pool.checkedin() == 0


def test_an_engine_given_to_a_client_is_never_disposed(db: Database) -> None:
    _pooled(db)
    with SignalsStoreClient(db.engine, table=db.table, registry=CollectorRegistry()) as client:
        client.write_signals(signals(2))
    client.close()
    assert db.engine.pool.checkedin() >= 1


async def test_async_client_lifecycle(db: Database) -> None:
    _pooled(db)
    client = async_client(db)
    async with client:
        async with client:
            await client.write_signals(signals(1))
        assert client.engine.sync_engine.pool.checkedin() == 1
    assert client.engine.sync_engine.pool.checkedin() == 0
    async with client:
        assert await client.write_signals(signals(2)) == 2
    await client.aclose()
    await client.aclose()
    given = create_async_engine(db.async_url)
    try:
        async with AsyncSignalsStoreClient(given, table=db.table) as aclient:
            await aclient.write_signals(signals(1))
        assert given.sync_engine.pool.checkedin() == 1
    finally:
        await given.dispose()
