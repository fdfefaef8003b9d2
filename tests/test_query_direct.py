"""The query clients' direct driver path behaves like ``Connection.execute`` (postgres tier).

:class:`sa_signals.read.direct.DirectRunner` runs a plan on the pooled driver connection when
nothing would see the difference; these tests pin when it does (every spec query, names bound
as one array included) and when it steps aside (any execution listener, SQL logging, execution
options), and that the answers are the same either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, column, create_engine, event, insert, text
from sqlalchemy.util import greenlet_spawn

from sa_signals import AsyncSignalsQueryClient, QueryError, SignalsQueryClient, signals_table
from sa_signals.read.direct import CONNECTION_EVENTS, DIALECT_EVENTS, DirectRunner, _numbered
from sa_signals.read.queries import (
    QueryPlan,
    plan_active,
    plan_buckets,
    plan_history,
    plan_latest,
    plan_metrics,
    plan_summary,
)

from .conftest import Database

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _seed(db: Database, count: int = 3) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            insert(db.table),
            [
                {
                    "provider": "p",
                    "symbol": "SPY",
                    "ts": NOW - timedelta(seconds=i),
                    "name": "n",
                    "value": float(i),
                    "metadata": {"i": i},
                }
                for i in range(count)
            ],
        )


def _plans(db: Database, engine: Engine) -> dict[str, QueryPlan[Any]]:
    table, dialect = db.table, engine.dialect
    start = NOW - timedelta(hours=1)
    return {
        "latest": plan_latest(table, dialect, "p", "SPY", 10),
        "latest_names": plan_latest(table, dialect, "p", "SPY", 10, ["n", "m"]),
        "history": plan_history(table, dialect, "p", "SPY", start, None, ["n"]),
        "metrics": plan_metrics(table, dialect, "p", "SPY", "n"),
        "active": plan_active(table, dialect, "p"),
        "summary": plan_summary(table, dialect, "p"),
        "buckets": plan_buckets(table, "date_bin", "p", "SPY", "n", timedelta(minutes=1)),
    }


def _ordinary(engine: Engine, plan: QueryPlan[Any]) -> Any:
    assert plan.statement is not None
    with engine.connect() as connection:
        return plan.finish(connection.execute(plan.statement, plan.parameters).all())


def test_every_spec_query_runs_directly_with_the_ordinary_answer(postgres_db: Database) -> None:
    _seed(postgres_db)
    engine = create_engine(postgres_db.url)
    try:
        runner = DirectRunner(engine)
        for name, plan in _plans(postgres_db, engine).items():
            for _ in range(2):  # the first run also learns the result types
                rows = runner.rows(plan)
                assert rows is not None, name
                assert plan.finish(rows) == _ordinary(engine, plan), name
    finally:
        engine.dispose()


async def test_every_spec_query_runs_directly_on_asyncpg(postgres_db: Database) -> None:
    _seed(postgres_db)
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_db.async_url)
    sync = create_engine(postgres_db.url)
    try:
        runner = DirectRunner(engine.sync_engine)
        for name, plan in _plans(postgres_db, engine.sync_engine).items():
            rows = await greenlet_spawn(runner.rows, plan)
            assert rows is not None, name
            assert plan.finish(rows) == _ordinary(sync, plan), name
    finally:
        await engine.dispose()
        sync.dispose()


def _percent_plan(pad: int) -> QueryPlan[Any]:
    """A statement with a literal ``%``, a parameter used twice and ``pad`` characters of
    comment (psycopg caches its own parse only for statements under 4 KiB)."""
    sql = f"/* {'x' * pad} */ SELECT CAST(:a AS text) || '%' || :a || '%%(b)s' AS v, :b AS w"
    statement = text(sql).columns(column("v"), column("w"))
    return QueryPlan(statement, {"a": "50%", "b": 7}, lambda rows: [tuple(r) for r in rows])


@pytest.mark.parametrize("pad", [0, 5000])
def test_percent_signs_and_repeated_parameters_survive_the_numbered_sql(
    postgres_db: Database, pad: int
) -> None:
    engine = create_engine(postgres_db.url)
    try:
        runner = DirectRunner(engine)
        plan = _percent_plan(pad)
        for _ in range(7):  # psycopg prepares the statement from its sixth run
            rows = runner.rows(plan)
            assert rows is not None
            assert plan.finish(rows) == _ordinary(engine, plan) == [("50%%50%%%(b)s", 7)]
    finally:
        engine.dispose()


def test_pyformat_sql_is_numbered_once_per_statement() -> None:
    sql = "SELECT %(a)s, '%%', %(b)s, %(a)s, '%%(c)s'"
    assert _numbered(sql) == ("SELECT $1, '%', $2, $1, '%(c)s'", ("a", "b"))
    assert _numbered("SELECT 1") == ("SELECT 1", ())
    assert _numbered("SELECT '%s'") is None  # not SQLAlchemy's pyformat: left as it is


async def test_percent_signs_on_an_async_psycopg_engine(postgres_db: Database) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(postgres_db.url.set(drivername="postgresql+psycopg_async"))
    sync = create_engine(postgres_db.url)
    try:
        runner = DirectRunner(engine.sync_engine)
        plan = _percent_plan(5000)
        rows = await greenlet_spawn(runner.rows, plan)
        assert rows is not None and plan.finish(rows) == _ordinary(sync, plan)
    finally:
        await engine.dispose()
        sync.dispose()


def _listener(event_name: str, seen: list[str]) -> Callable[..., Any]:
    def listen(*args: Any, **kwargs: Any) -> Any:
        seen.append(event_name)

    return listen


@pytest.mark.parametrize("event_name", CONNECTION_EVENTS + DIALECT_EVENTS)
def test_any_execution_listener_turns_the_direct_path_off(
    postgres_db: Database, event_name: str
) -> None:
    engine = create_engine(postgres_db.url)
    try:
        plan = _plans(postgres_db, engine)["metrics"]
        runner = DirectRunner(engine)
        assert runner.rows(plan) is not None
        seen: list[str] = []
        event.listen(engine, event_name, _listener(event_name, seen))
        assert runner.rows(plan) is None
    finally:
        engine.dispose()


def test_sql_logging_and_execution_options_turn_the_direct_path_off(
    postgres_db: Database,
) -> None:
    engine = create_engine(postgres_db.url)
    try:
        plan = _plans(postgres_db, engine)["latest"]
        assert DirectRunner(engine).rows(plan) is not None
        logger = logging.getLogger("sqlalchemy.engine")
        level = logger.level
        logger.setLevel(logging.INFO)
        try:
            assert DirectRunner(engine).rows(plan) is None
        finally:
            logger.setLevel(level)
        options = engine.execution_options(schema_translate_map={None: "elsewhere"})
        assert DirectRunner(options).rows(plan) is None
    finally:
        engine.dispose()


def test_listener_on_the_engine_sees_every_query(postgres_db: Database) -> None:
    _seed(postgres_db)
    with SignalsQueryClient(postgres_db.url, table=postgres_db.table) as client:
        direct = client.get_signals_history("p", "spy", start_ts=NOW - timedelta(hours=1))
        seen: list[str] = []
        event.listen(client.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        ordinary = client.get_signals_history("p", "spy", start_ts=NOW - timedelta(hours=1))
    assert direct == ordinary and len(direct) == 3
    assert len(seen) == 1 and "signals" in seen[0]
    assert all(row["ts"].utcoffset() == timedelta(0) for row in direct)


def test_a_failing_query_runs_once(postgres_db: Database) -> None:
    missing = signals_table(MetaData(), "absent", schema=postgres_db.schema, timescale=None)
    with SignalsQueryClient(postgres_db.url, table=missing) as client:
        with pytest.raises(QueryError, match="absent"):
            client.get_signals_history("p", "SPY", start_ts=NOW - timedelta(hours=1))
        # With a listener the ordinary path runs, and it sees exactly one attempt.
        statements: list[str] = []
        event.listen(
            client.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        with pytest.raises(QueryError):
            client.get_signal_metrics("p", "SPY", "n")
        assert len(statements) == 1


def test_killed_backend_is_discarded_then_the_client_recovers(postgres_db: Database) -> None:
    _seed(postgres_db)
    with SignalsQueryClient(postgres_db.url, table=postgres_db.table) as client:
        assert client.get_signal_metrics("p", "SPY", "n")["signal_count"] == 3
        with client.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        postgres_db.sql("SELECT pg_terminate_backend(:pid)", pid=pid)
        with pytest.raises(QueryError):
            client.get_signal_metrics("p", "SPY", "n")
        assert client.get_signal_metrics("p", "SPY", "n")["signal_count"] == 3


async def test_async_missing_table_raises_query_error(postgres_db: Database) -> None:
    missing = signals_table(MetaData(), "absent", schema=postgres_db.schema, timescale=None)
    async with AsyncSignalsQueryClient(postgres_db.async_url, table=missing) as client:
        with pytest.raises(QueryError, match="absent"):
            await client.get_signals_history("p", "SPY", start_ts=NOW - timedelta(hours=1))
