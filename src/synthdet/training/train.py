"""index → extract (cached) → split plan → fit → calibrate → evaluate → save, for any folder or CSV.

Roles come from a :class:`~synthdet.data.splits.SplitPlan` (built here, or passed in; saved as ``plan.json`` beside the
detector): by image content and near-duplicate group — copies never straddle roles — stratified by label and
generator/source:
- ``test`` (20 %): held out; only ever scored, so its metrics are honest;
- ``fit`` (85 % of the rest) and ``calib`` (15 %): the head early-stops on ``calib`` ROC AUC and the F1-optimal
  threshold is chosen on ``calib`` probabilities — never on data the head was fitted on.

``refit=True`` then fits the saved head again on fit + calib. Its threshold comes from out-of-fold probabilities over
fit + calib (each from a model blind to that image), so ``test`` stays held out for the saved model and its figures
use the saved threshold; the first model's figures stay on the card under ``pre_refit``, labelled as such.

Every metric block on the card names its ``model`` (``"saved"`` or ``"pre-refit …"``), its threshold and its rows
(``"held-out"``, role, ``n``, RowSet ``rows_digest``); ``card.rows`` records what the saved model was fitted and
calibrated on. Training uses ``n_views`` cached views per image (view 0 canonical, the others random
crop/resize/JPEG) so the head learns what survives social-media processing; calibration and evaluation use view 0,
as inference does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.backbones.pooling import TapPool
from synthdet.data.manifest import manifest_hash, usable_rows, write_manifest
from synthdet.data.splits import HASH_PREFIX, RowSet, SplitPlan
from synthdet.data.tilehash import TileIndex
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.card import Card
from synthdet.detectors.detector import Detector
from synthdet.evaluation.metrics import binary_metrics, grouped_metrics
from synthdet.features.extract import ExtractResult, FeatureKind, FeatureStore, assemble_features, extract
from synthdet.heads.base import create_head


class ProbeConfig(BaseModel):
    """A head on cached features of a frozen backbone, and how the features are made: what :func:`train_detector`
    and :func:`~synthdet.training.cv.cross_validate` fit (the recipes' ``probe`` and ``cv`` steps, ``synthdet train``
    and ``synthdet cv``). Each function keeps its own arguments for what only it does (test share, folds, refit …)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    backbone: str | Backbone = "effnet-lite0"  # a name, or one built already (input scale, block summary, device)
    weights: str | Path | None = None  # local weights file: loads a named backbone, and the card records it
    tap_pool: TapPool = "mean"  # block summary of a named backbone
    head: str = "linear"  # a synthdet.heads.base.HEADS kind
    head_params: dict[str, Any] = {}
    features: FeatureKind = "pooled"
    n_views: int = 4  # cached views per image the head is fitted on (view 0 canonical, the others augmented)
    #: views (``thumbnail``, ``crop``) of the original files whose view 0 also joins the fit rows, for a size-matched
    #: subset of the images (:func:`~synthdet.data.splits.size_matched`): what a picture looks like as a preview or a
    #: detail at its own scale, without the zoom level telling the class (``cross_validate(views_from=...)`` only)
    fit_views: tuple[str, ...] = ()
    seed: int = 42  # of the split plan built when none is given, and of the out-of-fold folds
    calib_fraction: float = 0.15  # of the training images: held out to early-stop on and take the threshold from
    cache_dir: str | Path | None = None  # feature cache root
    batch_size: int | None = None  # images per forward pass
    num_workers: int | None = None  # decoding workers

    def build_backbone(self) -> Backbone:
        """The backbone given, or the named one with ``weights`` and ``tap_pool``."""
        if isinstance(self.backbone, Backbone):
            return self.backbone
        return create_backbone(self.backbone, weights=self.weights, tap_pool=self.tap_pool)

    def head_setup(self, bb: Backbone) -> tuple[FeatureKind, dict[str, Any]]:
        """The features the head reads and its parameters: layer-wise fusion reads pooled + every tap, split back
        into layers, whatever ``features`` says."""
        if self.head != "fusion":
            return self.features, dict(self.head_params)
        return "concat", {"layer_dims": [bb.embed_dim, *bb.layer_dims], **self.head_params}

    def card(self, bb: Backbone, features: FeatureKind, model: Any, n_features: int, **fields: Any) -> Card:
        """The card of ``model`` fitted as configured (``fields``: threshold, prior, metrics, rows, data …)."""
        weights_file = str(self.weights) if self.weights else None
        return Card(backbone=bb.name, weights_id=bb.weights_id, weights_file=weights_file, preprocess=bb.preprocess,
                    tap_pool=bb.tap_pool, features=features, head=self.head, head_params=model.get_params(),
                    n_features=n_features, **fields)


