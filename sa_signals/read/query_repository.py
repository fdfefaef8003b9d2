"""Session-scoped query repositories: the spec's read queries on a Session or AsyncSession.

The query methods live in :class:`SignalQueryMethods` / :class:`AsyncSignalQueryMethods` and
rely only on ``self.session`` and ``self.table``, so a write repository can inherit them.
``session`` may also be a Core ``Connection`` / ``AsyncConnection`` (the clients pass one: it
spares the ORM session's bookkeeping on every call). Both
are thin shells over the plans of :mod:`sa_signals.read.queries`; the async class has the same
method names and awaits the same plans.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from ..schema.model import Signal, resolve_table
from .queries import (
    TIMESCALE_PROBE,
    ActiveSignal,
    BucketFunction,
    QueryPlan,
    SignalBucket,
    SignalMetrics,
    SignalRecord,
    SignalSummary,
    bucket_function_for,
    plan_active,
    plan_buckets,
    plan_history,
    plan_latest,
    plan_metrics,
    plan_summary,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = [
    "AsyncSignalQueryMethods",
    "AsyncSignalQueryRepository",
    "SignalQueryMethods",
    "SignalQueryRepository",
]

T = TypeVar("T")

# Whether each database (one Engine = one database) has TimescaleDB: asked once per engine.
_TIMESCALE: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def _engine_of(bind: Engine | Connection) -> Engine:
    return bind.engine if isinstance(bind, Connection) else bind


def _sync_bind(session: Session | Connection) -> Engine | Connection:
    return session.get_bind() if isinstance(session, Session) else session


def _default_table() -> Table:
    table: Table = Signal.__table__
    return table


class SignalQueryMethods:
    """The read queries, for any class with ``session`` (a Session) and ``table``."""

    session: Session | Connection
    table: Table

    def _query_dialect(self) -> Dialect:
        return (
            self.session.dialect
            if isinstance(self.session, Connection)
            else (self.session.get_bind().dialect)
        )

    def _run_plan(self, plan: QueryPlan[T]) -> T:
        if plan.statement is None:
            return plan.finish([])
        return plan.finish(self.session.execute(plan.statement, plan.parameters).all())

    def _bucket_function(self) -> BucketFunction:
        engine = _engine_of(_sync_bind(self.session))
        if engine.dialect.name == "postgresql" and engine not in _TIMESCALE:
            found = self.session.execute(TIMESCALE_PROBE).first() is not None
            _TIMESCALE[engine] = found
        return bucket_function_for(engine.dialect, _TIMESCALE.get(engine, False))

    def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
    ) -> list[SignalRecord]:
        """The ``limit`` newest signals of ``provider``/``symbol``, newest first then by name."""
        return self._run_plan(
            plan_latest(self.table, self._query_dialect(), provider, symbol, limit, signal_names)
        )

    def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> list[SignalRecord]:
        """Signals with ``start_ts <= ts <= end_ts`` (``None``: now), newest first."""
        return self._run_plan(
            plan_history(
                self.table,
                self._query_dialect(),
                provider,
                symbol,
                start_ts,
                end_ts,
                signal_names,
                limit,
            )
        )

    def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Statistics of one series over the last ``hours_back`` hours."""
        return self._run_plan(
            plan_metrics(
                self.table, self._query_dialect(), provider, symbol, signal_name, hours_back
            )
        )

    def get_active_signals(self, provider: str, minutes_back: float = 5) -> list[ActiveSignal]:
        """The latest signal per ``(symbol, name)`` seen in the last ``minutes_back`` minutes."""
        return self._run_plan(
            plan_active(self.table, self._query_dialect(), provider, minutes_back)
        )

    def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Totals of ``provider``'s signals over the last ``hours_back`` hours."""
        return self._run_plan(plan_summary(self.table, self._query_dialect(), provider, hours_back))

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
        """Per-bucket count/min/max/avg/last of one series, oldest bucket first.

        ``end_ts=None`` means now, ``start_ts=None`` 24 hours before ``end_ts``.
        """
        return self._run_plan(
            plan_buckets(
                self.table,
                self._bucket_function(),
                provider,
                symbol,
                signal_name,
                bucket,
                start_ts,
                end_ts,
            )
        )


