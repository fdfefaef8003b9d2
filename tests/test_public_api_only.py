"""sa_signals and alembic_ext use only the public API of their dependencies.

A private attribute of SQLAlchemy, Alembic, psycopg, asyncpg, prometheus_client, pyarrow,
pgpq, ADBC, polars or pandas can change in any release; users upgrade those on their own
schedule. This test reads the source of both packages (``ast``, no import) and fails on any
use of a private name of an object that is not our own.

The rule, precisely. A *private name* starts with ``_`` and is not a dunder (``__x__``). Our
own objects are ``self``, ``cls``, ``super()`` and names bound at module level of the same
module: its functions, classes and assignments, and names imported from sa_signals or
alembic_ext (absolute or relative imports). Our own private names are those the same module
defines on its classes (``def _name``, a class-level ``_name = ...``, ``self._name = ...``).
Then each of these is a violation:

1. ``x._name`` where ``x`` is anything but one of our own objects (a parameter, a local
   variable, a call result, an attribute chain, a third-party module) and ``_name`` is not
   one of the module's own private names (``other._key()`` in ``__eq__`` of the class that
   defines ``_key`` is fine; ``engine._has_events`` is not);
2. ``getattr`` / ``hasattr`` / ``setattr`` / ``delattr`` with a literal private name on
   anything but one of our own objects;
3. ``from package import _name`` or ``import package._module`` (any private segment) where
   ``package`` is not ours.

Reading our own private names across our modules (``from .queries import _records``) is fine.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sa_signals", "alembic_ext")
OURS = frozenset(PACKAGES)
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _our_module(module: str | None, level: int) -> bool:
    return level > 0 or (module or "").split(".")[0] in OURS


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.violations: list[Violation] = []
        self.own = {"self", "cls"} | self._module_names(tree)
        self.own_attributes = self._class_attributes(tree)

    @staticmethod
    def _module_names(tree: ast.Module) -> set[str]:
        names: set[str] = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.ImportFrom) and _our_module(node.module, node.level):
                names |= {alias.asname or alias.name for alias in node.names}
            elif isinstance(node, ast.Import):
                names |= {
                    alias.asname or alias.name.split(".")[0]
                    for alias in node.names
                    if alias.name.split(".")[0] in OURS
                }
        return names

    @staticmethod
    def _class_attributes(tree: ast.Module) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign):
                        names |= {t.id for t in item.targets if isinstance(t, ast.Name)}
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        names.add(item.target.id)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {
                    t.attr
                    for t in targets
                    if isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id in ("self", "cls")
                }
        return {name for name in names if _private(name)}

    def _ours(self, receiver: ast.expr) -> bool:
        if isinstance(receiver, ast.Name):
            return receiver.id in self.own
        return (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Name)
            and receiver.func.id == "super"
        )

    def _flag(self, node: ast.AST) -> None:
        self.violations.append(Violation(self.path, node.lineno, ast.unparse(node)))  # type: ignore[attr-defined]

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (
            _private(node.attr)
            and node.attr not in self.own_attributes
            and not self._ours(node.value)
        ):
            self._flag(node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (
            isinstance(node.func, ast.Name)
            and node.func.id in ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and not self._ours(node.args[0])
        ):
            self._flag(node)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not _our_module(node.module, node.level):
            segments = (node.module or "").split(".")
            if any(_private(s) for s in segments) or any(_private(a.name) for a in node.names):
                self._flag(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            segments = alias.name.split(".")
            if segments[0] not in OURS and any(_private(s) for s in segments):
                self._flag(node)


def scan(source: str, path: str = "<source>") -> list[Violation]:
    """The violations of the rule in one module's source."""
    tree = ast.parse(source)
    scanner = _Scanner(path, tree)
    scanner.visit(tree)
    return scanner.violations


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_packages_use_no_private_name_of_a_dependency() -> None:
    violations = [
        violation
        for path in _sources()
        for violation in scan(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not violations, "private names of other packages used:\n" + "\n".join(
        map(str, violations)
    )


def test_the_scan_covers_both_packages() -> None:
    names = {path.relative_to(ROOT).parts[0] for path in _sources()}
    assert names == set(PACKAGES) and len(_sources()) > 20


@pytest.mark.parametrize(
    "source",
    [
        "def f(engine):\n    return engine._has_events\n",
        "def f(engine):\n    return engine.dialect._has_events\n",
        "def f(compiled):\n    return getattr(compiled, '_bind_processors', True)\n",
        "def f(statement, d):\n    return statement.compile(dialect=d)._result_columns\n",
        "import sqlalchemy\nx = sqlalchemy.util._concurrency_py3k\n",
        "from sqlalchemy.util._collections import immutabledict\n",
        "from sqlalchemy.engine.base import _EMPTY_EXECUTION_OPTIONS\n",
        "import psycopg._encodings\n",
        "def f(registry):\n    return registry._names_to_collectors\n",
        "class A:\n    def _key(self):\n        return 1\ndef f(engine):\n"
        "    return engine._has_events\n",
    ],
)
def test_the_rule_catches_private_reads(source: str) -> None:
    assert len(scan(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "class A:\n    def f(self):\n        return self._x\n",
        "class A:\n    @classmethod\n    def f(cls):\n        return cls._x\n",
        "class B(A):\n    def f(self):\n        return super()._key()\n",
        "from .queries import _records\n",
        "from sa_signals.read.queries import _records\n",
        "from . import queries\ny = queries._records\n",
        "_CACHE = {}\ndef f():\n    return _CACHE.__len__()\n",
        "def f(engine):\n    return engine.dispatch, engine.__class__\n",
        "class Op:\n    def _key(self):\n        return 1\n"
        "    def __eq__(self, other):\n        return self._key() == other._key()\n",
        "class Op:\n    def __init__(self):\n        self._depth = 0\n"
        "def f(op):\n    return op._depth\n",
    ],
)
def test_the_rule_allows_our_own_names_and_dunders(source: str) -> None:
    assert scan(source) == []
