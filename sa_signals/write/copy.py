"""Binary COPY of validated rows into the staging table, per driver (lazy driver imports).

Supported: psycopg 3 (sync and async, ``cursor.copy`` in binary format with declared types) and
asyncpg (``copy_records_to_table``, binary). The driver connection is reached through the
SQLAlchemy connection (``connection.connection.driver_connection``), so the COPY runs inside
the caller's transaction. Async drivers are driven from synchronous code with SQLAlchemy's
public ``AdaptedConnection.run_async``.

Rows are streamed: each is validated as the driver asks for it and sent while the server
parses the previous ones, so client and server work overlap and memory stays flat. An error
of the caller's iterable (an :class:`~sa_signals.errors.InvalidSignalError` included) aborts
the COPY and propagates unchanged; the transaction is then aborted and must be rolled back.
Errors of the driver itself bypass SQLAlchemy here; :func:`driver_error` turns them into
:class:`~sa_signals.errors.WriteError` with the SQLSTATE kept, and invalidates a connection
found broken so the pool never hands it out again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from ..errors import WriteError
from .statements import STAGE_COLUMNS, STAGE_NAME, STAGE_SCHEMA, STAGE_TYPES, copy_statement
from .validation import Row

__all__ = ["copy_rows", "driver_error", "json_as_is", "supports_copy"]


def supports_copy(connection: Connection) -> bool:
    """Whether ``connection`` (PostgreSQL via psycopg or asyncpg) can take the COPY path."""
    dialect = connection.dialect
    return dialect.name == "postgresql" and dialect.driver in ("psycopg", "asyncpg")


def copy_rows(connection: Connection, rows: Iterable[Row]) -> None:
    """COPY ``rows`` into the (existing) staging table on ``connection``.

    Errors propagate as the driver raised them; see :func:`driver_error`.
    """
    dialect = connection.dialect
    proxied = connection.connection
    if dialect.driver == "psycopg":
        sql = copy_statement(dialect)
        if dialect.is_async:
            proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
                lambda driver: _psycopg_async(driver, sql, rows)
            )
        else:
            _psycopg_sync(proxied.driver_connection, sql, rows)
    elif dialect.driver == "asyncpg":
        proxied.dbapi_connection.run_async(  # type: ignore[union-attr]
            lambda driver: driver.copy_records_to_table(
                STAGE_NAME, schema_name=STAGE_SCHEMA, records=rows, columns=STAGE_COLUMNS
            )
        )
    else:  # pragma: no cover - guarded by supports_copy()
        raise NotImplementedError(f"no COPY for driver {dialect.driver!r}")


def driver_error(connection: Connection, exc: BaseException) -> WriteError | None:
    """The :class:`WriteError` for a driver error raised by :func:`copy_rows`, else ``None``.

    A connection found broken is invalidated first, so the pool discards it.
    """
    driver = connection.dialect.driver
    if driver == "psycopg":
        import psycopg

        errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    else:
        import asyncpg

        # Server errors, client-side protocol errors, and the socket's own (connection reset).
        errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
    if not isinstance(exc, errors):
        return None
    lost = _connection_lost(driver, connection.connection.driver_connection)
    if lost:
        connection.invalidate(exc)
    return WriteError(
        f"writing signals failed, nothing was kept: {exc}",
        sqlstate=getattr(exc, "sqlstate", None),
        connection_lost=lost,
    )


def _connection_lost(driver: str, connection: Any) -> bool:
    if connection is None:
        return True
    if driver == "psycopg":
        return bool(connection.closed or connection.broken)
    return bool(connection.is_closed())


def _psycopg_sync(driver: Any, sql: str, rows: Iterable[Row]) -> None:
    from psycopg.types.json import set_json_dumps

    with driver.cursor() as cursor:
        # The metadata is already strict JSON text: the jsonb dumper sends it as it is.
        set_json_dumps(json_as_is, context=cursor)
        with cursor.copy(sql) as copy:
            copy.set_types(STAGE_TYPES)
            write_row = copy.write_row
            for row in rows:
                write_row(row)


async def _psycopg_async(driver: Any, sql: str, rows: Iterable[Row]) -> None:
    from psycopg.types.json import set_json_dumps

    async with driver.cursor() as cursor:
        set_json_dumps(json_as_is, context=cursor)
        async with cursor.copy(sql) as copy:
            copy.set_types(STAGE_TYPES)
            write_row = copy.write_row
            for row in rows:
                await write_row(row)


def json_as_is(document: Any) -> Any:
    """A psycopg JSON dumper for documents that are already strict JSON text."""
    return document
