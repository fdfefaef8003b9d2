"""Engines from the URIs the spec's clients accept (``postgresql://user@host/db``, ``sqlite:///...``).

A plain ``postgresql://`` URI picks psycopg 3 for sync clients and asyncpg for async ones; a URI
with an explicit driver is used as given, except that an async driver given to a sync engine
(``postgresql+asyncpg``, ``sqlite+aiosqlite``) is swapped for its sync twin. ``sslmode`` is
translated for asyncpg, which calls it ``ssl`` (and back when asyncpg is swapped for psycopg).
Backends other than PostgreSQL and SQLite are refused with
:class:`~sa_signals.errors.ConfigurationError`; a missing driver raises
:class:`~sa_signals.errors.MissingDependencyError` naming the extra to install. Existing
``Engine`` / ``AsyncEngine`` objects pass through untouched.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any, TypeGuard

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "SUPPORTED_BACKENDS",
    "async_engine",
    "is_async_engine",
    "normalize_url",
    "sync_engine",
]

#: The database backends sa_signals runs on (TimescaleDB is PostgreSQL with an extension).
SUPPORTED_BACKENDS = ("postgresql", "sqlite")

_SYNC_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
    "sqlite+aiosqlite": "sqlite",
}
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "postgresql+psycopg2": "postgresql+psycopg",
}
_SSL_TO_SSLMODE = {"true": "require", "false": "disable"}
#: driver name -> (module to import, extra that installs it)
_DRIVER_PACKAGES = {
    "psycopg": ("psycopg", "psycopg"),
    "asyncpg": ("asyncpg", "asyncpg"),
    "aiosqlite": ("aiosqlite", "sqlite-async"),
}
#: backend -> the extra that brings greenlet along with the backend's async driver
_ASYNC_EXTRAS = {"postgresql": "asyncpg", "sqlite": "sqlite-async"}


def _parse(uri: str | URL) -> URL:
    try:
        return make_url(uri)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URI: {uri!r} ({exc})") from None


def normalize_url(uri: str | URL, *, asynchronous: bool = False) -> URL:
    """The SQLAlchemy URL the clients connect with (default drivers filled in)."""
    url = _parse(uri)
    # Not get_driver_name(): it loads the dialect, which fails for unknown backends.
    given_driver = url.drivername.partition("+")[2]
    mapping = _ASYNC_DRIVERS if asynchronous else _SYNC_DRIVERS
    url = url.set(drivername=mapping.get(url.drivername, url.drivername))
    backend = url.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"database backend {backend!r} is not supported; sa_signals runs on "
            "postgresql (plain or with TimescaleDB) and sqlite"
        )
    if url.drivername == "postgresql+asyncpg" and "sslmode" in url.query:
        query = dict(url.query)
        query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    elif (
        given_driver == "asyncpg" and url.drivername != "postgresql+asyncpg" and "ssl" in url.query
    ):
        # asyncpg's ssl= takes libpq's sslmode names, or true / false.
        query = dict(url.query)
        mode = str(query.pop("ssl"))
        query["sslmode"] = _SSL_TO_SSLMODE.get(mode.lower(), mode)
        url = url.set(query=query)
    return url


def _require(module: str, package: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra) from None


def _check_driver(url: URL, *, asynchronous: bool) -> None:
    driver = url.get_driver_name()
    if driver in _DRIVER_PACKAGES:
        module, extra = _DRIVER_PACKAGES[driver]
        _require(module, module, extra)
    if asynchronous:
        # SQLAlchemy's asyncio layer runs its sync core under greenlets.
        _require("greenlet", "greenlet", _ASYNC_EXTRAS[url.get_backend_name()])


def sync_engine(uri: str | URL | Engine, **kwargs: Any) -> Engine:
    """An :class:`~sqlalchemy.Engine` for ``uri`` (returned as is when already an engine)."""
    if isinstance(uri, Engine):
        return uri
    url = normalize_url(uri)
    _check_driver(url, asynchronous=False)
    return create_engine(url, **kwargs)


def is_async_engine(value: object) -> TypeGuard[AsyncEngine]:
    """Whether ``value`` is an :class:`~sqlalchemy.ext.asyncio.AsyncEngine`.

    Does not import SQLAlchemy's asyncio layer, which needs greenlet: an ``AsyncEngine`` can only
    exist once that layer is loaded.
    """
    module = sys.modules.get("sqlalchemy.ext.asyncio")
    return module is not None and isinstance(value, module.AsyncEngine)


def async_engine(uri: str | URL | AsyncEngine, **kwargs: Any) -> AsyncEngine:
    """An :class:`~sqlalchemy.ext.asyncio.AsyncEngine` for ``uri`` (passed through if one)."""
    if is_async_engine(uri):
        return uri
    if not isinstance(uri, (str, URL)):
        raise ConfigurationError(f"not a database URI or AsyncEngine: {uri!r}")
    url = normalize_url(uri, asynchronous=True)
    _check_driver(url, asynchronous=True)
    # Imported only now: SQLAlchemy's asyncio layer fails to import without greenlet.
    from sqlalchemy.ext.asyncio import create_async_engine

    return create_async_engine(url, **kwargs)
