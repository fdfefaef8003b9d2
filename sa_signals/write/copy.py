"""Binary COPY of validated rows into the staging table, per driver (lazy driver imports).

Supported: psycopg 3 (sync and async, ``cursor.copy`` in binary format with declared types) and
asyncpg (``copy_records_to_table``, binary). The driver connection is reached through the
SQLAlchemy connection (``connection.connection.driver_connection``), so the COPY runs inside
the caller's transaction. Async drivers are driven from synchronous code with SQLAlchemy's
public ``AdaptedConnection.run_async``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from .statements import STAGE_COLUMNS, STAGE_NAME, STAGE_TYPES
from .validation import Row

__all__ = ["copy_rows", "supports_copy"]

_COPY_SQL = f"COPY {STAGE_NAME} ({', '.join(STAGE_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def supports_copy(connection: Connection) -> bool:
    """Whether ``connection`` (PostgreSQL via psycopg or asyncpg) can take the COPY path."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver in ("psycopg", "asyncpg")


def copy_rows(connection: Connection, rows: Sequence[Row]) -> None:
    """COPY ``rows`` into the (existing, empty) staging table on ``connection``."""
    dialect = connection.dialect
    proxied = connection.connection
    if dialect.driver == "psycopg":
        if dialect.is_async:
            proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
                lambda driver: _psycopg_async(driver, rows)
            )
        else:
            _psycopg_sync(proxied.driver_connection, rows)
    elif dialect.driver == "asyncpg":
        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: driver.copy_records_to_table(
                STAGE_NAME, records=rows, columns=STAGE_COLUMNS
            )
        )
    else:  # pragma: no cover - guarded by supports_copy()
        raise NotImplementedError(f"no COPY for driver {dialect.driver!r}")


def _psycopg_sync(driver: Any, rows: Sequence[Row]) -> None:
    with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        copy.set_types(STAGE_TYPES)
        write_row = copy.write_row
        for row in rows:
            write_row(row)


async def _psycopg_async(driver: Any, rows: Sequence[Row]) -> None:
    async with driver.cursor() as cursor, cursor.copy(_COPY_SQL) as copy:
        copy.set_types(STAGE_TYPES)
        write_row = copy.write_row
        for row in rows:
            await write_row(row)
