"""sa_signals: streaming inference signals in PostgreSQL, TimescaleDB and SQLite."""

from __future__ import annotations

from .errors import (
    CitusUnavailableError,
    CitusUnavailableWarning,
    ClientStateError,
    ConfigurationError,
    ExtensionUnavailableError,
    InvalidQueryError,
    InvalidSignalError,
    MigrationError,
    MissingDependencyError,
    QueryError,
    SignalsError,
    SignalsWarning,
    TimescaleUnavailableError,
    TimescaleUnavailableWarning,
    WriteError,
)
from .metrics import WriteMetrics, write_metrics
from .read.queries import ActiveSignal, SignalBucket, SignalMetrics, SignalRecord, SignalSummary
from .read.query_client import AsyncSignalsQueryClient, SignalsQueryClient
from .read.query_repository import AsyncSignalQueryRepository, SignalQueryRepository
from .result import WriteResult
from .schema.aggregates import (
    ContinuousAggregate,
    Moments,
    RefreshPolicy,
    Rollup,
    combine_moments,
    get_continuous_aggregates,
    get_rollups,
    signals_rollup,
)
from .schema.ddl import ensure_distribution, ensure_timescale
from .schema.functions import (
    first,
    interpolate,
    last,
    locf,
    time_bucket,
    time_bucket_gapfill,
    use_timescale,
)
from .schema.model import (
    DEFAULT_NAMING,
    KEY_COLUMNS,
    SIGNAL_COLUMNS,
    Signal,
    SignalMixin,
    signals_metadata,
    signals_table,
)
from .schema.options import (
    DistributionOptions,
    TimescaleOptions,
    get_distribution_options,
    get_timescale_options,
)
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
    "CitusUnavailableError",
    "CitusUnavailableWarning",
    "ClientStateError",
    "ConfigurationError",
    "ContinuousAggregate",
    "DistributionOptions",
    "ExtensionUnavailableError",
    "InvalidQueryError",
    "InvalidSignalError",
    "MigrationError",
    "MissingDependencyError",
    "Moments",
    "QueryError",
    "RefreshPolicy",
    "Rollup",
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
    "SignalsWarning",
    "StorageStats",
    "TimescaleOptions",
    "TimescaleUnavailableError",
    "TimescaleUnavailableWarning",
    "WriteError",
    "WriteMetrics",
    "WriteResult",
    "__version__",
    "combine_moments",
    "ensure_distribution",
    "ensure_timescale",
    "first",
    "get_continuous_aggregates",
    "get_distribution_options",
    "get_rollups",
    "get_timescale_options",
    "interpolate",
    "last",
    "locf",
    "signals_metadata",
    "signals_rollup",
    "signals_table",
    "storage_stats",
    "time_bucket",
    "time_bucket_gapfill",
    "use_timescale",
    "write_metrics",
]
