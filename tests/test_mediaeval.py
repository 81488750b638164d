"""MediaEval SynthIm exactly as the organisers ship and score it: small trees and CSVs in every official layout
(:mod:`mediaeval_layouts`, demo images with masks drawn by the test) run through index → train → evaluate → submit →
``submit --check``; the zips are read back byte by byte against the README's rules, and the pixel metrics against
the conventions of TGIF's ``localization_metrics.py``."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mediaeval_layouts import (
    HOSTS,
    METHODS,
    all_synthetic_folder,
    task_a_tree,
    task_b_tree,
    tgif_tree,
    unlabelled_test_folder,
)
from PIL import Image
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score, roc_auc_score
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.data.manifest import index, split_columns
from synthdet.evaluation.metrics import evaluate_scores, sidbench_metrics
from synthdet.localization.metrics import f1_iou, flagged, localization_metrics
from synthdet.localization.triples import read_triples

runner = CliRunner()
N_MANIPULATED = sum(len(ids) for ids in HOSTS.values()) * len(METHODS)
N_HOSTS = sum(len(ids) for ids in HOSTS.values())


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with every layout: ``sagid/val`` + ``taskB_val.csv``, ``tgif/``, Task A ``val/``, ``test/``,
    ``robust/`` (all synthetic)."""
    root = tmp_path_factory.mktemp("mediaeval")
    task_b_tree(root).to_csv(root / "taskB_val.csv", index=False)
    tgif_tree(root / "tgif")
    task_a_tree(root / "val")
    unlabelled_test_folder(root / "test")
    all_synthetic_folder(root / "robust")
    return root


def _run(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _refused(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# ------------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize(("where", "layout", "n"), [
    ("sagid/val", "MediaEval Task B tree (coco, raise", N_MANIPULATED + N_HOSTS),
    ("sagid", "MediaEval Task B tree (coco, raise", N_MANIPULATED + N_HOSTS),
    ("sagid/val/raise", "MediaEval Task B tree (raise", len(HOSTS["raise"]) * (1 + len(METHODS))),
    ("taskB_val.csv", f"MediaEval Task B CSV (img_path, mask_path, src_path, type): {N_MANIPULATED} manipulated rows, "
                      f"{N_HOSTS} host photos", N_MANIPULATED + N_HOSTS),
    ("tgif", "TGIF (orig/, sd2-sp, sdxl-fr, masks/, splits/)", 12),
    ("tgif/metadata/sd2_validation.csv", "the 2 rows sd2_validation.csv lists", 2),
    ("tgif/splits/val.csv", "the 3 rows val.csv lists", 3),
    ("val", "MediaEval Task A tree (0_real/ + 1_fake/)", 16),
    ("test", "unlabelled folder (a test set: label -1)", 4),
])
def test_index_recognises_and_names_each_official_layout(trees: Path, tmp_path: Path, where: str, layout: str,
                                                         n: int) -> None:
    out = _run("data", "index", trees / where, "-o", tmp_path / "m.csv", "-q")
    assert layout in out and f"{n} images indexed" in out and "0 unusable" in out
    df = index(tmp_path / "m.csv", progress=False)  # read back: relative mask/src_path resolve again
    assert len(df) == n and df["ok"].all()
    if "mask" in df:
        manip = df[df["label"] == 1]
        assert (manip["mask"] != "").all() and all(Path(m).is_file() for m in manip["mask"])
        assert (df.loc[df["label"] == 0, "mask"] == "").all() and (df.loc[df["label"] == 0, "method"] == "original").all()
        assert all(Path(h).is_file() for h in manip["src_path"])  # every manipulation names its host photo
        triples = read_triples(tmp_path / "m.csv")  # the manifest feeds `localize` with the same groups
        assert set(triples["category"]) == set(df["method"].replace("original", "authentic"))


def test_task_b_rows_pair_each_image_with_its_mask_host_method_type_and_source(trees: Path) -> None:
    tree, csv = index(trees / "sagid" / "val", progress=False), index(trees / "taskB_val.csv", progress=False)
    key = ["path", "label", "mask", "method", "source", "src_path"]
    pd.testing.assert_frame_equal(tree.sort_values("path")[key].reset_index(drop=True),
                                  csv.sort_values("path")[key].reset_index(drop=True))  # two readers, one set
    row = csv[csv["path"].str.endswith("coco_000000570782_controlnet_sd1-5_1_None.jpg")].iloc[0]
    assert row["mask"].endswith("controlnet/mask/coco_000000570782_controlnet_sd1-5_1_None_mask.png")
    assert (row["method"], row["type"], row["source"]) == ("controlnet", "fr", "coco")
    assert row["src_path"].endswith("coco/original/000000570782.jpg")
    mask = np.asarray(Image.open(row["mask"]))
    assert mask.shape == (72, 96) and set(np.unique(mask)) == {0, 255}
    # a host and its manipulations are one group of the split: never on both sides
    folds = csv.assign(**split_columns(csv, val_fraction=0.3, k=3))
    assert folds.groupby("src_path")["split"].nunique().max() == 1 and folds.groupby("src_path")["fold"].nunique().max() == 1
    tgif = index(trees / "tgif", progress=False)
    fake = tgif[tgif["method"] == "sd2"].iloc[0]
    assert fake["mask"].endswith("masks/" + Path(fake["path"]).name.split(".png_")[0] + ".png")
    assert (fake["type"], fake["tgif_split"]) == ("sp", "train") and fake["src_path"].endswith("_orig.png")


