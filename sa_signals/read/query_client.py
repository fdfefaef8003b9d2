"""The spec's query clients: ``SignalsQueryClient`` (sync) and ``AsyncSignalsQueryClient``.

``with SignalsQueryClient("postgresql://user@host/db") as client: client.get_latest_signals(...)``.
A client makes its engine on first entry (from a URI; an ``Engine`` it is given is used as is),
keeps it, and disposes its pool when the outermost ``with`` ends; it may be entered again, and
``close()`` / ``aclose()`` release the pool at any time. Every query runs on a pooled connection
checked out for that call only; the client's own engine is in autocommit mode because each
query is one statement (no BEGIN/ROLLBACK round trips, no idle transactions between calls), and
on PostgreSQL its sessions use TimeZone UTC so psycopg returns UTC timestamps as they are. On
psycopg and asyncpg, plans run directly on the pooled driver connection when nothing would see
the difference (:mod:`sa_signals.read.direct`). Bad arguments raise
:class:`~sa_signals.errors.InvalidQueryError`; every other failure of a call raises
:class:`~sa_signals.errors.QueryError` with the driver's error as ``__cause__``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sqlalchemy import Engine, Table, event
from sqlalchemy.engine import URL, Dialect

from ..engine import _check_driver, async_engine, is_async_engine, normalize_url, sync_engine
from ..errors import ClientStateError, ConfigurationError
from ..schema.model import resolve_table
from ..status import StorageStats, storage_stats
from .direct import DirectRunner
from .failures import driver_error, query_error
from .frames import Format, Shape, adbc_table, check_format, convert, require_pyarrow, uses_adbc
from .queries import (
    TIMESCALE_PROBE,
    ActiveSignal,
    BucketFunction,
    QueryPlan,
    SignalBucket,
    SignalMetrics,
    SignalRecord,
    SignalSummary,
)
from .query_repository import AsyncSignalQueryMethods, SignalQueryMethods

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["AsyncSignalsQueryClient", "SignalsQueryClient"]

T = TypeVar("T")


def _engine_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    # Reads are single statements: autocommit spares a BEGIN and a ROLLBACK per call, and
    # leaves nothing to reset when a connection goes back to the pool.
    options.setdefault("isolation_level", "AUTOCOMMIT")
    if options["isolation_level"] == "AUTOCOMMIT":
        options.setdefault("pool_reset_on_return", None)
    return options


def _utc_session(dbapi_connection: Any, record: Any) -> None:
    # psycopg hands out timestamps in the session time zone; in UTC they are already what the
    # queries return (no per-value conversion). Committed: a rolled-back SET would not stick.
    dbapi_connection.execute("SET TIME ZONE 'UTC'")
    if not dbapi_connection.autocommit:
        dbapi_connection.commit()


class _ClientQueries(SignalQueryMethods):
    """The repository's query methods, each call on its own pooled connection."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self.engine = engine
        self.table = table
        self._direct = DirectRunner(engine)
        self._function: BucketFunction | None = None
        self._uses_adbc: bool | None = None

    def _query_dialect(self) -> Dialect:
        return self.engine.dialect

    def _query_engine(self) -> Engine:
        return self.engine

    def _run_plan(self, plan: QueryPlan[T]) -> T:
        statement = plan.statement
        if statement is None:
            return plan.finish([])
        try:
            rows: Sequence[Any] | None = self._direct.rows(plan) if self._direct.enabled else None
            if rows is None:
                with self.engine.connect() as connection:
                    rows = connection.execute(statement, plan.parameters).all()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return plan.finish(rows)

    def _run_frame(self, plan: QueryPlan[Any], shape: Shape, format: object) -> Any:
        # PostgreSQL: through ADBC, Arrow columns straight from the server's binary rows.
        checked = check_format(format)
        if checked == "dicts" or not self._adbc():
            return super()._run_frame(plan, shape, checked)
        require_pyarrow()
        try:
            table = adbc_table(self.engine, plan, shape)
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return convert(table, checked)

    def _adbc(self) -> bool:
        if self._uses_adbc is None:
            self._uses_adbc = uses_adbc(self.engine)
        return self._uses_adbc

    def _has_timescale(self) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(TIMESCALE_PROBE).first() is not None

    def _known_bucket_function(self) -> BucketFunction | None:
        # Known once per client: spares a lookup (and a checkout) per call.
        if self._function is None:
            self._function = super()._known_bucket_function()
        return self._function


