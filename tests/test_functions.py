"""Hyperfunction constructs on every tier: the same query, the same answer as Python computes.

On the TimescaleDB tier each query runs twice, in TimescaleDB's form and in the portable form, and
both must equal the reference; on PostgreSQL the portable form (``date_bin``, ordered
``array_agg``), on SQLite its integer arithmetic and sort keys.
"""

from __future__ import annotations

import random
import struct
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    DateTime,
    Double,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import CompileError
from sqlalchemy.pool import NullPool

from sa_signals import InvalidQueryError
from sa_signals.schema.functions import (
    DEFAULT_ORIGIN,
    first,
    interpolate,
    last,
    locf,
    time_bucket,
    time_bucket_gapfill,
    use_timescale,
)

from .conftest import Database

UTC = timezone.utc


def _forms(db: Database) -> list[bool | None]:
    """The forms to check: both on TimescaleDB, the portable one on PostgreSQL, SQLite's own."""
    return {"timescale": [True, False], "postgres": [False], "sqlite": [None]}[db.tier]


def _seed(db: Database, rows: list[dict[str, Any]]) -> None:
    # Multi-row VALUES in pages: the TimescaleDB test server rejects pipelined executemany.
    table = db.table
    with db.engine.begin() as conn:
        for start in range(0, len(rows), 200):
            conn.execute(insert(table).values(rows[start : start + 200]))


def _row(ts: datetime, value: float, *, name: str = "x", symbol: str = "SPY", score: Any = 0.5):
    return {
        "provider": "p",
        "symbol": symbol,
        "ts": ts,
        "name": name,
        "value": value,
        "score": score,
        "metadata": None,
    }


def _bucket(ts: datetime, width: timedelta, origin: datetime = DEFAULT_ORIGIN) -> datetime:
    return origin + ((ts - origin) // width) * width


def _instants(count: int, seed: int = 7) -> list[datetime]:
    rng = random.Random(seed)
    start = datetime(1999, 12, 20, tzinfo=UTC)  # before the origin too
    span = int(timedelta(days=9000).total_seconds())
    out = {
        start + timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000))
        for _ in range(count)
    }
    # Exactly on a boundary, and one microsecond either side of it.
    edge = datetime(2024, 3, 4, tzinfo=UTC)
    out |= {edge, edge - timedelta(microseconds=1), edge + timedelta(microseconds=1)}
    return sorted(out)


BUCKETS = [
    pytest.param({"width": timedelta(hours=1)}, id="1h"),
    pytest.param({"width": timedelta(minutes=15)}, id="15min"),
    pytest.param({"width": timedelta(days=1)}, id="1d"),
    pytest.param({"width": timedelta(days=7)}, id="7d-mondays"),
    pytest.param({"width": timedelta(seconds=1, microseconds=500)}, id="1.0005s"),
    pytest.param(
        {"width": timedelta(hours=4), "origin": datetime(2021, 5, 6, 1, 30, tzinfo=UTC)},
        id="4h-origin",
    ),
    pytest.param(
        {"width": timedelta(days=1), "origin": datetime(2021, 5, 6, 1, 30, 0, 250, tzinfo=UTC)},
        id="1d-origin-micros",
    ),
    pytest.param({"width": timedelta(hours=1), "offset": timedelta(minutes=-20)}, id="1h-offset"),
    pytest.param({"width": timedelta(days=1), "offset": timedelta(hours=9)}, id="1d-offset"),
]


@pytest.mark.parametrize("arguments", BUCKETS)
def test_time_bucket_equals_the_reference(db: Database, arguments: dict[str, Any]) -> None:
    instants = _instants(150)
    _seed(db, [_row(ts, float(i)) for i, ts in enumerate(instants)])
    width = arguments["width"]
    origin = arguments.get("origin", DEFAULT_ORIGIN) + arguments.get("offset", timedelta(0))
    expected = [(ts, _bucket(ts, width, origin)) for ts in instants]
    c = db.table.c
    for form in _forms(db):
        bucket = time_bucket(arguments["width"], c.ts, timescale=form, **_rest(arguments))
        with db.engine.connect() as conn:
            rows = conn.execute(select(c.ts, bucket).order_by(c.ts)).all()
        assert [(r[0], r[1]) for r in rows] == expected, f"form timescale={form}"


