"""Session-scoped repositories that write signals: :class:`SignalRepository` (``Session``) and
:class:`AsyncSignalRepository` (``AsyncSession``).

They join the caller's transaction and never commit it. Each ``upsert`` runs inside a
savepoint of its own on PostgreSQL (``Connection.begin_nested``): a call that fails (bad input
found half-way through a COPY included) is rolled back to it, so the caller's earlier work is
intact and its transaction usable. SQLite needs no savepoint: a failed statement there leaves
the transaction usable, and the call's only write to the table is its last statement.

The connection is the session's connection for the signals table: with several binds
(``Session(binds={Base: engine})``) it is found from the mapped class or the table.

Both run the same synchronous code (the async one through ``AsyncSession.run_sync``, as
SQLAlchemy's own asyncio extension does); the algorithm is :mod:`sa_signals.write.writer`.

``metrics=`` are recorded when the outcome is known: a call that fails counts as a failure at
once; a call that succeeds counts as a success when the session's transaction commits, and as
a failure if it is rolled back instead (a savepoint of the caller's that is rolled back
included), using the session's ``after_commit`` / ``after_transaction_end`` events.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Table, event, inspect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapper, Session, SessionTransaction

from ..errors import ConfigurationError
from ..metrics import WriteMetrics, write_metrics
from ..read.query_repository import AsyncSignalQueryMethods, SignalQueryMethods
from ..result import WriteResult
from ..schema.model import Signal, resolve_table
from .writer import (
    DEFAULT_MAX_TUPLES_DECOMPRESSED,
    DEFAULT_STREAM_BATCH,
    Progress,
    Writer,
    database_error,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["DEFAULT_STREAM_BATCH", "AsyncSignalRepository", "SignalRepository"]

_Pending = list[tuple[WriteMetrics, WriteResult, float]]
# Successful calls waiting for their session transaction's outcome.
_pending: weakref.WeakKeyDictionary[SessionTransaction, _Pending] = weakref.WeakKeyDictionary()


def _resolve_metrics(metrics: WriteMetrics | CollectorRegistry | None) -> WriteMetrics | None:
    if metrics is None or isinstance(metrics, WriteMetrics):
        return metrics
    if isinstance(metrics, CollectorRegistry):
        return write_metrics(metrics)
    raise ConfigurationError(
        f"metrics must be WriteMetrics, a CollectorRegistry or None, got {metrics!r}"
    )


def _mapper_of(table: Any) -> Mapper[Any] | None:
    if table is None:
        table = Signal
    found = inspect(table, raiseerr=False) if isinstance(table, type) else None
    return found if isinstance(found, Mapper) else None


def _on_commit(session: Session) -> None:
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        return
    entries = _pending.pop(transaction, None)
    if not entries:
        return
    parent = transaction.parent
    if parent is not None:  # a savepoint released: the outcome is its parent's
        _pending.setdefault(parent, []).extend(entries)
        return
    for metrics, result, seconds in entries:
        metrics.success(result, seconds)


def _on_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # Still pending at its end: the transaction was rolled back (or closed) without commit.
    for metrics, result, seconds in _pending.pop(transaction, ()):
        metrics.failure(result.method or "UPSERT", result.received, seconds)


def _record_on_outcome(
    session: Session, metrics: WriteMetrics, result: WriteResult, seconds: float
) -> None:
    if not event.contains(session, "after_commit", _on_commit):
        event.listen(session, "after_commit", _on_commit)
        event.listen(session, "after_transaction_end", _on_transaction_end)
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # pragma: no cover - the call itself began one
        metrics.success(result, seconds)
        return
    _pending.setdefault(transaction, []).append((metrics, result, seconds))


class _SessionWriter:
    """Writes through a session: bind lookup, savepoint, metrics on the outcome."""

    def __init__(
        self,
        table: Any,
        batch_threshold: int,
        metrics: WriteMetrics | CollectorRegistry | None,
        max_tuples_decompressed: int | None,
        append_fast_path: bool = True,
    ) -> None:
        self.table: Table = resolve_table(table)
        self.mapper = _mapper_of(table)
        self.writer = Writer(self.table, batch_threshold, max_tuples_decompressed, append_fast_path)
        self.metrics = _resolve_metrics(metrics)
        #: Method of the last call attempted.
        self.method = "UPSERT"

    def bind_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"clause": self.table}
        if self.mapper is not None:
            arguments["mapper"] = self.mapper
        return arguments

    def upsert(
        self, session: Session, signals: Iterable[Any], batch_size: int | None
    ) -> WriteResult:
        size = Writer.batch_size_for(signals, batch_size)
        progress = Progress()
        started = time.perf_counter()
        try:
            connection = session.connection(bind_arguments=self.bind_arguments())
            result = self._write(connection, signals, size, progress)
        except BaseException:
            self.method = progress.method
            if self.metrics is not None:
                self.metrics.failure(
                    progress.method, Writer.given(signals, progress), time.perf_counter() - started
                )
            raise
        self.method = progress.method
        if self.metrics is not None:
            _record_on_outcome(session, self.metrics, result, time.perf_counter() - started)
        return result

    def _write(
        self, connection: Connection, signals: Iterable[Any], size: int, progress: Progress
    ) -> WriteResult:
        writer = self.writer
        if connection.dialect.name == "sqlite":
            return writer.write(connection, signals, size, own_transaction=False, progress=progress)
        try:
            savepoint = connection.begin_nested()
        except BaseException as exc:
            error = database_error(exc)
            if error is None:
                raise
            raise error from exc
        try:
            result = writer.write(
                connection, signals, size, own_transaction=False, progress=progress
            )
        except BaseException:
            # A broken connection cannot roll back either: report the call's own failure.
            with contextlib.suppress(SQLAlchemyError):
                savepoint.rollback()
            raise
        try:
            savepoint.commit()
        except BaseException as exc:
            error = database_error(exc)
            if error is None:
                raise
            raise error from exc
        return result


class SignalRepository(SignalQueryMethods):
    """Writes and reads signals through a SQLAlchemy :class:`~sqlalchemy.orm.Session`.

    The read methods (``get_latest_signals``, ``get_signals_history``...) are those of
    :class:`~sa_signals.read.query_repository.SignalQueryRepository`.

    ``table``: the signals table, as a ``Table`` or a mapped class (default: the library's
    ``Signal``). ``batch_threshold``: calls of at least this many signals are staged with COPY
    on PostgreSQL. ``metrics`` (a :class:`~sa_signals.metrics.WriteMetrics` or a prometheus
    ``CollectorRegistry``) records each call once the session's transaction commits or rolls
    back. ``max_tuples_decompressed``: TimescaleDB's cap on tuples decompressed by the call's
    statements, set for them and restored after (default 0: no cap; ``None``: leave it).
    ``append_fast_path``: calls whose keys an index probe proves new are COPYed straight into
    the table (:mod:`sa_signals.write.append`; ``False``: always merge). ``upsert`` also
    takes a DataFrame (pyarrow, polars, pandas; :mod:`sa_signals.write.frames`).
    The repository joins the session's transaction and never commits it; a failed ``upsert``
    leaves that transaction as it was before the call.
    """

    def __init__(
        self,
        session: Session,
        table: Any = None,
        *,
        batch_threshold: int = 1000,
        metrics: WriteMetrics | CollectorRegistry | None = None,
        max_tuples_decompressed: int | None = DEFAULT_MAX_TUPLES_DECOMPRESSED,
        append_fast_path: bool = True,
    ) -> None:
        self.session = session
        # The query mixin types ``session`` loosely (it also reads through a Connection).
        self._session = session
        self._writer = _SessionWriter(
            table, batch_threshold, metrics, max_tuples_decompressed, append_fast_path
        )
        self.table = self._writer.table
        self.mapper = self._writer.mapper
        self.batch_threshold = batch_threshold
        self.metrics = self._writer.metrics

    def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Validate and write ``signals`` in one merge; the last occurrence of a key wins.

        ``batch_size`` bounds how many signals are held at once (default: all of a sequence,
        or :data:`DEFAULT_STREAM_BATCH` of other iterables). Raises
        :class:`~sa_signals.errors.InvalidSignalError` for bad input and
        :class:`~sa_signals.errors.WriteError` for database failures; either way nothing of
        the call is kept and the session's transaction is usable.
        """
        return self._writer.upsert(self._session, signals, batch_size)

    @property
    def last_method(self) -> str:
        """Method of the last call attempted (``"UPSERT"`` or ``"COPY"``)."""
        return self._writer.method