class _AsyncClientQueries(AsyncSignalQueryMethods):
    """The async repository's query methods, each call on its own pooled connection."""

    def __init__(self, engine: AsyncEngine, table: Table) -> None:
        from sqlalchemy.util import greenlet_spawn

        self.engine = engine
        self.table = table
        self._direct = DirectRunner(engine.sync_engine)
        self._function: BucketFunction | None = None
        self._uses_adbc: bool | None = None
        self._spawn = greenlet_spawn

    def _query_dialect(self) -> Dialect:
        return self.engine.dialect

    def _query_engine(self) -> Engine:
        return self.engine.sync_engine

    async def _run_plan(self, plan: QueryPlan[T]) -> T:
        statement = plan.statement
        if statement is None:
            return plan.finish([])
        try:
            rows: Sequence[Any] | None = None
            if self._direct.enabled:
                # One greenlet switch for checkout, execute, fetch and checkin together.
                rows = await self._spawn(self._direct.rows, plan)
            if rows is None:
                async with self.engine.connect() as connection:
                    result = await connection.execute(statement, plan.parameters)
                    rows = result.all()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return plan.finish(rows)

    async def _run_frame(self, plan: QueryPlan[Any], shape: Shape, format: object) -> Any:
        # PostgreSQL: through ADBC (blocking, so in a worker thread).
        checked = check_format(format)
        if checked == "dicts" or not self._adbc():
            return await super()._run_frame(plan, shape, checked)
        require_pyarrow()
        try:
            table = await asyncio.to_thread(adbc_table, self.engine.sync_engine, plan, shape)
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return convert(table, checked)

    def _adbc(self) -> bool:
        if self._uses_adbc is None:
            self._uses_adbc = uses_adbc(self.engine.sync_engine)
        return self._uses_adbc

    async def _has_timescale(self) -> bool:
        async with self.engine.connect() as connection:
            result = await connection.execute(TIMESCALE_PROBE)
            return result.first() is not None

    def _known_bucket_function(self) -> BucketFunction | None:
        if self._function is None:
            self._function = super()._known_bucket_function()
        return self._function


