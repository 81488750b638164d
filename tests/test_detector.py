"""Training pipeline and saved detectors, on a slice of the demo data shipped in the package."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import small_demo_csv

from synthdet.data.demo import demo_data_dir
from synthdet.data.manifest import index
from synthdet.data.splits import RowSet
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.card import (
    DETECTOR_KINDS,
    SCHEMA_VERSION,
    AnyCard,
    Card,
    EnsembleCard,
    FinetunedCard,
    NotADetectorError,
    default_detector_path,
    read_card,
)
from synthdet.detectors.loading import load_detector
from synthdet.evaluation.metrics import binary_metrics
from synthdet.training.train import ProbeConfig, load_features, train_detector


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("train")
    csv = small_demo_csv(tmp)
    res = train_detector(csv, ProbeConfig(head="logreg", n_views=2, cache_dir=tmp / "cache", num_workers=0),
                         out=tmp / "det", progress=False)
    return tmp, res


def test_train_saves_complete_card(trained) -> None:
    tmp, res = trained
    det_dir = tmp / "det"
    assert (det_dir / "card.json").is_file() and (det_dir / "head.safetensors").is_file()
    det = load_detector(det_dir)
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
    from synthdet.features.extract import FeatureStore

    det = res.detector
    store = FeatureStore.for_backbone(det.backbone, tmp / "cache")
    calib = res.manifest[res.manifest.split == "calib"]
    X, _ = load_features(store, calib.sha256.tolist(), [0], "pooled")
    expected = f1_optimal_threshold(calib.label.to_numpy(), det.head.predict_proba(X)[:, 1])
    assert det.threshold == pytest.approx(expected)


def test_saved_detector_scores_files_like_training_did(trained) -> None:
    """Fresh decoding + forward of the held-out files reproduces the cached-feature probabilities."""
    tmp, res = trained
    det = load_detector(tmp / "det")
    val = res.manifest[res.manifest.split == "test"].drop_duplicates("sha256")
    out = list(det.predict_paths(val.path.tolist(), num_workers=0, progress=False))
    assert [p for p, _, _ in out] == val.path.tolist()
    probs = np.array([p for _, p, _ in out])
    assert np.allclose(probs, res.val_prob, atol=0.02)


def test_predict_paths_skips_bad_files_and_keeps_order(trained, tmp_path: Path) -> None:
    tmp, res = trained
    det = load_detector(tmp / "det")
    good = res.manifest.path.iloc[:3].tolist()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(Path(good[0]).read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = [good[0], str(bad), good[1], str(empty), good[2]]
    out = list(det.predict_paths(iter(paths), num_workers=2, batch_size=2, progress=False))  # a lazy stream
    assert [p for p, _, _ in out] == paths
    assert out[1][1] is None and out[1][2].startswith(("truncated", "corrupt"))
    assert out[3][1] is None and out[3][2].startswith("empty-file")
    assert all(0.0 <= out[i][1] <= 1.0 for i in (0, 2, 4))


def test_predict_paths_pulls_a_stream_lazily(trained) -> None:
    """An endless listing is scored as it is pulled: the files in flight are bounded, the listing never read whole."""
    import itertools

    tmp, res = trained
    det = load_detector(tmp / "det")
    good = res.manifest.path.iloc[:4].tolist()
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        for p in itertools.cycle(good):
            pulled += 1
            yield p

    out = list(itertools.islice(det.predict_paths(endless(), num_workers=2, batch_size=4, progress=False), 40))
    assert [p for p, _, _ in out] == list(itertools.islice(itertools.cycle(good), 40))
    assert all(p is not None for _, p, _ in out)
    assert pulled <= 40 + 2 * 4 * 4 + 4  # what the workers may prefetch (2 workers x 4 batches x 4 files) and a batch


def test_rerun_uses_the_cache(trained) -> None:
    tmp, _ = trained
    res = train_detector(small_demo_csv(tmp), ProbeConfig(head="logreg", n_views=2, cache_dir=tmp / "cache",
                                                          num_workers=0))
    assert res.extract.computed == 0 and res.extract.cached > 0


def test_training_rejects_single_class(tmp_path: Path) -> None:
    from synthdet.data.manifest import ManifestError

    csv = small_demo_csv(tmp_path, 6)
    df = pd.read_csv(csv)
    df[df.label == 0].to_csv(csv, index=False)
    with pytest.raises(ManifestError, match="both classes"):
        train_detector(csv, ProbeConfig(head="logreg", cache_dir=tmp_path / "c", num_workers=0))


def test_shipped_default_detector_predicts_offline() -> None:
    if not (default_detector_path() / "card.json").is_file():
        pytest.fail("the default detector is not shipped in the package (run scripts/train_default.py)")
    det = load_detector()
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
        load_detector(tmp_path)
    shutil.rmtree(tmp_path)


# ------------------------------------------------------------------------------------------------ cards and kinds
def test_saved_card_is_a_versioned_probe_card_and_rows_round_trip(trained, tmp_path: Path) -> None:
    tmp, res = trained
    raw = json.loads((tmp / "det" / "card.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 2 and raw["kind"] == "probe"
    det = load_detector(tmp / "det")
    fit = res.manifest[res.manifest.split == "fit"]["sha256"]
    det.card.rows = {"fit": RowSet.of(fit)}
    det.save(tmp_path / "copy")
    again = load_detector(tmp_path / "copy")
    assert type(again.card) is Card and again.card.rows == {"fit": RowSet.of(fit)}
    assert again.card.rows["fit"].overlap(fit.tolist()) == set(fit)
    assert not list((tmp_path / "copy").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_version_1_cards_are_upgraded_by_what_the_folder_holds(tmp_path: Path) -> None:
    current = json.loads((default_detector_path() / "card.json").read_text())
    assert current["kind"] == "probe" and current["schema_version"] == 2
    shipped = {k: v for k, v in current.items() if k not in ("kind", "schema_version", "rows")}  # as version 1 wrote
    old = tmp_path / "v1"
    old.mkdir()
    (old / "card.json").write_text(json.dumps(shipped))
    card = read_card(old)
    assert type(card) is Card and card.kind == "probe" and card.schema_version == 2 and card.rows == {}

    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "card.json").write_text(json.dumps({**shipped, "finetune": {"base_weights_id": "x"}}))
    (tuned / "backbone.safetensors").write_bytes(b"")
    card = read_card(tuned)
    assert type(card) is FinetunedCard and card.kind == "finetuned"
    assert card.model_extra["finetune"] == {"base_weights_id": "x"}

    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "card.json").write_text(json.dumps({
        "kind": "ensemble", "rule": "mean", "names": ["m0-a", "m1-b"], "members": ["members/m0-a", "members/m1-b"],
        "weights": [1.0, 1.0], "threshold": 0.4, "backbone": "a+b", "weights_id": "x+y", "head": "ensemble-mean",
        "features": "pooled+pooled",
    }))
    card = read_card(ens)
    assert type(card) is EnsembleCard and card.schema_version == 2 and card.threshold == 0.4


def test_every_card_kind_has_a_registered_loader() -> None:
    from typing import get_args

    union = get_args(get_args(AnyCard)[0])
    assert {c.model_fields["kind"].default for c in union} == {"probe", "finetuned", "ensemble"}
    external = {k for k in DETECTOR_KINDS.names() if "card" in DETECTOR_KINDS.meta(k)}  # cards defined elsewhere
    assert set(DETECTOR_KINDS.names()) == {"probe", "finetuned", "ensemble"} | external == {
        "probe", "finetuned", "ensemble", "localizer"}
    from synthdet.detectors.ensemble import load_ensemble
    from synthdet.training.finetune import load_finetuned

    assert DETECTOR_KINDS.get("ensemble") is load_ensemble and DETECTOR_KINDS.get("finetuned") is load_finetuned


FOREIGN = [
    ('{"name": "resnet50", "pretrained": true}', ["missing 'threshold', 'backbone'", "'head'"]),
    ('{"kind": "foo", "backbone": "x"}', ["kind 'foo' unknown"]),
    ('{"schema_version": 2, "kind": "probe", "backbone": "x", "weights_id": "w", "preprocess": {"size": 224}, '
     '"head": "logreg", "n_features": "many", "threshold": 0.5}', ["'n_features':"]),
    ('{"schema_version": 7}', ["newer synthdet", "schema 7"]),
    ("[1, 2, 3]", ["not an object"]),
    ("model: resnet\n", ["not JSON"]),
]


@pytest.mark.parametrize(("text", "expected"), FOREIGN)
def test_a_foreign_card_is_one_clear_line(tmp_path: Path, text: str, expected: list[str]) -> None:
    (tmp_path / "card.json").write_text(text)
    with pytest.raises(NotADetectorError) as ei:
        load_detector(tmp_path)
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert msg.startswith(f"{tmp_path / 'card.json'}: ") and "\n" not in msg
    assert "pydantic" not in msg and "http" not in msg and "validation error" not in msg
    for part in expected:
        assert part in msg


def test_a_probe_card_is_not_loaded_as_an_ensemble() -> None:
    from synthdet.detectors.ensemble import load_ensemble

    with pytest.raises(NotADetectorError, match="a probe card, not an ensemble"):
        load_ensemble(default_detector_path())


def test_a_folder_missing_its_kinds_tensors_is_refused_at_load(tmp_path: Path) -> None:
    shutil.copy(default_detector_path() / "card.json", tmp_path / "card.json")
    with pytest.raises(FileNotFoundError, match="a probe detector without head.safetensors"):
        load_detector(tmp_path)


def test_a_damaged_weights_file_is_refused_by_load_predict_and_serve(tmp_path: Path) -> None:
    """The card records each tensor file's sha256: bytes flipped inside ``head.safetensors`` (the same card, so the
    same id before) or a truncated copy are refused at load with one line naming the file — in the library, and in
    ``predict`` and ``serve`` as exit 2 — and the detector id covers the weights."""
    import subprocess
    import sys

    from synthdet.detectors.card import DamagedDetectorError, read_card
    from synthdet.detectors.scoring import detector_id

    shipped = default_detector_path()
    assert "head.safetensors" in read_card(shipped).files  # and the ONNX graph (tests/test_graph.py)
    for damage in ("flip", "truncate"):
        folder = tmp_path / damage
        shutil.copytree(shipped, folder)
        head = folder / "head.safetensors"
        data = bytearray(head.read_bytes())
        if damage == "flip":
            data[-4000:-2000] = bytes(b ^ 0xFF for b in data[-4000:-2000])
        else:
            data = data[: len(data) // 2]
        head.write_bytes(bytes(data))
        with pytest.raises(DamagedDetectorError, match="head.safetensors: not the file its card records"):
            load_detector(folder)
        if damage == "truncate":
            continue  # the commands' handling is the same for any damage: checked once, on the flipped copy
        image = next(iter(sorted((demo_data_dir() / "real").iterdir())))
        for args in (["predict", str(folder), str(image)], ["serve", str(folder), "--port", "0"]):
            res = subprocess.run([sys.executable, "-m", "synthdet.cli", *args], capture_output=True, text=True,
                                 timeout=300)
            assert res.returncode == 2 and "not the file its card records" in res.stderr, (args, res.stderr[-500:])
            assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    other = tmp_path / "other"
    shutil.copytree(shipped, other)
    card = read_card(other)
    card.files = {"head.safetensors": "0" * 64}  # another head under an otherwise identical card
    from synthdet.detectors.detector import Detector

    assert detector_id(load_detector(shipped)) != detector_id(Detector(card, None))


# ------------------------------------------------------------------------------------------------ the shipped card
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shipped_loso() -> pd.DataFrame:
    """The leave-one-source-out scores shipped beside the default: one row per pool image, from the fold model that
    never saw its group."""
    return pd.read_csv(default_detector_path() / "loso.csv", dtype={"sha256": str})


def test_the_shipped_cards_figures_are_leave_one_source_out_and_recompute_from_its_scores() -> None:
    """Threshold, calibration, uncertainty band and per-source figures on the card all follow from ``loso.csv``; the
    view and nested figures too, and the final groups are in none of its rows."""
    from synthdet.detectors.calibrate import capped_threshold, fit_calibration, fit_uncertainty_band
    from synthdet.evaluation.metrics import source_table
    from synthdet.evaluation.selection import nested_decisions, nested_summary

    card = load_detector().card
    loso = shipped_loso()
    y, groups, z = loso["label"].to_numpy(), loso["group"].to_numpy(), loso["logit"].to_numpy()
    assert len(loso) == card.data["n_images"] and loso["fold"].nunique() == card.data["k"] >= 10
    assert loso["group"].nunique() >= 40
    # groups are held out whole, except near-duplicates of another group's images, which must share its fold
    main_fold = loso.groupby("group")["fold"].agg(lambda f: f.value_counts().index[0])
    assert (loso["fold"] != loso["group"].map(main_fold)).mean() <= 0.02
    assert not set(card.data["pool"]["final_groups"]) & set(groups)  # the final groups were never fitted or selected on
    cal = fit_calibration(y, z, method="sigmoid")
    assert card.calibration is not None
    assert (card.calibration.a, card.calibration.b) == pytest.approx((cal.a, cal.b), rel=1e-6)
    p = card.calibration(z)
    views = ("original", "thumbnail", "crop")
    in_views = [card.calibration(loso[f"logit_{v}"].to_numpy()) for v in views]  # the cap holds in every view
    assert card.threshold == pytest.approx(capped_threshold(y, p, groups, max_fpr=0.05, also=in_views))
    assert card.threshold > capped_threshold(y, p, groups, max_fpr=0.05)  # the crops' real groups raised it
    assert card.data["uncertain_band"] == pytest.approx(list(fit_uncertainty_band(y, p, card.threshold, level=0.9)))
    block = card.metrics["cv_at_threshold"]
    assert block["rows"] == "held-out" and "one model per fold" in block["model"]
    assert block["threshold"] == card.threshold and block["roc_auc"] == pytest.approx(binary_metrics(y, p)["roc_auc"])
    table = source_table(y, p, groups, threshold=card.threshold)
    pd.testing.assert_frame_equal(pd.DataFrame(block["groups"]), table, rtol=1e-9)
    assert table[table["label"] == 0]["flagged"].max() <= 0.05  # in-sample for the threshold: the nested figure isn't
    for v, pv in zip(views, in_views):
        ok = np.isfinite(pv)
        shown = source_table(y[ok], pv[ok], groups[ok], threshold=card.threshold)
        assert shown[shown["label"] == 0]["flagged"].max() <= 0.05, v
    cv = card.metrics["cv"]
    assert cv["leave_one_group_out"]["group_by"] == "group"
    logits = {"file": z, **{v: loso[f"logit_{v}"].to_numpy() for v in views}}
    decisions = nested_decisions(y, logits, groups, calibrate="sigmoid", max_group_fpr=0.05, band_level=0.9,
                                 cap_views=views)
    for view in logits:
        ok = np.isfinite(logits[view])
        assert cv["views"][view]["roc_auc"] == pytest.approx(binary_metrics(y[ok], logits[view][ok])["roc_auc"])
        nested = nested_summary(decisions, view, n_boot=10)
        assert cv["nested"][view]["recall"] == pytest.approx(nested["recall"])
        assert cv["nested"][view]["worst_real_flag_rate"] == pytest.approx(nested["worst_real_flag_rate"])


def test_the_readme_shows_the_shipped_cards_figures() -> None:
    """The README's table of the default's figures is the one its card gives (scripts/train_default.py)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_default import card_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert card_table(load_detector().card) in readme


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_the_shipped_card_names_every_development_image_it_was_fitted_on() -> None:
    """The default was fitted on normalised copies of dev and dev2: the card names the originals too, so
    `synthdet evaluate` refuses them as seen rather than reporting in-sample figures as held-out."""
    card = load_detector().card
    for name in ("dev", "dev2"):
        df = index(SHARED / name / "manifest.csv")
        ok = df[df["ok"]]
        assert card.rows["fit"].overlap(ok["sha256"]) == set(ok["sha256"]), name
