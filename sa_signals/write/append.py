"""The append fast path: COPY straight into the signals table when no key can collide.

Streaming pipelines mostly write keys that do not exist yet. For a call whose signals are all
in memory, with unique keys, :func:`probe_statement` asks the table (through the
``(provider, symbol, name, ts DESC)`` index, one range scan per series) whether any stored row
lies in the time range the call writes for any of its series. If none does, the rows go
into the table by binary COPY inside a savepoint; if a unique violation appears anyway (a
concurrent writer inserted one of the keys after the probe), the savepoint is rolled back and
the caller merges as usual: the same result and counts, never a partial write.

COPY per driver, on the caller's connection (public driver API only): psycopg 3 ``Copy``
(rows with declared types; ``jsonb`` taking the already-serialised text through
``psycopg.types.json.set_json_dumps`` scoped to the cursor) or bytes already in COPY format
(frames, encoded by pgpq); asyncpg ``copy_records_to_table`` / ``copy_to_table``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, Text

from .copy import json_as_is
from .statements import PAYLOAD_COLUMNS
from .validation import Row

__all__ = [
    "TABLE_COLUMNS",
    "copy_bytes",
    "copy_rows_into_table",
    "probe_statement",
    "series_ranges",
]

#: Columns the fast path writes, in COPY order (``created_at`` takes its default).
TABLE_COLUMNS: tuple[str, ...] = ("provider", "symbol", "ts", "name", *PAYLOAD_COLUMNS)
_TABLE_TYPES = ["text", "text", "timestamptz", "text", "float8", "float8", "jsonb"]


@lru_cache(maxsize=128)
def probe_statement(table: Table, dialect: Dialect) -> Any:
    """``SELECT EXISTS(...)``: does ``table`` hold a row of a series within its given range?

    Parameters: ``providers, symbols, names`` (text arrays, one entry per series) and
    ``lows, highs`` (timestamptz arrays, the series' first and last instant in the call).
    """
    preparer = dialect.identifier_preparer
    target = preparer.format_table(table)
    quote = preparer.quote
    held = " AND ".join(f"held.{quote(k)} = s.{quote(k)}" for k in ("provider", "symbol", "name"))
    sql = (
        "SELECT EXISTS (SELECT FROM unnest(:providers, :symbols, :names, :lows, :highs) "  # noqa: S608
        "AS s(provider, symbol, name, low, high) WHERE EXISTS "
        f"(SELECT FROM {target} AS held WHERE {held} "
        f"AND held.{quote('ts')} BETWEEN s.low AND s.high))"
    )
    texts, instants = ARRAY(Text()), ARRAY(DateTime(timezone=True))
    return text(sql).bindparams(
        bindparam("providers", type_=texts),
        bindparam("symbols", type_=texts),
        bindparam("names", type_=texts),
        bindparam("lows", type_=instants),
        bindparam("highs", type_=instants),
    )


def series_ranges(rows: Iterable[Row]) -> dict[str, list[Any]]:
    """Probe parameters for object rows: each series' first and last instant."""
    spans: dict[tuple[str, str, str], list[datetime]] = {}
    get = spans.get
    for row in rows:
        key = (row[1], row[2], row[4])
        ts = row[3]
        span = get(key)
        if span is None:
            spans[key] = [ts, ts]
        elif ts < span[0]:
            span[0] = ts
        elif ts > span[1]:
            span[1] = ts
    keys = list(spans)
    return {
        "providers": [k[0] for k in keys],
        "symbols": [k[1] for k in keys],
        "names": [k[2] for k in keys],
        "lows": [spans[k][0] for k in keys],
        "highs": [spans[k][1] for k in keys],
    }


def _target(connection: Connection, table: Table) -> str:
    return connection.dialect.identifier_preparer.format_table(table)


def copy_rows_into_table(connection: Connection, table: Table, rows: Iterable[Row]) -> None:
    """COPY validated object rows into ``table`` itself (no staging); errors as raised."""
    dialect = connection.dialect
    proxied = connection.connection
    if dialect.driver == "asyncpg":
        records = (row[1:] for row in rows)
        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: driver.copy_records_to_table(
                table.name, schema_name=table.schema, records=records, columns=TABLE_COLUMNS
            )
        )
        return
    sql = (
        f"COPY {_target(connection, table)} ({', '.join(TABLE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    )
    if dialect.is_async:
        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: _psycopg_rows_async(driver, sql, rows)
        )
    else:
        _psycopg_rows_sync(proxied.driver_connection, sql, rows)


def _psycopg_rows_sync(driver: Any, sql: str, rows: Iterable[Row]) -> None:
    from psycopg.types.json import set_json_dumps

    with driver.cursor() as cursor:
        # The metadata is already strict JSON text: the jsonb dumper sends it as it is.
        set_json_dumps(json_as_is, context=cursor)
        with cursor.copy(sql) as copy:
            copy.set_types(_TABLE_TYPES)
            write_row = copy.write_row
            for row in rows:
                write_row(row[1:])


async def _psycopg_rows_async(driver: Any, sql: str, rows: Iterable[Row]) -> None:
    from psycopg.types.json import set_json_dumps

    async with driver.cursor() as cursor:
        set_json_dumps(json_as_is, context=cursor)
        async with cursor.copy(sql) as copy:
            copy.set_types(_TABLE_TYPES)
            write_row = copy.write_row
            for row in rows:
                await write_row(row[1:])


def copy_bytes(
    connection: Connection,
    schema: str | None,
    name: str,
    columns: tuple[str, ...],
    chunks: Iterator[bytes],
) -> None:
    """Send binary COPY data (``chunks``, header to trailer) into ``schema.name (columns)``."""
    dialect = connection.dialect
    proxied = connection.connection
    preparer = dialect.identifier_preparer
    if dialect.driver == "asyncpg":

        async def source() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: driver.copy_to_table(
                name, source=source(), schema_name=schema, columns=columns, format="binary"
            )
        )
        return
    target = preparer.quote(name) if schema is None else f"{schema}.{preparer.quote(name)}"
    if schema is not None and schema != "pg_temp":
        target = f"{preparer.quote_schema(schema)}.{preparer.quote(name)}"
    sql = f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    if dialect.is_async:
        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: _psycopg_bytes_async(driver, sql, chunks)
        )
    else:
        with proxied.driver_connection.cursor() as cursor, cursor.copy(sql) as copy:  # type: ignore[union-attr]
            for chunk in chunks:
                copy.write(chunk)


async def _psycopg_bytes_async(driver: Any, sql: str, chunks: Iterator[bytes]) -> None:
    async with driver.cursor() as cursor, cursor.copy(sql) as copy:
        for chunk in chunks:
            await copy.write(chunk)
