"""Column types that behave the same on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["JSONDocument", "UTCDateTime", "timestamptz"]


class UTCDateTime(TypeDecorator[datetime]):
    """SQLite keeps no offset: store UTC wall time and hand back aware UTC datetimes.

    Public and stable because Alembic autogenerate writes its path into revision files.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


def timestamptz() -> TypeEngine[datetime]:
    """``TIMESTAMPTZ`` on PostgreSQL; UTC-normalised ``DATETIME`` on SQLite.

    The SQLite variant is separate so that PostgreSQL binds carry no Python-side processing.
    """
    return DateTime(timezone=True).with_variant(UTCDateTime(), "sqlite")


def JSONDocument() -> TypeEngine[Any]:
    """``JSONB`` on PostgreSQL (it has equality, so ``IS DISTINCT FROM`` works); JSON elsewhere."""
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
