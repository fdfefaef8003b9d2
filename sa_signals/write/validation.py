"""Normalise and validate incoming signals, once per signal, before any SQL for it is sent.

Accepted inputs: objects with the attributes ``provider, symbol, ts, name, value`` and optionally
``score`` and ``metadata`` (``SimpleNamespace``, dataclasses, ...), mappings with those keys, and
instances of :class:`~sa_signals.SignalMixin` models (whose JSON attribute is ``metadata_``).

Each valid signal becomes a :data:`Row`, ``(index, provider, SYMBOL, ts, name, value, score,
metadata_json)``: the index in the caller's iterable (it decides which duplicate wins), the symbol
upper-cased, the timestamp in UTC, numbers as ``float`` and the metadata already serialised to
strict JSON text, so the write paths never serialise twice and accept exactly the same inputs.

Every check has a fast path on exact types (``str``, ``float``, ``dict``, a UTC ``datetime``);
only a value that fails the cheap test goes through the careful check, which either normalises
it or raises :class:`~sa_signals.errors.InvalidSignalError` naming the index and the field.
The same loop notes, at almost no cost, whether the keys arrived in write order
(:class:`RowStats`), so the merge can skip work the data does not need.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from numbers import Real
from typing import Any, Final

from ..errors import InvalidSignalError
from ..schema.model import SignalMixin

__all__ = [
    "Row",
    "RowStats",
    "dump_metadata",
    "first_metadata_error",
    "validate_signal",
    "validate_signals",
    "with_metadata_encoded",
]

#: ``(index, provider, symbol, ts, name, value, score, metadata_json)``
Row = tuple[int, str, str, datetime, str, float, "float | None", "str | None"]

_UTC: Final = timezone.utc
_REQUIRED: Final = ("provider", "symbol", "ts", "name", "value")
_ATTRS: Final = 0
_MAPPING: Final = 1
_MODEL: Final = 2
# type -> how to read it; filled lazily so the per-row cost is one dict lookup.
_KINDS: dict[type, int] = {}
# Compares below any real key tuple.
_NO_KEY: Final[tuple[str, ...]] = ()
_BEFORE_ALL: Final = datetime.min.replace(tzinfo=_UTC)
# Distinct texts remembered per call by validate_signals (a bound on its memory).
_CHECKED_LIMIT: Final = 4096


class RowStats:
    """What :func:`validate_signals` saw of the rows it yielded, for the write path.

    The write order of keys is the primary key's, ``(provider, symbol, ts, name)`` (text in
    code-point order: PostgreSQL's ``COLLATE "C"``). Set when the rows are exhausted:
    ``ordered`` is true when every key was strictly greater than the one before (sorted, no
    duplicates); ``duplicates``
    is the exact number of rows whose key repeats an earlier one when it could be counted in
    bounded memory (timestamps never went back and no instant held more than ``limit`` keys),
    else ``None``. Set however the iteration ends: ``count``, the signals read (the failing
    one included), and ``error``, the exception raised inside the iteration (by the caller's
    iterable or by validation), so the write path can tell it from a driver's. ``low`` and
    ``high``: the first and last timestamp when ``duplicates`` could be counted (timestamps
    never went back), else ``None``.
    """

    __slots__ = ("count", "duplicates", "error", "high", "limit", "low", "ordered")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.ordered = False
        self.duplicates: int | None = None
        self.low: datetime | None = None
        self.high: datetime | None = None
        self.count = 0
        self.error: BaseException | None = None


def _reject(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact, strict JSON: NaN/Infinity are not JSON, non-JSON types raise TypeError.

    ``json.dumps`` builds a new C encoder on every call; on the hot path one C encoder is made
    once and reused (about twice as fast). Cycles raise RecursionError instead of ValueError.
    """
    fallback = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return fallback
    try:
        iterencode = make(
            None, _reject, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )

        def encode(obj: Any) -> str:
            return "".join(iterencode(obj, 0))

        if encode({"probe": [1.5, None, "x", True]}) != '{"probe":[1.5,null,"x",true]}':
            return fallback
        return encode
    except Exception:  # a different C signature: use the documented encoder
        return fallback


