"""A lock conflict during a write: the call fails whole, and the client works afterwards."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sa_signals import WriteError

from .conftest import Database
from .test_write_helpers import expected, signals, stored, sync_client


@pytest.mark.parametrize("threshold", [10**9, 10], ids=["upsert", "copy"])
def test_lock_conflict_fails_whole_then_client_recovers(
    postgres_db: Database, threshold: int
) -> None:
    db = postgres_db
    registry = CollectorRegistry()
    method = "COPY" if threshold == 10 else "UPSERT"
    with sync_client(
        db,
        batch_threshold=threshold,
        registry=registry,
        # Give up on a row lock after 200 ms instead of waiting for the other transaction.
        connect_args={"options": "-c lock_timeout=200"},
    ) as client:
        client.write_signals(signals(20))
        before = stored(db)
        table = f'"{db.schema}"."signals"'
        with db.engine.connect() as holder:
            holder.exec_driver_sql(f"SELECT 1 FROM {table} ORDER BY ts LIMIT 1 FOR UPDATE")
            # 40 signals: the first 20 change the existing (one of them locked), 20 are new.
            with pytest.raises(WriteError, match="lock"):
                client.write_signals(signals(40, value=2.0))
            assert stored(db) == before  # nothing of the call, not even the new keys
            holder.rollback()
        failures = registry.get_sample_value(
            "store_signals_written_total", {"method": method, "status": "failure"}
        )
        assert failures == 40
        assert client.write_signals(signals(40, value=2.0)) == 40
    assert stored(db) == expected(signals(40, value=2.0))
