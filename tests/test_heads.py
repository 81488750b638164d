"""heads: scikit-learn estimators on cached features that learn, reproduce, serialise and clone."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from synthdet.heads.base import HEADS, create_head, head_from_state
from synthdet.heads.fusion import LayerFusionHead
from synthdet.heads.logreg import LogisticHead
from synthdet.heads.mlp import DeepProbe, LinearProbe, ResidualProbe, grouped_holdout

KINDS = ["linear", "residual", "deep", "logreg"]
TORCH_KINDS = ["linear", "residual", "deep"]
D = 64


def blobs(n: int, seed: int, *, shift: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian blobs in 64-d, ``2 * shift`` apart along a fixed random direction (Bayes AUC ≈ 0.998)."""
    direction = np.random.default_rng(1234).normal(size=D)
    direction /= np.linalg.norm(direction)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, D)) + np.outer(2 * y - 1, direction) * shift
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = blobs(500, seed=1)
    Xt, yt = blobs(300, seed=2)
    return X, y, Xt, yt


@pytest.fixture(scope="module")
def fitted(data) -> dict:
    X, y, _, _ = data
    return {k: create_head(k, **({"epochs": 20} if k in TORCH_KINDS else {})).fit(X, y) for k in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_learns_separable_blobs(fitted: dict, data, kind: str) -> None:
    _, _, Xt, yt = data
    head = fitted[kind]
    assert roc_auc_score(yt, head.predict_proba(Xt)[:, 1]) > 0.95
    assert (head.predict(Xt) == yt).mean() > 0.9
    assert head.n_features_in_ == D and list(head.classes_) == [0, 1]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_proba_contract(fitted: dict, data, kind: str) -> None:
    _, _, Xt, _ = data
    head = fitted[kind]
    p = head.predict_proba(Xt)
    assert p.shape == (len(Xt), 2)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert ((p >= 0) & (p <= 1)).all()
    assert np.array_equal(head.predict(Xt), (p[:, 1] >= 0.5).astype(int))
    z = head.decision_function(Xt)
    assert z.shape == (len(Xt),)
    assert np.allclose(1 / (1 + np.exp(-z.astype(np.float64))), p[:, 1], atol=1e-6)
    assert head.predict_proba(Xt[:0]).shape == (0, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_seed_is_reproducible(data, kind: str) -> None:
    X, y, Xt, _ = data
    params = {"epochs": 4} if kind in TORCH_KINDS else {}
    a = create_head(kind, seed=3, **params).fit(X, y).predict_proba(Xt)
    b = create_head(kind, seed=3, **params).fit(X, y).predict_proba(Xt)
    assert np.array_equal(a, b)
    if kind in TORCH_KINDS:
        c = create_head(kind, seed=4, **params).fit(X, y).predict_proba(Xt)
        assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip(fitted: dict, data, kind: str, tmp_path) -> None:
    _, _, Xt, _ = data
    head = fitted[kind]
    state = head.state()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    path = tmp_path / "head.safetensors"
    save_file(state, str(path))  # tensors only: no pickle anywhere
    restored = head_from_state(kind, head.get_params(), load_file(str(path)), D)
    assert type(restored) is type(head)
    assert np.array_equal(restored.predict_proba(Xt), head.predict_proba(Xt))
    assert restored.n_features_in_ == D and list(restored.classes_) == [0, 1]
    fresh = create_head(kind, **head.get_params()).load_state(state, D)
    assert np.array_equal(fresh.predict_proba(Xt), head.predict_proba(Xt))


@pytest.mark.parametrize("kind", KINDS)
def test_get_params_and_clone(fitted: dict, data, kind: str) -> None:
    X, y, Xt, _ = data
    head = fitted[kind]
    params = head.get_params()
    expected = (
        {"hidden", "dropout", "lr", "weight_decay", "epochs", "batch_size", "label_smoothing", "patience",
         "val_fraction", "seed", "device"}
        if kind in TORCH_KINDS
        else {"C", "max_iter", "seed"}
    )
    assert set(params) == expected
    twin = clone(head)
    assert type(twin) is type(head) and twin is not head and twin.get_params() == params
    assert not hasattr(twin, "n_features_in_")  # clone is unfitted
    twin.set_params(seed=99)
    assert twin.get_params()["seed"] == 99 and head.get_params()["seed"] == params["seed"]
    again = clone(head).fit(X, y)  # clone + fit reproduces the fitted head exactly
    assert np.array_equal(again.predict_proba(Xt), head.predict_proba(Xt))


@pytest.mark.parametrize("kind", TORCH_KINDS)
def test_unfitted_probe_refuses_to_predict(data, kind: str) -> None:
    with pytest.raises((AttributeError, NotFittedError)):
        create_head(kind).predict_proba(data[2])


def test_cross_validation_composes(data) -> None:
    X, y, _, _ = data
    for head in (LogisticHead(), LinearProbe(epochs=8, batch_size=64, hidden=32)):
        scores = cross_val_score(head, X, y, cv=3, scoring="roc_auc")
        assert scores.shape == (3,) and scores.min() > 0.9


def test_early_stopping(data) -> None:
    X, y, _, _ = data
    head = LinearProbe(epochs=60, patience=2).fit(X, y)
    n = len(head.history_)
    assert n < 60
    aucs = [r["val_auc"] for r in head.history_]
    best_epoch = int(np.argmax(aucs))
    assert n == best_epoch + 2 + 1  # stopped exactly `patience` epochs after the best
    assert head.best_val_auc_ == pytest.approx(max(aucs))
    assert [r["epoch"] for r in head.history_] == list(range(n))
    assert all(np.isfinite(r["loss"]) for r in head.history_)


def test_explicit_validation_set_is_used(data) -> None:
    X, y, Xt, yt = data
    head = LinearProbe(epochs=3, val_fraction=0.0).fit(X, y, X_val=Xt, y_val=yt)
    assert len(head.history_) == 3 and all("val_auc" in r for r in head.history_)
    assert head.best_val_auc_ == pytest.approx(max(r["val_auc"] for r in head.history_))


def test_no_validation_runs_all_epochs() -> None:
    X, y = blobs(16, seed=5)  # fewer than 20 rows: no validation slice
    head = LinearProbe(epochs=7, patience=1).fit(X, y)
    assert len(head.history_) == 7 and head.best_val_auc_ is None
    assert "val_auc" not in head.history_[0]


def test_label_smoothing(data) -> None:
    X, y, _, _ = data
    assert LinearProbe().get_params()["label_smoothing"] == 0.05
    assert ResidualProbe().label_smoothing == DeepProbe().label_smoothing == 0.05
    # smoothing caps confidence: with targets 0.85/0.15 the fitted probabilities stay further from 0 and 1
    params = dict(val_fraction=0.0, epochs=15, batch_size=50)
    sharp = LinearProbe(label_smoothing=0.0, **params).fit(X, y).predict_proba(X)[:, 1]
    smooth = LinearProbe(label_smoothing=0.3, **params).fit(X, y).predict_proba(X)[:, 1]
    assert smooth[y == 1].mean() < sharp[y == 1].mean() - 0.1
    assert smooth[y == 0].mean() > sharp[y == 0].mean() + 0.1


def test_parameter_counts_match_the_seed_recipes() -> None:
    """Junaid et al. 2026 at d=768: linear ≈ 257K, residual ≈ 723K, deep ≈ 461K parameters."""
    linear, residual, deep = (create_head(k).n_parameters(768) for k in ("linear", "residual", "deep"))
    assert 190_000 <= linear <= 300_000
    assert 600_000 <= residual <= 800_000
    assert 400_000 <= deep <= 500_000
    assert create_head("linear", hidden=32).n_parameters(768) < linear  # `hidden` really sizes the net


def test_dropout_and_hidden_overrides(data) -> None:
    X, y, _, _ = data
    head = DeepProbe(hidden=16, dropout=0.0, epochs=1).fit(X, y)
    linears = [m for m in head.net_.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].out_features == 16
    drops = [m for m in head.net_.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.0 for m in drops)
    assert all(m.p == 0.3 for m in DeepProbe()._make(8).modules() if isinstance(m, torch.nn.Dropout))


def test_torch_heads_declare_their_optimisation_parameters_once() -> None:
    """The fusion head's keywords are the probes' (same defaults) plus its own; all explicit, as scikit-learn needs."""
    probe, fusion = inspect.signature(LinearProbe).parameters, inspect.signature(LayerFusionHead).parameters
    assert set(fusion) - set(probe) == {"layer_dims", "proj_dim", "shared_projection", "alpha_lr"}
    assert all(fusion[name].default == p.default for name, p in probe.items())
    assert all(p.kind is p.KEYWORD_ONLY for p in fusion.values())


def test_registry() -> None:
    assert set(KINDS) <= set(HEADS)  # other heads may join the registry
    assert isinstance(create_head("residual", hidden=8), ResidualProbe)
    with pytest.raises(ValueError, match="unknown head"):
        create_head("transformer")


# --------------------------------------------------------------------------------- scikit-learn's estimator checks
# Every check runs. The torch probes train for 20 epochs without an internal split (val_fraction=0): the checks fit
# dozens of times on tiny data, and check_classifiers_train asks for accuracy > 0.83, which 3 epochs do not reach.
# LinearProbe stands for the residual and deep probes (they differ only in the network `_builder` makes); the fusion
# head overrides `_make` and `param_groups`, so it is checked too.
@parametrize_with_checks([
    LogisticHead(),
    LinearProbe(epochs=20, hidden=16, val_fraction=0.0, batch_size=64),
    LayerFusionHead(epochs=20, hidden=16, proj_dim=8, val_fraction=0.0, batch_size=64),
])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


def test_logreg_is_a_standard_scaler_and_logistic_regression_pipeline(data) -> None:
    X, y, Xt, _ = data
    head = LogisticHead(C=0.3, max_iter=500, seed=7).fit(X, y)
    assert isinstance(head.pipeline_, Pipeline)
    scaler, lr = (step for _, step in head.pipeline_.steps)
    assert isinstance(scaler, StandardScaler) and isinstance(lr, LogisticRegression)
    assert (lr.C, lr.max_iter, lr.random_state) == (0.3, 500, 7)
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=500, random_state=7))
    plain.fit(X.astype(np.float64), y)
    assert np.allclose(head.predict_proba(Xt), plain.predict_proba(Xt.astype(np.float64)))