def _rest(arguments: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in arguments.items() if key != "width"}


def test_time_bucket_groups_by_bucket(db: Database) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    _seed(db, [_row(base + timedelta(minutes=7 * i, microseconds=i), float(i)) for i in range(40)])
    c = db.table.c
    expected: dict[datetime, list[float]] = defaultdict(list)
    for i in range(40):
        expected[
            _bucket(base + timedelta(minutes=7 * i, microseconds=i), timedelta(hours=1))
        ].append(float(i))
    for form in _forms(db):
        bucket = time_bucket(timedelta(hours=1), c.ts, timescale=form).label("bucket")
        statement = (
            select(bucket, func.count(), func.sum(c.value)).group_by(bucket).order_by(bucket)
        )
        with db.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(statement)]
        assert rows == [(b, len(v), sum(v)) for b, v in sorted(expected.items())]


def test_time_bucket_with_timezone_follows_local_days(pg_db: Database) -> None:
    db = pg_db
    # Around the 2024 DST change in Berlin (31 March, 02:00 -> 03:00 local).
    start = datetime(2024, 3, 29, 20, tzinfo=UTC)
    instants = [start + timedelta(minutes=37 * i) for i in range(200)]
    _seed(db, [_row(ts, 1.0) for ts in instants])
    c = db.table.c
    for form in _forms(db):
        bucket = time_bucket(timedelta(days=1), c.ts, timezone="Europe/Berlin", timescale=form)
        with db.engine.connect() as conn:
            rows = conn.execute(select(c.ts, bucket).order_by(c.ts)).all()
        for ts, day in rows:
            # Local midnight of the instant's Berlin date: UTC+1 before the switch, UTC+2 after.
            local = ts + (
                timedelta(hours=2)
                if ts >= datetime(2024, 3, 31, 1, tzinfo=UTC)
                else timedelta(hours=1)
            )
            midnight = datetime(local.year, local.month, local.day, tzinfo=UTC)
            offset = (
                timedelta(hours=2)
                if midnight >= datetime(2024, 3, 31, 12, tzinfo=UTC)
                else timedelta(hours=1)
            )
            assert day == midnight - offset, (ts, day, form)


@pytest.mark.parametrize("session_zone", ["UTC", "America/New_York"])
@pytest.mark.parametrize(
    "arguments",
    [
        {"timezone": "Europe/Berlin"},
        {"timezone": "America/New_York", "origin": datetime(2020, 1, 1, 12, tzinfo=UTC)},
        {"timezone": "Asia/Kolkata", "offset": timedelta(hours=3)},
        {"offset": timedelta(days=2, hours=1)},
        {"origin": datetime(2023, 3, 12, 6, 30, tzinfo=UTC)},
    ],
    ids=["tz", "tz-origin", "tz-offset", "offset", "origin"],
)
def test_both_postgresql_forms_agree_on_timescaledb(
    timescale_db: Database, arguments: dict[str, Any], session_zone: str
) -> None:
    db = timescale_db
    start = datetime(2023, 3, 1, tzinfo=UTC)
    instants = [start + timedelta(minutes=97 * i, microseconds=i) for i in range(400)]
    _seed(db, [_row(ts, 1.0) for ts in instants])
    c = db.table.c
    for width in (timedelta(hours=1), timedelta(days=1), timedelta(days=7)):
        native = time_bucket(width, c.ts, timescale=True, **arguments)
        portable = time_bucket(width, c.ts, timescale=False, **arguments)
        with db.engine.connect() as conn:
            conn.execute(
                text("SELECT set_config('TimeZone', :zone, false)"), {"zone": session_zone}
            )
            rows = conn.execute(select(c.ts, native, portable).order_by(c.ts)).all()
        assert len(rows) == len(instants)
        assert [r[1] for r in rows] == [r[2] for r in rows], width


