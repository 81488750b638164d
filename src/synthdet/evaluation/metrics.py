"""Task A metrics as pure functions of (labels, probabilities, threshold); scikit-learn does the arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from synthdet.detectors.calibrate import f1_optimal_threshold


def equal_error_rate(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Rate where false positives equal false negatives, interpolated on the ROC curve."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    fnr = 1 - tpr
    d = fpr - fnr  # non-decreasing along the curve, from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.searchsorted(d, 0.0, side="left"))  # first point with fpr >= fnr
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    # linear interpolation between the two points that bracket fpr == fnr (d changes sign between i-1 and i)
    d0, d1 = d[i - 1], d[i]
    t = d0 / (d0 - d1) if d0 != d1 else 1.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def threshold_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    y_true = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, *, threshold: float = 0.5) -> dict:
    """Ranking metrics (ROC AUC, AP, EER) and decision metrics at 0.5, at ``threshold`` and at the F1 oracle."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "n_fake": int(y_true.sum()),
        "roc_auc": float(roc_auc_score(y_true, prob)) if both else float("nan"),
        "ap": float(average_precision_score(y_true, prob)) if both else float("nan"),
        "eer": equal_error_rate(y_true, prob) if both else float("nan"),
        "at_0.5": threshold_metrics(y_true, prob, 0.5),
        "at_threshold": threshold_metrics(y_true, prob, threshold),
        "oracle": threshold_metrics(y_true, prob, f1_optimal_threshold(y_true, prob)),
    }


def grouped_metrics(
    y_true: np.ndarray, prob: np.ndarray, groups: Mapping[str, np.ndarray], *, threshold: float
) -> dict[str, dict[str, dict]]:
    """Metrics per value of each grouping column (e.g. source, generator). One-class groups report recall/accuracy."""
    out: dict[str, dict[str, dict]] = {}
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    for col, values in groups.items():
        values = np.asarray(values, dtype=object)
        out[col] = {
            str(v): binary_metrics(y_true[values == v], prob[values == v], threshold=threshold)
            for v in sorted(set(values.tolist()), key=str)
        }
    return out


def source_table(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray, *, threshold: float) -> pd.DataFrame:
    """One row per (group, class) of out-of-source scores: the group's images ranked against every image of the
    other class (``roc_auc``: a fake family against all real photos, a real source against all fakes) and the share
    it flags at ``threshold`` (``flagged``: the false-positive rate of a real source, the recall of a fake family).

    A one-class group has no AUC of its own; this is how leave-one-source-out protocols score it, so one easy family
    cannot hide a weak one."""
    y_true, prob, groups = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64), np.asarray(groups)
    rows = []
    for name in sorted(set(groups.tolist()), key=str):
        for label in (0, 1):
            mine = (groups == name) & (y_true == label)
            if not mine.any():
                continue
            other = y_true != label
            both = np.concatenate([prob[mine], prob[other]])
            is_mine = np.r_[np.ones(mine.sum()), np.zeros(other.sum())]
            auc = float(roc_auc_score(is_mine if label else 1 - is_mine, both)) if other.any() else float("nan")
            rows.append({"group": str(name), "label": label, "n": int(mine.sum()), "roc_auc": auc,
                         "flagged": float((prob[mine] >= threshold).mean()), "median_prob": float(np.median(prob[mine]))})
    return pd.DataFrame(rows, columns=["group", "label", "n", "roc_auc", "flagged", "median_prob"])


#: Two-sided coverage of the bootstrap confidence intervals.
CI_LEVEL = 0.95
#: Resampled count matrices are processed in blocks of about this many cells, so memory stays bounded.
_BLOCK_CELLS = 1 << 19
_DECISION_KEYS = ("accuracy", "precision", "recall", "f1")


