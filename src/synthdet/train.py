"""index → extract (cached) → split → fit → calibrate → evaluate → save, for any folder or CSV.

Splits, by image content (copies never straddle a split):
- ``val`` (20 %, stratified, seed 42): held out; only ever scored, so its metrics are honest;
- ``train`` is divided again into ``fit`` (85 %) and ``calib`` (15 %): the head early-stops on ``calib`` ROC AUC and
  the F1-optimal threshold is chosen on ``calib`` probabilities — never on data the head was fitted on.

Training uses ``n_views`` cached views per image (view 0 canonical, the others random crop/resize/JPEG) so the head
learns what survives social-media processing; calibration and evaluation use view 0, as inference does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .backbones import Backbone, create_backbone
from .calibrate import f1_optimal_threshold
from .data import ManifestError, index, manifest_hash, three_way_split
from .detector import Card, Detector, FeatureKind, assemble_features
from .evaluate import binary_metrics, grouped_metrics
from .features import ExtractResult, FeatureStore, extract
from .heads import make_head


@dataclass
class TrainResult:
    detector: Detector
    manifest: pd.DataFrame
    val_prob: np.ndarray
    metrics: dict[str, Any]
    extract: ExtractResult
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_features(
    store: FeatureStore, shas: list[str], views: list[int], kind: FeatureKind
) -> tuple[np.ndarray, np.ndarray]:
    """Features for every (image, view) pair, and the index of the image each row belongs to."""
    keys = [f"{s}:{v}" for s in shas for v in views]
    pooled, layers = store.load(keys, layers=kind == "concat")
    return assemble_features(pooled, layers, kind), np.repeat(np.arange(len(shas)), len(views))


def usable_rows(
    data: str | Path | pd.DataFrame, *, progress: bool = False
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Decodable, labelled rows of a folder, CSV or manifest frame, and the unusable files with their reasons."""
    df = data.copy() if isinstance(data, pd.DataFrame) else index(data, progress=progress)
    skipped = [(p, e) for p, e in zip(df.loc[~df["ok"], "path"], df.loc[~df["ok"], "error"])]
    df = df[df["ok"] & (df["label"] >= 0)].reset_index(drop=True)
    if df.empty or df["label"].nunique() < 2:
        raise ManifestError("training needs decodable images of both classes (label 0 = real, 1 = fake)")
    return df, skipped


def head_config(
    head: str, features: FeatureKind, head_params: dict[str, Any] | None, bb: Backbone
) -> tuple[FeatureKind, dict[str, Any]]:
    """The features a head reads and its parameters: layer-wise fusion reads pooled + every tap, split back into
    layers, whatever ``features`` says."""
    if head != "fusion":
        return features, dict(head_params or {})
    return "concat", {"layer_dims": [bb.embed_dim, *bb.layer_dims], **(head_params or {})}


def fit_head(
    head: str, head_params: dict[str, Any], X_fit: np.ndarray, y_fit: np.ndarray, X_cal: np.ndarray, y_cal: np.ndarray
) -> tuple[Any, float]:
    """Fit on the ``fit`` rows, early-stop on ``calib`` and take the F1-optimal threshold on ``calib`` probabilities,
    so the threshold never comes from rows the head was fitted on."""
    model = make_head(head, **head_params).fit(X_fit, y_fit, X_val=X_cal, y_val=y_cal)
    return model, f1_optimal_threshold(y_cal, model.predict_proba(X_cal)[:, 1])


