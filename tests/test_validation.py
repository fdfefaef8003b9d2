"""Normalisation and validation of incoming signals (pure; the database side is in test_write_*)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

from sa_signals import InvalidSignalError, Signal
from sa_signals.write.validation import validate_signal, validate_signals

TS = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)


def good(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "provider": "ibkr_primary",
        "symbol": "spy",
        "ts": TS,
        "name": "vwap_cross_up",
        "value": 1.0,
        "score": 0.85,
        "metadata": {"window": "1m", "price": 425.15},
    }
    fields.update(changes)
    return fields


@dataclass
class DataclassSignal:
    provider: str
    symbol: str
    ts: datetime
    name: str
    value: float
    score: float | None = None
    metadata: dict[str, Any] | None = None


def test_row_shape_and_normalisation() -> None:
    row = validate_signal(7, SimpleNamespace(**good()))
    assert row == (
        7,
        "ibkr_primary",
        "SPY",
        TS,
        "vwap_cross_up",
        1.0,
        0.85,
        '{"window":"1m","price":425.15}',
    )


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda f: SimpleNamespace(**f), id="namespace"),
        pytest.param(lambda f: f, id="dict"),
        pytest.param(lambda f: MappingProxyType(f), id="mapping"),
        pytest.param(lambda f: DataclassSignal(**f), id="dataclass"),
        pytest.param(
            lambda f: Signal(**{("metadata_" if k == "metadata" else k): v for k, v in f.items()}),
            id="model",
        ),
    ],
)
def test_accepted_input_kinds(make: Any) -> None:
    row = validate_signal(0, make(good()))
    assert row[1:7] == ("ibkr_primary", "SPY", TS, "vwap_cross_up", 1.0, 0.85)
    assert json.loads(row[7] or "null") == {"window": "1m", "price": 425.15}


def test_score_and_metadata_may_be_missing_or_none() -> None:
    bare = SimpleNamespace(provider="p", symbol="S", ts=TS, name="n", value=2)
    assert validate_signal(0, bare)[5:] == (2.0, None, None)
    assert validate_signal(0, {"provider": "p", "symbol": "S", "ts": TS, "name": "n", "value": 2})[
        5:
    ] == (2.0, None, None)
    assert validate_signal(0, good(score=None, metadata=None))[6:] == (None, None)


def test_numbers_other_than_float_become_float() -> None:
    assert validate_signal(0, good(value=3, score=Decimal("0.5")))[5:7] == (3.0, 0.5)
    assert type(validate_signal(0, good(value=3))[5]) is float


def test_ordered_mapping_metadata_is_serialised() -> None:
    row = validate_signal(0, good(metadata=OrderedDict([("b", 1), ("a", [1, None, "x"])])))
    assert row[7] == '{"b":1,"a":[1,null,"x"]}'


def test_non_utc_offsets_are_kept_as_instants() -> None:
    ts = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))
    assert validate_signal(0, good(ts=ts))[3] == TS


BAD = [
    ("provider", "", "non-empty"),
    ("provider", None, "must be a string"),
    ("provider", 5, "must be a string"),
    ("symbol", "", "non-empty"),
    ("symbol", b"SPY", "must be a string"),
    ("name", "", "non-empty"),
    ("name", "a\x00b", "NUL"),
    ("ts", datetime(2024, 5, 1, 12, 30), "timezone"),
    ("ts", "2024-05-01T12:30:00Z", "datetime"),
    ("ts", None, "datetime"),
    ("value", None, "real number"),
    ("value", "1.0", "real number"),
    ("value", True, "real number"),
    ("value", math.nan, "finite"),
    ("value", math.inf, "finite"),
    ("value", -math.inf, "finite"),
    ("score", False, "real number"),
    ("score", math.nan, "finite"),
    ("score", "0.5", "real number"),
    ("metadata", [1, 2], "mapping"),
    ("metadata", "{}", "mapping"),
    ("metadata", {"x": math.nan}, "strict JSON"),
    ("metadata", {"x": {1, 2}}, "strict JSON"),
    ("metadata", {"x": TS}, "strict JSON"),
    ("metadata", {"x": "a\x00b"}, "NUL"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}-{v!r}" for f, v, _ in BAD])
def test_bad_field_names_index_and_field(field: str, value: Any, message: str) -> None:
    items = [SimpleNamespace(**good()), SimpleNamespace(**good()), SimpleNamespace(**good())]
    setattr(items[2], field, value)
    with pytest.raises(InvalidSignalError) as info:
        list(validate_signals(items))
    assert info.value.index == 2
    assert info.value.field == field
    assert message in str(info.value)
    assert str(info.value).startswith(f"signal[2].{field}: ")


def test_naive_timestamp_error_gives_a_hint() -> None:
    with pytest.raises(InvalidSignalError, match=r"tzinfo=timezone\.utc"):
        validate_signal(0, good(ts=datetime(2024, 1, 1)))


@pytest.mark.parametrize("field", ["provider", "symbol", "ts", "name", "value"])
def test_missing_required_field(field: str) -> None:
    fields = good()
    del fields[field]
    for item in (fields, SimpleNamespace(**fields)):
        with pytest.raises(InvalidSignalError) as info:
            validate_signal(4, item)
        assert (info.value.index, info.value.field) == (4, field)
        assert "missing" in str(info.value)


def test_validation_is_lazy_over_generators() -> None:
    produced = 0

    def source() -> Any:
        nonlocal produced
        for _ in range(10):
            produced += 1
            yield good()

    rows = validate_signals(source())
    next(rows)
    assert produced == 1


def test_cyclic_metadata_is_an_error() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidSignalError, match=r"signal\[0\]\.metadata: is not strict JSON"):
        validate_signal(0, good(metadata=cyclic))


def test_metadata_keys_and_unicode_serialise_like_json_dumps() -> None:
    metadata = {"a": 'é\n"', "n": [1, 2.5, None, True], "nested": {"k": -0.0}}
    text = validate_signal(0, good(metadata=metadata))[7]
    assert text is not None
    assert json.loads(text) == metadata
    assert text == json.dumps(metadata, separators=(",", ":"), ensure_ascii=False)
