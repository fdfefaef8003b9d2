"""Prometheus metrics of the write path, with the spec's names.

* ``store_signals_written_total{method, status}``: signals handed to a write, by method
  (``UPSERT`` / ``COPY``) and status (``success`` / ``failure``);
* ``store_signals_write_latency_seconds{method}``: latency of each write call;
* ``store_signals_rows_total{outcome}``: what the database did with them (``inserted``,
  ``updated``, ``unchanged``).

:func:`write_metrics` returns one :class:`WriteMetrics` per registry (default: prometheus'
global ``REGISTRY``), so creating many clients or repositories, or reloading this module,
never registers a name twice ("Duplicated timeseries"). If the registry already holds a
collector with one of these names that sa_signals did not register (another library's, with
other labels), creating the metrics raises :class:`~sa_signals.errors.ConfigurationError`
then, never later. Recording never raises: a write that succeeded is never reported as failed
because of its metrics (a recording error is logged on the ``sa_signals.metrics`` logger).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from .errors import ConfigurationError
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

logger = logging.getLogger(__name__)

_Collectors = tuple[Any, Any, Any]
_lock = threading.Lock()
# The collectors sa_signals registered, per registry. importlib.reload() runs this module
# again in the same namespace: keep the mapping it already holds, or every name would be
# registered a second time.
_registered: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = (
    globals().get("_registered") or weakref.WeakKeyDictionary()
)
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, WriteMetrics] = (
    weakref.WeakKeyDictionary()
)


def _register(registry: CollectorRegistry) -> _Collectors:
    made: list[Any] = []
    try:
        made.append(
            Counter(
                WRITTEN,
                "Signals written, by method (UPSERT/COPY) and status",
                labelnames=("method", "status"),
                registry=registry,
            )
        )
        made.append(
            Histogram(
                LATENCY,
                "Latency of signal writes in seconds, by method",
                labelnames=("method",),
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        made.append(
            Counter(
                ROWS,
                "Rows by outcome of signal writes (inserted/updated/unchanged)",
                labelnames=("outcome",),
                registry=registry,
            )
        )
    except ValueError as exc:
        for collector in made:  # leave the registry as it was
            registry.unregister(collector)
        raise ConfigurationError(
            f"the prometheus registry already has a collector named like sa_signals' write "
            f"metrics ({WRITTEN}_total, {LATENCY}, {ROWS}_total) that sa_signals did not "
            f"register ({exc}); pass registry=CollectorRegistry() (or another registry) to the "
            "client or repository, or remove that collector"
        ) from exc
    return made[0], made[1], made[2]


class WriteMetrics:
    """The three write metrics on one registry; use :func:`write_metrics` to get one."""

    def __init__(self, registry: CollectorRegistry, collectors: _Collectors) -> None:
        self.registry = registry
        self.written, self.latency, self.rows = collectors

    def success(self, result: WriteResult, seconds: float) -> None:
        """Record a committed write (never raises)."""
        method = result.method
        if method is None:
            return
        try:
            self.written.labels(method, "success").inc(result.received)
            self.latency.labels(method).observe(seconds)
            self.rows.labels("inserted").inc(result.inserted)
            self.rows.labels("updated").inc(result.updated)
            self.rows.labels("unchanged").inc(result.unchanged)
        except Exception:
            logger.exception("could not record the metrics of a successful signal write")

    def failure(self, method: str, signals: int, seconds: float) -> None:
        """Record a write that failed (nothing of it was kept); ``signals``: what it was given.

        Never raises.
        """
        try:
            self.written.labels(method, "failure").inc(signals)
            self.latency.labels(method).observe(seconds)
        except Exception:
            logger.exception("could not record the metrics of a failed signal write")


def write_metrics(registry: CollectorRegistry | None = None) -> WriteMetrics:
    """The :class:`WriteMetrics` of ``registry`` (prometheus' default registry if None).

    Raises :class:`~sa_signals.errors.ConfigurationError` when the registry holds a
    collector of the same name that sa_signals did not register.
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        metrics = _by_registry.get(registry)
        if metrics is None:
            collectors = _registered.get(registry)
            if collectors is None:
                collectors = _registered[registry] = _register(registry)
            metrics = _by_registry[registry] = WriteMetrics(registry, collectors)
        return metrics
