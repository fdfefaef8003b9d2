"""Engines from the URIs the spec's clients accept (``postgresql://user@host/db``, ``sqlite:///...``).

A plain ``postgresql://`` URI picks psycopg 3 for sync clients and asyncpg for async ones; a URI
with an explicit driver is used as given. ``sslmode`` is translated for asyncpg, which calls it
``ssl``. Existing ``Engine`` / ``AsyncEngine`` objects pass through untouched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import ConfigurationError, MissingDependencyError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["async_engine", "normalize_url", "sync_engine"]

_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
_ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "postgresql+psycopg2": "postgresql+psycopg",
}
_DRIVER_PACKAGES = {
    "psycopg": ("psycopg", "psycopg"),
    "asyncpg": ("asyncpg", "asyncpg"),
    "aiosqlite": ("aiosqlite", "all"),
}


def _parse(uri: str | URL) -> URL:
    try:
        return make_url(uri)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URI: {uri!r} ({exc})") from None


def normalize_url(uri: str | URL, *, asynchronous: bool = False) -> URL:
    """The SQLAlchemy URL the clients connect with (default drivers filled in)."""
    url = _parse(uri)
    mapping = _ASYNC_DRIVERS if asynchronous else _SYNC_DRIVERS
    url = url.set(drivername=mapping.get(url.drivername, url.drivername))
    if url.drivername == "postgresql+asyncpg" and "sslmode" in url.query:
        query = dict(url.query)
        query["ssl"] = query.pop("sslmode")
        url = url.set(query=query)
    return url


def _check_driver(url: URL) -> None:
    driver = url.get_driver_name()
    if driver in _DRIVER_PACKAGES:
        package, extra = _DRIVER_PACKAGES[driver]
        try:
            __import__(package)
        except ImportError:
            raise MissingDependencyError(package, extra) from None


def sync_engine(uri: str | URL | Engine, **kwargs: Any) -> Engine:
    """An :class:`~sqlalchemy.Engine` for ``uri`` (returned as is when already an engine)."""
    if isinstance(uri, Engine):
        return uri
    url = normalize_url(uri)
    _check_driver(url)
    return create_engine(url, **kwargs)


def async_engine(uri: str | URL | AsyncEngine, **kwargs: Any) -> AsyncEngine:
    """An :class:`~sqlalchemy.ext.asyncio.AsyncEngine` for ``uri`` (passed through if one)."""
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    if isinstance(uri, AsyncEngine):
        return uri
    url = normalize_url(uri, asynchronous=True)
    _check_driver(url)
    return create_async_engine(url, **kwargs)
