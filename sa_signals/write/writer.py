"""One write call on one connection: the algorithm both repositories and both clients run.

A call takes its row locks in one global order (:data:`~sa_signals.write.statements.WRITE_ORDER`)
and writes each key once (the last occurrence wins), whatever its size and ``batch_size``:

* a call that fits in one batch of fewer than ``batch_threshold`` signals is deduplicated and
  put in write order in Python, then upserted (PostgreSQL: one ``unnest`` statement per page;
  SQLite: an executemany);
* any other call streams every batch into a temporary staging table and runs ONE merge at the
  end. On PostgreSQL the stage is filled by binary COPY once the call reaches
  ``batch_threshold`` signals (psycopg 3, asyncpg), by ``unnest`` inserts before that and on
  drivers without COPY; the signals are validated while they stream, so client and server
  work overlap and client memory stays bounded by ``batch_size``. The merge skips the sort or
  the deduplication when the per-row loop saw that the data does not need it (``RowStats``).
  When the timestamps never went back and the table holds no row between the call's first
  and last one (one index probe), the merge is a plain ``INSERT ... SELECT`` in write order
  inside a savepoint (no pre-filter, no ``ON CONFLICT``); a unique violation (a concurrent
  writer added one of the keys) rolls back to the savepoint and the call merges. On
  TimescaleDB only when no chunk overlaps that range yet (a catalog query that locks no chunk),
  so this INSERT never meets a compression job on its chunk.

The append fast path (:mod:`sa_signals.write.append`): a call whose keys are unique and which
an index probe proves new (no stored row of its series within its time range) is COPYed
straight into the table, in write order, inside a savepoint: a list held in one batch (sorted
in Python when it is not in order; its metadata encoded while the COPY streams, the lowest
index still reported for bad input), a list of several batches whose keys arrive in write order
(the probe sees the first batch), or a DataFrame (sorted by Arrow). A unique violation, a
deadlock or a key out of order rolls the savepoint back and the call merges as above (a list
is read again); generators of several batches always merge. DataFrames
(:mod:`sa_signals.write.frames`) are validated by columns and COPYed as pgpq-encoded binary
data; on SQLite, without COPY and below ``batch_threshold`` their rows take the paths above.

Failures: an :class:`~sa_signals.errors.InvalidSignalError` or an exception of the caller's
iterable propagates unchanged; every database, driver or pool failure becomes a
:class:`~sa_signals.errors.WriteError` with the original as ``__cause__``. The caller owns the
transaction (a client) or a savepoint around the call (a repository) and rolls it back.

TimescaleDB: one merge per call may decompress more tuples of compressed chunks than
``timescaledb.max_tuples_decompressed_per_dml_transaction`` allows (100,000 by default). The
writer sets it for the call (``set_config(..., is_local => true)``) to ``max_tuples_decompressed``
(default 0, unlimited) when the server has the setting, and puts the previous value back after
the call when the transaction is the caller's.

Citus: in a database with the ``citus`` extension the merge leaves out its pre-filter of unchanged
rows (see :func:`~sa_signals.write.statements.merge_statement`); the coordinator pulls the
staged rows and routes each to its shard.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, text, tuple_
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateTable, DropTable
from sqlalchemy.sql.dml import Insert

from ..errors import ConfigurationError, InvalidSignalError, WriteError
from ..result import APPEND, COPY, UPSERT, WriteResult
from ..schema.model import KEY_COLUMNS
from .append import (
    TABLE_COLUMNS,
    copy_bytes,
    copy_rows_into_table,
    in_write_order,
    probe_statement,
    series_ranges,
)
from .copy import copy_rows, driver_error, supports_copy
from .frames import is_frame
from .statements import (
    STAGE_COLUMNS,
    STAGE_NAME,
    STAGE_SCHEMA,
    MergeKind,
    chunk_overlap_statement,
    merge_statement,
    sqlite_merge,
    sqlite_stage,
    stage_ddl,
    stage_insert_statement,
    truncate_stage,
    upsert_statement,
)
from .validation import (
    Row,
    RowStats,
    first_metadata_error,
    validate_signals,
    with_metadata_encoded,
)

__all__ = [
    "DECOMPRESSION_SETTING",
    "DEFAULT_MAX_TUPLES_DECOMPRESSED",
    "DEFAULT_STREAM_BATCH",
    "Progress",
    "Writer",
    "check_batch_size",
    "database_error",
]

#: Batch size for iterables without a length when no ``batch_size`` is given.
DEFAULT_STREAM_BATCH = 10_000
#: TimescaleDB's cap on tuples decompressed by one DML transaction.
DECOMPRESSION_SETTING = "timescaledb.max_tuples_decompressed_per_dml_transaction"
#: What a write sets it to for its own statements: 0 means no cap (see the module docstring).
DEFAULT_MAX_TUPLES_DECOMPRESSED = 0
# Rows per key-existence query on SQLite (4 parameters each, far below SQLite's limit).
_SQLITE_LOOKUP_CHUNK = 200
# Key of a row in write order (the primary key's).
_write_key = itemgetter(1, 2, 3, 4)
_PARAM_NAMES = ("provider", "symbol", "ts", "name", "value", "score", "metadata")
# connection.info key: whether this database session has the decompression setting.
_HAS_SETTING = "sa_signals.decompression_setting"
# connection.info key: whether this database has the citus extension.
_HAS_CITUS = "sa_signals.citus"
_READ_CITUS = text("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')")
_UNIQUE_VIOLATION = "23505"
_READ_SETTING = text("SELECT current_setting(:name, true)")
_SWAP_SETTING = text("SELECT current_setting(:name), set_config(:name, :value, true)")
_SET_SETTING = text("SELECT set_config(:name, :value, true)")


class Progress:
    """How far a call got, for the failure metrics: the method in use and signals read."""

    __slots__ = ("method", "received")

    def __init__(self) -> None:
        self.method = UPSERT
        self.received = 0


def check_batch_size(batch_size: object) -> int:
    """``batch_size`` if it is a positive int, else :class:`ConfigurationError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def database_error(exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` for a SQLAlchemy error (``None`` for anything else)."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        return WriteError(
            f"writing signals failed, nothing was kept: {orig}",
            sqlstate=sqlstate if isinstance(sqlstate, str) else None,
            connection_lost=exc.connection_invalidated,
        )
    if isinstance(exc, SQLAlchemyError):  # e.g. pool exhausted (sqlalchemy.exc.TimeoutError)
        return WriteError(f"writing signals failed, nothing was kept: {exc}")
    return None


