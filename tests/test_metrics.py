"""metrics: Task A metrics agree with scikit-learn; EER is right on hand-made cases; groups are split correctly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.evaluation.metrics import binary_metrics, equal_error_rate, grouped_metrics, threshold_metrics


def random_case(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-rng.normal(1.2 * (2 * y - 1), 1.5)))
    return y, prob


def reference_eer(y: np.ndarray, prob: np.ndarray) -> float:
    """Independent EER: full ROC from every distinct threshold, crossing of FPR and FNR interpolated linearly."""
    pos, neg = (y == 1).sum(), (y == 0).sum()
    pts = [(0.0, 1.0)]  # (fpr, fnr) at threshold +inf
    for t in np.unique(prob)[::-1]:
        pred = prob >= t
        pts.append(((pred & (y == 0)).sum() / neg, 1 - (pred & (y == 1)).sum() / pos))
    for (f0, n0), (f1, n1) in zip(pts, pts[1:]):
        d0, d1 = f0 - n0, f1 - n1
        if d0 < 0 <= d1:
            return f0 + d0 / (d0 - d1) * (f1 - f0)
    raise AssertionError("no crossing")


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_agree_with_sklearn(seed: int) -> None:
    y, prob = random_case(seed)
    m = binary_metrics(y, prob, threshold=0.3)
    assert m["n"] == len(y) and m["n_fake"] == int(y.sum())
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, prob), abs=1e-12)
    assert m["eer"] == pytest.approx(reference_eer(y, prob), abs=1e-12)
    for key, t in (("at_0.5", 0.5), ("at_threshold", 0.3), ("oracle", f1_optimal_threshold(y, prob))):
        pred = (prob >= t).astype(int)
        d = m[key]
        assert d["threshold"] == t
        assert d["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert d["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert d["recall"] == pytest.approx(recall_score(y, pred))
        assert d["f1"] == pytest.approx(f1_score(y, pred))
        tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
        assert d["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["oracle"]["f1"] >= max(m["at_0.5"]["f1"], m["at_threshold"]["f1"])


def test_confusion_counts_by_hand() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.1, 0.6, 0.5, 0.4, 0.7, 0.9, 0.5])
    d = threshold_metrics(y, prob, 0.5)  # >= 0.5 is fake
    assert d["confusion"] == {"tn": 1, "fp": 2, "fn": 1, "tp": 3}
    assert d["accuracy"] == pytest.approx(4 / 7)
    assert d["precision"] == pytest.approx(3 / 5) and d["recall"] == pytest.approx(3 / 4)
    assert d["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert threshold_metrics(y, prob, 0.95)["confusion"] == {"tn": 3, "fp": 0, "fn": 4, "tp": 0}
    assert threshold_metrics(y, prob, 0.95)["precision"] == 0.0  # no positive predictions: 0, no warning crash


def test_eer_perfect_and_inverted() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    assert equal_error_rate(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == 0.0
    assert equal_error_rate(y, np.array([0.7, 0.8, 0.9, 0.1, 0.2, 0.3])) == 1.0
    assert equal_error_rate(np.array([0, 1] * 5), np.full(10, 0.5)) == 0.5  # uninformative: 0.5


def test_eer_symmetric_case_on_a_roc_point() -> None:
    # one real above and one fake below the threshold 0.6: FPR = FNR = 1/4 exactly
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert equal_error_rate(y, prob) == pytest.approx(0.25)
    assert equal_error_rate(1 - y, 1 - prob) == pytest.approx(0.25)  # mirrored case, same EER


def test_eer_interpolates_across_a_tie() -> None:
    """A real and a fake tie at 0.5: the ROC jumps diagonally from (FPR 0, FNR 1/4) to (1/4, 0); EER = 1/8.

    (A classifier with a tied pair is not perfect: an EER of 0 here would be wrong.)
    """
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.5, 0.5, 0.7, 0.8, 0.9])
    assert equal_error_rate(y, prob) == pytest.approx(0.125)
    assert equal_error_rate(1 - y, 1 - prob) == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(10))
def test_eer_matches_reference_with_ties(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    y = rng.integers(0, 2, int(rng.integers(8, 60)))
    if len(set(y)) < 2:
        y[:2] = [0, 1]
    prob = np.round(rng.random(len(y)) * 0.6 + 0.3 * y, 1)  # coarse scores: many ties
    assert equal_error_rate(y, prob) == pytest.approx(reference_eer(y, prob), abs=1e-12)


def test_one_class_metrics_are_nan_not_errors() -> None:
    y = np.ones(5, dtype=int)
    m = binary_metrics(y, np.array([0.9, 0.8, 0.4, 0.7, 0.6]))
    assert math.isnan(m["roc_auc"]) and math.isnan(m["ap"]) and math.isnan(m["eer"])
    assert m["at_0.5"]["recall"] == pytest.approx(0.8) and m["at_0.5"]["accuracy"] == pytest.approx(0.8)
    assert m["oracle"]["threshold"] == 0.5


def test_grouped_metrics() -> None:
    y, prob = random_case(7, n=120)
    rng = np.random.default_rng(7)
    source = rng.choice(["camera", "web", "comfy"], len(y))
    generator = np.where(y == 1, rng.choice(["flux", "sdxl"], len(y)), "")
    out = grouped_metrics(y, prob, {"source": source, "generator": generator}, threshold=0.4)
    assert set(out) == {"source", "generator"}
    assert list(out["source"]) == ["camera", "comfy", "web"]  # sorted
    assert set(out["generator"]) == {"", "flux", "sdxl"}
    for col, values in (("source", source), ("generator", generator)):
        assert sum(m["n"] for m in out[col].values()) == len(y)
        for v, m in out[col].items():
            mask = values == v
            expected = binary_metrics(y[mask], prob[mask], threshold=0.4)
            assert m["n"] == mask.sum() and m["n_fake"] == y[mask].sum()
            assert m["at_threshold"] == expected["at_threshold"]
            if len(set(y[mask])) == 2:
                assert m["roc_auc"] == pytest.approx(roc_auc_score(y[mask], prob[mask]))
    # generator groups of fakes only: recall is defined, AUC is not
    flux = out["generator"]["flux"]
    assert math.isnan(flux["roc_auc"])
    mask = generator == "flux"
    assert flux["at_threshold"]["recall"] == pytest.approx((prob[mask] >= 0.4).mean())


def test_grouped_metrics_mixed_types_sorted_as_strings() -> None:
    y = np.array([0, 1, 0, 1])
    prob = np.array([0.2, 0.8, 0.3, 0.6])
    out = grouped_metrics(y, prob, {"size": np.array([1024, 224, 1024, 224], dtype=object)}, threshold=0.5)
    assert list(out["size"]) == ["1024", "224"]
    assert out["size"]["224"]["n"] == 2 and out["size"]["224"]["n_fake"] == 2


# --------------------------------------------------------------------------------- evaluate_scores, bootstrap, gap

from synthdet.evaluation.metrics import CI_LEVEL, evaluate_scores, gap_table, resampled_metrics  # noqa: E402


def _counts(y: np.ndarray, prob: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (positive, negative) count rows of resample ``idx`` over the distinct scores of ``prob``."""
    scores, bins = np.unique(prob, return_inverse=True)
    pos = np.bincount(bins[idx][y[idx] == 1], minlength=scores.size)[None]
    neg = np.bincount(bins[idx][y[idx] == 0], minlength=scores.size)[None]
    return pos, neg, scores


