"""Session-scoped query repositories: the spec's read queries on a Session or AsyncSession.

The query methods live in :class:`SignalQueryMethods` / :class:`AsyncSignalQueryMethods` and
rely only on ``self.session`` and ``self.table``, so a write repository can inherit them.
``session`` may also be a Core ``Connection`` / ``AsyncConnection`` (the clients pass one: it
spares the ORM session's bookkeeping on every call). Both
are thin shells over the plans of :mod:`sa_signals.read.queries`; the async class has the same
method names and awaits the same plans. Bad arguments raise
:class:`~sa_signals.errors.InvalidQueryError` before any SQL is sent; any failure of the query
itself raises :class:`~sa_signals.errors.QueryError` (the driver's error as ``__cause__``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from sqlalchemy import Connection, Engine, Table, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper, Session

from ..errors import QueryError
from ..schema.aggregates import Rollup, get_rollups
from ..schema.model import resolve_table
from .failures import driver_error, query_error
from .frames import Format, Shape, check_format, convert, frame_from_result, require_pyarrow
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
from .rollups import (
    RawTableNeeded,
    RollupState,
    plan_buckets_rollup,
    plan_metrics_rollup,
    plan_rollup_state,
    plan_summary_rollup,
)

if TYPE_CHECKING:
    import pandas
    import polars
    import pyarrow
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


# The declared rollups that exist in each database (one Engine = one database), per table:
# read from TimescaleDB's catalog on the first call, then trusted while all of them exist (a
# rollup read that fails forgets them, so the next call asks again). A table with some
# declared rollups missing is asked on every call, as they may be created at any time.
_ROLLUPS: weakref.WeakKeyDictionary[Engine, dict[Table, tuple[Rollup, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _known_rollups(engine: Engine, table: Table) -> tuple[Rollup, ...] | None:
    return _ROLLUPS.get(engine, {}).get(table)


def _remember_rollups(engine: Engine, table: Table, states: list[RollupState]) -> list[Rollup]:
    existing = [state.rollup for state in states]
    if len(existing) == len(get_rollups(table)):
        _ROLLUPS.setdefault(engine, {})[table] = tuple(existing)
    return existing


def _forget_rollups(engine: Engine, table: Table) -> None:
    _ROLLUPS.get(engine, {}).pop(table, None)


def _engine_of(bind: Engine | Connection) -> Engine:
    return bind.engine if isinstance(bind, Connection) else bind


def mapper_of(table: Any) -> Mapper[Any] | None:
    """The mapper of a ``table=`` argument that is a mapped class (default: ``Signal``)."""
    if table is None:
        from ..schema.model import Signal

        table = Signal
    found = inspect(table, raiseerr=False) if isinstance(table, type) else None
    return found if isinstance(found, Mapper) else None


def bind_arguments(table: Table, mapper: Mapper[Any] | None) -> dict[str, Any]:
    """What a session needs to find the signals table's bind among several
    (``Session(binds={Base: engine})`` or ``binds={signals_table: engine}``)."""
    arguments: dict[str, Any] = {"clause": table}
    if mapper is not None:
        arguments["mapper"] = mapper
    return arguments


def _sync_bind(
    session: Session | Connection, table: Table, mapper: Mapper[Any] | None
) -> Engine | Connection:
    if isinstance(session, Session):
        return session.get_bind(**bind_arguments(table, mapper))
    return session


def _known_bucket_function(engine: Engine) -> BucketFunction | None:
    if engine.dialect.name != "postgresql":
        return bucket_function_for(engine.dialect, False)
    has_timescale = _TIMESCALE.get(engine)
    return None if has_timescale is None else bucket_function_for(engine.dialect, has_timescale)


def _bucket_plan(
    table: Table,
    function: BucketFunction,
    provider: str,
    symbol: str,
    signal_name: str,
    bucket: timedelta,
    start_ts: datetime | None,
    end_ts: datetime | None,
    hours_back: float | None,
    minutes_back: float | None,
) -> QueryPlan[list[SignalBucket]]:
    return plan_buckets(
        table,
        function,
        provider,
        symbol,
        signal_name,
        bucket,
        start_ts,
        end_ts,
        hours_back=hours_back,
        minutes_back=minutes_back,
    )


class SignalQueryMethods:
    """The read queries, for any class with ``session`` (a Session) and ``table``."""

    session: Session | Connection
    table: Table
    #: The mapped class's mapper, for sessions with several binds (set by the constructors).
    mapper: Mapper[Any] | None = None

    def _query_dialect(self) -> Dialect:
        return (
            self.session.dialect
            if isinstance(self.session, Connection)
            else _sync_bind(self.session, self.table, self.mapper).dialect
        )

    def _query_engine(self) -> Engine:
        return _engine_of(_sync_bind(self.session, self.table, self.mapper))

    def _execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> Any:
        if isinstance(self.session, Session):
            return self.session.execute(
                statement, parameters, bind_arguments=bind_arguments(self.table, self.mapper)
            )
        return self.session.execute(statement, parameters)

    def _run_plan(self, plan: QueryPlan[T]) -> T:
        if plan.statement is None:
            return plan.finish([])
        try:
            rows = self._execute(plan.statement, plan.parameters).all()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return plan.finish(rows)

    def _run_frame(self, plan: QueryPlan[Any], shape: Shape, format: object) -> Any:
        """Run ``plan``; its result in ``format`` (see :mod:`sa_signals.read.frames`)."""
        checked = check_format(format)
        if checked == "dicts":
            return self._run_plan(plan)
        require_pyarrow()  # before any SQL
        return convert(frame_from_result(self._run_plan(plan), shape), checked)

    def _has_timescale(self) -> bool:
        return self._execute(TIMESCALE_PROBE).first() is not None

    def _run_with_rollups(
        self, plan: QueryPlan[T], through: Callable[[Sequence[Rollup]], QueryPlan[T] | None]
    ) -> T:
        """Run ``plan``, or what ``through`` makes of it with the table's rollups that exist in
        the database (one statement: their state and the data in one snapshot)."""
        if not get_rollups(self.table) or self._bucket_function() != "time_bucket":
            return self._run_plan(plan)
        engine = self._query_engine()
        rollups: Sequence[Rollup] | None = _known_rollups(engine, self.table)
        if rollups is None:
            state = plan_rollup_state(self.table)
            if state is None:  # pragma: no cover - the table has rollups
                return self._run_plan(plan)
            rollups = _remember_rollups(engine, self.table, self._run_plan(state))
        made = through(rollups)
        if made is None:
            return self._run_plan(plan)
        try:
            return self._run_plan(made)
        except RawTableNeeded:
            return self._run_plan(plan)
        except QueryError:
            _forget_rollups(engine, self.table)  # e.g. a rollup dropped since
            raise

    def _known_bucket_function(self) -> BucketFunction | None:
        """The bucketing function, or ``None`` until the database has been asked."""
        return _known_bucket_function(self._query_engine())

    def _bucket_function(self) -> BucketFunction:
        known = self._known_bucket_function()
        if known is not None:
            return known
        engine = self._query_engine()
        try:
            _TIMESCALE[engine] = self._has_timescale()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return bucket_function_for(engine.dialect, _TIMESCALE[engine])

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
        return self._run_frame(
            plan_latest(self.table, self._query_dialect(), provider, symbol, limit, signal_names),
            "records",
            format,
        )

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
        """Signals with ``start_ts <= ts <= end_ts`` (``None``: now), newest first."""
        return self._run_frame(
            plan_history(
                self.table,
                self._query_dialect(),
                provider,
                symbol,
                start_ts,
                end_ts,
                signal_names,
                limit,
            ),
            "records",
            format,
        )

    def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Statistics of one series over the last ``hours_back`` hours."""
        plan = plan_metrics(
            self.table, self._query_dialect(), provider, symbol, signal_name, hours_back
        )
        return self._run_with_rollups(
            plan, lambda states: plan_metrics_rollup(self.table, states, plan)
        )

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
        return self._run_frame(
            plan_active(self.table, self._query_dialect(), provider, minutes_back),
            "active",
            format,
        )

    def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Totals of ``provider``'s signals over the last ``hours_back`` hours."""
        plan = plan_summary(self.table, self._query_dialect(), provider, hours_back)
        return self._run_with_rollups(
            plan, lambda states: plan_summary_rollup(self.table, states, plan)
        )

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
        check_format(format)
        arguments = (
            provider,
            symbol,
            signal_name,
            bucket,
            start_ts,
            end_ts,
            hours_back,
            minutes_back,
        )
        function = self._known_bucket_function()
        if function is None:
            _bucket_plan(self.table, "date_bin", *arguments)  # arguments checked before any SQL
            function = self._bucket_function()
        plan = _bucket_plan(self.table, function, *arguments)
        if function != "time_bucket":
            return self._run_frame(plan, "buckets", format)
        if format != "dicts":
            require_pyarrow()  # before any SQL
        buckets = self._run_with_rollups(
            plan, lambda states: plan_buckets_rollup(self.table, states, plan)
        )
        return (
            buckets if format == "dicts" else convert(frame_from_result(buckets, "buckets"), format)
        )