@functools.lru_cache(maxsize=128)
def _upsert(table: Table, dialect_name: str) -> Insert:
    return upsert_statement(table, dialect_name)


@functools.lru_cache(maxsize=256)
def _merge(
    table: Table, dialect: Any, kind: MergeKind, skip_unchanged: bool, fresh: bool = False
) -> Any:
    return merge_statement(table, dialect, kind, skip_unchanged=skip_unchanged, fresh=fresh)


@functools.lru_cache(maxsize=128)
def _chunk_overlap(table: Table, dialect: Any) -> Any:
    return chunk_overlap_statement(table, dialect)


@functools.lru_cache(maxsize=128)
def _sqlite_statements(table: Table) -> tuple[Table, Any, Any, Any, Any]:
    stage = sqlite_stage(table)
    counts, merge = sqlite_merge(table, stage)
    return stage, CreateTable(stage, if_not_exists=True), DropTable(stage), counts, merge


_STAGE_INSERT = stage_insert_statement()


def _params(rows: Iterable[Row], *, with_ord: bool = False) -> list[dict[str, Any]]:
    if with_ord:
        return [dict(zip(STAGE_COLUMNS, r, strict=True)) for r in rows]
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


def _in_write_order(rows: list[Row], stats: RowStats) -> list[Row]:
    """The last occurrence of each key, in write order (``rows`` as is when already so)."""
    if stats.ordered:
        return rows
    latest = {_write_key(row): row for row in rows}
    # Sort the keys already built rather than extracting them again per row.
    return [latest[key] for key in sorted(latest)]


