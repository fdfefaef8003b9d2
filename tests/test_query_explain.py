"""The read queries are served by the spec's indexes: EXPLAIN on an ANALYZEd table shows no
sequential scan of the signals table (the 2M-row figure is in benchmarks/query_bench.py)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import Connection

from sa_signals.read.queries import QueryPlan, plan_active, plan_history, plan_latest, plan_metrics

from .conftest import Database

UTC = timezone.utc
PROVIDERS = [f"provider_{i}" for i in range(4)]
SYMBOLS = [f"SYM{i:02d}" for i in range(30)]
NAMES = [f"signal_{i}" for i in range(5)]
POINTS = 50  # 4 x 30 x 5 x 50 = 30,000 rows over 7 days


def _load(db: Database, newest: datetime) -> None:
    table = db.table
    step = timedelta(days=7) / POINTS
    rng = random.Random(3)
    raw = db.engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        with conn.cursor() as cur:
            with cur.copy(
                f'COPY "{db.schema}"."{table.name}" '
                "(provider, symbol, ts, name, value, score, metadata) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "text", "timestamptz", "text", "float8", "float8", "jsonb"])
                for k in range(POINTS, 0, -1):
                    for p in PROVIDERS:
                        for s in SYMBOLS:
                            for n in NAMES:
                                ts = newest - step * k + step * rng.random()
                                copy.write_row((p, s, ts, n, rng.random(), None, Jsonb({"k": k})))
        conn.commit()
        conn.autocommit = True
        conn.execute(f'ANALYZE "{db.schema}"."{table.name}"')
        conn.autocommit = False
    finally:
        raw.close()


def _explain(conn: Connection, plan: QueryPlan[Any]) -> str:
    # The statement exactly as the repositories send it, values bound, IN lists expanded.
    assert plan.statement is not None
    compiled = plan.statement.params(**plan.parameters).compile(dialect=conn.dialect)
    expanded = compiled.construct_expanded_state()
    rows = conn.exec_driver_sql("EXPLAIN " + expanded.statement, expanded.parameters).all()
    return "\n".join(row[0] for row in rows)


@pytest.fixture
def loaded(postgres_db: Database) -> Database:
    _load(postgres_db, datetime.now(UTC))
    return postgres_db


@pytest.mark.parametrize(
    "query", ["latest", "latest_names", "history", "history_names", "metrics", "active"]
)
def test_queries_use_indexes_not_seq_scans(loaded: Database, query: str) -> None:
    table, now = loaded.table, datetime.now(UTC)
    with loaded.engine.connect() as conn:
        dialect = conn.dialect
        plans = {
            "latest": plan_latest(table, dialect, "provider_1", "SYM07", 100),
            "latest_names": plan_latest(table, dialect, "provider_1", "SYM07", 100, NAMES[:2]),
            "history": plan_history(
                table, dialect, "provider_2", "SYM11", now - timedelta(hours=6), now
            ),
            "history_names": plan_history(
                table, dialect, "provider_2", "SYM11", now - timedelta(days=2), None, ["signal_3"]
            ),
            "metrics": plan_metrics(table, dialect, "provider_3", "SYM01", "signal_4", 24),
            "active": plan_active(table, dialect, "provider_0", 5),
        }
        text = _explain(conn, plans[query])
        # The planner knows the table: 30k rows, so a seq scan would be a real choice.
        estimate = conn.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE oid = %(t)s::regclass",
            {"t": f'"{loaded.schema}".signals'},
        ).scalar_one()
    assert estimate > 25_000
    assert "Seq Scan" not in text, text
    assert "Index" in text, text
