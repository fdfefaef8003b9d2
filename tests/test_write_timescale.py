"""Writing into TimescaleDB hypertables, including chunks that are already compressed.

On this test server (TimescaleDB built for WebAssembly) ``COPY FROM STDIN`` kills the
connection, so the clients here keep to the executemany path (see ``client_kwargs``).
"""

from __future__ import annotations

from datetime import timedelta

from .conftest import Database
from .test_write_helpers import BASE, expected, signal, stored, sync_client


def _compressed_chunks(db: Database) -> int:
    rows = db.sql(
        "SELECT count(*) FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = :schema AND hypertable_name = 'signals' AND is_compressed",
        schema=db.schema,
    )
    return int(rows[0][0])  # type: ignore[call-overload]


def test_upsert_into_a_compressed_chunk_inserts_and_updates(timescale_db: Database) -> None:
    db = timescale_db
    items = [signal(i, ts=BASE + timedelta(hours=i)) for i in range(20)]  # one 7-day chunk
    with sync_client(db) as client:
        client.write_signals(items)
    db.sql(
        "SELECT compress_chunk(chunk) FROM show_chunks(CAST(:table AS regclass)) AS chunk",
        table=f'"{db.schema}".signals',
    )
    assert _compressed_chunks(db) == 1
    changed = [signal(i, ts=BASE + timedelta(hours=i), value=9.0) for i in range(5)]
    added = [signal(i, ts=BASE + timedelta(hours=i, minutes=30)) for i in range(5)]
    with sync_client(db) as client:
        assert client.write_signals(changed + added + items[10:]) == 20
        result = client.last_result
    assert result is not None
    assert (result.inserted, result.updated, result.unchanged) == (5, 5, 10)
    assert stored(db) == expected(items + changed + added)
