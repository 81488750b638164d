"""store: the feature store on its own — round trips, identity keys, shard manifests, damage found and quarantined,
temp folders of live writers kept, writes by another instance picked up, crash-safe compaction."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from synthdet.features.store import STALE_TEMP_S, FeatureStore, store_key

KEY = "toy@random-abc"


def rand(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def shard_names(store: FeatureStore) -> list[str]:
    return sorted(p.name for p in store.shards_dir.iterdir() if not p.name.startswith("."))


def open_store(root: Path) -> FeatureStore:
    return FeatureStore(root, KEY, embed_dim=8, layer_dims=[3, 5])


def fill(store: FeatureStore, keys: list[str], seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    n = len(keys)
    pooled, layers = rand(n, 8, seed), [rand(n, 3, seed + 1), rand(n, 5, seed + 2)]
    store.append(keys, pooled, layers)
    return pooled.astype(np.float16), [a.astype(np.float16) for a in layers]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return open_store(tmp_path / "fs")


# ------------------------------------------------------------------------------------------------ basics


def test_append_load_roundtrip_float16(store: FeatureStore) -> None:
    keys = [f"k{i}:0" for i in range(6)]
    pooled, l0, l1 = rand(6, 8, 0), rand(6, 3, 1), rand(6, 5, 2)
    store.append(keys[:4], pooled[:4], [l0[:4], l1[:4]])
    store.append(keys[4:], pooled[4:], [l0[4:], l1[4:]])
    assert len(store) == 6 and "k5:0" in store and "k6:0" not in store
    order = [keys[i] for i in (5, 0, 3, 1, 4, 2)]  # across shards, in any order
    got, layers = store.load(order, layers=True)
    idx = [5, 0, 3, 1, 4, 2]
    assert got.dtype == np.float16 and got.shape == (6, 8)
    assert np.array_equal(got, pooled[idx].astype(np.float16))
    assert np.array_equal(layers[0], l0[idx].astype(np.float16)) and np.array_equal(layers[1], l1[idx].astype(np.float16))
    no_layers = store.load(order)
    assert no_layers[1] == [] and np.array_equal(no_layers[0], got)
    again = open_store(store.dir.parent)  # persistent: a new instance over the same folder sees the same data
    assert len(again) == 6 and np.array_equal(again.load(order)[0], got) and again.problems == []


def test_missing_and_load_errors(store: FeatureStore) -> None:
    fill(store, ["a:0", "b:0"])
    assert store.missing(["a:0", "c:0", "b:0", "d:1"]) == ["c:0", "d:1"]
    assert store.missing([]) == []
    with pytest.raises(KeyError, match="synthdet extract"):
        store.load(["a:0", "c:0"])


def test_loads_are_memory_mapped(store: FeatureStore) -> None:
    fill(store, ["a:0", "b:0"])
    (shard,) = shard_names(store)
    arr = store._array(shard, "pooled")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float16 and arr.shape == (2, 8)
    assert isinstance(store._array(shard, "layer_01"), np.memmap)
    assert store._array(shard, "pooled") is arr  # opened once, reused


def test_append_validates_shapes(store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="shape"):
        store.append(["a:0"], rand(1, 7, 0), [rand(1, 3, 1), rand(1, 5, 2)])
    with pytest.raises(ValueError, match="layer"):
        store.append(["a:0"], rand(1, 8, 0), None)
    with pytest.raises(ValueError, match="layer_01 has shape"):
        store.append(["a:0"], rand(1, 8, 0), [rand(1, 3, 1), rand(1, 4, 2)])
    assert len(store) == 0 and not list(store.shards_dir.iterdir())  # a refused append leaves no temp folder
    store.append([], np.zeros((0, 8), np.float32))  # nothing to do
    assert shard_names(store) == []


def test_duplicate_keys_resolve_to_first_written(store: FeatureStore) -> None:
    first, _ = fill(store, ["a:0"], seed=0)
    fill(store, ["a:0"], seed=10)
    assert len(store) == 1 and np.array_equal(store.load(["a:0"])[0], first)
    assert np.array_equal(open_store(store.dir.parent).load(["a:0"])[0], first)  # also after reopening


def test_meta_mismatch(store: FeatureStore) -> None:
    root = store.dir.parent
    with pytest.raises(ValueError, match="store holds"):
        FeatureStore(root, KEY, embed_dim=9, layer_dims=[3, 5])
    with pytest.raises(ValueError, match="store holds"):
        FeatureStore(root, KEY, embed_dim=8, layer_dims=[3])
    other = FeatureStore(root, "toy@random-xyz", embed_dim=9)  # another identity: its own folder
    assert other.dir != store.dir and json.loads((other.dir / "meta.json").read_text())["embed_dim"] == 9


# ------------------------------------------------------------------------------------------------ identity


def test_store_key_changes_with_every_component() -> None:
    ident = {"backbone": "effnet-lite0@abc-pre123", "torch": "2.5", "timm": "1.0", "pillow": "11.0",
             "dtype": "float16", "device": "cpu"}
    base = store_key(ident)
    assert base.startswith("effnet-lite0@abc-pre123__") and "device=cpu" in base and "torch=2.5" in base
    changed = {store_key({**ident, k: v + "x"}) for k, v in ident.items()}
    assert len(changed) == len(ident) and base not in changed


# ------------------------------------------------------------------------------------------------ manifests and damage


def test_every_shard_has_a_manifest(store: FeatureStore) -> None:
    pooled, layers = fill(store, ["a:0", "b:0", "c:1"])
    (shard,) = shard_names(store)
    d = store.shards_dir / shard
    man = json.loads((d / "shard.json").read_text())
    assert man["rows"] == 3
    assert man["arrays"]["pooled"]["shape"] == [3, 8] and man["arrays"]["layer_01"]["shape"] == [3, 5]
    assert all(a["dtype"] == "float16" and a["bytes"] == (d / f"{w}.npy").stat().st_size for w, a in man["arrays"].items())
    assert man["arrays"]["layer_00"]["sha256"] == hashlib.sha256((d / "layer_00.npy").read_bytes()).hexdigest()
    assert np.array_equal(np.load(d / "pooled.npy"), pooled)  # plain .npy files


def _truncate(d: Path) -> None:
    p = d / "pooled.npy"
    p.write_bytes(p.read_bytes()[:-7])


def _edit_bytes(d: Path) -> None:  # same size: only the checksum can tell
    p = d / "layer_01.npy"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0xFF
    p.write_bytes(bytes(data))


def _drop_keys(d: Path) -> None:
    (d / "keys.txt").unlink()


def _edit_keys(d: Path) -> None:
    p = d / "keys.txt"
    p.write_text(p.read_text().replace("b:0", "z:0"))


def _drop_manifest(d: Path) -> None:
    (d / "shard.json").unlink()


def _garble_manifest(d: Path) -> None:
    (d / "shard.json").write_text('{"rows": 2, "arr')


def _mistype_manifest(d: Path) -> None:  # valid JSON, wrong shape of record
    man = json.loads((d / "shard.json").read_text())
    man["arrays"]["pooled"] = "pooled.npy"
    (d / "shard.json").write_text(json.dumps(man))


def _drop_array(d: Path) -> None:
    (d / "layer_00.npy").unlink()


DAMAGE = {"truncated": (_truncate, "truncated"), "edited-bytes": (_edit_bytes, "checksum"),
          "no-keys": (_drop_keys, "no keys.txt"), "edited-keys": (_edit_keys, "keys.txt does not match"),
          "no-manifest": (_drop_manifest, "no shard.json"), "garbled-manifest": (_garble_manifest, "unreadable shard"),
          "mistyped-manifest": (_mistype_manifest, "inconsistent shard.json"),
          "no-array": (_drop_array, "no layer_00.npy")}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_shard_is_named_quarantined_and_its_keys_missing(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(tmp_path / "fs")
    good, good_layers = fill(store, ["a:0", "c:0"], seed=0)
    fill(store, ["b:0", "d:0"], seed=5)
    bad = shard_names(store)[1]
    hurt, needle = DAMAGE[damage]
    hurt(store.shards_dir / bad)
    with caplog.at_level(logging.WARNING, logger="synthdet.features.store"):
        reopened = open_store(store.dir.parent)
        wanted = ["a:0", "b:0", "c:0", "d:0"]
        reopened.verify(wanted)  # cheap checks ran on open; this hashes the arrays
    assert reopened.missing(wanted) == ["b:0", "d:0"]
    assert len(reopened.problems) == 1 and bad in reopened.problems[0] and needle in reopened.problems[0]
    assert any(bad in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert shard_names(reopened) == shard_names(store)[:1] and (reopened.dir / "quarantine" / bad).is_dir()
    pooled, layers = reopened.load(["c:0", "a:0"], layers=True)  # the intact shard still serves
    assert np.array_equal(pooled, good[::-1]) and np.array_equal(layers[1], good_layers[1][::-1])
    with pytest.raises(KeyError, match="damaged shards"):
        reopened.load(["b:0"])
    fresh, _ = fill(reopened, ["b:0", "d:0"], seed=7)  # recomputed: served from the new shard
    assert np.array_equal(open_store(store.dir.parent).load(["b:0", "d:0"])[0], fresh)


def test_checksums_are_verified_lazily_on_first_read(store: FeatureStore) -> None:
    fill(store, ["a:0", "b:0"], seed=0)
    (shard,) = shard_names(store)
    _edit_bytes(store.shards_dir / shard)
    reopened = open_store(store.dir.parent)
    assert reopened.problems == [] and "a:0" in reopened  # open reads no array
    with pytest.raises(KeyError, match="checksum"):
        reopened.load(["a:0"])
    assert reopened.missing(["a:0", "b:0"]) == ["a:0", "b:0"] and len(reopened.problems) == 1


def test_verify_all_and_once(store: FeatureStore) -> None:
    fill(store, ["a:0"], seed=0)
    fill(store, ["b:0"], seed=1)
    assert store.verify() == []
    first, second = shard_names(store)
    _edit_bytes(store.shards_dir / second)
    assert store.verify() == []  # this instance wrote and hashed them already
    problems = open_store(store.dir.parent).verify()
    assert len(problems) == 1 and second in problems[0]


# ------------------------------------------------------------------------------------------------ temp folders, other writers


def test_open_removes_only_dead_or_stale_temp_shards(store: FeatureStore) -> None:
    fill(store, ["a:0"])
    host = socket.gethostname()
    dead = store.shards_dir / f".tmp-0123-abcd-{dead_pid()}@{host}"
    live = store.shards_dir / f".tmp-0123-abce-{os.getpid()}@{host}"  # another writer, still running
    old = store.shards_dir / f".tmp-0123-abcf-{os.getpid()}@{host}"
    legacy = store.shards_dir / ".tmp-0123abcd"
    leftover = store.shards_dir / ".dead-0123-abcd"  # what a compact killed mid-removal leaves
    for d in (dead, live, old, legacy, leftover):
        d.mkdir()
        (d / "pooled.npy").write_bytes(b"\x93NUMPY half a file")  # what kill -9 mid-write leaves
    long_ago = time.time() - STALE_TEMP_S - 60
    os.utime(old, (long_ago, long_ago))
    reopened = open_store(store.dir.parent)
    assert len(reopened) == 1 and reopened.problems == []
    assert live.exists() and legacy.exists()  # a live writer's work (and an unknown young folder) is kept
    assert not dead.exists() and not old.exists() and not leftover.exists()


def test_shards_written_by_another_instance_are_picked_up(store: FeatureStore) -> None:
    fill(store, ["a:0"], seed=0)
    other = open_store(store.dir.parent)  # e.g. another process
    b, _ = fill(other, ["b:0"], seed=3)
    assert "b:0" not in store  # not seen yet …
    assert store.missing(["a:0", "b:0"]) == []  # … a miss rescans
    assert np.array_equal(store.load(["b:0"])[0], b)
    c, _ = fill(other, ["c:0"], seed=4)
    assert np.array_equal(store.load(["c:0"])[0], c)  # load rescans on a miss too


def test_load_survives_another_instance_compacting(store: FeatureStore) -> None:
    keys = [f"k{i}:0" for i in range(6)]
    ref = np.concatenate([fill(store, keys[i : i + 2], seed=i)[0] for i in range(0, 6, 2)])
    other = open_store(store.dir.parent)
    other.compact()
    assert len(shard_names(store)) == 1
    assert np.array_equal(store.load(keys)[0], ref) and store.problems == []


# ------------------------------------------------------------------------------------------------ compact


def test_compact_keeps_every_key(store: FeatureStore) -> None:
    keys = [f"k{i}:{v}" for i in range(9) for v in (0, 1)]
    for s in range(0, 18, 5):
        fill(store, keys[s : s + 5], seed=s)
    assert len(shard_names(store)) == 4
    before, before_layers = store.load(keys, layers=True)
    store.compact()
    assert len(shard_names(store)) == 1 and len(store) == 18
    assert not [p for p in store.shards_dir.iterdir() if p.name.startswith(".")]
    after, after_layers = store.load(keys, layers=True)
    assert np.array_equal(before, after)
    assert all(np.array_equal(a, b) for a, b in zip(before_layers, after_layers))
    reopened = open_store(store.dir.parent)
    assert len(reopened) == 18 and np.array_equal(reopened.load(keys)[0], before) and reopened.problems == []
    store.compact()  # one shard: a no-op
    assert shard_names(store) == shard_names(reopened)


def test_compact_drops_damaged_shards_instead_of_vouching_for_them(store: FeatureStore) -> None:
    a, _ = fill(store, ["a:0"], seed=0)
    fill(store, ["b:0"], seed=1)
    fill(store, ["c:0"], seed=2)
    _edit_bytes(store.shards_dir / shard_names(store)[1])
    reopened = open_store(store.dir.parent)
    reopened.compact()
    assert reopened.missing(["a:0", "b:0", "c:0"]) == ["b:0"] and len(reopened.problems) == 1
    assert np.array_equal(open_store(store.dir.parent).load(["a:0"])[0], a)


def test_compact_interrupted_before_removal_keeps_one_copy(store: FeatureStore) -> None:
    """A crash after the merged shard landed but before the old ones went: duplicates, still one answer per key."""
    keys = ["a:0", "b:0", "c:0"]
    ref = np.concatenate([fill(store, [k], seed=i)[0] for i, k in enumerate(keys)])
    old = shard_names(store)
    pooled, layers = store.load(keys, layers=True)
    store.append(keys, pooled, layers)  # the merged shard …
    (store.shards_dir / old[0]).rename(store.shards_dir / f".dead-{old[0]}")  # … and one old shard half-retired
    reopened = open_store(store.dir.parent)
    assert not (store.shards_dir / f".dead-{old[0]}").exists()
    assert np.array_equal(reopened.load(keys)[0], ref) and reopened.problems == []
    reopened.compact()
    assert len(shard_names(reopened)) == 1 and np.array_equal(open_store(store.dir.parent).load(keys)[0], ref)