@pytest.mark.parametrize("seed", range(40))
def test_resampled_metrics_agree_with_sklearn_on_explicit_resamples(seed: int) -> None:
    """The vectorised bootstrap arithmetic gives exactly binary_metrics (scikit-learn) of the resampled data,
    ties and one-class resamples included."""
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(6, 90))
    y = rng.integers(0, 2, n)
    if seed % 9 == 0:
        y[:] = seed % 2  # one class only
    prob = np.round(rng.random(n) * 0.6 + 0.3 * y, int(rng.integers(1, 4)))  # coarse: many ties
    idx = rng.integers(0, n, n)
    threshold = float(rng.choice([0.3, 0.5, float(prob[0]), 0.97]))
    got = resampled_metrics(*_counts(y, prob, idx), threshold)
    want = binary_metrics(y[idx], prob[idx], threshold=threshold)
    for key in ("roc_auc", "ap", "eer"):
        if math.isnan(want[key]):
            assert math.isnan(got[key][0])
        else:
            assert got[key][0] == pytest.approx(want[key], abs=1e-12)
    for name in ("at_0.5", "at_threshold", "oracle"):
        for key in ("accuracy", "precision", "recall", "f1"):
            assert got[f"{name}.{key}"][0] == pytest.approx(want[name][key], abs=1e-12), (name, key)


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_scores_point_estimates_are_sklearns(seed: int) -> None:
    y, prob = random_case(seed, n=300)
    m = evaluate_scores(y, prob, 0.4, bootstrap=200, seed=seed)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, prob), abs=1e-12)
    ref = binary_metrics(y, prob, threshold=0.4)
    for name in ("at_0.5", "at_threshold", "oracle"):
        assert {k: v for k, v in m[name].items() if k != "ci"} == ref[name]
    assert m["bootstrap"] == {"n": 200, "seed": seed, "level": CI_LEVEL}
    assert m["by"] == {}


def _ci_pairs(m: dict) -> list[tuple[str, float, list[float]]]:
    pairs = [(k, m[k], m["ci"][k]) for k in ("roc_auc", "ap", "eer")]
    pairs += [(f"{g}.{k}", m[g][k], m[g]["ci"][k]) for g in ("at_0.5", "at_threshold", "oracle")
              for k in ("accuracy", "precision", "recall", "f1")]
    return pairs


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_n() -> None:
    widths = {}
    for n in (100, 1600):
        y, prob = random_case(3, n=n)
        m = evaluate_scores(y, prob, 0.5, bootstrap=500, seed=1)
        for key, value, (lo, hi) in _ci_pairs(m):
            assert lo <= value <= hi, (n, key, lo, value, hi)
        widths[n] = {key: hi - lo for key, _, (lo, hi) in _ci_pairs(m)}
    for key, wide in widths[100].items():
        assert widths[1600][key] < 0.6 * wide, key  # ~1/sqrt(16) = 0.25 in theory
    # a 95 % interval of an AUC near 0.87 on 100 scores is a few hundredths wide, not degenerate
    assert 0.03 < widths[100]["roc_auc"] < 0.3


