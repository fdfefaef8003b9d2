"""Command line interface ``sa-signals`` (placeholder until the CLI issue lands)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sqlalchemy import create_engine, func, select

from .model import Signal, signals_metadata

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sa-signals`` console script."""
    parser = argparse.ArgumentParser(prog="sa-signals")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="create the signals table and show it works")
    demo.add_argument("--url", default="sqlite:///sa_signals_demo.sqlite")
    args = parser.parse_args(argv)
    engine = create_engine(args.url)
    signals_metadata.create_all(engine)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(Signal.__table__)).scalar_one()
    print(f"signals table ready at {args.url}: {count} rows")
    engine.dispose()
    return 0
