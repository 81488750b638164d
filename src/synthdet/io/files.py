"""Files on disk: content hashes and the cache folder every on-disk cache lives under."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's content hash: the key every cache, split and provenance check uses."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """The feature cache: ``$SYNTHDET_CACHE/features`` (default ``~/.cache/synthdet/features``)."""
    return Path(os.environ.get("SYNTHDET_CACHE", Path.home() / ".cache" / "synthdet")) / "features"
