"""calibrate.f1_optimal_threshold: exactly the best F1 over every distinct score, ties to the higher threshold."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from synthdet.detectors.calibrate import f1_optimal_threshold


def brute_force(y: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """(best F1, highest threshold reaching it) by trying every unique score as ``prob >= t``."""
    results = []
    for t in np.unique(prob):
        pred = prob >= t
        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        fn = int((~pred & (y == 1)).sum())
        results.append((2 * tp / (2 * tp + fp + fn), float(t)))
    best = max(f for f, _ in results)
    return best, max(t for f, t in results if f >= best - 1e-9)


def f1_at(y: np.ndarray, prob: np.ndarray, t: float) -> float:
    return float(f1_score(y, (prob >= t).astype(int), zero_division=0))


@pytest.mark.parametrize("seed", range(8))
def test_matches_brute_force_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y = rng.integers(0, 2, n)
    prob = np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1)
    best, t_best = brute_force(y, prob)
    t = f1_optimal_threshold(y, prob)
    assert t in set(prob.tolist())  # one of the scores, not a grid point
    assert f1_at(y, prob, t) == pytest.approx(best, abs=1e-12)
    assert t == t_best


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_with_ties(seed: int) -> None:
    """Coarse scores (many ties, like a quantised model output) and imbalanced classes."""
    rng = np.random.default_rng(100 + seed)
    n = 150
    y = (rng.random(n) < [0.1, 0.3, 0.5, 0.7, 0.9, 0.2][seed]).astype(int)
    prob = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 1)
    best, t_best = brute_force(y, prob)
    t = f1_optimal_threshold(y, prob)
    assert f1_at(y, prob, t) == pytest.approx(best, abs=1e-12)
    assert t == t_best


def test_ties_prefer_higher_threshold() -> None:
    # t=0.9 (1 TP, 1 FN) and t=0.6 (2 TP, 2 FP) both give F1 = 2/3; the higher one raises fewer alarms
    y = np.array([1, 0, 0, 1, 0])
    prob = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    assert f1_at(y, prob, 0.9) == pytest.approx(2 / 3)
    assert f1_at(y, prob, 0.9) == pytest.approx(f1_at(y, prob, 0.6))
    assert f1_optimal_threshold(y, prob) == 0.9


def test_perfect_separation_gives_lowest_positive_score() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.05, 0.2, 0.3, 0.55, 0.7, 0.99])
    assert f1_optimal_threshold(y, prob) == 0.55


def test_threshold_is_a_score_not_the_default() -> None:
    y = np.array([0] * 10 + [1] * 10)
    prob = np.concatenate([np.linspace(0.0, 0.1, 10), np.linspace(0.12, 0.2, 10)])  # all below 0.5
    t = f1_optimal_threshold(y, prob)
    assert t == pytest.approx(0.12) and f1_at(y, prob, t) == 1.0 and f1_at(y, prob, 0.5) == 0.0


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_returns_half(label: int) -> None:
    prob = np.random.default_rng(0).random(30)
    assert f1_optimal_threshold(np.full(30, label), prob) == 0.5


def test_accepts_lists_and_bool_labels() -> None:
    assert f1_optimal_threshold([False, True, True], [0.2, 0.6, 0.7]) == 0.6


def test_sigmoid_calibration_keeps_the_ranking_and_fixes_overconfidence() -> None:
    from sklearn.metrics import roc_auc_score

    from synthdet.detectors.calibrate import fit_calibration, sigmoid

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_logit = (2 * y - 1) * 1.0 + rng.normal(0, 1.0, 4000)
    z = 4 * true_logit  # 4x overconfident
    raw = sigmoid(z)
    cal = fit_calibration(y, z, method="sigmoid", rows="test rows")
    p = cal(z)
    assert cal.a == pytest.approx(0.5, abs=0.08)  # undoes the temperature (true logit scale is 2: 2*1/1 over 4)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, raw))
    for lo, hi in ((0.1, 0.3), (0.4, 0.6), (0.7, 0.9)):  # reliability: predicted ≈ observed per bin
        sel = (p >= lo) & (p < hi)
        assert abs(y[sel].mean() - p[sel].mean()) < 0.05
    iso = fit_calibration(y, z, method="isotonic")
    assert np.all(np.diff(iso(np.sort(z))) >= 0) and 0 <= iso(z).min() and iso(z).max() <= 1
    assert cal.n == 4000 and cal.prior == pytest.approx(y.mean()) and cal.rows == "test rows"
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.zeros(5), np.linspace(0, 1, 5))


def test_calibration_reads_the_raw_logit_so_confident_fakes_keep_their_order() -> None:
    """Probabilities were clipped to 1 - 1e-7 (logit 16.1) before calibration, so every image past it got one score
    (0.982964 on the shipped card); from the raw logit they stay distinct and ordered."""
    from synthdet.detectors.calibrate import fit_calibration

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000)
    z = (2 * y - 1) * 3.0 + rng.normal(0, 2.0, 2000)
    cal = fit_calibration(y, z, method="sigmoid")
    confident = cal(np.array([17.0, 19.0, 21.0]))
    assert np.all(np.diff(confident) > 0) and confident[0] < 1.0


def test_capped_threshold_keeps_every_real_group_under_the_cap() -> None:
    from synthdet.detectors.calibrate import capped_threshold

    rng = np.random.default_rng(1)
    groups = np.array(["a"] * 300 + ["b"] * 100 + ["fake"] * 200)
    y = (groups == "fake").astype(int)
    prob = np.r_[rng.uniform(0, 0.5, 300), rng.uniform(0.3, 0.9, 100), rng.uniform(0.4, 1.0, 200)]
    free = f1_optimal_threshold(y, prob)
    assert (prob[groups == "b"] >= free).mean() > 0.2  # the plain optimum flags a fifth of source b
    t = capped_threshold(y, prob, groups, max_fpr=0.05)
    assert (prob[groups == "b"] >= t).mean() <= 0.05 and (prob[groups == "a"] >= t).mean() <= 0.05
    assert t >= free
    assert capped_threshold(y, prob, groups, max_fpr=1.0) == free  # a cap that binds nothing changes nothing
    crop = np.where(groups == "a", np.clip(prob + 0.45, 0, 1), prob)  # source a's photos look generated as crops
    crop[-5:] = np.nan  # not scored in that view
    both = capped_threshold(y, prob, groups, max_fpr=0.05, also=[crop])
    assert (crop[groups == "a"] >= t).mean() > 0.05  # capped on the file alone, the crops of a are flagged
    assert both > t and (crop[groups == "a"] >= both).mean() <= 0.05 and (prob[groups == "b"] >= both).mean() <= 0.05