def test_time_bucket_on_timestamp_without_time_zone(pg_db: Database) -> None:
    db = pg_db
    table = Table(
        "naive_events",
        db.metadata,
        Column("id", Integer, primary_key=True),
        Column("at", DateTime(timezone=False), nullable=False),
        schema=db.schema,
    )
    db.metadata.create_all(db.engine)
    instants = [datetime(2024, 1, 1, 5) + timedelta(hours=5 * i, seconds=i) for i in range(30)]
    with db.engine.begin() as conn:
        conn.execute(insert(table).values([{"id": i, "at": ts} for i, ts in enumerate(instants)]))
    naive_origin = DEFAULT_ORIGIN.replace(tzinfo=None)
    for form in _forms(db):
        bucket = time_bucket(timedelta(days=1), table.c.at, timescale=form)
        with db.engine.connect() as conn:
            rows = conn.execute(select(table.c.at, bucket).order_by(table.c.at)).all()
        assert [r[1] for r in rows] == [
            _bucket(ts, timedelta(days=1), naive_origin) for ts in instants
        ]


# ------------------------------------------------------------------------------- first / last


def _awkward_floats(count: int) -> list[float]:
    rng = random.Random(3)
    values = [0.1 + 0.2, -0.0, 1e-300, 5e-324, 1.7976931348623157e308, -123456.789e10, 1 / 3]
    while len(values) < count:
        candidate = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if candidate == candidate and abs(candidate) != float("inf"):
            values.append(candidate)
    return values


def test_first_and_last_return_the_values_at_the_extreme_times(db: Database) -> None:
    values = _awkward_floats(60)
    base = datetime(2024, 2, 1, tzinfo=UTC)
    rows = [
        _row(base + timedelta(seconds=13 * i, microseconds=i), value, symbol=f"S{i % 4}")
        for i, value in enumerate(values)
    ]
    _seed(db, rows)
    c = db.table.c
    # The reference is what the table holds (SQLite stores -0.0 as 0).
    with db.engine.connect() as conn:
        stored = conn.execute(select(c.symbol, c.ts, c.value)).all()
    expected = {}
    for symbol in sorted({r["symbol"] for r in rows}):
        series = sorted((ts, value) for s, ts, value in stored if s == symbol)
        expected[symbol] = (series[0][1], series[-1][1], series[-1][0])
    for form in _forms(db):
        statement = (
            select(
                c.symbol,
                first(c.value, c.ts, timescale=form),
                last(c.value, c.ts, timescale=form),
                last(c.ts, c.ts, timescale=form),
            )
            .group_by(c.symbol)
            .order_by(c.symbol)
        )
        with db.engine.connect() as conn:
            got = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(statement)}
        # Bit for bit: struct comparison tells -0.0 from 0.0.
        packed = {k: (struct.pack("d", a), struct.pack("d", b), t) for k, (a, b, t) in got.items()}
        want = {
            k: (struct.pack("d", a), struct.pack("d", b), t) for k, (a, b, t) in expected.items()
        }
        assert packed == want, f"form timescale={form}"


def test_last_returns_null_when_the_latest_value_is_null(db: Database) -> None:
    base = datetime(2024, 2, 1, tzinfo=UTC)
    _seed(
        db,
        [
            _row(base, 1.0, score=0.25, name="a"),
            _row(base + timedelta(seconds=1), 2.0, score=None, name="a"),
            _row(base, 1.0, score=None, name="b"),
            _row(base + timedelta(seconds=1), 2.0, score=0.75, name="b"),
        ],
    )
    c = db.table.c
    for form in _forms(db):
        statement = (
            select(
                c.name,
                first(c.score, c.ts, timescale=form),
                last(c.score, c.ts, timescale=form),
                last(c.name, c.ts, timescale=form),
            )
            .group_by(c.name)
            .order_by(c.name)
        )
        with db.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(statement)]
        assert rows == [("a", 0.25, None, "a"), ("b", None, 0.75, "b")], f"form={form}"


def test_first_and_last_ignore_rows_without_time(db: Database) -> None:
    table = Table(
        "events",
        db.metadata,
        Column("id", Integer, primary_key=True),
        Column("at", DateTime(timezone=True), nullable=True),
        Column("seq", Integer, nullable=True),
        Column("label", Text),
        Column("reading", Double),
        schema=db.schema,
    )
    db.metadata.create_all(db.engine)
    base = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [
        {"id": 1, "at": None, "seq": None, "label": "none-early", "reading": -1.0},
        {"id": 2, "at": base, "seq": -5, "label": "first", "reading": 1.5},
        {"id": 3, "at": base + timedelta(hours=1), "seq": 40, "label": "last", "reading": 2.5},
        {"id": 4, "at": None, "seq": None, "label": "none-late", "reading": 9.0},
    ]
    with db.engine.begin() as conn:
        conn.execute(insert(table).values(rows))
    c = table.c
    for form in _forms(db):
        statement = select(
            first(c.label, c.at, timescale=form),
            last(c.label, c.at, timescale=form),
            first(c.reading, c.seq, timescale=form),
            last(c.id, c.seq, timescale=form),
        )
        with db.engine.connect() as conn:
            assert tuple(conn.execute(statement).one()) == ("first", "last", 1.5, 3), form


