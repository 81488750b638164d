"""The only place pixels are made: bytes → RGB, and RGB → the tensor a model sees.

Decoding (:func:`load_image`) hands downstream a clean ``PIL.Image`` in mode ``RGB`` with EXIF orientation applied,
or an :class:`ImageLoadError` whose ``reason`` says exactly what was wrong; batch jobs record the reason and go on.

The development data has format and size traps (real photos are 4:3 JPEGs, generated images square PNG/WebP), and
images in the wild arrive re-compressed. So every image, whatever its origin, goes through the same chain
(:class:`Preprocess`):

    decode → integer box reduction → square crop → resize to the model size → JPEG re-encode → tensor → normalise

Nothing about the container reaches the model: every format is decoded in full and reduced by the same factor
(computed from the size alone), metadata (EXIF other than orientation, ICC profiles, text chunks) is ignored, any
colour mode or bit depth becomes 8-bit RGB, and the crop is square whatever the aspect ratio (``tests/
test_invariance.py`` holds each of these).

View 0 is the canonical, deterministic chain used at inference. Views 1..n are training augmentations of the same
chain (random square crop, flip, down-up resize, JPEG quality drawn from a range), seeded by the image's content
hash and the view index, so cached features are reproducible and a view is computed once. A :class:`Preprocess` is
part of a backbone's identity: its :meth:`Preprocess.id` keys the feature cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import torch

#: Default pixel limit (width × height). Pillow's own default (~89 Mpx) warns but still decodes up to twice that;
#: we refuse anything above the limit so one hostile upload cannot exhaust memory.
DEFAULT_MAX_PIXELS = 100_000_000

#: Suffixes of the formats we accept, each with the Pillow feature its decoder needs (None: built into Pillow).
_CANDIDATE_SUFFIXES: dict[str, str | None] = {
    ".jpg": "jpg", ".jpeg": "jpg", ".jfif": "jpg", ".png": "zlib", ".webp": "webp", ".bmp": None, ".gif": None,
    ".tif": None, ".tiff": None, ".avif": "avif", ".heic": None, ".heif": None,
}


def _decodable_suffixes() -> frozenset[str]:
    """The candidate suffixes this Pillow build really opens: a registered plugin with a decoder compiled in.

    ``.heic`` without a HEIF plugin, or ``.avif`` on a Pillow without libavif, would be listed and then fail on
    every file, so they are left out here rather than skipped one image at a time.
    """
    registered = Image.registered_extensions()
    return frozenset(
        s for s, feature in _CANDIDATE_SUFFIXES.items()
        if registered.get(s) in Image.OPEN and (feature is None or features.check(feature))
    )


IMAGE_SUFFIXES = _decodable_suffixes()
#: The Pillow decoders :func:`load_image` may use, whatever a file's name says: the photo and web formats. Pillow
#: would otherwise sniff and open anything it knows, EPS/PS through Ghostscript (a program run on client bytes), PDF,
#: PSD, ICO, and dozens of rare containers nobody uploads as a photo. MPO is a camera JPEG with extra frames.
DECODERS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")


class ImageLoadError(Exception):
    """A file that cannot be turned into pixels; ``reason`` is a short machine-friendly tag."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def list_images(folder: str | Path, *, skip_hidden: bool = False) -> list[Path]:
    """Image files under ``folder`` (recursively, by :data:`IMAGE_SUFFIXES`), sorted; ``skip_hidden`` leaves out
    names starting with a dot (macOS ``._x.jpg`` resource forks)."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.is_file() and is_image_path(p) and not (skip_hidden and p.name.startswith(".")))


def read_file(path: str | Path) -> bytes:
    """The file's bytes, read once (they are hashed and decoded from the same buffer); a missing or unreadable file
    is an :class:`ImageLoadError` naming why."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(path, "not-found") from None
    except IsADirectoryError:
        raise ImageLoadError(path, "is-a-directory") from None
    except OSError as e:
        raise ImageLoadError(path, "unreadable", e.strerror or str(e)) from None


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


