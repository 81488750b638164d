"""TAEF2, a tiny latent autoencoder (FLUX.2 latent space, madebyollin/taesd, MIT licence; weights shipped in
``pretrained/taef2/`` with their licence).

An encode/decode round trip keeps the content and replaces fine detail with what the decoder invents: the trace that
latent-diffusion decoders leave. :mod:`synthdet.localization.manipulate` uses it for inpainting-like and regenerated
manipulations with exact masks. This is *one* decoder's trace, not that of any particular generator.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

#: Latent downsampling factor: image sides must be multiples of it.
SCALE = 8


def _conv(a: int, b: int, **kw: object) -> nn.Conv2d:
    return nn.Conv2d(a, b, 3, padding=1, **kw)  # type: ignore[arg-type]


class _Block(nn.Module):
    """Three 3×3 convolutions with an identity skip; optionally a residual 1×1 "global" branch first."""

    def __init__(self, n: int = 64, global_branch: bool = False) -> None:
        super().__init__()
        self.pool = (
            nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                          nn.Conv2d(4 * n, n, 1, bias=False))
            if global_branch else None
        )
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + x)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def encoder() -> nn.Sequential:
    down = {"bias": False, "stride": 2}
    return nn.Sequential(
        _conv(3, 64), _Block(), _conv(64, 64, **down), _Block(), _Block(), _Block(), _conv(64, 64, **down),
        _Block(), _Block(), _Block(), _conv(64, 64, **down), _Block(64, True), _Block(64, True), _Block(64, True),
        _conv(64, 32),
    )


def decoder() -> nn.Sequential:
    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]

    return nn.Sequential(
        _Clamp(), _conv(32, 64), nn.ReLU(), _Block(64, True), _Block(64, True), _Block(64, True),
        *up(), _Block(), _Block(), _Block(), *up(), _Block(), _Block(), _Block(), *up(), _Block(), _conv(64, 3),
    )


def _weights(part: str) -> Path:
    return Path(str(resources.files("synthdet") / "pretrained" / "taef2" / f"taef2_{part}.safetensors"))


@lru_cache(maxsize=2)
def load(device: str = "cpu") -> tuple[nn.Sequential, nn.Sequential]:
    """``(encoder, decoder)`` with the shipped weights, in eval mode (``strict``: a wrong layout fails loudly)."""
    from safetensors.torch import load_file

    enc, dec = encoder(), decoder()
    enc.load_state_dict(load_file(str(_weights("encoder"))), strict=True)
    dec.load_state_dict(load_file(str(_weights("decoder"))), strict=True)
    return enc.eval().to(device), dec.eval().to(device)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1]; H and W must be multiples of :data:`SCALE`."""
    w, h = img.size
    if w % SCALE or h % SCALE:
        raise ValueError(f"image sides must be multiples of {SCALE}, got {w}x{h}")
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None]


def to_image(x: torch.Tensor) -> Image.Image:
    arr = (x[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


@torch.inference_mode()
def encode(img: Image.Image) -> torch.Tensor:
    """Latent (1, 32, H/8, W/8)."""
    return load()[0](to_tensor(img))


@torch.inference_mode()
def decode(latent: torch.Tensor) -> Image.Image:
    return to_image(load()[1](latent))


def roundtrip(img: Image.Image) -> Image.Image:
    """Encode then decode: same content, the decoder's fine detail."""
    return decode(encode(img))