def test_official_csv_paths_take_either_separator_and_a_root(trees: Path, tmp_path: Path) -> None:
    rows = pd.read_csv(trees / "taskB_val.csv")
    posix = rows.assign(**{c: rows[c].str.replace("\\", "/") for c in ("img_path", "mask_path", "src_path")})
    posix.to_csv(tmp_path / "taskB_val.csv", index=False)
    line = _refused("data", "index", tmp_path / "taskB_val.csv", "-o", tmp_path / "m.csv")
    assert "none of its 18 img_path files" in line and "--root" in line
    out = _run("data", "index", tmp_path / "taskB_val.csv", "--root", trees, "-o", tmp_path / "m.csv", "-q")
    assert f"{N_MANIPULATED + N_HOSTS} images indexed" in out and "per type: fr 6, sp 12" in out


def test_what_cannot_be_right_is_refused_in_one_line(trees: Path, tmp_path: Path) -> None:
    originals = trees / "sagid" / "val" / "coco" / "original"
    assert "none of its 4 images has a mask" in _refused("localize", "train", originals, "-o", tmp_path / "l")
    assert "none of its 4 images has a mask" in _refused("localize", "evaluate", tmp_path / "l", originals)
    m = index(trees / "taskB_val.csv", progress=False)
    as_images = pd.concat([m, m[m["mask"] != ""].assign(path=lambda d: d["mask"], mask="")])
    as_images.to_csv(tmp_path / "bad.csv", index=False)
    line = _refused("localize", "train", tmp_path / "bad.csv", "-o", tmp_path / "l")
    assert f"{N_MANIPULATED} of its {len(as_images)} images are masks indexed as images" in line
    method_folder = trees / "sagid" / "val" / "coco" / "brushnet"  # image/ + mask/ given as a plain folder
    assert "masks indexed as images" in _refused("evaluate", method_folder, "-o", tmp_path / "e")


# ------------------------------------------------------------------------------------------------- metrics


def _tgif_reference(prob: np.ndarray, gt: np.ndarray, th: float) -> tuple[float, float]:
    """F1 and IoU as TGIF's localization_metrics.py defines them: flagged = prob > th; an empty prediction on an
    empty mask scores 1; otherwise from the confusion matrix, a 0/0 ratio counting 0."""
    pred = (prob > th).ravel().astype(np.uint8)
    gt = gt.ravel().astype(np.uint8)
    if pred.max() == 0 and gt.max() == 0:
        return 1.0, 1.0
    tn, fp, fn, tp = confusion_matrix(gt, pred, labels=[0, 1]).ravel()
    return 2 * tp / max(2 * tp + fn + fp, 1e-32), tp / max(tp + fp + fn, 1e-32)


def test_pixel_metrics_follow_tgif_conventions() -> None:
    rng = np.random.default_rng(0)
    th = 0.5
    probs, trues = [], []
    for i in range(12):
        prob = np.round(rng.random((16, 20)) * 4) / 4  # quarters: many pixels exactly at the threshold
        true = np.zeros((16, 20), bool) if i % 3 == 0 else rng.random((16, 20)) > 0.6
        if i % 4 == 0:
            prob = np.minimum(prob, th)  # nothing above the threshold: an empty prediction
        probs.append(prob)
        trues.append(true)
    for prob, true in zip(probs, trues):
        assert f1_iou(flagged(prob, th), true) == pytest.approx(_tgif_reference(prob, true, th))
    ties = [i for i, (p, t) in enumerate(zip(probs, trues)) if t.any() and (p == th).any()]
    assert any(f1_iou(probs[i] >= th, trues[i]) != pytest.approx(f1_iou(flagged(probs[i], th), trues[i]))
               for i in ties)  # '>=' would not be TGIF's convention
    res = localization_metrics(probs, trues, ["m"] * 12, loc_threshold=th)
    block = res["pixel"]["at_threshold"]
    assert block["f1_all_images"] == pytest.approx(np.mean([_tgif_reference(p, t, th)[0] for p, t in zip(probs, trues)]))
    assert block["iou_all_images"] == pytest.approx(np.mean([_tgif_reference(p, t, th)[1] for p, t in zip(probs, trues)]))
    assert "prob > threshold" in res["convention"] and "TGIF" in res["convention"]


