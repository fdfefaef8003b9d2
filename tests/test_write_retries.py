"""The store clients' bounded retry, as docs/clients.md states it.

A trigger on the test's own table makes the server fail the first ``fail_times`` writing
statements with a real error (a ``40001`` / ``40P01`` SQLSTATE, or the backend terminating its
own connection); a sequence counts the statements, since sequences survive the rollback. The
concurrent deadlock of two real writers is in ``test_write_postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from sa_signals import ConfigurationError, SignalsStoreClient, WriteError

from .conftest import Database
from .test_write_helpers import expected, signals, stored, sync_client

FAILURES = {
    "serialization": "RAISE EXCEPTION 'injected' USING ERRCODE = '40001'",
    "deadlock": "RAISE EXCEPTION 'injected' USING ERRCODE = '40P01'",
    "lost connection": "PERFORM pg_terminate_backend(pg_backend_pid())",
}


def fail_first(db: Database, failure: str, fail_times: int = 1) -> None:
    """Make the first ``fail_times`` INSERT statements into the signals table fail."""
    schema = db.schema
    db.table  # noqa: B018 - create the table
    db.sql(f'CREATE SEQUENCE "{schema}".attempts')
    db.sql(
        f'CREATE FUNCTION "{schema}".fail_first() RETURNS trigger LANGUAGE plpgsql AS $$ '
        f"BEGIN IF nextval('\"{schema}\".attempts') <= {fail_times} THEN {FAILURES[failure]}; "
        "END IF; RETURN NULL; END $$"
    )
    db.sql(
        f'CREATE TRIGGER fail_first BEFORE INSERT ON "{schema}".signals '
        f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".fail_first()'
    )


def attempts(db: Database) -> int:
    return int(db.sql(f'SELECT last_value FROM "{db.schema}".attempts')[0][0])  # type: ignore[call-overload]


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("threshold", [10, 1000], ids=["copy", "upsert"])
def test_a_list_is_retried_after_a_transient_failure(
    postgres_db: Database, failure: str, threshold: int
) -> None:
    fail_first(postgres_db, failure)
    items = signals(20)
    with sync_client(postgres_db, batch_threshold=threshold) as client:
        assert client.write_signals(items) == 20
    client.close()
    assert attempts(postgres_db) == 2  # failed once, then ran whole again
    assert stored(postgres_db) == expected(items)


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_generator_is_never_replayed(postgres_db: Database, failure: str) -> None:
    fail_first(postgres_db, failure)
    items = signals(20)
    with sync_client(postgres_db) as client:
        with pytest.raises(WriteError) as error:
            client.write_signals(item for item in items)
        assert error.value.__cause__ is not None  # the driver's error, kept
        assert client.write_signals(items) == 20  # the client itself is fine
    client.close()
    assert attempts(postgres_db) == 2
    assert stored(postgres_db) == expected(items)


def test_an_iterator_over_a_list_is_one_shot_too(postgres_db: Database) -> None:
    fail_first(postgres_db, "serialization")
    items: Iterator[SimpleNamespace] = iter(signals(20))
    with sync_client(postgres_db) as client, pytest.raises(WriteError):
        client.write_signals(items)
    client.close()
    assert attempts(postgres_db) == 1 and stored(postgres_db) == {}


def test_max_attempts_bounds_the_retries(postgres_db: Database) -> None:
    fail_first(postgres_db, "deadlock", fail_times=3)
    items = signals(20)
    registry = CollectorRegistry()
    with sync_client(postgres_db, max_attempts=3, registry=registry) as client:
        with pytest.raises(WriteError):
            client.write_signals(items)
        assert attempts(postgres_db) == 3
        assert client.write_signals(items) == 20  # the 4th statement succeeds
    client.close()
    assert stored(postgres_db) == expected(items)


def test_max_attempts_1_turns_retries_off(postgres_db: Database) -> None:
    fail_first(postgres_db, "serialization")
    with sync_client(postgres_db, max_attempts=1) as client, pytest.raises(WriteError):
        client.write_signals(signals(5))
    client.close()
    assert attempts(postgres_db) == 1 and stored(postgres_db) == {}


@pytest.mark.parametrize("value", [0, -1, 1.5, "3"])
def test_max_attempts_must_be_a_positive_int(value: object) -> None:
    with pytest.raises(ConfigurationError):
        SignalsStoreClient("sqlite://", max_attempts=value)  # type: ignore[arg-type]