class AsyncSignalQueryMethods:
    """The read queries for any class with ``session`` (an AsyncSession) and ``table``."""

    session: AsyncSession | AsyncConnection
    table: Table
    #: The mapped class's mapper, for sessions with several binds (set by the constructors).
    mapper: Mapper[Any] | None = None

    def _sync_bind(self) -> Engine | Connection:
        from sqlalchemy.ext.asyncio import AsyncSession

        if isinstance(self.session, AsyncSession):
            return self.session.sync_session.get_bind(**bind_arguments(self.table, self.mapper))
        return self.session.sync_connection  # type: ignore[return-value]

    async def _execute(self, statement: Any, parameters: dict[str, Any] | None = None) -> Any:
        from sqlalchemy.ext.asyncio import AsyncSession

        if isinstance(self.session, AsyncSession):
            return await self.session.execute(
                statement, parameters, bind_arguments=bind_arguments(self.table, self.mapper)
            )
        return await self.session.execute(statement, parameters)

    def _query_dialect(self) -> Dialect:
        return self._sync_bind().dialect

    def _query_engine(self) -> Engine:
        return _engine_of(self._sync_bind())

    async def _run_plan(self, plan: QueryPlan[T]) -> T:
        if plan.statement is None:
            return plan.finish([])
        try:
            result = await self._execute(plan.statement, plan.parameters)
            rows = result.all()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return plan.finish(rows)

    async def _run_frame(self, plan: QueryPlan[Any], shape: Shape, format: object) -> Any:
        """Run ``plan``; its result in ``format`` (see :mod:`sa_signals.read.frames`)."""
        checked = check_format(format)
        if checked == "dicts":
            return await self._run_plan(plan)
        require_pyarrow()  # before any SQL
        return convert(frame_from_result(await self._run_plan(plan), shape), checked)

    async def _has_timescale(self) -> bool:
        result = await self._execute(TIMESCALE_PROBE)
        return result.first() is not None

    async def _run_with_rollups(
        self, plan: QueryPlan[T], through: Callable[[Sequence[Rollup]], QueryPlan[T] | None]
    ) -> T:
        """Async :meth:`SignalQueryMethods._run_with_rollups`."""
        if not get_rollups(self.table) or await self._bucket_function() != "time_bucket":
            return await self._run_plan(plan)
        engine = self._query_engine()
        rollups: Sequence[Rollup] | None = _known_rollups(engine, self.table)
        if rollups is None:
            state = plan_rollup_state(self.table)
            if state is None:  # pragma: no cover - the table has rollups
                return await self._run_plan(plan)
            rollups = _remember_rollups(engine, self.table, await self._run_plan(state))
        made = through(rollups)
        if made is None:
            return await self._run_plan(plan)
        try:
            return await self._run_plan(made)
        except RawTableNeeded:
            return await self._run_plan(plan)
        except QueryError:
            _forget_rollups(engine, self.table)
            raise

    def _known_bucket_function(self) -> BucketFunction | None:
        """The bucketing function, or ``None`` until the database has been asked."""
        return _known_bucket_function(self._query_engine())

    async def _bucket_function(self) -> BucketFunction:
        known = self._known_bucket_function()
        if known is not None:
            return known
        engine = self._query_engine()
        try:
            _TIMESCALE[engine] = await self._has_timescale()
        except Exception as exc:
            raise query_error(exc, self.table) from driver_error(exc)
        return bucket_function_for(engine.dialect, _TIMESCALE[engine])

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
        """Async :meth:`SignalQueryMethods.get_latest_signals`."""
        return await self._run_frame(
            plan_latest(self.table, self._query_dialect(), provider, symbol, limit, signal_names),
            "records",
            format,
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
        """Async :meth:`SignalQueryMethods.get_signals_history`."""
        return await self._run_frame(
            plan_history(
                self.table,
                self._query_dialect(),
                provider,
                symbol,
                start_ts,
                end_ts,
                signal_names,
                limit,
            ),
            "records",
            format,
        )

    async def get_signal_metrics(
        self, provider: str, symbol: str, signal_name: str, hours_back: float = 24
    ) -> SignalMetrics:
        """Async :meth:`SignalQueryMethods.get_signal_metrics`."""
        plan = plan_metrics(
            self.table, self._query_dialect(), provider, symbol, signal_name, hours_back
        )
        return await self._run_with_rollups(
            plan, lambda states: plan_metrics_rollup(self.table, states, plan)
        )

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
        """Async :meth:`SignalQueryMethods.get_active_signals`."""
        return await self._run_frame(
            plan_active(self.table, self._query_dialect(), provider, minutes_back),
            "active",
            format,
        )

    async def get_signal_summary(self, provider: str, hours_back: float = 24) -> SignalSummary:
        """Async :meth:`SignalQueryMethods.get_signal_summary`."""
        plan = plan_summary(self.table, self._query_dialect(), provider, hours_back)
        return await self._run_with_rollups(
            plan, lambda states: plan_summary_rollup(self.table, states, plan)
        )

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
        """Async :meth:`SignalQueryMethods.get_signal_buckets`."""
        check_format(format)
        arguments = (
            provider,
            symbol,
            signal_name,
            bucket,
            start_ts,
            end_ts,
            hours_back,
            minutes_back,
        )
        function = self._known_bucket_function()
        if function is None:
            _bucket_plan(self.table, "date_bin", *arguments)  # arguments checked before any SQL
            function = await self._bucket_function()
        plan = _bucket_plan(self.table, function, *arguments)
        if function != "time_bucket":
            return await self._run_frame(plan, "buckets", format)
        if format != "dicts":
            require_pyarrow()  # before any SQL
        buckets = await self._run_with_rollups(
            plan, lambda states: plan_buckets_rollup(self.table, states, plan)
        )
        return (
            buckets if format == "dicts" else convert(frame_from_result(buckets, "buckets"), format)
        )


class SignalQueryRepository(SignalQueryMethods):
    """Read queries on a :class:`~sqlalchemy.orm.Session`; the caller owns the transaction.

    ``table`` defaults to the default model's table (``Signal.__table__``).
    """

    def __init__(self, session: Session | Connection, table: Any = None) -> None:
        self.session = session
        self.table = resolve_table(table)
        self.mapper = mapper_of(table)


class AsyncSignalQueryRepository(AsyncSignalQueryMethods):
    """Read queries on an :class:`~sqlalchemy.ext.asyncio.AsyncSession` (same methods, awaited)."""

    def __init__(self, session: AsyncSession | AsyncConnection, table: Any = None) -> None:
        self.session = session
        self.table = resolve_table(table)
        self.mapper = mapper_of(table)
