"""DataFrames in: a ``pyarrow.Table`` / ``RecordBatch``, a polars or a pandas DataFrame as input
of ``upsert`` / ``write_signals``, validated column by column without a Python object per row.

A frame has the columns ``provider, symbol, ts, name, value`` and optionally ``score`` and
``metadata`` (other columns are ignored). Every frame becomes Arrow first (polars
``to_arrow()``, pandas ``pyarrow.Table.from_pandas``) and is checked with ``pyarrow.compute``
by the rules of :mod:`sa_signals.write.validation`; the error names the first bad row (its
position in the frame) and the field, exactly as for objects:

* ``provider``, ``symbol``, ``name``: string columns (dictionary-encoded ones too), no null, no
  empty string, no NUL; ``symbol`` is upper-cased as ``str.upper`` does;
* ``ts``: a timezone-aware timestamp column (any unit; sub-microsecond values are refused, as
  PostgreSQL keeps microseconds), no null, its UTC value within years 1 to 9999;
* ``value`` (and ``score``, which may be null): integer, floating or decimal columns, finite.
  pandas marks missing floats with NaN, which Arrow reads as null: a NaN ``score`` of a pandas
  frame is no score, a NaN ``value`` a missing value;
* ``metadata``: null, a JSON text column (each text must hold a JSON object: checked by Python's
  JSON parser once per distinct text), or a struct column (flat structs of strings, numbers,
  booleans and nested structs are serialised to JSON by Arrow kernels; map and list fields go
  through the object path's encoder row by row).

The result is a :class:`FrameRows`: an Arrow table in the staging table's column order
(:data:`~sa_signals.write.statements.STAGE_COLUMNS`) plus what the merge needs to know (row
count, distinct keys). :func:`encode_copy` turns it into PostgreSQL binary COPY data with
`pgpq <https://github.com/adriangb/pgpq>`_, which the write path sends on the session's own
connection (psycopg ``Copy.write``, asyncpg ``copy_to_table(source=...)``), inside the caller's
transaction. pyarrow, pgpq, polars and pandas are imported only when a frame is written.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSignalError, MissingDependencyError
from .validation import Row, _dump

__all__ = [
    "FrameRows",
    "encode_copy",
    "frame_rows",
    "is_frame",
    "require_arrow",
    "to_arrow",
]

_FRAME_MODULES = ("pyarrow", "polars", "pandas")
_TEXT_FIELDS = ("provider", "symbol", "name")
_REQUIRED = ("provider", "symbol", "ts", "name", "value")
# UTC microseconds since the epoch of 0001-01-01 and of 10000-01-01 (exclusive).
_MIN_US = -62_135_596_800_000_000
_END_US = 253_402_300_800_000_000
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_KEYS = ("provider", "symbol", "ts", "name")


def is_frame(obj: object) -> bool:
    """Whether ``obj`` is a pyarrow Table/RecordBatch or a polars/pandas DataFrame.

    Decided from the type's module and name: nothing is imported to find out.
    """
    cls = type(obj)
    module = cls.__module__.partition(".")[0]
    return module in _FRAME_MODULES and cls.__name__ in ("Table", "RecordBatch", "DataFrame")


def require_arrow() -> Any:
    """The ``pyarrow`` module, or :class:`MissingDependencyError` naming the ``arrow`` extra."""
    try:
        import pyarrow
    except ImportError:
        raise MissingDependencyError("pyarrow", "arrow") from None
    return pyarrow


def to_arrow(frame: Any) -> Any:
    """``frame`` as a ``pyarrow.Table`` (a pandas column Arrow cannot read: InvalidSignalError)."""
    pa = require_arrow()
    if isinstance(frame, pa.Table):
        return frame
    if isinstance(frame, pa.RecordBatch):
        return pa.Table.from_batches([frame])
    module = type(frame).__module__.partition(".")[0]
    if module == "polars":
        return frame.to_arrow()
    if module == "pandas":
        columns = {}
        for name in frame.columns:
            key = str(name)
            try:
                columns[key] = pa.array(frame[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
                raise _unreadable_column(frame[name].tolist(), key, exc) from None
        return pa.table(columns) if columns else pa.table({})
    raise TypeError(f"not a frame: {type(frame).__name__}")  # pragma: no cover


def _unreadable_column(values: list[Any], field: str, exc: BaseException) -> InvalidSignalError:
    """The first value of a pandas column that Arrow could not read (the error path only)."""
    pa = require_arrow()
    first = None
    for index, value in enumerate(values):
        if first is None and value is not None:
            first = type(value)
        try:
            pa.array([value], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as error:
            return InvalidSignalError(index, field, f"cannot be read: {error}")
        if first is not None and value is not None and type(value) is not first:
            return InvalidSignalError(
                index,
                field,
                f"mixes {first.__name__} and {type(value).__name__} values in one column",
            )
    return InvalidSignalError(0, field, f"cannot be read as an Arrow column: {exc}")


@dataclass
class FrameRows:
    """A validated frame: ``table`` in staging column order, and what the merge needs."""

    table: Any
    count: int
    distinct: int
    _in_order: Any = dataclasses.field(default=None, repr=False, compare=False)

    def rows(self) -> Iterator[Row]:
        """The rows as the object path's :data:`Row` tuples (for SQLite and non-COPY drivers)."""
        columns = [self.table.column(i).to_pylist() for i in range(self.table.num_columns)]
        return iter(zip(*columns, strict=True))

    def probe(self) -> dict[str, list[Any]]:
        """The append probe's parameters: each series' first and last instant."""
        import pyarrow.compute as pc

        keys, dictionaries = _encoded_keys(self.table)
        ranges = keys.group_by(["provider", "symbol", "name"], use_threads=False).aggregate(
            [("ts", "min"), ("ts", "max")]
        )
        return {
            "providers": pc.take(dictionaries["provider"], ranges.column("provider")).to_pylist(),
            "symbols": pc.take(dictionaries["symbol"], ranges.column("symbol")).to_pylist(),
            "names": pc.take(dictionaries["name"], ranges.column("name")).to_pylist(),
            "lows": ranges.column("ts_min").to_pylist(),
            "highs": ranges.column("ts_max").to_pylist(),
        }

    def bounds(self) -> tuple[Any, Any]:
        """The first and last instant of the frame (aware UTC datetimes)."""
        import pyarrow.compute as pc

        span = pc.min_max(self.table.column("ts")).as_py()
        return span["min"], span["max"]

    def sorted(self) -> Any:
        """The table in write order (strings by code point, as ``COLLATE "C"``); sorted once."""
        if self._in_order is None:
            # A stable sort: rows of one key keep their ``ord`` order.
            self._in_order = self.table.sort_by([(key, "ascending") for key in _KEYS])
        return self._in_order


