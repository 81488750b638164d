"""The Ray Data engine (synthdet.engines.ray_data) on a local Ray with 2 CPUs: the same scores and the same stored
features as the local engine. Slow (Ray starts in ~10 s, each dataset ~5 s): behind the ``slow`` marker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from synthdet.backbones.base import create_backbone  # noqa: E402
from synthdet.data.demo import demo_data_dir  # noqa: E402
from synthdet.data.manifest import index  # noqa: E402
from synthdet.detectors.loading import load_detector  # noqa: E402
from synthdet.engines.local import scan_images, score_stream  # noqa: E402
from synthdet.engines.ray_data import RayScorer, ray_forward_batches  # noqa: E402
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
    res = score_stream(RayScorer(actors=1, window=12), paths, out)
    assert (res.scored, res.skipped) == (20, 1)
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
    rb = extract(bb, df["path"].tolist(), df["sha256"].tolist(), b, views=[0, 1], forward=ray_forward_batches)
    assert ra.computed == rb.computed == 16
    keys = [f"{s}:{v}" for s in df["sha256"] for v in (0, 1)]
    (pa, la), (pb, lb) = a.load(keys, layers=True), b.load(keys, layers=True)
    assert np.array_equal(pa, pb) and all(np.array_equal(x, y) for x, y in zip(la, lb))