def test_bootstrap_is_seeded_and_stratified() -> None:
    y, prob = random_case(4, n=60)
    y[:] = 0
    y[:3] = 1  # 3 fakes: unstratified resamples would often have none, and AUC would be undefined
    a = evaluate_scores(y, prob, 0.5, bootstrap=300, seed=7)
    b = evaluate_scores(y, prob, 0.5, bootstrap=300, seed=7)
    c = evaluate_scores(y, prob, 0.5, bootstrap=300, seed=8)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    assert all(np.isfinite(a["ci"]["roc_auc"]))


def test_bootstrap_1000_resamples_of_1000_scores_is_fast() -> None:
    import time

    y, prob = random_case(5, n=1000)
    t0 = time.perf_counter()
    evaluate_scores(y, prob, 0.5, bootstrap=1000)
    assert time.perf_counter() - t0 < 5.0  # ~0.2 s on one idle core; generous for a shared CI box


def test_evaluate_scores_groups_have_their_own_intervals() -> None:
    y, prob = random_case(6, n=200)
    generator = np.where(y == 1, np.where(np.arange(200) % 2, "flux", "sdxl"), "camera")
    m = evaluate_scores(y, prob, 0.5, groups={"generator": generator}, bootstrap=200)
    assert set(m["by"]["generator"]) == {"camera", "flux", "sdxl"}
    flux = m["by"]["generator"]["flux"]
    mask = generator == "flux"
    assert flux["n"] == mask.sum() and math.isnan(flux["roc_auc"]) and all(map(math.isnan, flux["ci"]["roc_auc"]))
    assert flux["at_0.5"]["recall"] == pytest.approx((prob[mask] >= 0.5).mean())
    lo, hi = flux["at_0.5"]["ci"]["recall"]
    assert lo <= flux["at_0.5"]["recall"] <= hi and hi - lo > 0
    camera = m["by"]["generator"]["camera"]
    assert camera["at_0.5"]["ci"]["accuracy"][0] <= camera["at_0.5"]["accuracy"] <= camera["at_0.5"]["ci"]["accuracy"][1]


def test_no_bootstrap_means_no_intervals() -> None:
    y, prob = random_case(8, n=50)
    m = evaluate_scores(y, prob, 0.5, bootstrap=0)
    assert m["ci"] == {} and m["at_threshold"]["ci"] == {}


def test_gap_table_reproduces_a_validation_to_test_gap() -> None:
    y, prob = random_case(9, n=400)
    val = evaluate_scores(y, prob, 0.5, bootstrap=0)
    noisy = np.clip(prob + np.random.default_rng(1).normal(0, 0.25, len(prob)), 0, 1)
    test = evaluate_scores(y, noisy, 0.5, bootstrap=0)
    table = gap_table({"val": val, "test": test})
    assert list(table.index) == ["val", "test"]
    assert table.loc["val", "roc_auc_delta"] == 0.0
    assert table.loc["test", "roc_auc"] == pytest.approx(roc_auc_score(y, noisy))
    assert table.loc["test", "roc_auc_delta"] == pytest.approx(roc_auc_score(y, noisy) - roc_auc_score(y, prob))
    assert table.loc["test", "f1_delta"] == pytest.approx(test["at_threshold"]["f1"] - val["at_threshold"]["f1"])
    assert table.loc["test", "accuracy"] == test["at_threshold"]["accuracy"]
    assert table.loc["test", "roc_auc_delta"] < 0  # noise costs AUC
    by_name = gap_table({"val": val, "test": test}, reference="test")
    assert by_name.loc["test", "roc_auc_delta"] == 0.0 and by_name.loc["val", "roc_auc_delta"] > 0
    with pytest.raises(ValueError):
        gap_table({})


def test_source_table_ranks_each_group_against_the_other_class() -> None:
    from synthdet.evaluation.metrics import source_table

    y = np.array([0, 0, 0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.95, 0.3])
    groups = np.array(["cam", "cam", "press", "press", "sd", "sd", "gan"])
    t = source_table(y, prob, groups, threshold=0.5).set_index("group")
    assert t.loc["cam", "roc_auc"] == 1.0 and t.loc["cam", "flagged"] == 0.0  # below every fake
    assert t.loc["press", "flagged"] == 1.0  # both photos called generated: a 100 % false-positive source
    assert t.loc["press", "roc_auc"] == pytest.approx(2 / 6)  # of its 6 pairs with fakes, 2 score below the fake
    assert t.loc["gan", "roc_auc"] == pytest.approx(0.5) and t.loc["gan", "flagged"] == 0.0  # 0.3 beats 2 of 4 reals
    assert t.loc["sd", "n"] == 2 and list(t["label"]) == [0, 1, 0, 1]
