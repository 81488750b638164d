"""Stratified k-fold cross-validation: folds, per-fold calibration and metrics, refit on everything, the command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from test_detector import small_demo_csv
from typer.testing import CliRunner

from synthdet.backbones.base import create_backbone
from synthdet.cli.cv import cv_command
from synthdet.data.manifest import usable_rows
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.ensemble import validation_f1
from synthdet.detectors.loading import load_detector
from synthdet.features.extract import FeatureStore
from synthdet.training.cv import cross_validate, fold_metrics, run_folds
from synthdet.training.finetune.pipeline import finetune_fitter
from synthdet.training.train import ProbeConfig, load_features


def frame(n_real: int = 31, n_fake: int = 19) -> pd.DataFrame:
    """Manifest-like rows (no files needed by the fold loop), plus one copy of the first image under another path."""
    n = n_real + n_fake
    df = pd.DataFrame({"path": [f"img{i}.jpg" for i in range(n)], "sha256": [hashlib.sha256(b"%d" % i).hexdigest() for i in range(n)],
                       "label": [0] * n_real + [1] * n_fake, "ok": True})
    return pd.concat([df, df.iloc[[0]].assign(path="copy-of-img0.jpg")], ignore_index=True)


def test_folds_are_stratified_disjoint_cover_every_image_and_calibrate_inside_training() -> None:
    df, seen = frame(), []
    rng = np.random.default_rng(0)

    def fit_fold(fold: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        seen.append((fold, train, test))
        return rng.random(len(test)), 0.5

    res = run_folds(df, fit_fold, k=5, seed=42)
    tests = [set(t["sha256"]) for _, _, t in seen]
    assert [f for f, _, _ in seen] == list(range(5))
    assert set().union(*tests) == set(df["sha256"]) and sum(map(len, tests)) == df["sha256"].nunique()  # disjoint
    assert sorted(len(t) for t in tests) == [10, 10, 10, 10, 10]
    assert sorted(int(t["label"].sum()) for _, _, t in seen) == [3, 4, 4, 4, 4]  # 19 fakes spread, stratified
    for _, train, test in seen:
        assert not set(train["sha256"]) & set(test["sha256"])
        assert set(train["split"]) == {"fit", "calib"}
        calib = train[train["split"] == "calib"]
        assert calib["label"].nunique() == 2 and abs(len(calib) / len(train) - 0.15) < 0.05
    # one row per image (the copy shares its fold and is dropped); each fold's metrics come from its test rows only
    assert len(res.oof) == 50 and res.oof["fold"].value_counts().tolist() == [10] * 5
    for f in res.folds:
        rows = res.oof[res.oof["fold"] == f["fold"]]
        assert f == {"fold": f["fold"], **fold_metrics(rows["label"].to_numpy(), rows["prob"].to_numpy(), 0.5)}
    assert res.mean["roc_auc"] == pytest.approx(np.mean([f["roc_auc"] for f in res.folds]))
    assert res.std["f1"] == pytest.approx(np.std([f["f1"] for f in res.folds]))


def test_unscored_images_stay_in_the_table_but_out_of_the_metrics() -> None:
    def fit_fold(fold: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        p = test["label"].to_numpy() * 0.6 + 0.2
        p[0] = np.nan
        return p, 0.5

    res = run_folds(frame(), fit_fold, k=5)
    assert res.oof["prob"].isna().sum() == 5 and [f["n"] for f in res.folds] == [9] * 5
    assert res.mean["roc_auc"] == 1.0 and res.mean["f1"] == 1.0


@pytest.fixture(scope="module")
def demo_cv(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cv")
    csv = small_demo_csv(tmp, n_per_class=20)
    config = ProbeConfig(head="logreg", n_views=1, cache_dir=tmp / "cache", num_workers=0)
    res = cross_validate(csv, config, k=5, refit_all=True, out=tmp / "out", progress=False)
    return tmp, csv, res


def test_cross_validate_scores_each_image_once_with_thresholds_from_training_folds(demo_cv) -> None:
    tmp, _, res = demo_cv
    oof = res.oof
    assert len(res.folds) == 5 and len(oof) == 40 and oof["prob"].notna().all()
    assert oof.groupby("fold")["label"].sum().tolist() == [4] * 5  # 20 fakes, 4 per fold
    for f in res.folds:  # metrics of fold f are those of its own test images at its own threshold
        rows = oof[oof["fold"] == f["fold"]]
        assert (rows["threshold"] == f["threshold"]).all()
        assert f == {"fold": f["fold"], **fold_metrics(rows["label"].to_numpy(), rows["prob"].to_numpy(),
                                                        f["threshold"])}
    assert 0.5 < res.mean["roc_auc"] <= 1.0

    # fold 0 by hand: logreg on the training folds' fit rows, threshold on their calib rows — the test fold unused
    from synthdet.heads.base import create_head

    det = res.detector
    store = FeatureStore.for_backbone(det.backbone, tmp / "cache")
    train = oof[oof["fold"] != 0]
    calib = res.plan.fold_roles(train["sha256"], 0) == "calib"
    assert set(res.plan.fold_roles(train["sha256"], 0)) == {"fit", "calib"}
    X, _ = load_features(store, train["sha256"].tolist(), [0], "pooled")
    y = train["label"].to_numpy()
    head = create_head("logreg").fit(X[~calib], y[~calib])
    assert res.folds[0]["threshold"] == pytest.approx(f1_optimal_threshold(y[calib], head.predict_proba(X[calib])[:, 1]))


def test_refit_on_everything_saves_a_detector_with_the_out_of_fold_threshold(demo_cv) -> None:
    tmp, _, res = demo_cv
    out = tmp / "out"
    summary = json.loads((out / "cv.json").read_text())
    assert summary["config"]["k"] == 5 and len(summary["folds"]) == 5
    assert summary["mean"]["roc_auc"] == pytest.approx(res.mean["roc_auc"])
    assert pd.read_csv(out / "oof.csv")[["sha256", "fold", "prob"]].equals(res.oof[["sha256", "fold", "prob"]])
    det = load_detector(out / "detector")
    assert det.card.data["n_images"] == 40 and det.card.data["refit_on"] == "all"
    assert det.threshold == pytest.approx(f1_optimal_threshold(res.oof["label"], res.oof["prob"]))
    assert validation_f1(det.card) == pytest.approx(res.mean["f1"])  # what a weighted-majority ensemble reads
    assert set(pd.read_csv(out / "detector" / "manifest.csv")["split"]) == {"fit"}
    paths = res.oof["path"].iloc[:2].tolist()
    assert all(p is not None for _, p, _ in det.predict_paths(paths, num_workers=0, progress=False))


def test_cv_command_prints_folds_and_mean_std(demo_cv) -> None:
    tmp, csv, _ = demo_cv
    app = typer.Typer()
    app.command("cv")(cv_command)
    app.command("other")(lambda: None)  # two commands: the sub-command name is part of the call, as in synthdet
    res = CliRunner().invoke(app, ["cv", str(csv), "--head", "logreg", "--views", "1", "--k", "4", "--workers", "0",
                                   "--cache", str(tmp / "cache"), "-o", str(tmp / "cmd")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "4-fold CV" in res.output and "mean ± std" in res.output and (tmp / "cmd" / "oof.csv").is_file()
    assert not (tmp / "cmd" / "detector").exists()
    bad = CliRunner().invoke(app, ["cv", str(csv), "--features", "nope", "-o", str(tmp / "bad")])
    assert bad.exit_code != 0


def test_finetuning_cross_validates_through_a_fold_fitter(tmp_path: Path) -> None:
    from conftest import make_labelled_folder
    from tiny_clip import tiny_clip_checkpoint

    from synthdet.training.finetune import FineTuneConfig

    name, weights = tiny_clip_checkpoint(tmp_path / "clip", blocks=2)
    df, _ = usable_rows(make_labelled_folder(tmp_path / "data", n_real=10, n_fake=10), progress=False)
    cfg = FineTuneConfig(unfreeze_blocks=1, epochs=1, batch_size=4, num_workers=0, backbone_lr=1e-3)
    res = run_folds(df, finetune_fitter(name, cfg, tmp_path / "runs", weights=weights, progress=False), k=2)
    assert len(res.folds) == 2 and res.oof["prob"].notna().all() and len(res.oof) == 20
    assert all((tmp_path / "runs" / f"fold{f}" / "detector" / "card.json").is_file() for f in (0, 1))


def test_leaving_groups_out_holds_out_each_whole_group_once() -> None:
    df = frame(n_real=30, n_fake=20).drop_duplicates("sha256").reset_index(drop=True)
    df["group"] = ["real:a"] * 18 + ["real:b"] * 12 + ["fake:x"] * 15 + ["fake:y"] * 5
    seen = []

    def fit_fold(fold: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        seen.append((set(train["group"]), set(test["group"])))
        return np.where(test["label"] == 1, 0.8, 0.3) + np.where(test["group"] == "real:b", 0.6, 0.0), 0.5

    res = run_folds(df, fit_fold, group_by="group")
    assert sorted(tuple(sorted(t)) for _, t in seen) == [("fake:x",), ("fake:y",), ("real:a",), ("real:b",)]
    assert all(not (train & test) for train, test in seen)  # the held-out group is absent from training
    assert [f["group"] for f in res.folds] == ["fake:x", "fake:y", "real:a", "real:b"]
    table = res.by_group(threshold=0.5).set_index("group")
    assert table.loc["real:b", "flagged"] == 1.0 and table.loc["real:a", "flagged"] == 0.0  # false-positive rates
    assert table.loc["fake:x", "flagged"] == 1.0  # recall of a fake family
    assert table.loc["real:a", "roc_auc"] == 1.0 and table.loc["real:b", "roc_auc"] == 0.0
    loo = res.summary()["leave_one_group_out"]
    assert loo["worst_group_auc"] == 0.0 and loo["worst_real_fpr"] == 1.0 and len(loo["groups"]) == 4
    with pytest.raises(ValueError, match="no column 'nope'"):
        run_folds(df, fit_fold, group_by="nope")


def test_refit_after_leaving_groups_out_calibrates_and_caps_false_positives(demo_cv) -> None:
    from synthdet.training.cv import decide, oof_logit

    _, _, res = demo_cv
    grouped = res.oof.assign(group=np.where(res.oof["label"] == 1, "fake", np.where(np.arange(len(res.oof)) % 2,
                                                                                      "real:odd", "real:even")))
    cv = type(res)(res.folds, res.mean, res.std, grouped, plan=res.plan, group_by="group")
    calibration, threshold, how = decide(cv, calibrate="sigmoid", max_group_fpr=0.0)
    p = calibration(oof_logit(grouped))
    assert np.all(np.diff(p[np.argsort(grouped["logit"].to_numpy())]) >= 0)  # monotone: ranking kept
    reals = grouped["label"].to_numpy() == 0
    assert (p[reals] >= threshold).sum() == 0 and "flagged ≤ 0%" in how
    with pytest.raises(ValueError, match="group_by"):
        decide(res, max_group_fpr=0.1)


def grouped_cv(demo_cv, tmp_path: Path) -> tuple[Path, Path, pd.DataFrame, typer.Typer]:
    """The demo CSV with a ``group`` column (the source's first word) and an app holding ``synthdet cv``: the cache
    folder, the CSV, its table and the app."""
    tmp, csv, _ = demo_cv
    table = pd.read_csv(csv)
    table["group"] = table["source"].str.split(" ").str[0]
    grouped = tmp_path / "grouped.csv"
    table.to_csv(grouped, index=False)
    app = typer.Typer()
    app.command("cv")(cv_command)
    app.command("other")(lambda: None)
    return tmp, grouped, table, app


def test_cv_command_leaves_groups_out(tmp_path: Path, demo_cv) -> None:
    tmp, grouped, table, app = grouped_cv(demo_cv, tmp_path)
    res = CliRunner().invoke(app, ["cv", str(grouped), "--group-by", "group", "--views", "1", "--workers", "0",
                                   "--cache", str(tmp / "cache"), "--refit", "--calibrate", "sigmoid",
                                   "--max-group-fpr", "0.3", "--band-level", "0.8",
                                   "-o", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "leave-one-group-out" in res.output and "pypi:skimage" in res.output
    assert "decisions chosen with each group left out" in res.output
    summary = json.loads((tmp_path / "out" / "cv.json").read_text())
    nested = summary["nested"]
    assert nested["selection"] == {"calibrate": "sigmoid", "max_group_fpr": 0.3, "band_level": 0.8}
    file = nested["file"]
    assert file["n"] == len(table) and "without that group" in file["rows"]
    for name in ("recall", "real_flag_rate", "worst_real_flag_rate"):
        lo, hi = file[f"{name}_ci"]
        assert np.isnan(lo) or lo <= file[name] <= hi
    assert {g["group"] for g in summary["leave_one_group_out"]["groups"]} == set(table["group"])
    det = load_detector(tmp_path / "out" / "detector")
    assert det.card.calibration is not None and det.card.calibration.method == "sigmoid"
    assert det.card.data["group_by"] == "group"
    bad = CliRunner().invoke(app, ["cv", str(grouped), "--calibrate", "sigmoid", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--refit" in bad.output


def test_cv_scores_every_held_out_image_in_other_views(tmp_path: Path, demo_cv) -> None:
    """``--view``: the same fold models score each held-out image as a thumbnail, a native-scale crop, a JPEG 95
    copy; one threshold for every view; an unknown or subset-only view is refused up front."""
    tmp, grouped, table, app = grouped_cv(demo_cv, tmp_path)
    args = ["cv", str(grouped), "--group-by", "group", "--views", "1", "--workers", "0", "--cache", str(tmp / "cache")]
    res = CliRunner().invoke(app, [*args, "--view", "thumbnail", "--view", "crop", "--view", "jpeg95", "--json",
                                   "--max-group-fpr", "0.2", "--cap-view", "crop", "-o", str(tmp_path / "out")],
                             env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    views = json.loads((tmp_path / "out" / "cv.json").read_text())["views"]
    assert list(views) == ["file", "thumbnail", "crop", "jpeg95"]
    assert len({v["threshold"] for v in views.values()}) == 1 and all(v["n"] == len(table) for v in views.values())
    assert all(0.0 <= v["worst_group_auc"] <= v["roc_auc"] <= 1.0 for v in views.values())
    assert all(len(v["roc_auc_ci"]) == 2 for v in views.values())
    nested = json.loads((tmp_path / "out" / "cv.json").read_text())["nested"]
    assert nested["selection"]["cap_views"] == ["crop"]  # the cap on real groups held on the crops' scores too
    unmatched = CliRunner().invoke(app, [*args, "--view", "thumbnail", "--max-group-fpr", "0.2", "--cap-view", "crop",
                                         "-o", str(tmp_path / "bad")])
    assert unmatched.exit_code == 2 and "--cap-view" in unmatched.output
    oof = pd.read_csv(tmp_path / "out" / "oof.csv")
    assert oof[["prob", "prob_thumbnail", "prob_crop", "prob_jpeg95"]].notna().all().all()
    near = (oof["prob_jpeg95"] - oof["prob"]).abs().mean()
    assert near < 0.05 < (oof["prob_crop"] - oof["prob"]).abs().mean()  # a crop is another input; JPEG 95 barely
    for bad in ("small", "nope"):
        out = CliRunner().invoke(app, [*args, "--view", bad, "-o", str(tmp_path / "bad")])
        assert out.exit_code == 2 and "not a pixel view" in out.output and "thumbnail" in out.output
    refused = CliRunner().invoke(app, [*args, "--view", "original", "-o", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "--views-from" in refused.output


def test_views_cut_from_the_original_files_and_the_original_view_is_the_scoring_path(tmp_path: Path, demo_cv) -> None:
    """``--views-from COLUMN``: views are cut from the file that column names; ``original`` shows it as predict does,
    so when the column names the pool file itself its scores are the file view's."""
    tmp, grouped, table, app = grouped_cv(demo_cv, tmp_path)
    pd.read_csv(grouped).assign(original=lambda d: d["path"]).to_csv(grouped, index=False)
    args = ["cv", str(grouped), "--group-by", "group", "--views", "1", "--workers", "0", "--cache", str(tmp / "cache")]
    res = CliRunner().invoke(app, [*args, "--views-from", "original", "--view", "original", "--view", "crop", "--json",
                                   "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    oof = pd.read_csv(tmp_path / "out" / "oof.csv")
    assert np.allclose(oof["prob_original"], oof["prob"], atol=1e-4)  # float16 features, batched differently
    missing = CliRunner().invoke(app, [*args, "--views-from", "nope", "--view", "crop", "-o", str(tmp_path / "bad")])
    assert missing.exit_code != 0 and "nope" in str(missing.exception or missing.output)


def test_a_pair_is_cross_validated_by_its_mean_logit_and_saved_as_one_probe(tmp_path: Path, demo_cv) -> None:
    """Two logistic probes cross-validated as a pair: on the same folds each image's logit is the mean of the
    members' own held-out logits; the refitted pair is one probe (``pair:`` backbone) whose scores, through the
    scoring path, are the mean of the two refitted members' logits; anything but two logistic probes is refused."""
    from synthdet.detectors.calibrate import logit

    tmp, csv, lite0 = demo_cv
    first = ProbeConfig(head="logreg", n_views=1, cache_dir=tmp / "cache", num_workers=0)
    same_pixels = create_backbone("effnet-lite2", preprocess=first.build_backbone().preprocess, device="cpu")
    lite2 = first.model_copy(update={"backbone": same_pixels})
    alone = cross_validate(csv, lite2, plan=lite0.plan, refit_all=True)
    pair = cross_validate(csv, [first, lite2], plan=lite0.plan, refit_all=True, out=tmp_path / "pair")
    assert np.allclose(pair.oof["logit"], (lite0.oof["logit"] + alone.oof["logit"]) / 2, atol=1e-9)
    assert pair.config["members"] == ["effnet-lite0", "effnet-lite2"]
    det = load_detector(tmp_path / "pair" / "detector")
    assert det.card.backbone == "pair:effnet-lite0+effnet-lite2" and det.card.head == "logreg"
    paths = pd.read_csv(csv)["path"].tolist()[:6]
    score = lambda d: np.array([p for _, p, _ in d.predict_paths(paths, num_workers=0)])  # noqa: E731
    members = (logit(score(lite0.detector)) + logit(score(alone.detector))) / 2
    assert np.allclose(logit(score(det)), members, atol=2e-3)  # float32 forward passes, batched apart
    with pytest.raises(ValueError, match="logreg"):
        cross_validate(csv, [first, lite2.model_copy(update={"head": "mlp"})], plan=lite0.plan)
    with pytest.raises(ValueError, match="same pixels"):
        cross_validate(csv, [first, first.model_copy(update={"backbone": "effnet-lite2"})], plan=lite0.plan)
    with pytest.raises(ValueError, match="fit views"):
        cross_validate(csv, [first, lite2.model_copy(update={"fit_views": ("crop",)})], plan=lite0.plan)


def test_a_random_plan_is_not_called_leave_one_group_out() -> None:
    """Issue 20: run with a random k-fold plan and group_by, every group sat in training for most folds, yet the
    result was labelled leave-one-group-out."""
    from synthdet.data.splits import SplitPlan

    df = frame(n_real=30, n_fake=20).drop_duplicates("sha256").reset_index(drop=True)
    df["group"] = ["real:a"] * 18 + ["real:b"] * 12 + ["fake:x"] * 15 + ["fake:y"] * 5
    random_plan = SplitPlan.build(df, test=0.0, k=5, seed=0)
    with pytest.raises(ValueError, match="random folds, not one per group.*leave-one-group-out"):
        run_folds(df, lambda f, train, test: (np.full(len(test), 0.5), 0.5), plan=random_plan, group_by="group")


def test_fit_views_join_the_fit_rows_for_size_matched_images_only(tmp_path: Path, demo_cv) -> None:
    """``fit_views``: view 0 of each listed view of the original file joins the fit rows, for the size-matched images
    only (one row each, in every fold's fit rows and in the refit); without ``views_from``, or through
    ``train_detector``, it is refused."""
    from synthdet.data.splits import size_matched
    from synthdet.io.pixels import file_megapixels
    from synthdet.training.train import train_detector

    tmp, grouped, table, app = grouped_cv(demo_cv, tmp_path)
    table.assign(original=table["path"]).to_csv(grouped, index=False)
    config = ProbeConfig(head="logreg", n_views=1, cache_dir=tmp / "cache", num_workers=0, fit_views=("crop",))
    res = cross_validate(grouped, config, group_by="group", views_from="original", refit_all=True)
    df, _ = usable_rows(grouped)
    df = df.drop_duplicates("sha256").reset_index(drop=True)
    matched = size_matched(file_megapixels(df["original"]), df["label"].to_numpy(), seed=config.seed)
    assert 0 < len(matched) < len(df)
    assert res.detector.card.data["fit_views"] == ["crop"] and res.detector.card.data["fit_views_images"] == len(matched)
    assert res.detector.head.pipeline_.named_steps["scale"].n_samples_seen_ == len(df) + len(matched)
    with pytest.raises(ValueError, match="views_from"):
        cross_validate(grouped, config, group_by="group")
    with pytest.raises(ValueError, match="cross_validate"):
        train_detector(grouped, config)
    args = ["cv", str(grouped), "--group-by", "group", "-o", str(tmp_path / "bad")]
    no_original = CliRunner().invoke(app, [*args, "--fit-view", "crop"])
    assert no_original.exit_code == 2 and "--views-from" in no_original.output
    unknown = CliRunner().invoke(app, [*args, "--views-from", "original", "--fit-view", "original"])
    assert unknown.exit_code == 2 and "--fit-view" in unknown.output


def test_derived_images_join_only_the_fits_that_train_on_their_source(tmp_path: Path, demo_cv, monkeypatch) -> None:
    """``derived`` (training-only images made from images of the data, e.g. aligned autoencoder round trips): every
    view of one joins the fit rows of exactly the fold models whose fit rows hold its source, and the refit; none is
    ever scored; images derived from an image outside the data are dropped."""
    from PIL import Image

    import synthdet.training.cv as cv_module
    from synthdet.cli import app

    tmp, grouped, _, _ = grouped_cv(demo_cv, tmp_path)
    table, _ = usable_rows(grouped)
    table = table.drop_duplicates("sha256").reset_index(drop=True)
    sources = table[table["label"] == 0].head(8)
    rows = []
    for r in sources.itertuples():
        out = tmp_path / f"{Path(r.path).stem}-derived.jpg"
        with Image.open(r.path) as im:
            im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, quality=90)
        rows.append({"path": str(out), "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "label": 1,
                     "derived_from": r.sha256})
    stray = tmp_path / "stray.jpg"
    Image.new("RGB", (64, 64), (9, 99, 199)).save(stray)
    rows.append({"path": str(stray), "sha256": hashlib.sha256(stray.read_bytes()).hexdigest(), "label": 1,
                 "derived_from": "0" * 64})  # from no image of the data: never used
    derived = pd.DataFrame(rows)
    fits: list[tuple[np.ndarray, np.ndarray]] = []
    real_fit_head = cv_module.fit_head

    def spy(head, params, X, y, X_cal, y_cal, *, groups):
        fits.append((np.asarray(groups), np.asarray(y)))
        return real_fit_head(head, params, X, y, X_cal, y_cal, groups=groups)

    monkeypatch.setattr(cv_module, "fit_head", spy)
    config = ProbeConfig(head="logreg", n_views=1, cache_dir=tmp / "cache", num_workers=0)
    res = cross_validate(grouped, config, group_by="group", refit_all=True, derived=derived)
    assert not res.oof["sha256"].isin(derived["sha256"]).any()
    src_of = dict(zip(derived["sha256"], derived["derived_from"]))
    n_derived_rows = 0
    for f, (groups, y) in enumerate(fits):
        held_out = set(res.oof.loc[res.oof["fold"] == f, "sha256"])
        fit_shas, counts = np.unique(groups, return_counts=True)
        assert not held_out & set(fit_shas)  # no held-out image, nor anything derived from one
        # a source with a derived image in the fit rows: its own row and the derived image's, labelled 1
        doubled = set(fit_shas[counts == 2])
        assert doubled <= set(derived["derived_from"])
        n_derived_rows += len(doubled)
        for sha in doubled:
            assert sorted(y[groups == sha]) == [0, 1]
    used = {s for s in src_of.values() if s in set(table["sha256"])}
    assert n_derived_rows > 0 and n_derived_rows <= len(used) * (res.config["k"] - 1)
    n_images = len(table)
    assert res.detector.card.data["derived_images"] == len(used) == 8
    assert res.detector.head.pipeline_.named_steps["scale"].n_samples_seen_ == n_images + len(used)
    with pytest.raises(ValueError, match="label"):
        cross_validate(grouped, config, group_by="group", derived=derived.drop(columns="label"))
    derived.drop(columns="derived_from").to_csv(tmp_path / "unlabelled.csv", index=False)
    refused = CliRunner().invoke(app, ["cv", str(grouped), "--group-by", "group", "--derived",
                                       str(tmp_path / "unlabelled.csv"), "-o", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "derived_from" in refused.output  # before any work: one line
    with pytest.raises(ValueError, match="training-only"):
        cross_validate(grouped, config, group_by="group", derived=table.head(2).assign(derived_from=table["sha256"][0]))