_encode = _make_encoder()
_JSON_ERRORS = (TypeError, ValueError, RecursionError)


def _kind(cls: type) -> int:
    if issubclass(cls, SignalMixin):
        kind = _MODEL
    elif issubclass(cls, Mapping):
        kind = _MAPPING
    else:
        kind = _ATTRS
    _KINDS[cls] = kind
    return kind


def _bad_key(obj: object) -> tuple[object] | None:
    """``(key,)`` for the first mapping key that is not a string, at any depth, else ``None``.

    JSON turns ``1`` into ``"1"``: ``{1: "x", "1": "y"}`` would silently keep one value.
    """
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, value in item.items():
                if not isinstance(key, str):
                    return (key,)
                stack.append(value)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return None


def _has_nul(obj: object) -> bool:
    """Whether a real NUL character is in any key or string value, at any depth."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def dump_metadata(index: int, metadata: object) -> str | None:
    """``metadata`` as strict JSON text (``None`` stays ``None``); raise on anything else.

    Keys must be strings at every level; strings must be valid Unicode without NUL (PostgreSQL
    stores neither a lone surrogate nor ``\\u0000`` in text or jsonb).
    """
    if metadata is None:
        return None
    return _dump(index, metadata)


def _dump(index: int, metadata: object) -> str:
    if not isinstance(metadata, Mapping):
        raise InvalidSignalError(
            index, "metadata", f"must be a mapping or None, got {type(metadata).__name__}"
        )
    try:
        text = _encode(metadata if type(metadata) is dict else dict(metadata))
    except _JSON_ERRORS as exc:
        raise InvalidSignalError(index, "metadata", f"is not strict JSON: {exc}") from None
    # Encoded, so acyclic: the walks below terminate.
    bad = _bad_key(metadata)
    if bad is not None:
        raise InvalidSignalError(
            index,
            "metadata",
            f"keys must be strings at every level, got {type(bad[0]).__name__} {bad[0]!r}",
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidSignalError(
                index, "metadata", f"is not valid Unicode ({exc.reason}: {exc.object[exc.start]!r})"
            ) from None
    # The encoder writes a real NUL as \u0000; a backslash followed by "u0000" is written as
    # \\u0000, which also contains "\u0000": look at the strings themselves before rejecting.
    if "\\u0000" in text and _has_nul(metadata):
        # PostgreSQL's jsonb cannot store NUL characters; fail here, not inside the merge.
        raise InvalidSignalError(index, "metadata", "contains a NUL character (\\u0000)")
    return text


def _text(index: int, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidSignalError(index, field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidSignalError(index, field, "must be a non-empty string")
    if "\x00" in value:
        raise InvalidSignalError(index, field, "contains a NUL character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidSignalError(
                index, field, f"is not valid Unicode ({exc.reason}: {exc.object[exc.start]!r})"
            ) from None
    return str(value)


def _timestamp(index: int, ts: object) -> datetime:
    """``ts`` as an aware UTC datetime; any offset (even 1 µs) is kept as the same instant."""
    if not isinstance(ts, datetime):
        raise InvalidSignalError(
            index, "ts", f"must be a timezone-aware datetime, got {type(ts).__name__}"
        )
    try:
        offset = ts.utcoffset()
    except Exception as exc:  # a broken tzinfo
        raise InvalidSignalError(index, "ts", f"has an unusable tzinfo: {exc}") from None
    if offset is None:  # no tzinfo, or one that does not know its offset: naive
        raise InvalidSignalError(
            index,
            "ts",
            f"naive datetime {ts.isoformat()!r}: give it a timezone, "
            "e.g. ts.replace(tzinfo=timezone.utc) or datetime.now(timezone.utc)",
        )
    try:
        utc = (ts.replace(tzinfo=None) - offset).replace(tzinfo=_UTC)
    except OverflowError:
        raise InvalidSignalError(
            index,
            "ts",
            f"{ts.isoformat()!r} is outside the range of UTC datetimes (years 1 to 9999), "
            "so it could not be read back",
        ) from None
    # A plain datetime, whatever subclass came in (the drivers' fast paths expect one).
    return datetime(
        utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, _UTC
    )


def _number(index: int, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, Decimal)):
        raise InvalidSignalError(
            index, field, f"must be a finite real number, got {type(value).__name__} {value!r}"
        )
    try:
        number = float(value)
    except (OverflowError, ValueError):  # 10**400, Decimal("sNaN")
        number = math.nan
    if not math.isfinite(number):
        raise InvalidSignalError(
            index, field, f"must be a finite double precision number, got {value!r:.60}"
        )
    return number


def _missing(index: int, obj: object, kind: int) -> InvalidSignalError:
    for field in _REQUIRED:
        present = field in obj if kind == _MAPPING else hasattr(obj, field)  # type: ignore[operator]
        if not present:
            return InvalidSignalError(index, field, "is missing")
    return InvalidSignalError(index, None, f"cannot read signal from {type(obj).__name__}")


def validate_signal(index: int, obj: object) -> Row:
    """Validate one signal; see :func:`validate_signals`."""
    return next(validate_signals((obj,), start=index))


def _metadata_text(index: int, metadata: object) -> str | None:
    """The metadata field of a :data:`Row` (strict JSON text), as the per-row loop makes it."""
    if metadata is None:
        return None
    if type(metadata) is dict:
        try:
            text = _encode(metadata)
            "".join(metadata)  # TypeError unless every top-level key is a str
        except _JSON_ERRORS:
            return _dump(index, metadata)  # raises with the reason
        if text.find("{", 1) >= 0 or not text.isascii() or "\\u0000" in text:
            return _dump(index, metadata)
        return text
    return _dump(index, metadata)


def with_metadata_encoded(rows: Iterable[Row]) -> Iterator[Row]:
    """Rows of ``validate_signals(..., encode_metadata=False)`` with their metadata encoded.

    Raises :class:`InvalidSignalError` at a row whose metadata is not valid (the first one met
    in ``rows``' order: see :func:`first_metadata_error` for the lowest index).
    """
    text = _metadata_text
    for row in rows:
        metadata = row[7]
        if metadata is None:
            yield row
        else:
            yield (*row[:7], text(row[0], metadata))


def first_metadata_error(signals: Sequence[Any], stop: int) -> InvalidSignalError | None:
    """The error of the lowest-indexed signal before ``stop`` whose metadata is not valid."""
    for index in range(min(stop, len(signals))):
        obj = signals[index]
        kind = _KINDS.get(type(obj)) or _kind(type(obj))
        if kind == _MAPPING:
            metadata = obj.get("metadata")
        elif kind == _MODEL:
            metadata = obj.metadata_
        else:
            metadata = getattr(obj, "metadata", None)
        try:
            _metadata_text(index, metadata)
        except InvalidSignalError as exc:
            return exc
    return None


def validate_signals(
    signals: Iterable[Any],
    start: int = 0,
    stats: RowStats | None = None,
    *,
    encode_metadata: bool = True,
) -> Generator[Row, None, None]:
    """Yield a :data:`Row` per signal; raise :class:`InvalidSignalError` at the first bad one.

    The checks run lazily, one signal at a time, so a generator is never held in memory.
    When ``stats`` is given it is filled in as described there. ``encode_metadata=False``
    leaves each metadata as given, unchecked, for :func:`with_metadata_encoded` to encode
    later (the caller then owns reporting the lowest-indexed error).
    """
    kinds = _KINDS
    encode = _encode
    # Texts that passed _text in this call (bounded): provider and name values, and each
    # symbol with its upper-cased form.
    checked: dict[str, str] = {}
    upper: dict[str, str] = {}
    utc = _UTC
    index = start - 1
    # Order tracking (see RowStats): the current instant, its keys, and what was seen so far.
    tracking = stats is not None
    limit = stats.limit if stats is not None else 0
    ordered = True
    duplicates = 0
    last_ts = _BEFORE_ALL
    low: datetime | None = None
    last_key: tuple[Any, ...] = _NO_KEY
    first_key: tuple[str, ...] = _NO_KEY
    group: set[tuple[str, ...]] | None = None
    try:
        for obj in signals:
            index += 1
            cls = type(obj)
            kind = kinds.get(cls)
            if kind is None:
                kind = _kind(cls)
            try:
                if kind == _ATTRS:
                    provider = obj.provider
                    symbol = obj.symbol
                    ts = obj.ts
                    name = obj.name
                    value = obj.value
                    score = getattr(obj, "score", None)
                    metadata = getattr(obj, "metadata", None)
                elif kind == _MAPPING:
                    provider = obj["provider"]
                    symbol = obj["symbol"]
                    ts = obj["ts"]
                    name = obj["name"]
                    value = obj["value"]
                    score = obj.get("score")
                    metadata = obj.get("metadata")
                else:
                    provider = obj.provider
                    symbol = obj.symbol
                    ts = obj.ts
                    name = obj.name
                    value = obj.value
                    score = obj.score
                    metadata = obj.metadata_
            except (AttributeError, KeyError):
                raise _missing(index, obj, kind) from None

            # Fast paths test exact types; anything else goes through the careful checks.
            # Providers, symbols and names repeat: a str already checked in this call is
            # looked up (one hash probe, the hash is cached in the str) instead of checked.
            if type(provider) is not str or provider not in checked:
                provider = _text(index, "provider", provider)
                if len(checked) < _CHECKED_LIMIT:
                    checked[provider] = provider
            if type(symbol) is str and symbol in upper:
                symbol = upper[symbol]
            else:
                text = _text(index, "symbol", symbol)
                symbol = text.upper()
                if len(upper) < _CHECKED_LIMIT:
                    upper[text] = symbol
            if type(name) is not str or name not in checked:
                name = _text(index, "name", name)
                if len(checked) < _CHECKED_LIMIT:
                    checked[name] = name
            if type(ts) is not datetime or ts.tzinfo is not utc:
                ts = _timestamp(index, ts)
            if type(value) is not float or value - value != 0.0:  # inf - inf and NaN are not 0
                value = _number(index, "value", value)
            if score is not None and (type(score) is not float or score - score != 0.0):
                score = _number(index, "score", score)
            if metadata is not None and encode_metadata:
                if type(metadata) is dict:
                    try:
                        text = encode(metadata)
                        "".join(metadata)  # TypeError unless every top-level key is a str
                    except _JSON_ERRORS:
                        text = _dump(index, metadata)  # raises with the reason
                    else:
                        # Nested mappings ("{" past the first character), non-ASCII text (a lone
                        # surrogate?) or an escaped NUL: the careful checks decide.
                        if text.find("{", 1) >= 0 or not text.isascii() or "\\u0000" in text:
                            text = _dump(index, metadata)
                    metadata = text
                else:
                    metadata = _dump(index, metadata)

            if ordered:
                key = (provider, symbol, ts, name)
                if key <= last_key:
                    ordered = False
                last_key = key
            if tracking:
                if ts == last_ts:
                    group_key = (provider, symbol, name)
                    if group is None:
                        group = {first_key}
                        if low is None:  # the first rows are at datetime.min (UTC)
                            low = ts
                    if group_key in group:
                        duplicates += 1
                    else:
                        group.add(group_key)
                        if len(group) > limit:
                            tracking = False
                elif ts > last_ts:
                    if low is None:
                        low = ts
                    last_ts = ts
                    first_key = (provider, symbol, name)
                    group = None
                else:
                    tracking = False
            yield (index, provider, symbol, ts, name, value, score, metadata)
        if stats is not None:
            stats.ordered = ordered
            stats.duplicates = duplicates if tracking else None
            if tracking and low is not None:
                stats.low, stats.high = low, last_ts
    except BaseException as exc:
        if stats is not None:
            stats.error = exc
        raise
    finally:
        if stats is not None:
            stats.count = index - start + 1
