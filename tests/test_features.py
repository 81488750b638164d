"""features: extraction with a real backbone into the store — keyed by its full identity, refusing files changed since
they were indexed, repairing damaged shards, sharing one cache between concurrent processes, resuming after kill -9,
every time with features identical to a clean single-process run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode_image, synthetic_photo, write_image
from test_store import DAMAGE

import synthdet
from synthdet.backbones.base import Backbone, create_backbone
from synthdet.features.extract import FeatureStore, extract, store_identity, store_key
from synthdet.io.files import default_cache_dir, sha256_file
from synthdet.io.pixels import load_image

F16_TOL = dict(rtol=2e-3, atol=2e-3)  # float16 storage: ~1e-3 relative resolution


def shard_names(store: FeatureStore) -> list[str]:
    return sorted(p.name for p in store.shards_dir.iterdir() if not p.name.startswith("."))


def test_store_folder_is_keyed_by_the_full_identity(feature_cache: Path, effnet_lite0: Backbone) -> None:
    assert default_cache_dir() == feature_cache / "features"
    s = FeatureStore.for_backbone(effnet_lite0)
    ident = store_identity(effnet_lite0)
    assert s.dir == feature_cache / "features" / store_key(ident) and s.dir.name.startswith(effnet_lite0.id + "__")
    assert s.embed_dim == 1280 and s.layer_dims == effnet_lite0.layer_dims
    meta = json.loads((s.dir / "meta.json").read_text())
    assert meta["identity"] == ident and meta["embed_dim"] == 1280
    import PIL
    import timm

    assert ident == {"backbone": effnet_lite0.id, "torch": ".".join(torch.__version__.split(".")[:2]),
                     "timm": ".".join(timm.__version__.split(".")[:2]), "pillow": ".".join(PIL.__version__.split(".")[:2]),
                     "dtype": "float16", "device": "cpu"}
    cuda = store_identity(effnet_lite0, "cuda:1")  # bf16 autocast on CUDA: another folder (no GPU needed to say so)
    assert cuda["device"] == "cuda" and store_key(cuda) != s.dir.name


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


def test_extract_refuses_a_file_changed_since_indexed(
    tmp_path: Path, effnet_lite0: Backbone, capfd: pytest.CaptureFixture[str]
) -> None:
    a = write_image(tmp_path / "a.jpg", synthetic_photo(96, 72, seed=1))
    b = write_image(tmp_path / "b.png", synthetic_photo(96, 72, seed=2))
    shas = [sha256_file(a), sha256_file(b)]  # indexed …
    write_image(a, synthetic_photo(96, 72, seed=3))  # … then the file is replaced by another picture
    new = sha256_file(a)
    store = FeatureStore.for_backbone(effnet_lite0, tmp_path / "cache")
    res = extract(effnet_lite0, [str(a), str(b)], shas, store, num_workers=0)
    assert res.computed == 1 and [s.path for s in res.skipped] == [str(a)]
    assert res.skipped[0].reason == f"changed-since-indexed: manifest sha {shas[0][:16]}… file sha {new[:16]}…"
    reopened = FeatureStore.for_backbone(effnet_lite0, tmp_path / "cache")
    assert reopened.missing([f"{shas[0]}:0", f"{new}:0", f"{shas[1]}:0"]) == [f"{shas[0]}:0", f"{new}:0"]
    assert capfd.readouterr().err == ""  # library calls draw no progress bar unless asked
    # indexed again, the new picture is computed under its own hash
    assert extract(effnet_lite0, [str(a)], [new], store, num_workers=0).computed == 1
    np.testing.assert_allclose(store.load([f"{new}:0"])[0][0].astype(np.float32),
                               direct_features(effnet_lite0, str(a), new, 0)[0], **F16_TOL)


# ------------------------------------------------------------------------------------------------ recovery: one reference

Features = tuple[np.ndarray, list[np.ndarray]]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str], Features]:
    """18 real images and their features from a clean single-process extraction (the reference for every case)."""
    effnet_lite0 = create_backbone("effnet-lite0", device="cpu")
    root = tmp_path_factory.mktemp("photos")
    paths = [str(write_image(root / f"{i:02d}{('.jpg', '.png', '.webp')[i % 3]}", synthetic_photo(96, 72, seed=200 + i)))
             for i in range(18)]
    shas = [sha256_file(p) for p in paths]
    clean = FeatureStore.for_backbone(effnet_lite0, root / "clean")
    extract(effnet_lite0, paths, shas, clean, num_workers=0)
    return paths, shas, clean.load([f"{s}:0" for s in shas], layers=True)


def assert_same_features(store: FeatureStore, shas: list[str], ref: Features) -> None:
    """Bit-identical to the reference: nothing damaged, stale or half-written is ever served."""
    pooled, layers = store.load([f"{s}:0" for s in shas], layers=True)
    rows = len(shas)
    assert np.array_equal(pooled, ref[0][:rows])
    assert len(layers) == len(ref[1]) and all(np.array_equal(a, b[:rows]) for a, b in zip(layers, ref[1]))


@pytest.mark.parametrize("damage", ["truncated", "edited-bytes", "no-keys", "no-manifest"])
def test_extract_recomputes_a_damaged_shard(
    tmp_path: Path, effnet_lite0: Backbone, photos: tuple[list[str], list[str], Features], damage: str
) -> None:
    paths, shas, ref = photos
    paths, shas = paths[:6], shas[:6]
    store = FeatureStore.for_backbone(effnet_lite0, tmp_path)
    extract(effnet_lite0, paths, shas, store, batch_size=2, num_workers=0, flush_every=2)
    names = shard_names(store)
    assert len(names) == 3
    hurt, what = DAMAGE[damage]
    hurt(store.shards_dir / names[1])
    reopened = FeatureStore.for_backbone(effnet_lite0, tmp_path)
    res = extract(effnet_lite0, paths, shas, reopened, num_workers=0)  # never a crash: named, set aside, redone
    assert res.computed == 2 and res.cached == 4 and res.skipped == []
    assert len(reopened.problems) == 1 and names[1] in reopened.problems[0] and what in reopened.problems[0]
    assert_same_features(reopened, shas, ref)
    again = FeatureStore.for_backbone(effnet_lite0, tmp_path)
    assert again.problems == [] and again.verify() == []
    assert_same_features(again, shas, ref)


# ------------------------------------------------------------------------------------------------ other processes

JOB_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from synthdet.backbones.base import create_backbone
from synthdet.features.extract import FeatureStore, extract

cfg = json.loads(open(sys.argv[1]).read())
bb = create_backbone("effnet-lite0", device="cpu")
print("extracting", bb.id, flush=True)
computed, step = 0, cfg["open_every"]
for i in range(0, len(cfg["paths"]), step):  # a fresh open per chunk, as repeated `synthdet extract` calls do
    store = FeatureStore.for_backbone(bb, cfg["root"])
    res = extract(bb, cfg["paths"][i:i + step], cfg["shas"][i:i + step], store, batch_size=2, num_workers=0,
                  flush_every=cfg["flush_every"])
    assert not res.skipped and not store.problems, (res.skipped, store.problems)
    computed += res.computed
print("finished", computed, flush=True)
"""