class SignalsQueryClient:
    """Synchronous read client; use it as a context manager.

    ``uri`` is a database URI (``postgresql://user@host/db``, ``sqlite:///signals.db``), a
    :class:`~sqlalchemy.engine.URL` or an existing :class:`~sqlalchemy.Engine` (used as is,
    never disposed by the client). ``engine_kwargs`` go to ``create_engine`` (e.g.
    ``poolclass=NullPool``). ``table`` defaults to ``Signal.__table__``.

    Lifecycle (the same for all four clients): the client makes its engine on first entry and
    keeps it; leaving the outermost ``with`` disposes the pool of an engine the client made;
    the client may be entered again. :meth:`close` releases that pool at any time (idempotent).
    """

    def __init__(self, uri: str | URL | Engine, *, table: Any = None, **engine_kwargs: Any) -> None:
        self.table = resolve_table(table)
        self._owns_engine = not isinstance(uri, Engine)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing Engine")
        if not isinstance(uri, Engine):
            # A bad URI or a missing driver fails here; the engine is made on first entry.
            _check_driver(normalize_url(uri), asynchronous=False)
        self._uri = uri
        self._engine_kwargs = engine_kwargs
        self._engine: Engine | None = None
        self._queries: _ClientQueries | None = None
        self._depth = 0

    @property
    def engine(self) -> Engine:
        """The engine: the one given, or the client's own (made on first entry, then kept)."""
        if self._engine is None:
            if isinstance(self._uri, Engine):
                self._engine = self._uri
            else:
                self._engine = sync_engine(self._uri, **_engine_options(self._engine_kwargs))
                if self._engine.dialect.driver == "psycopg":
                    event.listen(self._engine, "connect", _utc_session)
        return self._engine

    def __enter__(self) -> SignalsQueryClient:
        if self._queries is None:
            self._queries = _ClientQueries(self.engine, self.table)
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
        """Close the pooled connections of the engine this client made (never of one given).

        Idempotent; the client may still be entered again (the engine opens new connections).
        """
        if self._owns_engine and self._engine is not None:
            self._engine.dispose()

    def _open(self) -> _ClientQueries:
        if self._depth <= 0 or self._queries is None:
            raise ClientStateError(
                "SignalsQueryClient is not open: "
                "use it as 'with SignalsQueryClient(uri) as client:'"
            )
        return self._queries

    @overload
    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalRecord]: ...

    @overload
    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Format = "dicts",
    ) -> Any:
        """The ``limit`` newest signals of ``provider``/``symbol``, newest first then by name."""
        queries: Any = self._open()  # one call for every format
        return queries.get_latest_signals(provider, symbol, limit, signal_names, format=format)

    @overload
    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalRecord]: ...

    @overload
    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Format = "dicts",
    ) -> Any:
        """Signals with ``start_ts <= ts <= end_ts`` (``None``: now), newest first.

        A naive datetime is local time, so ``datetime.now() - timedelta(hours=1)`` is the
        last hour.
        """
        queries: Any = self._open()  # one call for every format
        return queries.get_signals_history(
            provider, symbol, start_ts, end_ts, signal_names, limit, format=format
        )

    def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Count, min, max, avg, stddev, first/last timestamp and last value of one series."""
        return self._open().get_signal_metrics(provider, symbol, signal_name, hours_back)

    @overload
    def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[ActiveSignal]: ...

    @overload
    def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Format = "dicts",
    ) -> Any:
        """The latest signal per ``(symbol, name)`` seen in the last ``minutes_back`` minutes."""
        queries: Any = self._open()  # one call for every format
        return queries.get_active_signals(provider, minutes_back, format=format)

    def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Totals of ``provider``'s signals over the last ``hours_back`` hours."""
        return self._open().get_signal_summary(provider, hours_back)

    @overload
    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalBucket]: ...

    @overload
    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Format = "dicts",
    ) -> Any:
        """Per-bucket count/min/max/avg/last of one series, oldest bucket first.

        The window ends at ``end_ts`` (``None``: now) and starts ``hours_back`` hours or
        ``minutes_back`` minutes before it, or at ``start_ts`` (at most one of the three; by
        default 24 hours).
        """
        queries: Any = self._open()  # one call for every format
        return queries.get_signal_buckets(
            provider,
            symbol,
            signal_name,
            bucket,
            hours_back=hours_back,
            minutes_back=minutes_back,
            start_ts=start_ts,
            end_ts=end_ts,
            format=format,
        )

    def storage_stats(self, *, exact_count: bool = False) -> StorageStats:
        """Storage statistics of the table (:func:`sa_signals.status.storage_stats`)."""
        queries = self._open()
        try:
            with queries.engine.connect() as connection:
                return storage_stats(connection, self.table, exact_count=exact_count)
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)


