"""DataFrames out: the read queries' results as a ``pyarrow.Table`` (or polars / pandas through it).

``get_signals_history``, ``get_latest_signals``, ``get_active_signals`` and
``get_signal_buckets`` take ``format=`` (keyword only): ``"dicts"`` (the default, a list of
dicts), ``"arrow"`` (a ``pyarrow.Table``), ``"polars"`` (``polars.DataFrame``, via
``polars.from_arrow``, no copy) or ``"pandas"`` (``pandas.DataFrame``, via
``Table.to_pandas``). The rows, their order and their values are those of the dict form:
timestamps are ``timestamp[us, tz=UTC]``, ``metadata`` is the JSON text of the stored document
(``null`` when absent; ``json.loads`` of it equals the dict form's value; polars users decode it
with ``.str.json_decode()``).

How the table is read:

* the query clients on PostgreSQL run the same SQL through ADBC's PostgreSQL driver
  (``adbc-driver-postgresql``, ``fetch_arrow_table``): the server's binary rows become Arrow
  columns in C, no Python object per row. The query's values are bound to transaction-local
  settings that the query reads back, so its text has no parameter and the driver streams the
  result through ``COPY ... TO STDOUT`` (see :func:`_through_settings`); a value of another
  type keeps the query's positional ``$n`` parameters. ADBC opens its own connection (the
  clients' reads are single statements in a transaction of their own, so nothing would see
  the difference); the async client runs it in a thread;
* repositories run on the session's own connection (so they see the session's uncommitted
  work), as do SQLite and clients without ADBC installed: the rows the driver returns are
  turned into Arrow columns.

pyarrow (and polars / pandas) are imported only when a frame is asked for; a missing one raises
:class:`~sa_signals.errors.MissingDependencyError` naming the extra.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.sql import Executable

from ..errors import InvalidQueryError, MissingDependencyError
from .queries import QueryPlan

__all__ = [
    "FORMATS",
    "Format",
    "Shape",
    "adbc_table",
    "check_format",
    "convert",
    "frame_from_result",
    "require_pyarrow",
    "uses_adbc",
]

#: What a query method returns: dicts (default) or one of the frame types.
Format = Literal["dicts", "arrow", "polars", "pandas"]
FORMATS: tuple[str, ...] = ("dicts", "arrow", "polars", "pandas")
#: Result shapes: which columns a query returns.
Shape = Literal["records", "active", "buckets"]

_RECORD_COLUMNS = ("provider", "symbol", "ts", "name", "value", "score", "metadata", "created_at")
_ACTIVE_COLUMNS = ("symbol", "name", "value", "score", "ts", "metadata")
_BUCKET_COLUMNS = (
    "bucket",
    "signal_count",
    "min_value",
    "max_value",
    "avg_value",
    "last_value",
)


def check_format(format: object) -> Format:
    """``format`` if it is one of :data:`FORMATS`, else :class:`InvalidQueryError`."""
    if not isinstance(format, str) or format not in FORMATS:
        raise InvalidQueryError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    return format  # type: ignore[return-value]


def require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError:
        raise MissingDependencyError("pyarrow", "arrow") from None
    return pyarrow


def _schema(shape: Shape) -> Any:
    pa = require_pyarrow()
    text, stamp, number = pa.string(), pa.timestamp("us", "UTC"), pa.float64()
    types: tuple[Any, ...]
    if shape == "records":
        types = (text, text, stamp, text, number, number, text, stamp)
        return pa.schema(list(zip(_RECORD_COLUMNS, types, strict=True)))
    if shape == "active":
        types = (text, text, number, number, stamp, text)
        return pa.schema(list(zip(_ACTIVE_COLUMNS, types, strict=True)))
    types = (stamp, pa.int64(), number, number, number, number)
    return pa.schema(list(zip(_BUCKET_COLUMNS, types, strict=True)))


def _json_text(value: Any) -> str | None:
    # The text PostgreSQL prints for a jsonb document (", " and ": " separators, keys in the
    # stored order, non-ASCII kept).
    return None if value is None else json.dumps(value, ensure_ascii=False)


def frame_from_result(dicts: Sequence[Any], shape: Shape) -> Any:
    """The dict form's result as a ``pyarrow.Table`` of the shape's schema."""
    pa = require_pyarrow()
    schema = _schema(shape)
    columns = {}
    for field in schema:
        values = [row[field.name] for row in dicts]
        if field.name == "metadata":
            values = [_json_text(value) for value in values]
        columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=schema)


def convert(table: Any, format: Format) -> Any:
    """``table`` as the frame type ``format`` names (``"arrow"``: as is)."""
    if format == "polars":
        try:
            import polars
        except ImportError:
            raise MissingDependencyError("polars", "polars") from None
        return polars.from_arrow(table)
    if format == "pandas":
        try:
            import pandas  # noqa: F401 - Table.to_pandas needs it
        except ImportError:
            raise MissingDependencyError("pandas", "pandas") from None
        return table.to_pandas()
    return table


def uses_adbc(engine: Engine) -> bool:
    """Whether the query clients read frames of ``engine`` through ADBC (PostgreSQL, installed)."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _positional(statement: Executable, parameters: dict[str, Any]) -> tuple[str, list[Any]]:
    """``statement`` as PostgreSQL SQL with ``$n`` placeholders, and the values in order."""
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    compiled: Any = statement.compile(dialect=PGDialect_asyncpg())  # type: ignore[attr-defined,no-untyped-call]
    values = compiled.construct_params(parameters)
    order = compiled.positiontup or ()
    return compiled.string, [values[name] for name in order]


