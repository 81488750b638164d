"""Manipulated images with exact masks for Task B (manipulation localization), built from any real/AI manifest.

Each triple is ``(image, mask, category)`` on a square canvas of a real photo:

- ``splice-ai``: a region of a generated image pasted in, colour-matched, blended one of three ways (a hard edge
  feathered by a pixel or two, a soft edge feathered inside the region, or Poisson blending: OpenCV's
  ``seamlessClone``, whose gradients leave no colour seam);
- ``inpaint-sp``: a region replaced by the same region round-tripped through the TAEF2 latent autoencoder (the
  decoder's trace without a content seam);
- ``regen-fr``: the whole image through TAEF2, the masked region's latent replaced by another image's latent before
  decoding (every pixel carries the decoder's trace; the mask is the new content, at latent resolution);
- ``splice-real``: a region of another real photo pasted in; ``copy-move``: a region of the same photo moved;
- ``authentic``: the photo untouched (empty mask, label 0), so image-level decisions have negatives.

Shapes are smooth star-shaped blobs (object-like) or thresholded smooth noise, of many sizes (1 % to 35 % of the
canvas, log-uniform: small objects are common in real edits). Every triple then goes through one
social-media chain: a resize (image with a random filter, mask with nearest) and JPEG for the image only. The
autoencoder categories carry *one* tiny decoder's trace: report them per category, never as a given generator's.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from synthdet.io.atomic import atomic_path, write_bytes
from synthdet.io.pixels import ImageLoadError, centre_window, load_image

CATEGORIES = ("splice-ai", "inpaint-sp", "regen-fr", "splice-real", "copy-move", "authentic")
#: How a splice's region meets the photo: a hard edge feathered a pixel or two, a soft edge inside the region, Poisson.
BLENDS = ("hard", "soft", "poisson")
#: Shares of the canvas a region covers (log-uniform between them).
COVERAGE = (0.01, 0.35)
_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def square(img: Image.Image, size: int) -> Image.Image:
    """Centre square of ``img`` resized to ``size`` (the canvas every manipulation works on)."""
    s = min(img.size)
    return centre_window(img.convert("RGB"), s, s).resize((size, size), Image.Resampling.BICUBIC)


def random_shape(
    size: int, rng: np.random.Generator, coverage: tuple[float, float] = (0.05, 0.35), *, blob: bool | None = None
) -> np.ndarray:
    """A boolean (size, size) mask: a smooth star-shaped blob or (``blob`` False; None draws) thresholded smooth
    noise, covering a share of the canvas drawn log-uniformly from ``coverage`` (small regions as often as large)."""
    target = float(np.exp(rng.uniform(np.log(coverage[0]), np.log(coverage[1]))))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if blob if blob is not None else rng.random() < 0.6:  # object-like blob: a radius with a few random harmonics
        radius = np.sqrt(target / np.pi)
        cy, cx = rng.uniform(radius, 1 - radius, size=2)
        theta = np.arctan2(yy - cy, xx - cx)
        r = np.ones_like(theta)
        for k in range(2, 6):
            r += rng.uniform(0, 0.25 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        dist = np.hypot(yy - cy, xx - cx) / r
        mask = dist <= np.quantile(dist, target)
    else:  # irregular: low-frequency noise thresholded at the target quantile
        cells = int(rng.integers(2, 5))
        noise = Image.fromarray(rng.random((cells, cells)).astype(np.float32), mode="F")
        field = np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC))
        mask = field >= np.quantile(field, 1 - target)
    return mask


def _alpha(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Feathered alpha in [0, 1] from a boolean mask; feathering stays within a pixel or two of the edge."""
    radius = float(rng.uniform(0.5, 2.0))
    soft = Image.fromarray((mask * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(soft, dtype=np.float32)[..., None] / 255.0


def _inner_alpha(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft edge that stays inside the region: alpha rises from 0 at the border over 2 to 8 pixels."""
    from scipy.ndimage import distance_transform_edt

    width = float(rng.uniform(2.0, 8.0))
    return np.clip(distance_transform_edt(mask) / width, 0.0, 1.0).astype(np.float32)[..., None]


def _poisson(base: np.ndarray, patch: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """``patch`` Poisson-blended into ``base`` inside ``mask`` (OpenCV ``seamlessClone``, normal clone), in place;
    None for a region too close to the border for OpenCV's solver (the caller then feathers instead)."""
    from synthdet.extras import require

    cv2 = require("cv2", "Poisson-blended splices")
    inner = mask.copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    if inner.sum() < 16:
        return None
    ys, xs = np.nonzero(inner)
    # seamlessClone centres the mask's bounding box on ``center``: the box's own centre keeps the region in place
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    center = ((x0 + x1 + 1) // 2, (y0 + y1 + 1) // 2)
    src = np.clip(patch.round(), 0, 255).astype(np.uint8)
    dst = np.clip(base.round(), 0, 255).astype(np.uint8)
    try:
        out = cv2.seamlessClone(src, dst, inner.astype(np.uint8) * 255, center, cv2.NORMAL_CLONE)
    except cv2.error:
        return None
    return np.where(mask[..., None], out.astype(np.float32), base)


def _colour_match(patch: np.ndarray, ref: np.ndarray, where: np.ndarray, strength: float) -> np.ndarray:
    """Move ``patch``'s per-channel mean/std inside ``where`` towards ``ref``'s, by ``strength`` in [0, 1]."""
    p, r = patch[where], ref[where]
    scale = r.std(0) / (p.std(0) + 1e-3)
    matched = (patch - p.mean(0)) * scale + r.mean(0)
    return np.clip(strength * matched + (1 - strength) * patch, 0, 255)


def _composite(base: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return base * (1 - alpha) + patch * alpha


def manipulate(
    category: str, real: Image.Image, donor: Image.Image | None, rng: np.random.Generator, *,
    coverage: tuple[float, float] = COVERAGE, blends: tuple[str, ...] = BLENDS,
) -> tuple[Image.Image, np.ndarray]:
    """One manipulation of the square canvas ``real`` → ``(image, boolean mask)``; ``donor`` (same size) is the
    generated image (``splice-ai``), the other photo (``splice-real``) or the latent donor (``regen-fr``)."""
    size = real.size[0]
    base = np.asarray(real, dtype=np.float32)
    if category == "authentic":
        return real, np.zeros((size, size), bool)
    mask = (random_shape(size, rng, (0.02, 0.15), blob=True) if category == "copy-move"
            else random_shape(size, rng, coverage))
    if category == "regen-fr":
        from synthdet.localization import autoencoder as taef2

        if donor is None:
            raise ValueError("regen-fr needs a donor image")
        lat, other = taef2.encode(real), taef2.encode(donor)
        small = mask.reshape(size // taef2.SCALE, taef2.SCALE, size // taef2.SCALE, taef2.SCALE).mean((1, 3)) >= 0.5
        if not small.any():
            small[small.shape[0] // 2, small.shape[1] // 2] = True
        m = np.asarray(small, dtype=np.float32)[None, None]
        import torch

        mixed = lat * (1 - torch.from_numpy(m)) + other * torch.from_numpy(m)
        mask = np.kron(small, np.ones((taef2.SCALE, taef2.SCALE), bool))
        return taef2.decode(mixed), mask
    if category == "inpaint-sp":
        from synthdet.localization import autoencoder as taef2

        patch = np.asarray(taef2.roundtrip(real), dtype=np.float32)
    elif category in ("splice-ai", "splice-real"):
        if donor is None:
            raise ValueError(f"{category} needs a donor image")
        patch = _colour_match(np.asarray(donor, dtype=np.float32), base, mask, float(rng.uniform(0.3, 1.0)))
        blend = blends[int(rng.integers(len(blends)))]
        blended = _poisson(base, patch, mask) if blend == "poisson" else None
        if blended is not None:
            return Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8)), mask
        if blend != "hard":
            return Image.fromarray(np.clip(_composite(base, patch, _inner_alpha(mask, rng)).round(), 0, 255)
                                   .astype(np.uint8)), mask
    elif category == "copy-move":
        ys, xs = np.nonzero(mask)
        (ylo, yhi), (xlo, xhi) = (-ys.min(), size - 1 - ys.max()), (-xs.min(), size - 1 - xs.max())
        dy, dx = int(rng.integers(ylo, yhi + 1)), int(rng.integers(xlo, xhi + 1))
        if abs(dy) + abs(dx) < size // 8:  # a move of a few pixels is barely a manipulation: go to the far side
            dy, dx = (ylo if -ylo > yhi else yhi), (xlo if -xlo > xhi else xhi)
        # the region at (y, x) is shown at (y + dy, x + dx): source pixels stay real, the destination is the mask
        patch = np.roll(base, (dy, dx), axis=(0, 1))
        mask = np.roll(mask, (dy, dx), axis=(0, 1))
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    out = _composite(base, patch, _alpha(mask, rng))
    return Image.fromarray(np.clip(out.round(), 0, 255).astype(np.uint8)), mask


def social_chain(
    img: Image.Image, mask: np.ndarray, rng: np.random.Generator, *, scale: tuple[float, float] = (0.6, 1.0),
    quality: tuple[int, int] = (65, 95),
) -> tuple[bytes, np.ndarray]:
    """Resize image and mask alike (the mask with nearest), JPEG the image: ``(jpeg bytes, boolean mask)``."""
    w, h = img.size
    f = float(rng.uniform(*scale))
    size = (max(16, round(w * f)), max(16, round(h * f)))
    out = img.resize(size, _FILTERS[int(rng.integers(len(_FILTERS)))]) if size != (w, h) else img
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=int(rng.integers(quality[0], quality[1] + 1)))
    return buf.getvalue(), np.asarray(m) > 127


def source_group(row: pd.Series | dict) -> str:
    """The collection a host photo came from, for per-source tables: the manifest's ``group`` column where it has
    one, else the first word of its ``source`` (``github:owner/repo file.jpg`` → ``github:owner/repo``: the dev data's
    ``source`` names each file, which would make one-image groups), else ``""``."""
    group = str(row.get("group", "") or "").strip()
    if group and group != "nan":
        return group
    src = str(row.get("source", "") or "").strip()
    return "" if src == "nan" else (src.split()[0] if src else "")


def write_mask(mask: np.ndarray, dest: Path) -> None:
    """PNG, 0 and 255, grayscale."""
    with atomic_path(dest) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")


def read_mask(path: str | Path | None, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean (H, W) mask from a PNG (any value > 127 is manipulated); an empty path with ``shape`` is an
    authentic image's empty mask."""
    if path is None or (isinstance(path, str | float) and (not str(path) or str(path) == "nan")):
        if shape is None:
            raise ValueError("an empty mask needs the image's shape")
        return np.zeros(shape, bool)
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def make_manipulations(
    df: pd.DataFrame,
    out: str | Path,
    *,
    n: int = 100,
    size: int = 256,
    categories: tuple[str, ...] = CATEGORIES,
    seed: int = 0,
    progress: bool = False,
    coverage: tuple[float, float] = COVERAGE,
    blends: tuple[str, ...] = BLENDS,
    on_skip: Callable[[str, str], None] | None = None,
) -> pd.DataFrame:
    """Write ``n`` triples into ``out`` (``images/``, ``masks/``, ``manifest.csv``) and return the manifest
    (``path``, ``mask`` relative to ``out``; ``label`` 1 = manipulated; ``category``; ``source`` of the photo,
    ``donor`` of the pasted content; ``source_group``, the photo's collection: :func:`source_group`). ``df`` needs ``path`` and ``label`` (0 real, 1 generated); categories cycle in
    order, images and donors are drawn with ``seed``. ``size`` (a multiple of 8) is the working canvas before the
    social-media chain shrinks it; ``coverage`` bounds the regions' shares of it (copy-move keeps its own, smaller
    range) and ``blends`` (of :data:`BLENDS`) are drawn from for each splice."""
    if size % 8:
        raise ValueError(f"size must be a multiple of 8, got {size}")
    if not blends or set(blends) - set(BLENDS):
        raise ValueError(f"blends must be among {', '.join(BLENDS)}, got {blends}")
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"unknown categories: {', '.join(sorted(unknown))}")
    if "ok" in df:
        df = df[df["ok"].astype(bool)]
    reals = df[df["label"] == 0].reset_index(drop=True)
    fakes = df[df["label"] == 1].reset_index(drop=True)
    if len(reals) < 2 or (len(fakes) == 0 and "splice-ai" in categories):
        raise ValueError(f"need at least 2 real images and 1 generated one, got {len(reals)} and {len(fakes)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    order = random.Random(seed)
    cache: dict[str, Image.Image] = {}

    def canvas(path: str) -> Image.Image:
        if path not in cache:
            cache[path] = square(load_image(path), size)
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
        return cache[path]

    # ``source`` must name the photo (train/val splits and held-out checks keep a photo's triples together): a
    # manifest's source where it names one file, else the file (a real/fake folder's source is its class folder)
    named = df.assign(s=df["source"].fillna("").astype(str) if "source" in df else "")
    per_file = set(named.groupby("s")["path"].nunique().loc[lambda c: c == 1].index) - {""}

    def source_of(row: pd.Series) -> str:
        src = str(row.get("source", "") or "")
        return src if src in per_file else str(row["path"])

    rows = []
    for i in tqdm(range(n), desc="manipulate", unit="img", disable=None if progress else True):
        cat = categories[i % len(categories)]
        real = reals.iloc[order.randrange(len(reals))]
        pool = fakes if cat in ("splice-ai", "regen-fr") and len(fakes) else reals
        donor_row = pool.iloc[order.randrange(len(pool))]
        if donor_row["path"] == real["path"]:
            donor_row = reals.iloc[(reals.index[reals["path"] == real["path"]][0] + 1) % len(reals)]
        try:
            donor = canvas(donor_row["path"]) if cat not in ("inpaint-sp", "copy-move", "authentic") else None
            img, mask = manipulate(cat, canvas(real["path"]), donor, rng, coverage=coverage, blends=blends)
        except ImageLoadError as e:
            if on_skip:
                on_skip(str(e.path), e.reason)
            continue
        data, mask = social_chain(img, mask, rng)
        name = f"m{i:05d}"
        write_bytes(out / "images" / f"{name}.jpg", data)
        mask_rel = ""
        if cat != "authentic":
            write_mask(mask, out / "masks" / f"{name}.png")
            mask_rel = f"masks/{name}.png"
        rows.append({
            "path": f"images/{name}.jpg", "mask": mask_rel, "label": int(cat != "authentic"), "category": cat,
            "source": source_of(real), "donor": source_of(donor_row) if donor is not None else "",
            "source_group": source_group(real),
        })
    manifest = pd.DataFrame(rows)
    write_bytes(out / "manifest.csv", manifest.to_csv(index=False).encode())
    return manifest