def _decision(tp: np.ndarray, fp: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, precision, recall and F1 from (weighted) confusion counts; 0 where undefined, as scikit-learn's
    ``zero_division=0``."""
    fn, tn = n_pos - tp, n_neg - fp

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape), where=b > 0)

    return {
        "accuracy": ratio(tp + tn, n_pos + n_neg),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, n_pos),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def resampled_metrics(
    pos_counts: np.ndarray, neg_counts: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every Task A metric for many weighted samples at once, without a per-sample scikit-learn call.

    A bootstrap resample of n scores is a vector of counts over the distinct scores, per class; ``pos_counts`` and
    ``neg_counts`` are ``(resamples, len(scores))`` matrices of such counts, ``scores`` the distinct scores in
    ascending order. Each metric is then a cumulative sum over score bins: ROC AUC by the Mann–Whitney count (ties
    half), AP as scikit-learn's step sum, EER by the same interpolation as :func:`equal_error_rate`, the F1 oracle
    as the best bin (ties to the higher threshold, like :func:`f1_optimal_threshold`). Keys: ``roc_auc``, ``ap``,
    ``eer`` and ``<at_0.5|at_threshold|oracle>.<accuracy|precision|recall|f1>``.
    """
    pos, neg = np.asarray(pos_counts, dtype=np.float64), np.asarray(neg_counts, dtype=np.float64)
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    tp_ge = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]  # positives scored >= each distinct score
    fp_ge = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
    both = (n_pos > 0) & (n_neg > 0)
    nan = np.full(len(pos), np.nan)
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        neg_below = np.cumsum(neg, axis=1) - neg
        out["roc_auc"] = np.where(both, (pos * (neg_below + 0.5 * neg)).sum(1) / (n_pos * n_neg), nan)
        precision_at = np.divide(tp_ge, tp_ge + fp_ge, out=np.zeros_like(tp_ge), where=tp_ge + fp_ge > 0)
        out["ap"] = np.where(both, (pos * precision_at).sum(1) / n_pos, nan)
        # ROC from the highest threshold down, starting at (0, 0); d = FPR - FNR is non-decreasing along it
        fpr = np.concatenate([np.zeros((len(pos), 1)), fp_ge[:, ::-1] / n_neg[:, None]], axis=1)
        fnr = np.concatenate([np.ones((len(pos), 1)), 1 - tp_ge[:, ::-1] / n_pos[:, None]], axis=1)
        d = fpr - fnr
        i = np.clip((d < 0).sum(1), 1, d.shape[1] - 1)[:, None]
        d0, d1 = np.take_along_axis(d, i - 1, 1)[:, 0], np.take_along_axis(d, i, 1)[:, 0]
        f0, f1 = np.take_along_axis(fpr, i - 1, 1)[:, 0], np.take_along_axis(fpr, i, 1)[:, 0]
        t = np.where(d0 != d1, d0 / (d0 - d1), 1.0)
        out["eer"] = np.where(both, f0 + t * (f1 - f0), nan)

    def at_bin(b: np.ndarray) -> dict[str, np.ndarray]:
        """Decision metrics predicting 'fake' from distinct score ``b`` upwards (b == len(scores): nothing)."""
        pad = np.zeros((len(pos), 1))
        tp = np.take_along_axis(np.concatenate([tp_ge, pad], 1), b[:, None], 1)[:, 0]
        fp = np.take_along_axis(np.concatenate([fp_ge, pad], 1), b[:, None], 1)[:, 0]
        return _decision(tp, fp, n_pos, n_neg)

    at = {name: int(np.searchsorted(scores, t, side="left"))
          for name, t in (("at_0.5", 0.5), ("at_threshold", threshold))}
    f1_bins = 2 * tp_ge / np.maximum(tp_ge + fp_ge + n_pos[:, None], 1e-300)
    near_best = f1_bins >= f1_bins.max(1, keepdims=True) - 1e-12  # the tolerance of f1_optimal_threshold
    best = scores.size - 1 - np.argmax(near_best[:, ::-1], axis=1)  # ties: the higher threshold
    oracle_bin = np.where(both, best, at["at_0.5"])  # one class: the oracle falls back to 0.5, as the point estimate
    for name, b in (*((k, np.full(len(pos), v)) for k, v in at.items()), ("oracle", oracle_bin)):
        out.update({f"{name}.{k}": v for k, v in at_bin(b).items()})
    return out


