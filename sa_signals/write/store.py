"""The spec's writer clients: :class:`SignalsStoreClient` and :class:`AsyncSignalsStoreClient`.

``with SignalsStoreClient(uri) as client: client.write_signals(signals)``. Each call is one
transaction (all or nothing), whatever engine the client is given: an engine in ``AUTOCOMMIT``
mode (a query client's, or ``isolation_level="AUTOCOMMIT"``) gets a real transaction for each
call all the same. The algorithm is :mod:`sa_signals.write.writer`: one merge per call, rows
locked in one global order, so concurrent writers never deadlock one another.

Lifecycle, the same for all four clients: the engine is made on first entry (from a URI; an
engine passed in is used as is); leaving the outermost ``with`` / ``async with`` disposes the
pool of an engine the client made (never one passed in); the client can be entered again;
``close()`` / ``aclose()`` do the same and may be called any number of times.

Every failure is :class:`~sa_signals.errors.InvalidSignalError` (bad input) or
:class:`~sa_signals.errors.WriteError` (database, driver, connection, pool; the original is
``__cause__``), except an exception raised by the caller's own iterable, which propagates as is.
A deadlock (``40P01``), a serialization failure (``40001``), a lost connection or a server that
cannot be reached is retried a bounded number of times (``max_attempts``) when the input can be
read again (a list, tuple, ...); a generator is never replayed, so its call fails instead.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Collection, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from ..engine import async_engine, is_async_engine, normalize_url, sync_engine
from ..errors import ClientStateError, ConfigurationError, WriteError
from ..metrics import write_metrics
from ..result import WriteResult
from ..schema.model import resolve_table
from .frames import is_frame
from .writer import (
    DEFAULT_MAX_TUPLES_DECOMPRESSED,
    Progress,
    Writer,
    check_batch_size,
    database_error,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["RETRYABLE_SQLSTATES", "AsyncSignalsStoreClient", "SignalsStoreClient"]

#: SQLSTATEs after which the whole call is retried: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_UNKNOWN = "unknown"


def _retryable(error: WriteError) -> bool:
    # The transaction was rolled back whole (or never began), so running it again is safe.
    return error.connection_lost or error.sqlstate in RETRYABLE_SQLSTATES


def _connect_error(exc: BaseException) -> WriteError:
    if isinstance(exc, PoolTimeoutError):
        return WriteError(f"no connection available from the pool, nothing was kept: {exc}")
    # The driver's own message (SQLAlchemy's wrapper adds its SQL and a documentation link).
    reason = exc.orig if isinstance(exc, DBAPIError) else exc
    return WriteError(
        f"cannot connect to the database, nothing was kept: {reason}", connection_lost=True
    )


def _sqlalchemy_error(exc: SQLAlchemyError) -> WriteError:
    return database_error(exc) or WriteError(f"writing signals failed, nothing was kept: {exc}")


def _transaction_level(connection: Connection) -> str | None:
    """The isolation level to ask for so that a call is a transaction (None: it already is).

    Engines in ``AUTOCOMMIT`` mode commit every statement; the call then asks for the
    database's default level instead, for its own connection checkout only.
    """
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    if dbapi_connection is None:  # pragma: no cover - a checked-out connection has one
        return None
    try:
        autocommit = bool(dialect.detect_autocommit_setting(dbapi_connection))  # SQLAlchemy 2.1
    except (AttributeError, NotImplementedError):
        if dialect.name == "sqlite":
            autocommit = getattr(dbapi_connection, "isolation_level", "") is None
        else:
            autocommit = bool(getattr(dbapi_connection, "autocommit", False))
    if not autocommit:
        return None
    level = connection.default_isolation_level
    if not level or level == "AUTOCOMMIT":
        level = "SERIALIZABLE" if dialect.name == "sqlite" else "READ COMMITTED"
    return level


class _ClientBase:
    def __init__(
        self,
        batch_threshold: int,
        table: Any,
        registry: CollectorRegistry | None,
        max_attempts: int,
        max_tuples_decompressed: int | None,
        append_fast_path: bool = True,
    ) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be a positive int, got {max_attempts!r}")
        self.table = resolve_table(table)
        self._writer = Writer(
            self.table, batch_threshold, max_tuples_decompressed, append_fast_path
        )
        self.batch_threshold = batch_threshold
        self.max_attempts = max_attempts
        self.max_tuples_decompressed = max_tuples_decompressed
        # A clash with a collector the host registered is reported here, not after a write.
        self.metrics = write_metrics(registry)
        #: The :class:`WriteResult` of the last successful call (prefer ``upsert``'s return).
        self.last_result: WriteResult | None = None
        self._depth = 0
        # Isolation level each call asks for; detected on the first call of each engine.
        self._level: str | None = _UNKNOWN

    def _require_entered(self) -> None:
        if self._depth <= 0:
            name = type(self).__name__
            raise ClientStateError(
                f"{name} is not open: use it as a context manager ({name}(uri) as client)"
            )

    def _attempts(self, signals: Iterable[Any]) -> int:
        # Only inputs that can be read again are retried (DataFrames can).
        if isinstance(signals, Collection) or is_frame(signals):
            return self.max_attempts
        return 1

    def _run(
        self, connection: Connection, signals: Iterable[Any], size: int, progress: Progress
    ) -> WriteResult:
        """One attempt on a checked-out connection: one transaction, committed or rolled back."""
        if self._level == _UNKNOWN:
            self._level = _transaction_level(connection)
        if self._level is not None:
            connection.execution_options(isolation_level=self._level)
        with connection.begin():
            return self._writer.write(
                connection, signals, size, own_transaction=True, progress=progress
            )

    def _failed(self, signals: Iterable[Any], progress: Progress, started: float) -> None:
        self.metrics.failure(
            progress.method, Writer.given(signals, progress), time.perf_counter() - started
        )

    def _succeeded(self, result: WriteResult, started: float) -> WriteResult:
        self.metrics.success(result, time.perf_counter() - started)
        self.last_result = result
        return result

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(0.02 * (2**attempt) * (0.5 + random.random()))


class SignalsStoreClient(_ClientBase):
    """Writes signals to ``uri``: a plain ``postgresql://`` URI (psycopg), a SQLAlchemy URL with
    a driver, ``sqlite:///...``, or an existing :class:`~sqlalchemy.Engine` (never disposed by
    the client).

    ``batch_threshold``: calls of at least this many signals are staged with binary COPY on
    PostgreSQL. ``table``: the target table, a ``Table`` or a mapped class (default: the
    library's ``signals``). ``registry``: prometheus registry for the metrics (default: the
    global one). ``max_attempts``: see the module docstring. ``max_tuples_decompressed``:
    TimescaleDB's cap on tuples decompressed by one call (default 0: no cap; ``None``: the
    server's setting). ``append_fast_path``: calls whose keys an index probe proves new are
    COPYed straight into the table (:mod:`sa_signals.write.append`; ``False``: always merge).
    Extra keyword arguments go to ``create_engine``.

    ``signals`` may be objects, mappings or model instances, or a DataFrame: a
    ``pyarrow.Table`` / ``RecordBatch``, a polars or a pandas DataFrame
    (:mod:`sa_signals.write.frames`, the ``arrow`` extra).
    """

    def __init__(
        self,
        uri: str | URL | Engine,
        batch_threshold: int = 1000,
        *,
        table: Any = None,
        registry: CollectorRegistry | None = None,
        max_attempts: int = 3,
        max_tuples_decompressed: int | None = DEFAULT_MAX_TUPLES_DECOMPRESSED,
        append_fast_path: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(
            batch_threshold,
            table,
            registry,
            max_attempts,
            max_tuples_decompressed,
            append_fast_path,
        )
        if isinstance(uri, (str, URL)):
            normalize_url(uri)  # an unsupported backend fails here, as for the query clients
        self._uri = uri
        self._engine_kwargs = engine_kwargs
        self._engine: Engine | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def engine(self) -> Engine:
        """The client's engine (created on first use)."""
        if self._engine is None:
            if isinstance(self._uri, Engine):
                self._engine = self._uri
            else:
                self._engine = sync_engine(self._uri, **self._engine_kwargs)
                # Close pooled connections when the client is garbage collected unclosed.
                self._finalizer = weakref.finalize(self, self._engine.dispose)
        return self._engine

    def __enter__(self) -> SignalsStoreClient:
        _ = self.engine
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.close()

    def close(self) -> None:
        """Dispose of the pool of an engine this client made (one passed in is left alone).

        The client stays usable: entering it again opens new connections.
        """
        if self._engine is not None and self._finalizer is not None:
            self._engine.dispose()

    def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Write ``signals`` in one transaction and return what the database did with them.

        ``batch_size`` bounds how many signals are held at once (default: all of a sequence,
        else 10,000). Raises :class:`~sa_signals.errors.InvalidSignalError` for bad input and
        :class:`~sa_signals.errors.WriteError` when the database fails; either way nothing
        of the call is kept.
        """
        self._require_entered()
        return self._write(signals, Writer.batch_size_for(signals, batch_size))

    def write_signals(self, signals: Iterable[Any], batch_size: int = 1000) -> int:
        """Write ``signals`` in one transaction; return how many were accepted (the spec's API).

        Same behaviour as :meth:`upsert`, which returns the detailed counts (also kept in
        :attr:`last_result`).
        """
        self._require_entered()
        return self._write(signals, check_batch_size(batch_size)).received

    def _write(self, signals: Iterable[Any], size: int) -> WriteResult:
        engine = self.engine
        attempts = self._attempts(signals)
        started = time.perf_counter()
        for attempt in range(attempts):
            progress = Progress()
            try:
                try:
                    connection = engine.connect()
                except Exception as exc:
                    raise _connect_error(exc) from exc
                try:
                    with connection:
                        result = self._run(connection, signals, size, progress)
                except SQLAlchemyError as exc:  # BEGIN, COMMIT, ROLLBACK, closing
                    raise _sqlalchemy_error(exc) from exc
            except WriteError as exc:
                if attempt + 1 < attempts and _retryable(exc):
                    time.sleep(self._backoff(attempt))
                    continue
                self._failed(signals, progress, started)
                raise
            except BaseException:
                self._failed(signals, progress, started)
                raise
            return self._succeeded(result, started)
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncSignalsStoreClient(_ClientBase):
    """The asyncio twin of :class:`SignalsStoreClient` (plain ``postgresql://`` uses asyncpg,
    ``sqlite://`` aiosqlite); ``async with`` it and ``await client.upsert(...)`` or
    ``await client.write_signals(...)``. Same options and lifecycle.
    """

    def __init__(
        self,
        uri: str | URL | AsyncEngine,
        batch_threshold: int = 1000,
        *,
        table: Any = None,
        registry: CollectorRegistry | None = None,
        max_attempts: int = 3,
        max_tuples_decompressed: int | None = DEFAULT_MAX_TUPLES_DECOMPRESSED,
        append_fast_path: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(
            batch_threshold,
            table,
            registry,
            max_attempts,
            max_tuples_decompressed,
            append_fast_path,
        )
        if isinstance(uri, (str, URL)):
            normalize_url(uri, asynchronous=True)  # an unsupported backend fails here
        self._uri = uri
        self._engine_kwargs = engine_kwargs
        self._engine: AsyncEngine | None = None
        self._owns_engine = False

    @property
    def engine(self) -> AsyncEngine:
        """The client's async engine (created on first use)."""
        if self._engine is None:
            if is_async_engine(self._uri):
                self._engine = self._uri
            else:
                self._engine = async_engine(self._uri, **self._engine_kwargs)
                self._owns_engine = True
        return self._engine

    async def __aenter__(self) -> AsyncSignalsStoreClient:
        _ = self.engine
        self._depth += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            await self.aclose()

    async def aclose(self) -> None:
        """Dispose of the pool of an engine this client made (one passed in is left alone).

        The client stays usable: entering it again opens new connections.
        """
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()

    async def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Write ``signals`` in one transaction; see :meth:`SignalsStoreClient.upsert`."""
        self._require_entered()
        return await self._write(signals, Writer.batch_size_for(signals, batch_size))

    async def write_signals(self, signals: Iterable[Any], batch_size: int = 1000) -> int:
        """Write ``signals`` in one transaction; see :meth:`SignalsStoreClient.write_signals`."""
        self._require_entered()
        return (await self._write(signals, check_batch_size(batch_size))).received

    async def _write(self, signals: Iterable[Any], size: int) -> WriteResult:
        engine = self.engine
        attempts = self._attempts(signals)
        started = time.perf_counter()
        for attempt in range(attempts):
            progress = Progress()
            try:
                connection = await self._connect(engine)
                try:
                    try:
                        result = await connection.run_sync(self._run, signals, size, progress)
                    finally:
                        await connection.close()
                except SQLAlchemyError as exc:  # BEGIN, COMMIT, ROLLBACK, closing
                    raise _sqlalchemy_error(exc) from exc
            except WriteError as exc:
                if attempt + 1 < attempts and _retryable(exc):
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                self._failed(signals, progress, started)
                raise
            except BaseException:
                self._failed(signals, progress, started)
                raise
            return self._succeeded(result, started)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _connect(engine: AsyncEngine) -> AsyncConnection:
        connection = engine.connect()
        try:
            # asyncpg's own errors (ConnectionRefusedError...) reach us unwrapped from here.
            await connection.start()
        except Exception as exc:
            raise _connect_error(exc) from exc
        return connection
