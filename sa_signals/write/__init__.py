"""The write path: validation, statement builders, COPY, repositories and store clients."""