def test_logreg_reads_the_shipped_default_head() -> None:
    """The state format is unchanged: the shipped detector's tensors give the same logits as before the Pipeline."""
    from synthdet.detectors.card import default_detector_path, read_card

    path = default_detector_path()
    card = read_card(path)
    state = load_file(str(path / "head.safetensors"))
    head = head_from_state("logreg", card.head_params, state, card.n_features)
    X = np.random.default_rng(0).normal(size=(5, card.n_features)).astype(np.float32)
    before = ((X - state["mean"].numpy()) / state["scale"].numpy()) @ state["coef"].numpy() + state["intercept"].item()
    assert np.allclose(head.decision_function(X), before)
    assert {k: v.shape for k, v in head.state().items()} == {k: v.shape for k, v in state.items()}


# ----------------------------------------------------------------- early stopping on images, not on their views
def noisy_views(n_images: int, n_views: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure-noise labels per image, and ``n_views`` near-identical augmented views of every image (its content hash
    as the group)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, d))
    X = np.repeat(images, n_views, axis=0) + 0.05 * rng.normal(size=(n_images * n_views, d))
    return X.astype(np.float32), np.repeat(rng.integers(0, 2, n_images), n_views), np.repeat(np.arange(n_images), n_views)


def test_grouped_holdout_keeps_every_image_on_one_side() -> None:
    _, y, groups = noisy_views(300, 4, 2, seed=0)
    train, held = grouped_holdout(y, groups, 0.15, seed=1)
    assert not set(groups[train]) & set(groups[held]) and len(train) + len(held) == len(y)
    assert 0.1 < len(set(groups[held])) / 300 < 0.2
    assert abs(y[held].mean() - y.mean()) < 0.1  # stratified
    assert grouped_holdout(y[:19 * 4], groups[:19 * 4], 0.15, seed=1) is None  # 19 images: nothing to hold out
    rows = grouped_holdout(y, None, 0.15, seed=1)  # no groups: rows are the units
    assert rows is not None and 0.1 < len(rows[1]) / len(y) < 0.2


