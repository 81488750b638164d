"""Evaluation runs: a run folder round-trips; which rows each figure was computed on (held-out, in-sample or of
unknown provenance) is checked against the detector card's ``rows``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthdet.evaluation import EvalRun
from synthdet.metrics import evaluate_scores


def test_eval_run_round_trips_through_its_folder(tmp_path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 50), 0, 1)
    scores = pd.DataFrame({"path": [f"/x/{i}.jpg" for i in range(50)], "label": y, "generator": "g",
                           "width": 400, "height": 300, "prob_clean": prob, "prob_jpeg85": prob * 0.9})
    metrics = {"clean": evaluate_scores(y, prob, 0.5, bootstrap=50),
               "jpeg85": evaluate_scores(y, prob * 0.9, 0.5, bootstrap=50)}
    skipped = pd.DataFrame([{"path": "/x/bad.png", "slice": "clean", "reason": "truncated"}])
    run = EvalRun("r1", 0.5, scores, metrics, skipped, {"data": "somewhere"})
    back = EvalRun.load(run.save(tmp_path / "run"))
    assert (tmp_path / "run" / "scores.parquet").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    assert back.name == "r1" and back.threshold == 0.5 and back.info == {"data": "somewhere"}
    pd.testing.assert_frame_equal(back.scores, scores)
    assert back.skipped.to_dict("records") == skipped.to_dict("records")
    for metric, interval in metrics["jpeg85"]["ci"].items():
        assert back.metrics["jpeg85"]["ci"][metric] == pytest.approx(interval)
    assert back.slices == ["clean", "jpeg85"]
    assert back.deltas().loc["jpeg85", "roc_auc_delta"] == pytest.approx(0.0, abs=1e-12)  # monotone: same ranking
    with pytest.raises(FileNotFoundError):
        EvalRun.load(tmp_path)
