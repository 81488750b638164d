"""Task B metrics (MediaEval SynthIm, manipulation localization): pure functions on probability maps and masks.

Pixel F1 and IoU are computed per image and averaged over the images that have a manipulated region (an authentic
image has no region to find; its false-positive pixel rate is reported instead), and over all images as the TGIF
authors' ``code/localization_metrics.py`` averages them (:data:`PIXEL_CONVENTION`): a pixel is flagged when its
probability is strictly above the threshold, and an authentic image scores 1 when nothing is flagged, 0 otherwise. The image-level decision comes from
the map (coverage above the localization threshold, or the mean of its top-k pixels). TruFor's permutation-invariant
F1 (the better of the map and its complement) is reported beside the plain one, never instead of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score, roc_curve

from synthdet.localization.card import ImageScore

#: How pixel figures are computed, printed beside them: the convention of TGIF's ``code/localization_metrics.py``.
PIXEL_CONVENTION = ("a pixel is flagged when prob > threshold (TGIF localization_metrics.py); F1/IoU per image, then "
                    "averaged; 'all images' also counts each authentic image: 1 when nothing is flagged, 0 otherwise")
#: Thresholds tried when tuning the localization threshold.
GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


def flagged(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels called manipulated: strictly above ``threshold``, as the organisers' metric code thresholds maps."""
    return np.asarray(prob) > threshold


def f1_iou(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Pixel F1 and IoU of two boolean masks; both empty is a perfect 1, a region flagged on an empty mask (or none
    flagged on a region) 0: TGIF's convention."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = int(np.count_nonzero(pred & true))
    wrong = int(np.count_nonzero(pred ^ true))
    if tp + wrong == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + wrong), tp / (tp + wrong)


