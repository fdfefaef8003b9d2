"""DDL hooks: one ``after_create`` listener per signals table, dispatched by dialect.

Portable code lives here; each dialect module (``postgresql``, ``common``) exposes
``after_create(table, connection, options)`` and ``ensure_timescale(...)`` with the same shape.
Citus distribution (``citus``, PostgreSQL only) is applied by the same listener; a table has
TimescaleDB options or distribution options, never both (the table factory refuses).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from sqlalchemy import Connection, Table, event

from ..options import get_distribution_options, get_timescale_options, table_of

__all__ = ["attach_ddl_hooks", "ensure_distribution", "ensure_timescale", "select_dialect"]

_HOOKED = "sa_signals.ddl_hooked"


def select_dialect(name: str) -> ModuleType:
    """The DDL module for dialect ``name``; ``common`` (no-ops) for anything but PostgreSQL."""
    if name == "postgresql":
        from . import postgresql

        return postgresql
    from . import common

    return common


def _after_create(table: Table, connection: Connection, **_: Any) -> None:
    options = get_timescale_options(table)
    if options is not None:
        select_dialect(connection.dialect.name).after_create(table, connection, options)
    distribution = get_distribution_options(table)
    if distribution is not None and connection.dialect.name == "postgresql":
        from . import citus

        citus.after_create(table, connection, distribution)


def attach_ddl_hooks(table: Table) -> None:
    """Register the Timescale / Citus ``after_create`` hook on ``table`` (once)."""
    if not table.info.get(_HOOKED):
        event.listen(table, "after_create", _after_create)
        table.info[_HOOKED] = True


def ensure_timescale(table: Table | object, connection: Connection) -> bool:
    """Bring an existing table's Timescale setup in line with its options; idempotent.

    ``table``: a ``Table`` or a mapped class. Returns ``True`` when TimescaleDB settings were
    applied, ``False`` on a plain database.
    """
    table = table_of(table)
    options = get_timescale_options(table)
    if options is None:
        return False
    result: bool = select_dialect(connection.dialect.name).ensure_timescale(
        table, connection, options
    )
    return result


def ensure_distribution(table: Table | object, connection: Connection) -> bool:
    """Distribute an existing table (a ``Table`` or a mapped class) as its
    :class:`~sa_signals.DistributionOptions` say; idempotent (a table that is already
    distributed is left alone).

    Returns ``True`` when the table is distributed afterwards, ``False`` on a database without
    Citus, on another dialect, or for a table without distribution options.
    """
    table = table_of(table)
    options = get_distribution_options(table)
    if options is None or connection.dialect.name != "postgresql":
        return False
    from . import citus

    return citus.ensure_distribution(table, connection, options)
