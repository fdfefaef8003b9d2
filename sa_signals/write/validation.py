"""Normalise and validate incoming signals, once per signal, before any SQL for it is sent.

Accepted inputs: objects with the attributes ``provider, symbol, ts, name, value`` and optionally
``score`` and ``metadata`` (``SimpleNamespace``, dataclasses, ...), mappings with those keys, and
instances of :class:`~sa_signals.SignalMixin` models (whose JSON attribute is ``metadata_``).

Each valid signal becomes a :data:`Row`, ``(index, provider, SYMBOL, ts, name, value, score,
metadata_json)``: the index in the caller's iterable (it decides which duplicate wins), the symbol
upper-cased, numbers as ``float`` and the metadata already serialised to strict JSON text, so the
write paths never serialise twice.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from numbers import Real
from typing import Any, Final

from ..errors import InvalidSignalError
from ..schema.model import SignalMixin

__all__ = ["Row", "dump_metadata", "validate_signal", "validate_signals"]

#: ``(index, provider, symbol, ts, name, value, score, metadata_json)``
Row = tuple[int, str, str, datetime, str, float, "float | None", "str | None"]

_REQUIRED: Final = ("provider", "symbol", "ts", "name", "value")
_ATTRS: Final = 0
_MAPPING: Final = 1
_MODEL: Final = 2
# type -> how to read it; filled lazily so the per-row cost is one dict lookup.
_KINDS: dict[type, int] = {}


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


def dump_metadata(index: int, metadata: object) -> str | None:
    """``metadata`` as strict JSON text (``None`` stays ``None``); raise on anything else."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidSignalError(
            index, "metadata", f"must be a mapping or None, got {type(metadata).__name__}"
        )
    try:
        text = _encode(metadata if type(metadata) is dict else dict(metadata))
    except _JSON_ERRORS as exc:
        raise InvalidSignalError(index, "metadata", f"is not strict JSON: {exc}") from None
    if "\\u0000" in text:
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
    return str(value)


def _timestamp(index: int, ts: object) -> datetime:
    if not isinstance(ts, datetime):
        raise InvalidSignalError(
            index, "ts", f"must be a timezone-aware datetime, got {type(ts).__name__}"
        )
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidSignalError(
            index,
            "ts",
            f"naive datetime {ts.isoformat()!r}: give it a timezone, "
            "e.g. ts.replace(tzinfo=timezone.utc) or datetime.now(timezone.utc)",
        )
    return ts


def _number(index: int, field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, Decimal)):
        raise InvalidSignalError(
            index, field, f"must be a finite real number, got {type(value).__name__} {value!r}"
        )
    number = float(value)
    if not math.isfinite(number):
        raise InvalidSignalError(index, field, f"must be finite, got {value!r}")
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


def validate_signals(signals: Iterable[Any], start: int = 0) -> Iterator[Row]:
    """Yield a :data:`Row` per signal; raise :class:`InvalidSignalError` at the first bad one.

    The checks run lazily, one signal at a time, so a generator is never held in memory.
    """
    kinds = _KINDS
    encode = _encode
    index = start - 1
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
        if type(provider) is not str or not provider or "\x00" in provider:
            provider = _text(index, "provider", provider)
        if type(symbol) is not str or not symbol or "\x00" in symbol:
            symbol = _text(index, "symbol", symbol)
        symbol = symbol.upper()
        if type(name) is not str or not name or "\x00" in name:
            name = _text(index, "name", name)
        if type(ts) is not datetime or ts.tzinfo is None:
            ts = _timestamp(index, ts)
        if type(value) is not float or value - value != 0.0:  # inf - inf and NaN are not 0
            value = _number(index, "value", value)
        if score is not None and (type(score) is not float or score - score != 0.0):
            score = _number(index, "score", score)
        if metadata is not None:
            if type(metadata) is dict:
                try:
                    metadata = encode(metadata)
                except _JSON_ERRORS:
                    metadata = dump_metadata(index, metadata)  # raises with the reason
                else:
                    if "\\u0000" in metadata:
                        raise InvalidSignalError(
                            index, "metadata", "contains a NUL character (\\u0000)"
                        )
            else:
                metadata = dump_metadata(index, metadata)
        yield (index, provider, symbol, ts, name, value, score, metadata)
