"""Pixels → model input, identically for real and generated images.

The development data has format and size traps (real photos are 4:3 JPEGs, generated images square PNG/WebP), and
images in the wild arrive re-compressed. So every image, whatever its origin, goes through the same chain:

    decode (optionally draft) → square crop → resize to the model size → JPEG re-encode → tensor → normalise

View 0 is the canonical, deterministic chain used at inference. Views 1..n are training augmentations of the same
chain (random square crop, flip, down-up resize, JPEG quality drawn from a range), seeded by the image's content
hash and the view index, so cached features are reproducible and a view is computed once.

A :class:`Preprocess` is part of a backbone's identity: its :meth:`Preprocess.id` keys the feature cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

Resample = Literal["bilinear", "bicubic", "lanczos"]
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class ViewPolicy(BaseModel):
    """How training views 1..n differ from the canonical view 0."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crop_scale: tuple[float, float] = (0.4, 1.0)  # side of the square crop, as a fraction of the short side
    downscale: tuple[float, float] = (0.35, 1.0)  # down-up resize factor, applied with probability p_downscale
    p_downscale: float = 0.3
    jpeg_quality: tuple[int, int] = (60, 95)
    p_flip: float = 0.5
    p_grayscale: float = 0.05


class Preprocess(BaseModel):
    """The canonical chain; every field changes the pixels the model sees, so every field is in :meth:`id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = 224
    mode: Literal["crop", "letterbox"] = "crop"  # crop: short side → size, centre crop; letterbox: long side, zero-pad
    resample: Resample = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    jpeg_quality: int | None = Field(90, ge=1, le=100)  # canonical re-encode (None: off)
    views: ViewPolicy = ViewPolicy()

    def id(self) -> str:
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def draft_size(self) -> int:
        """Short side a JPEG must keep when draft-decoded for training views: the smallest crop, with 2x margin."""
        return int(2 * self.size / self.views.crop_scale[0])

    @property
    def canonical_draft_size(self) -> int:
        """Short side to keep for view 0 (inference): twice the model size, so the final resize still antialiases."""
        return 2 * self.size

    def render(self, img: Image.Image, *, view: int = 0, key: str = "") -> Image.Image:
        """Apply the chain (canonical for ``view == 0``) and return the RGB image the model sees, before tensors."""
        rng = random.Random(f"{key}:{view}") if view else None
        if self.mode == "letterbox":
            out = _letterbox(img, self.size, _RESAMPLE[self.resample])
        else:
            w, h = img.size
            short = min(w, h)
            if rng is None:
                side, left, top = short, (w - short) // 2, (h - short) // 2
            else:
                side = min(short, max(8, int(short * rng.uniform(*self.views.crop_scale))))  # tiny images: whole
                left, top = rng.randint(0, w - side), rng.randint(0, h - side)
            out = img.crop((left, top, left + side, top + side))
            if rng is not None and rng.random() < self.views.p_downscale:
                small = max(8, int(self.size * rng.uniform(*self.views.downscale)))
                out = out.resize((small, small), _RESAMPLE[self.resample], reducing_gap=3.0)
            out = out.resize((self.size, self.size), _RESAMPLE[self.resample], reducing_gap=3.0)
        if rng is not None:
            if rng.random() < self.views.p_flip:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rng.random() < self.views.p_grayscale:
                out = out.convert("L").convert("RGB")
            quality: int | None = rng.randint(*self.views.jpeg_quality)
        else:
            quality = self.jpeg_quality
        return jpeg_roundtrip(out, quality) if quality else out

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (arr - mean) / std

    def __call__(self, img: Image.Image, *, view: int = 0, key: str = "") -> torch.Tensor:
        return self.to_tensor(self.render(img, view=view, key=key))


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """Encode and decode with libjpeg at ``quality`` (4:2:0, as social platforms do)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf) as dec:
        return dec.convert("RGB")


def _letterbox(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), resample, reducing_gap=3.0), ((size - nw) // 2, (size - nh) // 2))
    return canvas
