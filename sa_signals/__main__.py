"""``python -m sa_signals``: the CLI."""

from .cli import main

raise SystemExit(main())
