"""The spec's writer clients: :class:`SignalsStoreClient` and :class:`AsyncSignalsStoreClient`.

``with SignalsStoreClient(uri) as client: client.write_signals(signals)``. Each call is one
transaction (all or nothing). The engine and its pool are made once per client, on first entry,
and kept across ``with`` blocks (entering again is cheap); ``close()`` / ``aclose()`` release
them. A deadlock (``40P01``), a serialization failure (``40001``) or a lost connection is retried
a bounded number of times (``max_attempts``) when the input can be read again (a list, tuple,
...); a generator is never replayed, so its call fails instead.
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
from sqlalchemy import Engine, Table
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..engine import async_engine, is_async_engine, sync_engine
from ..errors import ClientStateError, ConfigurationError, WriteError
from ..metrics import write_metrics
from ..result import WriteResult
from .repository import _Writer

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["RETRYABLE_SQLSTATES", "AsyncSignalsStoreClient", "SignalsStoreClient"]

#: SQLSTATEs after which the whole call is retried: deadlock_detected, serialization_failure.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def _retryable(exc: DBAPIError) -> bool:
    # A lost connection (the pool then discards it and its older siblings) or a deadlock /
    # serialization failure: the transaction was rolled back whole, so running it again is safe.
    return exc.connection_invalidated or _sqlstate(exc) in RETRYABLE_SQLSTATES


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")


class _ClientBase:
    def __init__(
        self,
        batch_threshold: int,
        table: Table | None,
        registry: CollectorRegistry | None,
        max_attempts: int,
    ) -> None:
        if isinstance(batch_threshold, bool) or not isinstance(batch_threshold, int):
            raise ConfigurationError(f"batch_threshold must be an int, got {batch_threshold!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be a positive int, got {max_attempts!r}")
        # Validates table and threshold now rather than at the first write.
        self.table: Table = _Writer(table, batch_threshold).table
        self.batch_threshold = batch_threshold
        self.max_attempts = max_attempts
        self.metrics = write_metrics(registry)
        #: The :class:`WriteResult` of the last successful ``write_signals`` call.
        self.last_result: WriteResult | None = None
        self._depth = 0

    def _require_entered(self) -> None:
        if self._depth <= 0:
            name = type(self).__name__
            raise ClientStateError(
                f"{name} is not open: use it as a context manager ({name}(uri) as client)"
            )

    def _attempts(self, signals: Iterable[Any]) -> int:
        # Only inputs that can be iterated again are retried.
        return self.max_attempts if isinstance(signals, Collection) else 1

    def _record_failure(self, writer: _Writer, started: float) -> None:
        self.metrics.failure(writer.method, writer.seen, time.perf_counter() - started)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(0.02 * (2**attempt) * (0.5 + random.random()))


class SignalsStoreClient(_ClientBase):
    """Writes signals to ``uri``: a plain ``postgresql://`` URI (psycopg), a SQLAlchemy URL with
    a driver, ``sqlite:///...``, or an existing :class:`~sqlalchemy.Engine` (not disposed by us).

    ``batch_threshold``: batches at least this large use COPY on PostgreSQL. ``table``: the
    target table (default: the library's ``signals``). ``registry``: prometheus registry for the
    metrics (default: the global one). Extra keyword arguments go to ``create_engine``.
    A connection found dead is discarded by the pool (with every older one) and the call is
    retried when the input can be read again; no ``pool_pre_ping`` round trip per call.
    """

    def __init__(
        self,
        uri: str | URL | Engine,
        batch_threshold: int = 1000,
        *,
        table: Table | None = None,
        registry: CollectorRegistry | None = None,
        max_attempts: int = 3,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(batch_threshold, table, registry, max_attempts)
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

    def close(self) -> None:
        """Dispose of the engine this client created (an engine passed in is left alone)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._engine = None

    def write_signals(self, signals: Iterable[Any], batch_size: int = 1000) -> int:
        """Write ``signals`` in one transaction; return how many were accepted.

        Raises :class:`~sa_signals.errors.InvalidSignalError` for bad input and
        :class:`~sa_signals.errors.WriteError` when the database fails; either way nothing of
        the call is kept. The detailed counts are in :attr:`last_result`.
        """
        self._require_entered()
        _check_batch_size(batch_size)
        engine = self.engine
        attempts = self._attempts(signals)
        started = time.perf_counter()
        for attempt in range(attempts):
            writer = _Writer(self.table, self.batch_threshold)
            try:
                with Session(engine) as session, session.begin():
                    result = writer.write(session, signals, batch_size)
            except DBAPIError as exc:
                if attempt + 1 < attempts and _retryable(exc):
                    time.sleep(self._backoff(attempt))
                    continue
                self._record_failure(writer, started)
                raise WriteError(f"writing signals failed, nothing was kept: {exc.orig}") from exc
            except BaseException:
                self._record_failure(writer, started)
                raise
            self.metrics.success(result, time.perf_counter() - started)
            self.last_result = result
            return result.received
        raise AssertionError("unreachable")  # pragma: no cover


class AsyncSignalsStoreClient(_ClientBase):
    """The asyncio twin of :class:`SignalsStoreClient` (plain ``postgresql://`` uses asyncpg,
    ``sqlite://`` aiosqlite); ``async with`` it and ``await client.write_signals(...)``.
    Call :meth:`aclose` to release the pool when done with the client for good.
    """

    def __init__(
        self,
        uri: str | URL | AsyncEngine,
        batch_threshold: int = 1000,
        *,
        table: Table | None = None,
        registry: CollectorRegistry | None = None,
        max_attempts: int = 3,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__(batch_threshold, table, registry, max_attempts)
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

    async def aclose(self) -> None:
        """Dispose of the engine this client created (an engine passed in is left alone)."""
        if self._engine is not None and self._owns_engine:
            await self._engine.dispose()
        self._engine = None
        self._owns_engine = False

    async def write_signals(self, signals: Iterable[Any], batch_size: int = 1000) -> int:
        """Write ``signals`` in one transaction; see :meth:`SignalsStoreClient.write_signals`."""
        from sqlalchemy.ext.asyncio import AsyncSession

        self._require_entered()
        _check_batch_size(batch_size)
        engine = self.engine
        attempts = self._attempts(signals)
        started = time.perf_counter()
        for attempt in range(attempts):
            writer = _Writer(self.table, self.batch_threshold)
            try:
                async with AsyncSession(engine) as session, session.begin():
                    result = await session.run_sync(writer.write, signals, batch_size)
            except DBAPIError as exc:
                if attempt + 1 < attempts and _retryable(exc):
                    await asyncio.sleep(self._backoff(attempt))
                    continue
                self._record_failure(writer, started)
                raise WriteError(f"writing signals failed, nothing was kept: {exc.orig}") from exc
            except BaseException:
                self._record_failure(writer, started)
                raise
            self.metrics.success(result, time.perf_counter() - started)
            self.last_result = result
            return result.received
        raise AssertionError("unreachable")  # pragma: no cover
