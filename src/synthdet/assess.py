"""A verdict a person can act on: the score, whether it survives everyday processing, and evidence beside it.

:func:`assess_image` scores an image with a detector, re-scores it under a JPEG re-encode at quality 75, a 0.5×
down-up resize and a centre crop (the **stability checks**), and answers in words: ``"likely generated"``,
``"likely real"`` or ``"uncertain"``, with the reasons. It is uncertain when the checks disagree with the score, or
when the score lies inside the detector's uncertainty band around its threshold (``card.data["uncertain_band"]``,
calibrated on scores the detector never saw; without one, threshold ± 0.1, and the assessment says it is not
calibrated).

**Evidence** is reported beside the score and never mixed into it: EXIF camera make/model and software, the JPEG
quality its quantisation tables imply, and C2PA content credentials (with the ``c2pa`` extra). A **heatmap** of
patch-level scores (a 3×3 grid of overlapping tiles cut from the image at its native scale, each scored by the
detector's own pipeline) shows which regions drove the score.

Scoring is split in two so that a service can gather many requests into one forward pass: :func:`prepare` decodes
and builds every variant an assessment needs (a :class:`Pending`), :func:`score_images` scores any list of images in
batches, and :meth:`Pending.finish` turns its share of the probabilities into an :class:`Assessment`.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from .detector import Detector, assemble_features
from .features import ImageTransform, batch_size_default, forward_by_shape
from .pixels import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, reduce_to
from .slices import get_slice

if TYPE_CHECKING:
    from .backbones import Backbone
    from .ensemble import EnsembleDetector

    AnyDetector: TypeAlias = Detector | EnsembleDetector

Verdict = Literal["likely generated", "likely real", "uncertain"]
Label = Literal["generated", "real"]

#: Half-width of the uncertainty band used when a detector's card has none.
DEFAULT_BAND_HALF_WIDTH = 0.1
#: Fraction of each side the centre-crop check keeps.
CROP_FRACTION = 0.7
#: Tiles per side of the heatmap grid; each tile's side is half the image's short side.
HEATMAP_GRID = 3


def centre_crop(img: Image.Image, key: str = "", *, fraction: float = CROP_FRACTION) -> Image.Image:
    """The central ``fraction`` of each side: what a re-framed copy keeps."""
    w, h = img.size
    cw, ch = max(1, round(w * fraction)), max(1, round(h * fraction))
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


#: The stability checks: name → (what it does, the pixel transform). Two are the robustness slices of the same
#: names, so a check and an evaluation slice process pixels identically.
CHECKS: dict[str, tuple[str, ImageTransform]] = {
    **{name: (get_slice(name).description, get_slice(name)) for name in ("jpeg75", "resize0.5")},
    "crop": (f"centre crop keeping {CROP_FRACTION:.0%} of each side", centre_crop),
}


class Check(BaseModel):
    """The score of one processed copy of the image, at the detector's threshold."""

    name: str
    description: str
    probability: float
    label: Label
    agrees: bool  # same label as the unprocessed image


class Exif(BaseModel):
    make: str | None = None
    model: str | None = None
    software: str | None = None
    datetime_original: str | None = None


class JpegQuality(BaseModel):
    """What the quantisation tables say about the last JPEG encode (not about who made the image)."""

    quality: int  # the IJG quality whose standard tables are closest
    standard: bool  # the tables are exactly IJG's at that quality (libjpeg, Pillow, most software)
    mean_abs_diff: float  # mean absolute difference to those tables, per coefficient
    tables: int  # number of quantisation tables in the file


class C2pa(BaseModel):
    """C2PA content credentials: ``status`` ``present``, ``absent``, ``not-checked`` or ``error``."""

    status: Literal["present", "absent", "not-checked", "error"]
    detail: str = ""
    claim_generator: str | None = None
    issuer: str | None = None
    digital_source_types: list[str] = []
    validation_state: str | None = None


class Evidence(BaseModel):
    """Facts read from the file, shown beside the score and never mixed into it."""

    format: str | None
    exif: Exif
    jpeg: JpegQuality | None
    c2pa: C2pa
    notes: list[str] = []


