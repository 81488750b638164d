"""Robustness slices: what social media does to an image, applied to decoded pixels before the detector sees them.

A slice is either a pixel transform ``(img, key) -> img`` (pure, and seeded by the image's key so a rerun scores the
same pixels) or a subset filter on the manifest (the small-image bucket of Lean 2026, which no transform can make).
Scoring a detector under slices is :func:`synthdet.evaluation.runs.evaluate_detector`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter

from synthdet.io.pixels import centre_window, jpeg_roundtrip
from synthdet.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

#: Short side below which an image belongs to the "small" bucket (Lean 2026, Table 2).
SMALL_SIDE = 512
#: Long side that the "social" slice resizes to, like the common feed resolution of social platforms.
SOCIAL_LONG_SIDE = 1080
#: Slices run when none are named: the three of Lean 2026 (JPEG 85, laundering, small images) plus the two
#: everyday ones (half-size down-up resize, a social-media re-upload).
DEFAULT_SLICES = ("jpeg85", "resize0.5", "launder", "social", "small")
#: The generalisation protocol's views of an image besides the file itself: a thumbnail of the centre square, and a
#: crop at the image's own scale (``synthdet cv --view``).
THUMBNAIL_SIDE, CROP_SIDE = 384, 224
#: The side range of the "crop-random" training view (native scale, log-uniform).
RANDOM_CROP_SIDES = (160, 320)


def jpeg(img: Image.Image, key: str = "", *, quality: int) -> Image.Image:
    """Re-encode as JPEG (standard tables, 4:2:0 chroma, as most platforms) and decode again: the compression loss,
    nothing else."""
    return jpeg_roundtrip(img, quality, subsampling="4:2:0")


def down_up(img: Image.Image, key: str = "", *, factor: float) -> Image.Image:
    """Downscale by ``factor`` and back to the original size: the detail a low-resolution copy has lost."""
    w, h = img.size
    small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
    return small.resize((w, h), Image.Resampling.BICUBIC)


def _rng(name: str, key: str) -> np.random.Generator:
    """A generator seeded by slice name and image key, so a slice is a pure function of (pixels, key)."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{name}\0{key}".encode()).digest()[:8], "little"))


def launder(img: Image.Image, key: str = "") -> Image.Image:
    """Random-resized crop of 60–90 % of the area (aspect 3:4–4:3), resized back to the original size, then JPEG 90.

    The "laundering" of Lean 2026: a re-framed, re-encoded copy keeps the content but not the pixel grid.
    """
    rng = _rng("launder", key)
    w, h = img.size
    area = rng.uniform(0.6, 0.9) * w * h
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
    ch = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    return jpeg(crop, key, quality=90)


def social(img: Image.Image, key: str = "") -> Image.Image:
    """A social-media re-upload: long side capped at 1080 px (never enlarged), then JPEG 85."""
    w, h = img.size
    scale = SOCIAL_LONG_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return jpeg(img, key, quality=85)


