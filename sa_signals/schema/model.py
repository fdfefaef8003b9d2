"""The signals table: a factory for any ``MetaData``, a declarative mixin and the default model."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    CheckConstraint,
    Column,
    Double,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr
from sqlalchemy.sql import FromClause
from sqlalchemy.sql.elements import conv

from ..errors import ConfigurationError
from ..types import JSONDocument, timestamptz
from .aggregates import signals_rollup
from .ddl import attach_ddl_hooks
from .options import (
    DISTRIBUTION_INFO_KEY,
    TIMESCALE_INFO_KEY,
    DistributionOptions,
    TimescaleOptions,
    table_of,
)

__all__ = [
    "DEFAULT_NAMING",
    "KEY_COLUMNS",
    "SIGNAL_COLUMNS",
    "Signal",
    "SignalMixin",
    "resolve_table",
    "signals_metadata",
    "signals_table",
]

#: The primary key, in the order rows are sorted for writes.
KEY_COLUMNS: tuple[str, ...] = ("provider", "symbol", "ts", "name")
#: The columns a caller writes (``created_at`` is filled by the database).
SIGNAL_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, "value", "score", "metadata")

#: Name templates for the table's constraints and indexes. ``%(table_name)s`` and
#: ``%(constraint_name)s`` are substituted; pass ``naming=`` to :func:`signals_table` to override.
DEFAULT_NAMING: Mapping[str, str] = {
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "ix": "ix_%(table_name)s_%(constraint_name)s",
}

_DEFAULT_TIMESCALE = TimescaleOptions()


def _name(naming: Mapping[str, str], kind: str, table: str, short: str) -> conv:
    # conv() marks the name final so a host metadata's naming_convention does not rewrite it.
    return conv(naming[kind] % {"table_name": table, "constraint_name": short})


def signals_table(
    metadata: MetaData,
    name: str = "signals",
    *,
    schema: str | None = None,
    timescale: TimescaleOptions | None = _DEFAULT_TIMESCALE,
    naming: Mapping[str, str] | None = None,
    distribution: DistributionOptions | None = None,
) -> Table:
    """Define the signals table on ``metadata`` (the host application's own, typically).

    The columns, check constraint, primary key and the three indexes are those of the spec.
    ``timescale`` (``None`` for a plain table) is stored in ``Table.info`` and applied by an
    ``after_create`` hook on PostgreSQL when the ``timescaledb`` extension is present.

    ``distribution`` (:class:`DistributionOptions`) makes the table a Citus distributed table
    instead, by the same hook when the ``citus`` extension is present; it needs
    ``timescale=None`` (a hypertable cannot be distributed by Citus).
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"table name must be a non-empty string, got {name!r}")
    if timescale is not None and not isinstance(timescale, TimescaleOptions):
        raise ConfigurationError(f"timescale must be TimescaleOptions or None, got {timescale!r}")
    if distribution is not None:
        _check_distribution(name, timescale, distribution)
    info: dict[str, object] = {}
    if timescale is not None:
        info[TIMESCALE_INFO_KEY] = timescale
    if distribution is not None:
        info[DISTRIBUTION_INFO_KEY] = distribution
    names = {**DEFAULT_NAMING, **(naming or {})}
    table = Table(
        name,
        metadata,
        Column("provider", Text, nullable=False),
        Column("symbol", Text, nullable=False),
        Column("ts", timestamptz(), nullable=False),
        Column("name", Text, nullable=False),
        Column("value", Double, nullable=False),
        Column("score", Double, nullable=True),
        Column("metadata", JSONDocument(), nullable=True),
        Column("created_at", timestamptz(), nullable=False, server_default=func.now()),
        PrimaryKeyConstraint(*KEY_COLUMNS, name=_name(names, "pk", name, "")),
        CheckConstraint("symbol = UPPER(symbol)", name=_name(names, "ck", name, "symbol_upper")),
        schema=schema,
        info=info,
    )
    c = table.c
    Index(
        _name(names, "ix", name, "provider_symbol_name_ts"),
        c.provider,
        c.symbol,
        c.name,
        c.ts.desc(),
    )
    Index(_name(names, "ix", name, "ts"), c.ts.desc())
    Index(_name(names, "ix", name, "name_ts"), c.name, c.ts.desc())
    if timescale is not None:
        if timescale.time_column not in c:
            raise ConfigurationError(f"time_column {timescale.time_column!r} is not a column")
        attach_ddl_hooks(table)
        for width in timescale.rollups:
            signals_rollup(table, width)
    if distribution is not None:
        attach_ddl_hooks(table)
    return table


def _check_distribution(
    name: str, timescale: TimescaleOptions | None, distribution: DistributionOptions
) -> None:
    if not isinstance(distribution, DistributionOptions):
        raise ConfigurationError(
            f"distribution must be DistributionOptions or None, got {distribution!r}"
        )
    if timescale is not None:
        raise ConfigurationError(
            f"table {name!r} asks for a TimescaleDB hypertable and a Citus distributed table; "
            "a hypertable cannot be distributed by Citus: pass timescale=None (SignalMixin: "
            "__timescale__ = None) to distribute it, or drop distribution= to keep the hypertable"
        )
    if distribution.column not in KEY_COLUMNS:
        raise ConfigurationError(
            f"distribution column {distribution.column!r} of table {name!r} is not part of the "
            f"primary key {KEY_COLUMNS}: Citus enforces a primary key only when it contains the "
            "distribution column; distribute by one of its columns (symbol is the usual choice)"
        )


