"""Torch heads on cached features: :class:`TorchProbe` and its MLPs (``"linear"``, ``"residual"``, ``"deep"``).

Recipes follow Junaid et al., MediaEval 2026 (``seeds/000``): AdamW + cosine schedule, label-smoothed BCE (0.05),
batch 512, early stopping on validation ROC AUC, fixed seed. Those optimisation settings are :class:`TorchProbe`'s
fields, declared once: a subclass adds only its own (:class:`~synthdet.heads.fusion.LayerFusionHead`).
:func:`train_bce_epoch` is the epoch loop these heads share with backbone fine-tuning (one logit, label-smoothed BCE).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from synthdet.heads.base import BinaryHead


def smoothed_bce(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """BCE against targets pulled towards 0.5 by ``label_smoothing`` (overconfident heads calibrate worse)."""
    return nn.functional.binary_cross_entropy_with_logits(logits, y * (1 - label_smoothing) + 0.5 * label_smoothing)


def train_bce_epoch(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    *,
    label_smoothing: float,
    grad_clip: float | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> float:
    """One epoch of label-smoothed BCE over ``(inputs, 0/1 targets)`` batches of a one-logit ``net``; the mean loss.

    Heads on cached features (:meth:`TorchProbe.fit`) and backbones fine-tuned from images
    (:mod:`synthdet.training.finetune`) both run it, so their loss, clipping and schedule stepping cannot drift apart.
    Localizers, which predict masks, train with a loop of their own.
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


@dataclass(kw_only=True, repr=False, eq=False)  # repr and == stay scikit-learn's
class TorchProbe(BinaryHead):
    """Base class: a network on features, trained with AdamW, a cosine schedule and early stopping on val ROC AUC.

    Its fields are the optimisation settings every torch head shares; ``hidden``/``dropout`` of None mean the
    subclass's ``default_hidden``/``default_dropout``.
    """

    kind: ClassVar[str] = ""
    _builder: ClassVar[Any] = None
    default_hidden: ClassVar[int] = 256
    default_dropout: ClassVar[float] = 0.1

    hidden: int | None = None
    dropout: float | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 60
    batch_size: int = 512
    label_smoothing: float = 0.05
    patience: int = 10
    val_fraction: float = 0.15  # share of the images held out to early-stop on when fit() gets no X_val
    seed: int = 42
    device: str | None = None

    def _width(self) -> tuple[int, float]:
        """``(hidden, dropout)``, the recipe's defaults for this probe where the parameters are None."""
        return (self.default_hidden if self.hidden is None else self.hidden,
                self.default_dropout if self.dropout is None else self.dropout)

    def _make(self, d: int) -> nn.Module:
        return type(self)._builder(d, *self._width())

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
            loss = train_bce_epoch(net, batches, opt, sched, label_smoothing=self.label_smoothing)
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
