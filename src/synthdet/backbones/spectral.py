"""Dual-stream backbones: an RGB network plus a frequency branch, their features concatenated.

Junaid et al. 2026 (``seeds/000``, §3) tested ConvNeXt-Tiny + a DCT/FFT stream, motivated by Dzanic et al.
(NeurIPS 2020: generated images' Fourier spectra deviate from real ones at high frequencies); it scored below
ConvNeXt alone (val AUC 0.9825 vs 0.9906). This module makes that comparison a one-word change of backbone name:

- ``dualstream:<model>``: log-magnitude FFT of the greyscale image (centred, standardised per image), ``[B,1,H,W]``;
- ``dualstream-dct:<model>``: orthonormal 8×8 block DCT-II of the greyscale image, coefficient k of every block in
  channel k (``[B,64,H/8,W/8]``, sign-preserving log scale): JPEG's own basis, so quantisation traces line up with
  channels.

``<model>`` is a timm model (``convnext_tiny``), ``timm:<model>`` or a registered name (``effnet-lite0``). The
frequency map goes through a small CNN (stride-2 conv/BN/ReLU stages, 128 channels out), initialised from a fixed
seed so the base backbone, its feature-cache identity and a fine-tuned detector's base are reproducible; it is
untrained, so fine-tune it (``synthdet finetune``), or treat its features as random projections.

Like every :class:`~synthdet.backbones.base.Backbone`, it gives pooled features ``[RGB pooled, frequency pooled]`` and
layer taps: the frequency branch output first, then the RGB taps. That order makes "fine-tune the last N blocks"
count RGB blocks from the end, and the frequency branch (upstream of no RGB block) is always trained with them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from synthdet.backbones.base import Backbone, create_backbone, qualified_name
from synthdet.io.pixels import Preprocess

FreqKind = Literal["fft", "dct"]
FREQ_DIM = 128
_INIT_SEED = 0
_VERSION = 1  # bump when the branch's architecture or initialisation changes: it is part of the weights id
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as JPEG


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def dct_basis(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (``D @ block @ D.T`` transforms a block, as JPEG does)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.float()


class FrequencyBranch(nn.Module):
    """Normalised RGB batch → greyscale → frequency map → small CNN → ``[B, 128, h, w]`` feature map.

    The transform runs in float32 outside autocast (cuFFT has no bfloat16); ``mean``/``std`` undo the model's
    normalisation so the spectrum is that of the image, not of its per-channel rescaling.
    """

    mean: torch.Tensor  # buffers, declared so that type checkers see tensors, not ``Tensor | Module``
    std: torch.Tensor
    luma: torch.Tensor
    basis: torch.Tensor

    def __init__(self, kind: FreqKind, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luma", torch.tensor(_LUMA).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("basis", dct_basis(8), persistent=False)
        if kind == "fft":
            stages = [_stage(1, 16, 2), _stage(16, 32, 2), _stage(32, 64, 2), _stage(64, FREQ_DIM, 2)]
        else:  # the DCT map is already 8x smaller
            stages = [_stage(64, 64, 1), _stage(64, FREQ_DIM, 2)]
        self.net = nn.Sequential(*stages)

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            grey = ((x.float() * self.std + self.mean) * self.luma).sum(1, keepdim=True)  # [B,1,H,W], 0..1
            if self.kind == "fft":
                mag = torch.fft.fftshift(torch.fft.fft2(grey, norm="ortho"), dim=(-2, -1)).abs()
                s = torch.log1p(mag)
                return (s - s.mean((2, 3), keepdim=True)) / (s.std((2, 3), keepdim=True) + 1e-6)
            h, w = grey.shape[-2] // 8 * 8, grey.shape[-1] // 8 * 8
            blocks = grey[:, 0, :h, :w].unfold(1, 8, 8).unfold(2, 8, 8)  # [B, H/8, W/8, 8, 8]
            coef = (self.basis @ blocks @ self.basis.T).flatten(-2).permute(0, 3, 1, 2)  # [B, 64, H/8, W/8]
            return torch.sign(coef) * torch.log1p(coef.abs() * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.spectrum(x))


class DualStream(nn.Module):
    """The wrapped RGB backbone and the frequency branch; forward gives the concatenated pooled features."""

    def __init__(self, rgb: Backbone, freq: FrequencyBranch) -> None:
        super().__init__()
        self.rgb = rgb
        self.freq = freq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freq = self.freq(x).float().mean(dim=(2, 3))  # first: layer taps are collected in execution order
        return torch.cat([self.rgb(x)[0], freq], dim=1)


def build_dualstream(
    name: str, rest: str, *, kind: FreqKind, weights: str | Path | None, pretrained: bool,
    preprocess: Preprocess | None,
) -> Backbone:
    """``name`` around the RGB backbone ``rest``; ``weights``/``pretrained``/``preprocess`` are the RGB one's."""
    if not rest:
        raise ValueError(f"{name!r}: name the RGB model, e.g. {name.split(':')[0]}:convnext_tiny")
    rgb = create_backbone(qualified_name(rest), weights=weights, pretrained=pretrained, preprocess=preprocess, device="cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_INIT_SEED)
        freq = FrequencyBranch(kind, rgb.preprocess.mean, rgb.preprocess.std)
    model = DualStream(rgb, freq)
    return Backbone(
        name=name, model=model, tap_modules=[freq, *rgb.tap_modules], preprocess=rgb.preprocess,
        weights_id=f"{rgb.weights_id}+{kind}{_VERSION}", token_pool=rgb.token_pool,
    )


def build_fft(name: str, rest: str, **kw: Any) -> Backbone:
    """``dualstream:<model>`` (a :data:`~synthdet.backbones.base.BACKBONE_PREFIXES` entry)."""
    return build_dualstream(name, rest, kind="fft", **kw)


def build_dct(name: str, rest: str, **kw: Any) -> Backbone:
    """``dualstream-dct:<model>`` (a :data:`~synthdet.backbones.base.BACKBONE_PREFIXES` entry)."""
    return build_dualstream(name, rest, kind="dct", **kw)
