"""Warnings a migration's author must see, whatever ``env.py`` does with logging.

The stock ``env.py`` runs ``fileConfig()``, which disables every logger created before it
(``import alembic_ext`` comes first), so these go through :mod:`warnings`, which Python shows
on stderr by default. They point at the first frame outside Alembic, SQLAlchemy and
alembic_ext: the revision's ``op.…`` line, or ``env.py``.
"""

from __future__ import annotations

import inspect
import warnings

from sa_signals.errors import SignalsWarning

__all__ = ["warn"]

_INTERNAL = ("alembic_ext", "alembic", "sqlalchemy", "sa_signals")


def warn(message: str, category: type[SignalsWarning] = SignalsWarning) -> None:
    """Issue ``message`` as ``category``, attributed to the caller's own code."""
    # stacklevel 1 is this function, 2 its caller, and so on.
    frame = inspect.currentframe()
    level, found = 1, 2
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if level > 1 and module.split(".")[0] not in _INTERNAL:
            found = level
            break
        frame = frame.f_back
        level += 1
    del frame  # no reference cycle through the frame
    warnings.warn(message, category, stacklevel=found)
