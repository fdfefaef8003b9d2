"""Prometheus metrics of the write path, with the spec's names.

* ``store_signals_written_total{method, status}``: signals handed to a write, by method
  (``UPSERT`` / ``COPY``) and status (``success`` / ``failure``);
* ``store_signals_write_latency_seconds{method}``: latency of each write call;
* ``store_signals_rows_total{outcome}``: what the database did with them (``inserted``,
  ``updated``, ``unchanged``).

:func:`write_metrics` returns one :class:`WriteMetrics` per registry (default: prometheus'
global ``REGISTRY``), so creating many clients or repositories, or re-importing this module,
never registers a name twice ("Duplicated timeseries").
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from .result import WriteResult

__all__ = ["WriteMetrics", "write_metrics"]

WRITTEN = "store_signals_written"
LATENCY = "store_signals_write_latency_seconds"
ROWS = "store_signals_rows"
#: Write latency buckets (seconds): sub-millisecond batches up to multi-second COPY calls.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_lock = threading.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, WriteMetrics] = (
    weakref.WeakKeyDictionary()
)


def _existing(registry: CollectorRegistry, name: str) -> Any:
    # A collector of this name is already registered (this module was imported again, e.g. by
    # importlib.reload): reuse it. prometheus_client offers no public lookup by name.
    return registry._names_to_collectors[name]


def _get_or_create(factory: type, registry: CollectorRegistry, name: str, **kwargs: Any) -> Any:
    try:
        return factory(name, registry=registry, **kwargs)
    except ValueError:
        return _existing(registry, name)


class WriteMetrics:
    """The three write metrics on one registry; use :func:`write_metrics` to get one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.written = _get_or_create(
            Counter,
            registry,
            WRITTEN,
            documentation="Signals written, by method (UPSERT/COPY) and status",
            labelnames=("method", "status"),
        )
        self.latency = _get_or_create(
            Histogram,
            registry,
            LATENCY,
            documentation="Latency of signal writes in seconds, by method",
            labelnames=("method",),
            buckets=LATENCY_BUCKETS,
        )
        self.rows = _get_or_create(
            Counter,
            registry,
            ROWS,
            documentation="Rows by outcome of signal writes (inserted/updated/unchanged)",
            labelnames=("outcome",),
        )

    def success(self, result: WriteResult, seconds: float) -> None:
        """Record a committed write."""
        method = result.method
        if method is None:
            return
        self.written.labels(method, "success").inc(result.received)
        self.latency.labels(method).observe(seconds)
        self.rows.labels("inserted").inc(result.inserted)
        self.rows.labels("updated").inc(result.updated)
        self.rows.labels("unchanged").inc(result.unchanged)

    def failure(self, method: str, signals: int, seconds: float) -> None:
        """Record a write that failed (and was rolled back); ``signals`` read so far."""
        self.written.labels(method, "failure").inc(signals)
        self.latency.labels(method).observe(seconds)


def write_metrics(registry: CollectorRegistry | None = None) -> WriteMetrics:
    """The :class:`WriteMetrics` of ``registry`` (prometheus' default registry if None)."""
    registry = REGISTRY if registry is None else registry
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = WriteMetrics(registry)
        return metrics
