"""What indexing learnt about a file, kept across runs: ``(path, size, mtime_ns, max_pixels)`` → its probe record
(sha256, size in pixels, format, decodes or why not, perceptual hash), so re-indexing a million files does not
re-read and re-decode them.

Verified lazily: a file whose size or modification time changed misses the cache and is probed again (its old
entry is replaced); features are still checked against the bytes actually decoded at extraction time
(``changed-since-indexed``), so a stale entry (a file rewritten within the same nanosecond with the same size)
cannot put features under a wrong hash. One SQLite file in the cache folder (``SYNTHDET_CACHE``), WAL mode: several
processes and threads may read and write it at once; it is a cache, so a lost write only costs a re-probe.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from synthdet.io.files import default_cache_dir


def hash_cache_path() -> Path:
    return default_cache_dir().parent / "probes.sqlite"


_OPENING = threading.Lock()


class ProbeCache:
    """``get(path, max_pixels)`` / ``put(path, max_pixels, record)``; one connection per thread."""

    def __init__(self, file: str | Path | None = None) -> None:
        self.file = Path(file) if file is not None else hash_cache_path()
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            with _OPENING:  # switching to WAL and creating the table lock the file: one thread of ours at a time
                self.file.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.file, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS probe (path TEXT, max_pixels INTEGER, size INTEGER, mtime_ns "
                           "INTEGER, record TEXT, PRIMARY KEY (path, max_pixels))")
            self._local.db = db
        return db

    @staticmethod
    def _key(path: str | Path) -> tuple[str, int, int]:
        st = os.stat(path)
        return os.path.abspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"), \
            st.st_size, st.st_mtime_ns

    def get(self, path: str | Path, max_pixels: int) -> dict[str, Any] | None:
        """The stored record, or None when absent or the file's size / mtime changed (or it cannot be stat'ed)."""
        try:
            name, size, mtime = self._key(path)
        except OSError:
            return None
        try:
            row = self._db().execute("SELECT size, mtime_ns, record FROM probe WHERE path = ? AND max_pixels = ?",
                                     (name, max_pixels)).fetchone()
        except sqlite3.Error:
            return None  # a cache: a database busy in another process only costs a probe
        if row is None or (row[0], row[1]) != (size, mtime):
            return None
        return dict(json.loads(row[2]))

    def put(self, path: str | Path, max_pixels: int, record: dict[str, Any]) -> None:
        try:
            name, size, mtime = self._key(path)
        except OSError:
            return
        try:
            self._db().execute("INSERT OR REPLACE INTO probe VALUES (?, ?, ?, ?, ?)",
                               (name, max_pixels, size, mtime, json.dumps(record)))
        except sqlite3.Error:
            pass  # a cache: a write lost to a busy or read-only database only costs a re-probe next time