def reduction_factor(size: tuple[int, int], short_side: int | None) -> int:
    """The integer factor an image of ``size`` may shrink by and still keep ``short_side`` pixels on its short side.

    It depends on the size alone, never on the container, so a JPEG and a PNG of the same pixels are reduced alike.
    """
    return max(1, min(size) // short_side) if short_side else 1


def reduce_to(img: Image.Image, short_side: int | None) -> Image.Image:
    """Box-reduce a decoded RGB image by :func:`reduction_factor`; ``info["draft_scale"]`` records the factor and
    ``info["full_size"]`` the size before it (a caller that keeps only the reduced copy still knows the upload's).

    One full decode can serve several needs (view 0 and the training views) by reducing it twice.
    """
    factor = reduction_factor(img.size, short_side)
    full_size = img.size
    out = img.reduce(factor) if factor > 1 else img
    out.info["draft_scale"] = factor
    out.info["full_size"] = full_size
    return out


def file_sizes(paths: Iterable[str | Path]) -> np.ndarray:
    """``[n, 2]``: each file's width and height from its header alone (NaN when it cannot be read)."""
    def size(path: str | Path) -> tuple[float, float]:
        try:
            with Image.open(path) as img:
                return float(img.size[0]), float(img.size[1])
        except Exception:  # unreadable: no size
            return float("nan"), float("nan")
    return np.array([size(p) for p in paths], dtype=float).reshape(-1, 2)


def file_megapixels(paths: Iterable[str | Path]) -> np.ndarray:
    """Each file's megapixels from its header alone (NaN when it cannot be read)."""
    return file_sizes(paths).prod(axis=1) / 1e6


def peek_size(source: bytes) -> tuple[int, int] | None:
    """Width and height from the header alone (no pixel is decoded), for the formats :func:`load_image` accepts;
    None when the header cannot be read (then decoding gives the reason). EXIF rotation keeps the pixel count."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source), formats=[f for f in DECODERS if f in Image.OPEN]) as img:
                return img.size
    except Exception:  # any header Pillow refuses: load_image names the reason
        return None


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or raw bytes) into an RGB image, or raise :class:`ImageLoadError`.

    ``draft_size``: the short side the caller needs. The image is decoded in full and then box-reduced
    (:meth:`PIL.Image.Image.reduce`) by :func:`reduction_factor`, which keeps at least ``draft_size`` pixels on the
    short side (:func:`reduce_to`). Every format takes this same path: libjpeg's reduced-DCT ``draft`` decoding is
    faster but exists for JPEG only, so it gave JPEGs different high-frequency energy than PNGs of the same pixels,
    a format leak that a detector learns. ``img.info["draft_scale"]`` tells the factor applied (1: full size).
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
            with Image.open(fp, formats=[f for f in DECODERS if f in Image.OPEN]) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        name, "too-large", f"{w}x{h} = {w * h:,} px exceeds the limit of {max_pixels:,} px (--max-pixels)"
                    )
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
                return reduce_to(_to_rgb(img), draft_size)  # RGB first: palette indices must not be averaged
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageLoadError(
            name, "too-large", f"{e} Refused: the limit is {max_pixels:,} px (--max-pixels), and Pillow refuses "
            f"anything above {2 * (Image.MAX_IMAGE_PIXELS or 0):,} px regardless"
        ) from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not-an-image", f"not one of the accepted formats ({', '.join(DECODERS)})") from None
    except OSError as e:
        msg = str(e)
        reason = "truncated" if "truncated" in msg.lower() or "premature" in msg.lower() else "corrupt"
        raise ImageLoadError(name, reason, msg) from None
    except (SyntaxError, ValueError, EOFError) as e:  # Pillow raises these on malformed headers
        raise ImageLoadError(name, "corrupt", str(e)) from None


#: How :func:`load_image` turns a large file into fewer pixels; part of :meth:`Preprocess.id`, so features cached
#: under an earlier decoder (JPEG-only reduced-DCT ``draft``) are never reused for this one.
DECODE = "full+reduce"

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
    #: share of training views that are a window of the image at its own scale (no resampling; side drawn from
    #: ``native_side`` × the model size) instead of the downscaled whole: what a crop, a detail or a cut-out shows
    p_native: float = 0.0
    native_side: tuple[float, float] = (0.58, 1.0)


class Preprocess(BaseModel):
    """The canonical chain; every field changes the pixels the model sees, so every field is in :meth:`id`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = 224
    # crop: short side → size, centre crop; letterbox: long side, zero-pad; window: the centre size×size window at
    # the image's own scale, never resampled (training views: a window at a random position), for pixel-level traces
    mode: Literal["crop", "letterbox", "window"] = "crop"
    # resize: the square crop is resized to ``size``; native: only a crop larger than ``size`` is (down to it), a
    # smaller one reaches a fully convolutional backbone at its own scale, so no resampling trace is added to it
    scale: Literal["resize", "native"] = "resize"
    resample: Resample = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    jpeg_quality: int | None = Field(90, ge=1, le=100)  # canonical re-encode (None: off)
    views: ViewPolicy = ViewPolicy()

    def at_native(self, size: int) -> Preprocess:
        """This chain fed at the image's own scale up to ``size`` px (``scale="native"``), for fully convolutional
        backbones: generator and camera traces live at the pixel scale, and resizing every image to 224 px blurs
        them away. Training crops keep at least 58 % of the short side, so most stay above 224 px."""
        low = max(self.views.crop_scale[0], 0.58)
        views = self.views.model_copy(update={"crop_scale": (low, max(low, self.views.crop_scale[1]))})
        return self.model_copy(update={"size": size, "scale": "native", "views": views})

    def id(self) -> str:
        exclude: dict[str, Any] = {"scale": True} if self.scale == "resize" else {}
        if not self.views.p_native:  # ids from before native views stay valid
            exclude["views"] = {"p_native", "native_side"}
        fields = self.model_dump(mode="json", exclude=exclude)
        payload = json.dumps({**fields, "decode": DECODE}, sort_keys=True)  # ids from before ``scale`` stay valid
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def draft_size(self) -> int | None:
        """Short side to keep when decoding for training views (``load_image(draft_size=...)``): the smallest crop,
        with 2x margin; None (the full decode) for a window, which is cut at the image's own scale."""
        return None if self.mode == "window" else int(2 * self.size / self.views.crop_scale[0])

    @property
    def canonical_draft_size(self) -> int | None:
        """Short side to keep for view 0 (inference): twice the model size, so the final resize still antialiases;
        None (the full decode) for a window."""
        return None if self.mode == "window" else 2 * self.size

    def is_native_view(self, view: int, key: str) -> bool:
        """Whether training view ``view`` of image ``key`` is a window at the image's own scale (:attr:`ViewPolicy.
        p_native`): it must then be rendered from the full-resolution decode, not a reduced one."""
        return bool(view) and self.views.p_native > 0 and random.Random(f"{key}:{view}:native").random() < self.views.p_native

    def render(self, img: Image.Image, *, view: int = 0, key: str = "") -> Image.Image:
        """Apply the chain (canonical for ``view == 0``) and return the RGB image the model sees, before tensors.
        A native view (:meth:`is_native_view`) expects ``img`` as decoded, at full resolution."""
        rng = random.Random(f"{key}:{view}") if view else None
        if rng is not None and self.is_native_view(view, key):
            w, h = img.size
            side = min(w, h, max(8, int(self.size * rng.uniform(*self.views.native_side))))
            left, top = rng.randint(0, w - side), rng.randint(0, h - side)
            out = img.crop((left, top, left + side, top + side))
        elif self.mode == "window":
            w, h = img.size
            cw, ch = min(w, self.size), min(h, self.size)
            if rng is None:
                out = centre_window(img, cw, ch)
            else:
                left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
                out = img.crop((left, top, left + cw, top + ch))
        elif self.mode == "letterbox":
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
            target = self.size if self.scale == "resize" else min(side, self.size)
            if rng is not None and rng.random() < self.views.p_downscale:
                small = max(8, int(target * rng.uniform(*self.views.downscale)))
                out = out.resize((small, small), _RESAMPLE[self.resample], reducing_gap=3.0)
            out = out.resize((target, target), _RESAMPLE[self.resample], reducing_gap=3.0)
        if rng is not None:
            if rng.random() < self.views.p_flip:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if rng.random() < self.views.p_grayscale:
                out = out.convert("L").convert("RGB")
            quality: int | None = rng.randint(*self.views.jpeg_quality)
        else:
            quality = self.jpeg_quality
        return jpeg_roundtrip(out, quality, subsampling="4:2:0") if quality else out

    def to_array(self, img: Image.Image) -> np.ndarray:
        """``float32 [3, H, W]``, normalised: what every runtime feeds the network (torch wraps it without a copy,
        onnxruntime takes it as it is), so both see the same bits."""
        arr = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((arr - mean) / std)

    def canonical(self, img: Image.Image) -> np.ndarray:
        """View 0 of a decoded image as the network sees it (reduced for inference, rendered, normalised): what
        every scoring path computes from pixels already in memory."""
        return self.to_array(self.render(reduce_to(img, self.canonical_draft_size)))

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.to_array(img))

    def __call__(self, img: Image.Image, *, view: int = 0, key: str = "") -> torch.Tensor:
        return self.to_tensor(self.render(img, view=view, key=key))