def _bootstrap(y: np.ndarray, prob: np.ndarray, threshold: float, n: int, seed: int) -> dict[str, np.ndarray]:
    """Metric values on ``n`` resamples drawn with replacement within each class (so class sizes, and AUC, stay
    defined), computed in blocks by :func:`resampled_metrics`."""
    scores, bins = np.unique(prob, return_inverse=True)
    rng = np.random.default_rng(seed)
    per_class = [bins[y == 1], bins[y == 0]]
    block = max(1, _BLOCK_CELLS // max(scores.size, max(len(b) for b in per_class)))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n, block):
        b = min(block, n - start)
        counts = []
        for members in per_class:
            draws = members[rng.integers(0, len(members), (b, len(members)))] if len(members) else np.zeros((b, 0), int)
            flat = (draws + scores.size * np.arange(b)[:, None]).ravel()
            counts.append(np.bincount(flat, minlength=b * scores.size).reshape(b, scores.size))
        parts.append(resampled_metrics(counts[0], counts[1], scores, threshold))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _interval(values: np.ndarray) -> list[float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [float("nan"), float("nan")]
    tail = 100 * (1 - CI_LEVEL) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _with_ci(y: np.ndarray, prob: np.ndarray, threshold: float, bootstrap: int, seed: int) -> dict:
    """:func:`binary_metrics` plus a ``ci`` dict (metric → [low, high]) beside every group of point estimates."""
    m = binary_metrics(y, prob, threshold=threshold)
    boot = _bootstrap(y, prob, threshold, bootstrap, seed) if bootstrap > 0 and len(y) else {}
    m["ci"] = {k: _interval(boot[k]) for k in ("roc_auc", "ap", "eer") if k in boot}
    for name in ("at_0.5", "at_threshold", "oracle"):
        m[name]["ci"] = {k: _interval(boot[f"{name}.{k}"]) for k in _DECISION_KEYS if f"{name}.{k}" in boot}
    return m


#: The decision points of :func:`sidbench_metrics`: the detector's threshold, 0.5, and the F1 oracle.
SIDBENCH_POINTS = ("at_threshold", "at_0.5", "oracle")


def sidbench_metrics(m: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The metric set of SIDBench (``mever-team/sidbench``, the organisers' benchmark) from an :func:`evaluate_scores`
    result, per decision point: accuracy, real and fake accuracy, precision, recall, F1, ROC AUC, AP, EER and the
    confusion counts. A decision is ``prob >= threshold``, the ``label`` a submission carries (SIDBench's own code
    thresholds with ``>``: the same except for a score exactly at the threshold)."""
    out = {}
    for point in SIDBENCH_POINTS:
        d = m[point]
        c = d["confusion"]
        out[point] = {"threshold": d["threshold"], "accuracy": d["accuracy"],
                      "real_accuracy": c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else float("nan"),
                      "fake_accuracy": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan"),
                      "precision": d["precision"], "recall": d["recall"], "f1": d["f1"],
                      "roc_auc": m["roc_auc"], "ap": m["ap"], "eer": m["eer"], **c}
    return out


#: Score quantiles reported for a one-class set.
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def score_distribution(prob: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """The scores' quantiles (``p0`` … ``p100``), mean and a histogram on ``bins`` equal bins of [0, 1]."""
    prob = np.asarray(prob, dtype=np.float64)
    counts, edges = np.histogram(prob, bins=bins, range=(0.0, 1.0))
    return {"n": int(len(prob)), "mean": float(prob.mean()) if len(prob) else float("nan"),
            "quantiles": {f"p{round(100 * q)}": float(np.quantile(prob, q)) for q in QUANTILES} if len(prob) else {},
            "histogram": {"edges": edges.round(6).tolist(), "counts": counts.tolist()}}


def one_class_summary(y: np.ndarray, prob: np.ndarray, threshold: float, at: dict[str, Any]) -> dict[str, Any]:
    """What is defined on a set of one class (an all-synthetic robustness set): the share called correctly at the
    threshold (TPR for generated images, TNR for real ones) with its CI from ``at`` (an ``at_threshold`` block), the
    score distribution, and why ranking metrics are absent."""
    label = int(np.asarray(y)[0])
    name, other = ("TPR", "real") if label == 1 else ("TNR", "generated")
    return {"label": label, "rate_name": name, "rate": at["accuracy"], "ci": at.get("ci", {}).get("accuracy"),
            "threshold": float(threshold), "distribution": score_distribution(prob),
            "why_no_auc": f"every image has label {label}: ROC AUC, AP and EER rank both classes and are undefined "
                          f"without {other} images; {name} at the threshold is what this set measures"}


def evaluate_scores(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    *,
    groups: Mapping[str, np.ndarray] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """All Task A metrics with percentile bootstrap CIs, overall and per value of each grouping column.

    Point estimates are :func:`binary_metrics` (scikit-learn); a set of one class also gets ``one_class``
    (:func:`one_class_summary`: TPR or TNR at the threshold, score distribution); every metric dict gains ``ci``: metric → [low, high]
    at :data:`CI_LEVEL`, from ``bootstrap`` resamples stratified by class (the F1 oracle is re-tuned on each
    resample, so its interval includes the optimism of tuning). ``by[column][value]`` holds the same per group.
    """
    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    out = _with_ci(y, prob, threshold, bootstrap, seed)
    out["bootstrap"] = {"n": int(bootstrap), "seed": int(seed), "level": CI_LEVEL}
    if len(y) and len(np.unique(y)) == 1:
        out["one_class"] = one_class_summary(y, prob, threshold, out["at_threshold"])
    out["by"] = {}
    for col, values in (groups or {}).items():
        values = np.asarray(values, dtype=object).astype(str)
        out["by"][col] = {
            v: _with_ci(y[values == v], prob[values == v], threshold, bootstrap, seed) for v in sorted(set(values))
        }
    return out


#: Columns of :func:`gap_table`: name → path into an :func:`evaluate_scores` result (decisions at the tuned threshold).
GAP_METRICS: dict[str, tuple[str, ...]] = {
    "roc_auc": ("roc_auc",),
    "ap": ("ap",),
    "f1": ("at_threshold", "f1"),
    "accuracy": ("at_threshold", "accuracy"),
}


def gap_table(results: Mapping[str, dict], *, reference: str | None = None) -> pd.DataFrame:
    """One row per evaluated dataset (or slice): each :data:`GAP_METRICS` value and its change from the reference.

    The validation-to-test gap of Junaid et al. (Table 2: val AUC, test AUC, gap) is ``gap_table({"val": v,
    "test": t})``; robustness deltas are the same table with the clean run as the reference. The reference is
    ``reference`` or the first entry.
    """
    if not results:
        raise ValueError("gap_table needs at least one evaluated dataset")
    ref = results[reference if reference is not None else next(iter(results))]

    def get(m: Any, path: tuple[str, ...]) -> float:
        for key in path:
            m = m[key]
        return float(m)

    rows = []
    for name, m in results.items():
        row: dict[str, object] = {"dataset": name, "n": int(m["n"])}
        for col, path in GAP_METRICS.items():
            value = get(m, path)
            row[col], row[f"{col}_delta"] = value, value - get(ref, path)
        rows.append(row)
    return pd.DataFrame(rows).set_index("dataset")
