"""sa_signals: streaming inference signals in PostgreSQL, TimescaleDB and SQLite."""

from __future__ import annotations

from .ddl import ensure_timescale
from .errors import (
    ClientStateError,
    ConfigurationError,
    InvalidQueryError,
    InvalidSignalError,
    MissingDependencyError,
    SignalsError,
    TimescaleUnavailableError,
    WriteError,
)
from .model import (
    DEFAULT_NAMING,
    KEY_COLUMNS,
    SIGNAL_COLUMNS,
    Signal,
    SignalMixin,
    signals_metadata,
    signals_table,
)
from .options import TimescaleOptions, get_timescale_options

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_NAMING",
    "KEY_COLUMNS",
    "SIGNAL_COLUMNS",
    "ClientStateError",
    "ConfigurationError",
    "InvalidQueryError",
    "InvalidSignalError",
    "MissingDependencyError",
    "Signal",
    "SignalMixin",
    "SignalsError",
    "TimescaleOptions",
    "TimescaleUnavailableError",
    "WriteError",
    "__version__",
    "ensure_timescale",
    "get_timescale_options",
    "signals_metadata",
    "signals_table",
]
