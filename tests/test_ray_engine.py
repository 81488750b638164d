"""The Ray Data engine (synthdet.engines.ray_data) on a local Ray with 2 CPUs: the same scores and the same stored
features as the local engine; the caller's backbone left where it was, and the store keyed by the actors' device.
Slow (Ray starts in ~10 s, each dataset ~5 s): behind the ``slow`` marker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from synthdet.backbones.base import Backbone, create_backbone  # noqa: E402
from synthdet.cli import app  # noqa: E402
from synthdet.data.demo import demo_data_dir  # noqa: E402
from synthdet.data.manifest import index  # noqa: E402
from synthdet.detectors.loading import load_detector  # noqa: E402
from synthdet.engines.base import create_engine  # noqa: E402
from synthdet.engines.stream import scan_images, score_stream  # noqa: E402
from synthdet.features.extract import FeatureStore, extract  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _paths(n: int) -> list[str]:
    paths = sorted(scan_images(demo_data_dir()))
    return paths[:: max(1, len(paths) // n)][:n]


def test_ray_scores_equal_local_scores(local_ray: None, tmp_path: Path) -> None:
    paths = [*_paths(20), str(tmp_path / "missing.jpg")]
    local = list(load_detector().predict_paths(paths, num_workers=0))
    out = tmp_path / "s.parquet"
    res = score_stream(create_engine("ray", actors=1, window=12).load(), paths, out)
    assert (res.scored, res.skipped) == (20, 1)
    assert pq.read_table(out).column("path").to_pylist() == paths  # input order, across windows
    rows = {p: (v, r) for p, v, r in zip(*(pq.read_table(out).column(c).to_pylist() for c in ("path", "prob", "reason")))}
    for path, prob, reason in local:
        if prob is None:
            assert rows[path] == (None, reason)
        else:
            assert abs(rows[path][0] - prob) < 1e-6


def test_ray_extract_writes_the_same_features(local_ray: None, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for p in _paths(8):
        (root / Path(p).name).write_bytes(Path(p).read_bytes())
    df = index(root)
    bb = create_backbone("effnet-lite0", device="cpu")
    a, b = FeatureStore.for_backbone(bb, tmp_path / "a"), FeatureStore.for_backbone(bb, tmp_path / "b")
    ra = extract(bb, df["path"].tolist(), df["sha256"].tolist(), a, views=[0, 1], num_workers=0)
    rb = extract(bb, df["path"].tolist(), df["sha256"].tolist(), b, views=[0, 1],
                 forward=create_engine("ray").features)
    assert ra.computed == rb.computed == 16
    keys = [f"{s}:{v}" for s in df["sha256"] for v in (0, 1)]
    (pa, la), (pb, lb) = a.load(keys, layers=True), b.load(keys, layers=True)
    assert np.array_equal(pa, pb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_a_ray_run_leaves_the_callers_backbone_alone(local_ray: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actors get a copy: the object Ray stores is not the caller's (it used to be, moved to the CPU)."""
    bb = create_backbone("effnet-lite0", device="cpu")
    state = {k: (v.data_ptr(), v.clone()) for k, v in bb.state_dict().items()}
    put, stored = ray.put, []
    monkeypatch.setattr(ray, "put", lambda obj, **kw: stored.append(obj) or put(obj, **kw))
    batches = list(create_engine("ray").features(bb, [(p, p, [0]) for p in _paths(3)], taps=False))
    assert sum(len(pairs) for pairs, *_ in batches) == 3
    (copy,) = [obj for obj in stored if isinstance(obj, Backbone)]  # Ray Data puts its own blocks too
    assert copy is not bb and not bb.folded
    for k, v in bb.state_dict().items():
        assert v.data_ptr() == state[k][0] and torch.equal(v, state[k][1])


def test_ray_extract_keys_the_store_by_the_actors_device(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``synthdet extract --engine ray`` on a machine whose backbone sits on a GPU: the CPU actors' features go to a
    ``device=cpu`` store (they used to be filed as the caller's CUDA/bf16 ones). The GPU is simulated: Ray's actors
    import the real class."""
    root = tmp_path / "imgs"
    root.mkdir()
    for p in _paths(2):
        (root / Path(p).name).write_bytes(Path(p).read_bytes())
    monkeypatch.setattr(Backbone, "device", property(lambda self: torch.device("cuda")))
    res = CliRunner().invoke(app, ["extract", str(root), "--engine", "ray", "--cache", str(tmp_path / "c"), "--quiet"])
    assert res.exit_code == 0, res.output
    (meta,) = (tmp_path / "c").glob("*/meta.json")
    assert json.loads(meta.read_text())["identity"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_backbone_stays_on_its_gpu(local_ray: None, tmp_path: Path) -> None:
    bb = create_backbone("effnet-lite0", device="cuda")
    engine = create_engine("ray")
    store = engine.store(bb, tmp_path)
    paths = _paths(2)
    res = extract(bb, paths, [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths], store,
                  forward=engine.features)
    assert res.computed == 2 and bb.device.type == "cuda" and store.identity["device"] == "cpu"