def _first(mask: Any) -> int | None:
    """Index of the first true value of a boolean array (nulls are false), else None."""
    import pyarrow.compute as pc

    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def _column(table: Any, name: str) -> Any:
    pa = require_arrow()
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column


def _check_text(table: Any, field: str) -> Any:
    pa = require_arrow()
    import pyarrow.compute as pc

    column = _column(table, field)
    kind = column.type
    if not (
        pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    ):
        index = _first(pc.is_valid(column)) if not pa.types.is_null(kind) else None
        got = "NoneType" if index is None else f"{kind} column"
        raise InvalidSignalError(index or 0, field, f"must be a string, got {got}")
    column = column.cast(pa.large_string())
    index = _first(pc.is_null(column))
    if index is not None:
        raise InvalidSignalError(index, field, "must be a string, got NoneType")
    index = _first(pc.equal(pc.binary_length(column), 0))
    if index is not None:
        raise InvalidSignalError(index, field, "must be a non-empty string")
    index = _first(pc.match_substring(column, "\x00"))
    if index is not None:
        raise InvalidSignalError(index, field, "contains a NUL character")
    return column


def _upper(symbol: Any) -> Any:
    import pyarrow.compute as pc

    if pc.all(pc.string_is_ascii(symbol)).as_py():
        return pc.utf8_upper(symbol)
    # Non-ASCII: str.upper() (full case mapping, as the object path) once per distinct symbol.
    pa = require_arrow()
    encoded = symbol.combine_chunks().dictionary_encode()
    upper = pa.array([s.upper() for s in encoded.dictionary.to_pylist()], pa.large_string())
    return pc.take(upper, encoded.indices)


