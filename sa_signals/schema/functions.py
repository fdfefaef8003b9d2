"""TimescaleDB hyperfunctions as SQLAlchemy constructs, portable where a meaning exists.

``time_bucket``, ``time_bucket_gapfill``, ``locf``, ``interpolate``, ``first`` and ``last`` are
column expressions usable in any query::

    select(time_bucket(timedelta(hours=1), t.c.ts).label("bucket"), last(t.c.value, t.c.ts))

How each compiles (TimescaleDB / plain PostgreSQL / SQLite):

- ``time_bucket``: ``time_bucket(...)`` / ``date_bin`` (epoch arithmetic before PostgreSQL 14) /
  integer microseconds;
- ``first``, ``last``: ``first(v, t)`` / ``(array_agg(v ORDER BY t) ...)[1]`` / ``min``/``max``
  of a sort key that carries the value;
- ``time_bucket_gapfill``, ``locf``, ``interpolate``: the function / :class:`CompileError` /
  :class:`CompileError` (no portable meaning).

Other dialects, and ``str(statement)``, get TimescaleDB's spelling.

Every portable form returns what TimescaleDB returns: buckets are aligned on TimescaleDB's default
origin (:data:`DEFAULT_ORIGIN`, a Monday) and ``first``/``last`` ignore rows whose time is NULL.

Which PostgreSQL form is used: the TimescaleDB one, unless told otherwise, by (first match wins)

1. the compile option ``sa_signals_timescale`` (continuous aggregate definitions set it);
2. the construct's own ``timescale=True/False`` argument;
3. :func:`use_timescale` for an engine (or connection, or dialect): ``use_timescale(engine)``
   asks the database whether the ``timescaledb`` extension is installed; ``use_timescale(engine,
   False)`` says so without asking.

Constant arguments (width, origin, offset, time zone, gapfill range) are bound parameters, so
statements stay cached; with ``literal_binds`` they are rendered by this module from the
validated Python values.
"""

from __future__ import annotations

import weakref
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    Interval,
    Numeric,
    Text,
    bindparam,
    null,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement, Null
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..errors import InvalidQueryError
from .ddl.postgresql import interval_literal

__all__ = [
    "DEFAULT_ORIGIN",
    "TIMESCALE_COMPILE_OPTION",
    "Hyperfunction",
    "first",
    "interpolate",
    "last",
    "locf",
    "time_bucket",
    "time_bucket_gapfill",
    "use_timescale",
]

T = TypeVar("T")

#: TimescaleDB's default bucket origin for timestamps (a Monday, so weekly buckets start on
#: Mondays); the portable forms align on it too.
DEFAULT_ORIGIN = datetime(2000, 1, 3, tzinfo=timezone.utc)

#: Compile option (``compile_kwargs={TIMESCALE_COMPILE_OPTION: True}``) forcing the TimescaleDB
#: or the portable form for a whole statement.
TIMESCALE_COMPILE_OPTION = "sa_signals_timescale"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
# Bounds of a SQLite sort key for integer times: keeps every 64-bit value positive and 19 digits.
_INTEGER_KEY_SHIFT = 2**62

_modes: weakref.WeakKeyDictionary[Dialect, bool] = weakref.WeakKeyDictionary()

_TIMESCALE_PROBE = text("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'")


def use_timescale(bind: Engine | Connection | Dialect, enabled: bool | None = None) -> bool:
    """Say whether hyperfunctions compile to TimescaleDB's functions for ``bind``'s dialect.

    ``enabled=None`` asks the database (is the ``timescaledb`` extension installed?); an
    :class:`~sqlalchemy.Engine` opens one connection for that. Returns the decision. The engine's
    compiled-statement cache is cleared so that statements compiled before follow it. For an
    ``AsyncEngine`` pass ``engine.sync_engine`` with an explicit ``enabled``.
    """
    if isinstance(bind, Engine):
        dialect = bind.dialect
    elif isinstance(bind, Connection):
        dialect = bind.dialect
    elif isinstance(bind, Dialect):
        dialect = bind
    else:
        raise InvalidQueryError(
            f"use_timescale needs an Engine, Connection or Dialect, got {bind!r}"
        )
    if enabled is None:
        if dialect.name != "postgresql":
            enabled = False
        elif isinstance(bind, Connection):
            enabled = bind.execute(_TIMESCALE_PROBE).first() is not None
        elif isinstance(bind, Engine):
            with bind.connect() as connection:
                enabled = connection.execute(_TIMESCALE_PROBE).first() is not None
        else:
            raise InvalidQueryError("use_timescale(dialect) needs enabled=True or False")
    _modes[dialect] = bool(enabled)
    if isinstance(bind, Engine):
        bind.clear_compiled_cache()
    elif isinstance(bind, Connection):
        bind.engine.clear_compiled_cache()
    return bool(enabled)


