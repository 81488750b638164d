"""``synthdet cv``: stratified k-fold (or leave-one-group-out) cross-validation of a head on cached features."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from synthdet.cli._io import (
    Json,
    NativeSize,
    Quiet,
    TapPoolOption,
    console,
    fail,
    make_backbone,
    print_json,
    say,
    skipped,
)

if TYPE_CHECKING:
    from rich.table import Table

    from synthdet.detectors.calibrate import CalibrationMethod
    from synthdet.training.cv import CVResult


def cv_table(result: CVResult) -> Table:
    from rich.table import Table

    from synthdet.training.cv import FOLD_METRICS

    c = result.config
    table = Table(title=f"{c['k']}-fold CV — {c['backbone']} + {c['head']} ({c['features']}, {c['n_views']} views, "
                        f"{c['n_images']} images)")
    for col in ("fold", "n", "fake", "ROC AUC", "AP", "F1", "accuracy", "EER", "threshold"):
        table.add_column(col, justify="right")
    for f in result.folds:
        table.add_row(str(f["fold"]), str(f["n"]), str(f["n_fake"]), *(f"{f[m]:.4f}" for m in FOLD_METRICS),
                      f"{f['threshold']:.3f}")
    table.add_section()
    table.add_row("mean ± std", str(sum(f["n"] for f in result.folds)), str(sum(f["n_fake"] for f in result.folds)),
                  *(f"{result.mean[m]:.4f} ± {result.std[m]:.4f}" for m in FOLD_METRICS), "")
    table.caption = "F1 and accuracy at each fold's threshold, chosen on a calibration slice of its training folds"
    return table


def group_table(result: CVResult) -> Table:
    from rich.table import Table

    loo = result.summary()["leave_one_group_out"]
    c = result.config
    table = Table(title=f"leave-one-{result.group_by}-out — {c['backbone']} + {c['head']} ({c['features']}, "
                        f"{c['n_images']} images, {c['k']} groups)")
    for col in ("held-out group", "class", "n", "ROC AUC vs other class", "flagged", "median prob"):
        table.add_column(col, justify="left" if col == "held-out group" else "right")
    for r in loo["groups"]:
        table.add_row(r["group"], "fake" if r["label"] else "real", str(r["n"]), f"{r['roc_auc']:.4f}",
                      f"{r['flagged']:.1%}", f"{r['median_prob']:.3f}")
    table.add_section()
    table.add_row("pooled", "", str(loo["pooled"]["n"]), f"{loo['pooled']['roc_auc']:.4f}", "", "")
    table.add_row("mean / worst group", "", "", f"{loo['mean_group_auc']:.4f} / {loo['worst_group_auc']:.4f}",
                  f"worst real {loo['worst_real_fpr']:.1%}", "")
    table.caption = (f"every image scored by a model that never saw its {result.group_by}; a fake family ranked "
                     f"against all reals, a real source against all fakes; flagged = share called generated at "
                     f"{loo['threshold']:.3f} (F1-optimal on the pooled scores): false positives for a real source")
    return table


def view_table(result: CVResult) -> Table:
    from rich.table import Table

    table = Table(title=f"views — every held-out image shown as the file and as {', '.join(result.views)}")
    worst = result.group_by is not None
    for col in ("view", "n", "ROC AUC", *(("95% CI (groups)", "worst group AUC", "worst group", "worst real flagged")
                                         if worst else ()), "recall"):
        table.add_column(col, justify="left" if col in ("view", "worst group") else "right")
    summary = result.view_summary()
    for view, b in summary.items():
        ci = (f"{b['roc_auc_ci'][0]:.3f}–{b['roc_auc_ci'][1]:.3f}",) if worst else ()
        table.add_row(view, str(b["n"]), f"{b['roc_auc']:.4f}", *ci,
                      *((f"{b['worst_group_auc']:.4f}", b["worst_group"], f"{b['worst_real_fpr']:.1%}") if worst else ()),
                      f"{b['recall']:.1%}")
    thr = summary["file"]["threshold"]
    table.caption = (f"the same fold models on every view; flagged and recall at one threshold, {thr:.3f} (F1-optimal "
                     f"on the file view's pooled held-out scores)")
    return table


def nested_table(result: CVResult) -> Table:
    from rich.table import Table

    nested = result.nested()
    sel = nested["selection"]
    how = ", ".join(filter(None, [f"calibration {sel['calibrate']}" if sel.get("calibrate") else "",
                                  f"every real {result.group_by} ≤ {sel['max_group_fpr']:.0%}"
                                  + (f" (file, {', '.join(sel['cap_views'])})" if sel.get("cap_views") else "")
                                  if sel.get("max_group_fpr") is not None else "F1-optimal threshold",
                                  f"band at {sel['band_level']:.0%}" if sel.get("band_level") else ""]))
    table = Table(title=f"decisions chosen with each {result.group_by} left out ({how})")
    for col in ("view", "recall", "real flagged", "worst real flagged", "uncertain", "right outside band"):
        table.add_column(col, justify="left" if col == "view" else "right")

    def cell(b: dict, name: str) -> str:
        lo, hi = b[f"{name}_ci"]
        return f"{b[name]:.1%} [{lo:.1%}–{hi:.1%}]"

    for view, b in nested.items():
        if view != "selection":
            table.add_row(view, cell(b, "recall"), cell(b, "real_flag_rate"), cell(b, "worst_real_flag_rate"),
                          f"{b['uncertain_share']:.1%}", f"{b['accuracy_outside_band']:.1%}")
    lo, hi = nested["file"]["threshold_range"]
    table.caption = (f"each {result.group_by}'s verdicts from a threshold (here {lo:.3f}–{hi:.3f}) chosen on the other "
                     f"groups' held-out scores: held out for the model and for the decision; [95% group-bootstrap "
                     f"interval]")
    return table


def cv_command(
    data: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake, real/fake), CSV path,label or manifest.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for cv.json, oof.csv and (--refit) detector/.")],
    backbone: Annotated[str, typer.Option(help="Backbone name (see `synthdet backbones`).")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    head: Annotated[str, typer.Option(help="linear | residual | deep | logreg | fusion")] = "logreg",
    features: Annotated[str, typer.Option(help="pooled | concat (pooled + every layer tap)")] = "pooled",
    views: Annotated[int, typer.Option(min=1, help="Cached training views per image.")] = 4,
    k: Annotated[int, typer.Option(min=2, help="Number of folds.")] = 5,
    group_by: Annotated[str | None, typer.Option(
        "--group-by", help="Leave one group out instead: one fold per value of this manifest column (source, "
                           "generator, or your own, e.g. group).")] = None,
    folds_by: Annotated[str | None, typer.Option(
        "--folds-by", help="With --group-by: fold by this coarser column instead (each of its values holds whole "
                           "groups), for fewer folds when groups are many.")] = None,
    seed: Annotated[int, typer.Option()] = 42,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int | None, typer.Option(min=0, help="DataLoader workers.")] = None,
    refit: Annotated[bool, typer.Option(help="Then fit on every image → OUT/detector (threshold from out-of-fold "
                                             "probabilities).")] = False,
    calibrate: Annotated[str | None, typer.Option(help="With --refit: calibrate the probability on the out-of-fold "
                                                       "scores: sigmoid (keeps the ranking) | isotonic.")] = None,
    max_group_fpr: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="With --group-by: the best threshold at which no real group is flagged more often "
                               "than this (for --refit's detector, and chosen with each group left out for the "
                               "nested figures).")] = None,
    cap_view: Annotated[list[str] | None, typer.Option(
        "--cap-view", help="With --max-group-fpr: the cap holds on this --view's scores too (repeatable): one "
                           "threshold whatever the detector is shown.")] = None,
    band_level: Annotated[float | None, typer.Option(
        min=0.5, max=1.0, help="With --group-by: an uncertainty band outside which this share of verdicts is right, "
                               "chosen with each group left out for the nested figures.")] = None,
    native_views: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of training views cut at the image's own scale (no resampling) instead of "
                               "the downscaled whole.")] = 0.0,
    view: Annotated[list[str] | None, typer.Option(
        "--view", help="Also score every held-out image in this view, by the same fold models (repeatable): "
                       "thumbnail (centre square, 384 px, JPEG 70-95), crop (224 px at native scale, JPEG 70-95), "
                       "or any slice of `synthdet evaluate`; with --views-from also 'original'.")] = None,
    views_from: Annotated[str | None, typer.Option(
        "--views-from", help="Cut the --view views from the file in this manifest column (a pool stored as crops "
                             "of larger originals is judged on the originals); adds the view 'original': that "
                             "file as predict sees it.")] = None,
    fit_view: Annotated[list[str] | None, typer.Option(
        "--fit-view", help="With --views-from: this view (thumbnail, crop) of the originals of a size-matched subset "
                           "(as many photos as generated images per size bin) joins the fit rows (repeatable).")] = None,
    derived: Annotated[Path | None, typer.Option(
        "--derived", exists=True, dir_okay=False,
        help="CSV of training-only images made from images of DATA (path, sha256, label, derived_from: the source's "
             "sha256; e.g. scripts/aligned_pool.py's aligned pairs): each joins the fit rows of exactly the fold "
             "models that fit on its source, and the refit; never scored.")] = None,
    native_size: NativeSize = None,
    tap_pool: TapPoolOption = "mean",
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Stratified k-fold cross-validation of a head on cached features: each fold, then mean ± std."""
    import pandas as pd

    from synthdet.features.extract import FeatureKind
    from synthdet.training.cv import cross_validate
    from synthdet.training.train import ProbeConfig

    if features not in ("pooled", "concat"):
        raise fail(f"--features must be pooled or concat, not {features!r}")
    if calibrate not in (None, "sigmoid", "isotonic"):
        raise fail(f"--calibrate must be sigmoid or isotonic, not {calibrate!r}")
    if (calibrate or max_group_fpr is not None) and not (refit or group_by):
        raise fail("--calibrate and --max-group-fpr choose the refitted detector's calibration and threshold (add "
                   "--refit), or the nested selection of leave-one-group-out (add --group-by)")
    if (band_level is not None or folds_by) and not group_by:
        raise fail("--band-level and --folds-by need --group-by")
    if cap_view and (max_group_fpr is None or set(cap_view) - set(view or [])):
        raise fail("--cap-view VIEW needs --max-group-fpr and the same --view VIEW")
    from synthdet.data.perturbations import get_view
    from synthdet.training.cv import ORIGINAL_VIEW

    if (ORIGINAL_VIEW in (view or []) or fit_view) and not views_from:
        raise fail(f"--view {ORIGINAL_VIEW} and --fit-view need --views-from COLUMN (each image's original file)")
    for option, v in [*(("--view", v) for v in view or []), *(("--fit-view", v) for v in fit_view or [])]:
        if option == "--view" and v == ORIGINAL_VIEW:
            continue
        try:
            get_view(v)
        except ValueError as e:
            raise fail(f"{option} {e}") from None
    bb = make_backbone(backbone, weights=weights, native_size=native_size, tap_pool=tap_pool)
    if native_views:
        bb.preprocess = bb.preprocess.model_copy(
            update={"views": bb.preprocess.views.model_copy(update={"p_native": native_views})})
    config = ProbeConfig(backbone=bb, weights=weights, head=head, features=cast(FeatureKind, features), n_views=views,
                         seed=seed, cache_dir=cache, batch_size=batch_size, num_workers=workers,
                         fit_views=tuple(fit_view or ()))
    result = cross_validate(
        data, config, k=k, group_by=group_by, folds_by=folds_by, refit_all=refit,
        calibrate=cast("CalibrationMethod | None", calibrate), max_group_fpr=max_group_fpr, band_level=band_level,
        cap_views=cap_view or (), views=view or (), views_from=views_from, out=out, progress=not quiet,
        derived=pd.read_csv(derived, dtype={"sha256": str, "derived_from": str}) if derived else None,
    )
    for path, reason in result.skipped:
        skipped(path, reason)
    if as_json:
        print_json({**result.summary(), "out": str(out),
                    "detector": str(out / "detector") if result.detector is not None else None})
        return
    console().print(group_table(result) if group_by else cv_table(result))
    if result.views:
        console().print(view_table(result))
    if group_by:
        console().print(nested_table(result))
    say(f"folds → [bold]{out / 'cv.json'}[/], out-of-fold probabilities → [bold]{out / 'oof.csv'}[/]")
    if result.detector is not None:
        say(f"detector fitted on every image → [bold]{out / 'detector'}[/]  "
            f"(threshold {result.detector.threshold:.3f}, from the out-of-fold probabilities)")
