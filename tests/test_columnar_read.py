"""DataFrames out (docs/columnar.md): ``format="arrow" | "polars" | "pandas"`` on the four
frame-capable queries returns the dict form's rows, in its order, with UTC timestamps and the
metadata as JSON text; the query clients on PostgreSQL read through ADBC, repositories through
the session (so they see its uncommitted work), on every tier.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pl = pytest.importorskip("polars")
pd = pytest.importorskip("pandas")

from sqlalchemy.orm import Session  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from sa_signals import (  # noqa: E402
    AsyncSignalsQueryClient,
    InvalidQueryError,
    QueryError,
    SignalQueryRepository,
    SignalRepository,
    SignalsQueryClient,
)

from .conftest import Database  # noqa: E402
from .test_write_helpers import NO_COPY, signal, sync_client  # noqa: E402

UTC = timezone.utc
NOW = datetime.now(UTC).replace(microsecond=123456)
START = NOW - timedelta(hours=2)


def _pool(db: Database) -> dict[str, Any]:
    return {"poolclass": NullPool} if db.tier == "timescale" else {}


def seed(db: Database) -> list[Any]:
    names = ["alpha", "beta", "gamma"]
    docs: list[Any] = [None, {"a": 1, "nested": {"x": [1, 2, "é"]}}, {"price": 425.15}]
    batch = [
        signal(
            i,
            ts=NOW - timedelta(seconds=7 * i, microseconds=i),
            name=names[i % 3],
            symbol="spy" if i % 4 else "qqq",
            value=i * 0.5 - 3,
            metadata=docs[i % 3],
        )
        for i in range(60)
    ]
    with sync_client(db, batch_threshold=20) as client:
        client.upsert(batch)
    return batch


def same(table: Any, dicts: list[dict[str, Any]]) -> None:
    """``table`` (pyarrow) holds exactly ``dicts``, metadata compared as JSON."""
    rows = table.to_pylist()
    assert len(rows) == len(dicts)
    for row, expected in zip(rows, dicts, strict=True):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            got = row[key]
            if key == "metadata":
                assert (None if got is None else json.loads(got)) == value
            elif isinstance(value, datetime):
                assert got == value and got.utcoffset() == timedelta(0)
            else:
                assert got == value


QUERIES = {
    "history": lambda q, **kw: q.get_signals_history("ibkr_primary", "SPY", START, limit=500, **kw),
    "history names": lambda q, **kw: q.get_signals_history(
        "ibkr_primary", "spy", START, NOW, ["alpha", "gamma"], 20, **kw
    ),
    "latest": lambda q, **kw: q.get_latest_signals("ibkr_primary", "QQQ", 7, **kw),
    "active": lambda q, **kw: q.get_active_signals("ibkr_primary", 600, **kw),
    "buckets": lambda q, **kw: q.get_signal_buckets(
        "ibkr_primary", "SPY", "beta", timedelta(seconds=30), start_ts=START, **kw
    ),
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_the_client_returns_the_dict_form_as_an_arrow_table(db: Database, query: str) -> None:
    seed(db)
    run = QUERIES[query]
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        dicts = run(client)
        table = run(client, format="arrow")
    assert isinstance(table, pa.Table)
    assert len(dicts) > 0
    same(table, dicts)


@pytest.mark.parametrize("query", list(QUERIES))
def test_a_repository_returns_the_dict_form_as_an_arrow_table(db: Database, query: str) -> None:
    seed(db)
    run = QUERIES[query]
    with Session(db.engine) as session:
        repo = SignalQueryRepository(session, db.table)
        same(run(repo, format="arrow"), run(repo))


@pytest.mark.parametrize("query", list(QUERIES))
async def test_the_async_client_returns_the_same_table(db: Database, query: str) -> None:
    seed(db)
    run = QUERIES[query]
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        expected = run(client, format="arrow")
    async with AsyncSignalsQueryClient(db.async_url, table=db.table, **_pool(db)) as aclient:
        dicts = await run(aclient)
        table = await run(aclient, format="arrow")
    same(table, dicts)
    assert table.equals(expected)


def test_polars_and_pandas_keep_utc_and_the_columns(db: Database) -> None:
    seed(db)
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        table = client.get_signals_history("ibkr_primary", "SPY", START, format="arrow")
        frame = client.get_signals_history("ibkr_primary", "SPY", START, format="polars")
        df = client.get_signals_history("ibkr_primary", "SPY", START, format="pandas")
    assert isinstance(frame, pl.DataFrame) and isinstance(df, pd.DataFrame)
    assert frame.columns == list(df.columns) == table.column_names
    assert frame.schema["ts"] == pl.Datetime("us", "UTC")
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    assert frame.to_arrow().cast(table.schema).equals(table)
    assert df["value"].tolist() == table.column("value").to_pylist()


def test_the_schema_is_fixed_even_when_nothing_matches(db: Database) -> None:
    seed(db)
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        none = client.get_signals_history(
            "ibkr_primary", "SPY", START, signal_names=[], format="arrow"
        )
        missing = client.get_latest_signals("nobody", "SPY", format="arrow")
        some = client.get_latest_signals("ibkr_primary", "SPY", format="arrow")
    assert none.num_rows == missing.num_rows == 0
    assert none.schema == missing.schema == some.schema
    assert some.schema.field("ts").type == pa.timestamp("us", "UTC")
    assert some.schema.field("metadata").type == pa.string()


def test_a_repository_frame_sees_the_session_uncommitted_rows(db: Database) -> None:
    batch = [signal(i, ts=NOW - timedelta(seconds=i)) for i in range(30)]
    with Session(db.engine) as session:
        repo = SignalRepository(session, db.table, batch_threshold=NO_COPY if db.pglite else 10)
        repo.upsert(batch)
        table = repo.get_signals_history("ibkr_primary", "SPY", START, format="arrow")
        assert table.num_rows == 30
        session.rollback()
        assert repo.get_signals_history("ibkr_primary", "SPY", START, format="arrow").num_rows == 0


def test_a_bad_format_is_refused_before_any_sql(db: Database) -> None:
    with SignalsQueryClient(db.url, table=db.make_table("never_created"), **_pool(db)) as client:
        with pytest.raises(InvalidQueryError, match="format must be one of"):
            client.get_signals_history("p", "S", START, format="numpy")  # type: ignore[call-overload]
        with pytest.raises(InvalidQueryError):
            client.get_signal_buckets("p", "S", "n", format="dict")  # type: ignore[call-overload]


def test_a_failed_frame_query_raises_query_error(db: Database) -> None:
    with SignalsQueryClient(db.url, table=db.make_table("never_created"), **_pool(db)) as client:
        with pytest.raises(QueryError) as error:
            client.get_signals_history("p", "S", START, format="arrow")
    assert error.value.__cause__ is not None


async def test_the_async_client_reads_arrow_with_a_url_that_names_ssl(
    postgres_db: Database,
) -> None:
    # The ADBC reader is handed a libpq URI: asyncpg's ``ssl=`` becomes libpq's ``sslmode=``
    # and parameters libpq does not know are left out (it refuses them).
    seed(postgres_db)
    asyncpg_only = {"ssl": "disable", "prepared_statement_cache_size": "100"}
    # libpq keywords in the query are kept (a socket directory in host=, as embedded servers
    # and Unix-socket deployments give it).
    url = postgres_db.async_url
    libpq_host = (
        {"host": str(url.query["host"])}  # already a socket directory (embedded server)
        if "host" in url.query
        else {"host": url.host or "", "port": str(url.port or 5432)}
    )
    for query in ({"ssl": "disable"}, {"sslmode": "disable"}, asyncpg_only, libpq_host):
        url = postgres_db.async_url.update_query_dict(query)
        async with AsyncSignalsQueryClient(url, table=postgres_db.table) as client:
            dicts = await client.get_signals_history("ibkr_primary", "SPY", START)
            table = await client.get_signals_history("ibkr_primary", "SPY", START, format="arrow")
        assert table.num_rows == len(dicts) > 0


@pytest.mark.parametrize(
    "symbol", ["o'brien", "back\\slash", "per%cent", "%(symbol)s", "$1", "é✓", "a'; --"]
)
def test_client_frames_read_awkward_texts_as_the_dict_form_does(db: Database, symbol: str) -> None:
    """The query clients hand ADBC a query without parameters (for its COPY path), its values
    bound to transaction-local settings: quotes, backslashes, percent signs and placeholders in
    a value stay data."""
    names = ["x'y", "back\\", "%s"]
    batch = [
        signal(i, ts=NOW - timedelta(seconds=i), symbol=symbol, name=names[i % 3]) for i in range(9)
    ]
    with sync_client(db, batch_threshold=20) as client:
        client.upsert(batch)
    with SignalsQueryClient(db.url, table=db.table, **_pool(db)) as client:
        for run in (
            lambda **kw: client.get_signals_history("ibkr_primary", symbol, START, **kw),
            lambda **kw: client.get_signals_history(
                "ibkr_primary", symbol, START, None, ["x'y", "%s"], **kw
            ),
            lambda **kw: client.get_signals_history("ibkr_primary", symbol, START, None, [], **kw),
            lambda **kw: client.get_latest_signals("ibkr_primary", symbol, 5, **kw),
        ):
            dicts = run()
            same(run(format="arrow"), dicts)
        assert len(client.get_signals_history("ibkr_primary", symbol, START, format="arrow")) == 9


def test_frame_reads_bind_values_and_write_none_into_the_sql() -> None:
    """What the Arrow read sends: the values go as parameters of ``set_config``; the query
    only names the settings (values never formatted into SQL)."""
    from sqlalchemy import MetaData
    from sqlalchemy.dialects import postgresql

    from sa_signals import signals_table
    from sa_signals.read.frames import _through_settings
    from sa_signals.read.queries import plan_history

    table = signals_table(MetaData(), "signals")
    end = START + timedelta(hours=1)
    plan = plan_history(table, postgresql.dialect(), "p'x", "a%(b)s", START, end, ["n'1", "$1"], 10)
    assert plan.statement is not None
    settings = _through_settings(plan.statement, plan.parameters)
    assert settings is not None
    configure, sql, values = settings
    assert sorted(values) == sorted(
        ["p'x", "A%(B)S", START.isoformat(), end.isoformat(), '["n\'1", "$1"]', "10"]
    )
    assert configure.count("$") == len(values)
    for value in ("p'x", "A%(B)S", "n'1", START.isoformat(), end.isoformat()):
        assert value not in sql
    assert "current_setting('sa_signals.read_0')" in sql
