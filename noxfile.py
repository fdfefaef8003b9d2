"""Developer sessions: ``nox -s tests lint typecheck docs``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
@nox.parametrize("sqlalchemy", ["2.0", "latest"])
def tests(session: nox.Session, sqlalchemy: str) -> None:
    """The test suite, against SQLAlchemy 2.0.x and the newest release."""
    session.install("-e", ".[dev]")
    if sqlalchemy == "2.0":
        session.install("sqlalchemy>=2.0,<2.1")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on both packages."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", "sa_signals", "alembic_ext")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site in strict mode (warnings are errors)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict")
