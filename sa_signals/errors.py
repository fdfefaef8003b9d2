"""Exceptions raised by sa_signals; every one derives from :class:`SignalsError`."""

from __future__ import annotations

__all__ = [
    "CitusUnavailableError",
    "CitusUnavailableWarning",
    "ClientStateError",
    "ConfigurationError",
    "ExtensionUnavailableError",
    "InvalidQueryError",
    "InvalidSignalError",
    "MigrationError",
    "MissingDependencyError",
    "QueryError",
    "SignalsError",
    "SignalsWarning",
    "TimescaleUnavailableError",
    "TimescaleUnavailableWarning",
    "WriteError",
]


class SignalsError(Exception):
    """Base class of every error raised by sa_signals."""


class ConfigurationError(SignalsError, ValueError):
    """An option given to a table factory, client or repository is invalid."""


class InvalidSignalError(SignalsError, ValueError):
    """A signal failed validation; nothing of the call was written.

    ``index`` is the position of the signal in the caller's iterable and ``field`` the offending
    attribute (``None`` when the signal as a whole is unusable).
    """

    def __init__(self, index: int, field: str | None, message: str) -> None:
        self.index = index
        self.field = field
        self.reason = message
        where = f"signal[{index}]" + (f".{field}" if field else "")
        super().__init__(f"{where}: {message}")


class InvalidQueryError(SignalsError, ValueError):
    """A query argument (window, limit, names, timestamps) is invalid."""


class ExtensionUnavailableError(SignalsError):
    """A PostgreSQL extension is needed but not installed, or cannot be created; the message
    says what to change (e.g. ``shared_preload_libraries`` and a restart)."""


class TimescaleUnavailableError(ExtensionUnavailableError):
    """TimescaleDB was required but the ``timescaledb`` extension is not installed, or
    ``create_extension`` was asked for and the server cannot load it."""


class CitusUnavailableError(ExtensionUnavailableError):
    """Distribution was required but the ``citus`` extension is not installed in the
    database, or ``create_extension`` was asked for and the server cannot load it."""


class MigrationError(SignalsError):
    """An Alembic operation cannot run as written; the message says what to change."""


class SignalsWarning(UserWarning):
    """Base class of the warnings sa_signals issues (shown by Python's default filters)."""


class TimescaleUnavailableWarning(SignalsWarning):
    """A TimescaleDB step was skipped because the ``timescaledb`` extension is not installed."""


class MissingDependencyError(SignalsError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'sa_signals[{extra}]'"
        )


class ClientStateError(SignalsError, RuntimeError):
    """A client was used outside its context manager (``with`` / ``async with``)."""


class WriteError(SignalsError):
    """A write failed in the database or on the way to it; nothing of the call was kept.

    Raised by every public write call (clients and repositories) for database, driver,
    connection and pool failures; the original error is ``__cause__``. A store client's call
    was rolled back whole; a repository's call was rolled back to its savepoint, so the
    caller's transaction and its earlier work are intact and usable.

    ``sqlstate`` is the server's SQLSTATE when there is one (``"57014"`` for a statement
    timeout, ``"40P01"`` for a deadlock, ...); ``connection_lost`` tells that the connection
    broke or could not be opened (the pool discards it).
    """

    def __init__(
        self, message: str, *, sqlstate: str | None = None, connection_lost: bool = False
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.connection_lost = connection_lost


class QueryError(SignalsError):
    """A read failed in the database or on the way to it (server unreachable, missing table,
    statement timeout, ...); the driver's or SQLAlchemy's error is ``__cause__``.

    The query side's counterpart of :class:`WriteError`; invalid arguments raise
    :class:`InvalidQueryError` instead.
    """


class CitusUnavailableWarning(SignalsWarning):
    """A Citus step (an Alembic operation or comparison) was skipped because the ``citus``
    extension is not installed."""