def _check_ts(table: Any) -> Any:
    pa = require_arrow()
    import pyarrow.compute as pc

    column = table.column("ts")
    kind = column.type
    if not pa.types.is_timestamp(kind):
        raise InvalidSignalError(0, "ts", f"must be a timezone-aware datetime, got {kind} column")
    index = _first(pc.is_null(column))
    if index is not None:
        raise InvalidSignalError(index, "ts", "must be a timezone-aware datetime, got NoneType")
    if kind.tz is None:
        raise InvalidSignalError(
            0,
            "ts",
            f"naive timestamp column ({kind}): give it a time zone, e.g. "
            "pyarrow.compute.assume_timezone(ts, 'UTC'), polars .dt.replace_time_zone('UTC') "
            "or pandas .dt.tz_localize('UTC')",
        )
    raw = column.cast(pa.int64())
    unit = kind.unit
    if unit == "ns":
        index = _first(pc.not_equal(pc.multiply(pc.divide(raw, 1000), 1000), raw))
        if index is not None:
            raise InvalidSignalError(
                index,
                "ts",
                "has sub-microsecond precision; PostgreSQL keeps microseconds: round it first "
                "(e.g. pandas .dt.floor('us'))",
            )
    else:
        per = _PER_SECOND[unit]
        low, end = _MIN_US // (1_000_000 // per), _END_US // (1_000_000 // per)
        index = _first(pc.or_(pc.less(raw, low), pc.greater_equal(raw, end)))
        if index is not None:
            value = column[index].cast(pa.int64()).as_py()
            raise InvalidSignalError(
                index,
                "ts",
                f"{value} {unit} since the epoch is outside the range of UTC datetimes "
                "(years 1 to 9999), so it could not be read back",
            )
    return column.cast(pa.timestamp("us", "UTC"), safe=False)


def _check_number(table: Any, field: str, nullable: bool) -> Any:
    pa = require_arrow()
    import pyarrow.compute as pc

    column = table.column(field)
    kind = column.type
    if pa.types.is_null(kind):
        if nullable:
            return pa.nulls(len(column), pa.float64())
        raise InvalidSignalError(0, field, "must be a finite real number, got NoneType None")
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise InvalidSignalError(0, field, f"must be a finite real number, got {kind} column")
    if not nullable:
        index = _first(pc.is_null(column))
        if index is not None:
            raise InvalidSignalError(
                index, field, "must be a finite real number, got NoneType None"
            )
    number = column.cast(pa.float64(), safe=False)
    index = _first(pc.invert(pc.is_finite(number)))
    if index is not None:
        raise InvalidSignalError(
            index, field, f"must be a finite double precision number, got {column[index].as_py()!r}"
        )
    return number


