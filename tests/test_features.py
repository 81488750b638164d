"""features: the crash-safe feature store, and extraction with a real backbone that resumes after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode_image, synthetic_photo, write_image

import synthdet
from synthdet.backbones import Backbone
from synthdet.data import sha256_file
from synthdet.features import FeatureStore, default_cache_dir, extract
from synthdet.pixels import load_image

F16_TOL = dict(rtol=2e-3, atol=2e-3)  # float16 storage: ~1e-3 relative resolution


def rand(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def shard_names(store: FeatureStore) -> list[str]:
    return sorted(p.name for p in store.shards_dir.iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ FeatureStore


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "fs", "toy@random-abc", embed_dim=8, layer_dims=[3, 5])


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
    # persistent: a new instance over the same folder sees the same data
    again = FeatureStore(store.dir.parent, "toy@random-abc", embed_dim=8, layer_dims=[3, 5])
    assert len(again) == 6 and np.array_equal(again.load(order)[0], got)


def test_missing_and_load_errors(store: FeatureStore) -> None:
    store.append(["a:0", "b:0"], rand(2, 8, 0), [rand(2, 3, 1), rand(2, 5, 2)])
    assert store.missing(["a:0", "c:0", "b:0", "d:1"]) == ["c:0", "d:1"]
    assert store.missing([]) == []
    with pytest.raises(KeyError, match="synthdet extract"):
        store.load(["a:0", "c:0"])


def test_loads_are_memory_mapped(store: FeatureStore) -> None:
    store.append(["a:0", "b:0"], rand(2, 8, 0), [rand(2, 3, 1), rand(2, 5, 2)])
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
    assert len(store) == 0
    store.append([], np.zeros((0, 8), np.float32))  # nothing to do
    assert shard_names(store) == []


def test_duplicate_keys_resolve_to_first(store: FeatureStore) -> None:
    first, second = rand(1, 8, 0), rand(1, 8, 1)
    store.append(["a:0"], first, [rand(1, 3, 1), rand(1, 5, 2)])
    store.append(["a:0"], second, [rand(1, 3, 3), rand(1, 5, 4)])
    assert len(store) == 1
    assert np.array_equal(store.load(["a:0"])[0], first.astype(np.float16))


def test_compact_keeps_every_key(store: FeatureStore) -> None:
    keys = [f"k{i}:{v}" for i in range(9) for v in (0, 1)]
    pooled, l0, l1 = rand(18, 8, 0), rand(18, 3, 1), rand(18, 5, 2)
    for s in range(0, 18, 5):
        store.append(keys[s : s + 5], pooled[s : s + 5], [l0[s : s + 5], l1[s : s + 5]])
    assert len(shard_names(store)) == 4
    before, before_layers = store.load(keys, layers=True)
    store.compact()
    assert len(shard_names(store)) == 1 and len(store) == 18
    after, after_layers = store.load(keys, layers=True)
    assert np.array_equal(before, after)
    assert all(np.array_equal(a, b) for a, b in zip(before_layers, after_layers))
    reopened = FeatureStore(store.dir.parent, "toy@random-abc", embed_dim=8, layer_dims=[3, 5])
    assert len(reopened) == 18 and np.array_equal(reopened.load(keys)[0], before)
    store.compact()  # one shard: a no-op
    assert shard_names(store) == shard_names(reopened)


def test_meta_mismatch(store: FeatureStore) -> None:
    root = store.dir.parent
    with pytest.raises(ValueError, match="store holds"):
        FeatureStore(root, "toy@random-abc", embed_dim=9, layer_dims=[3, 5])
    with pytest.raises(ValueError, match="store holds"):
        FeatureStore(root, "toy@random-abc", embed_dim=8, layer_dims=[3])
    other = FeatureStore(root, "toy@random-xyz", embed_dim=9)  # another identity: its own folder
    assert other.dir != store.dir and json.loads((other.dir / "meta.json").read_text())["embed_dim"] == 9


def test_open_removes_stale_temp_shards(store: FeatureStore) -> None:
    store.append(["a:0"], rand(1, 8, 0), [rand(1, 3, 1), rand(1, 5, 2)])
    stale = store.shards_dir / ".tmp-0123abcd"
    stale.mkdir()
    (stale / "pooled.npy").write_bytes(b"\x93NUMPY half a file")  # what kill -9 mid-write leaves
    reopened = FeatureStore(store.dir.parent, "toy@random-abc", embed_dim=8, layer_dims=[3, 5])
    assert not stale.exists() and len(reopened) == 1


def test_default_cache_dir_follows_env(feature_cache: Path, effnet_lite0: Backbone) -> None:
    assert default_cache_dir() == feature_cache / "features"
    s = FeatureStore.for_backbone(effnet_lite0)
    assert s.dir == feature_cache / "features" / effnet_lite0.id
    assert s.embed_dim == 1280 and s.layer_dims == effnet_lite0.layer_dims


# ------------------------------------------------------------------------------------------------ extract()


@pytest.fixture
def image_set(tmp_path: Path) -> tuple[list[str], list[str], Path]:
    """Six real images (JPEG/PNG/WebP, mixed shapes) and one truncated JPEG."""
    paths = []
    for i, (name, w, h) in enumerate([("a.jpg", 160, 120), ("b.png", 96, 96), ("c.webp", 120, 160),
                                       ("d.jpg", 300, 200), ("e.png", 64, 48), ("f.jpg", 100, 100)]):
        paths.append(str(write_image(tmp_path / "imgs" / name, synthetic_photo(w, h, seed=40 + i))))
    data = encode_image(synthetic_photo(200, 150, seed=99), "JPEG")
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(data[: len(data) // 2])
    paths.insert(3, str(bad))
    return paths, [sha256_file(p) for p in paths], bad


def direct_features(bb: Backbone, path: str, sha: str, view: int) -> tuple[np.ndarray, list[np.ndarray]]:
    pre = bb.preprocess
    x = pre(load_image(path, draft_size=pre.draft_size), view=view, key=sha)[None]
    with torch.inference_mode():
        pooled, layers = bb(x, taps=True)
    return pooled[0].numpy(), [t[0].numpy() for t in layers]


def test_extract_real_backbone_skips_corrupt_and_caches(
    feature_cache: Path, effnet_lite0: Backbone, image_set: tuple[list[str], list[str], Path]
) -> None:
    paths, shas, bad = image_set
    store = FeatureStore.for_backbone(effnet_lite0)
    res = extract(effnet_lite0, paths, shas, store, views=(0, 1), batch_size=4, num_workers=0, progress=False)
    assert res.computed == 12 and res.cached == 0
    assert len(res.skipped) == 1
    assert res.skipped[0].path == str(bad) and res.skipped[0].reason.split(":")[0] in ("truncated", "corrupt")
    good = [(p, s) for p, s in zip(paths, shas) if p != str(bad)]
    keys = [f"{s}:{v}" for _, s in good for v in (0, 1)]
    assert store.missing(keys) == [] and len(store) == 12
    bad_sha = shas[paths.index(str(bad))]
    assert f"{bad_sha}:0" not in store
    # the stored features are the backbone's output for the preprocessed pixels (float16)
    pooled, layers = store.load(keys, layers=True)
    assert [a.shape[1] for a in layers] == effnet_lite0.layer_dims
    for (p, s), row in zip(good[:3], range(0, 6, 2)):
        for v in (0, 1):
            ref, ref_layers = direct_features(effnet_lite0, p, s, v)
            np.testing.assert_allclose(pooled[row + v].astype(np.float32), ref, **F16_TOL)
            for lay, ref_lay in zip(layers, ref_layers):
                np.testing.assert_allclose(lay[row + v].astype(np.float32), ref_lay, **F16_TOL)
    assert not np.allclose(pooled[0], pooled[1])  # view 1 is a different view
    # second run: nothing computed, everything cached; the corrupt file is reported again
    shards = shard_names(store)
    again = extract(effnet_lite0, paths, shas, store, views=(0, 1), batch_size=4, num_workers=0, progress=False)
    assert again.computed == 0 and again.cached == 12 and [s.path for s in again.skipped] == [str(bad)]
    assert shard_names(store) == shards
    # adding a view computes only that view
    more = extract(effnet_lite0, paths, shas, store, views=(0, 1, 2), batch_size=4, num_workers=0, progress=False)
    assert more.computed == 6 and more.cached == 12


def test_extract_dedups_copies_and_uses_workers(
    tmp_path: Path, effnet_lite0: Backbone, image_set: tuple[list[str], list[str], Path]
) -> None:
    paths, shas, bad = image_set
    good = [(p, s) for p, s in zip(paths, shas) if p != str(bad)][:3]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(Path(good[0][0]).read_bytes())
    ps = [p for p, _ in good] + [str(copy)]
    ss = [s for _, s in good] + [sha256_file(copy)]
    serial = FeatureStore(tmp_path / "a", effnet_lite0.id, embed_dim=1280, layer_dims=effnet_lite0.layer_dims)
    res = extract(effnet_lite0, ps, ss, serial, num_workers=0, progress=False)
    assert res.computed == 3 and len(serial) == 3  # the copy shares its sha256: computed once
    parallel = FeatureStore(tmp_path / "b", effnet_lite0.id, embed_dim=1280, layer_dims=effnet_lite0.layer_dims)
    res2 = extract(effnet_lite0, ps, ss, parallel, num_workers=2, batch_size=2, flush_every=1, progress=False)
    assert res2.computed == 3 and len(shard_names(parallel)) >= 2
    keys = [f"{s}:0" for s in ss[:3]]
    np.testing.assert_allclose(
        serial.load(keys)[0].astype(np.float32), parallel.load(keys)[0].astype(np.float32), **F16_TOL
    )


def test_extract_without_layer_taps(tmp_path: Path, resnet18_random: Backbone,
                                    image_set: tuple[list[str], list[str], Path]) -> None:
    paths, shas, bad = image_set
    store = FeatureStore(tmp_path / "s", resnet18_random.id, embed_dim=512)
    res = extract(resnet18_random, paths, shas, store, num_workers=0, progress=False)
    assert res.computed == 6 and len(res.skipped) == 1
    assert not any(p.name.startswith("layer_") for s in shard_names(store) for p in (store.shards_dir / s).iterdir())


# ------------------------------------------------------------------------------------------------ kill -9 resume

KILL_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from synthdet.backbones import create_backbone
from synthdet.features import FeatureStore, extract

cfg = json.loads(open(sys.argv[1]).read())
bb = create_backbone("effnet-lite0", device="cpu")
store = FeatureStore.for_backbone(bb, cfg["root"])
print("extracting", bb.id, flush=True)
extract(bb, cfg["paths"], cfg["shas"], store, batch_size=4, num_workers=0, flush_every=4, progress=False)
print("finished", flush=True)
"""


