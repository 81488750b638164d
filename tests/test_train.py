"""A trained detector's card describes the saved model: every figure is recomputable from the saved head, at the
saved threshold, on the rows the card names — including after a refit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import small_demo_csv

from synthdet.data.manifest import read_manifest
from synthdet.data.splits import RowSet, SplitPlan
from synthdet.detectors.detector import Detector
from synthdet.detectors.loading import load_detector
from synthdet.evaluation.metrics import binary_metrics
from synthdet.features.extract import FeatureStore
from synthdet.training.train import ProbeConfig, load_features, train_detector


@pytest.fixture(scope="module")
def refitted(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("refit")
    config = ProbeConfig(head="logreg", n_views=2, cache_dir=tmp / "cache", num_workers=0)
    res = train_detector(small_demo_csv(tmp, n_per_class=30), config, out=tmp / "det", refit=True)
    return tmp, res


def recompute(det: Detector, plan: SplitPlan, manifest: pd.DataFrame, cache) -> dict:
    """The held-out metrics of the saved head at the saved threshold, from cached features of the plan's test rows."""
    test = manifest[manifest["sha256"].isin(set(manifest["sha256"][plan.role_of(manifest["sha256"]) == "test"]))]
    test = test.drop_duplicates("sha256")
    X, _ = load_features(FeatureStore.for_backbone(det.backbone, cache), test["sha256"].tolist(), [0], det.card.features)
    return binary_metrics(test["label"].to_numpy(), det.predict_features(X), threshold=det.threshold), test


def test_saved_threshold_is_the_one_its_tuned_metrics_use(refitted) -> None:
    """Defect 5: the shipped card had threshold 0.585 but "tuned" metrics at 0.381, from before the refit."""
    tmp, res = refitted
    card = load_detector(tmp / "det").card
    val = card.metrics["val"]
    assert val["model"] == "saved" and val["rows"] == "held-out" and val["role"] == "test"
    assert val["threshold"] == card.threshold == val["at_threshold"]["threshold"]
    pre = card.metrics["pre_refit"]
    assert pre["model"].startswith("pre-refit") and "not the saved model" in pre["model"]
    assert card.data["refit_on"] == "fit+calib" and card.data["threshold_from"].startswith("out-of-fold")


def test_card_metrics_recompute_exactly_from_the_saved_detector(refitted) -> None:
    tmp, res = refitted
    det = load_detector(tmp / "det")
    plan = SplitPlan.load(tmp / "det" / "plan.json")
    manifest = read_manifest(tmp / "det" / "manifest.csv")
    assert plan.id == det.card.data["split_plan"]["id"]
    again, test = recompute(det, plan, manifest, tmp / "cache")
    val = det.card.metrics["val"]
    assert val["rows_digest"] == plan.rows("test").digest == RowSet.of(test["sha256"]).digest
    assert val["n"] == again["n"] == len(test)
    for key in ("roc_auc", "ap", "eer", "at_threshold", "at_0.5"):
        assert val[key] == again[key], key
    # and through the inference path (fresh decode), the same probabilities up to resampling noise
    fresh = np.array([p for _, p, _ in det.predict_paths(test["path"].tolist(), num_workers=0)])
    assert np.allclose(fresh, res.val_prob, atol=0.02)


def test_card_rows_are_what_the_saved_model_saw_and_exclude_the_test_rows(refitted) -> None:
    tmp, res = refitted
    card = load_detector(tmp / "det").card
    plan = res.plan
    assert card.rows["fit"].hashes == plan.rows("fit", "calib").hashes == card.rows["calib"].hashes  # refit: fit + calib
    assert card.rows["fit"].phashes  # near-duplicate codes recorded too
    test = res.manifest.loc[res.manifest["split"] == "test", "sha256"]
    assert len(test) > 0 and not card.rows["fit"].overlap(test)
    assert sum(s["n"] for s in card.data["splits"].values()) == card.data["n_images"] == plan.n_images


def test_without_refit_the_rows_are_fit_and_calib_apart(tmp_path) -> None:
    csv = small_demo_csv(tmp_path, n_per_class=16)
    res = train_detector(csv, ProbeConfig(head="logreg", n_views=1, cache_dir=tmp_path / "cache", num_workers=0))
    card = res.detector.card
    assert card.rows["fit"].hashes == res.plan.rows("fit").hashes and card.rows["calib"].hashes == res.plan.rows("calib").hashes
    assert "pre_refit" not in card.metrics and card.metrics["val"]["threshold"] == card.threshold
