"""Layer-wise fusion head: which blocks of a backbone carry the evidence, learned and inspectable.

The final embedding of a vision transformer is tuned for semantics; traces of generation often survive better in
intermediate blocks (Koutlis & Papadopoulos, ECCV 2024, "RINE"; Lean, MediaEval 2026, ``seeds/001``). The head
projects every block's vector to a shared space, mixes them with learned softmax weights ``α_l`` and classifies the
mixture with a small MLP:

    z(x) = Σ_l α_l · W_l(LayerNorm(h_l(x))),   logit = MLP(z(x))

The α_l say which blocks matter (:attr:`LayerFusionHead.alphas_`, :meth:`LayerFusionHead.plot_alphas`).

Input is 2-D like every head: the layer vectors concatenated, split by ``layer_dims`` — exactly what a detector with
``features="concat"`` assembles (pooled first, then one vector per block), so the pooled embedding can take part as
one more "layer". Training, early stopping and serialisation are :class:`~synthdet.heads.mlp.TorchProbe`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from synthdet.heads.mlp import TorchProbe


class LayerFusion(nn.Module):
    """Per-layer LayerNorm + projection, softmax-weighted sum, GELU MLP to one logit.

    ``shared_projection`` uses one LayerNorm + projection per input width (Lean's single ``W_p`` for all transformer
    blocks) instead of one per layer: fewer parameters for 24 blocks of ViT-L, same behaviour otherwise.
    """

    def __init__(
        self, layer_dims: Sequence[int], proj_dim: int, hidden: int, dropout: float, shared_projection: bool = False
    ) -> None:
        super().__init__()
        self.layer_dims = [int(d) for d in layer_dims]
        keys = [str(d) if shared_projection else str(i) for i, d in enumerate(self.layer_dims)]
        self.proj_keys = keys
        self.proj = nn.ModuleDict(
            {k: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, proj_dim)) for k, d in zip(keys, self.layer_dims)}
        )
        self.block_logits = nn.Parameter(torch.zeros(len(self.layer_dims)))  # uniform α at the start
        self.mlp = nn.Sequential(nn.Linear(proj_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    @property
    def alphas(self) -> torch.Tensor:
        return self.block_logits.softmax(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(self.layer_dims, dim=1)
        z = torch.stack([self.proj[k](h) for k, h in zip(self.proj_keys, parts)], dim=1)  # [B, L, proj_dim]
        return self.mlp((self.alphas[None, :, None] * z).sum(1))


@dataclass(kw_only=True, repr=False, eq=False)  # repr and == stay scikit-learn's
class LayerFusionHead(TorchProbe):
    """RINE / Lean 2026 layer-wise fusion as a scikit-learn estimator (``create_head("fusion", layer_dims=[...])``):
    :class:`~synthdet.heads.mlp.TorchProbe`'s optimisation fields, and these.

    ``layer_dims`` splits the columns of ``X`` into layers (``None``: one layer, i.e. a projected MLP probe).
    ``alpha_lr`` is the block weights' own learning rate, without weight decay: Adam moves a parameter by about
    ``lr`` per step, so at the probes' ``lr`` the α would stay near uniform for a few hundred steps and say nothing.
    """

    kind = "fusion"

    layer_dims: Sequence[int] | None = None
    proj_dim: int = 256
    shared_projection: bool = False
    alpha_lr: float = 0.05

    def _make(self, d: int) -> nn.Module:
        dims = [d] if self.layer_dims is None else [int(x) for x in self.layer_dims]
        if sum(dims) != d:
            raise ValueError(f"layer_dims {dims} sum to {sum(dims)}, but X has {d} features")
        return LayerFusion(dims, self.proj_dim, *self._width(), self.shared_projection)

    def param_groups(self, net: nn.Module) -> list[dict[str, Any]]:
        rest = [p for name, p in net.named_parameters() if name != "block_logits"]
        return [{"params": rest}, {"params": [net.block_logits], "lr": self.alpha_lr, "weight_decay": 0.0}]

    @property
    def alphas_(self) -> np.ndarray:
        """Learned block weights (softmax, sum to 1), in the order of ``layer_dims``."""
        logits = cast(LayerFusion, self.net_).block_logits.detach().cpu().double()
        return logits.softmax(0).numpy()  # in float64, so the weights sum to 1 to machine precision

    def plot_alphas(self, path: str | Path, *, labels: Sequence[str] | None = None, title: str = "") -> Path:
        """Bar chart of α per layer as a PNG: the at-a-glance answer to "which blocks matter"."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        alphas = self.alphas_
        labels = list(labels) if labels is not None else [str(i) for i in range(len(alphas))]
        if len(labels) != len(alphas):
            raise ValueError(f"{len(labels)} labels for {len(alphas)} layers")
        fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(alphas) + 2), 3.2))
        try:
            ax.bar(range(len(alphas)), alphas, color="tab:blue")
            ax.axhline(1 / len(alphas), color="grey", linestyle="--", linewidth=1, label="uniform")
            ax.set_xticks(range(len(alphas)), labels, rotation=90 if len(alphas) > 12 else 0)
            ax.set_xlabel("layer")
            ax.set_ylabel("α (softmax weight)")
            ax.set_title(title or "layer-wise fusion: block weights")
            ax.legend(frameon=False)
            fig.tight_layout()
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format="png", dpi=120)
        finally:
            plt.close(fig)
        return path

