"""The outcome of one write: how many signals came in and what the database did with them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["APPEND", "COPY", "UPSERT", "WriteResult"]

#: Method label of the executemany ``INSERT ... ON CONFLICT`` path.
UPSERT = "UPSERT"
#: Method label of the binary COPY -> staging table -> merge path.
COPY = "COPY"
#: Listed in :attr:`WriteResult.methods` (after ``"COPY"``) when the call took the append fast
#: path: COPY straight into the table, its keys proven new by an index probe.
APPEND = "APPEND"


@dataclass(frozen=True)
class WriteResult:
    """Counts of one ``upsert`` / ``write_signals`` call, taken from the write statements.

    ``received`` counts every signal given; duplicates of a key inside the call collapse to the
    last one, so ``inserted + updated + unchanged + duplicates == received``.
    """

    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Methods used, in first-use order (``"UPSERT"``, ``"COPY"``, then ``"APPEND"`` when the
    #: rows went straight into the table).
    methods: tuple[str, ...] = ()

    @property
    def written(self) -> int:
        """Rows the database inserted or changed."""
        return self.inserted + self.updated

    @property
    def duplicates(self) -> int:
        """Signals superseded by a later signal with the same key in the same call."""
        return self.received - self.inserted - self.updated - self.unchanged

    @property
    def method(self) -> str | None:
        """The main method: ``"COPY"`` if any batch used it, else ``"UPSERT"`` (None if empty)."""
        if COPY in self.methods:
            return COPY
        return self.methods[0] if self.methods else None

    def __add__(self, other: WriteResult) -> WriteResult:
        methods = self.methods + tuple(m for m in other.methods if m not in self.methods)
        return WriteResult(
            self.received + other.received,
            self.inserted + other.inserted,
            self.updated + other.updated,
            self.unchanged + other.unchanged,
            methods,
        )