class AsyncSignalQueryMethods:
    """The read queries for any class with ``session`` (an AsyncSession) and ``table``."""

    session: AsyncSession | AsyncConnection
    table: Table

    def _sync_bind(self) -> Engine | Connection:
        from sqlalchemy.ext.asyncio import AsyncSession

        if isinstance(self.session, AsyncSession):
            return self.session.get_bind()
        return self.session.sync_connection  # type: ignore[return-value]

    def _query_dialect(self) -> Dialect:
        return self._sync_bind().dialect

    async def _run_plan(self, plan: QueryPlan[T]) -> T:
        if plan.statement is None:
            return plan.finish([])
        result = await self.session.execute(plan.statement, plan.parameters)
        return plan.finish(result.all())

    async def _bucket_function(self) -> BucketFunction:
        engine = _engine_of(self._sync_bind())
        if engine.dialect.name == "postgresql" and engine not in _TIMESCALE:
            result = await self.session.execute(TIMESCALE_PROBE)
            _TIMESCALE[engine] = result.first() is not None
        return bucket_function_for(engine.dialect, _TIMESCALE.get(engine, False))

    async def get_latest_signals(
        self,
        provider: str,
        symbol: str,
        limit: int = 100,
        signal_names: Iterable[str] | None = None,
    ) -> list[SignalRecord]:
        """Async :meth:`SignalQueryMethods.get_latest_signals`."""
        return await self._run_plan(
            plan_latest(self.table, self._query_dialect(), provider, symbol, limit, signal_names)
        )

    async def get_signals_history(
        self,
        provider: str,
        symbol: str,
        start_ts: datetime,
        end_ts: datetime | None = None,
        signal_names: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> list[SignalRecord]:
        """Async :meth:`SignalQueryMethods.get_signals_history`."""
        return await self._run_plan(
            plan_history(
                self.table,
                self._query_dialect(),
                provider,
                symbol,
                start_ts,
                end_ts,
                signal_names,
                limit,
            )
        )

    async def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Async :meth:`SignalQueryMethods.get_signal_metrics`."""
        return await self._run_plan(
            plan_metrics(
                self.table, self._query_dialect(), provider, symbol, signal_name, hours_back
            )
        )

    async def get_active_signals(
        self, provider: str, minutes_back: float = 5
    ) -> list[ActiveSignal]:
        """Async :meth:`SignalQueryMethods.get_active_signals`."""
        return await self._run_plan(
            plan_active(self.table, self._query_dialect(), provider, minutes_back)
        )

    async def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Async :meth:`SignalQueryMethods.get_signal_summary`."""
        return await self._run_plan(
            plan_summary(self.table, self._query_dialect(), provider, hours_back)
        )

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
        """Async :meth:`SignalQueryMethods.get_signal_buckets`."""
        return await self._run_plan(
            plan_buckets(
                self.table,
                await self._bucket_function(),
                provider,
                symbol,
                signal_name,
                bucket,
                start_ts,
                end_ts,
            )
        )


class SignalQueryRepository(SignalQueryMethods):
    """Read queries on a :class:`~sqlalchemy.orm.Session`; the caller owns the transaction.

    ``table`` defaults to the default model's table (``Signal.__table__``).
    """

    def __init__(self, session: Session | Connection, table: Any = None) -> None:
        self.session = session
        self.table = resolve_table(table)


class AsyncSignalQueryRepository(AsyncSignalQueryMethods):
    """Read queries on an :class:`~sqlalchemy.ext.asyncio.AsyncSession` (same methods, awaited)."""

    def __init__(self, session: AsyncSession | AsyncConnection, table: Any = None) -> None:
        self.session = session
        self.table = resolve_table(table)
