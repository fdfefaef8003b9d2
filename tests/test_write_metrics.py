"""Prometheus metrics of the write path: names, labels, registries, no duplicate registration."""

from __future__ import annotations

import importlib

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

import sa_signals.metrics
from sa_signals import InvalidSignalError, SignalsStoreClient, write_metrics

from .conftest import Database
from .test_write_helpers import signal, signals, sync_client


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_spec_metrics_after_writes(db: Database) -> None:
    registry = CollectorRegistry()
    with sync_client(db, registry=registry) as client:
        client.write_signals(signals(5))
        client.write_signals(signals(5))  # replay
        client.write_signals([signal(0, value=3.0), signal(9)])
    assert _value(registry, "store_signals_written_total", method="UPSERT", status="success") == 12
    assert _value(registry, "store_signals_write_latency_seconds_count", method="UPSERT") == 3
    assert _value(registry, "store_signals_write_latency_seconds_sum", method="UPSERT") > 0
    assert _value(registry, "store_signals_rows_total", outcome="inserted") == 6
    assert _value(registry, "store_signals_rows_total", outcome="updated") == 1
    assert _value(registry, "store_signals_rows_total", outcome="unchanged") == 5


def test_copy_method_label(postgres_db: Database) -> None:
    registry = CollectorRegistry()
    with sync_client(postgres_db, registry=registry, batch_threshold=10) as client:
        client.write_signals(signals(25), batch_size=10)  # COPY, COPY, then a tail of 5
    # A call is labelled with its main method (COPY when any batch used it).
    assert _value(registry, "store_signals_written_total", method="COPY", status="success") == 25
    assert _value(registry, "store_signals_write_latency_seconds_count", method="COPY") == 1


def test_failure_counts_what_the_call_was_given(db: Database) -> None:
    registry = CollectorRegistry()
    items = signals(4)
    items[1].value = None
    with sync_client(db, registry=registry) as client:
        with pytest.raises(InvalidSignalError):
            client.write_signals(items, batch_size=2)  # a list: its length is known
        with pytest.raises(InvalidSignalError):
            client.write_signals(iter(items), batch_size=2)  # an iterator: what was read
    assert _value(registry, "store_signals_written_total", method="UPSERT", status="failure") == 6
    assert _value(registry, "store_signals_written_total", method="UPSERT", status="success") == 0


def test_many_clients_and_reimport_share_the_default_registry(sqlite_db: Database) -> None:
    clients = [SignalsStoreClient(sqlite_db.url, table=sqlite_db.table) for _ in range(5)]
    assert len({id(c.metrics) for c in clients}) == 1
    importlib.reload(sa_signals.metrics)  # a second import registers nothing twice
    again = sa_signals.metrics.write_metrics()
    assert again.written is clients[0].metrics.written
    before = _value(REGISTRY, "store_signals_written_total", method="UPSERT", status="success")
    with clients[0] as client:
        client.write_signals(signals(2))
    after = _value(REGISTRY, "store_signals_written_total", method="UPSERT", status="success")
    assert after - before == 2
    for c in clients:
        c.close()


def test_injected_registries_are_separate() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    assert write_metrics(first) is write_metrics(first)
    assert write_metrics(first) is not write_metrics(second)
    assert write_metrics(first).written is not write_metrics(second).written
