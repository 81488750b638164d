"""Task A metrics as pure functions of (labels, probabilities, threshold); scikit-learn does the arithmetic."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
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

from .calibrate import f1_optimal_threshold


def equal_error_rate(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Rate where false positives equal false negatives, interpolated on the ROC curve."""
    fpr, tpr, _ = roc_curve(y_true, prob)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    # linear interpolation between the two points that bracket fpr == fnr
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
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
