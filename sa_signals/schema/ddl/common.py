"""DDL for dialects without TimescaleDB (SQLite and others): the plain table, nothing more."""

from __future__ import annotations

from sqlalchemy import Connection, Table

from ..options import TimescaleOptions

__all__ = ["after_create", "ensure_timescale"]


def after_create(table: Table, connection: Connection, options: TimescaleOptions) -> None:
    """Nothing to do: the table created by ``create_all`` is complete."""


def ensure_timescale(table: Table, connection: Connection, options: TimescaleOptions) -> bool:
    """Nothing to do; reports that no TimescaleDB settings were applied."""
    return False
