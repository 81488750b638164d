"""What every head is, and the one way to make one: :func:`create_head` by kind, :func:`head_from_state` from a card.

A head is a scikit-learn binary classifier on cached features whose parameters are its dataclass fields: explicit
``__init__`` keywords, so ``get_params``/``set_params``/``clone`` work and a card's ``head_params`` are exactly
``get_params()``. Its fitted state round-trips through plain tensors (``state()`` / ``load_state(state, n_features)``),
so a detector is saved as safetensors + JSON, never pickle.

:data:`HEADS` names every head by import path: the modules that define heads import this one, never the reverse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags

from synthdet.registry import Registry


class BinaryHead(ClassifierMixin, BaseEstimator):
    """Base of every head: a binary classifier (the second class is "generated"), as scikit-learn's checks see it."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # one logit: state() and the card hold one output
        return tags


HEADS: Registry[type[BaseEstimator]] = Registry("head")
"""Head classes by kind (a card's ``head``); make one with :func:`create_head`."""
HEADS.add("linear", "synthdet.heads.mlp:LinearProbe")
HEADS.add("residual", "synthdet.heads.mlp:ResidualProbe")
HEADS.add("deep", "synthdet.heads.mlp:DeepProbe")
HEADS.add("logreg", "synthdet.heads.logreg:LogisticHead")
HEADS.add("fusion", "synthdet.heads.fusion:LayerFusionHead")


def create_head(kind: str, **params: Any) -> BaseEstimator:
    """An unfitted head of ``kind`` with ``params`` (an unknown kind raises, listing the known ones)."""
    return HEADS.get(kind)(**params)


def head_from_state(kind: str, params: dict[str, Any], state: dict[str, torch.Tensor], n_features: int) -> BaseEstimator:
    """The fitted head a card describes (``head``, ``head_params``, ``n_features``), from its saved tensors."""
    return create_head(kind, **params).load_state(state, n_features)


def head_logit(head: BaseEstimator, X: np.ndarray) -> np.ndarray:
    """The head's raw logit of "generated" (float64), its ``decision_function`` (every head in :data:`HEADS` has
    one). Calibration and ranking read this, not the probability, which rounds to 1.0 for confident fakes and makes
    them all tie."""
    return np.asarray(head.decision_function(X), dtype=np.float64).reshape(-1)