# --------------------------------------------------------------------------- bound constants


class _Width(TypeDecorator[timedelta]):
    """A width or offset: ``interval`` on PostgreSQL; on SQLite an integer count of ``unit``.

    ``unit`` is 1 second when every constant of the construct is whole seconds (shorter SQL on
    SQLite), else 1 microsecond; it is part of the type, hence of the statement's cache key.
    """

    impl = Interval
    cache_ok = True

    def __init__(self, unit: timedelta = _MICROSECOND) -> None:
        super().__init__()
        self.unit = unit

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(BigInteger() if dialect.name == "sqlite" else Interval())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "sqlite" and isinstance(value, timedelta):
            return value // self.unit
        return value


class _Instant(TypeDecorator[datetime]):
    """A constant instant: ``timestamp[tz]`` on PostgreSQL, a count of ``unit`` since the Unix
    epoch (UTC) on SQLite."""

    impl = DateTime
    cache_ok = True

    def __init__(self, timezone: bool = True, unit: timedelta = _MICROSECOND) -> None:
        super().__init__()
        self.timezone = timezone
        self.unit = unit

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=self.timezone))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "sqlite" and isinstance(value, datetime):
            return _since_epoch(value) // self.unit
        return value


def _since_epoch(value: datetime) -> timedelta:
    # Naive values are UTC wall time, as sa_signals stores them on SQLite.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    return aware - _EPOCH


def _width(name: str, value: object) -> timedelta:
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise InvalidQueryError(f"{name} must be a positive datetime.timedelta, got {value!r}")
    return value


def _offset(value: object) -> timedelta:
    if not isinstance(value, timedelta):
        raise InvalidQueryError(f"offset must be a datetime.timedelta, got {value!r}")
    return value


def _timezone_name(value: object) -> str:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidQueryError(f"timezone must be a time zone name such as 'UTC', got {value!r}")
    return value


def _is_aware_time(expression: ColumnElement[Any]) -> bool:
    type_ = expression.type
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    if not isinstance(type_, DateTime):
        raise InvalidQueryError(
            f"time argument must be a date/time column expression, got type {expression.type!r}"
        )
    return bool(type_.timezone)


def _instant(name: str, value: object, aware: bool) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidQueryError(f"{name} must be a datetime, got {value!r}")
    if aware and value.utcoffset() is None:
        raise InvalidQueryError(
            f"{name} must be timezone-aware for a timestamptz column: {value!r}"
        )
    if not aware and value.tzinfo is not None:
        raise InvalidQueryError(f"{name} must be naive for a timestamp column: {value!r}")
    return value


def _constant(value: Any, type_: TypeEngine[Any]) -> BindParameter[Any]:
    return bindparam(None, value, type_=type_)


def _time_argument(value: Any, aware: bool, name: str) -> ColumnElement[Any]:
    # start/finish of gapfill: a datetime becomes a bound constant, an expression stays one.
    if value is None:
        return null()
    if isinstance(value, datetime):
        return _constant(_instant(name, value, aware), _Instant(aware))
    if isinstance(value, ColumnElement):
        return value
    raise InvalidQueryError(f"{name} must be a datetime or a SQL expression, got {value!r}")


# --------------------------------------------------------------------------- base construct


