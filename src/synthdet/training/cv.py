"""Stratified k-fold cross-validation of a detector recipe: how much do its scores move with the split?

Raza 2025 (``seeds/003``) validates with 5-fold stratified CV "to assess stability and variance" and then retrains
the final model on all labelled images; one 80/20 split of a 927-image set can be lucky or unlucky by several
points of F1, and k folds show by how much.

Folds come from a :class:`~synthdet.data.splits.SplitPlan` (stratified by label and generator/source, grouped by
content hash and near-duplicates, so copies share a fold; saved as ``plan.json``); every image is tested exactly once.
Inside the k-1 training folds the plan's stratified, grouped ``calib`` slice (15 %) is held out: the head early-stops
on it and the fold's F1-optimal threshold is chosen on it — never on the test fold, whose images only ever get scored.
Fold metrics are computed on the test fold alone; the summary is mean ± population std (ddof 0, as scikit-learn's CV
examples) over folds.

:func:`run_folds` is the loop for any recipe given as a :data:`FoldFitter`; :func:`cross_validate` runs it for a head
on cached features, :func:`~synthdet.training.finetune.pipeline.finetune_fitter` makes the fitter for fine-tuning from
images (one fine-tuning per fold: fine on a GPU, slow on CPU). With ``refit_all`` the head is then fitted on every
labelled image and its threshold taken from the out-of-fold probabilities — each from a model that never saw that
image, as scikit-learn's ``TunedThresholdClassifierCV`` does; torch heads train for the median best epoch of the folds
(nothing is left to early-stop on).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthdet.backbones.pair import pair_backbone, pair_columns, pair_name
from synthdet.data.manifest import manifest_hash, usable_rows, write_manifest
from synthdet.data.perturbations import get_view
from synthdet.data.splits import RowSet, SplitPlan, derived_rows, size_matched
from synthdet.data.tilehash import TileIndex
from synthdet.detectors.calibrate import (
    Calibration,
    CalibrationMethod,
    capped_threshold,
    f1_optimal_threshold,
    fit_calibration,
    logit,
    sigmoid,
)
from synthdet.detectors.detector import Detector
from synthdet.evaluation.metrics import binary_metrics, source_table
from synthdet.evaluation.selection import auc_ci, nested_decisions, nested_summary
from synthdet.features.extract import extract, view_features
from synthdet.heads.base import create_head, head_logit
from synthdet.heads.logreg import mean_of_heads
from synthdet.io.atomic import atomic_open, write_text
from synthdet.io.pixels import file_megapixels
from synthdet.training.members import Member, check_pair
from synthdet.training.train import ProbeConfig, assign_roles, best_epoch, fit_head, load_features, refit_params

FoldFitter = Callable[[int, pd.DataFrame, pd.DataFrame], tuple[np.ndarray, float]]
"""``(fold, train rows with a split column "fit"/"calib", test rows) → (test probabilities, threshold)``.