#: The recipe the leave-one-source-out protocol chose (``benchmarks/generalisation.py``; README, "Generalisation"):
#: the shipped default and the demo detector are trained with it. Images at their own scale up to 384 px, each
#: stage's mean, spread and (early stages) channel correlations, 3 cached views of which 20 % greyscale.
GENERALISING_SIZE = 384
GENERALISING_TAPS: TapPool = "texture"
GENERALISING_GREYSCALE = 0.2
GENERALISING_HEAD: dict[str, Any] = {"head": "logreg", "features": "concat", "n_views": 3}


def generalising_backbone(name: str = "effnet-lite0", *, weights: str | Path | None = None) -> Backbone:
    """``name`` (a CNN backbone) with the input and block statistics of the generalising recipe."""
    bb = create_backbone(name, weights=weights, tap_pool=GENERALISING_TAPS)
    native = bb.preprocess.at_native(GENERALISING_SIZE)
    bb.preprocess = native.model_copy(
        update={"views": native.views.model_copy(update={"p_grayscale": GENERALISING_GREYSCALE})})
    return bb


@dataclass
class TrainResult:
    detector: Detector
    manifest: pd.DataFrame
    val_prob: np.ndarray  # the saved model's probabilities on the test rows (view 0, one per image)
    metrics: dict[str, Any]  # the saved model's held-out block (card.metrics["val"])
    extract: ExtractResult
    plan: SplitPlan
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Features:
    """Feature rows of some images: ``X[i]`` belongs to image ``owner[i]`` of ``rows`` (one row per image)."""

    X: np.ndarray
    owner: np.ndarray
    rows: pd.DataFrame

    @property
    def y(self) -> np.ndarray:
        return self.rows["label"].to_numpy()[self.owner]

    @property
    def groups(self) -> np.ndarray:
        """Content hash per feature row: an image's views share it."""
        return self.rows["sha256"].to_numpy()[self.owner]


def load_features(
    store: FeatureStore, shas: list[str], views: list[int], kind: FeatureKind
) -> tuple[np.ndarray, np.ndarray]:
    """Features for every (image, view) pair, and the index of the image each row belongs to."""
    keys = [f"{s}:{v}" for s in shas for v in views]
    pooled, layers = store.load(keys, layers=kind == "concat")
    return assemble_features(pooled, layers, kind), np.repeat(np.arange(len(shas)), len(views))


def fit_head(
    head: str, head_params: dict[str, Any], X_fit: np.ndarray, y_fit: np.ndarray, X_cal: np.ndarray,
    y_cal: np.ndarray, *, groups: np.ndarray | None = None,
) -> tuple[Any, float]:
    """Fit on the ``fit`` rows (``groups``: content hash per row, so a head's own inner split keeps an image's
    views together), early-stop on ``calib`` and take the F1-optimal threshold on ``calib`` probabilities, so the
    threshold never comes from rows the head was fitted on."""
    model = create_head(head, **head_params).fit(X_fit, y_fit, X_val=X_cal, y_val=y_cal, groups=groups)
    return model, f1_optimal_threshold(y_cal, model.predict_proba(X_cal)[:, 1])


def best_epoch(model: Any) -> int | None:
    """Epoch (1-based) with the best calib ROC AUC, for heads that early-stop (torch probes); None for the others."""
    history = getattr(model, "history_", None)
    if not history or "val_auc" not in history[0]:
        return None
    return 1 + int(np.argmax([r["val_auc"] for r in history]))