#: Transaction-local settings that carry a query's values to ADBC's COPY read (see
#: :func:`_through_settings`).
_SETTING = "sa_signals.read_{}"
_UNSUPPORTED = object()


def _setting_text(value: Any) -> Any:
    """``value`` as the text a setting holds (cast back by the query), or ``_UNSUPPORTED``."""
    kind = type(value)
    if kind is str:
        return value if "\x00" not in value else _UNSUPPORTED
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        return repr(value) if math.isfinite(value) else _UNSUPPORTED
    if kind is datetime:
        return value.isoformat() if value.utcoffset() is not None else _UNSUPPORTED
    if kind is list or kind is tuple:
        if all(type(item) is str and "\x00" not in item for item in value):
            return json.dumps(list(value), ensure_ascii=False)
    return _UNSUPPORTED


def _through_settings(
    statement: Executable, parameters: dict[str, Any]
) -> tuple[str, str, tuple[str, ...]] | None:
    """``(set_config statement, query, values)`` for reading ``statement`` by COPY, or ``None``.

    ADBC's driver reads a query without parameters through ``COPY (query) TO STDOUT``, streamed
    into Arrow batches; with parameters it runs a prepared statement whose whole result libpq
    holds in memory first (measured on a 1,000,000-row history: about a fifth slower, twice
    the memory). So the values are bound, as parameters, to transaction-local settings
    (``set_config(name, $n, true)``), and the query reads them back with ``current_setting``
    cast to each parameter's type: the query text holds no value, and ``current_setting`` is
    stable, so indexes and TimescaleDB's chunk exclusion still apply. ``None`` when a value's
    type has no exact text form here (the caller binds it as usual).
    """
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
    compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    if "__[POSTCOMPILE_" in compiled.string:
        return None
    types = dialect.type_compiler_instance
    fragments: dict[str, str] = {}
    values: list[str] = []
    for name, value in compiled.construct_params(parameters).items():
        sql_type = types.process(compiled.binds[name].type)
        if value is None:
            fragments[name] = f"CAST(NULL AS {sql_type})"
            continue
        text = _setting_text(value)
        if text is _UNSUPPORTED:
            return None
        setting = f"current_setting('{_SETTING.format(len(values))}')"
        values.append(text)
        if type(value) is list or type(value) is tuple:
            setting = f"ARRAY(SELECT jsonb_array_elements_text(CAST({setting} AS jsonb)))"
        fragments[name] = f"CAST({setting} AS {sql_type})"
    configs = ", ".join(
        f"set_config('{_SETTING.format(i)}', ${i + 1}, true)" for i in range(len(values))
    )
    # pyformat SQL doubles every literal "%": formatting replaces exactly the placeholders.
    return f"SELECT {configs or 'NULL'}", str(compiled.string % fragments), tuple(values)


