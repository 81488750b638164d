"""Figures for decisions that were themselves chosen on data, kept honest: nested leave-one-group-out selection of
calibration, threshold and uncertainty band, and group-bootstrap confidence intervals.

A threshold chosen on the same leave-one-group-out scores it is then judged on is in-sample for that choice: its
recall and its worst real group's flag rate are optimistic (the "no real source above F" cap is met by construction).
:func:`nested_decisions` repeats the whole selection once per group with that group left out and applies the result
to the group's rows, so every decision in its table was made without the rows it is judged on.
:func:`group_bootstrap` resamples whole groups (real and generated separately, so both classes stay present): images of
one source are not independent draws, and an interval over images would be too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from synthdet.detectors.calibrate import (
    CalibrationMethod,
    calibrated,
    capped_threshold,
    f1_optimal_threshold,
    fit_calibration,
    fit_uncertainty_band,
)
from synthdet.evaluation.metrics import CI_LEVEL


def nested_decisions(
    y: np.ndarray, logits: Mapping[str, np.ndarray], groups: np.ndarray, *, calibrate: CalibrationMethod | None = None,
    max_group_fpr: float | None = None, band_level: float | None = None, selection_view: str = "file",
    cap_views: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per image: the verdict a detector would give it had its calibration, threshold (F1-optimal, or capped
    so no real group is flagged above ``max_group_fpr``) and band (``band_level``) been chosen on the other groups'
    ``selection_view`` scores. ``logits`` maps view name → raw held-out logits (NaN: not scored in that view); the
    selection is made once per group on ``selection_view`` and applied to every view, as a deployed detector has one
    threshold whatever it is shown. Columns: ``group``, ``label``, then per view ``prob_<v>``, ``flagged_<v>``,
    ``uncertain_<v>``, and the group's ``threshold``, ``band_lo``, ``band_hi``. ``cap_views``: further views whose
    real groups the cap covers too (the threshold is still F1-optimal on ``selection_view``)."""
    y, groups = np.asarray(y).astype(int), np.asarray(groups)
    out = pd.DataFrame({"group": groups, "label": y})
    cols: dict[str, np.ndarray] = {c: np.full(len(y), np.nan) for c in ("threshold", "band_lo", "band_hi")}
    for v in logits:
        cols |= {f"prob_{v}": np.full(len(y), np.nan), f"flagged_{v}": np.full(len(y), np.nan),
                 f"uncertain_{v}": np.full(len(y), np.nan)}
    base = np.asarray(logits[selection_view], dtype=np.float64)
    for g in np.unique(groups):
        held, rest = groups == g, (groups != g) & np.isfinite(base)
        if len(np.unique(y[rest])) < 2:
            continue
        cal = fit_calibration(y[rest], base[rest], method=calibrate) if calibrate else None
        p_rest = calibrated(cal, base[rest])
        also = [calibrated(cal, np.asarray(logits[v], dtype=np.float64)[rest]) for v in cap_views]
        thr = (capped_threshold(y[rest], p_rest, groups[rest], max_fpr=max_group_fpr, also=also)
               if max_group_fpr is not None else f1_optimal_threshold(y[rest], p_rest))
        lo, hi = fit_uncertainty_band(y[rest], p_rest, thr, level=band_level) if band_level else (thr, thr)
        cols["threshold"][held], cols["band_lo"][held], cols["band_hi"][held] = thr, lo, hi
        for v, z in logits.items():
            z = np.asarray(z, dtype=np.float64)[held]
            p = calibrated(cal, z)
            ok = np.isfinite(z)
            cols[f"prob_{v}"][held] = np.where(ok, p, np.nan)
            cols[f"flagged_{v}"][held] = np.where(ok, p >= thr, np.nan)
            cols[f"uncertain_{v}"][held] = np.where(ok, (p >= lo) & (p < hi), np.nan)
    return out.assign(**cols)


