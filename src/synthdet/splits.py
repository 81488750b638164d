"""Which images a model has seen, recorded compactly by content hash, so later figures can prove they are held out."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict

#: Hex digits of sha256 kept per image: 16 (64 bits) makes an accidental collision in a million images ~3e-8.
HASH_PREFIX = 16


class RowSet(BaseModel):
    """A set of images by content hash (sha256 prefixes, sorted, deduplicated) and a digest of the whole set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    digest: str
    hashes: list[str]

    @classmethod
    def of(cls, shas: Iterable[str]) -> RowSet:
        hashes = sorted({str(s)[:HASH_PREFIX] for s in shas})
        digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
        return cls(n=len(hashes), digest=digest, hashes=hashes)

    def overlap(self, shas: Iterable[str]) -> set[str]:
        """The full hashes among ``shas`` that this set contains."""
        mine = set(self.hashes)
        return {s for s in shas if str(s)[:HASH_PREFIX] in mine}