def test_task_a_metrics_are_the_sidbench_set_and_one_class_sets_report_tpr() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    prob = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.2, 200), 0, 1)
    sid = sidbench_metrics(evaluate_scores(y, prob, 0.6, bootstrap=0))["at_threshold"]
    pred = (prob >= 0.6).astype(int)
    assert sid["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert sid["f1"] == pytest.approx(f1_score(y, pred)) and sid["roc_auc"] == pytest.approx(roc_auc_score(y, prob))
    assert sid["ap"] == pytest.approx(average_precision_score(y, prob)) and 0 < sid["eer"] < 0.5
    assert sid["real_accuracy"] == pytest.approx(np.mean(pred[y == 0] == 0))
    assert sid["fake_accuracy"] == pytest.approx(np.mean(pred[y == 1] == 1)) == pytest.approx(sid["recall"])
    fakes = prob[y == 1]
    m = evaluate_scores(np.ones(len(fakes), int), fakes, 0.6, bootstrap=300)
    oc = m["one_class"]
    assert oc["rate_name"] == "TPR" and oc["rate"] == pytest.approx(np.mean(fakes >= 0.6))
    assert oc["ci"][0] <= oc["rate"] <= oc["ci"][1] and oc["ci"][0] < oc["ci"][1]
    assert np.isnan(m["roc_auc"]) and "undefined without real images" in oc["why_no_auc"]
    assert oc["distribution"]["quantiles"]["p50"] == pytest.approx(np.median(fakes))
    assert sum(oc["distribution"]["histogram"]["counts"]) == len(fakes)


# ------------------------------------------------------------------------------------------------ end to end


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) and "/" not in i.filename for i in infos)
        return {i.filename: zf.read(i) for i in infos}


def _scores_rules(data: bytes, columns: str, test: Path) -> pd.DataFrame:
    """The README's CSV rules on the bytes: UTF-8 without BOM, LF, the header in order, one row per test image
    named exactly as its file, one global threshold, label = prob >= threshold, prob in [0, 1]."""
    assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data and data.endswith(b"\n")
    assert data.split(b"\n")[0] == columns.encode()
    df = pd.read_csv(io.BytesIO(data), dtype={"image_id": str})
    assert sorted(df["image_id"]) == sorted(p.name for p in test.iterdir())
    assert df["threshold"].nunique() == 1 and df["prob"].between(0, 1).all()
    assert (df["label"] == (df["prob"] >= df["threshold"]).astype(int)).all()
    return df


def test_task_a_tree_trains_evaluates_on_an_all_synthetic_set_and_hands_in_a_zip(trees: Path, tmp_path: Path) -> None:
    det = tmp_path / "det"
    _run("train", trees / "val", "-o", det, "--head", "logreg", "--views", "1", "--cache", tmp_path / "cache",
         "--workers", "0", "-q")
    out = _run("evaluate", det, trees / "robust", "-o", tmp_path / "ev", "-s", "jpeg85", "--bootstrap", "200", "-q")
    assert "one-class set, TPR at threshold" in out and "undefined without real images" in out and "jpeg85" in out
    ev = json.loads(_run("evaluate", det, trees / "robust", "-o", tmp_path / "ev", "-s", "none", "--bootstrap", "200",
                         "-q", "--json"))
    oc = ev["one_class"]["clean"]
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv")
    assert oc["rate"] == pytest.approx(np.mean(scores["prob_clean"] >= ev["threshold"])) and len(scores) == 6
    out = _run("evaluate", det, trees / "val", "-o", tmp_path / "ev2", "-s", "none", "--bootstrap", "0",
               "--on-overlap", "flag", "-q")
    assert "SIDBench metric set" in out and "real accuracy" in out

    sub = tmp_path / "sub"
    out = _run("submit", det, trees / "test", "--team", "synthdetteam", "--run", "open", "-o", sub, "--workers", "0",
               "-q")
    assert "OK: no errors" in out
    entries = _zip_entries(sub / "synthdetteam_open.zip")
    assert list(entries) == ["synthdetteam_open.csv"]
    _scores_rules(entries["synthdetteam_open.csv"], "image_id,prob,label,threshold", trees / "test")
    about = (sub / "synthdetteam_open.run.txt").read_text()
    assert "run: open — any data" in about and f"detector: {det}" in about and "head logreg" in about
    assert "n_images: 16" in about and "task: A" in about
    assert "OK: no errors" in _run("submit", "--check", sub / "synthdetteam_open.zip", "--images", trees / "test")

    two = tmp_path / "x_constrained.zip"
    with zipfile.ZipFile(two, "w") as zf:
        zf.writestr("a.csv", entries["synthdetteam_open.csv"])
        zf.writestr("b.csv", entries["synthdetteam_open.csv"])
    res = runner.invoke(app, ["submit", "--check", str(two), "--images", str(trees / "test")])
    assert res.exit_code == 1 and "exactly one CSV (one run per file), found 2" in res.output
    renamed = tmp_path / "synthdetteam.zip"
    renamed.write_bytes((sub / "synthdetteam_open.zip").read_bytes())
    res = runner.invoke(app, ["submit", "--check", str(renamed), "--images", str(trees / "test")])
    assert res.exit_code == 1 and "expected '<teamname>_constrained.zip'" in res.output


