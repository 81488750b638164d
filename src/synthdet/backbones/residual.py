"""Noise-residual statistics at the image's own scale: the ``residual`` backbone (fixed filters, no weights).

Why: a camera leaves sensor noise and demosaicing correlations at the pixel scale; a generator's decoder leaves
smoother or periodically upsampled textures (Fridrich & Kodovský's rich models, 2012; Durall et al. 2020 on
up-convolution spectra). These traces live in single pixels, so they are read from a window cut at the image's own
scale (``Preprocess(mode="window")``: never resampled), unlike the CNN backbones' downscaled whole.

Features (``pooled``, :data:`N_FEATURES`): six fixed high-pass residuals of the luma (first and second differences
across and down, SRM's 3×3 KB and 5×5 KV kernels); per residual the log spread, log mean absolute value, log
kurtosis, the share of near-zero values (flat or quantised areas) and the normalised autocorrelation at lags 1, 2,
3, 4 and 8 across and down (periodic upsampling peaks, Wiener–Khinchin: the spectrum's information without an FFT,
so the graph exports to ONNX); and the correlations of the first-difference residual between colour channels
(demosaicing couples them). No taps.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from synthdet.backbones.base import BACKBONES, Backbone
from synthdet.io.pixels import Preprocess

_VERSION = 1  # bump when a filter or statistic changes: it is the weights id, so cached features are not reused
LAGS = (1, 2, 3, 4, 8)
_LUMA = (0.299, 0.587, 0.114)
WINDOW = 256  # px: the default window, at the image's own scale


def _kernels() -> torch.Tensor:
    """The six residual kernels, each zero-sum, as a ``[6, 1, 5, 5]`` weight (smaller ones centred)."""
    small = [
        [[0, 0, 0], [0, -1, 1], [0, 0, 0]],  # first difference, across
        [[0, 0, 0], [0, -1, 0], [0, 1, 0]],  # first difference, down
        [[0, 0, 0], [1, -2, 1], [0, 0, 0]],  # second difference, across
        [[0, 1, 0], [0, -2, 0], [0, 1, 0]],  # second difference, down
        [[-1, 2, -1], [2, -4, 2], [-1, 2, -1]],  # SRM KB / 4
    ]
    out = torch.zeros(6, 1, 5, 5)
    for k, m in enumerate(small):
        out[k, 0, 1:4, 1:4] = torch.tensor(m, dtype=torch.float32) / (4 if k == 4 else 1)
    out[5, 0] = torch.tensor([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
                              [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12  # SRM KV
    return out


N_FEATURES = 6 * (4 + 2 * len(LAGS)) + 3


class ResidualStats(nn.Module):
    """Normalised RGB ``[B, 3, H, W]`` (H, W ≥ 13) → residual statistics ``[B, N_FEATURES]``; ``mean``/``std``
    undo the preprocessing's normalisation, so the residuals are in 8-bit grey levels."""

    mean: torch.Tensor  # buffers, declared so that type checkers see tensors
    std: torch.Tensor
    luma: torch.Tensor
    kernels: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("kernels", _kernels(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = (x.float() * self.std + self.mean) * 255.0
        grey = (rgb * self.luma).sum(1, keepdim=True)
        r = F.conv2d(grey, self.kernels)  # [B, 6, H-4, W-4], valid: no padding edge
        centred = r - r.mean(dim=(2, 3), keepdim=True)
        var = centred.pow(2).mean(dim=(2, 3)) + 1e-6
        parts = [0.5 * torch.log(var), torch.log(r.abs().mean(dim=(2, 3)) + 1e-3),
                 torch.log(centred.pow(4).mean(dim=(2, 3)) / var.pow(2) + 1e-3),
                 (r.abs() < 0.5).float().mean(dim=(2, 3))]
        for lag in LAGS:
            parts.append((centred[..., lag:] * centred[..., :-lag]).mean(dim=(2, 3)) / var)
            parts.append((centred[..., lag:, :] * centred[..., :-lag, :]).mean(dim=(2, 3)) / var)
        chroma = rgb[..., 1:] - rgb[..., :-1]  # first difference across, per colour channel
        chroma = chroma - chroma.mean(dim=(2, 3), keepdim=True)
        norm = chroma.pow(2).mean(dim=(2, 3)).clamp_min(1e-6).sqrt()
        pairs = [(0, 1), (1, 2), (0, 2)]
        corr = [(chroma[:, i] * chroma[:, j]).mean(dim=(1, 2)) / (norm[:, i] * norm[:, j]) for i, j in pairs]
        return torch.cat([*parts, torch.stack(corr, dim=1)], dim=1)


class ResidualBackbone(Backbone):
    """:class:`ResidualStats` as a backbone: pooled features only, at least 13 px a side."""

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 13:  # the 5x5 residual and the lag-8 autocorrelation need room
            x = F.pad(x, (0, max(0, 13 - x.shape[-1]), 0, max(0, 13 - x.shape[-2])), mode="replicate")
        return self.model(x)


@BACKBONES.register(
    "residual",
    description=f"noise-residual statistics of a {WINDOW}px window at the image's own scale (fixed filters)",
    weights_hint="none: fixed filters", weights_present=lambda: True,
    features=f"pooled {N_FEATURES}; no taps", preprocess=Preprocess(size=WINDOW, mode="window"),
)
def residual(*, weights: str | Path | None = None, pretrained: bool = True,
             preprocess: Preprocess | None = None) -> Backbone:
    """The ``residual`` backbone; ``weights``/``pretrained`` are accepted for the common signature (nothing to
    load)."""
    if weights:
        raise ValueError("residual: fixed filters, no weights to load")
    preprocess = preprocess or Preprocess(size=WINDOW, mode="window")
    return ResidualBackbone(name="residual", model=ResidualStats(preprocess.mean, preprocess.std), tap_modules=[],
                            preprocess=preprocess, weights_id=f"fixed{_VERSION}")
