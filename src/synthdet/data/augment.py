"""Augmentation presets that mimic what happens to images on their way through social media.

A detector that only ever saw pristine PNGs learns compression and resampling traces instead of generator traces,
so training and robustness checks run images through these named, citable pipelines, registered in
:data:`PRESETS` (``PRESETS.names()`` lists them). :func:`get_augment` builds one as an ``albumentations.Compose``;
:func:`apply` wraps it for PIL images, :func:`contact_sheet` shows what a preset does,
and ``augment-preview`` is the CLI front end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synthdet.extras import missing_extra
from synthdet.io.atomic import atomic_path
from synthdet.io.pixels import jpeg_roundtrip, load_image
from synthdet.registry import Registry

try:
    import albumentations as A
    import cv2
except ModuleNotFoundError as e:  # an optional extra: say which one
    raise missing_extra(e, "fine-tuning augmentation") from None


class JpegRGB(A.ImageCompression):
    """``A.ImageCompression`` restricted to JPEG, encoding the RGB image the way a real encoder does.

    albumentations 2.0.8 hands the RGB array straight to ``cv2.imencode``, which reads it as BGR: luma and chroma
    are computed with red and blue swapped, so the chroma-subsampling artefacts land on the wrong colours and the
    result differs from a genuine JPEG of the image by ~5 grey levels on average. This step encodes through
    :func:`synthdet.io.pixels.jpeg_roundtrip` (4:2:0) instead, the library's one JPEG round trip.
    """

    def __init__(self, quality_range: tuple[int, int] = (99, 100), p: float = 0.5) -> None:
        super().__init__(compression_type="jpeg", quality_range=quality_range, p=p)

    def apply(self, img: np.ndarray, quality: int, image_type: str, **params: Any) -> np.ndarray:
        return np.asarray(jpeg_roundtrip(Image.fromarray(img), quality, subsampling="4:2:0"))


class ShrinkLongestSide(A.LongestMaxSize):
    """``A.LongestMaxSize`` that never enlarges: platforms downsize big uploads but leave small ones alone."""

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}


def jpeg(quality: int | tuple[int, int], p: float = 1.0) -> JpegRGB:
    """JPEG re-encoding at a fixed quality or a uniformly drawn one from an inclusive range."""
    lo, hi = (quality, quality) if isinstance(quality, int) else quality
    return JpegRGB(quality_range=(lo, hi), p=p)


def _mild() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        jpeg((85, 100), p=0.3),
        A.GaussianBlur(sigma_limit=(0.2, 1.0), p=0.1),
    ]


def _strong() -> list[A.BasicTransform]:
    # JPEG goes last: the platform's re-encode is the final thing that happens to an uploaded image.
    return [
        A.HorizontalFlip(p=0.5),
        A.Downscale(
            scale_range=(0.5, 0.9),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=0.3,
        ),
        A.OneOf(
            [A.GaussianBlur(sigma_limit=(0.5, 2.0)), A.Sharpen(), A.MotionBlur(blur_limit=(3, 7))],
            p=0.3,
        ),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
        A.CoarseDropout(
            num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), fill=0, p=0.3
        ),
        jpeg((30, 95), p=0.5),
    ]


def _wang2020(p: float) -> Callable[[], list[A.BasicTransform]]:
    # Wang et al. blur with scipy's gaussian_filter, sigma ~ U[0, 3], then JPEG; sigma exactly 0 would make
    # albumentations' kernel NaN, so the lower bound is a sigma whose kernel is the identity.
    def build() -> list[A.BasicTransform]:
        return [A.GaussianBlur(sigma_limit=(1e-3, 3.0), p=p), jpeg((30, 100), p=p)]

    return build


def _social() -> list[A.BasicTransform]:
    return [ShrinkLongestSide(max_size=1080, interpolation=cv2.INTER_AREA, p=1.0), jpeg((70, 90), p=1.0)]


def _lean2026() -> list[A.BasicTransform]:
    return [
        A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.02, 0.02), p=0.8),
        A.Rotate(limit=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.5),
    ]


PRESETS: Registry[Callable[[], list[A.BasicTransform]]] = Registry("augmentation preset")
"""Every preset: a function returning fresh transforms, with a ``description`` saying where the recipe comes from."""

PRESETS.add("none", list, description="Identity: no augmentation (evaluation baseline).")
PRESETS.add("mild", _mild, description="Light training jitter (project default, no paper): h-flip, JPEG q85-100 "
            "(p=0.3), Gaussian blur (p=0.1).")
PRESETS.add("strong", _strong, description="Junaid et al. 2026 EfficientNet-B4 recipe: JPEG q30-95, one of "
            "blur/sharpen/motion blur, Gaussian noise, CoarseDropout, h-flip, down-up resize (probabilities are ours).")
PRESETS.add("wang2020", _wang2020(0.5), description="Wang et al. CVPR 2020 'CNN-generated images are surprisingly "
            "easy to spot', Blur+JPEG (0.5): Gaussian blur sigma in [0,3] and JPEG q30-100, each p=0.5 (also used by "
            "Li et al. 2025).")
PRESETS.add("wang2020-0.1", _wang2020(0.1), description="Wang et al. CVPR 2020, Blur+JPEG (0.1): Gaussian blur sigma "
            "in [0,3] and JPEG q30-100, each p=0.1.")
PRESETS.add("lean2026", _lean2026, description="Lean, MediaEval 2026 fine-tuning extras (strengths and probabilities "
            "are ours): colour jitter (p=0.8), mild rotation within ±10° (p=0.5). Fine-tuning adds random crop, flip, "
            "down-up resize and JPEG q60-95 through the preprocessing view chain.")
PRESETS.add("social", _social, description="Social-media upload simulation (project heuristic): shrink long side to "
            "1080 px (never enlarge), then JPEG q70-90.")


def describe(name: str) -> str:
    """One-line provenance of a preset, for help texts and reports."""
    return PRESETS.meta(name)["description"]


def get_augment(name: str, *, seed: int | None = None, always: bool = False) -> A.Compose:
    """Build preset ``name`` as a fresh pipeline; repeated calls on it give successive random draws.

    ``seed`` makes the draw sequence reproducible. ``always=True`` forces every top-level step to fire (``OneOf``
    still picks one member): the worst case, for previews and tests.
    """
    transforms = PRESETS.get(name)()
    if always:
        for t in transforms:
            t.p = 1.0
    aug = A.Compose(transforms, seed=seed)
    if seed is not None:
        # Compose gives every transform the *same* seed, so transforms that consume the same number of random
        # draws make identical keep/skip decisions (blur fires exactly when JPEG does). Give each its own stream.
        for t, child in zip(aug.transforms, np.random.SeedSequence(seed).spawn(len(aug.transforms)), strict=True):
            t.set_random_seed(int(child.generate_state(1)[0]))
    return aug


def apply(aug: A.Compose, img: Image.Image) -> Image.Image:
    """Run ``aug`` on an RGB PIL image and return a new RGB PIL image."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; load it with synthdet.io.pixels.load_image")
    out = aug(image=np.asarray(img))["image"]
    return Image.fromarray(np.ascontiguousarray(out), "RGB")


