"""A host application ("myapp") that embeds the signals table (the host-project suite's fixture)."""
