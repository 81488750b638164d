"""The single place where bytes become RGB pixels.

Everything downstream receives a clean ``PIL.Image`` in mode ``RGB`` with EXIF orientation applied, or an
:class:`ImageLoadError` whose ``reason`` says exactly what was wrong with the file. Batch jobs catch that error,
record the reason and go on.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit (width × height). Pillow's own default (~89 Mpx) warns but still decodes up to twice that;
#: we refuse anything above the limit so one hostile upload cannot exhaust memory.
DEFAULT_MAX_PIXELS = 100_000_000

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif", ".avif", ".heic"})


class ImageLoadError(Exception):
    """A file that cannot be turned into pixels; ``reason`` is a short machine-friendly tag."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha is composited on white (how viewers show it)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or raw bytes) into an RGB image, or raise :class:`ImageLoadError`.

    ``draft_size``: when the caller needs only about this many pixels on the short side, a JPEG is decoded at a
    reduced DCT scale (1/2, 1/4, 1/8) that still keeps at least ``draft_size`` on its short side. A 24-Mpx camera
    JPEG then decodes ~10x faster and in a fraction of the memory. ``img.info["draft_scale"]`` tells the factor used.
    """
    name: str | Path = "<bytes>" if isinstance(source, bytes) else source
    if isinstance(source, bytes):
        if not source:
            raise ImageLoadError(name, "empty-file", "0 bytes")
        fp: io.BytesIO | Path = io.BytesIO(source)
    else:
        p = Path(source)
        if not p.exists():
            raise ImageLoadError(p, "not-found")
        if p.is_dir():
            raise ImageLoadError(p, "is-a-directory")
        if p.stat().st_size == 0:
            raise ImageLoadError(p, "empty-file", "0 bytes")
        fp = p
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~89 Mpx; our own ``max_pixels`` check below is the policy, so the warning must not
            # refuse images under a (default or raised) limit. Above 2x its limit Pillow still raises, handled below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        name, "too-large", f"{w}x{h} = {w * h:,} px exceeds the limit of {max_pixels:,} px (--max-pixels)"
                    )
                if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
                    short = min(w, h)
                    scale = max(1, short // draft_size)
                    if scale > 1:
                        img.draft(img.mode, (max(1, w // scale), max(1, h // scale)))
                img.load()
                scale = w // img.size[0] if img.size[0] else 1
                img = _to_rgb(ImageOps.exif_transpose(img) or img)
                img.info["draft_scale"] = scale  # >1: decoded at reduced DCT scale
                return img
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(
            name, "too-large", f"{e} Refused: the limit is {max_pixels:,} px (--max-pixels), and Pillow refuses "
            f"anything above {2 * (Image.MAX_IMAGE_PIXELS or 0):,} px regardless"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not-an-image", "no known image format") from None
    except OSError as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() or "premature" in msg.lower() else "corrupt"
        raise ImageLoadError(name, reason, msg) from None
    except (SyntaxError, ValueError, EOFError, Image.error) as e:  # Pillow raises these on malformed headers
        raise ImageLoadError(name, "corrupt", str(e)) from None
