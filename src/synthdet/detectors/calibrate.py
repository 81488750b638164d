"""Decision thresholds and probability calibration, chosen on held-out probabilities, never on the data a head was
fitted on. Applying a calibration needs numpy only (the scoring install); fitting one imports scikit-learn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict


def f1_optimal_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The threshold that maximises F1 of the positive (generated) class, exactly, over every distinct score.

    Equivalent to scikit-learn's ``TunedThresholdClassifierCV(scoring="f1")`` on a prefit model, but exact rather
    than on a grid. Ties prefer the higher threshold (fewer false alarms). With one class only, returns 0.5.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        return 0.5
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_true, prob)
    denom = precision[:-1] + recall[:-1]
    f1 = np.where(denom > 0, 2 * precision[:-1] * recall[:-1] / np.where(denom > 0, denom, 1), 0.0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return float(thresholds[best[-1]])


def capped_threshold(y_true: np.ndarray, prob: np.ndarray, groups: np.ndarray, *, max_fpr: float,
                     also: Sequence[np.ndarray] = ()) -> float:
    """The F1-optimal threshold among those at which no real-photo group (``groups`` of the ``y_true == 0`` rows)
    has a false-positive rate above ``max_fpr``: a detector that flags one camera's photos wholesale is wrong for
    everyone who uses that camera, whatever its pooled F1. ``also``: the same rows' probabilities in other views (a
    thumbnail, a native crop; NaN where not scored), on which the cap must hold too — a deployed detector has one
    threshold whatever it is shown.

    Candidates are the distinct scores; the lowest threshold meeting the cap bounds the search from below. With no
    real rows, the plain F1-optimal threshold."""
    y_true, prob, groups = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64), np.asarray(groups)
    best = f1_optimal_threshold(y_true, prob)
    reals = y_true == 0
    if not reals.any():
        return best
    floor = -np.inf
    for p in (prob, *(np.asarray(a, dtype=np.float64) for a in also)):
        for g in np.unique(groups[reals]):
            q = p[reals & (groups == g) & np.isfinite(p)]
            if len(q):
                floor = max(floor, float(np.quantile(q, 1 - max_fpr, method="higher")) + 1e-12)
    if best >= floor:
        return best
    above = prob >= floor
    candidates = np.unique(prob[above]) if above.any() else np.array([floor])
    f1 = [_f1(y_true, prob >= t) for t in candidates]
    return float(max(floor, candidates[int(np.argmax(f1))]))


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float((pred & (y == 1)).sum())
    return 2 * tp / max(1.0, float(pred.sum() + (y == 1).sum()))


CalibrationMethod = Literal["sigmoid", "isotonic"]


class Calibration(BaseModel):
    """A monotone map from a head's raw logit to a probability that means what it says, fitted on held-out scores.

    ``sigmoid`` (Platt scaling: a temperature ``a`` and a shift ``b`` on the logit) keeps the ranking, so ROC AUC is
    unchanged; ``isotonic`` is free-form (piecewise linear between its knots ``x`` → ``y``, ``x`` on the probability
    scale). Fitted on leave-one-source-out scores, so 0.5 means even odds on images from sources the model never saw,
    at the class balance of those rows (``prior``), not on the rows it was fitted on. It reads the raw logit, never a
    probability: a probability rounds to 1.0 for confident fakes, and every such image would get the same score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: CalibrationMethod
    a: float = 1.0
    b: float = 0.0
    x: list[float] = []
    y: list[float] = []
    n: int = 0
    prior: float = 0.5  # share of generated images among the rows it was fitted on
    rows: str = ""  # which rows, in words

    def __call__(self, logit: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the raw logits ``logit``."""
        z = np.asarray(logit, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(sigmoid(z), self.x, self.y)
        return sigmoid(self.a * z + self.b)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function in float64, without overflow warnings for large ``|z|``."""
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def calibrated(calibration: Callable[[np.ndarray], np.ndarray] | None, z: np.ndarray) -> np.ndarray:
    """The probability of raw logits ``z``: through ``calibration`` when there is one, else the plain sigmoid."""
    return calibration(z) if calibration is not None else sigmoid(z)


def logit(p: np.ndarray) -> np.ndarray:
    """The inverse of :func:`sigmoid`, for scores that only exist as probabilities (clipped to ±36.7: float64's
    resolution near 1)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-16, 1 - 1e-16)
    return np.log(p) - np.log1p(-p)


def fit_calibration(
    y_true: np.ndarray, logits: np.ndarray, *, method: CalibrationMethod = "sigmoid", rows: str = "",
) -> Calibration:
    """Fit :class:`Calibration` on held-out raw logits (never on the rows the head was fitted on)."""
    y_true, z = np.asarray(y_true).astype(int), np.asarray(logits, dtype=np.float64)
    if len(np.unique(y_true)) < 2:
        raise ValueError("calibration needs held-out scores of both classes")
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    base = Calibration(method=method, n=len(y_true), prior=float(y_true.mean()), rows=rows)
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(sigmoid(z), y_true)
        return base.model_copy(update={"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y_true)
    return base.model_copy(update={"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])})


def fit_uncertainty_band(y_true: np.ndarray, prob: np.ndarray, threshold: float, *, level: float = 0.9) -> tuple[float, float]:
    """The scores around ``threshold`` where a verdict is not yet worth acting on, from held-out scores: above the
    band at least ``level`` of the images are generated (precision), below it at least ``level`` are real
    (negative predictive value). A score inside it is reported as uncertain."""
    y_true, prob = np.asarray(y_true).astype(int), np.asarray(prob, dtype=np.float64)
    order = np.unique(prob)  # the candidate edges, ascending
    by_score = np.argsort(prob, kind="stable")
    n_below = np.searchsorted(prob[by_score], order)  # rows scored below each edge, and the generated among them
    fakes_below = np.r_[0, np.cumsum(y_true[by_score])][n_below]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision_above = (y_true.sum() - fakes_below) / (len(prob) - n_below)
        npv_below = 1 - fakes_below / n_below
    up = np.flatnonzero((order >= threshold) & (precision_above >= level))
    down = np.flatnonzero((order <= threshold) & (n_below > 0) & (npv_below >= level))
    hi = float(order[up[0]]) if len(up) else float(order[-1])
    lo = float(order[down[-1]]) if len(down) else float(order[0])
    return min(lo, threshold), max(hi, threshold)
