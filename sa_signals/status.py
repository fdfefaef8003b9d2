"""Storage health of a signals table: sizes, row estimate, hypertable, compression and policies.

:func:`storage_stats` answers the spec's *Storage Health* and *Debug Queries* in one typed value,
on each backend with what applies there:

- TimescaleDB: sizes from ``hypertable_detailed_size()`` (``pg_total_relation_size`` of a
  hypertable root is ~0: its rows live in chunks), chunk count and interval, compression settings
  and ``hypertable_compression_stats()`` (bytes before/after, ratio), policies from
  ``timescaledb_information.jobs`` with their last run from ``timescaledb_information.job_stats``.
- plain PostgreSQL: heap, TOAST and index sizes, the planner's row estimate, per-index scans.
- a Citus distributed table (on the coordinator): sizes summed over its shards
  (``citus_table_size``, ``citus_total_relation_size``) and a note naming the distribution;
  the coordinator's own relation is an empty shell, so its row estimate and per-index figures
  are left out (``exact_count`` counts through the coordinator).
- SQLite: exact row count, page size and count, file size, per-object bytes when ``dbstat`` is
  compiled in.

Every value is a bound parameter; relation names are resolved with ``to_regclass`` from a quoted
name, so any case or schema works.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, func, select, text
from sqlalchemy import table as table_clause
from sqlalchemy.exc import DBAPIError

from .errors import ConfigurationError
from .schema.ddl.citus import read_distribution_state
from .schema.ddl.postgresql import (
    TimescaleState,
    extension_version,
    qualified_name,
    read_timescale_state,
    timescale_version,
)
from .schema.options import table_of

__all__ = [
    "AggregateStats",
    "CompressionStats",
    "HypertableStats",
    "IndexStats",
    "PolicyStats",
    "StorageStats",
    "storage_stats",
]


@dataclass(frozen=True)
class IndexStats:
    """One index of the table: its size and, where the server tracks it, how often it was used."""

    name: str
    size_bytes: int | None
    scans: int | None = None


@dataclass(frozen=True)
class CompressionStats:
    """``hypertable_compression_stats()``: bytes of the compressed chunks before and after."""

    total_chunks: int
    compressed_chunks: int
    before_bytes: int | None
    after_bytes: int | None

    @property
    def ratio(self) -> float | None:
        """``before / after`` (e.g. ``8.0`` means eight times smaller); ``None`` if unknown."""
        if not self.before_bytes or not self.after_bytes:
            return None
        return self.before_bytes / self.after_bytes


@dataclass(frozen=True)
class PolicyStats:
    """A TimescaleDB background job on the table and its last run (``job_stats``).

    A time the catalog holds as infinite is ``None``: ``last_successful_finish`` of a job that
    has never succeeded, ``next_start`` of one that is not scheduled.
    """

    job_id: int
    kind: str
    schedule_interval: timedelta | None
    config: dict[str, Any]
    scheduled: bool
    last_run_started_at: datetime | None
    last_successful_finish: datetime | None
    last_run_status: str | None
    job_status: str | None
    next_start: datetime | None
    total_runs: int | None
    total_failures: int | None


@dataclass(frozen=True)
class AggregateStats:
    """A continuous aggregate reading the table (a signals rollup or the host's own).

    ``total_bytes`` is its materialized data (``hypertable_size`` of its materialization
    hypertable). ``watermark`` is where its materialized data ends (``None`` while nothing is
    materialized); buckets after it are aggregated at query time when ``materialized_only``
    is false. ``policies`` are its refresh, compression and retention jobs.
    """

    name: str
    schema: str
    materialized_only: bool
    compression_enabled: bool
    total_bytes: int | None
    chunk_count: int
    compressed_chunk_count: int
    watermark: datetime | None
    policies: tuple[PolicyStats, ...]


@dataclass(frozen=True)
class HypertableStats:
    """Hypertable layout and compression of a signals table on TimescaleDB."""

    time_column: str | None
    chunk_time_interval: timedelta | None
    chunk_count: int
    compressed_chunk_count: int
    oldest_chunk_start: datetime | None
    newest_chunk_end: datetime | None
    compression_enabled: bool
    segment_by: tuple[str, ...]
    order_by: tuple[str, ...]
    compress_after: timedelta | None
    drop_after: timedelta | None
    compression: CompressionStats | None
    policies: tuple[PolicyStats, ...]
    aggregates: tuple[AggregateStats, ...] = ()


@dataclass(frozen=True)
class StorageStats:
    """Storage of one signals table; fields that do not apply to the backend are ``None``.

    ``backend`` is ``"timescaledb"`` (the table is a hypertable), ``"postgresql"`` (a plain
    table, with or without the extension in the database) or ``"sqlite"``.
    """

    backend: str
    table: str
    schema: str | None
    server_version: str
    timescale_version: str | None
    row_estimate: int | None
    row_count_exact: bool
    table_bytes: int | None
    toast_bytes: int | None
    index_bytes: int | None
    total_bytes: int | None
    indexes: tuple[IndexStats, ...]
    hypertable: HypertableStats | None = None
    page_size: int | None = None
    page_count: int | None = None
    file_bytes: int | None = None
    notes: tuple[str, ...] = ()


def storage_stats(
    connection: Connection,
    table: Table | str | object,
    *,
    schema: str | None = None,
    exact_count: bool = False,
) -> StorageStats:
    """Read the storage statistics of ``table`` (a :class:`~sqlalchemy.Table`, a mapped class
    or a name).

    ``schema`` applies when ``table`` is a name (a ``Table`` carries its own). The row count is
    the planner's estimate on PostgreSQL unless ``exact_count`` (a ``count(*)``, which reads the
    whole table); SQLite always counts. Raises :class:`~sa_signals.errors.ConfigurationError`
    when the table does not exist or the dialect is neither PostgreSQL nor SQLite.
    """
    if isinstance(table, str):
        name: object = table
    elif isinstance(table, Table) or hasattr(table, "__table__"):
        resolved = table_of(table)
        name, schema = resolved.name, resolved.schema
    else:
        name = table
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"table name must be a non-empty string, got {name!r}")
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return _postgresql(connection, name, schema, exact_count)
    if dialect == "sqlite":
        return _sqlite(connection, name, schema)
    raise ConfigurationError(f"storage statistics support PostgreSQL and SQLite, not {dialect!r}")


def _count(connection: Connection, name: str, schema: str | None) -> int:
    # table() quotes the names through the dialect's own preparer.
    statement = select(func.count()).select_from(table_clause(name, schema=schema))
    return int(connection.execute(statement).scalar_one())


# -- PostgreSQL / TimescaleDB -------------------------------------------------------------


def _postgresql(
    connection: Connection, name: str, schema: str | None, exact_count: bool
) -> StorageStats:
    relation = qualified_name(name, schema)
    row = connection.execute(
        text(
            "SELECT c.oid, n.nspname, c.relkind, c.reltuples, "
            "COALESCE(pg_catalog.pg_total_relation_size(c.reltoastrelid), 0) "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(:relation)"
        ),
        {"relation": relation},
    ).first()
    if row is None or row[2] not in ("r", "p"):
        raise ConfigurationError(f"table {relation} does not exist")
    oid, actual_schema, _, reltuples, toast_bytes = row
    server_version = str(connection.execute(text("SHOW server_version")).scalar_one())
    version = timescale_version(connection)
    version_text = ".".join(str(part) for part in version) if version else None
    notes: list[str] = []

    hypertable = None
    distributed: tuple[int, int, int, str] | None = None
    if version is not None:
        state = read_timescale_state(connection, name, actual_schema)
        if state.is_hypertable:
            hypertable = _hypertable(connection, relation, name, actual_schema, state)
        else:
            notes.append("not a hypertable: plain PostgreSQL table in a TimescaleDB database")
    else:
        notes.append("timescaledb extension not installed: plain PostgreSQL table")

    if hypertable is not None:
        # A hypertable's root holds no rows: sizes and estimates come from its chunks.
        sizes = connection.execute(
            text(
                "SELECT table_bytes, index_bytes, toast_bytes, total_bytes "
                "FROM hypertable_detailed_size(CAST(:relation AS regclass))"
            ),
            {"relation": relation},
        ).one()
        table_bytes, index_bytes, toast_bytes, total_bytes = (_int(v) for v in sizes)
        estimate = connection.execute(
            text("SELECT approximate_row_count(CAST(:relation AS regclass))"),
            {"relation": relation},
        ).scalar_one()
        row_estimate: int | None = int(estimate) if estimate is not None else None
        indexes = _hypertable_indexes(connection, oid)
    else:
        sizes = connection.execute(
            text(
                "SELECT pg_catalog.pg_table_size(:oid), pg_catalog.pg_indexes_size(:oid), "
                "pg_catalog.pg_total_relation_size(:oid)"
            ),
            {"oid": oid},
        ).one()
        table_bytes = _int(sizes[0]) - int(toast_bytes)
        index_bytes, total_bytes = _int(sizes[1]), _int(sizes[2])
        toast_bytes = int(toast_bytes)
        # reltuples is -1 until the table is first vacuumed or analyzed.
        row_estimate = int(reltuples) if reltuples is not None and reltuples >= 0 else None
        indexes = _plain_indexes(connection, oid)
        distributed = _distributed_sizes(connection, name, actual_schema, oid)
        if distributed is not None:
            table_bytes, index_bytes, total_bytes, note = distributed
            toast_bytes, row_estimate, indexes = 0, None, ()
            # Not a plain table after all: the note names its distribution instead.
            notes = [n for n in notes if not n.endswith("plain PostgreSQL table")]
            notes.append(note)

    exact = False
    if exact_count:
        row_estimate, exact = _count(connection, name, actual_schema), True
    elif hypertable is None and distributed is not None:
        notes.append("row estimate of a distributed table: count exactly with --exact")
    elif row_estimate is None or (row_estimate == 0 and (table_bytes or 0) > 0):
        row_estimate = None
        notes.append("row estimate unknown until the table is analyzed (ANALYZE)")
    elif hypertable is not None and hypertable.compressed_chunk_count:
        notes.append("row estimate of compressed chunks is rough; count exactly with --exact")
    return StorageStats(
        backend="timescaledb" if hypertable is not None else "postgresql",
        table=name,
        schema=actual_schema,
        server_version=server_version,
        timescale_version=version_text,
        row_estimate=row_estimate,
        row_count_exact=exact,
        table_bytes=table_bytes,
        toast_bytes=toast_bytes,
        index_bytes=index_bytes,
        total_bytes=total_bytes,
        indexes=indexes,
        hypertable=hypertable,
        notes=tuple(notes),
    )


def _distributed_sizes(
    connection: Connection, name: str, schema: str, oid: int
) -> tuple[int, int, int, str] | None:
    """``(table, index, total bytes, note)`` over the shards of a Citus distributed table, or
    ``None`` for any other table (or without the ``citus`` extension)."""
    if extension_version(connection, "citus") is None:
        return None
    state = read_distribution_state(connection, name, schema)
    if not state.is_distributed:
        return None
    sizes = connection.execute(
        text("SELECT citus_table_size(:oid), citus_total_relation_size(:oid)"), {"oid": oid}
    ).one()
    table_bytes, total_bytes = _int(sizes[0]), _int(sizes[1])
    note = (
        f"Citus distributed table: by {state.column!r} over {state.shard_count} shards; "
        "sizes summed over the shards (indexes included in the total)"
    )
    return table_bytes, total_bytes - table_bytes, total_bytes, note


def _int(value: object) -> int:
    return int(value) if value is not None else 0  # type: ignore[call-overload]


def _plain_indexes(connection: Connection, oid: int) -> tuple[IndexStats, ...]:
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_catalog.pg_relation_size(i.indexrelid), s.idx_scan "
            "FROM pg_catalog.pg_index i "
            "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "LEFT JOIN pg_catalog.pg_stat_user_indexes s ON s.indexrelid = i.indexrelid "
            "WHERE i.indrelid = :oid ORDER BY c.relname"
        ),
        {"oid": oid},
    ).all()
    return tuple(IndexStats(r[0], int(r[1]), None if r[2] is None else int(r[2])) for r in rows)


def _hypertable_indexes(connection: Connection, oid: int) -> tuple[IndexStats, ...]:
    # hypertable_index_size() sums the index over every chunk; scans are per chunk index and
    # not summed here.
    rows = connection.execute(
        text(
            "SELECT c.relname, hypertable_index_size(i.indexrelid) "
            "FROM pg_catalog.pg_index i "
            "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = :oid ORDER BY c.relname"
        ),
        {"oid": oid},
    ).all()
    return tuple(IndexStats(r[0], None if r[1] is None else int(r[1])) for r in rows)


def _hypertable(
    connection: Connection, relation: str, name: str, schema: str, state: TimescaleState
) -> HypertableStats:
    params = {"schema": schema, "name": name}
    # The catalog's timestamps can be infinite (a chunk without a bound, a job that never
    # succeeded), which no Python datetime holds: each is read as NULL, i.e. None, then.
    chunks = connection.execute(
        text(
            "SELECT count(*), count(*) FILTER (WHERE is_compressed), "
            "min(CASE WHEN isfinite(range_start) THEN range_start END), "
            "max(CASE WHEN isfinite(range_end) THEN range_end END) "
            "FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = :schema AND hypertable_name = :name"
        ),
        params,
    ).one()
    compression = None
    if state.compression:
        stats = connection.execute(
            text(
                "SELECT total_chunks, number_compressed_chunks, "
                "before_compression_total_bytes, after_compression_total_bytes "
                "FROM hypertable_compression_stats(CAST(:relation AS regclass))"
            ),
            {"relation": relation},
        ).first()
        if stats is not None:
            compression = CompressionStats(
                total_chunks=int(stats[0] or 0),
                compressed_chunks=int(stats[1] or 0),
                before_bytes=None if stats[2] is None else int(stats[2]),
                after_bytes=None if stats[3] is None else int(stats[3]),
            )
    policies = _policies(connection, schema, name)
    return HypertableStats(
        time_column=state.time_column,
        chunk_time_interval=state.chunk_time_interval,
        chunk_count=int(chunks[0]),
        compressed_chunk_count=int(chunks[1]),
        oldest_chunk_start=chunks[2],
        newest_chunk_end=chunks[3],
        compression_enabled=bool(state.compression),
        segment_by=tuple(state.segment_by),
        order_by=tuple(item.sql(item.column) for item in state.order_by),
        compress_after=state.compress_after,
        drop_after=state.drop_after,
        compression=compression,
        policies=policies,
        aggregates=_aggregates(connection, schema, name),
    )


def _policies(connection: Connection, schema: str, name: str) -> tuple[PolicyStats, ...]:
    """The jobs of a hypertable or continuous aggregate, with their last runs."""
    jobs = connection.execute(
        text(
            "SELECT j.job_id, j.proc_name, j.schedule_interval, j.config, j.scheduled, "
            "CASE WHEN isfinite(s.last_run_started_at) THEN s.last_run_started_at END, "
            "CASE WHEN isfinite(s.last_successful_finish) THEN s.last_successful_finish END, "
            "s.last_run_status, s.job_status, "
            "CASE WHEN isfinite(COALESCE(s.next_start, j.next_start)) "
            "THEN COALESCE(s.next_start, j.next_start) END, "
            "s.total_runs, s.total_failures "
            "FROM timescaledb_information.jobs j "
            "LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id "
            "WHERE j.hypertable_schema = :schema AND j.hypertable_name = :name "
            "ORDER BY j.job_id"
        ),
        {"schema": schema, "name": name},
    ).all()
    return tuple(
        PolicyStats(
            job_id=int(r[0]),
            kind=str(r[1]),
            schedule_interval=r[2],
            config=dict(r[3] or {}),
            scheduled=bool(r[4]),
            last_run_started_at=r[5],
            last_successful_finish=r[6],
            last_run_status=r[7],
            job_status=r[8],
            next_start=r[9],
            total_runs=None if r[10] is None else int(r[10]),
            total_failures=None if r[11] is None else int(r[11]),
        )
        for r in jobs
    )


def _aggregates(connection: Connection, schema: str, name: str) -> tuple[AggregateStats, ...]:
    """The continuous aggregates reading the hypertable, with size, watermark and jobs."""
    # The watermark is -infinity (as TimescaleDB's internal minimum) until the first refresh:
    # read as NULL, i.e. None, like every infinite time here.
    rows = connection.execute(
        text(
            "SELECT a.view_schema, a.view_name, a.materialized_only, a.compression_enabled, "
            "hypertable_size(CAST(format('%I.%I', a.materialization_hypertable_schema, "
            "a.materialization_hypertable_name) AS regclass)), "
            "(SELECT count(*) FROM timescaledb_information.chunks c "
            " WHERE c.hypertable_schema = a.materialization_hypertable_schema "
            " AND c.hypertable_name = a.materialization_hypertable_name), "
            "(SELECT count(*) FROM timescaledb_information.chunks c "
            " WHERE c.hypertable_schema = a.materialization_hypertable_schema "
            " AND c.hypertable_name = a.materialization_hypertable_name AND c.is_compressed), "
            "(SELECT CASE WHEN isfinite(w) AND w > '0001-01-01 00:00:00+00' THEN w END "
            " FROM (SELECT _timescaledb_functions.to_timestamp("
            " _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id)) AS w) AS mark) "
            "FROM timescaledb_information.continuous_aggregates a "
            "JOIN _timescaledb_catalog.continuous_agg ca "
            "ON ca.user_view_schema = a.view_schema AND ca.user_view_name = a.view_name "
            "WHERE a.hypertable_schema = :schema AND a.hypertable_name = :name "
            "ORDER BY a.view_schema, a.view_name"
        ),
        {"schema": schema, "name": name},
    ).all()
    return tuple(
        AggregateStats(
            name=str(r[1]),
            schema=str(r[0]),
            materialized_only=bool(r[2]),
            compression_enabled=bool(r[3]),
            total_bytes=None if r[4] is None else int(r[4]),
            chunk_count=int(r[5]),
            compressed_chunk_count=int(r[6]),
            watermark=r[7],
            policies=_policies(connection, str(r[0]), str(r[1])),
        )
        for r in rows
    )


# -- SQLite -------------------------------------------------------------------------------


def _sqlite(connection: Connection, name: str, schema: str | None) -> StorageStats:
    database = schema or "main"
    quoted = connection.dialect.identifier_preparer.quote_identifier(database)
    # The schema name cannot be bound in SQLite; it is quoted. The table name is bound.
    found = connection.execute(
        text(f"SELECT 1 FROM {quoted}.sqlite_master WHERE type = 'table' AND name = :name"),  # noqa: S608
        {"name": name},
    ).first()
    if found is None:
        where = f"{schema}.{name}" if schema else name
        raise ConfigurationError(f"table {where!r} does not exist")
    index_names = [
        r[0]
        for r in connection.execute(
            text(
                f"SELECT name FROM {quoted}.sqlite_master "  # noqa: S608
                "WHERE type = 'index' AND tbl_name = :name ORDER BY name"
            ),
            {"name": name},
        )
    ]
    page_size = int(connection.exec_driver_sql(f"PRAGMA {quoted}.page_size").scalar_one())
    page_count = int(connection.exec_driver_sql(f"PRAGMA {quoted}.page_count").scalar_one())
    notes: list[str] = []
    sizes: dict[str, int] = {}
    try:
        # dbstat is an optional SQLite build feature; without it only file totals are known.
        sizes = {
            str(r[0]): int(r[1])
            for r in connection.execute(
                text("SELECT name, SUM(pgsize) FROM dbstat(:db) GROUP BY name"),
                {"db": database},
            )
        }
    except DBAPIError:
        # A failed SELECT leaves an SQLite transaction usable: nothing to roll back.
        notes.append("per-table sizes need SQLite's dbstat virtual table (not compiled in)")
    file_bytes = None
    path = next(
        (r[2] for r in connection.exec_driver_sql("PRAGMA database_list") if r[1] == database),
        None,
    )
    if path and os.path.exists(path):
        file_bytes = os.path.getsize(path)
    else:
        notes.append("in-memory database: no file")
    table_bytes = sizes.get(name)
    # The primary key of a table with a composite key is an automatic index.
    index_names += sorted(k for k in sizes if k.startswith(f"sqlite_autoindex_{name}_"))
    indexes = tuple(IndexStats(n, sizes.get(n)) for n in dict.fromkeys(index_names))
    index_bytes = sum(i.size_bytes or 0 for i in indexes) if sizes else None
    version = str(connection.exec_driver_sql("SELECT sqlite_version()").scalar_one())
    return StorageStats(
        backend="sqlite",
        table=name,
        schema=schema,
        server_version=version,
        timescale_version=None,
        row_estimate=_count(connection, name, schema),
        row_count_exact=True,
        table_bytes=table_bytes,
        toast_bytes=None,
        index_bytes=index_bytes,
        total_bytes=None if table_bytes is None else table_bytes + (index_bytes or 0),
        indexes=indexes,
        page_size=page_size,
        page_count=page_count,
        file_bytes=file_bytes,
        notes=tuple(notes),
    )
