"""Two backbones on one input, their features side by side: ``pair:<a>+<b>`` (``pair:effnet-lite0+effnet-lite2``).

Why: the generalisation protocol (``benchmarks/protocol.py``) found that the mean raw logit of two logistic probes,
one on EfficientNet-Lite0 and one on Lite2, beats either on every view. A logistic head's logit is linear in its
standardised features, so that mean is itself one logistic head over both backbones' features
(:func:`~synthdet.heads.logreg.mean_of_heads`). This backbone computes those features in one forward pass, so the
pair is a single probe to every scoring path (predict, serve, Ray, ONNX) and to the feature cache.

Features: pooled ``[a pooled, b pooled]``; layer taps ``[a's taps…, b's taps…]``, each member's blocks summarised as
that member alone would summarise them (``texture`` correlations on each member's own early stages).
:func:`member_columns` maps each member's own feature layout into the pair's. Both members read the same pixels: the
pair's preprocessing (by default the first member's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from synthdet.backbones.base import Backbone, create_backbone, qualified_name, weights_available
from synthdet.io.pixels import Preprocess


class PairModel(nn.Module):
    """Runs both members on the same batch; the output is their pooled features, concatenated."""

    def __init__(self, a: Backbone, b: Backbone) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a.forward_pooled(x).float(), self.b.forward_pooled(x).float()], dim=1)


class PairBackbone(Backbone):
    """A :class:`Backbone` over a :class:`PairModel`: tap ``j`` of the second member is summarised as that member's
    tap ``j`` (the texture stages are counted per member)."""

    def __init__(self, *, a: Backbone, b: Backbone, **kw: Any) -> None:
        self.n_first_taps = len(a.tap_modules)  # read by _capture, which runs in super().__init__'s measuring pass
        super().__init__(model=PairModel(a, b), tap_modules=[*a.tap_modules, *b.tap_modules], **kw)

    def _capture(self, tap: int, module: nn.Module, args: Any, out: torch.Tensor | tuple) -> None:
        local = tap if tap < self.n_first_taps else tap - self.n_first_taps
        super()._capture(local, module, args, out)

    @property
    def members(self) -> tuple[Backbone, Backbone]:
        model = self.model
        assert isinstance(model, PairModel)
        return model.a, model.b


def pair_name(a: str, b: str) -> str:
    """The name a pair of backbones ``a`` and ``b`` goes by (what :func:`build_pair` reads back)."""
    return f"pair:{a}+{b}"


def pair_backbone(a: Backbone, b: Backbone, *, preprocess: Preprocess | None = None) -> PairBackbone:
    """Two built backbones as one; both read ``preprocess`` (default: ``a``'s), and the pair summarises taps as
    ``a`` does (``tap_pool``)."""
    if a.token_pool != b.token_pool:
        raise ValueError(f"pair: {a.name} and {b.name} pool their tokens differently")
    preprocess = preprocess or a.preprocess
    a.preprocess = b.preprocess = preprocess
    pair = PairBackbone(a=a, b=b, name=pair_name(a.name, b.name), preprocess=preprocess,
                        weights_id=f"{a.weights_id}+{b.weights_id}", token_pool=a.token_pool,
                        channels_last=a.channels_last and b.channels_last)
    pair.with_tap_pool(a.tap_pool)
    return pair


def split_members(rest: str) -> tuple[str, str]:
    """``"<a>+<b>"`` → ``(a, b)``, each a backbone name; anything else is a ValueError saying the form."""
    parts = rest.split("+")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"pair:{rest}: name two backbones, e.g. pair:effnet-lite0+effnet-lite2")
    return qualified_name(parts[0]), qualified_name(parts[1])


def build_pair(name: str, rest: str, *, weights: str | Path | None, pretrained: bool,
               preprocess: Preprocess | None) -> Backbone:
    """``pair:<a>+<b>`` (a :data:`~synthdet.backbones.base.BACKBONE_PREFIXES` entry): each member loads its own
    weights (a pair has no single weights file)."""
    if weights:
        raise ValueError(f"{name}: a pair loads each member's own weights; --weights is for one backbone")
    a, b = (create_backbone(m, pretrained=pretrained, preprocess=preprocess, device="cpu") for m in split_members(rest))
    return pair_backbone(a, b, preprocess=preprocess)


def pair_weights_present(rest: str) -> bool:
    try:
        return all(weights_available(m) for m in split_members(rest))
    except ValueError:
        return False


def member_columns(embed_dims: tuple[int, int], layer_dims: tuple[list[int], list[int]], kind: str) -> list[np.ndarray]:
    """For each member, the columns of the pair's head input (``pooled`` or ``concat``) that hold that member's own
    head input, in that member's order: pooled ``[a, b]``, then (``concat``) ``a``'s taps, then ``b``'s."""
    da, db = embed_dims
    pooled = [np.arange(da), da + np.arange(db)]
    if kind != "concat":
        return pooled
    la, lb = sum(layer_dims[0]), sum(layer_dims[1])
    start = da + db
    return [np.concatenate([pooled[0], start + np.arange(la)]),
            np.concatenate([pooled[1], start + la + np.arange(lb)])]


def pair_columns(pair: PairBackbone, kind: str) -> list[np.ndarray]:
    """:func:`member_columns` of a built pair."""
    a, b = pair.members
    n = pair.n_first_taps
    return member_columns((a.embed_dim, b.embed_dim), (pair.layer_dims[:n], pair.layer_dims[n:]), kind)
