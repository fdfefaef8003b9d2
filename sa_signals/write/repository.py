"""Session-scoped repositories that write signals: :class:`SignalRepository` (``Session``) and
:class:`AsyncSignalRepository` (``AsyncSession``).

They join the caller's transaction and never commit. Both run the same synchronous code (the
async one through ``AsyncSession.run_sync``, as SQLAlchemy's own asyncio extension does); only
the driver I/O of the COPY path differs (:mod:`sa_signals.write.copy`).

Per batch: every signal of the batch is validated first (:mod:`sa_signals.write.validation`), then
batches of at least ``batch_threshold`` signals on PostgreSQL (psycopg or asyncpg) go through
binary COPY into a staging table and one merge statement; smaller batches, other drivers and
SQLite use the executemany upsert, deduplicated (last occurrence wins) and sorted by primary key
in Python. Counts come from the statements' own ``RETURNING``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Connection, Table, func, select, tuple_
from sqlalchemy.orm import Session

from ..errors import ConfigurationError
from ..metrics import WriteMetrics, write_metrics
from ..read.query_repository import AsyncSignalQueryMethods, SignalQueryMethods
from ..result import COPY, UPSERT, WriteResult
from ..schema.model import KEY_COLUMNS, Signal
from .copy import copy_rows, supports_copy
from .statements import merge_statement, stage_ddl, truncate_stage, upsert_statement
from .validation import Row, validate_signals

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.sql.dml import Insert
    from sqlalchemy.sql.elements import TextClause

__all__ = ["DEFAULT_STREAM_BATCH", "AsyncSignalRepository", "SignalRepository"]

#: Batch size for iterables without a length when no ``batch_size`` is given.
DEFAULT_STREAM_BATCH = 10_000
# Rows per key-existence query on SQLite (4 parameters each, far below SQLite's limit).
_SQLITE_LOOKUP_CHUNK = 200
_key = itemgetter(1, 2, 3, 4)
_PARAM_NAMES = ("provider", "symbol", "ts", "name", "value", "score", "metadata")


@functools.lru_cache(maxsize=128)
def _upsert(table: Table, dialect_name: str) -> Insert:
    return upsert_statement(table, dialect_name)


@functools.lru_cache(maxsize=128)
def _merge(table: Table, connection_dialect: Any) -> TextClause:
    return merge_statement(table, connection_dialect)


def _params(rows: Iterable[Row]) -> list[dict[str, Any]]:
    return [
        {
            "provider": r[1],
            "symbol": r[2],
            "ts": r[3],
            "name": r[4],
            "value": r[5],
            "score": r[6],
            "metadata": r[7],
        }
        for r in rows
    ]


def _resolve_metrics(metrics: WriteMetrics | CollectorRegistry | None) -> WriteMetrics | None:
    if metrics is None or isinstance(metrics, WriteMetrics):
        return metrics
    if isinstance(metrics, CollectorRegistry):
        return write_metrics(metrics)
    raise ConfigurationError(
        f"metrics must be WriteMetrics, a CollectorRegistry or None, got {metrics!r}"
    )


class _Writer:
    """The write logic on a synchronous connection; shared by both repositories."""

    def __init__(self, table: Table | None, batch_threshold: int) -> None:
        if table is None:
            table = Signal.__table__
        if not isinstance(table, Table):
            raise ConfigurationError(f"table must be a sqlalchemy Table, got {table!r}")
        if not isinstance(batch_threshold, int) or batch_threshold < 1:
            raise ConfigurationError(f"batch_threshold must be a positive int: {batch_threshold!r}")
        self.table = table
        self.batch_threshold = batch_threshold
        #: Method of the batch being written (for failure metrics) and signals read so far.
        self.method = UPSERT
        self.seen = 0

    def write(
        self, session: Session, signals: Iterable[Any], batch_size: int | None
    ) -> WriteResult:
        if batch_size is None:
            batch_size = len(signals) if isinstance(signals, Sequence) else DEFAULT_STREAM_BATCH
            batch_size = max(batch_size, 1)
        elif not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        self.method = UPSERT
        self.seen = 0
        rows = validate_signals(signals)
        connection: Connection | None = None
        copy_ok = False
        stage_ready = False
        received = inserted = changed = distinct = 0
        methods: list[str] = []
        while True:
            # The whole batch is validated before any SQL for it is sent.
            batch = list(islice(rows, batch_size))
            if not batch:
                break
            self.seen += len(batch)
            if connection is None:
                connection = session.connection()
                copy_ok = supports_copy(connection)
            if copy_ok and len(batch) >= self.batch_threshold:
                self.method = COPY
                if not stage_ready:
                    connection.execute(stage_ddl())
                    stage_ready = True
                copy_rows(connection, batch)
                batch_distinct, batch_inserted, batch_changed = connection.execute(
                    _merge(self.table, connection.dialect)
                ).one()
                connection.execute(truncate_stage())
            else:
                self.method = UPSERT
                batch_distinct, batch_inserted, batch_changed = self._executemany(connection, batch)
            if self.method not in methods:
                methods.append(self.method)
            received += len(batch)
            distinct += batch_distinct
            inserted += batch_inserted
            changed += batch_changed
        return WriteResult(
            received, inserted, changed - inserted, distinct - changed, tuple(methods)
        )

    def _executemany(self, connection: Connection, batch: list[Row]) -> tuple[int, int, int]:
        # Last occurrence wins (dict keeps the latest value), then primary-key order.
        latest = {_key(row): row for row in batch}
        # Sort the keys already built rather than extracting them again per row.
        ordered = [latest[key] for key in sorted(latest)]
        dialect_name = connection.dialect.name
        statement = _upsert(self.table, dialect_name)
        if dialect_name == "postgresql":
            # Rows per statement: the engine's insertmanyvalues_page_size, as for VALUES lists.
            page = connection.dialect.insertmanyvalues_page_size or len(ordered)
            inserted = changed = 0
            for start in range(0, len(ordered), page):
                columns = list(zip(*ordered[start : start + page], strict=True))
                arrays = {name: list(columns[i]) for i, name in enumerate(_PARAM_NAMES, 1)}
                flags = connection.execute(statement, arrays).scalars().all()
                inserted += sum(1 for flag in flags if flag)
                changed += len(flags)
            return len(ordered), inserted, changed
        # SQLite has no xmax: count the keys that already exist, in the same transaction.
        existed = self._count_existing(connection, list(latest))
        changed = len(connection.execute(statement, _params(ordered)).all())
        return len(ordered), len(ordered) - existed, changed

    def _count_existing(self, connection: Connection, keys: list[tuple[Any, ...]]) -> int:
        table = self.table
        key = tuple_(*(table.c[name] for name in KEY_COLUMNS))
        existed = 0
        for start in range(0, len(keys), _SQLITE_LOOKUP_CHUNK):
            chunk = keys[start : start + _SQLITE_LOOKUP_CHUNK]
            existed += connection.execute(
                select(func.count()).select_from(table).where(key.in_(chunk))
            ).scalar_one()
        return int(existed)

    def write_recorded(
        self,
        session: Session,
        signals: Iterable[Any],
        batch_size: int | None,
        metrics: WriteMetrics | None,
    ) -> WriteResult:
        """:meth:`write`, recording metrics (if any) as seen by this session."""
        if metrics is None:
            return self.write(session, signals, batch_size)
        started = time.perf_counter()
        try:
            result = self.write(session, signals, batch_size)
        except BaseException:
            metrics.failure(self.method, self.seen, time.perf_counter() - started)
            raise
        metrics.success(result, time.perf_counter() - started)
        return result


class SignalRepository(SignalQueryMethods):
    """Writes and reads signals through a SQLAlchemy :class:`~sqlalchemy.orm.Session`.

    The read methods (``get_latest_signals``, ``get_signals_history``...) are those of
    :class:`~sa_signals.read.query_repository.SignalQueryRepository`.

    ``table`` defaults to the library's ``signals`` table; ``batch_threshold`` is the batch size
    from which PostgreSQL writes use COPY; ``metrics`` (a :class:`~sa_signals.metrics.WriteMetrics`
    or a prometheus ``CollectorRegistry``) records each call when given. The repository joins the
    session's transaction and never commits it: if ``upsert`` raises, roll the session back.
    """

    def __init__(
        self,
        session: Session,
        table: Table | None = None,
        *,
        batch_threshold: int = 1000,
        metrics: WriteMetrics | CollectorRegistry | None = None,
    ) -> None:
        self.session = session
        # The query mixin types ``session`` loosely (it also reads through a Connection).
        self._session = session
        self._writer = _Writer(table, batch_threshold)
        self.table = self._writer.table
        self.batch_threshold = batch_threshold
        self.metrics = _resolve_metrics(metrics)

    def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Validate and write ``signals``; the last occurrence of a key wins.

        ``batch_size`` bounds how many signals are held at once (default: all of a sequence,
        or :data:`DEFAULT_STREAM_BATCH` of other iterables); each batch is validated whole
        before any SQL for it is sent. Raises :class:`~sa_signals.errors.InvalidSignalError`.
        """
        return self._writer.write_recorded(self._session, signals, batch_size, self.metrics)

    @property
    def last_method(self) -> str:
        """Method of the last batch attempted (``"UPSERT"`` or ``"COPY"``)."""
        return self._writer.method


class AsyncSignalRepository(AsyncSignalQueryMethods):
    """Writes and reads signals through a SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncSession`.

    Same options and behaviour as :class:`SignalRepository`; COPY works on asyncpg and on
    psycopg's async connection.
    """

    def __init__(
        self,
        session: AsyncSession,
        table: Table | None = None,
        *,
        batch_threshold: int = 1000,
        metrics: WriteMetrics | CollectorRegistry | None = None,
    ) -> None:
        self.session = session
        # The query mixin types ``session`` loosely (it also reads through a Connection).
        self._session = session
        self._writer = _Writer(table, batch_threshold)
        self.table = self._writer.table
        self.batch_threshold = batch_threshold
        self.metrics = _resolve_metrics(metrics)

    async def upsert(self, signals: Iterable[Any], *, batch_size: int | None = None) -> WriteResult:
        """Validate and write ``signals``; see :meth:`SignalRepository.upsert`."""
        return await self._session.run_sync(
            self._writer.write_recorded, signals, batch_size, self.metrics
        )

    @property
    def last_method(self) -> str:
        """Method of the last batch attempted (``"UPSERT"`` or ``"COPY"``)."""
        return self._writer.method
