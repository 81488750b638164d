"""The logistic-regression head (``"logreg"``): a scikit-learn pipeline behind the heads' interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from synthdet.heads.base import BinaryHead


@dataclass(kw_only=True, repr=False, eq=False)  # repr and == stay scikit-learn's
class LogisticHead(BinaryHead):
    """Standardised features + L2 logistic regression: the strong, hard-to-overfit baseline.

    A scikit-learn :class:`~sklearn.pipeline.Pipeline` (``pipeline_``: ``StandardScaler`` → ``LogisticRegression``)
    behind the heads' interface: flat, JSON-friendly parameters for the card, and :meth:`state` / :meth:`load_state`
    as tensors. Features are standardised in float64 whatever their dtype.
    """

    kind: ClassVar[str] = "logreg"

    C: float = 0.5
    max_iter: int = 2000
    seed: int = 42

    def pipeline(self) -> Pipeline:
        """The unfitted pipeline these parameters describe."""
        return Pipeline([
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)),
        ])

    def fit(
        self, X: np.ndarray, y: np.ndarray, *, sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None,
        X_val: np.ndarray | None = None, y_val: np.ndarray | None = None,
    ) -> LogisticHead:
        """Fit the pipeline; ``groups``/``X_val``/``y_val`` (the heads' common signature) are unused: nothing
        early-stops."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        if (target := type_of_target(y, input_name="y", raise_unknown=True)) != "binary":
            raise ValueError(f"Only binary classification is supported; the target is {target}")
        self.pipeline_ = self.pipeline().fit(X, y, scale__sample_weight=sample_weight, logreg__sample_weight=sample_weight)
        self.classes_ = self.pipeline_.classes_
        self.n_iter_ = self.pipeline_.named_steps["logreg"].n_iter_
        return self

    def _apply(self, method: str, X: np.ndarray, empty_shape: tuple[int, ...]) -> np.ndarray:
        check_is_fitted(self, "pipeline_")
        X = validate_data(self, X, dtype=np.float64, reset=False, ensure_min_samples=0)
        return getattr(self.pipeline_, method)(X) if len(X) else np.empty(empty_shape)

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return self._apply("decision_function", X, (0,))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._apply("predict_proba", X, (0, 2))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self._apply("predict", X, (0,))

    def state(self) -> dict[str, torch.Tensor]:
        scaler, lr = self.pipeline_.named_steps["scale"], self.pipeline_.named_steps["logreg"]
        return {
            "mean": torch.from_numpy(scaler.mean_.copy()), "scale": torch.from_numpy(scaler.scale_.copy()),
            "coef": torch.from_numpy(lr.coef_[0].copy()), "intercept": torch.from_numpy(lr.intercept_.copy()),
        }

    def load_state(self, state: dict[str, torch.Tensor], n_features: int) -> LogisticHead:
        """Rebuild the fitted pipeline from :meth:`state`'s tensors (classes 0 = real, 1 = generated)."""
        pipe = self.pipeline()
        scaler, lr = pipe.named_steps["scale"], pipe.named_steps["logreg"]
        scaler.mean_ = state["mean"].numpy().astype(np.float64)
        scaler.scale_ = state["scale"].numpy().astype(np.float64)
        scaler.var_ = scaler.scale_**2
        lr.coef_ = state["coef"].numpy().astype(np.float64)[None, :]
        lr.intercept_ = state["intercept"].numpy().astype(np.float64).reshape(1)
        for step in (scaler, lr):
            step.n_features_in_ = n_features
        lr.classes_ = self.classes_ = np.array([0, 1])
        self.pipeline_, self.n_features_in_ = pipe, n_features
        return self


def mean_of_heads(heads: Sequence[LogisticHead], columns: Sequence[np.ndarray], n_features: int) -> LogisticHead:
    """One logistic head whose raw logit is the mean of ``heads``' logits, head ``j`` reading the columns
    ``columns[j]`` of the joint input (``n_features`` wide): each logit is linear in its standardised features, so
    their mean is a logistic head over the union (a pair of probes as one probe: :mod:`synthdet.backbones.pair`)."""
    if len(heads) != len(columns) or not heads:
        raise ValueError(f"need one column set per head, got {len(heads)} heads and {len(columns)} column sets")
    taken = np.concatenate(columns)
    if len(np.unique(taken)) != len(taken) or taken.min() < 0 or taken.max() >= n_features:
        raise ValueError(f"the heads' columns must be distinct and within 0..{n_features - 1}")
    state = {"mean": np.zeros(n_features), "scale": np.ones(n_features), "coef": np.zeros(n_features),
             "intercept": np.zeros(1)}
    for head, cols in zip(heads, columns):
        part = {k: v.numpy() for k, v in head.state().items()}
        if len(part["coef"]) != len(cols):
            raise ValueError(f"a head reads {len(part['coef'])} features, its column set has {len(cols)}")
        state["mean"][cols], state["scale"][cols] = part["mean"], part["scale"]
        state["coef"][cols] = part["coef"] / len(heads)
        state["intercept"] += part["intercept"] / len(heads)
    first = heads[0]
    joint = LogisticHead(C=first.C, max_iter=first.max_iter, seed=first.seed)
    return joint.load_state({k: torch.from_numpy(v) for k, v in state.items()}, n_features)
