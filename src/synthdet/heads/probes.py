"""Small heads trained on cached features, as scikit-learn estimators.

Every parameter is an explicit keyword (``get_params``/``set_params``/``clone`` work), ``fit(X, y)`` and
``predict_proba(X)`` behave as in scikit-learn, so cross-validation, threshold tuning and ensembles compose with them.
Recipes follow Junaid et al., MediaEval 2026 (``seeds/000``): AdamW + cosine schedule, label-smoothed BCE (0.05),
batch 512, early stopping on validation ROC AUC, fixed seed.

Heads also round-trip through plain tensors (:meth:`state` / :func:`head_from_state`) so a detector is saved as
safetensors + JSON, never pickle. :data:`HEADS` names them; the layer-wise fusion head registers lazily
(:mod:`synthdet.heads.fusion` subclasses :class:`TorchProbe`, so it imports this module, never the reverse).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from synthdet.registry import Registry


def smoothed_bce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """BCE against targets pulled towards 0.5 by ``label_smoothing`` (overconfident heads calibrate worse)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, y * (1 - label_smoothing) + 0.5 * label_smoothing)


def train_epoch(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    label_smoothing: float,
    grad_clip: float | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """One pass over ``(inputs, 0/1 targets)`` batches; returns the mean loss.

    The one optimisation loop of synthdet: heads on cached features and backbone fine-tuning from images both run
    it, so loss, clipping and schedule stepping cannot drift apart.
    """
    total, n = 0.0, 0
    for x, y in batches:
        with autocast():
            logits = net(x).squeeze(1)
        loss = smoothed_bce(logits.float(), y, label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(y)
        n += len(y)
    return total / max(n, 1)


class _Residual(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def _net_linear(d: int, hidden: int, dropout: float) -> nn.Module:
    """LayerNorm + 2-layer MLP (the seed's "linear probe")."""
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))


def _net_residual(d: int, hidden: int, dropout: float) -> nn.Module:
    """Projection, one residual MLP block (skip connection), then the logit."""
    return nn.Sequential(
        nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(),
        _Residual(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout))),
        nn.Linear(hidden, 1),
    )


def _net_deep(d: int, hidden: int, dropout: float) -> nn.Module:
    """3-layer GELU/dropout MLP with residual connections (the seed's open-run probe)."""
    block = lambda: _Residual(nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)))  # noqa: E731
    return nn.Sequential(
        nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), block(), block(), nn.Linear(hidden, 1)
    )


