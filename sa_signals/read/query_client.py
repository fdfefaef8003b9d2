"""The spec's query clients: ``SignalsQueryClient`` (sync) and ``AsyncSignalsQueryClient``.

``with SignalsQueryClient("postgresql://user@host/db") as client: client.get_latest_signals(...)``.
Each client makes its engine once (from a URI, or uses the ``Engine`` it is given) and may be
entered again after leaving; leaving disposes the pool of an engine the client made. Every
query runs on a pooled connection checked out for that call only; the client's own engine is in
autocommit mode because each query is one statement (no BEGIN/ROLLBACK round trips, no idle
transactions between calls), and on PostgreSQL its sessions use TimeZone UTC so psycopg returns
UTC timestamps as they are. On psycopg and asyncpg, statements that need nothing from
SQLAlchemy at execution time run directly on the pooled driver connection (see
``_DirectRunner``); the results are the same, the per-call overhead much smaller.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine, Table, event
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from ..engine import async_engine, is_async_engine, sync_engine
from ..errors import ClientStateError, ConfigurationError
from ..schema.model import resolve_table
from ..status import StorageStats, storage_stats
from .queries import (
    ActiveSignal,
    BucketFunction,
    QueryPlan,
    SignalBucket,
    SignalMetrics,
    SignalRecord,
    SignalSummary,
    bucket_function_for,
)
from .query_repository import (
    _TIMESCALE,
    AsyncSignalQueryMethods,
    AsyncSignalQueryRepository,
    SignalQueryMethods,
    SignalQueryRepository,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["AsyncSignalsQueryClient", "SignalsQueryClient"]

T = TypeVar("T")


def _engine_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(kwargs)
    # Reads are single statements: autocommit spares a BEGIN and a ROLLBACK per call.
    options.setdefault("isolation_level", "AUTOCOMMIT")
    return options


def _utc_session(dbapi_connection: Any, record: Any) -> None:
    # psycopg hands out timestamps in the session time zone; in UTC they are already what the
    # queries return (no per-value conversion). Committed: a rolled-back SET would not stick.
    dbapi_connection.execute("SET TIME ZONE 'UTC'")
    if not dbapi_connection.autocommit:
        dbapi_connection.commit()


_Compiled = tuple[str, dict[str, Any], tuple[str, ...] | None]


class _DirectRunner:
    """Runs plans straight on the pooled psycopg connection when that changes nothing.

    ``Connection.execute`` costs tens of microseconds per call (cache key, execution context,
    result wrapping), a third of a small query's latency. A statement qualifies when its
    compiled SQL needs no per-call work from SQLAlchemy: no bind or result processors (checked
    against the driver's column types on first run), no expanding or literal parameters, no
    engine events, echo or execution options that would see or rewrite the statement. Anything else
    takes the ordinary path. Driver errors are raised wrapped as SQLAlchemy's ``DBAPIError``
    subclasses, as ``Connection.execute`` would.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # asyncpg goes through SQLAlchemy's adapted cursor (run inside greenlet_spawn).
        self.enabled = engine.dialect.driver in ("psycopg", "asyncpg")
        # statement -> (SQL, parameters with values of their own, positional order or None),
        # or None: not eligible.
        self._compiled: dict[Executable, _Compiled | None] = {}
        self._checked: set[Executable] = set()
        self._columns: dict[Executable, list[Any]] = {}

    def _eligible(self) -> bool:
        engine = self.engine
        return (
            self.enabled
            and not engine._has_events
            and not engine.dialect._has_events
            and not engine._should_log_info()
            and set(engine.get_execution_options()) <= {"isolation_level"}
        )

    def _compile(self, statement: Executable) -> _Compiled | None:
        try:
            return self._compiled[statement]
        except KeyError:
            pass
        dialect = self.engine.dialect
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        entry: _Compiled | None = None
        if (
            not compiled.post_compile_params
            and not compiled.literal_execute_params
            and not getattr(compiled, "_bind_processors", True)
        ):
            fixed = {
                name: bind.effective_value
                for bind, name in compiled.bind_names.items()
                if not bind.required
            }
            order = tuple(compiled.positiontup) if compiled.positional else None
            entry = (compiled.string, fixed, order)
            self._columns[statement] = [column[3] for column in compiled._result_columns]
        self._compiled[statement] = entry
        return entry

    def rows(self, plan: QueryPlan[Any]) -> list[Any] | None:
        """The plan's rows run directly, or ``None``: use the ordinary path."""
        statement = plan.statement
        if statement is None or not self._eligible():
            return None
        entry = self._compile(statement)
        if entry is None:
            return None
        sql, fixed, order = entry
        named = {**fixed, **plan.parameters} if fixed else plan.parameters
        parameters: Any = named if order is None else tuple(named[key] for key in order)
        dialect = self.engine.dialect
        error = dialect.loaded_dbapi.Error
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(sql, parameters)
                if statement not in self._checked and not self._check(
                    statement, cursor.description
                ):
                    return None
                rows = list(cursor.fetchall())
            finally:
                cursor.close()
        except error as exc:
            # The exception SQLAlchemy users expect (never a second run of the query); a
            # connection the driver reports as lost is not returned to the pool.
            lost = dialect.is_disconnect(exc, raw.dbapi_connection, None)
            if lost:
                raw.invalidate(exc)
            raise DBAPIError.instance(
                sql, parameters, exc, error, connection_invalidated=lost, dialect=dialect
            ) from exc
        finally:
            raw.close()
        return rows

    def _check(self, statement: Executable, description: Any) -> bool:
        dialect = self.engine.dialect
        types = self._columns.get(statement, [])
        ok = len(types) == len(description) and all(
            type_.dialect_impl(dialect).result_processor(dialect, column[1]) is None
            for type_, column in zip(types, description, strict=True)
        )
        if ok:
            self._checked.add(statement)
        else:
            self._compiled[statement] = None
        return ok


class _ClientQueries(SignalQueryMethods):
    """The repository's query methods, each call on its own pooled connection."""

    def __init__(self, engine: Engine, table: Table) -> None:
        self.engine = engine
        self.table = table
        self._direct = _DirectRunner(engine)

    def _query_dialect(self) -> Dialect:
        return self.engine.dialect

    def _run_plan(self, plan: QueryPlan[T]) -> T:
        if plan.statement is None:
            return plan.finish([])
        rows = self._direct.rows(plan)
        if rows is not None:
            return plan.finish(rows)
        with self.engine.connect() as connection:
            return plan.finish(connection.execute(plan.statement, plan.parameters).all())

    def _bucket_function(self) -> BucketFunction:
        dialect = self.engine.dialect
        if dialect.name != "postgresql" or self.engine in _TIMESCALE:
            # Known without asking: spares a connection checkout per call.
            return bucket_function_for(dialect, _TIMESCALE.get(self.engine, False))
        with self.engine.connect() as connection:
            return SignalQueryRepository(connection, self.table)._bucket_function()


class _AsyncClientQueries(AsyncSignalQueryMethods):
    """The async repository's query methods, each call on its own pooled connection."""

    def __init__(self, engine: AsyncEngine, table: Table) -> None:
        self.engine = engine
        self.table = table
        self._direct = _DirectRunner(engine.sync_engine)

    def _query_dialect(self) -> Dialect:
        return self.engine.dialect

    async def _run_plan(self, plan: QueryPlan[T]) -> T:
        from sqlalchemy.util import greenlet_spawn

        if plan.statement is None:
            return plan.finish([])
        if self._direct.enabled:
            # One greenlet switch for checkout, execute, fetch and checkin together.
            rows = await greenlet_spawn(self._direct.rows, plan)
            if rows is not None:
                return plan.finish(rows)
        async with self.engine.connect() as connection:
            result = await connection.execute(plan.statement, plan.parameters)
            return plan.finish(result.all())

    async def _bucket_function(self) -> BucketFunction:
        dialect = self.engine.dialect
        sync_engine = self.engine.sync_engine
        if dialect.name != "postgresql" or sync_engine in _TIMESCALE:
            return bucket_function_for(dialect, _TIMESCALE.get(sync_engine, False))
        async with self.engine.connect() as connection:
            return await AsyncSignalQueryRepository(connection, self.table)._bucket_function()


class SignalsQueryClient:
    """Synchronous read client; use it as a context manager.

    ``uri`` is a database URI (``postgresql://user@host/db``, ``sqlite:///signals.db``), a
    :class:`~sqlalchemy.engine.URL` or an existing :class:`~sqlalchemy.Engine` (used as is,
    never disposed by the client). ``engine_kwargs`` go to ``create_engine`` (e.g.
    ``poolclass=NullPool``). ``table`` defaults to ``Signal.__table__``.
    """

    def __init__(self, uri: str | URL | Engine, *, table: Any = None, **engine_kwargs: Any) -> None:
        self.table = resolve_table(table)
        self._owns_engine = not isinstance(uri, Engine)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing Engine")
        self.engine: Engine = sync_engine(uri, **_engine_options(engine_kwargs))
        if self._owns_engine and self.engine.dialect.driver == "psycopg":
            event.listen(self.engine, "connect", _utc_session)
        self._depth = 0
        self._queries = _ClientQueries(self.engine, self.table)

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
        self._check_open()
        return self._queries.get_latest_signals(provider, symbol, limit, signal_names)

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
        self._check_open()
        return self._queries.get_signals_history(
            provider, symbol, start_ts, end_ts, signal_names, limit
        )

    def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Count, min, max, avg, stddev, first/last timestamp and last value of one series."""
        self._check_open()
        return self._queries.get_signal_metrics(provider, symbol, signal_name, hours_back)

    def get_active_signals(self, provider: str, minutes_back: float = 5) -> list[ActiveSignal]:
        """The latest signal per ``(symbol, name)`` seen in the last ``minutes_back`` minutes."""
        self._check_open()
        return self._queries.get_active_signals(provider, minutes_back)

    def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Totals of ``provider``'s signals over the last ``hours_back`` hours."""
        self._check_open()
        return self._queries.get_signal_summary(provider, hours_back)

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
        self._check_open()
        return self._queries.get_signal_buckets(
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
        table: Any = None,
        **engine_kwargs: Any,
    ) -> None:
        self.table = resolve_table(table)
        self._owns_engine = not is_async_engine(uri)
        if not self._owns_engine and engine_kwargs:
            raise ConfigurationError("engine options cannot be applied to an existing AsyncEngine")
        self.engine: AsyncEngine = async_engine(uri, **_engine_options(engine_kwargs))
        self._depth = 0
        self._queries = _AsyncClientQueries(self.engine, self.table)

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
        self._check_open()
        return await self._queries.get_latest_signals(provider, symbol, limit, signal_names)

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
        self._check_open()
        return await self._queries.get_signals_history(
            provider, symbol, start_ts, end_ts, signal_names, limit
        )

    async def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Async :meth:`SignalsQueryClient.get_signal_metrics`."""
        self._check_open()
        return await self._queries.get_signal_metrics(provider, symbol, signal_name, hours_back)

    async def get_active_signals(
        self, provider: str, minutes_back: float = 5
    ) -> list[ActiveSignal]:
        """Async :meth:`SignalsQueryClient.get_active_signals`."""
        self._check_open()
        return await self._queries.get_active_signals(provider, minutes_back)

    async def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Async :meth:`SignalsQueryClient.get_signal_summary`."""
        self._check_open()
        return await self._queries.get_signal_summary(provider, hours_back)

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
        self._check_open()
        return await self._queries.get_signal_buckets(
            provider, symbol, signal_name, bucket, start_ts=start_ts, end_ts=end_ts
        )

    async def storage_stats(self, *, exact_count: bool = False) -> StorageStats:
        """Async :meth:`SignalsQueryClient.storage_stats`."""
        self._check_open()
        async with self.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: storage_stats(sync, self.table, exact_count=exact_count)
            )
