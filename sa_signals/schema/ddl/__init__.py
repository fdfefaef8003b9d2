"""DDL hooks: one ``after_create`` listener per signals table, dispatched by dialect.

Portable code lives here; each dialect module (``postgresql``, ``common``) exposes
``after_create(table, connection, options)`` and ``ensure_timescale(...)`` with the same shape.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from sqlalchemy import Connection, Table, event

from ..options import get_timescale_options

__all__ = ["attach_ddl_hooks", "ensure_timescale", "select_dialect"]

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


def attach_ddl_hooks(table: Table) -> None:
    """Register the Timescale ``after_create`` hook on ``table`` (once)."""
    if not table.info.get(_HOOKED):
        event.listen(table, "after_create", _after_create)
        table.info[_HOOKED] = True


def ensure_timescale(table: Table, connection: Connection) -> bool:
    """Bring an existing table's Timescale setup in line with its options; idempotent.

    Returns ``True`` when TimescaleDB settings were applied, ``False`` on a plain database.
    """
    options = get_timescale_options(table)
    if options is None:
        return False
    result: bool = select_dialect(connection.dialect.name).ensure_timescale(
        table, connection, options
    )
    return result