# ------------------------------------------------------------------------- TimescaleDB only


def test_gapfill_with_locf_and_interpolate(timescale_db: Database) -> None:
    db = timescale_db
    base = datetime(2024, 1, 1, tzinfo=UTC)
    # Hours 0, 1 and 4 have data; 2 and 3 are gaps.
    _seed(
        db,
        [_row(base + timedelta(hours=h, minutes=5), float(v)) for h, v in [(0, 1), (1, 3), (4, 9)]],
    )
    c = db.table.c
    bucket = time_bucket_gapfill(timedelta(hours=1), c.ts, base, base + timedelta(hours=5)).label(
        "bucket"
    )
    average = func.avg(c.value)
    statement = (
        select(bucket, average, locf(average), interpolate(average))
        .where(c.ts >= base, c.ts < base + timedelta(hours=5))
        .group_by(bucket)
        .order_by(bucket)
    )
    with db.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(statement)]
    hours = [base + timedelta(hours=h) for h in range(5)]
    assert rows == [
        (hours[0], 1.0, 1.0, 1.0),
        (hours[1], 3.0, 3.0, 3.0),
        (hours[2], None, 3.0, 5.0),
        (hours[3], None, 3.0, 7.0),
        (hours[4], 9.0, 9.0, 9.0),
    ]


def test_gapfill_family_needs_timescaledb(postgres_db: Database) -> None:
    db = postgres_db
    c = db.table.c
    assert use_timescale(db.engine) is False  # asked the database: no timescaledb there
    for expression in (
        time_bucket_gapfill(timedelta(hours=1), c.ts),
        locf(func.avg(c.value)),
        interpolate(func.avg(c.value)),
    ):
        with db.engine.connect() as conn, pytest.raises(CompileError, match="TimescaleDB"):
            conn.execute(select(expression))
        with pytest.raises(CompileError, match="TimescaleDB"):
            select(expression).compile(dialect=sqlite.dialect())


def test_use_timescale_decides_the_postgresql_form(pg_db: Database) -> None:
    db = pg_db
    db.table  # noqa: B018 - create it
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    c = db.table.c
    query = select(time_bucket(timedelta(hours=1), c.ts), last(c.value, c.ts)).group_by(c.ts)
    detected = use_timescale(db.engine)
    assert detected is (db.tier == "timescale")
    with db.engine.connect() as conn:
        conn.execute(query).all()
    assert ("time_bucket(" in statements[-1]) is detected
    assert ("date_bin(" in statements[-1]) is not detected
    # Told explicitly, and the engine's cache does not keep the other form.
    use_timescale(db.engine, False)
    with db.engine.connect() as conn:
        conn.execute(query).all()
    assert "date_bin(" in statements[-1] and "array_agg(" in statements[-1]


def test_postgresql_default_is_the_timescaledb_form() -> None:
    table = Table("t", MetaData(), Column("ts", DateTime(timezone=True)), Column("v", Double))
    query = select(time_bucket(timedelta(hours=1), table.c.ts), first(table.c.v, table.c.ts))
    sql = str(query.compile(dialect=postgresql.dialect()))
    assert "time_bucket(" in sql and "first(t.v, t.ts)" in sql
    portable = select(time_bucket(timedelta(hours=1), table.c.ts, timescale=False))
    assert "date_bin(" in str(portable.compile(dialect=postgresql.dialect()))
    # Printing a statement (the default dialect) shows TimescaleDB's spelling.
    assert "time_bucket(" in str(query) and "first(t.v, t.ts)" in str(query)


