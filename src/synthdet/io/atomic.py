"""Every file synthdet writes appears whole or not at all: written beside its destination, fsynced, renamed."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it replaces ``dest``, on any error it is removed.

    For writers that want a file name (``df.to_parquet(tmp)``, ``save_file(..., tmp)``). A crash leaves at most a
    hidden ``.<name>.<uuid>.tmp`` file, never a truncated ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # some writers create private temp files (0600); the result gets the old file's mode, else rw-r--r--
            os.chmod(tmp, dest.stat().st_mode & 0o777 if dest.exists() else 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(dest: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` whose result replaces ``dest`` only when the ``with`` block completes."""
    if "w" not in mode:
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} has no 'w'")
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")  # the writer chooses line endings ("\n" everywhere in synthdet)
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def write_text(dest: str | Path, text: str) -> Path:
    with atomic_open(dest, "w") as f:
        f.write(text)
    return Path(dest)


def write_bytes(dest: str | Path, data: bytes) -> Path:
    with atomic_open(dest, "wb") as f:
        f.write(data)
    return Path(dest)


def printable(text: object) -> str:
    """``text`` as something every terminal and UTF-8 file accepts: the bytes of a non-UTF-8 file name (which
    Python carries as surrogate escapes, e.g. ``caf\\udce9.jpg``) become ``\\xe9`` escapes instead of crashing
    the write."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