def grouped_holdout(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Row indices ``(train, held out)``: about ``fraction`` of the groups, stratified by label, every group whole.

    Groups are images (content hashes): augmented views of one image on both sides would let a head that memorises
    images look good on the held-out rows. ``groups=None`` treats every row as its own image. None when there is too
    little to hold out (fewer than 20 groups, or a class with fewer groups than folds).
    """
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    if len(groups) != len(y):
        raise ValueError(f"groups has {len(groups)} entries for {len(y)} rows")
    if not 0 < fraction < 1:
        return None
    n_splits = max(2, round(1 / fraction))
    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    if len(per_class) != 2 or sum(per_class) < 20 or min(per_class) < n_splits:
        return None
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return next(folds.split(np.zeros(len(y)), y, groups))


class BinaryHead(ClassifierMixin, BaseEstimator):
    """Base of every head: a binary classifier (the second class is "generated"), as scikit-learn's checks see it."""

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # one logit: state() and the card hold one output
        return tags


class TorchProbe(BinaryHead):
    """Base class: an MLP on features, trained full-batch-free with AdamW and early stopping on val ROC AUC."""

    kind: ClassVar[str] = ""
    _builder: ClassVar[Any] = None
    default_hidden: ClassVar[int] = 256
    default_dropout: ClassVar[float] = 0.1

    def __init__(
        self,
        *,
        hidden: int | None = None,
        dropout: float | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 60,
        batch_size: int = 512,
        label_smoothing: float = 0.05,
        patience: int = 10,
        val_fraction: float = 0.15,
        seed: int = 42,
        device: str | None = None,
    ) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.label_smoothing = label_smoothing
        self.patience = patience
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device

    def _make(self, d: int) -> nn.Module:
        """``hidden``/``dropout`` of None mean the recipe's defaults for this probe."""
        hidden = self.default_hidden if self.hidden is None else self.hidden
        dropout = self.default_dropout if self.dropout is None else self.dropout
        return type(self)._builder(d, hidden, dropout)

    def param_groups(self, net: nn.Module) -> list[dict[str, Any]]:
        """AdamW parameter groups; groups without an ``lr`` use the optimiser's (subclasses give some their own)."""
        return [{"params": list(net.parameters())}]

    def init_net(self, n_features: int) -> nn.Module:
        """A fresh network as ``net_``, for callers that train it themselves (fine-tuning) or load tensors into it."""
        self.net_ = self._make(n_features)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = n_features
        return self.net_

    def _device(self) -> torch.device:
        return torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def fit(
        self, X: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None, X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> TorchProbe:
        """Fit on ``(X, y)``; early-stop on ``(X_val, y_val)``, or else on ``val_fraction`` of the images of ``X``.

        ``groups`` (one content hash per row) keeps every view of an image on one side of that internal split.
        Without it each row counts as its own image: when rows are augmented views, the internal validation AUC (and
        so the epoch early stopping keeps) rewards memorising images — pure-noise labels reach 0.98.
        """
        X, y = validate_data(self, X, y, dtype=np.float32)
        y = self._encode(y)
        if X_val is not None:
            X_val, y_val = validate_data(self, X_val, y_val, dtype=np.float32, reset=False)
            y_val = (y_val == self.classes_[1]).astype(np.float32)
        if X_val is None and (held := grouped_holdout(y, groups, self.val_fraction, self.seed)) is not None:
            X, X_val, y, y_val = X[held[0]], X[held[1]], y[held[0]], y[held[1]]
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        dev = self._device()
        net = self._make(X.shape[1]).to(dev)
        opt = torch.optim.AdamW(self.param_groups(net), lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = max(1, int(np.ceil(len(X) / self.batch_size)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs * steps_per_epoch)
        Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
        best, best_state, bad, self.history_ = -np.inf, None, 0, []
        for epoch in range(self.epochs):
            net.train()
            order = torch.from_numpy(rng.permutation(len(X))).to(dev)
            batches = ((Xt[idx], yt[idx]) for idx in order.split(self.batch_size))
            loss = train_epoch(net, batches, opt, sched, label_smoothing=self.label_smoothing)
            record = {"epoch": epoch, "loss": loss}
            if X_val is not None and y_val is not None and len(np.unique(y_val)) == 2:
                self.net_ = net
                score = roc_auc_score(y_val, self.predict_proba(X_val)[:, 1])
                record["val_auc"] = score
                if score > best + 1e-5:
                    best, best_state, bad = score, copy.deepcopy(net.state_dict()), 0
                else:
                    bad += 1
            self.history_.append(record)
            if X_val is not None and bad >= self.patience:
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.best_val_auc_ = None if best == -np.inf else float(best)
        return self

    def _encode(self, y: np.ndarray) -> np.ndarray:
        """Set ``classes_`` from binary labels and return them as 0/1 targets (the second class is "generated")."""
        check_classification_targets(y)
        self.classes_, y01 = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise ValueError(f"Only binary classification is supported: needs two classes, got {len(self.classes_)} class(es)")
        return y01.astype(np.float32)

    @torch.no_grad()
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "net_")
        X = validate_data(self, X, dtype=np.float32, reset=False, ensure_min_samples=0)
        net = self.net_.eval()
        dev = next(net.parameters()).device
        out = [net(torch.from_numpy(X[i : i + 8192]).to(dev)).squeeze(1).cpu() for i in range(0, len(X), 8192)]
        return torch.cat(out).numpy() if out else np.empty(0, dtype=np.float32)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X).astype(np.float64)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        generated = self.predict_proba(X)[:, 1] >= 0.5
        return self.classes_[generated.astype(int)]

    def n_parameters(self, d: int) -> int:
        return sum(p.numel() for p in self._make(d).parameters())

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.net_.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor], n_features: int) -> TorchProbe:
        self.init_net(n_features).load_state_dict(state)
        self.net_.eval()
        return self


class LinearProbe(TorchProbe):
    """LayerNorm + 2-layer MLP (Junaid et al. 2026, constrained run)."""

    kind = "linear"
    _builder = staticmethod(_net_linear)


class ResidualProbe(TorchProbe):
    """Residual probe with a skip connection (Junaid et al. 2026, the constrained-run submission)."""

    kind = "residual"
    _builder = staticmethod(_net_residual)
    default_hidden = 512



class DeepProbe(TorchProbe):
    """3-layer GELU/dropout residual MLP (Junaid et al. 2026, open runs)."""

    kind = "deep"
    _builder = staticmethod(_net_deep)
    default_hidden = 320  # 455K parameters at d=768 (the seed reports 461K)
    default_dropout = 0.3



class LogisticHead(BinaryHead):
    """Standardised features + L2 logistic regression: the strong, hard-to-overfit baseline.

    A scikit-learn :class:`~sklearn.pipeline.Pipeline` (``pipeline_``: ``StandardScaler`` → ``LogisticRegression``)
    behind the heads' interface: flat, JSON-friendly parameters for the card, and :meth:`state` / :meth:`load_state`
    as tensors. Features are standardised in float64 whatever their dtype.
    """

    kind: ClassVar[str] = "logreg"

    def __init__(self, *, C: float = 0.5, max_iter: int = 2000, seed: int = 42) -> None:
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

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


HEADS: Registry[type[BaseEstimator]] = Registry("head")
"""Head classes by kind: ``HEADS.get(kind)(**params)`` is an unfitted estimator."""
for _cls in (LinearProbe, ResidualProbe, DeepProbe, LogisticHead):
    HEADS.add(_cls.kind, _cls)
HEADS.add("fusion", "synthdet.heads.fusion:LayerFusionHead")


def make_head(kind: str, **params: Any) -> BaseEstimator:
    return HEADS.get(kind)(**params)


def head_from_state(kind: str, params: dict[str, Any], state: dict[str, torch.Tensor], n_features: int) -> BaseEstimator:
    return make_head(kind, **params).load_state(state, n_features)