The threshold must never come from the test rows: a recipe that fits something takes it from the ``calib`` rows. A
NaN probability marks a test image that could not be scored (left out of that fold's metrics, kept in the table)."""

#: The view that shows each image's ``views_from`` file unchanged, through the scoring path's own decoding.
ORIGINAL_VIEW = "original"
#: Per-fold metrics, in table order: ranking metrics, then decisions at the fold's own calibrated threshold.
FOLD_METRICS = ("roc_auc", "ap", "f1", "accuracy", "eer")


@dataclass
class CVResult:
    folds: list[dict[str, Any]]  # per fold: fold, n, n_fake, threshold and FOLD_METRICS
    mean: dict[str, float]
    std: dict[str, float]
    oof: pd.DataFrame  # one row per image: path, sha256, label, source, generator, fold, prob, threshold
    plan: SplitPlan | None = None  # the folds (and each fold's fit/calib roles)
    detector: Detector | None = None  # with refit_all: fitted on every image, threshold from the oof probabilities
    skipped: list[tuple[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # what was cross-validated (backbone, head, k …)
    group_by: str | None = None  # leave-one-group-out: the column whose values were held out in turn
    views: list[str] = field(default_factory=list)  # other views scored by the same fold models: oof["prob_<view>"]
    #: how a refitted detector's decisions are chosen (calibrate, max_group_fpr, band_level): :meth:`nested` repeats it
    selection: dict[str, Any] = field(default_factory=dict)
    #: the bootstrapped figures (views, nested), computed once per state of the fields they read: several readers
    #: (the card, cv.json, the CLI's tables) ask for them, and each computation takes seconds
    _memo: tuple[tuple, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    def _once(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()``, kept until :attr:`oof` is replaced or the views, groups or selection change."""
        state = (self.oof, tuple(self.views), self.group_by, tuple(sorted(self.selection.items())))
        if self._memo is None or self._memo[0][0] is not self.oof or self._memo[0][1:] != state[1:]:
            self._memo = (state, {})
        values = self._memo[1]
        if name not in values:
            values[name] = compute()
        return values[name]

    def scored(self) -> pd.DataFrame:
        """The out-of-fold rows that got a probability (an image that could not be scored has NaN)."""
        return self.oof[np.isfinite(self.oof["prob"])]

    def by_group(self, threshold: float | None = None) -> pd.DataFrame:
        """Leave-one-group-out figures per held-out group (:func:`~synthdet.evaluation.metrics.source_table`) at ``threshold``
        (default: the F1-optimal threshold of the pooled out-of-group probabilities)."""
        if self.group_by is None:
            raise ValueError("these folds were not made by a group column (cross_validate(group_by=...))")
        scored = self.scored()
        y, p = scored["label"].to_numpy(), scored["prob"].to_numpy()
        thr = f1_optimal_threshold(y, p) if threshold is None else threshold
        return source_table(y, p, scored[self.group_by].to_numpy(), threshold=thr)

    def summary(self) -> dict[str, Any]:
        """The figures, labelled: each fold's from its own model at its own threshold, on its held-out fold; with
        ``group_by``, also the pooled out-of-group scores and the per-group table."""
        out: dict[str, Any] = {"model": "one model per fold (fitted on the other folds), not a refitted detector",
                               "rows": "held-out", "plan_id": self.plan.id if self.plan else None,
                               "config": self.config, "folds": self.folds, "mean": self.mean, "std": self.std}
        if self.group_by is not None:
            scored = self.scored()
            y, p = scored["label"].to_numpy(), scored["prob"].to_numpy()
            pooled = binary_metrics(y, p, threshold=f1_optimal_threshold(y, p))
            table = self.by_group(pooled["at_threshold"]["threshold"])
            reals = table[table["label"] == 0]
            out["leave_one_group_out"] = {
                "group_by": self.group_by,
                "rows": "held-out: every image scored by the model whose training excluded its whole group",
                "pooled": pooled, "mean_group_auc": float(table["roc_auc"].mean()),
                "worst_group_auc": float(table["roc_auc"].min()),
                "worst_real_fpr": float(reals["flagged"].max()) if len(reals) else float("nan"),
                "threshold": pooled["at_threshold"]["threshold"], "groups": table.to_dict("records")}
        if self.views:
            out["views"] = self.view_summary()
        if self.group_by is not None:
            out["nested"] = self.nested()
        return out

    def nested(self) -> dict[str, Any]:
        """Per view, the figures of decisions chosen with each group left out (:func:`~synthdet.evaluation.selection.
        nested_decisions`, with :attr:`selection`'s calibration, cap and band, made on the file view): recall, real
        flag rates and the band's figures, held out for the selection too, with group-bootstrap intervals."""
        if self.group_by is None:
            raise ValueError("nested selection needs leave-one-group-out folds (group_by)")
        return self._once("nested", self._nested)

    def _nested(self) -> dict[str, Any]:
        assert self.group_by is not None
        rows = self.scored()
        logits = {"file": oof_logit(rows), **{v: oof_logit(rows, v) for v in self.views}}
        decisions = nested_decisions(rows["label"].to_numpy(), logits, rows[self.group_by].to_numpy(), **self.selection)
        return {"selection": dict(self.selection), **{v: nested_summary(decisions, v) for v in logits}}

    def view_summary(self) -> dict[str, Any]:
        """Per view (``file``: the image as given, then each of :attr:`views`), the same held-out figures: pooled ROC
        AUC, and with ``group_by`` its group-bootstrap interval, the worst group's AUC and the most-flagged real group
        at one threshold for every view — the F1-optimal one of the file view, as a deployed detector has one
        threshold whatever it is shown."""
        return self._once("views", self._view_summary)

    def _view_summary(self) -> dict[str, Any]:
        file = self.scored()
        thr = f1_optimal_threshold(file["label"].to_numpy(), file["prob"].to_numpy())
        out: dict[str, Any] = {}
        for view, column in [("file", "prob"), *((v, f"prob_{v}") for v in self.views)]:
            rows = self.oof[np.isfinite(self.oof[column])]
            y, p = rows["label"].to_numpy(), rows[column].to_numpy()
            block: dict[str, Any] = {"n": len(rows), "threshold": thr, "roc_auc": binary_metrics(y, p)["roc_auc"],
                                     "recall": float((p[y == 1] >= thr).mean()) if (y == 1).any() else float("nan")}
            if self.group_by is not None:
                groups = rows[self.group_by].to_numpy()
                table = source_table(y, p, groups, threshold=thr)
                reals = table[table["label"] == 0]
                block |= {"roc_auc_ci": auc_ci(y, p, groups), "worst_group_auc": float(table["roc_auc"].min()),
                          "worst_group": str(table.loc[table["roc_auc"].idxmin(), "group"]) if table["roc_auc"].notna().any() else "",
                          "worst_real_fpr": float(reals["flagged"].max()) if len(reals) else float("nan")}
            out[view] = block
        return out


def fold_metrics(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    m = binary_metrics(y, prob, threshold=threshold)
    at = m["at_threshold"]
    return {"n": m["n"], "n_fake": m["n_fake"], "threshold": float(threshold), "roc_auc": m["roc_auc"], "ap": m["ap"],
            "f1": at["f1"], "accuracy": at["accuracy"], "eer": m["eer"]}


def check_group_folds(plan: SplitPlan, group_by: str | None) -> None:
    """Results are labelled leave-one-``group_by``-out only when the plan's folds are groups (built with
    ``fold_by``): a random k-fold plan puts every group in training for most folds, so its scores are not
    out-of-group and must not be called so."""
    if group_by is not None and not plan.fold_names:
        raise ValueError(f"split plan {plan.id} has random folds, not one per group: its scores would not be "
                         f"leave-one-{group_by}-out. Build the plan with fold_by={group_by!r} (or a coarser column "
                         f"holding whole groups), or leave group_by out")


def run_folds(
    df: pd.DataFrame, fit_fold: FoldFitter, *, k: int = 5, seed: int = 42, calib_fraction: float = 0.15,
    plan: SplitPlan | None = None, group_by: str | None = None,
) -> CVResult:
    """Fit ``k`` times, each time testing one fold of ``plan`` (default: built from ``df`` with ``k``, ``seed``,
    ``calib_fraction``, and ``group_by``: one fold per value of that column, leave-one-group-out); ``df`` holds
    decodable, labelled rows (one per image is kept; images labelled both ways are left out and listed in
    ``skipped``)."""
    df = df.drop_duplicates("sha256").reset_index(drop=True)
    plan = plan or SplitPlan.build(df, test=0.0, calib=calib_fraction, k=k, seed=seed, fold_by=group_by)
    check_group_folds(plan, group_by)
    df, skipped = assign_roles(df, plan)
    df = df.drop(columns="split").assign(fold=plan.fold_of(df["sha256"]))
    prob = np.full(len(df), np.nan)
    thr = np.full(len(df), np.nan)
    folds = []
    for f in range(plan.k):
        train = df[df["fold"] != f].copy()
        train["split"] = plan.fold_roles(train["sha256"], f)
        test = df[df["fold"] == f]
        p, t = fit_fold(f, train, test)
        prob[test.index], thr[test.index] = p, t
        scored = np.isfinite(p)
        name = {"group": plan.fold_names[f]} if plan.fold_names else {}
        folds.append({"fold": f, **name, **fold_metrics(test["label"].to_numpy()[scored], p[scored], t)})
    table = pd.DataFrame(folds)
    keep = list(dict.fromkeys(c for c in ("path", "sha256", "label", "source", "generator", group_by, "fold")
                              if c and c in df))
    oof = df[keep].assign(prob=prob, threshold=thr)
    return CVResult(folds, {m: float(table[m].mean()) for m in FOLD_METRICS},
                    {m: float(table[m].std(ddof=0)) for m in FOLD_METRICS}, oof, plan=plan, skipped=skipped,
                    group_by=group_by)


def cross_validate(
    data: str | Path | pd.DataFrame,
    config: ProbeConfig | Sequence[ProbeConfig],
    *,
    k: int = 5,
    plan: SplitPlan | None = None,
    group_by: str | None = None,
    folds_by: str | None = None,
    refit_all: bool = False,
    calibrate: CalibrationMethod | None = None,
    max_group_fpr: float | None = None,
    band_level: float | None = None,
    cap_views: Sequence[str] = (),
    views: Sequence[str] = (),
    views_from: str | None = None,
    derived: pd.DataFrame | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> CVResult:
    """k-fold CV of the head ``config`` describes, on cached features (``fit`` rows get its ``n_views`` views, calib
    and test rows view 0, as in ``train_detector``). Folds are those of ``plan`` (default: built from ``data`` with
    ``k`` and the config's ``seed`` and ``calib_fraction``; with ``group_by``, one fold per value of that column —
    leave-one-source-out, the protocol that predicts the wild; ``folds_by``: a coarser column whose values hold several
    whole groups each, for fewer folds when groups are many). ``views`` (slices, e.g. ``thumbnail`` and ``crop``:
    :func:`~synthdet.data.perturbations.get_view`; ``original``: the file as scoring sees it) are scored too, by the same
    fold models on the same held-out images, into ``oof["prob_<view>"]`` (:meth:`CVResult.view_summary`), cut from
    the file in column ``views_from`` when given (a pool stored as crops of larger originals is judged on the
    originals, as the world shows them). ``derived``: training-only images made from images of ``data``
    (:func:`~synthdet.data.splits.derived_rows`), in the fit rows of exactly the models fitted on their source.
    ``out`` receives ``cv.json``, ``oof.csv``, ``plan.json`` and, with ``refit_all``, ``detector/``.

    ``max_group_fpr`` caps every real group's flag rate at the refitted detector's threshold, on the file's scores and
    on those of each of ``cap_views`` (among ``views``): a deployed detector has one threshold whatever it is shown.

    Two configs (logistic probes on backbones that read the same pixels) are a pair: each fold fits both heads and
    scores every image by the mean of their raw logits; the refitted detector is one probe over both backbones'
    features (:mod:`synthdet.backbones.pair`) whose logit is that mean."""
    configs = [config] if isinstance(config, ProbeConfig) else list(config)
    lead = configs[0]
    # a name that is not a view fails before any work; "original": the file of ``views_from`` as predict sees it
    shown_as = {v: None if v == ORIGINAL_VIEW else get_view(v) for v in views}
    if ORIGINAL_VIEW in shown_as and views_from is None:
        raise ValueError(f"the {ORIGINAL_VIEW!r} view needs views_from (the column naming each image's original file)")
    if set(cap_views) - set(views) or (cap_views and max_group_fpr is None):
        raise ValueError(f"cap_views {list(cap_views)} must be among the views scored ({list(views)}) and need "
                         "max_group_fpr")
    members = [Member.of(c) for c in configs]
    check_pair(members)
    df, skipped = usable_rows(data, progress=progress)
    df = df.drop_duplicates("sha256").reset_index(drop=True)
    plan = plan or SplitPlan.build(df, test=0.0, calib=lead.calib_fraction, k=k, seed=lead.seed,
                                   fold_by=folds_by or group_by)
    check_group_folds(plan, group_by)
    if not plan.k:
        raise ValueError(f"split plan {plan.id} has no folds (built with k=0)")
    df, outside = assign_roles(df, plan)  # images labelled both ways are left out, with their reason
    skipped += outside
    df = df.drop(columns="split")
    derived = derived_rows(derived, df)  # refused before any work; those of a file that fails join no fit
    train_views = list(range(max(1, lead.n_views)))  # every image is in the fit rows of some fold: extract every view once
    failed: dict[str, str] = {}
    for m in members:
        ex = extract(m.bb, df["path"].tolist(), df["sha256"].tolist(), m.store, views=train_views,
                     batch_size=m.config.batch_size, num_workers=m.config.num_workers, progress=progress)
        failed |= {s.path: s.reason for s in ex.skipped}
    skipped += list(failed.items())
    df = df[~df["path"].isin(failed)].reset_index(drop=True)
    if views_from is not None and views_from not in df:
        raise ValueError(f"no column {views_from!r} to cut the views from (columns: {list(df.columns)})")
    if lead.fit_views and views_from is None:
        raise ValueError(f"fit_views {lead.fit_views} are cut from each image's original file: give views_from")
    matched = size_matched(file_megapixels(df[views_from]), df["label"].to_numpy(), seed=lead.seed) \
        if lead.fit_views else np.empty(0, dtype=int)
    for m in members:
        m.X, owner = load_features(m.store, df["sha256"].tolist(), train_views, m.features)  # row i * len(views) + v
        derived = m.load_derived(derived, train_views, progress=progress)  # a pair's members: the same images
        m.shown = {v: view_features(m.bb, df[views_from or "path"].tolist(), df["sha256"].tolist(), v, t, m.features,
                                    tag=f"@{views_from}" if views_from else "", cache_dir=m.config.cache_dir,
                                    batch_size=m.config.batch_size, num_workers=m.config.num_workers,
                                    progress=progress)
                   for v, t in {**shown_as, **{v: get_view(v) for v in lead.fit_views}}.items()}
    y, shas = df["label"].to_numpy()[owner], df["sha256"].to_numpy()[owner]
    view_logit = {v: np.full(len(df), np.nan) for v in ("", *views)}  # "": the file itself

    def rows(images: pd.Index, every_view: bool) -> np.ndarray:
        first = np.asarray(images) * len(train_views)
        return (first[:, None] + np.arange(len(train_views))).ravel() if every_view else first

    def mean_logit(models: list[Any], inputs: list[np.ndarray]) -> np.ndarray:  # a pair: the mean of its logits
        return np.mean([head_logit(model, x) for model, x in zip(models, inputs)], axis=0)

    best_epochs: list[list[int | None]] = [[] for _ in members]

    def fit_fold(_: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        fit_images = train.index[train["split"] == "fit"]
        fit, cal = rows(fit_images, True), rows(train.index[train["split"] == "calib"], False)
        extra = np.intersect1d(fit_images, matched)
        fitted = []
        for m in members:
            X, labels, groups = m.fit_rows(fit, extra, y, shas, sources=fit_images)
            fitted.append(fit_head(m.config.head, m.params, X, labels, m.X[cal], y[cal], groups=groups))
        models = [model for model, _ in fitted]
        for j, model in enumerate(models):
            best_epochs[j].append(best_epoch(model))
        threshold = fitted[0][1] if len(members) == 1 else f1_optimal_threshold(
            y[cal], sigmoid(mean_logit(models, [m.X[cal] for m in members])))
        for v in shown_as:
            ok = test.index[np.all([np.isfinite(m.shown[v][test.index]).all(axis=1) for m in members], axis=0)]
            if len(ok):
                view_logit[v][ok] = mean_logit(models, [m.shown[v][ok] for m in members])
        view_logit[""][test.index] = mean_logit(models, [m.X[rows(test.index, False)] for m in members])
        return sigmoid(view_logit[""][test.index]), threshold

    result = run_folds(df, fit_fold, plan=plan, group_by=group_by)  # row i of df is image i of X
    result.oof = result.oof.assign(logit=view_logit[""], **{f"prob_{v}": sigmoid(z) for v, z in view_logit.items() if v},
                                   **{f"logit_{v}": z for v, z in view_logit.items() if v})
    result.views = list(views)
    result.selection = {"calibrate": calibrate, "max_group_fpr": max_group_fpr, "band_level": band_level,
                        **({"cap_views": tuple(cap_views)} if cap_views else {})}
    result.skipped = skipped
    names = [m.bb.name for m in members]
    result.config = {"backbone": names[0] if len(names) == 1 else pair_name(*names),
                     "weights_id": "+".join(m.bb.weights_id for m in members), "head": lead.head,
                     "features": members[0].features, "n_views": len(train_views), "k": plan.k, "seed": plan.seed,
                     "calib_fraction": plan.calib_fraction, "n_images": len(df), "skipped": len(skipped),
                     **({"members": names, "combined_by": "mean raw logit"} if len(names) > 1 else {})}
    if refit_all:
        result.detector = _refit(df, y, shas, members, best_epochs, result, matched, calibrate=calibrate,
                                 max_group_fpr=max_group_fpr)
    if out is not None:
        save_cv(result, out)
    return result


def _refit(
    df: pd.DataFrame, y: np.ndarray, shas: np.ndarray, members: list[Member], best_epochs: list[list[int | None]],
    cv: CVResult, matched: np.ndarray, calibrate: CalibrationMethod | None = None, max_group_fpr: float | None = None,
) -> Detector:
    """The head on every image and view (and the fit views of the ``matched`` images); threshold from the
    out-of-fold probabilities (each from a model that never saw that image); torch heads train for the folds' median
    best epoch, as nothing is held out to stop on. The
    card's figures are the folds' (labelled so): no image is held out from the saved model. A pair: both heads
    refitted, as one head over the pair backbone's features whose logit is the mean of theirs."""
    heads = []
    for m, epochs in zip(members, best_epochs):
        X, labels, groups = m.fit_rows(np.arange(len(y)), matched, y, shas, sources=np.arange(len(df)))
        heads.append(create_head(m.config.head, **refit_params(m.params, epochs)).fit(X, labels, groups=groups))
    if len(members) == 1:
        bb, model, n_features = members[0].bb, heads[0], members[0].X.shape[1]
    else:
        bb = pair_backbone(members[0].bb, members[1].bb)
        n_features = sum(m.X.shape[1] for m in members)
        model = mean_of_heads(heads, pair_columns(bb, members[0].features), n_features)
    calibration, threshold, how = decide(cv, calibrate=calibrate, max_group_fpr=max_group_fpr,
                                         cap_views=cv.selection.get("cap_views", ()))
    seen = RowSet.of_rows(df)
    n_derived = int(members[0].derived["derived_from"].isin(df["sha256"]).sum())  # of the files that decoded
    metrics = {"cv": cv.summary(), "cv_at_threshold": _at_threshold(cv, calibration, threshold)}
    card = members[0].config.card(
        bb, members[0].features, model, n_features, threshold=threshold, prior=float(df["label"].mean()),
        metrics=metrics, rows={"fit": seen, "calib": seen}, calibration=calibration,
        data={"manifest_hash": manifest_hash(df), "n_images": len(df), "n_views": cv.config["n_views"],
              "seed": cv.config["seed"], "k": cv.config["k"], "refit_on": "all", "threshold_from": how,
              **({"fit_views": list(members[0].config.fit_views), "fit_views_images": len(matched)}
                 if len(matched) else {}), **({"derived_images": n_derived} if n_derived else {}),
              "group_by": cv.group_by, "split_plan": cv.plan.summary() if cv.plan else None},
    )
    card._tiles = TileIndex.of_rows(df)  # crops and resizes of every refitted image count as seen
    return Detector(card, model, backbone=bb)


def _at_threshold(cv: CVResult, calibration: Calibration | None, threshold: float) -> dict[str, Any]:
    """The out-of-fold scores as the saved detector reports them (through its calibration) at its threshold: what a
    user of the detector should expect on images from sources it has not seen."""
    scored = cv.scored()
    y, prob = scored["label"].to_numpy(), scored["prob"].to_numpy()
    prob = calibration(oof_logit(scored)) if calibration is not None else prob
    block: dict[str, Any] = {
        "model": "one model per fold (fitted on the other folds), scores through the saved calibration",
        "rows": "held-out", "threshold": threshold, "calibration_rows": "in-sample: fitted on these scores"
        if calibration is not None else None, **binary_metrics(y, prob, threshold=threshold)}
    if cv.group_by is not None:
        block["groups"] = source_table(y, prob, scored[cv.group_by].to_numpy(), threshold=threshold).to_dict("records")
    return block


def decide(
    cv: CVResult, *, calibrate: CalibrationMethod | None = None, max_group_fpr: float | None = None,
    cap_views: Sequence[str] = (),
) -> tuple[Calibration | None, float, str]:
    """Calibration and threshold for a detector refitted after ``cv``, both from its out-of-fold probabilities
    (each from a model that never saw that image — or, leaving groups out, its whole source): ``calibrate`` fits a
    :class:`~synthdet.detectors.calibrate.Calibration` on them; the threshold is F1-optimal on the (calibrated) scores, and
    with ``max_group_fpr`` (leave-one-group-out only) the best one at which no real group is flagged more often
    than that, in the file view and in each of ``cap_views``. Returns ``(calibration, threshold, how it was chosen
    in words)``."""
    scored = cv.scored()
    y, prob = scored["label"].to_numpy(), scored["prob"].to_numpy()
    rows = ("leave-one-group-out" if cv.group_by else "out-of-fold") + f" probabilities ({len(y)} images)"
    z = oof_logit(scored)
    calibration = fit_calibration(y, z, method=calibrate, rows=rows) if calibrate else None
    if calibration is not None:
        prob = calibration(z)
    if max_group_fpr is None:
        return calibration, f1_optimal_threshold(y, prob), f"F1-optimal on the {rows}"
    if cv.group_by is None:
        raise ValueError("max_group_fpr needs leave-one-group-out folds (group_by)")
    also = [calibration(oof_logit(scored, v)) if calibration is not None else scored[f"prob_{v}"].to_numpy()
            for v in cap_views]
    threshold = capped_threshold(y, prob, scored[cv.group_by].to_numpy(), max_fpr=max_group_fpr, also=also)
    where = f", as {', '.join(['the file', *cap_views])} alike" if cap_views else ""
    return calibration, threshold, (f"F1-optimal on the {rows} with every real {cv.group_by} flagged ≤ "
                                    f"{max_group_fpr:.0%}{where}")


def oof_logit(oof: pd.DataFrame, view: str = "") -> np.ndarray:
    """The raw logits of ``oof``'s rows (of ``view``; "" the file), or those of their probabilities when the recipe
    gave probabilities only (fine-tuned folds)."""
    column = f"logit_{view}" if view else "logit"
    return oof[column].to_numpy(dtype=np.float64) if column in oof else logit(oof[f"prob_{view}" if view else "prob"])


def save_cv(result: CVResult, out: str | Path) -> Path:
    """``cv.json`` (config, folds, mean, std), ``oof.csv``, ``plan.json`` and the refitted ``detector/`` (with its
    plan and manifest, every row ``split=fit``: an ensemble calibrated on these images is warned that this member
    has seen them)."""
    out = Path(out)
    write_text(out / "cv.json", json.dumps(result.summary(), indent=2))
    with atomic_open(out / "oof.csv") as f:
        result.oof.to_csv(f, index=False, lineterminator="\n")
    if result.plan is not None:
        result.plan.save(out / "plan.json")
    if result.detector is not None:
        result.detector.save(out / "detector")
        if result.plan is not None:
            result.plan.save(out / "detector" / "plan.json")
        write_manifest(result.oof.drop(columns=["prob", "threshold"]).assign(split="fit"),
                       out / "detector" / "manifest.csv")
    return out