class Heatmap(BaseModel):
    """Patch scores: ``scores[row][col]`` is the probability of the tile ``boxes[row][col]`` = (left, top, right,
    bottom) in the image's pixels; tiles overlap."""

    scores: list[list[float]]
    boxes: list[list[tuple[int, int, int, int]]]


class Assessment(BaseModel):
    """An image's verdict in words, the numbers behind it and the evidence beside it."""

    name: str
    sha256: str
    width: int
    height: int
    detector: str
    probability: float
    label: Label
    threshold: float
    band: tuple[float, float]
    band_source: str  # "card" or "default, not calibrated"
    verdict: Verdict
    reasons: list[str]
    checks: list[Check]
    evidence: Evidence | None
    heatmap: Heatmap | None
    timings_ms: dict[str, float]


def detector_id(det: AnyDetector) -> str:
    """A short identity for a detector: backbone, head and a digest of its card."""
    card = det.card
    digest = hashlib.sha256(card.model_dump_json(exclude={"metrics", "rows"}).encode()).hexdigest()[:12]
    return f"{card.backbone}/{card.head}@{digest}"


def uncertainty_band(det: AnyDetector) -> tuple[tuple[float, float], str]:
    """The card's calibrated band (``data["uncertain_band"]``) or threshold ± 0.1, with where it came from."""
    band = det.card.data.get("uncertain_band")
    if band is not None:
        low, high = (float(x) for x in band)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"uncertain_band {band!r} on the card is not a pair 0 <= low <= high <= 1")
        return (low, high), "card"
    t = det.threshold
    return (max(0.0, t - DEFAULT_BAND_HALF_WIDTH), min(1.0, t + DEFAULT_BAND_HALF_WIDTH)), "default, not calibrated"


# --- scoring decoded images -------------------------------------------------------------------------------------


def _members(det: AnyDetector) -> list[Detector]:
    return list(getattr(det, "members", [det]))


def _draft_size(det: AnyDetector) -> int | None:
    """The short side every member decodes to for inference, when they agree (then :func:`prepare` reduces once)."""
    sizes = {m.card.preprocess.canonical_draft_size for m in _members(det)}
    return sizes.pop() if len(sizes) == 1 else None


@torch.inference_mode()
def _forward(backbone: Backbone, images: Sequence[Image.Image], taps: bool, batch_size: int) -> tuple[Any, list]:
    """Pooled features and layer taps of decoded images through the backbone's canonical chain (view 0), exactly as
    :meth:`Detector.predict_paths` computes them from files."""
    pre = backbone.preprocess
    pooled, layers = [], []
    for start in range(0, len(images), batch_size):
        tensors = [pre(reduce_to(img, pre.canonical_draft_size)) for img in images[start:start + batch_size]]
        p, ls = forward_by_shape(backbone, tensors, taps=taps)  # native scale: sizes may differ
        pooled.append(p)
        layers.append(ls)
    return torch.cat(pooled), [torch.cat([part[j] for part in layers]) for j in range(len(layers[0]))]


def score_images(det: AnyDetector, images: Sequence[Image.Image], *, batch_size: int | None = None) -> np.ndarray:
    """Probabilities of being generated for decoded RGB images, in order; the same numbers ``predict_paths`` gives
    for the same pixels read from files (an ensemble combines its members by its rule)."""
    if not images:
        return np.empty(0)
    members = _members(det)
    groups: list[list[int]] = getattr(det, "groups", [[0]])
    table = np.full((len(images), len(members)), np.nan)
    for group in groups:
        backbone = members[group[0]].backbone
        taps = any(members[j].card.features == "concat" for j in group)
        pooled, layers = _forward(backbone, images, taps, batch_size or batch_size_default(backbone.device))
        for j in group:
            table[:, j] = members[j].predict_features(assemble_features(pooled, layers, members[j].card.features))
    if not hasattr(det, "members"):
        return table[:, 0]
    from .ensemble import combine

    ens: EnsembleDetector = det  # type: ignore[assignment]
    return np.asarray(combine(table, ens.member_thresholds, ens.card.rule, ens.card.weights), dtype=float)


