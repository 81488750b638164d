"""Robustness slices: what social media does to an image, applied to decoded pixels before the detector sees them.

A slice is either a pixel transform ``(img, key) -> img`` (pure, and seeded by the image's key so a rerun scores the
same pixels) or a subset filter on the manifest (the small-image bucket of Lean 2026, which no transform can make).
:func:`evaluate_detector` scores the clean images and every slice through ``Detector.predict_paths(transform=...)``
and reports each slice's metrics and its change from clean; :class:`EvalRun` is the serialisable result.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from . import __version__
from .evaluate import evaluate_scores, gap_table

if TYPE_CHECKING:
    from .detector import Detector

#: Short side below which an image belongs to the "small" bucket (Lean 2026, Table 2).
SMALL_SIDE = 512
#: Long side that the "social" slice resizes to, like the common feed resolution of social platforms.
SOCIAL_LONG_SIDE = 1080
#: Slices run when none are named: the three of Lean 2026 (JPEG 85, laundering, small images) plus the two
#: everyday ones (half-size down-up resize, a social-media re-upload).
DEFAULT_SLICES = ("jpeg85", "resize0.5", "launder", "social", "small")
#: Name of the unaltered condition in an :class:`EvalRun`.
CLEAN = "clean"


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """JPEG bytes at ``quality`` with Pillow's (libjpeg's) standard tables and 4:2:0 chroma, as most platforms."""
    buf = io.BytesIO()
    img.convert("RGB" if img.mode not in ("RGB", "L") else img.mode).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg(img: Image.Image, key: str = "", *, quality: int) -> Image.Image:
    """Re-encode as JPEG and decode again: the compression loss, nothing else."""
    with Image.open(io.BytesIO(encode_jpeg(img, quality))) as im:
        return im.convert(img.mode if img.mode in ("RGB", "L") else "RGB")


def down_up(img: Image.Image, key: str = "", *, factor: float) -> Image.Image:
    """Downscale by ``factor`` and back to the original size: the detail a low-resolution copy has lost."""
    w, h = img.size
    small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _rng(name: str, key: str) -> np.random.Generator:
    """A generator seeded by slice name and image key, so a slice is a pure function of (pixels, key)."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{name}\0{key}".encode()).digest()[:8], "little"))


def launder(img: Image.Image, key: str = "") -> Image.Image:
    """Random-resized crop of 60–90 % of the area (aspect 3:4–4:3), resized back to the original size, then JPEG 90.

    The "laundering" of Lean 2026: a re-framed, re-encoded copy keeps the content but not the pixel grid.
    """
    rng = _rng("launder", key)
    w, h = img.size
    area = rng.uniform(0.6, 0.9) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
    ch = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    return jpeg(crop, key, quality=90)


def social(img: Image.Image, key: str = "") -> Image.Image:
    """A social-media re-upload: long side capped at 1080 px (never enlarged), then JPEG 85."""
    w, h = img.size
    scale = SOCIAL_LONG_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return jpeg(img, key, quality=85)


def blur(img: Image.Image, key: str = "", *, sigma: float = 1.5) -> Image.Image:
    """Gaussian blur (Pillow's radius is the standard deviation): removes the high frequencies detectors read."""
    return img.filter(ImageFilter.GaussianBlur(sigma))


def is_small(manifest: pd.DataFrame) -> np.ndarray:
    """Rows whose short side is below :data:`SMALL_SIDE` pixels (width and height as indexed in the manifest)."""
    missing = {"width", "height"} - set(manifest.columns)
    if missing:
        raise ValueError(f"the 'small' slice needs the manifest's width and height columns (missing {sorted(missing)})")
    short = np.minimum(manifest["width"].to_numpy(dtype=float), manifest["height"].to_numpy(dtype=float))
    return (short > 0) & (short < SMALL_SIDE)


@dataclass(frozen=True)
class Slice:
    """A named robustness condition: a pixel ``transform`` or a row ``select``-or of the manifest (exactly one).

    Calling a slice applies its transform (identity for a subset slice), so it can be passed wherever an
    ``ImageTransform`` is expected; it pickles, so DataLoader workers can run it.
    """

    name: str
    description: str
    transform: Callable[[Image.Image, str], Image.Image] | None = None
    select: Callable[[pd.DataFrame], np.ndarray] | None = None

    def __call__(self, img: Image.Image, key: str) -> Image.Image:
        return self.transform(img, key) if self.transform is not None else img


SLICES: dict[str, Slice] = {
    s.name: s
    for s in (
        *(Slice(f"jpeg{q}", f"JPEG re-encode at quality {q}", partial(jpeg, quality=q)) for q in (95, 85, 75, 50)),
        *(Slice(f"resize{f}", f"downscale ×{f}, then back up to the original size", partial(down_up, factor=f))
          for f in (0.5, 0.25)),
        Slice("launder", "random-resized crop of 60–90 % area, resized back, JPEG 90", launder),
        Slice("social", f"long side ≤ {SOCIAL_LONG_SIDE} px, then JPEG 85", social),
        Slice("blur", "Gaussian blur, σ = 1.5", blur),
        Slice("small", f"subset: images whose short side is below {SMALL_SIDE} px", select=is_small),
    )
}


def get_slice(name: str) -> Slice:
    try:
        return SLICES[name]
    except KeyError:
        raise ValueError(f"unknown slice {name!r}; choose from {', '.join(SLICES)}") from None


# --------------------------------------------------------------------------------------------------- evaluation


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
    progress: bool = False,
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
