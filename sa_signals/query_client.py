"""The spec's query clients: ``SignalsQueryClient`` (sync) and ``AsyncSignalsQueryClient``.

``with SignalsQueryClient("postgresql://user@host/db") as client: client.get_latest_signals(...)``.
Each client makes its engine once (from a URI, or uses the ``Engine`` it is given) and may be
entered again after leaving; leaving disposes the pool of an engine the client made. Every
query runs on a pooled connection checked out for that call only; the client's own engine is in
autocommit mode because each query is one statement (no BEGIN/ROLLBACK round trips, no idle
transactions between calls).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import URL

from .engine import async_engine, sync_engine
from .errors import ClientStateError, ConfigurationError
from .queries import ActiveSignal, SignalBucket, SignalMetrics, SignalRecord, SignalSummary
from .query_repository import AsyncSignalQueryRepository, SignalQueryRepository, _default_table
from .status import StorageStats, storage_stats

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["AsyncSignalsQueryClient", "SignalsQueryClient"]


def _engine_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    # Reads are single statements: autocommit spares a BEGIN and a ROLLBACK per call.
    options.setdefault("isolation_level", "AUTOCOMMIT")
    return options


class SignalsQueryClient:
    """Synchronous read client; use it as a context manager.

    ``uri`` is a database URI (``postgresql://user@host/db``, ``sqlite:///signals.db``), a
    :class:`~sqlalchemy.engine.URL` or an existing :class:`~sqlalchemy.Engine` (used as is,
    never disposed by the client). ``engine_kwargs`` go to ``create_engine`` (e.g.
    ``poolclass=NullPool``). ``table`` defaults to ``Signal.__table__``.
    """

    def __init__(
        self, uri: str | URL | Engine, *, table: Table | None = None, **engine_kwargs: Any
    ) -> None:
        self.table = table if table is not None else _default_table()
        self._owns_engine = not isinstance(uri, Engine)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing Engine")
        self.engine: Engine = sync_engine(uri, **_engine_options(engine_kwargs))
        self._depth = 0

    def __enter__(self) -> SignalsQueryClient:
        self._depth += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._owns_engine:
            self.engine.dispose()

    def _connect(self) -> Connection:
        self._check_open()
        return self.engine.connect()

    def _check_open(self) -> None:
        if self._depth <= 0:
            raise ClientStateError(
                "SignalsQueryClient is not open: "
                "use it as 'with SignalsQueryClient(uri) as client:'"
            )

    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
    ) -> list[SignalRecord]:
        """The ``limit`` newest signals of ``provider``/``symbol``, newest first then by name."""
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_latest_signals(provider, symbol, limit, signal_names)

    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> list[SignalRecord]:
        """Signals with ``start_ts <= ts <= end_ts`` (``None``: now), newest first.

        A naive datetime is local time, so ``datetime.now() - timedelta(hours=1)`` is the
        last hour.
        """
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_signals_history(
                provider, symbol, start_ts, end_ts, signal_names, limit
            )

    def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Count, min, max, avg, stddev, first/last timestamp and last value of one series."""
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_signal_metrics(provider, symbol, signal_name, hours_back)

    def get_active_signals(self, provider: str, minutes_back: float = 5) -> list[ActiveSignal]:
        """The latest signal per ``(symbol, name)`` seen in the last ``minutes_back`` minutes."""
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_active_signals(provider, minutes_back)

    def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Totals of ``provider``'s signals over the last ``hours_back`` hours."""
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_signal_summary(provider, hours_back)

    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
    ) -> list[SignalBucket]:
        """Per-bucket count/min/max/avg/last of one series (last 24 hours by default)."""
        with self._connect() as connection:
            repository = SignalQueryRepository(connection, self.table)
            return repository.get_signal_buckets(
                provider, symbol, signal_name, bucket, start_ts=start_ts, end_ts=end_ts
            )

    def storage_stats(self, *, exact_count: bool = False) -> StorageStats:
        """Storage statistics of the table (:func:`sa_signals.status.storage_stats`)."""
        self._check_open()
        with self.engine.connect() as connection:
            return storage_stats(connection, self.table, exact_count=exact_count)


class AsyncSignalsQueryClient:
    """Asynchronous read client (asyncpg / aiosqlite); use it with ``async with``.

    Same arguments and methods as :class:`SignalsQueryClient`; ``uri`` may be an
    :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.
    """

    def __init__(
        self,
        uri: str | URL | AsyncEngine,
        *,
        table: Table | None = None,
        **engine_kwargs: Any,
    ) -> None:
        from sqlalchemy.ext.asyncio import AsyncEngine

        self.table = table if table is not None else _default_table()
        self._owns_engine = not isinstance(uri, AsyncEngine)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing AsyncEngine")
        self.engine: AsyncEngine = async_engine(uri, **_engine_options(engine_kwargs))
        self._depth = 0

    async def __aenter__(self) -> AsyncSignalsQueryClient:
        self._depth += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0 and self._owns_engine:
            await self.engine.dispose()

    def _connect(self) -> AsyncConnection:
        self._check_open()
        return self.engine.connect()

    def _check_open(self) -> None:
        if self._depth <= 0:
            raise ClientStateError(
                "AsyncSignalsQueryClient is not open: use it as "
                "'async with AsyncSignalsQueryClient(uri) as client:'"
            )

    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
    ) -> list[SignalRecord]:
        """Async :meth:`SignalsQueryClient.get_latest_signals`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_latest_signals(provider, symbol, limit, signal_names)

    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> list[SignalRecord]:
        """Async :meth:`SignalsQueryClient.get_signals_history`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_signals_history(
                provider, symbol, start_ts, end_ts, signal_names, limit
            )

    async def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Async :meth:`SignalsQueryClient.get_signal_metrics`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_signal_metrics(provider, symbol, signal_name, hours_back)

    async def get_active_signals(
        self, provider: str, minutes_back: float = 5
    ) -> list[ActiveSignal]:
        """Async :meth:`SignalsQueryClient.get_active_signals`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_active_signals(provider, minutes_back)

    async def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Async :meth:`SignalsQueryClient.get_signal_summary`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_signal_summary(provider, hours_back)

    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
    ) -> list[SignalBucket]:
        """Async :meth:`SignalsQueryClient.get_signal_buckets`."""
        async with self._connect() as connection:
            repository = AsyncSignalQueryRepository(connection, self.table)
            return await repository.get_signal_buckets(
                provider, symbol, signal_name, bucket, start_ts=start_ts, end_ts=end_ts
            )

    async def storage_stats(self, *, exact_count: bool = False) -> StorageStats:
        """Async :meth:`SignalsQueryClient.storage_stats`."""
        self._check_open()
        async with self.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: storage_stats(sync, self.table, exact_count=exact_count)
            )
