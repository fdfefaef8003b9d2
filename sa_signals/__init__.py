"""sa_signals: streaming inference signals in PostgreSQL, TimescaleDB and SQLite."""

from __future__ import annotations

from .errors import (
    ClientStateError,
    ConfigurationError,
    InvalidQueryError,
    InvalidSignalError,
    MissingDependencyError,
    QueryError,
    SignalsError,
    TimescaleUnavailableError,
    WriteError,
)
from .metrics import WriteMetrics, write_metrics
from .read.queries import ActiveSignal, SignalBucket, SignalMetrics, SignalRecord, SignalSummary
from .read.query_client import AsyncSignalsQueryClient, SignalsQueryClient
from .read.query_repository import AsyncSignalQueryRepository, SignalQueryRepository
from .result import WriteResult
from .schema.ddl import ensure_timescale
from .schema.model import (
    DEFAULT_NAMING,
    KEY_COLUMNS,
    SIGNAL_COLUMNS,
    Signal,
    SignalMixin,
    signals_metadata,
    signals_table,
)
from .schema.options import TimescaleOptions, get_timescale_options
from .status import StorageStats, storage_stats
from .write.repository import AsyncSignalRepository, SignalRepository
from .write.store import AsyncSignalsStoreClient, SignalsStoreClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_NAMING",
    "KEY_COLUMNS",
    "SIGNAL_COLUMNS",
    "ActiveSignal",
    "AsyncSignalQueryRepository",
    "AsyncSignalRepository",
    "AsyncSignalsQueryClient",
    "AsyncSignalsStoreClient",
    "ClientStateError",
    "ConfigurationError",
    "InvalidQueryError",
    "InvalidSignalError",
    "MissingDependencyError",
    "QueryError",
    "Signal",
    "SignalBucket",
    "SignalMetrics",
    "SignalMixin",
    "SignalQueryRepository",
    "SignalRecord",
    "SignalRepository",
    "SignalSummary",
    "SignalsError",
    "SignalsQueryClient",
    "SignalsStoreClient",
    "StorageStats",
    "TimescaleOptions",
    "TimescaleUnavailableError",
    "WriteError",
    "WriteMetrics",
    "WriteResult",
    "__version__",
    "ensure_timescale",
    "get_timescale_options",
    "signals_metadata",
    "signals_table",
    "storage_stats",
    "write_metrics",
]
