"""Autogenerate entry point: one comparator in Alembic's global registry, extensible by name.

``import alembic_ext`` registers :func:`compare_model` in Alembic's global ``comparators``
dispatcher for the ``schema`` target, which every Alembic release from 1.13 on runs by default
(since 1.18 with priority ``LAST``, after Alembic's own table comparison; before 1.18 global
comparators run in registration order, after Alembic's own). It runs once per autogenerate and
calls the comparators registered with :func:`register_comparator` in order: the schema and
TimescaleDB comparators of :mod:`alembic_ext.compare`, and any other alembic_ext module's.

On Alembic 1.18+ the plugin :data:`PLUGIN_NAME` also exists, so an ``env.py`` that lists
:data:`AUTOGENERATE_PLUGINS` keeps working; the plugin adds no comparator of its own, so the
comparison never runs twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from alembic.operations import MigrateOperation
from alembic.operations.ops import CreateTableOp
from sqlalchemy import Table, inspect

from sa_signals.schema.ddl import postgresql as ddl

if TYPE_CHECKING:
    from alembic.autogenerate.api import AutogenContext
    from alembic.operations.ops import UpgradeOps
    from sqlalchemy import Connection
    from sqlalchemy.engine.reflection import Inspector

__all__ = [
    "AUTOGENERATE_PLUGINS",
    "PLUGIN_NAME",
    "Comparator",
    "CompareContext",
    "compare_model",
    "register",
    "register_comparator",
    "setup",
    "unregister_comparator",
]

#: Name of the (empty) autogenerate plugin on Alembic 1.18+, for ``env.py`` files that list it.
PLUGIN_NAME = "alembic_ext.timescale"
#: ``autogenerate_plugins`` value that names Alembic's own comparators plus ours (optional).
AUTOGENERATE_PLUGINS: list[str] = ["alembic.autogenerate.*", PLUGIN_NAME]


@dataclass
class CompareContext:
    """What a comparator needs, read once per autogenerate run.

    ``model_tables`` are the target metadata's tables that ``include_object`` passes, in every
    schema: like Alembic, the model side is not limited to the schemas that already exist.
    """

    autogen_context: AutogenContext
    upgrade_ops: UpgradeOps
    connection: Connection
    _inspector: Inspector = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._inspector = inspect(self.connection)

    @property
    def default_schema(self) -> str | None:
        """The connection's default schema (``current_schema()`` on PostgreSQL)."""
        return self.connection.dialect.default_schema_name

    @cached_property
    def model_tables(self) -> list[Table]:
        """Model tables in dependency order, after the host's ``include_object`` hook."""
        return [
            table
            for table in self.autogen_context.sorted_tables
            if self.autogen_context.run_object_filters(table, table.name, "table", False, None)
        ]

    @cached_property
    def timescale_version(self) -> tuple[int, ...] | None:
        """The installed ``timescaledb`` extension's version, or ``None``."""
        return ddl.timescale_version(self.connection)

    @cached_property
    def _schemas(self) -> set[str]:
        return set(self._inspector.get_schema_names())

    def schema_exists(self, schema: str | None) -> bool:
        """Whether ``schema`` (``None``: the default one) exists in the database."""
        return schema is None or schema in self._schemas

    def table_exists(self, table: Table) -> bool:
        """Whether ``table`` exists in the database (its schema may not, yet)."""
        if not self.schema_exists(table.schema):
            return False
        return bool(self._inspector.has_table(table.name, schema=table.schema))

    def add(self, *ops: MigrateOperation) -> None:
        """Append operations to the revision's upgrade."""
        self.upgrade_ops.ops.extend(ops)

    def add_first(self, *ops: MigrateOperation) -> None:
        """Put operations before everything else in the upgrade (e.g. ``create_schema``)."""
        self.upgrade_ops.ops[0:0] = ops


#: A comparator: reads the context, adds operations through it.
Comparator = Callable[[CompareContext], None]

_comparators: dict[str, Comparator] = {}


def register_comparator(name: str, comparator: Comparator) -> None:
    """Run ``comparator`` in every autogenerate on PostgreSQL, after those registered before.

    Registering a name again replaces its comparator (a module imported twice adds nothing).
    """
    _comparators[name] = comparator


def unregister_comparator(name: str) -> None:
    """Stop running the comparator registered as ``name`` (no error if there is none)."""
    _comparators.pop(name, None)


def _strip_info(upgrade_ops: UpgradeOps) -> None:
    # Table.info holds our TimescaleOptions (Python-side settings that the Timescale ops
    # express); Alembic would otherwise write the dict, unimportable, into create_table().
    for op in upgrade_ops.ops:
        info = getattr(op, "info", None)
        if isinstance(op, CreateTableOp) and info:
            op.info = {k: v for k, v in info.items() if not str(k).startswith("sa_signals.")}


def _install_render_item(autogen_context: AutogenContext) -> None:
    """Make the revision import the sa_signals types it mentions, whatever ``env.py`` passed.

    Alembic renders a type of another package as ``<module>.<Class>()`` (the SQLite variant of
    the signals table's ``ts`` is ``sa_signals.types.UTCDateTime``) without importing
    ``<module>``, so a revision autogenerated with an ``env.py`` that only imports
    ``alembic_ext`` failed at upgrade with ``NameError: name 'sa_signals' is not defined``.
    Rendering happens after the comparison, with the same options: when ``env.py`` gave no
    ``render_item``, ours is used; when it gave another, ours runs first (it only adds imports).
    """
    from .helpers import RENDERS_IMPORTS, combine_render_item, render_item

    opts = autogen_context.opts
    hook = opts.get("render_item")
    if hook is None:
        opts["render_item"] = render_item
    elif hook is not render_item and not getattr(hook, RENDERS_IMPORTS, False):
        opts["render_item"] = combine_render_item(hook)


def compare_model(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: Iterable[str | None]
) -> Any:
    """The ``schema``-level comparator Alembic calls; ``schemas`` is not used (see above)."""
    _strip_info(upgrade_ops)
    _install_render_item(autogen_context)
    connection = autogen_context.connection
    if connection is not None and connection.dialect.name == "postgresql":
        context = CompareContext(autogen_context, upgrade_ops, connection)
        for comparator in list(_comparators.values()):
            comparator(context)
    return _continue()


def _continue() -> Any:
    try:
        from alembic.util import PriorityDispatchResult
    except ImportError:  # Alembic < 1.18 ignores comparator results
        return None
    return PriorityDispatchResult.CONTINUE


def setup(plugin: Any) -> None:
    """Plugin entry (Alembic 1.18+): nothing to add, :func:`register` already did."""


_registered = False


def register() -> None:
    """Put :func:`compare_model` in Alembic's global comparators, once per process."""
    global _registered
    if _registered:
        return
    _registered = True
    from alembic.autogenerate import comparators

    try:
        from alembic.util import DispatchPriority
    except ImportError:  # Alembic < 1.18: registration order, after Alembic's own
        comparators.dispatch_for("schema")(compare_model)
        return
    comparators.dispatch_for("schema", priority=DispatchPriority.LAST)(compare_model)
    from alembic.runtime.plugins import Plugin

    try:
        Plugin.setup_plugin_from_module(sys.modules[__name__], PLUGIN_NAME)
    except ValueError:  # a plugin of that name exists already
        pass