def _tile(img: Image.Image, label: str, size: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """Fit ``img`` into a ``size``×``size`` square (aspect kept, letterboxed) with ``label`` in the top-left."""
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (size, size), (40, 40, 40))
    tile.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
    draw = ImageDraw.Draw(tile)
    *_, right, bottom = draw.textbbox((4, 2), label, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 2), fill=(0, 0, 0))
    draw.text((4, 2), label, fill=(255, 255, 255), font=font)
    return tile


def contact_sheet(
    img: Image.Image,
    presets: Sequence[str] | None = None,
    *,
    n_samples: int = 4,
    seed: int = 0,
    tile: int = 256,
) -> Image.Image:
    """Grid with one row per preset (default: every registered one): the original, then ``n_samples`` random draws,
    each ``tile`` px square.

    Augmentations run on the full-resolution image and are shrunk afterwards, so geometry (e.g. ``social``'s
    resize) is faithful while fine JPEG artefacts may be hard to see at small ``tile`` sizes.
    """
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if tile < 16:
        raise ValueError(f"tile must be >= 16 px, got {tile}")
    augs = [(name, get_augment(name, seed=seed)) for name in (PRESETS.names() if presets is None else presets)]
    font = ImageFont.load_default(size=max(10, tile // 16))
    sheet = Image.new("RGB", ((n_samples + 1) * tile, len(augs) * tile), (0, 0, 0))
    for row, (name, aug) in enumerate(augs):
        sheet.paste(_tile(img, f"{name}: original", tile, font), (0, row * tile))
        for col in range(1, n_samples + 1):
            sheet.paste(_tile(apply(aug, img), f"{name} #{col}", tile, font), (col * tile, row * tile))
    return sheet


def preview(image: str | Path, out: str | Path, presets: Sequence[str] = tuple(PRESETS), *, n_samples: int = 4,
            seed: int = 0, tile: int = 256) -> Path:
    """Write :func:`contact_sheet` of the image file ``image`` as a PNG to ``out`` (atomically).

    Unknown preset names fail before anything is decoded; an unreadable image raises :class:`ImageLoadError`.
    """
    for name in presets:
        PRESETS.entry(name)  # an unknown name fails here, before decoding
    sheet = contact_sheet(load_image(image), presets, n_samples=n_samples, seed=seed, tile=tile)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out)