class Writer:
    """The write logic for one target table; stateless, so it can be shared across threads.

    ``max_tuples_decompressed``: see the module docstring (``None`` leaves the server's
    setting alone). ``append_fast_path``: let calls whose keys an index probe proves new
    COPY straight into the table (:mod:`sa_signals.write.append`); ``False``: always merge.
    """

    def __init__(
        self,
        table: Table,
        batch_threshold: int,
        max_tuples_decompressed: int | None = DEFAULT_MAX_TUPLES_DECOMPRESSED,
        append_fast_path: bool = True,
    ) -> None:
        if not isinstance(append_fast_path, bool):
            raise ConfigurationError(f"append_fast_path must be a bool, got {append_fast_path!r}")
        if (
            isinstance(batch_threshold, bool)
            or not isinstance(batch_threshold, int)
            or batch_threshold < 1
        ):
            raise ConfigurationError(f"batch_threshold must be a positive int: {batch_threshold!r}")
        if max_tuples_decompressed is not None and (
            isinstance(max_tuples_decompressed, bool)
            or not isinstance(max_tuples_decompressed, int)
            or max_tuples_decompressed < 0
        ):
            raise ConfigurationError(
                "max_tuples_decompressed must be None or an int >= 0 (0: no cap), "
                f"got {max_tuples_decompressed!r}"
            )
        self.table = table
        self.batch_threshold = batch_threshold
        self.max_tuples_decompressed = max_tuples_decompressed
        self.append_fast_path = append_fast_path

    @staticmethod
    def batch_size_for(signals: Iterable[Any], batch_size: int | None) -> int:
        """``batch_size``, or the default: all of a sequence, else :data:`DEFAULT_STREAM_BATCH`."""
        if batch_size is None:
            return max(len(signals), 1) if isinstance(signals, Sequence) else DEFAULT_STREAM_BATCH
        return check_batch_size(batch_size)

    @staticmethod
    def given(signals: Iterable[Any], progress: Progress) -> int:
        """How many signals a failed call was given: its length when known, else those read."""
        return len(signals) if isinstance(signals, Sized) else progress.received

    def write(
        self,
        connection: Connection,
        signals: Iterable[Any],
        batch_size: int,
        *,
        own_transaction: bool,
        progress: Progress,
    ) -> WriteResult:
        """Write ``signals`` on ``connection`` inside the caller's transaction.

        ``own_transaction``: the transaction holds this call only (a client's), so the staging
        table and the decompression setting need no cleaning up for later statements.
        """
        if is_frame(signals):
            return self._write_frame(connection, signals, batch_size, own_transaction, progress)
        if (
            self.append_fast_path
            and isinstance(signals, Sequence)
            and self.batch_threshold <= len(signals) <= batch_size
            and supports_copy(connection)
            and self._may_append(connection)
        ):
            return self._write_one_batch(connection, signals, batch_size, own_transaction, progress)
        if (
            self.append_fast_path
            and isinstance(signals, Sequence)
            and batch_size < len(signals)
            and len(signals) >= self.batch_threshold
            and supports_copy(connection)
            and self._may_append(connection)
        ):
            # Several batches of a sequence (which can be read again): the append fast path
            # probes with the first batch and falls back to the merge below.
            appended = self._append_sequence(
                connection, signals, batch_size, own_transaction, progress
            )
            if appended is not None:
                return appended
        stats = RowStats(batch_size)
        rows = validate_signals(signals, stats=stats)
        try:
            with _write_errors(connection, stats):
                return self._write(connection, rows, stats, batch_size, own_transaction, progress)
        finally:
            rows.close()
            progress.received = stats.count

    def _write_frame(
        self,
        connection: Connection,
        frame: Any,
        batch_size: int,
        own: bool,
        progress: Progress,
    ) -> WriteResult:
        """A DataFrame: validated by columns, then COPY-encoded by pgpq (see ``frames``)."""
        from .frames import encode_copy, frame_rows

        rows = frame_rows(frame)  # InvalidSignalError before any SQL
        progress.received = count = rows.count
        if not count:
            return WriteResult()
        with _write_errors(connection):
            if (
                connection.dialect.name != "postgresql"
                or not supports_copy(connection)
                or count < self.batch_threshold
            ):
                # The ordinary path, from rows already validated.
                stats = RowStats(batch_size)
                stats.count, stats.duplicates = count, count - rows.distinct
                return self._write(connection, rows.rows(), stats, batch_size, own, progress)
            progress.method = COPY
            chunk = max(batch_size, 1)
            if rows.distinct == count and self._may_append(connection):
                table = self.table
                ordered = rows.sorted()
                appended = self._append(
                    connection,
                    rows.probe,
                    own,
                    lambda: copy_bytes(
                        connection,
                        table.schema,
                        table.name,
                        TABLE_COLUMNS,
                        encode_copy(ordered, TABLE_COLUMNS, jsonb=True, chunk=chunk),
                    ),
                    lambda: count,
                )
                if appended is not None:
                    return appended
            dialect = connection.dialect
            connection.execute(stage_ddl(dialect))
            copy_bytes(
                connection,
                STAGE_SCHEMA,
                STAGE_NAME,
                STAGE_COLUMNS,
                # Staged in write order (sorted by Arrow, in C): the merge's pre-filter of
                # unchanged rows and its ORDER BY then meet presorted rows; the server's work
                # on a 200,000-row replay fell from about 0.85 s to 0.5 s (Arrow's sort: 0.06 s).
                encode_copy(rows.sorted(), STAGE_COLUMNS, jsonb=True, chunk=chunk),
            )
            # The time bounds let a call into an empty time range skip the merge machinery
            # (see _merge_stage), as for objects.
            bounds = RowStats(batch_size)
            bounds.low, bounds.high = rows.bounds()
            if rows.distinct == count:
                kind, distinct = MergeKind.SORTED, count
            else:
                kind, distinct = MergeKind.DEDUPLICATED, rows.distinct
            return self._merge_stage(connection, count, kind, distinct, own, COPY, bounds)

    def _write_one_batch(
        self,
        connection: Connection,
        signals: Sequence[Any],
        batch_size: int,
        own: bool,
        progress: Progress,
    ) -> WriteResult:
        """A sequence held in one batch, COPY-sized: the append fast path, else the merge.

        Everything but the metadata is validated first (the probe and the write order need
        the keys); the metadata is encoded while the COPY streams, overlapping the server's
        work. An invalid signal is reported by its lowest index, as the one-pass validation
        would: an earlier invalid metadata wins over a later invalid field.
        """
        stats = RowStats(batch_size)
        raw = validate_signals(signals, stats=stats, encode_metadata=False)
        try:
            with _write_errors(connection, stats):
                try:
                    rows = list(raw)
                except InvalidSignalError as exc:
                    raise first_metadata_error(signals, exc.index) or exc from None
                if stats.duplicates is None and not stats.ordered:
                    # Timestamps went back, so the per-row loop could not count repeats: the
                    # batch is in memory, count them here (one set of keys).
                    stats.duplicates = len(rows) - len({_write_key(row) for row in rows})
                if stats.ordered or stats.duplicates == 0:
                    appended = self._append_batch(
                        connection,
                        rows,
                        stats,
                        own,
                        progress,
                        lambda r: _encoded_metadata(r, signals),
                    )
                    if appended is not None:
                        return appended
                encoded = iter(list(_encoded_metadata(rows, signals)))
                return self._write(
                    connection, encoded, stats, batch_size, own, progress, append=False
                )
        finally:
            raw.close()
            progress.received = stats.count

    def _append_batch(
        self,
        connection: Connection,
        rows: list[Row],
        stats: RowStats,
        own: bool,
        progress: Progress,
        encode: Callable[[Iterable[Row]], Iterable[Row]] | None = None,
    ) -> WriteResult | None:
        """The append fast path for ``rows`` (unique keys), in write order; ``None``: merge.

        ``encode``: applied to the rows on their way into the COPY (deferred metadata)."""
        progress.method = COPY
        table = self.table
        in_order: Iterable[Row] = rows if stats.ordered else in_write_order(rows)
        if encode is not None:
            in_order = encode(in_order)
        return self._append(
            connection,
            lambda: series_ranges(rows),
            own,
            lambda: copy_rows_into_table(connection, table, in_order),
            lambda: len(rows),
        )

    def _append_sequence(
        self,
        connection: Connection,
        signals: Sequence[Any],
        batch_size: int,
        own: bool,
        progress: Progress,
    ) -> WriteResult | None:
        """The append fast path for a sequence of several batches; ``None``: merge instead.

        The probe covers the first batch's series and time ranges; the rest streams into the
        same COPY (validated on the way, memory bounded by ``batch_size``) as long as the keys
        arrive in write order. A key out of order, or one that exists after all (a later
        batch overlapping stored rows, a concurrent writer), abandons the COPY: the caller
        merges, reading the sequence again.
        """
        stats = RowStats(batch_size)
        rows = validate_signals(signals, stats=stats)
        table = self.table
        try:
            with _write_errors(connection, stats):
                first = list(islice(rows, batch_size))
                progress.method = COPY
                ordered = _in_write_order_only(chain(first, rows))
                return self._append(
                    connection,
                    lambda: series_ranges(first),
                    own,
                    lambda: copy_rows_into_table(connection, table, ordered),
                    lambda: stats.count,
                    stats,
                )
        finally:
            rows.close()
            progress.received = stats.count

    def _may_append(self, connection: Connection) -> bool:
        # Not through a Citus coordinator: the probe is a correlated subquery, which Citus
        # cannot plan on a distributed table; the merge is the tested path there.
        return self.append_fast_path and not _has_citus(connection)

    def _append(
        self,
        connection: Connection,
        probe: Callable[[], dict[str, list[Any]]],
        own: bool,
        copy: Callable[[], None],
        count: Callable[[], int],
        stats: RowStats | None = None,
    ) -> WriteResult | None:
        """The append fast path (see :mod:`.append`); ``None``: merge instead.

        The probe runs inside the savepoint, so rolling back to it also releases the locks the
        probe took (no lock upgrade from the probe's to the merge's). Rows reach the COPY in
        write order, so two writers of the same new keys lock them in the same order: the
        second waits, meets a unique violation and merges, never a deadlock between them.
        """
        table = self.table
        with self._decompression(connection, own):
            savepoint = connection.begin_nested()
            try:
                if connection.execute(probe_statement(table, connection.dialect), probe()).scalar():
                    savepoint.rollback()
                    return None
                copy()
            except BaseException as exc:
                if isinstance(exc, InvalidSignalError) or (
                    stats is not None and exc is stats.error
                ):
                    # The input failed mid-COPY, not the connection: leave the savepoint
                    # closed so the caller's rollback (of its own savepoint) finds it so.
                    savepoint.rollback()
                    raise
                if not _abandons_append(exc):
                    raise  # the caller rolls back (a lost connection must not be used here)
                savepoint.rollback()
                return None
            savepoint.commit()
        received = count()
        return WriteResult(received, received, 0, 0, (COPY, APPEND))

    def _write(
        self,
        connection: Connection,
        rows: Iterator[Row],
        stats: RowStats,
        batch_size: int,
        own: bool,
        progress: Progress,
        *,
        append: bool = True,
    ) -> WriteResult:
        dialect = connection.dialect
        if dialect.name not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"sa_signals writes to PostgreSQL and SQLite, not {dialect.name!r}"
            )
        first = list(islice(rows, batch_size))
        if not first:
            return WriteResult()
        following = next(rows, None)
        rest = rows if following is None else chain((following,), rows)
        if dialect.name == "sqlite":
            if following is None:
                return self._sqlite_upsert(connection, first, stats)
            return self._sqlite_staged(connection, first, rest, stats, batch_size)
        copy_ok = supports_copy(connection)
        if following is None and (len(first) < self.batch_threshold or not copy_ok):
            with self._decompression(connection, own):
                return self._pg_upsert(connection, first, stats)
        if (
            append
            and following is None
            and (stats.ordered or stats.duplicates == 0)
            and self._may_append(connection)
        ):
            # All of the call is here, keys unique: the append fast path may apply, in write
            # order (see _append).
            appended = self._append_batch(connection, first, stats, own, progress)
            if appended is not None:
                return appended

        connection.execute(stage_ddl(dialect))
        batch, staged = first, 0
        while batch:
            if copy_ok and staged + len(batch) >= self.batch_threshold:
                progress.method = COPY
                copy_rows(connection, chain(batch, rest))
                break
            columns = list(zip(*batch, strict=True))
            connection.execute(
                _STAGE_INSERT,
                {name: list(columns[i]) for i, name in enumerate(STAGE_COLUMNS)},
            )
            staged += len(batch)
            batch = list(islice(rest, batch_size))
        received = stats.count
        return self._merge_stage_stats(connection, received, stats, own, progress.method)

    def _merge_stage_stats(
        self, connection: Connection, received: int, stats: RowStats, own: bool, method: str
    ) -> WriteResult:
        if stats.ordered or stats.duplicates == 0:
            kind, distinct = MergeKind.SORTED, received
        elif stats.duplicates is not None:
            kind, distinct = MergeKind.DEDUPLICATED, received - stats.duplicates
        else:
            kind, distinct = MergeKind.COUNTED, -1
        return self._merge_stage(connection, received, kind, distinct, own, method, stats)

    def _merge_stage(
        self,
        connection: Connection,
        received: int,
        kind: MergeKind,
        distinct: int,
        own: bool,
        method: str = COPY,
        stats: RowStats | None = None,
    ) -> WriteResult:
        """Merge the staging table into the table, then empty it unless the call owns it.

        With ``stats`` whose time bounds are known, a call into an empty time range is
        inserted without the merge machinery (:meth:`_insert_fresh`).
        """
        dialect = connection.dialect
        citus = _has_citus(connection)
        merge = _merge(self.table, dialect, kind, not citus)
        with self._decompression(connection, own):
            row = None
            if (
                stats is not None
                and stats.low is not None
                and kind is not MergeKind.COUNTED
                and not citus
                # On TimescaleDB only where no chunk exists yet: the plain INSERT into a chunk
                # that a compression job was compressing deadlocked with it
                # (tests/test_write_timescale.py); a chunk the INSERT creates is not compressed.
                and not (
                    _has_decompression_setting(connection)
                    and self._chunk_overlaps(connection, stats)
                )
            ):
                row = self._insert_fresh(connection, kind, stats)
            counted, inserted, changed = row or connection.execute(merge).one()
        if not own:
            connection.execute(truncate_stage(dialect))
        if kind is MergeKind.COUNTED:
            distinct = int(counted)
        return self._result(received, distinct, inserted, changed, method)

    def _chunk_overlaps(self, connection: Connection, stats: RowStats) -> bool:
        statement = _chunk_overlap(self.table, connection.dialect)
        bounds = {"low": stats.low, "high": stats.high}
        return bool(connection.execute(statement, bounds).scalar())

    def _insert_fresh(
        self, connection: Connection, kind: MergeKind, stats: RowStats
    ) -> tuple[Any, int, int] | None:
        """The staged rows by plain INSERT when the table held no row in the call's time
        range (see ``merge_statement(fresh=True)``); ``None``: merge instead."""
        fresh = _merge(self.table, connection.dialect, kind, True, True)
        bounds = {"low": stats.low, "high": stats.high}
        savepoint = connection.begin_nested()
        try:
            row = connection.execute(fresh, bounds).one()
        except DBAPIError as exc:
            error = database_error(exc)
            if error is None or error.sqlstate != _UNIQUE_VIOLATION:
                raise
            savepoint.rollback()  # a concurrent writer added one of the keys: merge
            return None
        savepoint.commit()
        if not row[2]:  # the range held rows: nothing was inserted
            return None
        return row[0], int(row[1]), int(row[2])

    @staticmethod
    def _result(
        received: int, distinct: int, inserted: int, changed: int, method: str
    ) -> WriteResult:
        return WriteResult(received, inserted, changed - inserted, distinct - changed, (method,))

    def _pg_upsert(self, connection: Connection, batch: list[Row], stats: RowStats) -> WriteResult:
        ordered = _in_write_order(batch, stats)
        statement = _upsert(self.table, "postgresql")
        # Rows per statement: the engine's insertmanyvalues_page_size, as for VALUES lists;
        # pages follow each other in write order, so the call still locks in that order.
        page = connection.dialect.insertmanyvalues_page_size or len(ordered)
        inserted = changed = 0
        for start in range(0, len(ordered), page):
            columns = list(zip(*ordered[start : start + page], strict=True))
            arrays = {name: list(columns[i]) for i, name in enumerate(_PARAM_NAMES, 1)}
            flags = connection.execute(statement, arrays).scalars().all()
            inserted += sum(1 for flag in flags if flag)
            changed += len(flags)
        return self._result(len(batch), len(ordered), inserted, changed, UPSERT)

    def _sqlite_upsert(
        self, connection: Connection, batch: list[Row], stats: RowStats
    ) -> WriteResult:
        ordered = _in_write_order(batch, stats)
        # SQLite has no xmax: count the keys that already exist, in the same transaction.
        existed = self._count_existing(connection, [row[1:5] for row in ordered])
        changed = len(connection.execute(_upsert(self.table, "sqlite"), _params(ordered)).all())
        return self._result(len(batch), len(ordered), len(ordered) - existed, changed, UPSERT)

    def _sqlite_staged(
        self,
        connection: Connection,
        first: list[Row],
        rest: Iterator[Row],
        stats: RowStats,
        batch_size: int,
    ) -> WriteResult:
        stage, create, drop, counts, merge = _sqlite_statements(self.table)
        connection.execute(create)
        # A stage left over by a failed call that ran outside a transaction: start empty.
        connection.execute(delete(stage))
        batch = first
        while batch:
            connection.execute(insert(stage), _params(batch, with_ord=True))
            batch = list(islice(rest, batch_size))
        distinct, existed = connection.execute(counts).one()
        changed = len(connection.execute(merge).all())
        connection.execute(drop)
        return self._result(stats.count, distinct, distinct - existed, changed, UPSERT)

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

    @contextmanager
    def _decompression(self, connection: Connection, own: bool) -> Iterator[None]:
        """Lift TimescaleDB's decompression cap for the statements inside (see module doc)."""
        limit = self.max_tuples_decompressed
        if limit is None or not _has_decompression_setting(connection):
            yield
            return
        params = {"name": DECOMPRESSION_SETTING, "value": str(limit)}
        if own:
            connection.execute(_SET_SETTING, params)
            yield
            return
        previous = connection.execute(_SWAP_SETTING, params).scalar_one()
        yield
        connection.execute(_SET_SETTING, {"name": DECOMPRESSION_SETTING, "value": previous})