def thumbnail(img: Image.Image, key: str = "", *, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """The centre square resized to ``side`` px, JPEG at a quality drawn from 70–95 per image: a picture shown as a
    thumbnail or preview (the "thumbnail" view of the generalisation protocol)."""
    s = min(img.size)
    square = centre_window(img, s, s).resize((side, side), Image.Resampling.BICUBIC)
    return jpeg(square, key, quality=int(_rng("thumbnail", key).integers(70, 96)))


def native_crop(img: Image.Image, key: str = "", *, side: int = CROP_SIDE) -> Image.Image:
    """A ``side``-px centre crop at the image's own scale (no resampling; the whole image when smaller), JPEG at a
    quality drawn from 70–95 per image: a detail, a screenshot, a cut-out (the "crop" view of the protocol)."""
    return jpeg(centre_window(img, side, side), key, quality=int(_rng("crop", key).integers(70, 96)))


def random_crop(img: Image.Image, key: str = "", *, sides: tuple[int, int] = RANDOM_CROP_SIDES) -> Image.Image:
    """A square crop at the image's own scale, its side drawn log-uniformly from ``sides`` and its position
    uniformly (the whole image where smaller), JPEG 70–95: a training view that shows details anywhere in the frame
    and at several sizes, where the protocol's "crop" view is one centred size."""
    rng = _rng("crop-random", key)
    w, h = img.size
    side = round(float(np.exp(rng.uniform(np.log(sides[0]), np.log(sides[1])))))
    cw, ch = min(side, w), min(side, h)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return jpeg(img.crop((x0, y0, x0 + cw, y0 + ch)), key, quality=int(rng.integers(70, 96)))


def blur(img: Image.Image, key: str = "", *, sigma: float = 1.5) -> Image.Image:
    """Gaussian blur (Pillow's radius is the standard deviation): removes the high frequencies detectors read."""
    return img.filter(ImageFilter.GaussianBlur(sigma))


def is_small(manifest: pd.DataFrame) -> np.ndarray:
    """Rows whose short side is below :data:`SMALL_SIDE` pixels (width and height as indexed in the manifest)."""
    missing = {"width", "height"} - set(manifest.columns)
    if missing:
        raise ValueError(f"the 'small' slice needs the manifest's width and height columns (missing {sorted(missing)})")
    short = np.minimum(manifest["width"].to_numpy(dtype=float), manifest["height"].to_numpy(dtype=float))
    return (short > 0) & (short < SMALL_SIDE)


@dataclass(frozen=True)
class Slice:
    """A named robustness condition: a pixel ``transform`` or a row ``select``-or of the manifest (exactly one).

    Calling a slice applies its transform (identity for a subset slice), so it can be passed wherever an
    ``ImageTransform`` is expected; it pickles, so DataLoader workers can run it.
    """

    name: str
    description: str
    transform: Callable[[Image.Image, str], Image.Image] | None = None
    select: Callable[[pd.DataFrame], np.ndarray] | None = None

    def __call__(self, img: Image.Image, key: str) -> Image.Image:
        return self.transform(img, key) if self.transform is not None else img


#: Every slice by name (``synthdet.registry``): a new condition is one more registered :class:`Slice`.
SLICES: Registry[Slice] = Registry("slice")


def _register(*slices: Slice) -> None:
    for s in slices:
        SLICES.add(s.name, s, description=s.description)


_register(
    *(Slice(f"jpeg{q}", f"JPEG re-encode at quality {q}", partial(jpeg, quality=q)) for q in (95, 85, 75, 50)),
    *(Slice(f"resize{f}", f"downscale ×{f}, then back up to the original size", partial(down_up, factor=f))
      for f in (0.5, 0.25)),
    Slice("launder", "random-resized crop of 60–90 % area, resized back, JPEG 90", launder),
    Slice("social", f"long side ≤ {SOCIAL_LONG_SIDE} px, then JPEG 85", social),
    Slice("blur", "Gaussian blur, σ = 1.5", blur),
    Slice("thumbnail", f"centre square resized to {THUMBNAIL_SIDE} px, JPEG 70–95", thumbnail),
    Slice("crop", f"{CROP_SIDE} px centre crop at native scale, JPEG 70–95", native_crop),
    Slice("crop-random", f"square crop of {RANDOM_CROP_SIDES[0]}–{RANDOM_CROP_SIDES[1]} px at native scale, anywhere "
          "in the frame, JPEG 70–95", random_crop),
    Slice("small", f"subset: images whose short side is below {SMALL_SIDE} px", select=is_small),
)


def get_slice(name: str) -> Slice:
    """The registered slice ``name``; an unknown name raises a ValueError listing the valid ones."""
    return SLICES.get(name)


def get_view(name: str) -> Slice:
    """A slice that shows an image differently (a pixel transform, e.g. ``thumbnail`` or ``crop``); a subset slice
    or an unknown name raises a ValueError listing the views."""
    if name not in SLICES or SLICES.get(name).transform is None:
        views = [n for n in SLICES.names() if SLICES.get(n).transform is not None]
        raise ValueError(f"{name!r} is not a pixel view; views: {', '.join(views)}")
    return SLICES.get(name)