class SignalMixin:
    """Declarative mixin: ``class ModelSignal(SignalMixin, Base): __tablename__ = "model_signals"``.

    The table is built by :func:`signals_table` on the base's metadata. Customise it with
    class attributes:

    * ``__table_args__ = {"schema": "analytics"}`` (SQLAlchemy's convention; the older
      ``__table_schema__`` is accepted too);
    * ``__timescale__``: the :class:`TimescaleOptions`, or ``None`` for a plain table;
    * ``__distribution__``: the :class:`DistributionOptions` of a Citus distributed table
      (with ``__timescale__ = None``), or ``None`` (the default);
    * ``__signals_naming__``: name templates for the constraints and indexes (``naming=`` of
      :func:`signals_table`).

    The JSON column ``metadata`` is mapped as the attribute ``metadata_`` because declarative
    reserves ``metadata``; the constructor accepts either keyword.
    """

    __timescale__: ClassVar[TimescaleOptions | None] = _DEFAULT_TIMESCALE
    __distribution__: ClassVar[DistributionOptions | None] = None
    __table_schema__: ClassVar[str | None] = None
    __signals_naming__: ClassVar[Mapping[str, str] | None] = None

    if TYPE_CHECKING:
        # Typing only: the mapped attributes come from ``__table__`` below. ``__table__`` is
        # declared as DeclarativeBase declares it so that ``class M(SignalMixin, Base)`` passes
        # mypy's check of definitions shared by two bases.
        __table__: ClassVar[FromClause]
        provider: Mapped[str]
        symbol: Mapped[str]
        ts: Mapped[datetime]
        name: Mapped[str]
        value: Mapped[float]
        score: Mapped[float | None]
        metadata_: Mapped[dict[str, Any] | None]
        created_at: Mapped[datetime]
    else:

        @declared_attr.directive
        def __table__(cls) -> Table:
            tablename: str = getattr(cls, "__tablename__", None) or "signals"
            return signals_table(
                cls.metadata,
                tablename,
                schema=_mixin_schema(cls),
                timescale=cls.__timescale__,
                naming=cls.__signals_naming__,
                distribution=cls.__distribution__,
            )

        @declared_attr.directive
        def __mapper_args__(cls) -> dict[str, Any]:
            table: Table = cls.__table__
            return {
                "properties": {"metadata_": table.c.metadata},
                "exclude_properties": ["metadata"],
            }

    def __init__(self, **kwargs: Any) -> None:
        if "metadata" in kwargs:
            # ``metadata`` names the class's MetaData, so declarative's constructor would set it
            # as a plain instance attribute and the JSON would never reach the column.
            if "metadata_" in kwargs:
                raise ConfigurationError(
                    f"{type(self).__name__}() got both metadata= and metadata_=; pass one"
                )
            kwargs["metadata_"] = kwargs.pop("metadata")
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, symbol={self.symbol!r}, "
            f"ts={self.ts!r}, name={self.name!r}, value={self.value!r})"
        )


def _mixin_schema(cls: type) -> str | None:
    """The schema of a :class:`SignalMixin` class: ``__table_args__``, else ``__table_schema__``."""
    args = getattr(cls, "__table_args__", None)
    if isinstance(args, tuple):
        if any(not isinstance(arg, Mapping) for arg in args) or len(args) > 1:
            raise ConfigurationError(
                f"{cls.__name__}.__table_args__ may only hold table keyword arguments for a "
                "signals table (its columns, constraints and indexes are fixed), got "
                f"{args!r}"
            )
        args = args[0] if args else None
    args = dict(args or {})
    schema = args.pop("schema", None)
    if args:
        raise ConfigurationError(
            f"{cls.__name__}.__table_args__ supports only 'schema' on a signals table, got "
            f"{sorted(args)!r}"
        )
    legacy = getattr(cls, "__table_schema__", None)
    if schema is not None and legacy is not None and schema != legacy:
        raise ConfigurationError(
            f"{cls.__name__} sets __table_args__ schema {schema!r} and __table_schema__ "
            f"{legacy!r}; keep one"
        )
    return schema if schema is not None else legacy


class _SignalsBase(DeclarativeBase):
    """The library-owned declarative base behind :class:`Signal`."""


#: The metadata that holds the default ``signals`` table.
signals_metadata: MetaData = _SignalsBase.metadata


class Signal(SignalMixin, _SignalsBase):
    """The default model: table ``signals``, default schema, the spec's Timescale settings."""

    __tablename__ = "signals"

    if TYPE_CHECKING:
        # The mixin declares FromClause as DeclarativeBase does; this one is a Table.
        __table__: ClassVar[Table]


def resolve_table(table: Any = None) -> Table:
    """The Core :class:`~sqlalchemy.Table` behind a ``table=`` argument.

    Accepts a ``Table``, a mapped class or anything else with a ``__table__`` that is a
    ``Table`` (``ModelSignal``), or ``None`` for the default model's table.
    """
    return table_of(Signal if table is None else table)