class _OutOfOrder(Exception):
    """Raised into the append COPY when a key does not follow the previous one."""


#: What abandons an append for the merge: a unique violation (the key exists after all) and
#: a deadlock (with a writer outside this library, or a compression job): the savepoint's
#: rollback releases what the append locked, and the merge takes its locks in write order.
_APPEND_FALLBACK_SQLSTATES = frozenset({"23505", "40P01"})


def _abandons_append(exc: BaseException) -> bool:
    if isinstance(exc, _OutOfOrder):
        return True
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) in _APPEND_FALLBACK_SQLSTATES


def _encoded_metadata(rows: Iterable[Row], signals: Sequence[Any]) -> Iterator[Row]:
    """:func:`with_metadata_encoded`, reporting the lowest-indexed invalid metadata of
    ``signals`` (``rows`` may come in write order)."""
    try:
        yield from with_metadata_encoded(rows)
    except InvalidSignalError as exc:
        raise first_metadata_error(signals, exc.index) or exc from None


def _in_write_order_only(rows: Iterable[Row]) -> Iterator[Row]:
    """``rows`` as they come, raising :class:`_OutOfOrder` at a key not above the last one."""
    last: tuple[Any, ...] = ()
    for row in rows:
        key = (row[1], row[2], row[3], row[4])
        if key <= last:
            raise _OutOfOrder
        last = key
        yield row


