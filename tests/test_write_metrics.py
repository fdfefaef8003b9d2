"""Prometheus metrics of the write path: names, labels, registries, no duplicate registration."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from sqlalchemy.orm import Session

import sa_signals.metrics
from sa_signals import (
    ConfigurationError,
    InvalidSignalError,
    SignalRepository,
    SignalsStoreClient,
    WriteMetrics,
    write_metrics,
)

from .conftest import Database
from .test_write_helpers import expected, signal, signals, stored, sync_client


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


def test_a_clashing_collector_is_reported_when_the_metrics_are_created(
    sqlite_db: Database,
) -> None:
    registry = CollectorRegistry()
    # The host already has a collector of that name, with other labels.
    Counter("store_signals_rows", "the host's own", labelnames=("kind",), registry=registry)
    with pytest.raises(ConfigurationError, match="store_signals_rows"):
        SignalsStoreClient(sqlite_db.url, table=sqlite_db.table, registry=registry)
    with Session(sqlite_db.engine) as session, pytest.raises(ConfigurationError):
        SignalRepository(session, sqlite_db.table, metrics=registry)
    # Nothing was left half-registered: our other names are still free.
    Counter("store_signals_written", "free", registry=registry)
    assert stored(sqlite_db) == {}


def test_metrics_module_reads_no_private_attribute() -> None:
    tree = ast.parse(inspect.getsource(sa_signals.metrics))
    private = [
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]
    assert private == []


def test_reloading_twice_registers_nothing_twice() -> None:
    registry = CollectorRegistry()
    first = write_metrics(registry)
    importlib.reload(sa_signals.metrics)
    importlib.reload(sa_signals.metrics)
    again = sa_signals.metrics.write_metrics(registry)
    assert again.written is first.written and again.rows is first.rows


def test_metrics_that_fail_never_fail_a_committed_write(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    wrong = WriteMetrics(
        registry,
        (
            Counter("other_written", "other labels", labelnames=("a", "b", "c"), registry=registry),
            Histogram("other_latency", "other labels", labelnames=("a", "b"), registry=registry),
            Counter("other_rows", "other labels", labelnames=("a", "b"), registry=registry),
        ),
    )
    with Session(db.engine) as session:
        repository = SignalRepository(session, db.table, metrics=wrong)
        assert repository.upsert(signals(3)).inserted == 3
        session.commit()  # records the success: must not raise
    assert stored(db) == expected(signals(3))
    assert "could not record the metrics" in caplog.text


def _written(registry: CollectorRegistry, status: str) -> float:
    return _value(registry, "store_signals_written_total", method="UPSERT", status=status)


def test_repository_metrics_follow_the_hosts_transaction(db: Database) -> None:
    registry = CollectorRegistry()
    with Session(db.engine) as session:
        repository = SignalRepository(session, db.table, metrics=registry)
        repository.upsert(signals(3))
        assert _written(registry, "success") == 0  # not before the host commits
        session.commit()
        assert _written(registry, "success") == 3
        repository.upsert(signals(2, start=10))
        session.rollback()
        assert (_written(registry, "success"), _written(registry, "failure")) == (3, 2)
        # A savepoint of the host's: rolled back, then released and committed.
        nested = session.begin_nested()
        repository.upsert(signals(4, start=20))
        nested.rollback()
        with session.begin_nested():
            repository.upsert(signals(5, start=30))
        assert _written(registry, "success") == 3
        session.commit()
    assert (_written(registry, "success"), _written(registry, "failure")) == (8, 6)
    assert stored(db) == expected(signals(3) + signals(5, start=30))