def permutation_invariant_f1(prob: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> float:
    """TruFor's F1: the better of the thresholded map and its complement (blind to which side is 'manipulated')."""
    pred = flagged(prob, threshold)
    return max(f1_iou(pred, true)[0], f1_iou(~pred, true)[0])


def image_score(prob: np.ndarray, method: ImageScore = "coverage", *, loc_threshold: float = 0.5,
                top: float = 0.01, head: dict | None = None) -> float:
    """Image-level score in [0, 1] from a map: the share of pixels flagged at ``loc_threshold`` (``coverage``), the
    mean of the top ``top`` share of pixels (``topk``), or a logistic head on map statistics (``learned``: ``head``
    from :func:`synthdet.localization.decision.fit_decision`)."""
    if method == "learned":
        from synthdet.localization.decision import decision_score

        if head is None:
            raise ValueError("the learned image-level score needs its head (the card's params['decision'])")
        return decision_score(prob, head)
    flat = np.asarray(prob, dtype=np.float32).ravel()
    if method == "coverage":
        return float(np.mean(flagged(flat, loc_threshold)))
    k = max(1, int(round(top * flat.size)))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def best_loc_threshold(probs: Sequence[np.ndarray], trues: Sequence[np.ndarray],
                       grid: np.ndarray = GRID) -> tuple[float, float]:
    """``(threshold, mean F1)``: the threshold of ``grid`` with the best mean per-image F1 over the images with a
    manipulated region, and that F1 (``(0.5, nan)`` without such an image)."""
    pairs = [(p, t) for p, t in zip(probs, trues) if np.any(t)]
    if not pairs:
        return 0.5, float("nan")
    scores = [np.mean([f1_iou(flagged(p, g), t)[0] for p, t in pairs]) for g in grid]
    best = int(np.argmax(scores))
    return float(grid[best]), float(scores[best])


def tune_loc_threshold(probs: Sequence[np.ndarray], trues: Sequence[np.ndarray], grid: np.ndarray = GRID) -> float:
    """The threshold of ``grid`` with the best mean per-image F1 over the images with a manipulated region."""
    return best_loc_threshold(probs, trues, grid)[0]


def _pixel_block(probs: Sequence[np.ndarray], trues: Sequence[np.ndarray], thr: float) -> dict[str, float]:
    manip = [(p, t) for p, t in zip(probs, trues) if np.any(t)]
    clean = [p for p, t in zip(probs, trues) if not np.any(t)]
    f1s, ious = zip(*[f1_iou(flagged(p, thr), t) for p, t in manip]) if manip else ((), ())
    every = [f1_iou(flagged(p, thr), t) for p, t in zip(probs, trues)]
    return {
        "threshold": float(thr),
        "n_manipulated": len(manip),
        "f1": float(np.mean(f1s)) if manip else float("nan"),
        "iou": float(np.mean(ious)) if manip else float("nan"),
        "pi_f1": float(np.mean([permutation_invariant_f1(p, t, thr) for p, t in manip])) if manip else float("nan"),
        "n_authentic": len(clean),
        "authentic_fp_rate": float(np.mean([np.mean(flagged(p, thr)) for p in clean])) if clean else float("nan"),
        "f1_all_images": float(np.mean([f for f, _ in every])) if every else float("nan"),
        "iou_all_images": float(np.mean([i for _, i in every])) if every else float("nan"),
    }


def balanced_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The image-level threshold with the best balanced accuracy (Youden's J). An F1-optimal threshold collapses
    to "everything is manipulated" when most images are, as in Task B sets."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(labels, scores)
    return float(np.clip(thr[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def image_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """ROC AUC, balanced accuracy and F1 of the image-level decision ``score >= threshold``."""
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    pred = (scores >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    return {
        "n": int(len(labels)), "n_manipulated": int(labels.sum()), "threshold": float(threshold),
        "roc_auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if both else float("nan"),
        "f1": float(f1_score(labels, pred, zero_division=0)),
    }


def localization_metrics(
    probs: Sequence[np.ndarray],
    trues: Sequence[np.ndarray],
    categories: Sequence[str],
    *,
    loc_threshold: float = 0.5,
    image_threshold: float = 0.5,
    method: ImageScore = "coverage",
    sources: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    head: dict | None = None,
) -> dict:
    """Pixel F1/IoU at 0.5 and at ``loc_threshold`` overall, per category (the method), with ``sources`` (the host
    photo's collection per image; ``""`` is reported as ``unknown``) per source, with ``types`` (sp/fr) per type, and
    the image-level decision (``head`` for the ``learned`` method; coverage beside it whatever the method); every
    block says on how many images it was computed, ``convention`` how."""
    cats = np.asarray(categories, dtype=object)
    labels = np.array([int(np.any(t)) for t in trues])
    scores = np.array([image_score(p, method, loc_threshold=loc_threshold, head=head) for p in probs])
    coverage = np.array([image_score(p, "coverage", loc_threshold=loc_threshold) for p in probs])

    def block(idx: np.ndarray) -> dict:
        ps, ts = [probs[i] for i in idx], [trues[i] for i in idx]
        return {"n": len(idx), "at_0.5": _pixel_block(ps, ts, 0.5), "at_threshold": _pixel_block(ps, ts, loc_threshold)}

    def per(values: np.ndarray) -> dict[str, dict]:
        return {str(v) or "unknown": block(np.flatnonzero(values == v)) for v in sorted(set(values.tolist()), key=str)}

    out = {"pixel": block(np.arange(len(probs))), "per_category": per(cats)}
    if sources is not None:
        out["per_source"] = per(np.asarray([str(s) for s in sources], dtype=object))
    if types is not None:
        out["per_type"] = per(np.asarray([str(t) for t in types], dtype=object))
    both = len(np.unique(labels)) == 2
    return {**out, "convention": PIXEL_CONVENTION, "image": {
        "method": method, **image_metrics(labels, scores, image_threshold),
        "coverage_roc_auc": float(roc_auc_score(labels, coverage)) if both else float("nan")}}
