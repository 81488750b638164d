"""Nested selection and group-bootstrap intervals (synthdet.evaluation.selection)."""

from __future__ import annotations

import numpy as np
import pytest

from synthdet.detectors.calibrate import capped_threshold, sigmoid
from synthdet.evaluation.selection import auc_ci, auc_gain_ci, group_bootstrap, nested_decisions, nested_summary


def groups_data(seed: int = 0, n_groups: int = 8, per: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real and generated groups whose mean logit varies by group; real group ``real:odd`` scores like fakes."""
    rng = np.random.default_rng(seed)
    y, z, g = [], [], []
    for i in range(n_groups):
        for label in (0, 1):
            shift = (1.5 if label else -1.5) + rng.normal(0, 0.7)
            name = f"{'fake' if label else 'real'}:{i}"
            if name == "real:0":
                shift, name = 1.0, "real:odd"
            y += [label] * per
            z += list(rng.normal(shift, 1.0, per))
            g += [name] * per
    return np.array(y), np.array(z), np.array(g)


def test_a_capped_threshold_judged_on_its_own_rows_meets_the_cap_and_nested_shows_it_does_not_transfer() -> None:
    y, z, g = groups_data()
    cap = 0.10
    thr = capped_threshold(y, sigmoid(z), g, max_fpr=cap)
    in_sample = max(((sigmoid(z)[(g == name) & (y == 0)] >= thr).mean()) for name in np.unique(g[y == 0]))
    assert in_sample <= cap  # by construction
    d = nested_decisions(y, {"file": z, "crop": z - 0.5}, g, calibrate="sigmoid", max_group_fpr=cap, band_level=0.9)
    odd = d[d["group"] == "real:odd"]
    assert odd["flagged_file"].mean() > cap  # chosen without it, the odd group is flagged beyond the cap
    assert (d.groupby("group")["threshold"].nunique() == 1).all()  # one selection per held-out group
    assert d["threshold"].nunique() > 1  # ... made without that group, so it differs between groups
    assert (d["band_lo"] <= d["threshold"]).all() and (d["threshold"] <= d["band_hi"]).all()
    s = nested_summary(d, "file", n_boot=200)
    assert s["worst_real_flag_rate"] == pytest.approx(odd["flagged_file"].mean())
    assert s["recall_ci"][0] <= s["recall"] <= s["recall_ci"][1]
    crop = nested_summary(d, "crop", n_boot=200)
    assert crop["recall"] < s["recall"]  # the same thresholds applied to lower scores


def test_group_bootstrap_resamples_whole_groups_and_says_when_it_cannot() -> None:
    y, z, g = groups_data(n_groups=10)
    lo, hi = auc_ci(y, z, g, n_boot=300)
    from sklearn.metrics import roc_auc_score

    point = roc_auc_score(y, z)
    assert lo < point < hi and hi - lo > 0.005
    few_lo, few_hi = auc_ci(*groups_data(n_groups=3), n_boot=300)
    assert few_hi - few_lo > hi - lo  # fewer groups, wider interval
    one_real = g != "real:odd"
    keep = one_real & ((y == 1) | (g == "real:1"))
    assert np.isnan(group_bootstrap(y[keep], g[keep], lambda idx: float(len(idx)), n_boot=50)).all()


def test_a_gain_on_the_same_rows_has_a_narrower_interval_than_either_auc() -> None:
    """Two scores of the same images that differ by a small improvement: the paired interval of the gain excludes 0
    and is far narrower than either AUC's own interval; no gain gives an interval around 0."""
    y, z, g = groups_data(n_groups=10)
    rng = np.random.default_rng(1)
    better = z + np.where(y == 1, 0.3, -0.3) + rng.normal(0, 0.1, len(z))
    lo, hi = auc_gain_ci(y, z, better, g, n_boot=300)
    a_lo, a_hi = auc_ci(y, z, g, n_boot=300)
    assert 0 < lo < hi and hi - lo < (a_hi - a_lo) / 2
    same_lo, same_hi = auc_gain_ci(y, z, z + rng.normal(0, 0.05, len(z)), g, n_boot=300)
    assert same_lo < 0 < same_hi


def test_the_cap_can_cover_other_views_the_detector_is_shown() -> None:
    """A real group that looks generated only as crops: capped on the file view, its crops are flagged; with
    ``cap_views=("crop",)`` the nested thresholds rise until the other groups' crops stay under the cap too."""
    y, z, g = groups_data(n_groups=10)
    crop = z + np.where(np.char.startswith(g.astype(str), "real:") & (g != "real:odd"), 1.2, 0.0)
    kw = {"calibrate": "sigmoid", "max_group_fpr": 0.05}
    file_only = nested_decisions(y, {"file": z, "crop": crop}, g, **kw)
    both = nested_decisions(y, {"file": z, "crop": crop}, g, cap_views=("crop",), **kw)
    assert (both["threshold"] >= file_only["threshold"] - 1e-12).all()
    real = (both["label"] == 0) & (both["group"] != "real:odd")
    assert both.loc[real, "flagged_crop"].mean() < file_only.loc[real, "flagged_crop"].mean()
    assert both["flagged_file"].sum() <= file_only["flagged_file"].sum()  # the price: recall on the file view