def train_detector(
    data: str | Path | pd.DataFrame,
    *,
    backbone: str | Backbone = "effnet-lite0",
    weights: str | Path | None = None,
    head: str = "linear",
    head_params: dict[str, Any] | None = None,
    features: FeatureKind = "pooled",
    n_views: int = 4,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    seed: int = 42,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    out: str | Path | None = None,
    refit: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train, calibrate and evaluate a detector; ``refit=True`` then refits on fit + val (the threshold is re-tuned
    on ``calib``, still unseen), so a shipped detector uses every image while its card keeps honest held-out metrics.
    """
    df, skipped = usable_rows(data, progress=progress)
    df["split"] = three_way_split(df, val_fraction=val_fraction, calib_fraction=calib_fraction, seed=seed)

    bb = backbone if isinstance(backbone, Backbone) else create_backbone(backbone, weights=weights)
    features, head_params = head_config(head, features, head_params, bb)
    store = FeatureStore.for_backbone(bb, cache_dir)
    views = list(range(max(1, n_views)))
    many = {"fit", "val"} if refit else {"fit"}  # splits a head is fitted on get every view; the rest view 0
    rows_many = df[df["split"].isin(many)].drop_duplicates("sha256")
    rows_one = df[~df["split"].isin(many)].drop_duplicates("sha256")
    ex = extract(bb, rows_many["path"].tolist(), rows_many["sha256"].tolist(), store, views=views,
                 batch_size=batch_size, num_workers=num_workers, progress=progress)
    ex0 = extract(bb, rows_one["path"].tolist(), rows_one["sha256"].tolist(), store, views=[0],
                  batch_size=batch_size, num_workers=num_workers, progress=progress)
    ex.computed, ex.cached = ex.computed + ex0.computed, ex.cached + ex0.cached
    ex.skipped += ex0.skipped
    bad = {s.path for s in ex.skipped}
    skipped += [(s.path, s.reason) for s in ex.skipped]
    df = df[~df["path"].isin(bad)].reset_index(drop=True)

    def part(name: str, part_views: list[int]) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        rows = df[df["split"] == name].drop_duplicates("sha256")
        X, owner = load_features(store, rows["sha256"].tolist(), part_views, features)
        return X, rows["label"].to_numpy()[owner], rows

    X_fit, y_fit, _ = part("fit", views)
    X_cal, y_cal, _ = part("calib", [0])
    X_val, y_val, val_rows = part("val", [0])
    model, threshold = fit_head(head, head_params, X_fit, y_fit, X_cal, y_cal)
    val_prob = model.predict_proba(X_val)[:, 1]
    metrics = binary_metrics(y_val, val_prob, threshold=threshold)
    by = grouped_metrics(
        y_val, val_prob, {"source": val_rows["source"].to_numpy(), "generator": val_rows["generator"].to_numpy()},
        threshold=threshold,
    )
    keep = ("n", "n_fake", "roc_auc", "ap", "at_threshold")  # the card stays small: decisions at the shipped threshold
    metrics["by"] = {col: {g: {k: m[k] for k in keep} for g, m in groups.items()} for col, groups in by.items()}
    if refit:
        X_all, y_all, _ = part("val", views)
        model, threshold = fit_head(
            head, head_params, np.concatenate([X_fit, X_all]), np.concatenate([y_fit, y_all]), X_cal, y_cal
        )
    counts = df.groupby("split")["label"].agg(["size", "sum"]).rename(columns={"size": "n", "sum": "n_fake"})
    card = Card(
        backbone=bb.name, weights_id=bb.weights_id, weights_file=str(weights) if weights else None,
        preprocess=bb.preprocess, features=features, head=head,
        head_params=model.get_params(), n_features=X_fit.shape[1], threshold=threshold,
        prior=float(df["label"].mean()), metrics={"val": metrics},
        data={
            "manifest_hash": manifest_hash(df), "n_images": len(df), "splits": counts.to_dict(orient="index"),
            "n_views": len(views), "seed": seed, "skipped": len(skipped),
            "refit_on": "fit+val" if refit else "fit",
        },
    )
    det = Detector(card, model, backbone=bb)
    if out is not None:
        det.save(out)
        if hasattr(model, "plot_alphas"):
            model.plot_alphas(Path(out) / "alphas.png", labels=["pooled", *map(str, range(1, len(bb.layer_dims) + 1))])
        df.to_csv(Path(out) / "manifest.csv", index=False)
    return TrainResult(det, df, val_prob, metrics, ex, skipped)