# --- evidence ---------------------------------------------------------------------------------------------------

#: The IJG (libjpeg) example quantisation tables at quality 50, in natural (row-major) order.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32)], dtype=np.float64)


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_quality_scaling``: the base table scaled for ``quality`` (1–100), baseline-clamped."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # integer arithmetic, as in libjpeg
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


_IJG_BY_QUALITY = {q: (ijg_table(_IJG_LUMA, q), ijg_table(_IJG_CHROMA, q)) for q in range(1, 101)}


def jpeg_quality(tables: dict[int, Sequence[int]]) -> JpegQuality | None:
    """The IJG quality whose standard tables are closest to a JPEG's quantisation tables (Pillow's
    ``img.quantization``: table id → 64 values in natural order); ``None`` without a luminance table."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    luma = np.asarray(tables[0], dtype=np.float64)
    chroma = np.asarray(tables[1], dtype=np.float64) if len(tables.get(1, ())) == 64 else None

    def distance(q: int) -> float:
        ref_l, ref_c = _IJG_BY_QUALITY[q]
        d = np.abs(luma - ref_l).sum() + (np.abs(chroma - ref_c).sum() if chroma is not None else 0.0)
        return float(d) / (64 * (2 if chroma is not None else 1))

    best = min(range(1, 101), key=lambda q: (distance(q), -q))
    return JpegQuality(quality=best, standard=distance(best) == 0.0, mean_abs_diff=round(distance(best), 3),
                       tables=len(tables))


_EXIF_TAGS = {"make": 0x010F, "model": 0x0110, "software": 0x0131}
_DATETIME_ORIGINAL, _EXIF_IFD = 0x9003, 0x8769
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif",
         "AVIF": "image/avif", "HEIF": "image/heif", "BMP": "image/bmp"}


def _text(value: Any) -> str | None:
    """An EXIF value as short printable text (camera strings are NUL-padded; hostile files can hold anything)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(c for c in str(value) if c.isprintable()).strip()
    return text[:120] or None


def read_c2pa(data: bytes, fmt: str | None) -> C2pa:
    """A summary of the file's C2PA manifest store, read with ``c2pa-python`` when it is installed."""
    try:
        import c2pa  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return C2pa(status="not-checked", detail="c2pa-python not installed: pip install 'synthdet[c2pa]'")
    mime = _MIME.get(fmt or "")
    if mime is None:
        return C2pa(status="not-checked", detail=f"format {fmt} not supported for C2PA")
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data))
        store = json.loads(reader.json())
    except Exception as e:  # the native reader raises its own error classes; "no JUMBF data" means absent
        msg = str(e)
        if "ManifestNotFound" in type(e).__name__ or "ManifestNotFound" in msg or "JUMBF" in msg:
            return C2pa(status="absent", detail="no C2PA manifest in the file")
        return C2pa(status="error", detail=msg.splitlines()[0][:200] if msg else type(e).__name__)
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    sources = sorted({
        str(a.get("digitalSourceType", "")).rsplit("/", 1)[-1]
        for assertion in active.get("assertions", []) if str(assertion.get("label", "")).startswith("c2pa.actions")
        for a in assertion.get("data", {}).get("actions", []) if a.get("digitalSourceType")
    })
    generator = active.get("claim_generator") or ", ".join(  # claims v2 name their generators in a list
        " ".join(str(g.get(k, "")) for k in ("name", "version")).strip() for g in active.get("claim_generator_info", []))
    return C2pa(status="present", detail="C2PA manifest found", claim_generator=_text(generator),
                issuer=_text(active.get("signature_info", {}).get("issuer")), digital_source_types=sources,
                validation_state=_text(store.get("validation_state")))