def test_task_b_tree_trains_evaluates_per_method_and_type_and_hands_in_masks(trees: Path, tmp_path: Path) -> None:
    loc = tmp_path / "loc"
    out = _run("localize", "train", trees / "sagid" / "val", "-o", loc, "--model", "patch", "--steps", "4",
               "--batch", "4", "--crop", "64", "--eval-every", "2", "--device", "cpu", "-q")
    assert "validation (" in out and "nan" not in out
    out = _run("localize", "evaluate", loc, trees / "taskB_val.csv", "--device", "cpu")
    assert "convention: a pixel is flagged when prob > threshold (TGIF" in out
    assert "per method:" in out and "per type:" in out and "per source:" in out
    res = json.loads(_run("localize", "evaluate", loc, trees / "taskB_val.csv", "--device", "cpu", "--json"))
    assert set(res["per_category"]) == {"authentic", *METHODS} and set(res["per_type"]) == {"authentic", "sp", "fr"}
    assert res["per_type"]["sp"]["n"] == 12 and res["per_source"]["raise"]["n"] == 8

    sub = tmp_path / "b"
    out = _run("localize", "predict", loc, trees / "test", "-o", sub, "--team", "synthdetteam", "--device", "cpu")
    zip_path = sub / "synthdetteam_localization_masks.zip"
    assert zip_path.is_file() and "OK" not in out  # the check ran silently: errors would have failed the command
    card = json.loads((loc / "card.json").read_text())
    scores = _scores_rules((sub / "scores.csv").read_bytes(), "image_id,prob,label,threshold,loc_threshold",
                           trees / "test")
    assert (scores["loc_threshold"] == round(card["loc_threshold"], 6)).all()
    entries = _zip_entries(zip_path)
    assert sorted(entries) == sorted(f"{p.stem}.npz" for p in (trees / "test").iterdir())
    for name, data in entries.items():
        with np.load(io.BytesIO(data)) as npz:
            assert len(npz.files) == 1
            arr = npz[npz.files[0]]
        w, h = Image.open(trees / "test" / f"{Path(name).stem}.jpg").size
        assert arr.dtype == np.float16 and arr.shape == (h, w) and 0 <= arr.min() and arr.max() <= 1
        assert (arr > card["loc_threshold"]).any() or not arr.any()  # nothing found: zeros only
    about = (sub / "synthdetteam_localization_masks.run.txt").read_text()
    assert "task: B" in about and "run: constrained" in about and "train.per_method: brushnet" in about
    assert "OK: no errors" in _run("submit", "--check", zip_path, "--images", trees / "test")

    short = tmp_path / "short" / "synthdetteam_localization_masks.zip"
    short.parent.mkdir()
    (short.parent / "scores.csv").write_bytes((sub / "scores.csv").read_bytes())
    with zipfile.ZipFile(short, "w") as zf:
        for name, data in list(entries.items())[1:]:
            zf.writestr(name, data)
    res = runner.invoke(app, ["submit", "--check", str(short), "--images", str(trees / "test")])
    assert res.exit_code == 1 and f"missing masks (image without an .npz) (1): {list(entries)[0]}" in res.output


def test_run_zips_are_reproducible_and_refuse_bad_names(tmp_path: Path) -> None:
    from synthdet.reporting.submit import write_task_a_zip

    rows = [("a.jpg", 0.25), ("b.png", 0.75)]
    first = write_task_a_zip(rows, 0.5, tmp_path / "1", "team", "open").read_bytes()
    assert write_task_a_zip(rows, 0.5, tmp_path / "2", "team", "open").read_bytes() == first  # same rows, same bytes
    assert _zip_entries(tmp_path / "1" / "team_open.zip") == {"team_open.csv": b"image_id,prob,label,threshold\n"
                                                             b"a.jpg,0.250000,0,0.500000\nb.png,0.750000,1,0.500000\n"}
    for team, run in (("team", "closed"), ("a/b", "open"), ("", "open")):
        with pytest.raises(ValueError, match="run must be one of|plain non-empty name"):
            write_task_a_zip(rows, 0.5, tmp_path, team, run)
