"""Evaluate a localizer on a Task B set: the metrics (:mod:`synthdet.localization.metrics`), whether the rows are
held-out from what it was trained on, and the pictures behind the numbers (overlays of predicted against true masks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from synthdet.io.atomic import atomic_path
from synthdet.localization.metrics import f1_iou, flagged, localization_metrics
from synthdet.localization.models import Localizer
from synthdet.localization.triples import host_digests, image_codes, load_pairs, source_groups, type_groups


def rows_status(loc: Localizer, df: pd.DataFrame) -> dict[str, Any]:
    """Provenance of an evaluation (as :func:`synthdet.evaluation.runs.provenance` for Task A): ``held-out`` when no row's
    host photo was among the localizer's training or validation photos, ``in-sample`` with ``n_seen`` otherwise,
    ``provenance unknown`` for a localizer saved before it recorded them. Content decides too, not only the host's
    name: a row near a training or validation image by dHash (a triple of the same photo under another name, at
    another size) or by its tiles (a crop of one) is seen (``n_seen_by_content``)."""
    from synthdet.data.provenance import HELD_OUT, IN_SAMPLE, UNKNOWN
    from synthdet.data.splits import near_duplicate_of
    from synthdet.detectors.card import read_seen_tiles

    seen = loc.card.params.get("seen_hosts")
    if seen is None:
        return {"n": len(df), "status": UNKNOWN, "n_seen": None}
    hit = np.isin(host_digests(df), seen)
    by_content = np.zeros(len(df), bool)
    if codes := loc.card.params.get("seen_phashes"):  # a triple of a seen photo, at another size
        by_content[~hit] = near_duplicate_of(image_codes(df["path"][~hit]), codes)
    tiles = read_seen_tiles(loc.card)
    if tiles is not None and (rest := ~(hit | by_content)).any():  # a crop of one
        by_content[rest] = [name is not None for name, _ in tiles.match_paths(df["path"][rest])]
    n_seen = int((hit | by_content).sum())
    return {"n": len(df), "status": IN_SAMPLE if n_seen else HELD_OUT, "n_seen": n_seen,
            "n_seen_by_content": int(by_content.sum())}


class LocEvaluation:
    """A localizer's maps on a Task B set: the metrics (:func:`localization_metrics`, plus ``rows``) and the
    pictures behind them (:meth:`examples`, :meth:`overlay_sheet`)."""

    def __init__(self, loc: Localizer, df: pd.DataFrame) -> None:
        pairs = load_pairs(df)
        self.images = [img for img, _ in pairs]
        self.truths = [m for _, m in pairs]
        self.maps = [loc.predict_image(Image.fromarray(img)) for img in self.images]
        self.categories = [str(c) for c in df["category"]]
        self.paths = [str(p) for p in df["path"]]
        self.loc_threshold = loc.card.loc_threshold
        self.metrics = {
            "rows": rows_status(loc, df),
            **localization_metrics(self.maps, self.truths, self.categories, loc_threshold=self.loc_threshold,
                                   image_threshold=loc.threshold, method=loc.card.image_score,
                                   sources=source_groups(df), types=type_groups(df),
                                   head=loc.card.params.get("decision")),
        }

    def scores(self) -> np.ndarray:
        """Per image at ``loc_threshold``: pixel F1 for a manipulated image, the share of pixels left unflagged for
        an authentic one (1: nothing flagged)."""
        return np.array([f1_iou(flagged(m, self.loc_threshold), t)[0] if t.any()
                         else float(np.mean(~flagged(m, self.loc_threshold)))
                         for m, t in zip(self.maps, self.truths)])

    def examples(self, n: int = 3) -> list[dict[str, Any]]:
        """The ``n`` best and ``n`` worst manipulated images by pixel F1, then the median image of each category:
        ``role``, ``category``, ``path``, ``score``, ``iou``, and ``overlay`` / ``map`` images (:func:`overlay`)."""
        scores = self.scores()
        manip = sorted((i for i, t in enumerate(self.truths) if t.any()), key=lambda i: (-scores[i], i))
        picks = [("best", i) for i in manip[:n]] + [("worst", i) for i in manip[::-1][:n]]
        for cat in sorted(set(self.categories)):
            mine = sorted((i for i, c in enumerate(self.categories) if c == cat), key=lambda i: (scores[i], i))
            picks.append((f"median of {cat}", mine[len(mine) // 2]))
        out = []
        for role, i in picks:
            over, prob = overlay(self.images[i], self.truths[i], self.maps[i], self.loc_threshold)
            out.append({"role": role, "category": self.categories[i], "path": self.paths[i],
                        "manipulated": bool(self.truths[i].any()), "score": float(scores[i]),
                        "iou": f1_iou(flagged(self.maps[i], self.loc_threshold), self.truths[i])[1] if self.truths[i].any()
                        else float("nan"), "overlay": over, "map": prob})
        return out

    def overlay_sheet(self, tile: int = 128) -> Image.Image:
        """One row per (category, best/worst by :meth:`scores`): the overlay, then the probability map."""
        scores = self.scores()
        rows = []
        for cat in sorted(set(self.categories)):
            ranked = sorted((i for i, c in enumerate(self.categories) if c == cat), key=lambda i: scores[i])
            rows += [ranked[-1], ranked[0]] if len(ranked) > 1 else ranked
        sheet = Image.new("RGB", (2 * tile, tile * len(rows)), "white")
        for r, i in enumerate(rows):
            over, prob = overlay(self.images[i], self.truths[i], self.maps[i], self.loc_threshold)
            sheet.paste(over.resize((tile, tile)), (0, r * tile))
            sheet.paste(prob.convert("RGB").resize((tile, tile)), (tile, r * tile))
        return sheet

    def write_overlay_sheet(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            self.overlay_sheet().save(tmp, format="PNG")
        return Path(path)


def evaluate_localizer(loc: Localizer, df: pd.DataFrame, *, overlays: str | Path | None = None) -> dict:
    """Task B metrics of ``loc`` on the triples of ``df`` (:func:`~synthdet.localization.triples.read_triples`):
    ``rows`` (held-out or not), pixel metrics per category and per ``source_group``, image-level metrics; with
    ``overlays`` also a PNG of the best and worst image of each category (:meth:`LocEvaluation.overlay_sheet`)."""
    ev = LocEvaluation(loc, df)
    if overlays is not None:
        ev.write_overlay_sheet(overlays)
    return ev.metrics


def overlay(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, loc_threshold: float,
            max_side: int = 192) -> tuple[Image.Image, Image.Image]:
    """``(overlay, map)`` at most ``max_side`` px: the image with the region found (true and predicted) in yellow,
    missed (true only) in green and false alarms (predicted only) in red; the probability map in grey."""
    img = image.astype(np.float32)
    pred = flagged(prob, loc_threshold)
    for where, colour in ((truth & pred, (255, 210, 0)), (truth & ~pred, (0, 200, 60)), (~truth & pred, (230, 30, 30))):
        img[where] = 0.45 * img[where] + 0.55 * np.array(colour, np.float32)
    over = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    grey = Image.fromarray((np.clip(prob, 0, 1) * 255).round().astype(np.uint8))
    for im in (over, grey):
        im.thumbnail((max_side, max_side))
    return over, grey
