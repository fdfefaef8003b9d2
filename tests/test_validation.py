"""Normalisation and validation of incoming signals (pure; the database side is in test_write_*)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest

from sa_signals import InvalidSignalError, Signal
from sa_signals.write.validation import RowStats, validate_signal, validate_signals

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


class _UnknownOffset(tzinfo):
    """A tzinfo that does not know its offset: the datetime is naive (``utcoffset()`` None)."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


EDGE_BAD = [
    # UTC value outside the datetimes anyone can read back (years 1 to 9999).
    ("ts", datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))), "outside the range"),
    ("ts", datetime(1, 1, 1, 2, tzinfo=timezone(timedelta(hours=5))), "outside the range"),
    ("ts", datetime(2024, 5, 1, tzinfo=_UnknownOffset()), "naive"),
    ("value", 10**400, "finite"),
    ("value", Decimal("sNaN"), "finite"),
    ("value", Decimal("1e400"), "finite"),
    ("score", -(10**400), "finite"),
    ("provider", "a\ud800", "Unicode"),
    ("symbol", "\udfff", "Unicode"),
    ("name", "x\ud83dy", "Unicode"),
    ("metadata", {"k": "a\ud800"}, "Unicode"),
    ("metadata", {"k\udc00": 1}, "Unicode"),
    ("metadata", {"deep": [{"k": "\ud800"}]}, "Unicode"),
    ("metadata", {1: "x", "1": "y"}, "keys must be strings"),
    ("metadata", {"nested": {2: "x"}}, "keys must be strings"),
    ("metadata", {"list": [{None: 1}]}, "keys must be strings"),
    ("metadata", OrderedDict([(1.5, "x")]), "keys must be strings"),
    ("metadata", {"k\x00": 1}, "NUL"),
    ("metadata", {"deep": ["a\x00"]}, "NUL"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"), EDGE_BAD, ids=[f"{f}-{v!r:.40}" for f, v, _ in EDGE_BAD]
)
def test_edge_values_are_invalid_signals(field: str, value: Any, message: str) -> None:
    items = [good(), good(), good(**{field: value})]
    with pytest.raises(InvalidSignalError) as info:
        list(validate_signals(items))
    assert (info.value.index, info.value.field) == (2, field)
    assert message in str(info.value)


def test_escaped_backslash_u0000_is_text_not_a_nul() -> None:
    metadata = {"path": "C:\\u0000dir", "windows\\u0000": ["\\\\u0000"]}
    text = validate_signal(0, good(metadata=metadata))[7]
    assert text is not None and json.loads(text) == metadata


def test_timestamps_become_the_same_utc_instant_whatever_the_offset() -> None:
    odd = [
        timezone(timedelta(microseconds=1)),
        timezone(timedelta(seconds=-30)),
        timezone(timedelta(hours=5, minutes=30, seconds=15, microseconds=7)),
    ]
    for tz in odd:
        local = TS.astimezone(tz)
        ts = validate_signal(0, good(ts=local))[3]
        assert ts == TS and ts.tzinfo is timezone.utc and type(ts) is datetime
    edge = datetime(9999, 12, 31, 23, 59, tzinfo=timezone.utc)
    assert validate_signal(0, good(ts=edge))[3] == edge


def test_row_stats_see_order_and_duplicates() -> None:
    def stats_of(items: list[dict[str, Any]], limit: int = 100) -> RowStats:
        stats = RowStats(limit)
        list(validate_signals(items, stats=stats))
        return stats

    ts = [TS + timedelta(seconds=i) for i in range(3)]
    ordered = [good(ts=t, name=n) for t in ts for n in ("a", "b")]
    stats = stats_of(ordered)
    assert (stats.ordered, stats.duplicates, stats.count) == (True, 0, 6)
    # Same instants, names out of order: unique but not ordered.
    stats = stats_of([good(ts=t, name=n) for t in ts for n in ("b", "a")])
    assert (stats.ordered, stats.duplicates) == (False, 0)
    # A key repeated inside one instant is counted.
    stats = stats_of([*ordered, good(ts=ts[2], name="a")])
    assert (stats.ordered, stats.duplicates) == (False, 1)
    # Time going back: duplicates cannot be counted in bounded memory.
    stats = stats_of([*ordered, good(ts=ts[0], name="a")])
    assert (stats.ordered, stats.duplicates) == (False, None)
    # More keys at one instant than the limit: unknown as well.
    stats = stats_of([good(ts=TS, name=str(i)) for i in range(5)], limit=3)
    assert stats.duplicates is None


def test_row_stats_count_what_was_read_when_validation_fails() -> None:
    stats = RowStats(100)
    items = [good(), good(value="x"), good()]
    with pytest.raises(InvalidSignalError) as info:
        list(validate_signals(items, stats=stats))
    assert stats.count == 2 and stats.error is info.value


def test_texts_checked_once_per_call_are_still_checked_per_field() -> None:
    # A value seen valid earlier in the call (in any field) does not let a bad one through,
    # and every symbol is upper-cased, a str subclass included.
    class Text(str):
        pass

    base = {"provider": "p", "ts": TS, "name": "n", "value": 1.0}
    signals = [
        {**base, "symbol": "spy"},
        {**base, "symbol": Text("spy"), "provider": "spy"},
        {**base, "symbol": "spy", "name": "spy"},
        {**base, "symbol": "qqq\x00"},
    ]
    with pytest.raises(InvalidSignalError) as caught:
        list(validate_signals(signals))
    assert (caught.value.index, caught.value.field) == (3, "symbol")
    rows = list(validate_signals(signals[:3]))
    assert [row[1:3] for row in rows] == [("p", "SPY"), ("spy", "SPY"), ("p", "SPY")]
    assert [type(row[2]) for row in rows] == [str, str, str]
    assert rows[2][4] == "spy"


def test_row_stats_time_bounds_only_when_timestamps_never_go_back() -> None:
    first = datetime.min.replace(tzinfo=timezone.utc)
    rising = [good(ts=first), good(ts=first, name="b"), good(ts=TS), good(ts=TS, name="b")]
    stats = RowStats(10)
    list(validate_signals(rising, stats=stats))
    assert (stats.low, stats.high) == (first, TS)
    stats = RowStats(10)
    list(validate_signals([good(ts=TS), good(ts=TS - timedelta(seconds=1))], stats=stats))
    assert (stats.low, stats.high) == (None, None)
