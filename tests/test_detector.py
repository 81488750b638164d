"""Training pipeline and saved detectors, on a slice of the demo data shipped in the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import small_demo_csv

from synthdet.calibrate import f1_optimal_threshold
from synthdet.data import index
from synthdet.demo import demo_data_dir
from synthdet.detector import Detector, default_detector_path
from synthdet.train import load_features, train_detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("train")
    csv = small_demo_csv(tmp)
    res = train_detector(csv, backbone="effnet-lite0", head="logreg", n_views=2, cache_dir=tmp / "cache",
                         out=tmp / "det", num_workers=0, progress=False)
    return tmp, res


def test_train_saves_complete_card(trained) -> None:
    tmp, res = trained
    det_dir = tmp / "det"
    assert (det_dir / "card.json").is_file() and (det_dir / "head.safetensors").is_file()
    det = Detector.load(det_dir)
    card = det.card
    assert card.backbone == "effnet-lite0" and card.weights_id != "random"
    assert card.preprocess.jpeg_quality == 90 and card.head == "logreg"
    assert 0.0 < card.threshold < 1.0
    assert len(card.data["manifest_hash"]) == 16
    splits = card.data["splits"]
    assert set(splits) == {"fit", "calib", "test"} and sum(s["n"] for s in splits.values()) == 48
    for key in ("roc_auc", "ap", "eer", "at_0.5", "at_threshold"):
        assert key in card.metrics["val"]


def test_threshold_is_chosen_on_calibration_split_only(trained) -> None:
    tmp, res = trained
    from synthdet.features import FeatureStore

    det = res.detector
    store = FeatureStore.for_backbone(det.backbone, tmp / "cache")
    calib = res.manifest[res.manifest.split == "calib"]
    X, _ = load_features(store, calib.sha256.tolist(), [0], "pooled")
    expected = f1_optimal_threshold(calib.label.to_numpy(), det.head.predict_proba(X)[:, 1])
    assert det.threshold == pytest.approx(expected)


def test_saved_detector_scores_files_like_training_did(trained) -> None:
    """Fresh decoding + forward of the held-out files reproduces the cached-feature probabilities."""
    tmp, res = trained
    det = Detector.load(tmp / "det")
    val = res.manifest[res.manifest.split == "test"].drop_duplicates("sha256")
    out = list(det.predict_paths(val.path.tolist(), num_workers=0, progress=False))
    assert [p for p, _, _ in out] == val.path.tolist()
    probs = np.array([p for _, p, _ in out])
    assert np.allclose(probs, res.val_prob, atol=0.02)


def test_predict_paths_skips_bad_files_and_keeps_order(trained, tmp_path: Path) -> None:
    tmp, res = trained
    det = Detector.load(tmp / "det")
    good = res.manifest.path.iloc[:3].tolist()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Path(good[0]).read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = [good[0], str(bad), good[1], str(empty), good[2]]
    out = list(det.predict_paths(paths, num_workers=0, chunk=2, progress=False))
    assert [p for p, _, _ in out] == paths
    assert out[1][1] is None and out[1][2].startswith(("truncated", "corrupt"))
    assert out[3][1] is None and out[3][2].startswith("empty-file")
    assert all(0.0 <= out[i][1] <= 1.0 for i in (0, 2, 4))


def test_rerun_uses_the_cache(trained) -> None:
    tmp, _ = trained
    res = train_detector(small_demo_csv(tmp), backbone="effnet-lite0", head="logreg", n_views=2,
                         cache_dir=tmp / "cache", num_workers=0, progress=False)
    assert res.extract.computed == 0 and res.extract.cached > 0


def test_training_rejects_single_class(tmp_path: Path) -> None:
    from synthdet.data import ManifestError

    csv = small_demo_csv(tmp_path, 6)
    df = pd.read_csv(csv)
    df[df.label == 0].to_csv(csv, index=False)
    with pytest.raises(ManifestError, match="both classes"):
        train_detector(csv, head="logreg", cache_dir=tmp_path / "c", num_workers=0, progress=False)


def test_shipped_default_detector_predicts_offline() -> None:
    if not (default_detector_path() / "card.json").is_file():
        pytest.fail("the default detector is not shipped in the package (run scripts/train_default.py)")
    det = Detector.load()
    assert det.card.data["n_images"] > 800  # trained on the full development set
    demo = demo_data_dir()
    paths = sorted((demo / "real").iterdir())[:2] + sorted((demo / "fake").iterdir())[:2]
    out = list(det.predict_paths(paths, num_workers=0, progress=False))
    assert all(p is not None and 0 <= p <= 1 for _, p, _ in out)


def test_index_of_demo_data_is_clean() -> None:
    df = index(demo_data_dir() / "manifest.csv", progress=False)
    assert df.ok.all() and set(df.label) == {0, 1} and len(df) == 200
    assert (df.sha256.str.len() == 64).all()


def test_detector_load_rejects_non_detector(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a synthdet detector"):
        Detector.load(tmp_path)
    shutil.rmtree(tmp_path)