class AsyncSignalRepository(AsyncSignalQueryMethods):
    """Writes and reads signals through a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncSession`.

    Same options and behaviour as :class:`SignalRepository`; COPY works on asyncpg and on
    psycopg's async connection.
    """

    def __init__(
        self,
        session: AsyncSession,
        table: Any = None,
        *,
        batch_threshold: int = 1000,
        metrics: WriteMetrics | CollectorRegistry | None = None,
        max_tuples_decompressed: int | None = DEFAULT_MAX_TUPLES_DECOMPRESSED,
        append_fast_path: bool = True,
    ) -> None:
        self.session = session
        # The query mixin types ``session`` loosely (it also reads through a Connection).
        self._session = session
        self._writer = _SessionWriter(
            table, batch_threshold, metrics, max_tuples_decompressed, append_fast_path
        )
        self.table = self._writer.table
        self.mapper = self._writer.mapper
        self.batch_threshold = batch_threshold
        self.metrics = self._writer.metrics

    async def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Validate and write ``signals``; see :meth:`SignalRepository.upsert`."""
        return await self._session.run_sync(self._writer.upsert, signals, batch_size)

    @property
    def last_method(self) -> str:
        """Method of the last call attempted (``"UPSERT"`` or ``"COPY"``)."""
        return self._writer.method
