"""Virtual environments where optional dependencies are really absent.

:func:`make_env` creates a venv (no pip, nothing downloaded) whose site-packages holds only the
core dependencies of sa_signals plus the modules asked for, linked from the installation running
the tests, and a ``.pth`` file putting this source tree on the path. Whatever is not linked is
not importable there, so a test can run real code without ``rich``, ``greenlet``, ``asyncpg``,
``aiosqlite``, ``alembic``, ``sqlalchemy-utils`` or ``psycopg``. Building one takes well under a
second; the fixtures build each once per session.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What ``pip install sa_signals`` brings (greenlet is optional on SQLAlchemy 2.1).
CORE = ("sqlalchemy", "typing_extensions", "prometheus_client")


def _location(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise LookupError(f"{module} is not installed in the test environment")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    assert spec.origin is not None
    return Path(spec.origin)


def make_env(path: Path, *modules: str) -> Path:
    """A venv at ``path`` with only :data:`CORE`, ``modules`` and this source tree; its python."""
    venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(path)
    python = path / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site = Path(purelib)
    site.mkdir(parents=True, exist_ok=True)
    for module in (*CORE, *modules):
        source = _location(module)
        (site / source.name).symlink_to(source, target_is_directory=source.is_dir())
    (site / "sa_signals_source.pth").write_text(f"{ROOT}\n", encoding="utf-8")
    return python


def installed(module: str) -> bool:
    """Whether ``module`` can be linked into an environment (it is installed here)."""
    return importlib.util.find_spec(module) is not None