#: Applied to decoded pixels before preprocessing (e.g. a robustness slice); gets the image and its key.
ImageTransform = Callable[[Image.Image, str], Image.Image]


Subsampling = Literal["4:4:4", "4:2:2", "4:2:0"]


def centre_window(img: Image.Image, width: int, height: int) -> Image.Image:
    """The centred ``width``×``height`` window of ``img`` (each side at most the image's): every centre crop and
    centre square synthdet cuts, so they all agree on where the centre is."""
    w, h = img.size
    cw, ch = min(width, w), min(height, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def jpeg_roundtrip(img: Image.Image, quality: int, *, subsampling: Subsampling) -> Image.Image:
    """Encode and decode with libjpeg (Pillow's standard tables) at ``quality`` and chroma ``subsampling``.

    The library's only JPEG encoder/decoder, so the canonical chain, training views, augmentation presets and
    robustness slices all compress alike. 4:2:0 is what social platforms use; 4:4:4 keeps full chroma. An ``L``
    image stays greyscale; any other mode is encoded as RGB.
    """
    mode = "L" if img.mode == "L" else "RGB"
    buf = io.BytesIO()
    img.convert(mode).save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    with Image.open(buf) as dec:
        return dec.convert(mode)


def _letterbox(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    w, h = img.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (size, size), (0, 0, 0))
    canvas.paste(img.resize((nw, nh), resample, reducing_gap=3.0), ((size - nw) // 2, (size - nh) // 2))
    return canvas