def test_cached_statements_take_new_constants(db: Database) -> None:
    base = datetime(2024, 1, 1, 10, 40, tzinfo=UTC)
    _seed(db, [_row(base, 1.0)])
    c = db.table.c
    with db.engine.connect() as conn:
        for form in _forms(db):
            for minutes in (1, 7, 30, 60, 7):
                width = timedelta(minutes=minutes)
                got = conn.execute(select(time_bucket(width, c.ts, timescale=form))).scalar_one()
                assert got == _bucket(base, width)


# --------------------------------------------------------------------- before PostgreSQL 14


@pytest.fixture
def legacy_engine(postgres_db: Database) -> Iterator[Engine]:
    """The same server, compiled for as if it were PostgreSQL 13 (no date_bin)."""
    engine = create_engine(postgres_db.url, poolclass=NullPool)

    @event.listens_for(engine, "engine_connect")
    def pretend(connection: Any) -> None:
        # After the dialect has read the real version on the first connection.
        engine.dialect.server_version_info = (13, 9)

    yield engine
    engine.dispose()


@pytest.mark.parametrize("arguments", BUCKETS)
def test_time_bucket_before_postgresql_14_equals_the_reference(
    postgres_db: Database, legacy_engine: Engine, arguments: dict[str, Any]
) -> None:
    instants = _instants(60, seed=11)
    _seed(postgres_db, [_row(ts, 1.0) for ts in instants])
    c = postgres_db.table.c
    width = arguments["width"]
    origin = arguments.get("origin", DEFAULT_ORIGIN) + arguments.get("offset", timedelta(0))
    statements: list[str] = []
    event.listen(legacy_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    use_timescale(legacy_engine, False)
    with legacy_engine.connect() as conn:
        rows = conn.execute(
            select(c.ts, time_bucket(width, c.ts, **_rest(arguments))).order_by(c.ts)
        ).all()
    assert "date_bin" not in statements[-1]
    assert [r[1] for r in rows] == [_bucket(ts, width, origin) for ts in instants]


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"width": timedelta(0)}, "positive"),
        ({"width": 3600}, "timedelta"),
        ({"width": timedelta(hours=1), "origin": datetime(2024, 1, 1)}, "timezone-aware"),
        (
            {
                "width": timedelta(hours=1),
                "origin": datetime(2024, 1, 1, tzinfo=UTC),
                "offset": timedelta(minutes=1),
            },
            "not both",
        ),
        ({"width": timedelta(hours=1), "timezone": ""}, "time zone name"),
        ({"width": timedelta(hours=1), "timescale": "yes"}, "timescale"),
    ],
)
def test_invalid_arguments_are_rejected(arguments: dict[str, Any], message: str) -> None:
    table = Table("t", MetaData(), Column("ts", DateTime(timezone=True)))
    width = arguments.pop("width")
    with pytest.raises(InvalidQueryError, match=message):
        time_bucket(width, table.c.ts, **arguments)


def test_time_argument_must_be_a_timestamp() -> None:
    table = Table("t", MetaData(), Column("n", Integer), Column("s", Text))
    with pytest.raises(InvalidQueryError, match="date/time"):
        time_bucket(timedelta(hours=1), table.c.n)
    with pytest.raises(CompileError, match="date/time or integer"):
        select(last(table.c.n, table.c.s)).compile(dialect=sqlite.dialect())


def test_timezone_has_no_sqlite_form(sqlite_db: Database) -> None:
    c = sqlite_db.table.c
    with sqlite_db.engine.connect() as conn, pytest.raises(CompileError, match="time zone"):
        conn.execute(select(time_bucket(timedelta(days=1), c.ts, timezone="Europe/Berlin")))


def test_literal_rendering_runs_as_plain_sql(pg_db: Database) -> None:
    db = pg_db
    base = datetime(2024, 1, 1, 10, 40, 5, tzinfo=UTC)
    _seed(db, [_row(base, 1.0)])
    c = db.table.c
    for form in _forms(db):
        query = select(
            time_bucket(
                timedelta(minutes=45),
                c.ts,
                timezone="UTC",
                offset=timedelta(minutes=5),
                timescale=form,
            ),
            literal("it's"),
        )
        sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        assert "%(" not in sql
        with db.engine.connect() as conn:
            got = conn.exec_driver_sql(sql).one()
        assert got == (
            _bucket(base, timedelta(minutes=45), DEFAULT_ORIGIN + timedelta(minutes=5)),
            "it's",
        )