@contextmanager
def _write_errors(connection: Connection, stats: RowStats | None = None) -> Iterator[None]:
    """Turn database and driver failures inside into :class:`WriteError`; an exception of the
    caller's iterable (``stats.error``, invalid signals included) propagates unchanged."""
    try:
        yield
    except BaseException as exc:
        if stats is not None and exc is stats.error:
            raise
        error = _failure(connection, exc)
        if error is exc:
            raise
        raise error from exc


def _failure(connection: Connection, exc: BaseException) -> BaseException:
    """The :class:`WriteError` for a database or driver failure, else ``exc`` itself."""
    error = database_error(exc)
    if error is None and supports_copy(connection):
        error = driver_error(connection, exc)
    return exc if error is None else error


def _has_decompression_setting(connection: Connection) -> bool:
    # Asked once per database session: the setting exists once TimescaleDB is loaded in it.
    info = connection.info
    found = info.get(_HAS_SETTING)
    if found is None:
        value = connection.execute(_READ_SETTING, {"name": DECOMPRESSION_SETTING}).scalar()
        found = info[_HAS_SETTING] = value is not None
    return bool(found)


def _has_citus(connection: Connection) -> bool:
    # Asked once per database session. On Citus the merge leaves out its pre-filter of
    # unchanged rows (a correlated subquery Citus cannot plan on a distributed table).
    info = connection.info
    found = info.get(_HAS_CITUS)
    if found is None:
        found = info[_HAS_CITUS] = bool(connection.execute(_READ_CITUS).scalar())
    return bool(found)
