"""The probe cache (synthdet.data.hashcache): a re-index does not re-read files it knows; a changed size or mtime
re-probes."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import synthetic_photo, write_image

from synthdet.data.hashcache import ProbeCache, hash_cache_path
from synthdet.data.manifest import index


def test_reindex_uses_the_cache_and_a_changed_file_is_probed_again(tmp_path: Path, feature_cache: Path) -> None:
    root = tmp_path / "imgs"
    a = write_image(root / "real" / "a.png", synthetic_photo(48, 40, seed=1))
    write_image(root / "fake" / "b.png", synthetic_photo(48, 40, seed=2))
    (root / "real" / "bad.jpg").write_bytes(b"not an image")
    first = index(root).set_index("path")
    assert hash_cache_path().is_file() and str(hash_cache_path()).startswith(str(feature_cache.parent))
    assert ProbeCache().get(a, 100_000_000)["sha256"] == first.loc[str(a), "sha256"]
    # same size and mtime, other bytes: the cache answers (the file is not read again) …
    st = os.stat(a)
    other = write_image(tmp_path / "other.png", synthetic_photo(48, 40, seed=3)).read_bytes()
    a.write_bytes(other[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = index(root).set_index("path")
    assert again.loc[str(a), "sha256"] == first.loc[str(a), "sha256"]
    assert not again.loc[str(root / "real" / "bad.jpg"), "ok"]
    # … a new mtime re-probes it; without the cache every file is read
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    third = index(root).set_index("path")
    assert third.loc[str(a), "sha256"] != first.loc[str(a), "sha256"]
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert index(root, use_cache=False).set_index("path").loc[str(a), "sha256"] == third.loc[str(a), "sha256"]


def test_many_threads_opening_a_new_cache_at_once_never_fail(tmp_path) -> None:
    """index probes with a thread pool: every thread opens its own connection to a cache file that does not exist
    yet (the demo's first run) — none may fail with 'database is locked'."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import synthetic_photo

    from synthdet.data.hashcache import ProbeCache

    files = []
    for i in range(16):
        synthetic_photo(20, 20, seed=i).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    for attempt in range(5):
        cache = ProbeCache(tmp_path / f"probes{attempt}.sqlite")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f, c=cache: c.put(f, 1, {"ok": True}), files))
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda f, c=cache: c.get(f, 1), files)) == [{"ok": True}] * 16