#: libpq's connection keywords (PostgreSQL 17's list): a SQLAlchemy URL's query may carry
#: them (``host=/run/postgresql`` for a socket directory, ``sslmode``, ...) and ADBC hands the
#: URI to libpq, which refuses any other key (a driver's own, such as asyncpg's
#: ``prepared_statement_cache_size``). asyncpg's ``ssl`` is libpq's ``sslmode`` (same values).
_LIBPQ_PARAMETERS = frozenset(
    """
    host hostaddr port dbname user password passfile require_auth channel_binding
    connect_timeout client_encoding options application_name fallback_application_name
    keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout
    replication gssencmode sslmode sslnegotiation requiressl sslcompression sslcert sslkey
    sslpassword sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer
    ssl_min_protocol_version ssl_max_protocol_version krbsrvname gsslib gssdelegation
    service target_session_attrs load_balance_hosts
    """.split()
)


def _libpq_uri(engine: Engine) -> str:
    query = {k: v for k, v in engine.url.query.items() if k in _LIBPQ_PARAMETERS}
    if "ssl" in engine.url.query and "sslmode" not in query:
        query["sslmode"] = engine.url.query["ssl"]
    url = engine.url.set(drivername="postgresql", query=query)
    return url.render_as_string(hide_password=False)


def _plain_strings(column: Any) -> Any:
    pa = require_pyarrow()
    kind = column.type
    if isinstance(kind, pa.ExtensionType):  # jsonb arrives as arrow.json over strings
        column = pa.chunked_array([chunk.storage for chunk in column.chunks], kind.storage_type)
    return column.cast(pa.string())


def adbc_table(engine: Engine, plan: QueryPlan[Any], shape: Shape) -> Any:
    """Run ``plan`` through ADBC on ``engine``'s database; the result as a ``pyarrow.Table``."""
    import adbc_driver_postgresql.dbapi as adbc

    pa = require_pyarrow()
    schema = _schema(shape)
    statement = plan.statement
    if statement is None:
        return schema.empty_table()
    settings = _through_settings(statement, plan.parameters)
    # One transaction (rolled back when the connection closes): the settings are local to it.
    with adbc.connect(_libpq_uri(engine), autocommit=False) as connection:
        with connection.cursor() as cursor:
            if settings is not None:
                configure, sql, texts = settings
                cursor.execute(configure, texts)
                cursor.fetchall()
                cursor.execute(sql)
            else:
                sql, values = _positional(statement, plan.parameters)
                cursor.execute(sql, tuple(values))
            raw = cursor.fetch_arrow_table()
    if shape == "buckets":
        return _bucket_columns(raw, schema)
    columns = []
    for i, field in enumerate(schema):
        column = raw.column(i)
        if field.name == "metadata":
            column = _plain_strings(column)
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _bucket_columns(raw: Any, schema: Any) -> Any:
    """``(start, count, min, max, last, small_sum, large_sum)`` to the bucket columns.

    The mean as the dict form computes it (see ``queries._buckets``): ``small_sum / count``,
    plus ``large_sum / count * SCALE_UP`` where values beyond ``LARGE_VALUE`` were summed apart.
    """
    import pyarrow.compute as pc

    from .queries import SCALE_UP

    pa = require_pyarrow()
    start, count, low, high, last, small, large = (raw.column(i) for i in range(7))
    counts = count.cast(pa.float64())
    plain = pc.divide(small.cast(pa.float64()), counts)
    scaled = pc.add(
        pc.divide(pc.fill_null(small.cast(pa.float64()), 0.0), counts),
        pc.multiply(pc.divide(large.cast(pa.float64()), counts), SCALE_UP),
    )
    mean = pc.if_else(pc.is_null(large), plain, scaled)
    arrays = [start, count, low, high, mean, last]
    return pa.Table.from_arrays(
        [array.cast(field.type) for array, field in zip(arrays, schema, strict=True)],
        schema=schema,
    )
