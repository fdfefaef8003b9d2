"""Pure statement builders of the write path (no I/O).

* :func:`upsert_statement`: the spec's diff-aware ``INSERT ... ON CONFLICT (primary key) DO UPDATE
  SET value, score, metadata = EXCLUDED.* WHERE any IS DISTINCT FROM EXCLUDED.*`` for PostgreSQL
  and SQLite, built with SQLAlchemy's public ``postgresql.insert`` / ``sqlite.insert``; run it with
  a list of parameter dicts (executemany).
* :func:`stage_ddl`, :func:`truncate_stage`, :func:`merge_statement`: the COPY path's staging
  table and the one ``INSERT ... SELECT DISTINCT ON ... ON CONFLICT`` that merges it, which
  deduplicates (last occurrence wins), writes in key order and counts the outcome.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Double,
    Integer,
    Table,
    Text,
    TextClause,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert

from ..errors import ConfigurationError
from ..schema.model import KEY_COLUMNS

__all__ = [
    "PAYLOAD_COLUMNS",
    "STAGE_COLUMNS",
    "STAGE_NAME",
    "STAGE_TYPES",
    "merge_statement",
    "stage_ddl",
    "truncate_stage",
    "upsert_statement",
]

#: Columns an upsert may change on conflict.
PAYLOAD_COLUMNS: tuple[str, ...] = ("value", "score", "metadata")
#: The staging table of the COPY path (temporary, so it lives in the session's ``pg_temp``).
STAGE_NAME = "sa_signals_stage"
#: Staging columns in COPY order: ``ord`` is the signal's index in the call (the last one wins).
STAGE_COLUMNS: tuple[str, ...] = ("ord", *KEY_COLUMNS, *PAYLOAD_COLUMNS)
#: PostgreSQL types of the staging columns, declared to the binary COPY. ``metadata`` is staged
#: as text (already strict JSON) and cast to jsonb by the merge: the binary COPY then needs no
#: jsonb codec on any driver, and the server parses the document once, as for jsonb input.
STAGE_TYPES: tuple[str, ...] = (
    "int8",
    "text",
    "text",
    "timestamptz",
    "text",
    "float8",
    "float8",
    "text",
)
_STAGE_SQL_TYPES = {
    "int8": "bigint",
    "text": "text",
    "timestamptz": "timestamptz",
    "float8": "double precision",
}


_ARRAY_TYPES: tuple[tuple[str, Any], ...] = (
    ("provider", Text()),
    ("symbol", Text()),
    ("ts", DateTime(timezone=True)),
    ("name", Text()),
    ("value", Double()),
    ("score", Double()),
    ("metadata", Text()),
)


def upsert_statement(table: Table, dialect_name: str) -> Insert:
    """The executemany upsert for ``table`` on ``dialect_name`` (``postgresql`` or ``sqlite``).

    Parameters are named after the columns; ``metadata`` is bound as JSON text. On PostgreSQL
    it returns one boolean per inserted or changed row (``xmax = 0`` means inserted); on SQLite
    one row per inserted or changed row. Unchanged rows return nothing.
    """
    c = table.c
    values: dict[str, Any] = {
        key: bindparam(key, type_=c[key].type) for key in (*KEY_COLUMNS, "value", "score")
    }
    if dialect_name == "postgresql":
        # One statement per batch with one array per column (unnest): a short, constant SQL
        # text whatever the batch size, instead of a VALUES row per signal to render and parse.
        arrays = func.unnest(
            *(bindparam(key, type_=postgresql.ARRAY(kind)) for key, kind in _ARRAY_TYPES)
        ).table_valued(*(key for key, _ in _ARRAY_TYPES), with_ordinality="ord")
        arrays = arrays.render_derived(name="src")
        source = select(
            *(arrays.c[key] for key in (*KEY_COLUMNS, "value", "score")),
            cast(arrays.c.metadata, postgresql.JSONB),
        ).order_by(arrays.c.ord)
        pg = postgresql.insert(table).from_select(
            [c[key] for key in (*KEY_COLUMNS, *PAYLOAD_COLUMNS)], source
        )
        excluded = pg.excluded
        return pg.on_conflict_do_update(
            index_elements=[c[key] for key in KEY_COLUMNS],
            set_={name: excluded[name] for name in PAYLOAD_COLUMNS},
            where=or_(*(c[name].is_distinct_from(excluded[name]) for name in PAYLOAD_COLUMNS)),
        ).returning(literal_column("xmax = 0", Boolean).label("inserted"))
    if dialect_name == "sqlite":
        values["metadata"] = bindparam("metadata", type_=Text())
        lite = sqlite.insert(table).values(values)
        excluded_lite = lite.excluded
        return lite.on_conflict_do_update(
            index_elements=[c[key] for key in KEY_COLUMNS],
            set_={name: excluded_lite[name] for name in PAYLOAD_COLUMNS},
            where=or_(*(c[name].is_distinct_from(excluded_lite[name]) for name in PAYLOAD_COLUMNS)),
        ).returning(literal_column("1", Integer).label("changed"))
    raise ConfigurationError(f"no upsert for dialect {dialect_name!r} (postgresql or sqlite)")


def stage_ddl() -> TextClause:
    """Create the staging table unless this transaction already has it.

    No constraints at all (a primary key would reject in-call duplicates); ``ON COMMIT DROP``
    so it lives exactly as long as the transaction, and later batches and calls of the same
    transaction reuse it.
    """
    columns = ", ".join(
        f"{name} {_STAGE_SQL_TYPES[kind]}"
        for name, kind in zip(STAGE_COLUMNS, STAGE_TYPES, strict=True)
    )
    return text(f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE_NAME} ({columns}) ON COMMIT DROP")


def truncate_stage() -> TextClause:
    """Empty the staging table before the next batch is copied in."""
    return text(f"TRUNCATE {STAGE_NAME}")


def merge_statement(table: Table, dialect: Dialect) -> TextClause:
    """Merge the staging table into ``table``; returns one row ``(distinct, inserted, changed)``.

    ``DISTINCT ON (key) ... ORDER BY key, ord DESC`` keeps the last occurrence of each key, so
    the ``ON CONFLICT`` never meets a key twice (no CardinalityViolation), and rows reach the
    table in key order (concurrent writers lock rows in the same order: no deadlocks). Text keys
    sort with ``COLLATE "C"`` (code-point order, the order Python's executemany path sorts in).
    """
    quote = dialect.identifier_preparer.quote
    target = dialect.identifier_preparer.format_table(table)
    keys = ", ".join(quote(k) for k in KEY_COLUMNS)
    ordered = ", ".join(quote(k) if k == "ts" else f'{quote(k)} COLLATE "C"' for k in KEY_COLUMNS)
    columns = ", ".join(quote(k) for k in (*KEY_COLUMNS, *PAYLOAD_COLUMNS))
    selected = ", ".join(
        [quote(k) for k in (*KEY_COLUMNS, "value", "score")] + ["metadata::jsonb AS metadata"]
    )
    sets = ", ".join(f"{quote(k)} = excluded.{quote(k)}" for k in PAYLOAD_COLUMNS)
    changed = " OR ".join(
        f"target.{quote(k)} IS DISTINCT FROM excluded.{quote(k)}" for k in PAYLOAD_COLUMNS
    )
    # Identifiers come from the table and are quoted by the dialect; no values are inlined.
    return text(
        f"WITH src AS MATERIALIZED ("  # noqa: S608
        f"SELECT DISTINCT ON ({ordered}) {selected} FROM {STAGE_NAME} "
        f"ORDER BY {ordered}, ord DESC), "
        f"merged AS (INSERT INTO {target} AS target ({columns}) SELECT {columns} FROM src "
        f"ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE {changed} "
        f"RETURNING (target.xmax = 0) AS inserted) "
        f"SELECT (SELECT count(*) FROM src), count(*) FILTER (WHERE inserted), count(*) "
        f"FROM merged"
    )