class Hyperfunction(FunctionElement[T], Generic[T]):
    """Base of the hyperfunction constructs; ``timescale`` is the per-construct form choice."""

    inherit_cache = True
    #: ``True``/``False`` forces the TimescaleDB/portable form; ``None`` defers to the dialect.
    timescale: ClassVar[bool | None] = None
    _variants: ClassVar[dict[bool | None, type[Hyperfunction[Any]]]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_variants" not in cls.__dict__ and "timescale" not in cls.__dict__:
            # The choice is part of the class so that it is part of SQLAlchemy's cache key.
            cls._variants = {None: cls}
            for mode in (True, False):
                variant = type(cls.__name__, (cls,), {"timescale": mode, "inherit_cache": True})
                variant.__module__ = cls.__module__
                variant.__qualname__ = cls.__qualname__
                cls._variants[mode] = variant

    @classmethod
    def _make(cls, mode: bool | None, *clauses: Any, type_: TypeEngine[Any]) -> Any:
        if mode is not None and not isinstance(mode, bool):
            raise InvalidQueryError(f"timescale must be True, False or None, got {mode!r}")
        element = cls._variants[mode](*clauses)
        element.type = type_
        return element

    @property
    def arguments(self) -> list[ColumnElement[Any]]:
        """The construct's argument expressions, placeholders included."""
        return list(self.clauses.clauses)


def _uses_timescale(element: Hyperfunction[Any], compiler: SQLCompiler, kw: dict[str, Any]) -> bool:
    forced = kw.get(TIMESCALE_COMPILE_OPTION)
    if forced is not None:
        return bool(forced)
    if element.timescale is not None:
        return element.timescale
    return _modes.get(compiler.dialect, True)


def _needs_timescale(name: str, compiler: SQLCompiler) -> CompileError:
    return CompileError(
        f"{name}() exists only in TimescaleDB; this statement is compiled for "
        f"{compiler.dialect.name} without it (on PostgreSQL with the timescaledb extension, "
        "use_timescale(engine) or timescale=True selects TimescaleDB's functions)"
    )


def _given(argument: ColumnElement[Any]) -> bool:
    return not isinstance(argument, Null)


def _sql(compiler: SQLCompiler, argument: ColumnElement[Any], kw: dict[str, Any]) -> str:
    return str(compiler.process(argument, **kw))


def _render(
    compiler: SQLCompiler, argument: ColumnElement[Any], sql_type: str, kw: dict[str, Any]
) -> str:
    """A bound constant cast to ``sql_type`` (PostgreSQL), or our literal under literal_binds."""
    if isinstance(argument, BindParameter) and kw.get("literal_binds"):
        return _literal(compiler, argument.value, sql_type)
    return f"CAST({_sql(compiler, argument, kw)} AS {sql_type})"


def _literal(compiler: SQLCompiler, value: Any, sql_type: str) -> str:
    if isinstance(value, timedelta):
        body = interval_literal(value) if value >= timedelta(0) else "-" + interval_literal(-value)
    elif isinstance(value, datetime):
        body = value.isoformat(sep=" ")
    elif isinstance(value, str):
        body = value
    else:
        raise CompileError(f"cannot render {value!r} as a literal {sql_type}")
    quoted = compiler.render_literal_value(body, Text())
    return f"CAST({quoted} AS {sql_type})"


def _sqlite_count(compiler: SQLCompiler, argument: ColumnElement[Any], kw: dict[str, Any]) -> str:
    """A width/instant constant as an integer count of its type's unit (SQLite)."""
    if isinstance(argument, BindParameter) and kw.get("literal_binds"):
        value = argument.value
        unit: timedelta = getattr(argument.type, "unit", _MICROSECOND)
        if isinstance(value, timedelta):
            return str(value // unit)
        if isinstance(value, datetime):
            return str(_since_epoch(value) // unit)
        raise CompileError(f"cannot render {value!r} as an integer count")
    return _sql(compiler, argument, kw)


def _percent(compiler: SQLCompiler) -> str:
    # '%' in our own SQL text (strftime/printf formats), doubled for "format" paramstyles.
    return "%%" if compiler.dialect.paramstyle in ("format", "pyformat") else "%"


def _sqlite_seconds(compiler: SQLCompiler, ts: str) -> str:
    return f"CAST(strftime('{_percent(compiler)}s', substr({ts}, 1, 19)) AS INTEGER)"


def _sqlite_micros(compiler: SQLCompiler, ts: str) -> str:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'; SQLite's own date
    # functions keep milliseconds only, so seconds and microseconds are read separately.
    seconds = _sqlite_seconds(compiler, ts)
    return f"({seconds} * 1000000 + CAST(substr({ts} || '000000', 21, 6) AS INTEGER))"


def _sqlite_timestamp_text(compiler: SQLCompiler, count: str, unit: timedelta) -> str:
    """SQLAlchemy's SQLite datetime text for ``count`` units since the Unix epoch."""
    p = _percent(compiler)
    layout = f"'{p}Y-{p}m-{p}d {p}H:{p}M:{p}S'"
    if unit == timedelta(seconds=1):
        return f"(strftime({layout}, {count}, 'unixepoch') || '.000000')"
    fraction = f"((({count}) % 1000000 + 1000000) % 1000000)"
    seconds = f"((({count}) - {fraction}) / 1000000)"
    return f"(strftime({layout}, {seconds}, 'unixepoch') || printf('.{p}06d', {fraction}))"


# --------------------------------------------------------------------------- time_bucket


class TimeBucket(Hyperfunction[datetime]):
    """``time_bucket(width, ts [, timezone] [, origin | offset])``; see :func:`time_bucket`.

    Arguments: width, ts, origin, offset, timezone; absent ones are NULL placeholders.
    """

    name = "time_bucket"
    inherit_cache = True


def time_bucket(
    width: timedelta,
    ts: ColumnElement[datetime],
    *,
    origin: datetime | None = None,
    offset: timedelta | None = None,
    timezone: str | None = None,
    timescale: bool | None = None,
) -> TimeBucket:
    """The start of the ``width``-wide bucket holding ``ts``.

    Buckets are aligned on ``origin`` (default :data:`DEFAULT_ORIGIN`) shifted by ``offset``
    (give one or the other). With ``timezone`` (a name such as ``'Europe/Berlin'``, timestamptz
    only) buckets follow that zone's local time, so daily buckets start at local midnight and
    the origin is read as local wall time (PostgreSQL only: SQLite has no time zone database).
    The result has ``ts``'s type. ``timescale`` forces TimescaleDB's or the portable form on
    PostgreSQL (see the module documentation for the default).
    """
    width = _width("width", width)
    aware = _is_aware_time(ts)
    if origin is not None and offset is not None:
        raise InvalidQueryError("give origin or offset, not both")
    if timezone is not None:
        timezone = _timezone_name(timezone)
        if not aware:
            raise InvalidQueryError("timezone needs a timestamptz column (DateTime(timezone=True))")
    if origin is not None:
        origin = _instant("origin", origin, aware)
    if offset is not None:
        offset = _offset(offset)
    second = timedelta(seconds=1)
    whole_seconds = (
        width % second == timedelta(0)
        and (origin is None or origin.microsecond == 0)
        and (offset is None or offset % second == timedelta(0))
    )
    unit = second if whole_seconds else _MICROSECOND
    clauses = [
        _constant(width, _Width(unit)),
        ts,
        null() if origin is None else _constant(origin, _Instant(aware, unit)),
        null() if offset is None else _constant(offset, _Width(unit)),
        null() if timezone is None else _constant(timezone, Text()),
    ]
    result: TimeBucket = TimeBucket._make(timescale, *clauses, type_=ts.type)
    return result


def _default_origin(compiler: SQLCompiler, aware: bool, kw: dict[str, Any]) -> str:
    # Our own constant, rendered inline so that it needs no parameter.
    if aware:
        return _literal(compiler, DEFAULT_ORIGIN, "TIMESTAMP WITH TIME ZONE")
    return _literal(compiler, DEFAULT_ORIGIN.replace(tzinfo=None), "TIMESTAMP WITHOUT TIME ZONE")


def _pg_bin(compiler: SQLCompiler, width: str, source: str, origin: str) -> str:
    version = compiler.dialect.server_version_info
    if version is None or version >= (14,):
        return f"date_bin({width}, {source}, {origin})"
    # PostgreSQL < 14 has no date_bin: floor the distance from the origin in whole microseconds.
    distance = f"CAST(round(EXTRACT(EPOCH FROM ({source}) - ({origin})) * 1000000) AS BIGINT)"
    stride = f"CAST(round(EXTRACT(EPOCH FROM {width}) * 1000000) AS BIGINT)"
    # mod() rather than '%', which "format" paramstyles would read as a placeholder.
    floored = f"({distance} - mod(mod({distance}, {stride}) + {stride}, {stride}))"
    return f"(({origin}) + {floored} * INTERVAL '1 microsecond')"


def _stamp(ts: ColumnElement[Any]) -> str:
    return "TIMESTAMP WITH TIME ZONE" if _is_aware_time(ts) else "TIMESTAMP WITHOUT TIME ZONE"


@compiles(TimeBucket)
def _time_bucket_timescale(element: TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    # TimescaleDB's spelling; also what str(statement) and other dialects show.
    width, ts, origin, offset, zone = element.arguments
    arguments = [_render(compiler, width, "INTERVAL", kw), _sql(compiler, ts, kw)]
    if _given(zone):
        arguments.append(_render(compiler, zone, "TEXT", kw))
    if _given(origin):
        arguments.append("origin => " + _render(compiler, origin, _stamp(ts), kw))
    if _given(offset):
        arguments.append('"offset" => ' + _render(compiler, offset, "INTERVAL", kw))
    return f"time_bucket({', '.join(arguments)})"


@compiles(TimeBucket, "postgresql")
def _time_bucket_postgresql(element: TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    if _uses_timescale(element, compiler, kw):
        return _time_bucket_timescale(element, compiler, **kw)
    width, ts, origin, offset, zone = element.arguments
    aware = _is_aware_time(ts)
    stamp = _stamp(ts)
    width_sql = _render(compiler, width, "INTERVAL", kw)
    ts_sql = _sql(compiler, ts, kw)
    # TimescaleDB's algorithm: with a time zone, bucket the local wall time (origin read in that
    # zone too) and convert back; an offset shifts the time before bucketing and back after.
    zone_sql = _render(compiler, zone, "TEXT", kw) if _given(zone) else None
    if zone_sql is not None:
        source = f"({ts_sql} AT TIME ZONE {zone_sql})"
        origin_sql = (
            f"({_render(compiler, origin, stamp, kw)} AT TIME ZONE {zone_sql})"
            if _given(origin)
            else _default_origin(compiler, False, kw)
        )
    else:
        source = ts_sql
        origin_sql = (
            _render(compiler, origin, stamp, kw)
            if _given(origin)
            else _default_origin(compiler, aware, kw)
        )
    if _given(offset):
        offset_sql = _render(compiler, offset, "INTERVAL", kw)
        shifted = _pg_bin(compiler, width_sql, f"{source} - {offset_sql}", origin_sql)
        bucket = f"({shifted} + {offset_sql})"
    else:
        bucket = _pg_bin(compiler, width_sql, source, origin_sql)
    return f"({bucket} AT TIME ZONE {zone_sql})" if zone_sql is not None else bucket


@compiles(TimeBucket, "sqlite")
def _time_bucket_sqlite(element: TimeBucket, compiler: SQLCompiler, **kw: Any) -> str:
    width, ts, origin, offset, zone = element.arguments
    if _given(zone):
        raise CompileError(
            "time_bucket(timezone=...) needs PostgreSQL: SQLite has no time zone database"
        )
    unit: timedelta = getattr(width.type, "unit", _MICROSECOND)
    ts_sql = _sql(compiler, ts, kw)
    if unit == timedelta(seconds=1):
        # Whole-second constants: the time's fraction cannot move it across a boundary.
        count = _sqlite_seconds(compiler, ts_sql)
    else:
        count = _sqlite_micros(compiler, ts_sql)
    stride = _sqlite_count(compiler, width, kw)
    origin_sql = (
        _sqlite_count(compiler, origin, kw)
        if _given(origin)
        else str(_since_epoch(DEFAULT_ORIGIN) // unit)
    )
    shift = _sqlite_count(compiler, offset, kw) if _given(offset) else None
    source = count if shift is None else f"({count} - {shift})"
    # SQLite's % truncates towards zero; fold negatives so buckets floor like date_bin.
    bucket = f"({source} - (((({source} - {origin_sql}) % {stride}) + {stride}) % {stride}))"
    if shift is not None:
        bucket = f"({bucket} + {shift})"
    return _sqlite_timestamp_text(compiler, bucket, unit)


# --------------------------------------------------------------------------- time_bucket_gapfill


class TimeBucketGapfill(Hyperfunction[datetime]):
    """``time_bucket_gapfill(width, ts [, timezone], start => ..., finish => ...)`` (TimescaleDB).

    Arguments: width, ts, timezone, start, finish; absent ones are NULL placeholders.
    """

    name = "time_bucket_gapfill"
    inherit_cache = True


def time_bucket_gapfill(
    width: timedelta,
    ts: ColumnElement[datetime],
    start: datetime | ColumnElement[datetime] | None = None,
    finish: datetime | ColumnElement[datetime] | None = None,
    *,
    timezone: str | None = None,
    timescale: bool | None = None,
) -> TimeBucketGapfill:
    """``time_bucket`` that also yields the empty buckets between ``start`` and ``finish``.

    TimescaleDB only (there is no portable meaning): elsewhere compiling raises
    :class:`~sqlalchemy.exc.CompileError`. Without ``start``/``finish`` TimescaleDB takes the
    range from the query's ``WHERE`` clause on ``ts``.
    """
    width = _width("width", width)
    aware = _is_aware_time(ts)
    if timezone is not None:
        timezone = _timezone_name(timezone)
        if not aware:
            raise InvalidQueryError("timezone needs a timestamptz column (DateTime(timezone=True))")
    clauses = [
        _constant(width, _Width()),
        ts,
        null() if timezone is None else _constant(timezone, Text()),
        _time_argument(start, aware, "start"),
        _time_argument(finish, aware, "finish"),
    ]
    result: TimeBucketGapfill = TimeBucketGapfill._make(timescale, *clauses, type_=ts.type)
    return result


@compiles(TimeBucketGapfill)
def _gapfill_timescale(element: TimeBucketGapfill, compiler: SQLCompiler, **kw: Any) -> str:
    width, ts, zone, start, finish = element.arguments
    stamp = _stamp(ts)
    arguments = [_render(compiler, width, "INTERVAL", kw), _sql(compiler, ts, kw)]
    if _given(zone):
        arguments.append(_render(compiler, zone, "TEXT", kw))
    for name, value in (("start", start), ("finish", finish)):
        if _given(value):
            sql = (
                _render(compiler, value, stamp, kw)
                if isinstance(value, BindParameter)
                else _sql(compiler, value, kw)
            )
            arguments.append(f"{name} => {sql}")
    return f"time_bucket_gapfill({', '.join(arguments)})"


def _timescale_only(name: str, timescale_sql: Any) -> Any:
    """The PostgreSQL compiler of a construct without a portable form."""

    def compile_postgresql(element: Hyperfunction[Any], compiler: SQLCompiler, **kw: Any) -> str:
        if not _uses_timescale(element, compiler, kw):
            raise _needs_timescale(name, compiler)
        sql: str = timescale_sql(element, compiler, **kw)
        return sql

    def compile_sqlite(element: Hyperfunction[Any], compiler: SQLCompiler, **kw: Any) -> str:
        raise _needs_timescale(name, compiler)

    return compile_postgresql, compile_sqlite


# --------------------------------------------------------------------------- locf, interpolate


class Locf(Hyperfunction[Any]):
    """``locf(value [, prev => ...] [, treat_null_as_missing => true])`` (TimescaleDB)."""

    name = "locf"
    inherit_cache = True


class Interpolate(Hyperfunction[Any]):
    """``interpolate(value [, prev => ...] [, next => ...])`` (TimescaleDB)."""

    name = "interpolate"
    inherit_cache = True


def _expression(name: str, value: Any) -> ColumnElement[Any]:
    if value is None:
        return null()
    if isinstance(value, ColumnElement):
        return value
    raise InvalidQueryError(f"{name} must be a SQL expression, got {value!r}")


def locf(
    value: ColumnElement[T],
    *,
    prev: ColumnElement[Any] | None = None,
    treat_null_as_missing: bool = False,
    timescale: bool | None = None,
) -> Locf:
    """Carry the last seen value forward into gapfilled buckets (TimescaleDB only).

    ``prev`` (typically a scalar subquery) gives the value before the first bucket;
    ``treat_null_as_missing`` also fills buckets whose aggregate is NULL.
    """
    if not isinstance(treat_null_as_missing, bool):
        raise InvalidQueryError(
            f"treat_null_as_missing must be True or False, got {treat_null_as_missing!r}"
        )
    clauses = [
        _expression("value", value),
        _expression("prev", prev),
        _constant(treat_null_as_missing, Boolean()) if treat_null_as_missing else null(),
    ]
    result: Locf = Locf._make(timescale, *clauses, type_=value.type)
    return result


def interpolate(
    value: ColumnElement[T],
    *,
    prev: ColumnElement[Any] | None = None,
    next: ColumnElement[Any] | None = None,
    timescale: bool | None = None,
) -> Interpolate:
    """Linear interpolation into gapfilled buckets (TimescaleDB only).

    ``prev`` / ``next`` are ``(time, value)`` row expressions (scalar subqueries) giving the
    points before the first and after the last bucket.
    """
    clauses = [_expression("value", value), _expression("prev", prev), _expression("next", next)]
    result: Interpolate = Interpolate._make(timescale, *clauses, type_=value.type)
    return result


@compiles(Locf)
def _locf_timescale(element: Locf, compiler: SQLCompiler, **kw: Any) -> str:
    value, prev, treat = element.arguments
    arguments = [_sql(compiler, value, kw)]
    if _given(prev):
        arguments.append(f"prev => {_sql(compiler, prev, kw)}")
    if _given(treat):
        arguments.append("treat_null_as_missing => true")
    return f"locf({', '.join(arguments)})"


@compiles(Interpolate)
def _interpolate_timescale(element: Interpolate, compiler: SQLCompiler, **kw: Any) -> str:
    value, prev, following = element.arguments
    arguments = [_sql(compiler, value, kw)]
    if _given(prev):
        arguments.append(f"prev => {_sql(compiler, prev, kw)}")
    if _given(following):
        arguments.append(f"next => {_sql(compiler, following, kw)}")
    return f"interpolate({', '.join(arguments)})"


for _cls, _name, _sql_of in (
    (TimeBucketGapfill, "time_bucket_gapfill", _gapfill_timescale),
    (Locf, "locf", _locf_timescale),
    (Interpolate, "interpolate", _interpolate_timescale),
):
    _on_postgresql, _on_sqlite = _timescale_only(_name, _sql_of)
    compiles(_cls, "postgresql")(_on_postgresql)
    compiles(_cls, "sqlite")(_on_sqlite)


# --------------------------------------------------------------------------- first, last


class First(Hyperfunction[Any]):
    """``first(value, time)``: the value at the earliest time; see :func:`first`."""

    name = "first"
    inherit_cache = True
    _descending = False


class Last(Hyperfunction[Any]):
    """``last(value, time)``: the value at the latest time; see :func:`last`."""

    name = "last"
    inherit_cache = True
    _descending = True


def first(
    value: ColumnElement[T], time: ColumnElement[Any], *, timescale: bool | None = None
) -> First:
    """Aggregate: ``value`` of the row with the earliest ``time`` (rows with NULL time ignored).

    Ties between equal times are broken arbitrarily. On SQLite ``time`` must be a date/time or
    integer column. ``.filter()``/``.over()`` are TimescaleDB-only.
    """
    result: First = First._make(
        timescale, _expression("value", value), _expression("time", time), type_=value.type
    )
    return result


def last(
    value: ColumnElement[T], time: ColumnElement[Any], *, timescale: bool | None = None
) -> Last:
    """Aggregate: ``value`` of the row with the latest ``time`` (rows with NULL time ignored).

    Ties between equal times are broken arbitrarily. On SQLite ``time`` must be a date/time or
    integer column. ``.filter()``/``.over()`` are TimescaleDB-only.
    """
    result: Last = Last._make(
        timescale, _expression("value", value), _expression("time", time), type_=value.type
    )
    return result


def _bookend_timescale(element: First | Last, compiler: SQLCompiler, **kw: Any) -> str:
    value, time = element.arguments
    return f"{element.name}({_sql(compiler, value, kw)}, {_sql(compiler, time, kw)})"


def _bookend_postgresql(element: First | Last, compiler: SQLCompiler, **kw: Any) -> str:
    if _uses_timescale(element, compiler, kw):
        return _bookend_timescale(element, compiler, **kw)
    value, time = element.arguments
    value_sql, time_sql = _sql(compiler, value, kw), _sql(compiler, time, kw)
    direction = "DESC" if element._descending else "ASC"
    return (
        f"(array_agg({value_sql} ORDER BY {time_sql} {direction}) "
        f"FILTER (WHERE {time_sql} IS NOT NULL))[1]"
    )


def _base_type(type_: TypeEngine[Any], dialect: Dialect) -> TypeEngine[Any]:
    impl = type_.dialect_impl(dialect)
    return impl.impl_instance if isinstance(impl, TypeDecorator) else impl


def _bookend_sqlite(element: First | Last, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite has neither ordered aggregates nor first/last: take min/max of a text key that
    # sorts by time and carries the value behind it. A float travels as two parts (15 digits,
    # then the remainder) so that it comes back bit for bit; a NULL value as an empty payload.
    value, time = element.arguments
    value_sql, time_sql = _sql(compiler, value, kw), _sql(compiler, time, kw)
    p = _percent(compiler)
    time_type = _base_type(time.type, compiler.dialect)
    if isinstance(time_type, DateTime):
        # SQLAlchemy's fixed-width text sorts in time order; a missing fraction counts as zero.
        key = f"substr({time_sql}, 1, 19) || substr({time_sql} || '.000000', 20, 7)"
        width = 26
    elif isinstance(time_type, Integer):
        # printf() formats NULL as 0: keep a NULL time NULL so that min/max skip the row.
        shifted = f"printf('{p}019d', {time_sql} + {_INTEGER_KEY_SHIFT})"
        key = f"CASE WHEN {time_sql} IS NOT NULL THEN {shifted} END"
        width = 19
    else:
        raise CompileError(
            f"{element.name}() on SQLite needs a date/time or integer time argument, "
            f"got {time.type!r}"
        )
    value_type = _base_type(value.type, compiler.dialect)
    if isinstance(value_type, (Integer, Boolean)):
        encoded = f"printf('{p}d', {value_sql})"
    elif isinstance(value_type, (Float, Numeric)):
        head = f"printf('{p}-24.15e', {value_sql})"
        # The remainder travels negated: head - (head - value) keeps the sign of -0.0.
        encoded = f"{head} || printf('{p}.15e', CAST({head} AS REAL) - {value_sql})"
    else:
        encoded = f"'V' || CAST({value_sql} AS TEXT)"
    aggregate = "max" if element._descending else "min"
    picked = f"{aggregate}({key} || CASE WHEN {value_sql} IS NULL THEN '' ELSE {encoded} END)"
    payload = f"NULLIF(substr({picked}, {width + 1}), '')"
    if isinstance(value_type, (Integer, Boolean)):
        return f"CAST({payload} AS INTEGER)"
    if isinstance(value_type, (Float, Numeric)):
        return f"(CAST(substr({payload}, 1, 24) AS REAL) - CAST(substr({payload}, 25) AS REAL))"
    return f"substr({payload}, 2)"


for _bookend in (First, Last):
    compiles(_bookend)(_bookend_timescale)
    compiles(_bookend, "postgresql")(_bookend_postgresql)
    compiles(_bookend, "sqlite")(_bookend_sqlite)
del _bookend, _cls, _name, _sql_of, _on_postgresql, _on_sqlite
