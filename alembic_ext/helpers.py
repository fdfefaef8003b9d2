"""``env.py`` helpers that keep TimescaleDB's own objects out of autogenerate.

Pass them to ``context.configure(include_name=..., include_object=...)``. They hide:

* TimescaleDB's schemas: ``_timescaledb_*`` (internal catalog, chunks, compressed chunks),
  ``timescaledb_information``, ``timescaledb_experimental`` and ``toolkit_experimental``;
* chunk tables (``_hyper_N_M_chunk``, ``compress_hyper_N_M_chunk``) wherever they live;
* the ``<table>_<time column>_idx`` index ``create_hypertable`` adds by default, when it exists in
  the database but not in the model (sa_signals creates hypertables without it).

:func:`render_item` (``context.configure(render_item=...)``) makes revisions import the module of
the sa_signals column types they mention (Alembic writes ``sa_signals.types.X()`` for them).

A host that already passes hooks of its own or of another library (geoalchemy2's
``alembic_helpers``, for instance) chains them with ours through :func:`combine_include_name`,
:func:`combine_include_object` and :func:`combine_render_item`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Index
from sqlalchemy.sql.schema import SchemaItem

__all__ = [
    "IncludeName",
    "IncludeObject",
    "RenderItem",
    "combine_include_name",
    "combine_include_object",
    "combine_render_item",
    "include_name",
    "include_object",
    "is_timescale_schema",
    "render_item",
]

#: ``include_name(name, type_, parent_names) -> bool``
IncludeName = Callable[[str | None, str, Mapping[str, Any]], bool]
#: ``include_object(object_, name, type_, reflected, compare_to) -> bool``
IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]
#: ``render_item(type_, object_, autogen_context) -> str | False``
RenderItem = Callable[[str, Any, Any], "str | bool"]

_SCHEMAS = frozenset(
    {"timescaledb_information", "timescaledb_experimental", "toolkit_experimental"}
)
_CHUNK = re.compile(r"^(?:compress)?_hyper_\d+_\d+_chunk$")


def is_timescale_schema(name: str | None) -> bool:
    """Whether ``name`` is one of TimescaleDB's own schemas."""
    return name is not None and (name.startswith("_timescaledb_") or name in _SCHEMAS)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """``include_name`` hook: skip TimescaleDB's schemas and chunk tables."""
    if type_ == "schema":
        return not is_timescale_schema(name)
    if is_timescale_schema(parent_names.get("schema_name")):
        return False
    return not (type_ == "table" and name is not None and _CHUNK.match(name))


def include_object(
    object_: SchemaItem,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """``include_object`` hook: skip chunk tables and ``create_hypertable``'s default index."""
    if type_ == "table" and name is not None and _CHUNK.match(name):
        return False
    if type_ == "index" and reflected and compare_to is None and isinstance(object_, Index):
        return not _is_default_time_index(object_, name)
    return True


def _is_default_time_index(index: Index, name: str | None) -> bool:
    # create_hypertable names it "<table>_<column>_idx", on (column DESC), not unique.
    table = index.table
    expressions = list(index.expressions)
    if table is None or index.unique or len(expressions) != 1:
        return False
    # Reflected "ts DESC" arrives as a unary expression around the column.
    element = getattr(expressions[0], "element", expressions[0])
    column = getattr(element, "name", None)
    return column is not None and name == f"{table.name}_{column}_idx"


def combine_include_name(*hooks: IncludeName) -> IncludeName:
    """One ``include_name`` hook that passes only what ours and every hook pass."""

    def combined(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        return include_name(name, type_, parent_names) and all(
            hook(name, type_, parent_names) for hook in hooks
        )

    return combined


def combine_include_object(*hooks: IncludeObject) -> IncludeObject:
    """One ``include_object`` hook that passes only what ours and every hook pass."""

    def combined(
        object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        return include_object(object_, name, type_, reflected, compare_to) and all(
            hook(object_, name, type_, reflected, compare_to) for hook in hooks
        )

    return combined


def combine_render_item(*hooks: RenderItem) -> RenderItem:
    """One ``render_item`` hook: ours (imports only), then each hook until one renders.

    The first hook that returns a string wins; when none does, Alembic renders the item.
    """

    def combined(type_: str, object_: Any, autogen_context: Any) -> str | bool:
        render_item(type_, object_, autogen_context)
        for hook in hooks:
            rendered = hook(type_, object_, autogen_context)
            if rendered is not False:
                return rendered
        return False

    setattr(combined, RENDERS_IMPORTS, True)
    return combined


#: Attribute set on hooks that run :func:`render_item` (the comparator does not add it again).
RENDERS_IMPORTS = "_alembic_ext_renders_imports"


def render_item(type_: str, object_: Any, autogen_context: Any) -> str | bool:
    """``render_item`` hook: import the modules of sa_signals types a revision mentions.

    Alembic renders a non-SQLAlchemy type as ``<module>.<Class>(...)`` without importing
    ``<module>``; this adds the import and leaves the rendering to Alembic (returns ``False``).
    """
    if type_ == "type":
        module = type(object_).__module__
        imports = autogen_context.imports
        if module.split(".")[0] in {"sa_signals", "alembic_ext"} and imports is not None:
            imports.add(f"import {module}")
    return False