def spawn(tmp_path: Path, name: str, cfg: dict) -> tuple[subprocess.Popen, Path]:
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    src = str(Path(synthdet.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{name}.json")], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    return proc, log


def test_two_processes_extract_into_one_cache(
    tmp_path: Path, effnet_lite0: Backbone, photos: tuple[list[str], list[str], Features]
) -> None:
    paths, shas, ref = photos
    root = tmp_path / "cache"
    shards_dir = FeatureStore.for_backbone(effnet_lite0, root).shards_dir
    live = shards_dir / f".tmp-0-0-{os.getpid()}@{socket.gethostname()}"  # a third writer, mid-shard
    live.mkdir()
    (live / "pooled.npy").write_bytes(b"\x93NUMPY partial")
    proc, log = spawn(tmp_path, "other", {"root": str(root), "paths": paths[:12], "shas": shas[:12], "open_every": 3,
                                          "flush_every": 1})
    deadline = time.monotonic() + 120
    while "extracting" not in log.read_text():  # the other process is up: extract images 6..17 here meanwhile
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)
    mine = 0
    for i in range(6, 18, 3):  # a fresh open per chunk, as repeated `synthdet extract` calls do
        here = FeatureStore.for_backbone(effnet_lite0, root)
        res = extract(effnet_lite0, paths[i:i + 3], shas[i:i + 3], here, batch_size=2, num_workers=0, flush_every=1)
        assert not res.skipped and not here.problems
        mine += res.computed
    assert proc.wait(timeout=300) == 0, log.read_text()
    theirs = int(log.read_text().split("finished")[1])
    assert mine <= 12 and theirs <= 12 and mine + theirs >= 18  # images 6..11 are wanted by both
    store = FeatureStore.for_backbone(effnet_lite0, root)
    assert live.exists() and [p.name for p in shards_dir.glob(".tmp-*")] == [live.name]  # nobody's work deleted
    assert store.missing([f"{s}:0" for s in shas]) == [] and store.problems == []
    assert_same_features(store, shas, ref)
    store.compact()
    assert len(shard_names(store)) == 1
    assert_same_features(FeatureStore.for_backbone(effnet_lite0, root), shas, ref)


def test_resume_after_kill_9(tmp_path: Path, effnet_lite0: Backbone, photos: tuple[list[str], list[str], Features]) -> None:
    paths, shas, ref = photos
    n = len(paths)
    root = tmp_path / "cache"
    shards_dir = FeatureStore.for_backbone(effnet_lite0, root).shards_dir
    proc, log = spawn(tmp_path, "job", {"root": str(root), "paths": paths, "shas": shas, "open_every": n,
                                        "flush_every": 2})
    try:
        deadline = time.monotonic() + 120
        while True:  # kill while a shard is being written if we catch one, else after three shards
            names = [p.name for p in shards_dir.iterdir()]
            done = [x for x in names if not x.startswith(".")]
            if len(done) >= 3 or (len(done) >= 1 and any(x.startswith(".tmp-") for x in names)):
                break
            assert proc.poll() is None, f"extract exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no shards after 120 s:\n{log.read_text()}"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    assert "finished" not in log.read_text()
    assert effnet_lite0.id in log.read_text()  # same identity in both processes

    # what kill -9 in the middle of a write leaves behind (may or may not exist from the real kill)
    stale = shards_dir / f".tmp-0-0-{proc.pid}@{socket.gethostname()}"
    stale.mkdir(exist_ok=True)
    (stale / "pooled.npy").write_bytes(b"\x93NUMPY\x01\x00partial")

    store = FeatureStore.for_backbone(effnet_lite0, root)
    assert not list(shards_dir.glob(".tmp-*")) and store.problems == []  # the dead writer's temp folders removed
    all_keys = [f"{s}:0" for s in shas]
    present = [k for k in all_keys if k in store]
    assert 2 <= len(present) < n and len(present) % 2 == 0  # whole shards only: flush_every=2
    assert store.verify() == []

    # resuming computes exactly the missing ones, and everything equals the clean run
    res = extract(effnet_lite0, paths, shas, store, batch_size=2, num_workers=0, flush_every=2)
    assert res.computed == n - len(present) and res.cached == len(present) and res.skipped == []
    assert_same_features(store, shas, ref)
    reopened = FeatureStore.for_backbone(effnet_lite0, root)
    assert len(reopened) == n and reopened.verify() == []
    assert_same_features(reopened, shas, ref)


def test_native_training_views_are_cut_from_the_full_decode_not_the_reduced_one(tmp_path: Path) -> None:
    """The decoder reduces a large image before the downscaled views; a native view must see every pixel: its ramp
    keeps the slope of the file (a window of a 2x-reduced decode would be twice as steep)."""
    from PIL import Image

    from synthdet.features.extract import ViewsDecoder
    from synthdet.io.pixels import Preprocess, ViewPolicy

    h, w = 1200, 1600
    yy, xx = np.mgrid[0:h, 0:w]
    ramps = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), np.full((h, w), 128.0)], axis=2).round().astype(np.uint8)
    path = tmp_path / "big.png"
    Image.fromarray(ramps).save(path)
    pre = Preprocess(size=96, scale="native", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                     views=ViewPolicy(p_native=0.5, jpeg_quality=(100, 100), p_flip=0.0, p_grayscale=0.0,
                                      p_downscale=0.0))
    assert pre.draft_size < min(h, w) // 2  # the other training views come from a reduced decode
    native = next(v for v in range(1, 40) if pre.is_native_view(v, "key"))
    _, tensors, err, _ = ViewsDecoder(pre, 10**8)[(0, (str(path), "key", [native]))]
    assert err == "" and tensors is not None
    red = tensors[0][0].numpy() * 255
    slope = np.polyfit(np.arange(red.shape[1]), red.mean(axis=0), 1)[0]
    assert slope == pytest.approx(255 / (w - 1), rel=0.05)