def refit_params(params: dict[str, Any], best_epochs: list[int | None]) -> dict[str, Any]:
    """Parameters for a fit with nothing held out to stop on: torch heads train for the median best epoch of the
    models fitted before, without an inner validation slice."""
    known = [e for e in best_epochs if e is not None]
    if known and len(known) == len(best_epochs):
        return {**params, "epochs": max(1, round(float(np.median(known)))), "val_fraction": 0.0}
    return params


def assign_roles(df: pd.DataFrame, plan: SplitPlan) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """``df`` with the plan's role per row in ``split``, without the rows the plan leaves out, and those rows with
    their reasons (label conflicts, or images the plan was not built on)."""
    roles = plan.role_of(df["sha256"])
    conflicts = set(plan.conflicts)
    out = [(p, "label-conflict: the same image is labelled real and fake" if str(s)[:HASH_PREFIX] in conflicts
            else f"not in split plan {plan.id}") for p, s, r in zip(df["path"], df["sha256"], roles) if not r]
    return df.assign(split=roles)[roles != ""].reset_index(drop=True), out


def held_out_metrics(
    model: Any, threshold: float, part: Features, *, model_name: str, role: str = "test"
) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of ``model`` at ``threshold`` on held-out images (view 0 each), labelled with the model, threshold
    and rows they belong to; and the probabilities."""
    rows, y = part.rows, part.y
    prob = model.predict_proba(part.X)[:, 1]
    m = binary_metrics(y, prob, threshold=threshold)
    by = grouped_metrics(y, prob, {"source": rows["source"].to_numpy(), "generator": rows["generator"].to_numpy()},
                         threshold=threshold)
    keep = ("n", "n_fake", "roc_auc", "ap", "at_threshold")  # the card stays small: decisions at its threshold
    m["by"] = {col: {g: {k: v[k] for k in keep} for g, v in groups.items()} for col, groups in by.items()}
    return {"model": model_name, "threshold": float(threshold), "rows": "held-out", "role": role,
            "rows_digest": RowSet.of(rows["sha256"]).digest, **m}, prob


def oof_threshold(
    head: str, params: dict[str, Any], part: Features, n_views: int, *, k: int = 5, seed: int = 42
) -> float:
    """F1-optimal threshold on out-of-fold probabilities: ``k`` heads, each fitted on the other folds' images (every
    view) and scoring its fold's images (view 0); folds grouped and stratified as a split plan."""
    rows, owner = part.rows, part.owner
    fold = SplitPlan.build(rows, test=0.0, calib=0.0, k=k, seed=seed).fold_of(rows["sha256"])[owner]
    oof = np.full(len(rows), np.nan)
    first_view = np.arange(len(owner)) % n_views == 0
    for f in range(k):
        train, score = fold != f, (fold == f) & first_view
        model = create_head(head, **params).fit(part.X[train], part.y[train], groups=part.groups[train])
        oof[owner[score]] = model.predict_proba(part.X[score])[:, 1]
    return f1_optimal_threshold(rows["label"].to_numpy(), oof)


