"""Evaluation runs: a run folder round-trips; which rows each figure was computed on (held-out, in-sample or of
unknown provenance) is checked against the detector card's ``rows``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import small_demo_csv
from PIL import Image

from synthdet.data.manifest import index
from synthdet.data.provenance import HELD_OUT, IN_SAMPLE, UNKNOWN, InSampleError, provenance, seen_rows
from synthdet.data.splits import RowSet
from synthdet.data.tilehash import TileIndex
from synthdet.detectors.card import default_detector_path
from synthdet.detectors.detector import Detector
from synthdet.detectors.ensemble import EnsembleDetector
from synthdet.detectors.loading import load_detector
from synthdet.evaluation.metrics import evaluate_scores
from synthdet.evaluation.runs import EvalRun, evaluate_detector


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
    assert (tmp_path / "run" / "scores.csv").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    assert back.name == "r1" and back.threshold == 0.5 and back.info == {"data": "somewhere"}
    pd.testing.assert_frame_equal(back.scores, scores)
    assert back.skipped.to_dict("records") == skipped.to_dict("records")
    for metric, interval in metrics["jpeg85"]["ci"].items():
        assert back.metrics["jpeg85"]["ci"][metric] == pytest.approx(interval)
    assert back.slices == ["clean", "jpeg85"]
    assert back.deltas().loc["jpeg85", "roc_auc_delta"] == pytest.approx(0.0, abs=1e-12)  # monotone: same ranking
    with pytest.raises(FileNotFoundError):
        EvalRun.load(tmp_path)


# ------------------------------------------------------------------------------- which rows a figure was computed on
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, Path]:
    """Ten demo images per class, indexed (content hashes), plus a byte copy of the first under another name."""
    tmp = tmp_path_factory.mktemp("provenance")
    df = index(small_demo_csv(tmp, 10), progress=False)
    copy = tmp / "copy-of-first.jpg"
    shutil.copyfile(df["path"].iloc[0], copy)
    return df, copy


def shipped_with_rows(fit: list[str], calib: list[str]) -> Detector:
    """The shipped detector, its card claiming it was fitted on ``fit`` and calibrated on ``calib``."""
    det = load_detector()
    det.card.rows = {"fit": RowSet.of(fit), "calib": RowSet.of(calib)}
    det.card._tiles = TileIndex.of([])  # the claim comes without tiles (the shipped ones name other rows)
    return det


def test_evaluating_rows_the_detector_has_seen_is_refused_with_the_overlap_count(demo) -> None:
    df, _ = demo
    det = shipped_with_rows(list(df["sha256"].iloc[:2]), [df["sha256"].iloc[12]])
    with pytest.raises(InSampleError, match=r"3 of the 20 images .*\(fit: 2, calib: 1\)"):
        evaluate_detector(det, df, slices=[], bootstrap=0, num_workers=0)


def test_the_refusal_names_the_files_and_counts_an_image_in_two_roles_once(demo) -> None:
    df, _ = demo
    both = df["sha256"].iloc[3]
    det = shipped_with_rows([both, *df["sha256"].iloc[4:8]], [both])
    with pytest.raises(InSampleError) as ei:
        evaluate_detector(det, df, slices=[], bootstrap=0, num_workers=0)
    text = str(ei.value)
    assert "5 of the 20 images" in text and "(fit: 4, fit+calib: 1)" in text, text
    named = [Path(p).name for p in df["path"].iloc[3:8] if Path(p).name in text]
    assert len(named) == 3 and "and 2 more" in text, text  # the first three seen files, then how many more


def test_flag_labels_every_figure_in_sample_and_the_run_folder_says_so(demo, tmp_path: Path) -> None:
    df, _ = demo
    det = shipped_with_rows(list(df["sha256"].iloc[:2]), [df["sha256"].iloc[12]])
    run = evaluate_detector(det, df, slices=["jpeg85"], bootstrap=0, num_workers=0, on_overlap="flag")
    assert len(run.scores) == 20
    for cond in ("clean", "jpeg85"):
        rows = run.metrics[cond]["rows"]
        assert rows["status"] == IN_SAMPLE and rows["n"] == 20 and rows["n_seen"] == 3
        assert rows["digest"] == RowSet.of(df["sha256"]).digest
    doc = json.loads((run.save(tmp_path / "run") / "metrics.json").read_text())
    assert doc["metrics"]["clean"]["rows"]["status"] == "in-sample" and doc["info"]["rows"]["on_overlap"] == "flag"
    assert EvalRun.load(tmp_path / "run").rows["status"] == "in-sample"


def test_drop_evaluates_the_held_out_remainder(demo) -> None:
    df, _ = demo
    seen = list(df["sha256"].iloc[[0, 1, 12]])
    det = shipped_with_rows(seen[:2], seen[2:])
    run = evaluate_detector(det, df, slices=[], bootstrap=0, num_workers=0, on_overlap="drop")
    assert len(run.scores) == 17 and not set(run.scores["sha256"]) & set(seen)
    assert run.rows["status"] == HELD_OUT and run.rows["n"] == 17 and run.info["rows"]["dropped_seen"] == 3
    assert run.metrics["clean"]["n"] == 17


def test_a_duplicate_counts_once_in_the_overlap_and_in_the_figures(demo) -> None:
    df, copy = demo
    dup = df.iloc[[0]].assign(path=str(copy))
    with_dup = pd.concat([df, dup], ignore_index=True)
    det = shipped_with_rows([df["sha256"].iloc[0]], [])
    with pytest.raises(InSampleError, match="1 of the 20 images"):
        evaluate_detector(det, with_dup, slices=[], bootstrap=0, num_workers=0)
    run = evaluate_detector(det, with_dup, slices=[], bootstrap=0, num_workers=0, on_overlap="flag")
    assert run.metrics["clean"]["n"] == 20 and run.rows["n_seen"] == 1
    assert run.skipped["reason"].str.contains("counted once").sum() == 1


def test_a_card_without_rows_gives_figures_of_unknown_provenance(demo) -> None:
    df, _ = demo
    det = load_detector()
    det.card.rows = {}  # as a detector saved before cards recorded their rows
    run = evaluate_detector(det, df, slices=["small"], bootstrap=0, num_workers=0)
    assert {m["rows"]["status"] for m in run.metrics.values()} == {UNKNOWN}


def test_an_ensemble_has_seen_what_any_member_has_seen() -> None:
    shipped = default_detector_path()
    ens = EnsembleDetector.from_members([shipped, shipped])
    for member in ens.members:
        member.card.rows = {}  # as detectors saved before cards recorded their rows
    assert seen_rows(ens) is None  # members without rows: unknown
    ens.members[0].card.rows = {"fit": RowSet.of(["aa" * 8]), "calib": RowSet.of(["bb" * 8])}
    assert seen_rows(ens) is None  # one member still unknown
    ens.members[1].card.rows = {"fit": RowSet.of(["cc" * 8]), "calib": RowSet.of([])}
    ens.card.rows = {"calib": RowSet.of(["dd" * 8])}
    union = seen_rows(ens)
    assert union["fit"].hashes == ["aa" * 8, "cc" * 8] and union["calib"].hashes == ["bb" * 8, "dd" * 8]
    assert provenance(["cc" * 32, "ee" * 32], union)["n_seen"] == 1


def test_a_resized_reencoded_copy_of_a_training_image_is_seen(demo, tmp_path: Path) -> None:
    """A near-duplicate has another sha256: the card's dHash codes still catch it (the demo detector, trained on
    compact copies of dev images, once reported 'held-out' figures on all of dev)."""
    df, _ = demo
    first = Image.open(df["path"].iloc[0]).convert("RGB")
    copy = tmp_path / "smaller.jpg"
    first.resize((first.width * 3 // 5, first.height * 3 // 5), Image.Resampling.LANCZOS).save(copy, quality=70)
    pd.DataFrame({"path": [str(copy)], "label": [int(df["label"].iloc[0])]}).to_csv(tmp_path / "copy.csv", index=False)
    rows = index(tmp_path / "copy.csv", progress=False)
    assert rows["sha256"].iloc[0] != df["sha256"].iloc[0]
    det = load_detector()
    det.card.rows = {"fit": RowSet.of(df["sha256"].iloc[:1], df["phash"].iloc[:1]), "calib": RowSet.of([])}
    det.card._tiles = TileIndex.of([])  # the dHash alone (tiles: tests/test_tilehash.py)
    evaluated = pd.concat([df.iloc[1:], rows], ignore_index=True)
    with pytest.raises(InSampleError, match=r"1 of the 20 images .*near-duplicates.*\(fit: 1\)"):
        evaluate_detector(det, evaluated, slices=[], bootstrap=0, num_workers=0)
    det.card.rows = {"fit": RowSet.of(df["sha256"].iloc[:1]), "calib": RowSet.of([])}  # without the codes: missed
    assert evaluate_detector(det, evaluated, slices=[], bootstrap=0, num_workers=0).rows["status"] == HELD_OUT
