"""Layer taps: how one block's output becomes one vector per image, for layer-wise fusion.

A CNN stage gives a feature map, summarised by its spatial mean (``mean``), by mean and spread (``meanstd``), or by
both plus the channel correlations of the early stages (``texture``); a transformer block gives a token sequence,
summarised by its class token (or the token mean, for models without one). Kept apart from the networks because the
summary is part of the features' identity (``Backbone.id``), not of any one family.
"""

from __future__ import annotations

from functools import cache

import torch

from synthdet.vocabulary import TapPool

__all__ = ["TEXTURE_TAPS", "TapPool", "channel_correlations", "summarise_tap"]
#: Stages whose channel correlations ``tap_pool="texture"`` adds (EfficientNet-Lite0: 24 and 40 channels, 1/4 and 1/8
#: resolution); measured by benchmarks/generalisation.py.
TEXTURE_TAPS = (1, 2)


def channel_correlations(fmap: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C(C-1)/2]``: correlations between every pair of channels over the spatial positions,
    upper triangle (a texture statistic invariant to each channel's scale and offset)."""
    f = fmap.flatten(2)
    f = f - f.mean(dim=2, keepdim=True)
    cov = f @ f.transpose(1, 2) / f.shape[2]
    d = cov.diagonal(dim1=1, dim2=2).clamp_min(1e-8).sqrt()
    corr = cov / d[:, :, None] / d[:, None, :]
    i, j = _channel_pairs(int(fmap.shape[1]))
    return corr[:, i, j]


@cache
def _channel_pairs(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle, built once per channel count: constants (an ONNX export keeps
    them so; ``torch.triu_indices`` does not export), not rebuilt in every forward pass."""
    return (torch.as_tensor([a for a in range(c) for _ in range(a + 1, c)]),
            torch.as_tensor([b for a in range(c) for b in range(a + 1, c)]))


def summarise_tap(out: torch.Tensor | tuple, tap: int, *, tap_pool: TapPool, token_pool: str, name: str) -> torch.Tensor:
    """Block number ``tap``'s output (a module may return a tuple: its first element) as ``[B, D]`` float features;
    ``name`` (the backbone's) only words the error when a token sequence is asked for spatial statistics."""
    out = out[0] if isinstance(out, tuple) else out
    if out.ndim == 4:
        if tap_pool == "mean":
            return out.float().mean(dim=(2, 3))
        if out.shape[2] * out.shape[3] > 1:
            std, mean = torch.std_mean(out.float(), dim=(2, 3))
        else:  # a tiny image leaves one position in the last stages: no spread (not NaN)
            mean = out.float().mean(dim=(2, 3))
            std = torch.zeros_like(mean)
        parts = [mean, std]
        if tap_pool == "texture" and tap in TEXTURE_TAPS:
            parts.append(channel_correlations(out.float()))
        return torch.cat(parts, dim=1)
    if tap_pool != "mean":
        raise ValueError(f"tap_pool={tap_pool!r} needs spatial feature maps; {name} has token blocks")
    if out.ndim == 3:
        return out[:, 0].float() if token_pool == "cls" else out.float().mean(dim=1)
    return out.float()