def nested_summary(decisions: pd.DataFrame, view: str = "file", *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The held-out figures of ``view``'s nested decisions (:func:`nested_decisions`), with group-bootstrap
    intervals: recall (generated images flagged), the pooled and the worst real group's flag rate, the share of
    verdicts inside the band, and the accuracy of the verdicts outside it."""
    d = decisions[np.isfinite(decisions[f"flagged_{view}"])]
    y, g = d["label"].to_numpy(), d["group"].to_numpy()
    flagged, unsure = d[f"flagged_{view}"].to_numpy() == 1, d[f"uncertain_{view}"].to_numpy() == 1

    def recall(idx: np.ndarray) -> float:
        fakes = idx[y[idx] == 1]
        return float(flagged[fakes].mean()) if len(fakes) else float("nan")

    def real_fpr(idx: np.ndarray) -> float:
        reals = idx[y[idx] == 0]
        return float(flagged[reals].mean()) if len(reals) else float("nan")

    def worst_real(idx: np.ndarray) -> float:
        reals = idx[y[idx] == 0]
        return float(pd.Series(flagged[reals]).groupby(g[reals]).mean().max()) if len(reals) else float("nan")

    def outside_acc(idx: np.ndarray) -> float:
        sure = idx[~unsure[idx]]
        return float((flagged[sure] == (y[sure] == 1)).mean()) if len(sure) else float("nan")

    def uncertain(idx: np.ndarray) -> float:
        return float(unsure[idx].mean()) if len(idx) else float("nan")

    out: dict = {"n": len(d), "rows": "held-out twice: scores from models that never saw the image's group, and a "
                 "threshold/calibration/band chosen without that group",
                 "threshold_range": [float(d["threshold"].min()), float(d["threshold"].max())]}
    for name, fn in (("recall", recall), ("real_flag_rate", real_fpr), ("worst_real_flag_rate", worst_real),
                     ("uncertain_share", uncertain), ("accuracy_outside_band", outside_acc)):
        out[name] = fn(np.arange(len(d)))
        out[f"{name}_ci"] = group_bootstrap(y, g, fn, n_boot=n_boot, seed=seed)
    return out


def group_bootstrap(
    y: np.ndarray, groups: np.ndarray, stat: Callable[[np.ndarray], float], *, n_boot: int = 1000, seed: int = 0,
    level: float = CI_LEVEL,
) -> list[float]:
    """Percentile interval (``level``, as :mod:`~synthdet.evaluation.metrics`' row bootstrap) of ``stat(row indices)`` over resamples of whole groups, real and generated groups drawn
    separately (a group holding both classes counts with its majority). ``[nan, nan]`` with fewer than two groups
    of a class or when the statistic is undefined on most resamples."""
    y, groups = np.asarray(y).astype(int), np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == i) for i in range(len(names))]
    fake_groups = np.array([y[m].mean() >= 0.5 for m in members])
    pools = [np.flatnonzero(~fake_groups), np.flatnonzero(fake_groups)]
    if any(len(p) < 2 for p in pools):
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        chosen = np.concatenate([rng.choice(p, size=len(p), replace=True) for p in pools])
        stats.append(stat(np.concatenate([members[i] for i in chosen])))
    arr = np.asarray(stats, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if len(arr) < n_boot / 2:
        return [float("nan"), float("nan")]
    alpha = (1 - level) / 2
    return [float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))]


def auc_ci(y: np.ndarray, score: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Group-bootstrap interval (:func:`group_bootstrap`) of the pooled ROC AUC of ``score``."""
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=np.float64)

    def auc(idx: np.ndarray) -> float:
        return float(roc_auc_score(y[idx], score[idx])) if len(np.unique(y[idx])) == 2 else float("nan")

    return group_bootstrap(y, groups, auc, n_boot=n_boot, seed=seed)


def auc_gain_ci(y: np.ndarray, before: np.ndarray, after: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000,
                seed: int = 0) -> list[float]:
    """Group-bootstrap interval of ``AUC(after) − AUC(before)`` on the same rows: both scores are resampled together,
    so the interval is that of the change, far narrower than two separate intervals when the scores are correlated
    (two detectors that differ in their training data, judged on the same held-out images)."""
    y = np.asarray(y).astype(int)
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)

    def gain(idx: np.ndarray) -> float:
        if len(np.unique(y[idx])) < 2:
            return float("nan")
        return float(roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx]))

    return group_bootstrap(y, groups, gain, n_boot=n_boot, seed=seed)
