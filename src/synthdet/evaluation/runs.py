"""Evaluation runs: one detector scored on one labelled dataset, clean and under robustness slices.

:func:`evaluate_detector` scores the clean images and every slice through ``Detector.predict_paths(transform=...)``
and reports each slice's metrics and its change from clean; :class:`EvalRun` is the serialisable result (a run
folder with ``scores.csv``, ``metrics.json`` and ``skipped.csv``).

Every figure says which rows it was computed on (:func:`provenance`: distinct images, their digest, and
``held-out``, ``in-sample`` or ``provenance unknown``), checked against the content hashes the detector's card
records as fitted / calibrated on (:func:`seen_rows`). Evaluating on rows the detector has seen is refused unless
the caller asks to ``drop`` them or to ``flag`` every figure as in-sample.
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

from synthdet.data.layouts import masks_as_images
from synthdet.data.manifest import ManifestError, index
from synthdet.data.perturbations import DEFAULT_SLICES, Slice, get_slice
from synthdet.data.provenance import (
    ON_OVERLAP,
    SEEN_COLUMNS,
    UNKNOWN,
    InSampleError,
    OnOverlap,
    copies_of,
    provenance,
    seen_by,
    seen_counts,
    seen_list,
    seen_rows,
)
from synthdet.data.splits import phash_codes
from synthdet.detectors.card import seen_tiles
from synthdet.detectors.loading import load_detector
from synthdet.evaluation.metrics import evaluate_scores, gap_table
from synthdet.extras import require
from synthdet.io.atomic import atomic_path, printable, write_text
from synthdet.version import __version__

if TYPE_CHECKING:
    from synthdet.detectors.detector import Detector
    from synthdet.detectors.ensemble import EnsembleDetector

#: Name of the unaltered condition in an :class:`EvalRun`.
CLEAN = "clean"


def _prob_column(name: str) -> str:
    return f"prob_{name}"


@dataclass
class EvalRun:
    """One detector evaluated on one dataset: per-image scores (clean and per transform slice), metrics with CIs per
    condition (``metrics["clean"]`` also per source/generator), and the files that could not be scored.

    On disk: a folder with ``scores.csv``, ``metrics.json`` and ``skipped.csv``, read back by :meth:`load`.
    """

    name: str
    threshold: float
    scores: pd.DataFrame
    metrics: dict[str, dict]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "slice", "reason"]))
    info: dict[str, Any] = field(default_factory=dict)
    #: the images found seen (:func:`seen_list`): evaluated anyway (flag) or dropped; ``seen.csv`` in the folder
    seen: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(SEEN_COLUMNS)))

    @property
    def slices(self) -> list[str]:
        """The conditions evaluated, clean first."""
        return list(self.metrics)

    def deltas(self) -> pd.DataFrame:
        """Each condition's metrics and change from clean (ROC AUC, AP, F1 and accuracy at the tuned threshold)."""
        return gap_table(self.metrics, reference=CLEAN)

    @property
    def rows(self) -> dict[str, Any]:
        """Provenance of the clean figures (:func:`provenance`)."""
        return self.rows_for(CLEAN)

    def rows_for(self, condition: str) -> dict[str, Any]:
        """Provenance of one condition's figures; runs saved before it was recorded: unknown."""
        m = self.metrics[condition]
        return m.get("rows") or {"n": m["n"], "digest": "?", "status": UNKNOWN}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with atomic_path(folder / "scores.csv") as tmp:
            self.scores.to_csv(tmp, index=False, lineterminator="\n")
        with atomic_path(folder / "skipped.csv") as tmp:
            self.skipped.to_csv(tmp, index=False)
        if len(self.seen):
            with atomic_path(folder / "seen.csv") as tmp:
                self.seen.to_csv(tmp, index=False)
        doc = {"name": self.name, "threshold": self.threshold, "info": self.info, "metrics": self.metrics}
        write_text(folder / "metrics.json", json.dumps(doc, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> EvalRun:
        folder = Path(folder)
        if not (folder / "metrics.json").is_file():
            raise FileNotFoundError(f"{folder}: not an evaluation run (no metrics.json); make one with `synthdet evaluate`")
        doc = json.loads((folder / "metrics.json").read_text())
        skipped = pd.read_csv(folder / "skipped.csv", keep_default_na=False, dtype=str)
        return cls(doc["name"], float(doc["threshold"]), _read_scores(folder), doc["metrics"], skipped,
                   doc.get("info", {}))


#: Text columns of a run's scores: read back as text (a hex hash of digits only must not become a number).
_TEXT_COLUMNS = ("path", "source", "generator", "sha256", "phash")


def _read_scores(folder: Path) -> pd.DataFrame:
    """``scores.csv``; runs written before it (``scores.parquet``) need the parquet extra."""
    if not (folder / "scores.csv").is_file() and (folder / "scores.parquet").is_file():
        require("pyarrow", f"{folder}/scores.parquet (a run saved by an older synthdet)")
        return pd.read_parquet(folder / "scores.parquet")
    df = pd.read_csv(folder / "scores.csv", dtype={c: str for c in _TEXT_COLUMNS})
    for c in _TEXT_COLUMNS:
        if c in df:
            df[c] = df[c].fillna("")
    return df


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
    detector: Detector | EnsembleDetector,
    manifest: pd.DataFrame,
    *,
    slices: Sequence[str] = DEFAULT_SLICES,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
    num_workers: int | None = None,
    group_by: Sequence[str] = ("source", "generator"),
    name: str | None = None,
    on_overlap: OnOverlap = "refuse",
    progress: bool = False,
) -> EvalRun:
    """Score a labelled manifest clean and under each slice; metrics with bootstrap CIs for every condition.

    Rows that did not index (``ok`` false), have no label, repeat an earlier row's content (same ``sha256``: counted
    once) or fail to decode are not scored and are listed in ``skipped`` with their reason. Transform slices score
    every clean-scored image again through ``detector.predict_paths(transform=slice)``; subset slices reuse the
    clean scores of their rows.

    Rows the detector was fitted or calibrated on (:func:`seen_rows`) make its figures in-sample: ``on_overlap``
    "refuse" raises :class:`InSampleError` naming the overlap, "drop" evaluates the held-out remainder, "flag" keeps
    them and every figure's ``rows`` says "in-sample". Each metrics dict gets ``rows`` (:func:`provenance`).
    """
    if on_overlap not in ON_OVERLAP:
        raise ValueError(f"on_overlap must be one of {', '.join(ON_OVERLAP)}, not {on_overlap!r}")
    chosen = [get_slice(s) for s in slices]
    df = manifest.reset_index(drop=True)
    ok = df["ok"].astype(bool) if "ok" in df else pd.Series(True, index=df.index)
    usable = ok & (df["label"] >= 0)
    skipped = [
        {"path": r.path, "slice": "index", "reason": (getattr(r, "error", "") or "not decodable") if not k else "no label"}
        for r, k in zip(df[~usable].itertuples(), ok[~usable])
    ]
    keep = [c for c in ("path", "label", "source", "generator", "width", "height", "sha256", "phash") if c in df]
    scores = df.loc[usable, keep].reset_index(drop=True)
    seen = seen_rows(detector) if "sha256" in scores else None
    dropped = 0
    if "sha256" in scores:
        uniq = scores.drop_duplicates("sha256")
        first = dict(zip(uniq["sha256"], uniq["path"]))
        dup = scores["sha256"].duplicated()
        skipped += [{"path": r.path, "slice": "index", "reason": f"same content as {first[r.sha256]} (counted once)"}
                    for r in scores[dup].itertuples()]
        scores = scores[~dup].reset_index(drop=True)
    copies: dict[str, str] = {}
    seen_table = pd.DataFrame(columns=list(SEEN_COLUMNS))
    if seen is not None:
        per_role = seen_by(scores["sha256"], seen, phash_codes(scores))  # one near-duplicate search per role
        hit = scores["sha256"].isin(set().union(*per_role.values())).to_numpy()
        rest = scores[~hit]  # the tile search (crops, resizes) only where a hash has not already decided
        copies = copies_of(seen_tiles(detector), rest["sha256"], rest["path"])
        per_role = seen_by(scores["sha256"], seen, phash_codes(scores), copies)
        hit = scores["sha256"].isin(set().union(*per_role.values())).to_numpy()
        seen_table = seen_list(scores[hit], seen, per_role, copies)
        if hit.any() and on_overlap == "refuse":
            roles = ", ".join(f"{k}: {n}" for k, n in seen_counts(per_role).items())
            names = [printable(Path(p).name) for p in scores.loc[hit, "path"]]
            listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise InSampleError(
                f"{int(hit.sum())} of the {len(scores)} images to evaluate (by content hash, as near-duplicates, or as "
                f"crops/resizes/re-encodes) were used to fit or calibrate this detector ({roles}): {listed}; its "
                f"figures there would be in-sample. Evaluate on held-out images, drop the overlap (on_overlap='drop', "
                f"CLI --on-overlap drop) or label every figure in-sample (on_overlap='flag')", seen_table)
        if hit.any() and on_overlap == "drop":
            dropped = int(hit.sum())
            scores = scores[~hit].reset_index(drop=True)
    if scores.empty:  # one class is fine (an all-synthetic robustness set): its figures say what is defined there
        raise ValueError("evaluation needs decodable, labelled images (label 0 = real, 1 = fake)"
                         + (f"; {dropped} images the detector has seen were dropped" if dropped else ""))

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

    def rows_of(mask: np.ndarray) -> dict[str, Any]:
        if "sha256" not in scores:  # a frame that was not indexed: no content hashes to check
            return {"n": int(mask.sum()), "digest": "", "status": UNKNOWN}
        codes = phash_codes(scores)
        return provenance(scores["sha256"].to_numpy()[mask], seen, None if codes is None else codes[mask], copies)

    metrics = {CLEAN: evaluate_scores(y, scores[_prob_column(CLEAN)].to_numpy(), thr,
                                      groups=_group_columns(scores, group_by), bootstrap=bootstrap, seed=seed)}
    metrics[CLEAN]["rows"] = rows_of(np.ones(len(scores), bool))
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
            metrics[s.name]["rows"] = rows_of(rows)
    card = detector.card
    info = {
        "detector": {"backbone": card.backbone, "head": card.head, "features": card.features,
                     "weights_id": card.weights_id, "threshold": thr, "created": card.created},
        "slices": {s.name: s.description for s in chosen},
        "bootstrap": bootstrap, "seed": seed, "synthdet_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "empty_slices": [s.name for s in chosen if s.name not in metrics],
        "rows": {**metrics[CLEAN]["rows"], "on_overlap": on_overlap, "dropped_seen": dropped},
    }
    return EvalRun(name or f"{card.backbone}+{card.head}", float(thr), scores, metrics,
                   pd.DataFrame(skipped, columns=["path", "slice", "reason"]), info, seen_table)


def run_evaluation(
    detector: Path | None,
    data: Path,
    out: Path,
    *,
    slices: Sequence[str] = DEFAULT_SLICES,
    bootstrap: int = 1000,
    batch_size: int | None = None,
    num_workers: int | None = None,
    split: str | None = None,
    name: str | None = None,
    on_overlap: OnOverlap = "refuse",
    progress: bool = False,
) -> EvalRun:
    """``synthdet evaluate``: score DATA (optionally one ``split`` of its manifest) with a detector (None: the shipped
    one) clean and under ``slices``; save and return the run folder ``out`` (its HTML report:
    :func:`synthdet.reporting.html.render_report`)."""
    names = [get_slice(n).name for n in slices]  # unknown names fail before any scoring
    det = load_detector(detector)
    df = index(data, progress=progress)
    if as_images := masks_as_images(df):
        raise ManifestError(f"{data}: {len(as_images)} of its {len(df)} images are masks indexed as images (e.g. "
                            f"{as_images[0]}); evaluate on the images (index the folder the organisers ship, or a "
                            "manifest with a mask column)")
    if split is not None:
        if "split" not in df:
            raise ManifestError(f"{data}: no split column to select {split!r} from")
        df = df[df["split"] == split]
    try:
        run = evaluate_detector(det, df, slices=names, bootstrap=bootstrap, batch_size=batch_size,
                                num_workers=num_workers, name=name or Path(out).name, on_overlap=on_overlap,
                                progress=progress)
    except InSampleError as e:  # every seen image, not just the first few the message names
        with atomic_path(Path(out) / "seen.csv") as tmp:
            e.table.to_csv(tmp, index=False)
        raise InSampleError(f"{e}; all {len(e.table)} listed in {Path(out) / 'seen.csv'}", e.table) from None
    run.info["data"] = str(data) + (f" (split {split})" if split else "")
    run.info["detector"]["path"] = str(detector) if detector else "shipped default"
    run.save(out)
    return run