def test_resume_after_kill_9(tmp_path: Path, effnet_lite0: Backbone) -> None:
    n = 48
    paths = [str(write_image(tmp_path / "imgs" / f"{i:03d}{('.jpg', '.png')[i % 2]}", synthetic_photo(192, 144, seed=i)))
             for i in range(n)]
    shas = [sha256_file(p) for p in paths]
    root = tmp_path / "cache"
    cfg = tmp_path / "job.json"
    cfg.write_text(json.dumps({"root": str(root), "paths": paths, "shas": shas}))
    script = tmp_path / "job.py"
    script.write_text(KILL_SCRIPT)
    src = str(Path(synthdet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "job.log"
    shards_dir = root / effnet_lite0.id / "shards"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(cfg)], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                done = [p for p in shards_dir.iterdir() if not p.name.startswith(".")] if shards_dir.exists() else []
                if len(done) >= 2:
                    break
                assert proc.poll() is None, f"extract exited early:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no shards after 120 s:\n{log.read_text()}"
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert "finished" not in log.read_text()
    assert effnet_lite0.id in log.read_text()  # same identity in both processes

    # what kill -9 in the middle of a write leaves behind (may or may not exist from the real kill)
    stale = shards_dir / ".tmp-killed"
    stale.mkdir(exist_ok=True)
    (stale / "pooled.npy").write_bytes(b"\x93NUMPY\x01\x00partial")

    store = FeatureStore.for_backbone(effnet_lite0, root)
    assert not list(shards_dir.glob(".tmp-*"))  # stale temp folders removed on open
    for shard in shard_names(store):  # every indexed shard is complete and consistent
        keys = (shards_dir / shard / "keys.txt").read_text().split()
        assert np.load(shards_dir / shard / "pooled.npy").shape == (len(keys), 1280)
        for i, d in enumerate(effnet_lite0.layer_dims):
            assert np.load(shards_dir / shard / f"layer_{i:02d}.npy").shape == (len(keys), d)
    all_keys = [f"{s}:0" for s in shas]
    present = [k for k in all_keys if k in store]
    assert 2 * 4 <= len(present) < n  # at least the two shards seen, not everything
    assert len(present) % 4 == 0  # whole shards only: flush_every=4

    # the surviving features equal a fresh computation for those images
    fresh = FeatureStore(tmp_path / "fresh", effnet_lite0.id, embed_dim=1280, layer_dims=effnet_lite0.layer_dims)
    sel = [i for i, k in enumerate(all_keys) if k in store]
    extract(effnet_lite0, [paths[i] for i in sel], [shas[i] for i in sel], fresh, num_workers=0, progress=False)
    got, got_layers = store.load(present, layers=True)
    ref, ref_layers = fresh.load(present, layers=True)
    np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), **F16_TOL)
    for a, b in zip(got_layers, ref_layers):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), **F16_TOL)

    # resuming computes exactly the missing ones
    res = extract(effnet_lite0, paths, shas, store, batch_size=4, num_workers=0, flush_every=4, progress=False)
    assert res.computed == n - len(present) and res.cached == len(present) and res.skipped == []
    assert store.missing(all_keys) == [] and len(store) == n
    reopened = FeatureStore.for_backbone(effnet_lite0, root)
    assert len(reopened) == n
