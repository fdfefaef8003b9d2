"""The host's models: its own base and naming convention, two tables, two signals tables.

``ModelSignal`` (ORM, through the mixin) lives in the schema ``analytics``, which the first
revision creates; ``raw_signals`` (Core) in the default schema has a retention policy and no
compression policy. Environment variables give each test its own ``analytics`` schema name and
let a test change the model: ``MYAPP_COMPRESSION=0`` turns compression off on ``ModelSignal``,
``MYAPP_GEO=1`` adds a geoalchemy2 table.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from sqlalchemy import ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_signals import DEFAULT_NAMING, SignalMixin, TimescaleOptions, signals_table

ANALYTICS = os.environ.get("MYAPP_ANALYTICS_SCHEMA", "analytics")
#: The schemas this application owns (``None``: the connection's default schema).
SCHEMAS = {None, ANALYTICS}


def only_own_schemas(name: str | None, type_: str, parent_names: Any) -> bool:
    """``include_name`` filter: this application's schemas, not the database's others."""
    return type_ != "schema" or name in SCHEMAS


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    symbol: Mapped[str] = mapped_column(String(20))


def _model_signal_options() -> TimescaleOptions:
    if os.environ.get("MYAPP_COMPRESSION", "1") == "0":
        return TimescaleOptions(chunk_time_interval=timedelta(days=1), compression=False)
    return TimescaleOptions(
        chunk_time_interval=timedelta(days=1),
        segment_by=("provider", "symbol"),
        compress_after=timedelta(days=14),
    )


class ModelSignal(SignalMixin, Base):
    __tablename__ = "model_signals"
    __table_args__ = {"schema": ANALYTICS}
    __signals_naming__ = {**DEFAULT_NAMING, "ix": "ix_ms_%(constraint_name)s"}
    __timescale__ = _model_signal_options()


raw_signals = signals_table(
    Base.metadata,
    "raw_signals",
    timescale=TimescaleOptions(compress_after=None, drop_after=timedelta(days=400)),
)


if os.environ.get("MYAPP_GEO") == "1":
    from geoalchemy2 import Geometry

    class Place(Base):
        __tablename__ = "places"

        id: Mapped[int] = mapped_column(primary_key=True)
        location: Mapped[Any] = mapped_column(Geometry("POINT", srid=4326, spatial_index=False))
