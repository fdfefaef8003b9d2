"""The query clients' direct path: a plan run straight on the pooled driver connection.

``Connection.execute`` costs tens of microseconds per call (cache key, execution context,
result wrapping): a third of a small query's latency. When nothing would see or change the
call, the clients instead take a connection from the engine's pool
(``Engine.raw_connection()``), run the statement's compiled SQL on a DBAPI cursor and return the
cursor's rows. Only documented SQLAlchemy interfaces are used:

- the statement is compiled once per dialect (``ClauseElement.compile``); its SQL is
  ``SQLCompiled.string``, its parameter names ``bind_names``, their order ``positiontup``;
- bind values go through ``TypeEngine.bind_processor`` of each parameter's type and result
  values through ``TypeEngine.result_processor`` of each selected column's type
  (``Select.selected_columns``), exactly as ``Connection.execute`` would apply them;
- the path is taken only while the engine has no listener for an event ``Connection.execute``
  fires (``Engine.dispatch``, ``Dialect.dispatch``), does not log SQL (``Engine.logger``), and
  has no execution option other than its isolation level;
- on psycopg the SQL runs on a cursor of the pooled ``psycopg.Connection``: a ``RawCursor``
  (psycopg 3.2+) given the SQL with its ``%(name)s`` placeholders turned into ``$n`` once per
  statement, so that psycopg does not parse the SQL again on every call (it caches that parse
  only for statements under 4 KiB; a rollup read is longer), else an ordinary cursor; on
  asyncpg it runs with asyncpg's own ``fetch`` through ``AdaptedConnection.run_async`` (the
  documented way to reach the asyncio driver from SQLAlchemy's synchronous side), with the JSON
  codecs SQLAlchemy installed on the connection;
- a connection found lost (``Dialect.is_disconnect`` on psycopg; ``is_closed()`` or a
  non-server error on asyncpg) or interrupted is invalidated, as the ordinary path does; the
  failure is raised as is (the clients turn it into :class:`~sa_signals.errors.QueryError`).

Statements with expanding or literal-execute parameters take the ordinary path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.sql import Executable

from .queries import QueryPlan

__all__ = ["CONNECTION_EVENTS", "DIALECT_EVENTS", "DirectRunner"]

#: Events of ``ConnectionEvents`` that one ``Connection.execute`` of a read fires: a listener on
#: any of them must see the call, so the direct path is not taken.
CONNECTION_EVENTS = (
    "engine_connect",
    "begin",
    "commit",
    "rollback",
    "before_execute",
    "after_execute",
    "before_cursor_execute",
    "after_cursor_execute",
)
#: The same for ``DialectEvents`` (``handle_error`` included: it may rewrite the exception).
DIALECT_EVENTS = ("do_execute", "do_execute_no_params", "do_setinputsizes", "handle_error")

_Processor = Callable[[Any], Any]

#: A ``pyformat`` placeholder or an escaped percent sign in SQLAlchemy's compiled SQL.
_PYFORMAT = re.compile(r"%\(([^)]*)\)s|%%|%")


def _numbered(sql: str) -> tuple[str, tuple[str, ...]] | None:
    """``sql`` with its ``%(name)s`` placeholders as ``$1``... (a name used twice keeps its
    number) and ``%%`` as ``%``, with the names in number order; ``None`` when it has any other
    ``%`` (not SQL SQLAlchemy compiled for ``pyformat``: the ordinary cursor takes it)."""
    names: dict[str, int] = {}
    odd = False

    def replace(match: re.Match[str]) -> str:
        nonlocal odd
        token = match.group(0)
        if token == "%%":
            return "%"
        if token == "%":
            odd = True
            return token
        number = names.setdefault(match.group(1), len(names) + 1)
        return f"${number}"

    converted = _PYFORMAT.sub(replace, sql)
    return None if odd else (converted, tuple(names))


class _Compiled:
    """One statement compiled for the engine's dialect, with what a call needs of it."""

    __slots__ = ("checked", "fixed", "order", "processors", "results", "sql", "types")

    def __init__(
        self,
        sql: str,
        fixed: dict[str, Any],
        order: tuple[str, ...] | None,
        processors: dict[str, _Processor],
        types: list[Any],
    ) -> None:
        self.sql = sql
        #: Parameters that carry their own value (constants of the statement), processed.
        self.fixed = fixed
        #: Parameter names in placeholder order, for asyncpg and psycopg's ``RawCursor``.
        self.order = order
        #: Bind processors of the parameters a call supplies.
        self.processors = processors
        #: The selected columns' types; their result processors are known after the first run
        #: (they depend on the driver's column types): ``results``, ``None`` when none has one.
        self.types = types
        self.results: list[_Processor | None] | None = None
        self.checked = False

    def parameters(self, given: dict[str, Any]) -> Any:
        named = {**self.fixed, **given} if self.fixed else given
        if self.processors:
            if named is given:
                named = dict(given)
            for key, process in self.processors.items():
                if key in named:
                    named[key] = process(named[key])
        return named if self.order is None else tuple(named[key] for key in self.order)


