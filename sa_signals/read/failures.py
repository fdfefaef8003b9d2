"""What a failed query raises: :class:`~sa_signals.errors.QueryError`, on every backend.

A query can fail in many layers: the driver (``psycopg.errors.UndefinedTable``, asyncpg's
``ConnectionRefusedError``, ``sqlite3.OperationalError``), SQLAlchemy (its ``DBAPIError``
wrappers, the pool's ``TimeoutError``) or the network. Callers of the query API catch one
class; the driver's own exception (see :func:`driver_error`) is kept as ``__cause__``.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError

from ..errors import QueryError

__all__ = ["driver_error", "query_error"]


def driver_error(exc: BaseException) -> BaseException:
    """The driver's exception behind ``exc``.

    SQLAlchemy keeps it as ``DBAPIError.orig``; for an asyncio driver that is SQLAlchemy's
    DBAPI-style translation, raised from the driver's own exception, which is returned.
    """
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        exc = exc.orig
    cause = exc.__cause__
    if type(exc).__module__.startswith("sqlalchemy.") and isinstance(cause, BaseException):
        return cause
    return exc


def query_error(exc: BaseException, table: Table) -> QueryError:
    """The :class:`QueryError` for ``exc``, a failure while querying ``table``.

    Its message names the table and the driver's first line of explanation. Raise it
    ``from driver_error(exc)``.
    """
    cause = driver_error(exc)
    lines = str(cause).strip().splitlines()
    reason = lines[0] if lines else type(cause).__name__
    return QueryError(f"query on {table.fullname} failed: {reason}")
