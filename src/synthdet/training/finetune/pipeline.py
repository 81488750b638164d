"""Sources in, a fine-tuned detector with held-out metrics out: index → split → :func:`finetune` → score val; and
:func:`finetune_fitter`, one fine-tuning per cross-validation fold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthdet.backbones.base import create_backbone
from synthdet.data.manifest import write_manifest
from synthdet.evaluation.metrics import binary_metrics
from synthdet.training.cv import FoldFitter
from synthdet.training.finetune.config import FineTuneConfig
from synthdet.training.finetune.loop import FineTuneResult, finetune, score_items
from synthdet.training.finetune.sources import Source, load_source, mix_sources, same_source


def finetune_detector(
    data: Source | Sequence[Source],
    *,
    data_weights: Sequence[float] | None = None,
    val_data: Source | None = None,
    backbone: str | None = None,
    weights: str | Path | None = None,
    init: str | Path | None = None,
    cfg: FineTuneConfig | None = None,
    out: str | Path = "finetune",
    resume: bool = True,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    split_seed: int = 42,
    progress: bool = False,
) -> tuple[FineTuneResult, dict[str, Any]]:
    """index → split (as ``train_detector``: val held out, the rest fit/calib) → fine-tune on fit, select and
    calibrate on calib → score val. Returns the result and the held-out metrics (also written to the card).

    Several ``data`` sources are mixed (:func:`mix_sources`: ``data_weights`` are their shares of the training
    draws); ``val_data`` (default: the first source) is the one selection, threshold and held-out metrics come
    from. ``backbone`` defaults to ``effnet-lite0``; ``init`` continues a trained detector instead (two-stage
    training: it names its own backbone and weights).
    """
    cfg = cfg or FineTuneConfig()
    if init is not None and (backbone is not None or weights is not None):
        raise ValueError("init names its own backbone and weights; pass neither with it")
    sources = [data] if isinstance(data, str | Path | pd.DataFrame) else list(data)
    names = [f"frame{i}" if isinstance(s, pd.DataFrame) else str(s) for i, s in enumerate(sources)]
    frames = [load_source(s, n, progress) for s, n in zip(sources, names)]
    val: int | pd.DataFrame = 0
    if val_data is not None:
        same = [i for i, s in enumerate(sources) if same_source(s, val_data)]
        val_name = "val_data" if isinstance(val_data, pd.DataFrame) else str(val_data)
        val = same[0] if same else load_source(val_data, val_name, progress)
    mix = mix_sources(frames, val, data_weights=data_weights, val_fraction=val_fraction,
                      calib_fraction=calib_fraction, seed=split_seed)
    start = init if init is not None else create_backbone(backbone or "effnet-lite0", weights=weights)
    result = finetune(start, mix.fit, mix.calib, cfg, out, resume, item_weights=mix.weights, weights_file=weights,
                      progress=progress)
    det = result.detector
    prob, y = score_items(det, mix.val, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          max_pixels=cfg.max_pixels)
    metrics = binary_metrics(y, prob, threshold=det.threshold)
    det.card.metrics["val"] = metrics
    fit = mix.manifest[mix.manifest["split"] == "fit"].drop_duplicates(["dataset", "sha256"])
    n_fit = fit.groupby("dataset").size()
    shares = [None] * len(names) if data_weights is None else [float(w) for w in data_weights]
    det.card.data = {
        "sources": [{"data": n, "weight": w, "n_fit": int(n_fit.get(n, 0))} for n, w in zip(names, shares)],
        "val_data": names[val] if isinstance(val, int) else str(val["dataset"].iloc[0]), "split_seed": split_seed,
    }
    det.save(Path(out) / "detector")
    write_manifest(mix.manifest, Path(out) / "detector" / "manifest.csv")
    return result, metrics


def finetune_fitter(
    backbone: str, cfg: FineTuneConfig | None = None, run_dir: str | Path = "cv-finetune", *,
    weights: str | Path | None = None, progress: bool = False,
) -> FoldFitter:
    """A :data:`FoldFitter` that fine-tunes ``backbone`` (a fresh copy per fold: fine-tuning trains it in place) on
    the fold's ``fit`` rows, selects the epoch and threshold on its ``calib`` rows, and scores the test fold through
    ``predict_paths``, as inference will. ``cfg`` is a :class:`FineTuneConfig`; fold f's run goes
    to ``run_dir/fold<f>`` (resumable). Use as ``run_folds(usable_rows(data)[0], finetune_fitter("effnet-lite0"))`` (:func:`~synthdet.training.cv.
    run_folds`).
    """
    cfg = cfg or FineTuneConfig()

    def fit_fold(fold: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        items = {name: list(zip(part["path"], part["label"].astype(int))) for name, part in train.groupby("split")}
        bb = create_backbone(backbone, weights=weights)
        det = finetune(bb, items["fit"], items["calib"], cfg, Path(run_dir) / f"fold{fold}", weights_file=weights,
                       progress=progress).detector
        scored = det.predict_paths(test["path"].tolist(), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                   max_pixels=cfg.max_pixels, progress=progress)
        return np.array([np.nan if p is None else p for _, p, _ in scored]), det.threshold

    return fit_fold