class DirectRunner:
    """Runs plans on the pooled psycopg or asyncpg (adapted) connection of ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Whether the driver is one the direct path supports; otherwise :meth:`rows` is
        #: never called by the clients.
        self.enabled = engine.dialect.driver in ("psycopg", "asyncpg")
        self._asyncpg = engine.dialect.driver == "asyncpg"
        # psycopg's cursor for SQL with $n placeholders (3.2+), on a synchronous engine (whose
        # pooled connections are psycopg.Connection); otherwise the statements keep
        # SQLAlchemy's pyformat SQL and the DBAPI cursor.
        self._raw_cursor: Any = None
        if engine.dialect.driver == "psycopg" and not engine.dialect.is_async:
            import psycopg

            self._raw_cursor = getattr(psycopg, "RawCursor", None)
        # statement -> its compiled form, or None: the statement takes the ordinary path.
        self._compiled: dict[Executable, _Compiled | None] = {}

    def _plain(self) -> bool:
        """Whether ``Connection.execute`` would do nothing the direct path skips."""
        engine = self.engine
        dispatch: Any = engine.dispatch
        for name in CONNECTION_EVENTS:
            if getattr(dispatch, name):
                return False
        dispatch = engine.dialect.dispatch
        for name in DIALECT_EVENTS:
            if getattr(dispatch, name):
                return False
        return not engine.logger.isEnabledFor(
            logging.INFO
        ) and engine.get_execution_options().keys() <= {"isolation_level"}

    def _compile(self, statement: Executable) -> _Compiled | None:
        dialect = self.engine.dialect
        compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if compiled.post_compile_params or compiled.literal_execute_params:
            return None
        fixed: dict[str, Any] = {}
        processors: dict[str, _Processor] = {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.required:
                if process is not None:
                    processors[name] = process
            else:
                value = bind.effective_value
                fixed[name] = value if process is None else process(value)
        sql: str = compiled.string
        order = tuple(compiled.positiontup) if compiled.positional else None
        if order is None and self._raw_cursor is not None:
            numbered = _numbered(sql)
            if numbered is not None and set(numbered[1]) <= set(compiled.bind_names.values()):
                sql, order = numbered
        types = [column.type for column in statement.selected_columns]  # type: ignore[attr-defined]
        return _Compiled(sql, fixed, order, processors, types)

    def _entry(self, statement: Executable) -> _Compiled | None:
        try:
            return self._compiled[statement]
        except KeyError:
            entry = self._compiled[statement] = self._compile(statement)
            return entry

    def _result_processors(self, entry: _Compiled, description: Sequence[Any]) -> None:
        dialect = self.engine.dialect
        processors = [
            type_.dialect_impl(dialect).result_processor(dialect, column[1])
            for type_, column in zip(entry.types, description, strict=False)
        ]
        entry.results = processors if any(p is not None for p in processors) else None
        entry.checked = True

    def rows(self, plan: QueryPlan[Any]) -> Sequence[Any] | None:
        """The plan's rows, run directly; ``None`` when the ordinary path must run it.

        On asyncpg this must run inside SQLAlchemy's greenlet (``greenlet_spawn``), as every
        use of an async engine's pool does.
        """
        statement = plan.statement
        if statement is None or not self._plain():
            return None
        entry = self._entry(statement)
        if entry is None:
            return None
        parameters = entry.parameters(plan.parameters)
        raw = self.engine.raw_connection()
        try:
            rows = self._fetch(raw, entry, parameters)
        except Exception as exc:
            # Never a second run of the query; a connection found lost (or in an unknown
            # state) is not returned to the pool.
            if self._lost(raw, exc):
                raw.invalidate(exc)
            raise
        except BaseException:
            # Interrupted mid-call: the connection's state is unknown.
            raw.invalidate()
            raise
        finally:
            raw.close()
        processors = entry.results
        if processors:
            return [
                tuple(
                    value if p is None else p(value)
                    for p, value in zip(processors, row, strict=False)
                )
                for row in rows
            ]
        return rows

    def _fetch(self, raw: Any, entry: _Compiled, parameters: Any) -> Sequence[Any]:
        if self._asyncpg:
            # asyncpg's own fetch, through the documented AdaptedConnection.run_async: no
            # DBAPI cursor emulation (lock, description, row buffer) per call.
            adapted = raw.dbapi_connection
            sql = entry.sql
            if not entry.checked:
                prepared = adapted.run_async(lambda driver: driver.prepare(sql))
                types = [(a.name, a.type.oid) for a in prepared.get_attributes()]
                self._result_processors(entry, types)
                rows: Sequence[Any] = adapted.run_async(lambda driver: prepared.fetch(*parameters))
                return rows
            rows = adapted.run_async(lambda driver: driver.fetch(sql, *parameters))
            return rows
        cursor = raw.cursor() if entry.order is None else self._raw_cursor(raw.dbapi_connection)
        try:
            cursor.execute(entry.sql, parameters)
            if not entry.checked:
                self._result_processors(entry, cursor.description)
            rows = cursor.fetchall()
            return rows
        finally:
            cursor.close()

    def _lost(self, raw: Any, exc: Exception) -> bool:
        """Whether the connection cannot be used again after ``exc``."""
        if self._asyncpg:
            import asyncpg

            # A server-side error leaves the connection usable unless the server closed it.
            closed: bool = raw.driver_connection.is_closed()
            return closed or not isinstance(exc, asyncpg.PostgresError)
        dialect = self.engine.dialect
        if isinstance(exc, dialect.loaded_dbapi.Error):
            lost: bool = dialect.is_disconnect(exc, raw.dbapi_connection, None)
            return lost
        return True
