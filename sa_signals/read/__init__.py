"""The read path: query builders, query repositories and query clients."""