@pytest.mark.parametrize("kind", ["linear", "fusion"])
def test_internal_early_stopping_split_is_grouped_by_image(kind: str) -> None:
    """Defect 4: with the views of one image on both sides, a head that memorises images scores ~1.0 on pure noise."""
    X, y, groups = noisy_views(400, 4, 64, seed=0)
    params = dict(epochs=25, batch_size=128, lr=3e-3, patience=5, hidden=128)
    params |= {"proj_dim": 64, "layer_dims": [32, 32]} if kind == "fusion" else {}
    leaky = create_head(kind, **params).fit(X, y)
    honest = create_head(kind, **params).fit(X, y, groups=groups)
    assert leaky.best_val_auc_ > 0.9  # what the row split reported
    assert honest.best_val_auc_ < 0.7  # noise, as it is


def test_the_mean_of_logistic_heads_is_one_logistic_head_over_their_columns() -> None:
    """A pair of probes as one probe: the joint head's raw logit is the mean of the heads' logits, each head reading
    its own columns; overlapping or mismatched columns are refused."""
    from synthdet.heads.logreg import LogisticHead, mean_of_heads

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12))
    y = (X[:, 0] - X[:, 9] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    cols = [np.array([0, 1, 2, 3, 4]), np.array([11, 9, 7])]
    heads = [LogisticHead(C=0.5).fit(X[:, c], y) for c in cols]
    joint = mean_of_heads(heads, cols, 12)
    expected = (heads[0].decision_function(X[:, cols[0]]) + heads[1].decision_function(X[:, cols[1]])) / 2
    assert np.allclose(joint.decision_function(X), expected, atol=1e-12)
    restored = LogisticHead().load_state(joint.state(), 12)  # what a saved detector loads
    assert np.allclose(restored.decision_function(X), expected, atol=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        mean_of_heads(heads, [cols[0], np.array([0, 9, 7])], 12)
    with pytest.raises(ValueError, match="column set has"):
        mean_of_heads(heads, [cols[0], np.array([9, 7])], 12)