class AsyncSignalsQueryClient:
    """Asynchronous read client (asyncpg / aiosqlite); use it with ``async with``.

    Same arguments, methods and lifecycle as :class:`SignalsQueryClient`; ``uri`` may be an
    :class:`~sqlalchemy.ext.asyncio.AsyncEngine`, and :meth:`aclose` is the async ``close``.
    """

    def __init__(
        self,
        uri: str | URL | AsyncEngine,
        *,
        table: Any = None,
        **engine_kwargs: Any,
    ) -> None:
        self.table = resolve_table(table)
        self._owns_engine = not is_async_engine(uri)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing AsyncEngine")
        if self._owns_engine:
            # A bad URI or a missing driver fails here; the engine is made on first entry.
            _check_driver(normalize_url(uri, asynchronous=True), asynchronous=True)  # type: ignore[arg-type]
        self._uri = uri
        self._engine_kwargs = engine_kwargs
        self._engine: AsyncEngine | None = None
        self._queries: _AsyncClientQueries | None = None
        self._depth = 0

    @property
    def engine(self) -> AsyncEngine:
        """The engine: the one given, or the client's own (made on first entry, then kept)."""
        if self._engine is None:
            if is_async_engine(self._uri):
                self._engine = self._uri
            else:
                self._engine = async_engine(self._uri, **_engine_options(self._engine_kwargs))
        return self._engine

    async def __aenter__(self) -> AsyncSignalsQueryClient:
        if self._queries is None:
            self._queries = _AsyncClientQueries(self.engine, self.table)
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
        """Async :meth:`SignalsQueryClient.close`."""
        if self._owns_engine and self._engine is not None:
            await self._engine.dispose()

    def _open(self) -> _AsyncClientQueries:
        if self._depth <= 0 or self._queries is None:
            raise ClientStateError(
                "AsyncSignalsQueryClient is not open: use it as "
                "'async with AsyncSignalsQueryClient(uri) as client:'"
            )
        return self._queries

    @overload
    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalRecord]: ...

    @overload
    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
        *,
        format: Format = "dicts",
    ) -> Any:
        """Async :meth:`SignalsQueryClient.get_latest_signals`."""
        queries: Any = self._open()  # one call for every format
        return await queries.get_latest_signals(
            provider, symbol, limit, signal_names, format=format
        )

    @overload
    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalRecord]: ...

    @overload
    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
        *,
        format: Format = "dicts",
    ) -> Any:
        """Async :meth:`SignalsQueryClient.get_signals_history`."""
        queries: Any = self._open()  # one call for every format
        return await queries.get_signals_history(
            provider, symbol, start_ts, end_ts, signal_names, limit, format=format
        )

    async def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Async :meth:`SignalsQueryClient.get_signal_metrics`."""
        return await self._open().get_signal_metrics(provider, symbol, signal_name, hours_back)

    @overload
    async def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["dicts"] = "dicts",
    ) -> list[ActiveSignal]: ...

    @overload
    async def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    async def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    async def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    async def get_active_signals(
        self,
        provider: str,
        minutes_back: float = 5,
        *,
        format: Format = "dicts",
    ) -> Any:
        """Async :meth:`SignalsQueryClient.get_active_signals`."""
        queries: Any = self._open()  # one call for every format
        return await queries.get_active_signals(provider, minutes_back, format=format)

    async def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Async :meth:`SignalsQueryClient.get_signal_summary`."""
        return await self._open().get_signal_summary(provider, hours_back)

    @overload
    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["dicts"] = "dicts",
    ) -> list[SignalBucket]: ...

    @overload
    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["arrow"],
    ) -> pyarrow.Table: ...

    @overload
    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["polars"],
    ) -> polars.DataFrame: ...

    @overload
    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Literal["pandas"],
    ) -> pandas.DataFrame: ...

    async def get_signal_buckets(
        self,
        provider: str,
        symbol: str,
        signal_name: str,
        bucket: timedelta = timedelta(minutes=1),
        *,
        hours_back: float | None = None,
        minutes_back: float | None = None,
        start_ts: datetime | None = None,
        end_ts: datetime | None = None,
        format: Format = "dicts",
    ) -> Any:
        """Async :meth:`SignalsQueryClient.get_signal_buckets`."""
        queries: Any = self._open()  # one call for every format
        return await queries.get_signal_buckets(
            provider,
            symbol,
            signal_name,
            bucket,
            hours_back=hours_back,
            minutes_back=minutes_back,
            start_ts=start_ts,
            end_ts=end_ts,
            format=format,
        )

    async def storage_stats(self, *, exact_count: bool = False) -> StorageStats:
        """Async :meth:`SignalsQueryClient.storage_stats`."""
        queries = self._open()
        try:
            async with queries.engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: storage_stats(sync, self.table, exact_count=exact_count)
                )
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