def train_detector(
    data: str | Path | pd.DataFrame,
    config: ProbeConfig,
    *,
    val_fraction: float = 0.2,
    plan: SplitPlan | None = None,
    out: str | Path | None = None,
    refit: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train, calibrate and evaluate the detector ``config`` describes on the roles of ``plan`` (default: a plan built
    from ``data`` with ``val_fraction`` as test share and the config's ``calib_fraction`` and ``seed``). ``refit=True``
    then refits on fit + calib (threshold from out-of-fold probabilities), so a shipped detector uses every non-test
    image while the card's held-out figures are still its own. ``out`` receives the detector, ``plan.json`` and
    ``manifest.csv``."""
    if config.fit_views:
        raise ValueError(f"fit_views {config.fit_views} are cut from each image's original file: "
                         "cross_validate(..., views_from=COLUMN) fits them")
    df, skipped = usable_rows(data, progress=progress)
    plan = plan or SplitPlan.build(df, test=val_fraction, calib=config.calib_fraction, k=0, seed=config.seed)
    df, outside = assign_roles(df, plan)
    skipped += outside

    bb = config.build_backbone()
    features, head_params = config.head_setup(bb)
    store = FeatureStore.for_backbone(bb, config.cache_dir)
    views = list(range(max(1, config.n_views)))
    many = {"fit", "calib"} if refit else {"fit"}  # roles a head is fitted on get every view; the rest view 0
    rows_many = df[df["split"].isin(many)].drop_duplicates("sha256")
    rows_one = df[~df["split"].isin(many)].drop_duplicates("sha256")
    ex = extract(bb, rows_many["path"].tolist(), rows_many["sha256"].tolist(), store, views=views,
                 batch_size=config.batch_size, num_workers=config.num_workers, progress=progress)
    ex0 = extract(bb, rows_one["path"].tolist(), rows_one["sha256"].tolist(), store, views=[0],
                  batch_size=config.batch_size, num_workers=config.num_workers, progress=progress)
    ex.computed, ex.cached = ex.computed + ex0.computed, ex.cached + ex0.cached
    ex.skipped += ex0.skipped
    bad = {s.path for s in ex.skipped}
    skipped += [(s.path, s.reason) for s in ex.skipped]
    df = df[~df["path"].isin(bad)].reset_index(drop=True)

    def part(roles: set[str], part_views: list[int]) -> Features:
        rows = df[df["split"].isin(roles)].drop_duplicates("sha256").reset_index(drop=True)
        X, owner = load_features(store, rows["sha256"].tolist(), part_views, features)
        return Features(X, owner, rows)

    fit, cal, test = part({"fit"}, views), part({"calib"}, [0]), part({"test"}, [0])
    model, threshold = fit_head(config.head, head_params, fit.X, fit.y, cal.X, cal.y, groups=fit.groups)
    rows = {"fit": RowSet.of_rows(fit.rows), "calib": RowSet.of_rows(cal.rows)}
    metrics: dict[str, Any] = {}
    if refit:
        metrics["pre_refit"], _ = held_out_metrics(
            model, threshold, test, model_name="pre-refit: fitted on fit only, threshold from calib (not the saved model)")
        both = part({"fit", "calib"}, views)
        params = refit_params(head_params, [best_epoch(model)])
        threshold = oof_threshold(config.head, params, both, len(views), seed=plan.seed)
        model = create_head(config.head, **params).fit(both.X, both.y, groups=both.groups)
        rows = {"fit": RowSet.of_rows(both.rows), "calib": RowSet.of_rows(both.rows)}
    seen_tiles = TileIndex.of_rows(both.rows if refit else pd.concat([fit.rows, cal.rows]))
    metrics["val"], test_prob = held_out_metrics(model, threshold, test, model_name="saved")
    images = df.drop_duplicates("sha256")
    counts = images.groupby("split")["label"].agg(["size", "sum"]).rename(columns={"size": "n", "sum": "n_fake"})
    card = config.card(
        bb, features, model, fit.X.shape[1], threshold=threshold, prior=float(images["label"].mean()), metrics=metrics,
        rows=rows,
        data={
            **{k: df.attrs[k] for k in ("source", "layout") if k in df.attrs},  # where the data came from
            "manifest_hash": manifest_hash(images), "n_images": len(images),
            "splits": {k: {c: int(v) for c, v in d.items()} for k, d in counts.to_dict(orient="index").items()},
            "n_views": len(views), "seed": plan.seed, "skipped": len(skipped),
            "refit_on": "fit+calib" if refit else "fit",
            "threshold_from": "out-of-fold probabilities over fit+calib" if refit else "calib",
            "split_plan": plan.summary(),
        },
    )
    card._tiles = seen_tiles  # saved beside the card: crops and resizes of these images count as seen
    det = Detector(card, model, backbone=bb)
    if out is not None:
        det.save(out)
        plan.save(Path(out) / "plan.json")
        if hasattr(model, "plot_alphas"):
            model.plot_alphas(Path(out) / "alphas.png", labels=["pooled", *map(str, range(1, len(bb.layer_dims) + 1))])
        write_manifest(df, Path(out) / "manifest.csv")
    return TrainResult(det, df, test_prob, metrics["val"], ex, plan, skipped)