def read_evidence(data: bytes) -> Evidence:
    """EXIF, JPEG quantisation and C2PA facts of an encoded image (header reads only; pixels are not decoded)."""
    notes = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            quant = jpeg_quality(getattr(img, "quantization", None) or {}) if fmt == "JPEG" else None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; the note below says it once
                    exif = img.getexif()
                    fields = {k: _text(exif.get(tag)) for k, tag in _EXIF_TAGS.items()}
                    fields["datetime_original"] = _text(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
            except Exception as e:  # a malformed EXIF block (any parser error) is a fact to report, not a failure
                fields = {}
                notes.append(f"EXIF present but unreadable ({type(e).__name__})")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return Evidence(format=None, exif=Exif(), jpeg=None, c2pa=C2pa(status="not-checked", detail="unreadable"))
    if not any(fields.values()) and not notes:
        notes.append("no camera EXIF (common after editing or upload; not evidence of generation by itself)")
    c2pa = read_c2pa(data, fmt)
    if c2pa.status == "present" and c2pa.digital_source_types:
        notes.append(f"C2PA credentials ({c2pa.validation_state or 'unvalidated'}) declare the source: "
                     f"{', '.join(c2pa.digital_source_types)}")
    if quant is not None and quant.standard:
        notes.append(f"standard IJG tables at quality {quant.quality}: the last encoder was libjpeg-like software")
    return Evidence(format=fmt, exif=Exif(**fields), jpeg=quant,
                    c2pa=c2pa, notes=notes)


# --- assessment -------------------------------------------------------------------------------------------------


def tile_boxes(size: tuple[int, int], grid: int = HEATMAP_GRID) -> list[list[tuple[int, int, int, int]]]:
    """A ``grid``×``grid`` lattice of overlapping square tiles, side half the short side, corners to corners."""
    w, h = size
    side = max(1, min(w, h) // 2)

    def starts(extent: int) -> list[int]:
        return [round(i * (extent - side) / (grid - 1)) if grid > 1 else (extent - side) // 2 for i in range(grid)]

    return [[(x, y, x + side, y + side) for x in starts(w)] for y in starts(h)]


@dataclass
class Pending:
    """An image decoded and its variants built, waiting for their scores: ``images[0]`` is the image, then one per
    check, then the heatmap tiles row by row."""

    name: str
    sha256: str
    size: tuple[int, int]
    images: list[Image.Image]
    checks: list[str]
    boxes: list[list[tuple[int, int, int, int]]] | None
    evidence: Evidence | None
    timings_ms: dict[str, float] = field(default_factory=dict)

    def finish(self, det: AnyDetector, probs: Sequence[float] | np.ndarray, **timings_ms: float) -> Assessment:
        """The assessment, from the probabilities of :attr:`images` (in order)."""
        if len(probs) != len(self.images):
            raise ValueError(f"{len(probs)} probabilities for {len(self.images)} images")
        t = det.threshold
        (low, high), band_source = uncertainty_band(det)
        p = float(probs[0])
        label: Label = "generated" if p >= t else "real"
        checks = []
        for name, q in zip(self.checks, probs[1:1 + len(self.checks)]):
            c_label: Label = "generated" if q >= t else "real"
            checks.append(Check(name=name, description=CHECKS[name][0], probability=float(q), label=c_label,
                                agrees=c_label == label))
        reasons = [f"the {c.name} check ({c.description}) says {c.label} (p={c.probability:.3f}), the image itself "
                   f"{label} (p={p:.3f})" for c in checks if not c.agrees]
        band_note = "" if band_source == "card" else " (band: default, not calibrated)"
        if low <= p <= high:
            reasons.append(f"the score {p:.3f} lies within the uncertainty band [{low:.3f}, {high:.3f}] around the "
                           f"threshold {t:.3f}{band_note}")
        verdict: Verdict = "uncertain" if reasons else ("likely generated" if label == "generated" else "likely real")
        if not reasons:
            side = "above" if label == "generated" else "below"
            reasons.append(f"the score {p:.3f} lies {side} the uncertainty band [{low:.3f}, {high:.3f}]{band_note}"
                           + (f" and all {len(checks)} stability checks agree" if checks else ""))
        heatmap = None
        if self.boxes is not None:
            tiles = [float(x) for x in probs[1 + len(self.checks):]]
            g = len(self.boxes[0])
            heatmap = Heatmap(scores=[tiles[r * g:(r + 1) * g] for r in range(len(self.boxes))], boxes=self.boxes)
        return Assessment(
            name=self.name, sha256=self.sha256, width=self.size[0], height=self.size[1], detector=detector_id(det),
            probability=p, label=label, threshold=t, band=(low, high), band_source=band_source, verdict=verdict,
            reasons=reasons, checks=checks, evidence=self.evidence, heatmap=heatmap,
            timings_ms={**self.timings_ms, **{k: round(v, 2) for k, v in timings_ms.items()}},
        )


def prepare(
    det: AnyDetector,
    source: str | Path | bytes | Image.Image,
    *,
    name: str | None = None,
    checks: bool = True,
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Pending:
    """Decode ``source`` (a path, encoded bytes, or a decoded image: then no evidence) and build every variant its
    assessment scores; :class:`~synthdet.pixels.ImageLoadError` when it cannot be decoded."""
    t0 = time.perf_counter()
    if isinstance(source, Image.Image):
        data, img = None, source.convert("RGB")
        name = name or "<image>"
    else:
        if isinstance(source, bytes):
            data, name = source, name or "<bytes>"
        else:
            name = name or str(source)
            try:
                data = Path(source).read_bytes()
            except FileNotFoundError:
                raise ImageLoadError(source, "not-found") from None
            except OSError as e:
                raise ImageLoadError(source, "unreadable", e.strerror or str(e)) from None
        try:
            img = load_image(data, max_pixels=max_pixels)
        except ImageLoadError as e:
            raise ImageLoadError(name, e.reason, e.detail) from None
    sha = hashlib.sha256(data if data is not None else img.tobytes()).hexdigest()
    t1 = time.perf_counter()
    draft = _draft_size(det)
    variants = [img] + [CHECKS[c][1](img, sha) for c in (CHECKS if checks else ())]
    boxes = tile_boxes(img.size) if heatmap else None
    tiles = [img.crop(b) for row in boxes for b in row] if boxes else []
    images = [reduce_to(v, draft) if draft else v for v in variants + tiles]
    t2 = time.perf_counter()
    ev = read_evidence(data) if evidence and data is not None else None
    t3 = time.perf_counter()
    return Pending(name=name, sha256=sha, size=img.size, images=images, checks=list(CHECKS) if checks else [],
                   boxes=boxes, evidence=ev, timings_ms={"decode": round((t1 - t0) * 1e3, 2),
                                                         "variants": round((t2 - t1) * 1e3, 2),
                                                         "evidence": round((t3 - t2) * 1e3, 2)})


def assess_images(
    det: AnyDetector,
    sources: Sequence[str | Path | bytes | Image.Image],
    *,
    checks: bool = True,
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int | None = None,
) -> list[Assessment | ImageLoadError]:
    """Assess several images with one batched scoring pass; an image that cannot be decoded gives its
    :class:`~synthdet.pixels.ImageLoadError` in its place."""
    pending: list[Pending | ImageLoadError] = []
    for s in sources:
        try:
            pending.append(prepare(det, s, checks=checks, heatmap=heatmap, evidence=evidence, max_pixels=max_pixels))
        except ImageLoadError as e:
            pending.append(e)
    ok = [p for p in pending if isinstance(p, Pending)]
    t0 = time.perf_counter()
    probs = score_images(det, [im for p in ok for im in p.images], batch_size=batch_size)
    score_ms = (time.perf_counter() - t0) * 1e3
    out: list[Assessment | ImageLoadError] = []
    start = 0
    for p in pending:
        if isinstance(p, ImageLoadError):
            out.append(p)
            continue
        out.append(p.finish(det, probs[start:start + len(p.images)], score=score_ms))
        start += len(p.images)
    return out


def assess_image(
    det: AnyDetector,
    source: str | Path | bytes | Image.Image,
    *,
    checks: bool = True,
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Assessment:
    """Assess one image (see the module's docstring); raises :class:`~synthdet.pixels.ImageLoadError` when it cannot
    be decoded."""
    (result,) = assess_images(det, [source], checks=checks, heatmap=heatmap, evidence=evidence, max_pixels=max_pixels)
    if isinstance(result, ImageLoadError):
        raise result
    return result
