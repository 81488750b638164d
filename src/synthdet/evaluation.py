"""Evaluation runs: one detector scored on one labelled dataset, clean and under robustness slices.

:func:`evaluate_detector` scores the clean images and every slice through ``Detector.predict_paths(transform=...)``
and reports each slice's metrics and its change from clean; :class:`EvalRun` is the serialisable result (a run
folder with ``scores.parquet``, ``metrics.json`` and ``skipped.csv``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import __version__
from .metrics import evaluate_scores, gap_table
from .slices import DEFAULT_SLICES, Slice, get_slice

if TYPE_CHECKING:
    from .detector import Detector

#: Name of the unaltered condition in an :class:`EvalRun`.
CLEAN = "clean"


def _prob_column(name: str) -> str:
    return f"prob_{name}"


@dataclass
class EvalRun:
    """One detector evaluated on one dataset: per-image scores (clean and per transform slice), metrics with CIs per
    condition (``metrics["clean"]`` also per source/generator), and the files that could not be scored.

    On disk: a folder with ``scores.parquet``, ``metrics.json`` and ``skipped.csv``, read back by :meth:`load`.
    """

    name: str
    threshold: float
    scores: pd.DataFrame
    metrics: dict[str, dict]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "slice", "reason"]))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def slices(self) -> list[str]:
        """The conditions evaluated, clean first."""
        return list(self.metrics)

    def deltas(self) -> pd.DataFrame:
        """Each condition's metrics and change from clean (ROC AUC, AP, F1 and accuracy at the tuned threshold)."""
        return gap_table(self.metrics, reference=CLEAN)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.scores.to_parquet(folder / "scores.parquet", index=False)
        self.skipped.to_csv(folder / "skipped.csv", index=False)
        doc = {"name": self.name, "threshold": self.threshold, "info": self.info, "metrics": self.metrics}
        tmp = folder / "metrics.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(folder / "metrics.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> EvalRun:
        folder = Path(folder)
        if not (folder / "metrics.json").is_file():
            raise FileNotFoundError(f"{folder}: not an evaluation run (no metrics.json); make one with `synthdet evaluate`")
        doc = json.loads((folder / "metrics.json").read_text())
        skipped = pd.read_csv(folder / "skipped.csv", keep_default_na=False, dtype=str)
        return cls(doc["name"], float(doc["threshold"]), pd.read_parquet(folder / "scores.parquet"), doc["metrics"],
                   skipped, doc.get("info", {}))


def _group_columns(df: pd.DataFrame, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Grouping columns worth reporting: at least two values, and not mostly one value per image (a per-file
    provenance string, like the dev data's ``source``, would give hundreds of one-image groups)."""
    out = {}
    for col in columns:
        if col in df:
            values = df[col].fillna("").astype(str)
            counts = values.value_counts()
            if len(counts) >= 2 and (counts == 1).sum() <= len(values) / 2:
                out[col] = values.to_numpy()
    return out


def evaluate_detector(
    detector: Detector,
    manifest: pd.DataFrame,
    *,
    slices: Sequence[str] = DEFAULT_SLICES,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
    num_workers: int | None = None,
    group_by: Sequence[str] = ("source", "generator"),
    name: str | None = None,
    progress: bool = True,
) -> EvalRun:
    """Score a labelled manifest clean and under each slice; metrics with bootstrap CIs for every condition.

    Rows that did not index (``ok`` false), have no label, or fail to decode are not scored and are listed in
    ``skipped`` with their reason. Transform slices score every clean-scored image again through
    ``detector.predict_paths(transform=slice)``; subset slices reuse the clean scores of their rows.
    """
    chosen = [get_slice(s) for s in slices]
    df = manifest.reset_index(drop=True)
    ok = df["ok"].astype(bool) if "ok" in df else pd.Series(True, index=df.index)
    usable = ok & (df["label"] >= 0)
    skipped = [
        {"path": r.path, "slice": "index", "reason": (getattr(r, "error", "") or "not decodable") if not k else "no label"}
        for r, k in zip(df[~usable].itertuples(), ok[~usable])
    ]
    keep = [c for c in ("path", "label", "source", "generator", "width", "height") if c in df]
    scores = df.loc[usable, keep].reset_index(drop=True)
    if scores.empty or scores["label"].nunique() < 2:
        raise ValueError("evaluation needs decodable, labelled images of both classes (label 0 = real, 1 = fake)")

    def score(transform: Slice | None, paths: list[str], tag: str) -> np.ndarray:
        out = np.full(len(paths), np.nan)
        results = detector.predict_paths(paths, batch_size=batch_size, num_workers=num_workers, progress=progress,
                                         transform=transform)
        for i, (path, prob, reason) in enumerate(results):
            if prob is None:
                skipped.append({"path": path, "slice": tag, "reason": reason})
            else:
                out[i] = prob
        return out

    scores[_prob_column(CLEAN)] = score(None, scores["path"].tolist(), CLEAN)
    scores = scores[np.isfinite(scores[_prob_column(CLEAN)])].reset_index(drop=True)
    thr = detector.threshold
    y = scores["label"].to_numpy()
    metrics = {CLEAN: evaluate_scores(y, scores[_prob_column(CLEAN)].to_numpy(), thr,
                                      groups=_group_columns(scores, group_by), bootstrap=bootstrap, seed=seed)}
    for s in chosen:
        if s.select is not None:
            rows = s.select(scores)
            prob = scores[_prob_column(CLEAN)].to_numpy()
        else:
            col = _prob_column(s.name)
            scores[col] = score(s, scores["path"].tolist(), s.name)
            rows = np.isfinite(scores[col].to_numpy())
            prob = scores[col].to_numpy()
        if rows.any():
            metrics[s.name] = evaluate_scores(y[rows], prob[rows], thr, bootstrap=bootstrap, seed=seed)
    card = detector.card
    info = {
        "detector": {"backbone": card.backbone, "head": card.head, "features": card.features,
                     "weights_id": card.weights_id, "threshold": thr, "created": card.created},
        "slices": {s.name: s.description for s in chosen},
        "bootstrap": bootstrap, "seed": seed, "synthdet_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "empty_slices": [s.name for s in chosen if s.name not in metrics],
    }
    return EvalRun(name or f"{card.backbone}+{card.head}", float(thr), scores, metrics,
                   pd.DataFrame(skipped, columns=["path", "slice", "reason"]), info)