def _check_json_text(column: Any) -> Any:
    """JSON text: each distinct text parsed once, checked and re-encoded as the object path
    encodes a dict (so both paths store the same text, also on SQLite)."""
    pa = require_arrow()
    import pyarrow.compute as pc

    column = column.cast(pa.large_string())
    encoded = column.combine_chunks().dictionary_encode()
    texts: list[str | None] = []
    for text in encoded.dictionary.to_pylist():
        try:
            texts.append(_json_text(text))
        except InvalidSignalError:
            texts.append(None)
    bad = [text is None for text in texts]
    if any(bad):
        index = _first(pc.take(pa.array(bad), encoded.indices))
        assert index is not None
        try:
            _json_text(column[index].as_py())
        except InvalidSignalError as exc:
            raise InvalidSignalError(index, "metadata", exc.reason) from None
    return pc.take(pa.array(texts, pa.large_string()), encoded.indices)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_text(text: str) -> str:
    """``text`` re-encoded by the object path's encoder, or InvalidSignalError (index 0)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidSignalError(0, "metadata", f"is not strict JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidSignalError(
            0, "metadata", f"must be a JSON object or null, got {type(value).__name__}"
        )
    return _dump(0, value)


def _json_string(column: Any) -> Any:
    """Arrow strings as JSON string literals (quotes and escapes), NUL refused by the caller."""
    import pyarrow.compute as pc

    text = pc.replace_substring(column, "\\", "\\\\")
    text = pc.replace_substring(text, '"', '\\"')
    if pc.any(pc.match_substring_regex(text, "[\\x01-\\x1f]")).as_py():
        for code in range(1, 0x20):
            text = pc.replace_substring(text, chr(code), json.dumps(chr(code))[1:-1])
    text = text.cast(require_arrow().large_string())
    return pc.binary_join_element_wise(_lit('"'), text, _lit('"'), _lit(""))


def _lit(value: str) -> Any:
    return require_arrow().scalar(value, require_arrow().large_string())


def _struct_json(column: Any, path: str) -> Any | None:
    """A struct column as JSON text by Arrow kernels; None when a field needs Python."""
    pa = require_arrow()
    import pyarrow.compute as pc

    parts: list[Any] = []
    kind = column.type
    for i in range(kind.num_fields):
        field = kind.field(i)
        values = pc.struct_field(column, [i])
        ftype = field.type
        if pa.types.is_dictionary(ftype):
            values = values.cast(ftype.value_type)
            ftype = ftype.value_type
        if pa.types.is_null(ftype):
            text = None
        elif (
            pa.types.is_string(ftype)
            or pa.types.is_large_string(ftype)
            or (pa.types.is_string_view(ftype))
        ):
            values = values.cast(pa.large_string())
            index = _first(pc.match_substring(values, "\x00"))
            if index is not None:
                raise InvalidSignalError(index, "metadata", "contains a NUL character (\\u0000)")
            text = _json_string(values)
        elif pa.types.is_boolean(ftype):
            text = pc.if_else(values, _lit("true"), _lit("false"))
        elif pa.types.is_integer(ftype):
            text = values.cast(pa.large_string())
        elif pa.types.is_floating(ftype) or pa.types.is_decimal(ftype):
            numbers = values.cast(pa.float64(), safe=False)
            index = _first(pc.invert(pc.is_finite(numbers)))
            if index is not None:
                raise InvalidSignalError(
                    index,
                    "metadata",
                    f"is not strict JSON: Out of range float values are not JSON compliant: "
                    f"{field.name}={numbers[index].as_py()!r}",
                )
            text = numbers.cast(pa.large_string())
            # Python writes 400.0 where Arrow writes 400: keep floats floats when read back.
            text = pc.if_else(
                pc.match_substring_regex(text, "[.eE]"),
                text,
                pc.binary_join_element_wise(text, _lit(".0"), _lit("")),
            )
        elif pa.types.is_struct(ftype):
            text = _struct_json(values, f"{path}.{field.name}")
            if text is None:
                return None
        else:
            return None
        key = json.dumps(field.name, ensure_ascii=False) + ":"
        if "\x00" in field.name:
            raise InvalidSignalError(0, "metadata", "contains a NUL character (\\u0000)")
        filled = pa.scalar("null", pa.large_string())
        body = filled if text is None else pc.fill_null(text, filled)
        parts.append(pc.binary_join_element_wise(_lit(key), body, _lit("")))
    if parts:
        inner = pc.binary_join_element_wise(*parts, _lit(","))
        document = pc.binary_join_element_wise(_lit("{"), inner, _lit("}"), _lit(""))
    else:
        document = pa.array(["{}"] * len(column), pa.large_string())
    return pc.if_else(pc.is_valid(column), document, pa.scalar(None, pa.large_string()))


def _check_metadata(table: Any) -> Any:
    pa = require_arrow()

    count = table.num_rows
    if "metadata" not in table.column_names:
        return pa.nulls(count, pa.large_string())
    column = _column(table, "metadata")
    kind = column.type
    if pa.types.is_null(kind):
        return pa.nulls(count, pa.large_string())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return _check_json_text(column)
    if pa.types.is_struct(kind):
        encoded = _struct_json(column, "metadata")
        if encoded is not None:
            return encoded
    if pa.types.is_struct(kind) or pa.types.is_map(kind):
        # Row by row through the object path's encoder (string keys, strict JSON, no NUL).
        texts = []
        for index, value in enumerate(column.to_pylist()):
            if value is not None and pa.types.is_map(kind):
                pairs = value
                value = dict(pairs)
                if len(value) != len(pairs):
                    raise InvalidSignalError(index, "metadata", "repeats a key of the map")
            texts.append(None if value is None else _dump(index, _plain(value)))
        return pa.array(texts, pa.large_string())
    import pyarrow.compute as pc

    first = _first(pc.is_valid(column))
    raise InvalidSignalError(
        first or 0, "metadata", f"must be a mapping or None, got {kind} column"
    )


def _plain(value: Any) -> Any:
    # Map values inside structs come back from to_pylist as lists of pairs.
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            return {k: _plain(v) for k, v in value}
        return [_plain(v) for v in value]
    return value


def frame_rows(frame: Any) -> FrameRows:
    """Validate ``frame`` (see the module docstring) into a :class:`FrameRows`."""
    pa = require_arrow()

    table = to_arrow(frame)
    count = table.num_rows
    names = table.column_names
    for field in _REQUIRED:
        if field not in names and count:
            raise InvalidSignalError(0, field, f"is missing (no column {field!r} in the frame)")
    if not count:
        empty = pa.table(
            {
                "ord": pa.array([], pa.int64()),
                "provider": pa.array([], pa.large_string()),
                "symbol": pa.array([], pa.large_string()),
                "ts": pa.array([], pa.timestamp("us", "UTC")),
                "name": pa.array([], pa.large_string()),
                "value": pa.array([], pa.float64()),
                "score": pa.array([], pa.float64()),
                "metadata": pa.array([], pa.large_string()),
            }
        )
        return FrameRows(empty, 0, 0)
    # The object path checks each row's fields in this order: the first bad row wins, then
    # the first bad field of that row.
    failures: list[InvalidSignalError] = []
    checked: dict[str, Any] = {}
    checks: tuple[tuple[str, Callable[[], Any]], ...] = (
        ("provider", lambda: _check_text(table, "provider")),
        ("symbol", lambda: _check_text(table, "symbol")),
        ("name", lambda: _check_text(table, "name")),
        ("ts", lambda: _check_ts(table)),
        ("value", lambda: _check_number(table, "value", nullable=False)),
        (
            "score",
            lambda: (
                _check_number(table, "score", nullable=True)
                if "score" in names
                else pa.nulls(count, pa.float64())
            ),
        ),
        ("metadata", lambda: _check_metadata(table)),
    )
    for field, check in checks:
        try:
            checked[field] = check()
        except InvalidSignalError as exc:
            failures.append(exc)
    if failures:
        raise min(failures, key=lambda exc: exc.index)
    staged = pa.table(
        {
            "ord": pa.array(range(count), pa.int64()),
            "provider": checked["provider"],
            "symbol": _upper(checked["symbol"]),
            "ts": checked["ts"],
            "name": checked["name"],
            "value": checked["value"],
            "score": checked["score"],
            "metadata": checked["metadata"],
        }
    )
    keys, _ = _encoded_keys(staged)
    distinct = keys.group_by(list(_KEYS), use_threads=False).aggregate([]).num_rows
    return FrameRows(staged, count, distinct)


def _encoded_keys(table: Any) -> tuple[Any, dict[str, Any]]:
    """The key columns with the text ones dictionary-encoded (grouping integers, not strings,
    is several times faster), and the dictionaries."""
    pa = require_arrow()
    columns: dict[str, Any] = {}
    dictionaries: dict[str, Any] = {}
    for name in _KEYS:
        column = table.column(name)
        if name == "ts":
            columns[name] = column
            continue
        encoded = column.combine_chunks().dictionary_encode()
        columns[name] = encoded.indices
        dictionaries[name] = encoded.dictionary
    return pa.table(columns), dictionaries


def encode_copy(table: Any, columns: tuple[str, ...], jsonb: bool, chunk: int) -> Iterator[bytes]:
    """PostgreSQL binary COPY data for ``columns`` of ``table``, in pieces of ``chunk`` rows.

    ``metadata`` is encoded as ``jsonb`` when ``jsonb`` (COPY into the signals table), else as
    text (the staging table). Other columns map one to one: int64 to int8, strings to text,
    timestamp[us, UTC] to timestamptz, float64 to float8.
    """
    try:
        import pgpq
        from pgpq import encoders
        from pgpq import schema as pg_types
    except ImportError:
        raise MissingDependencyError("pgpq", "arrow") from None
    selected = table.select(list(columns))
    arrow_schema = selected.schema
    builders: dict[str, Any] = {}
    if jsonb and "metadata" in columns:
        builders["metadata"] = encoders.LargeStringEncoderBuilder.new_with_output(
            arrow_schema.field("metadata"), pg_types.Jsonb()
        )
    for field in arrow_schema:
        if field.name not in builders:
            builders[field.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(field)
    encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(arrow_schema, builders)
    yield encoder.write_header()
    for batch in selected.to_batches(max_chunksize=chunk):
        yield encoder.write_batch(batch)
    yield encoder.finish()
