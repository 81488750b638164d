"""A verdict a person can act on: the score, whether it survives everyday processing, and evidence beside it.

:func:`assess_image` scores an image with a detector, re-scores it under everyday processing (the **stability
checks**) and answers in words: ``"likely generated"``, ``"likely real"`` or ``"uncertain"``, with the reasons. It is
uncertain when a check disagrees with the score, or when the score lies inside the detector's uncertainty band around
its threshold (``card.data["uncertain_band"]``, calibrated on scores the detector never saw; without one, threshold
± 0.1, and the assessment says it is not calibrated).

Each check is one more forward pass, so the checks are chosen by cost (:data:`CHECK_SETS`): ``"quick"`` (the
default) is one **re-shared copy** (centre crop keeping 70 % of each side, then a 0.5× down-up resize, then JPEG 75:
every step of ``"full"`` at once, one pass, at most 2× a plain score); ``"full"`` scores the three steps apart, so a
reader sees which one moves the score; ``"off"`` none. On 600 dev/dev2 images the one re-shared copy flipped 7.0 % of
the confident verdicts, the three checks together 6.7 %; the two agreed on 98.2 % of them (``benchmarks/check_sets.py``).

**Evidence** is reported beside the score and never mixed into it: EXIF camera make/model and software, the JPEG
quality its quantisation tables imply, and C2PA content credentials (with the ``c2pa`` extra). A **heatmap** of
patch-level scores (a 3×3 grid of overlapping tiles cut from the image at its native scale, each scored by the
detector's own pipeline) shows which regions drove the score.

Scoring is split in two so that a service can gather many requests into one forward pass: :func:`prepare` decodes
and builds every variant an assessment needs (a :class:`Pending`), :func:`~synthdet.detectors.scoring.score_images` scores any list of images in
batches, and :meth:`Pending.finish` turns its share of the probabilities into an :class:`Assessment`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel

from synthdet.data.perturbations import get_slice
from synthdet.detectors.evidence import Evidence, read_evidence
from synthdet.detectors.scoring import AnyDetector, ImageLike, detector_id, draft_size, score, score_images
from synthdet.io.pixels import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTransform,
    Preprocess,
    centre_window,
    load_image,
    reduce_to,
)

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
    return centre_window(img, max(1, round(w * fraction)), max(1, round(h * fraction)))


def reshare(img: Image.Image, key: str = "") -> Image.Image:
    """A re-shared copy: the centre crop, the half-size down-up resize and the JPEG 75 re-encode of the other checks,
    one after the other (the ``"quick"`` check: every step in one forward pass)."""
    return get_slice("jpeg75")(get_slice("resize0.5")(centre_crop(img, key), key), key)


#: The stability checks: name → (what it does, the pixel transform). Two are the robustness slices of the same
#: names, so a check and an evaluation slice process pixels identically.
CHECKS: dict[str, tuple[str, ImageTransform]] = {
    **{name: (get_slice(name).description, get_slice(name)) for name in ("jpeg75", "resize0.5")},
    "crop": (f"centre crop keeping {CROP_FRACTION:.0%} of each side", centre_crop),
    "reshare": (f"a re-shared copy: centre crop keeping {CROP_FRACTION:.0%} of each side, 0.5x down-up resize, "
                "JPEG 75", reshare),
}
#: Which checks each setting scores: one forward pass more per check.
CHECK_SETS: dict[str, tuple[str, ...]] = {"quick": ("reshare",), "full": ("jpeg75", "resize0.5", "crop"), "off": ()}


def check_names(checks: bool | str) -> tuple[str, ...]:
    """The checks a setting scores: a :data:`CHECK_SETS` name, or ``True`` (``"quick"``) / ``False`` (``"off"``)."""
    key = ("quick" if checks else "off") if isinstance(checks, bool) else checks
    if key not in CHECK_SETS:
        raise ValueError(f"checks={checks!r}: use one of {', '.join(CHECK_SETS)}")
    return CHECK_SETS[key]


def assessment_images(checks: bool | str, heatmap: bool) -> int:
    """Images one assessment sends through the network (:attr:`Pending.images`): the image, one per check, and the
    heatmap's tiles; what a service weighs a request by before decoding it."""
    return 1 + len(check_names(checks)) + (HEATMAP_GRID ** 2 if heatmap else 0)


class Check(BaseModel):
    """The score of one processed copy of the image, at the detector's threshold."""

    name: str
    description: str
    probability: float
    label: Label
    agrees: bool  # same label as the unprocessed image


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


def band_of(det: AnyDetector) -> tuple[tuple[float, float], str]:
    """The card's calibrated band (``data["uncertain_band"]``) or threshold ± 0.1, with where it came from."""
    band = det.card.data.get("uncertain_band")
    if band is not None:
        low, high = (float(x) for x in band)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"uncertain_band {band!r} on the card is not a pair 0 <= low <= high <= 1")
        return (low, high), "card"
    t = det.threshold
    return (max(0.0, t - DEFAULT_BAND_HALF_WIDTH), min(1.0, t + DEFAULT_BAND_HALF_WIDTH)), "default, not calibrated"


def band_verdict(p: float, threshold: float, band: tuple[float, float]) -> Verdict:
    """What a score alone says: uncertain inside the band, else the side of the threshold it lies on (an assessment
    is uncertain also when a stability check disagrees)."""
    if band[0] <= p <= band[1]:
        return "uncertain"
    return "likely generated" if p >= threshold else "likely real"


# --- assessment -------------------------------------------------------------------------------------------------


#: Short side kept for the checks and heatmap when the detector's members reduce differently (an ensemble).
BOUNDED_SIDE = 1024


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
        (low, high), band_source = band_of(det)
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
        verdict: Verdict = "uncertain" if reasons else band_verdict(p, t, (low, high))
        if not reasons:
            side = "above" if label == "generated" else "below"
            reasons.append(f"the score {p:.3f} lies {side} the uncertainty band [{low:.3f}, {high:.3f}]{band_note}"
                           + (f" and {'all ' if len(checks) > 1 else ''}{len(checks)} stability "
                              f"check{'s agree' if len(checks) > 1 else ' agrees'}" if checks else ""))
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
    checks: bool | str = "quick",
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Pending:
    """Decode ``source`` (a path, encoded bytes, or a decoded image: then no evidence) and build every variant its
    assessment scores; :class:`~synthdet.io.pixels.ImageLoadError` when it cannot be decoded."""
    t0 = time.perf_counter()
    draft = draft_size(det)
    # every variant is cut from one bounded copy (the reduction scoring makes anyway): a 100 Mpx upload costs its
    # checks and heatmap what a photo costs, not a JPEG re-encode and crops of 100 Mpx; and the full-size decode is
    # released as soon as the copy exists (load_image reduces it before returning)
    side = draft or BOUNDED_SIDE
    if isinstance(source, Image.Image):
        data, full = None, source.convert("RGB")
        name = name or "<image>"
        sha = hashlib.sha256(full.tobytes()).hexdigest()
        base = reduce_to(full, side)
        del full
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
            base = load_image(data, max_pixels=max_pixels, draft_size=side)
        except ImageLoadError as e:
            raise ImageLoadError(name, e.reason, e.detail) from None
        sha = hashlib.sha256(data).hexdigest()
    width, height = base.info["full_size"]
    t1 = time.perf_counter()
    scale = int(base.info.get("draft_scale", 1))
    names = check_names(checks)
    variants = [base] + [CHECKS[c][1](base, sha) for c in names]
    small = tile_boxes(base.size) if heatmap else None
    tiles = [base.crop(b) for row in small for b in row] if small else []
    images = [reduce_to(v, draft) if draft else v for v in variants + tiles]
    boxes = [[(x0 * scale, y0 * scale, min(x1 * scale, width), min(y1 * scale, height))
              for x0, y0, x1, y1 in row] for row in small] if small else None  # in the upload's own pixels
    t2 = time.perf_counter()
    ev = read_evidence(data) if evidence and data is not None else None
    t3 = time.perf_counter()
    return Pending(name=name, sha256=sha, size=(width, height), images=images, checks=list(names),
                   boxes=boxes, evidence=ev, timings_ms={"decode": round((t1 - t0) * 1e3, 2),
                                                         "variants": round((t2 - t1) * 1e3, 2),
                                                         "evidence": round((t3 - t2) * 1e3, 2)})


#: Pixels the network sees in one forward pass on a CPU. The pair default's cost per image rose with the pass: 77
#: CPU-ms for a 384-px image alone, 120–150 in passes of 8–24 (activations fall out of the caches), while small
#: images gain from company (192 px: 41 ms alone, 16–25 in a pass of 8). 300 k px is two 384-px images or eight
#: 192-px ones. On 48 dev images gathered 8 requests at a time it cut the network's CPU time per request from 128
#: to 86 ms without checks and from 460 to 384 ms with them, against passes of 8 images in arrival order.
CPU_PASS_PIXELS = 300_000


def _seen_pixels(pre: Preprocess, size: tuple[int, int]) -> int:
    """About the pixels the network sees of an image of ``size`` under ``pre`` (for cutting passes only)."""
    side = pre.size if pre.scale == "resize" or pre.mode == "letterbox" else min(min(size), pre.size)
    return side * side


def score_in_passes(det: AnyDetector, images: Sequence[Image.Image]) -> np.ndarray:
    """:func:`~synthdet.detectors.scoring.score_images` with the images sorted by size and cut into forward passes of
    at most :data:`CPU_PASS_PIXELS` on a CPU (on a GPU, one call: it wants large passes). The same numbers in the same
    order: a pass groups images of one size from any request (the checks of one, the photos of many) and never
    piles up more pixels than the caches hold."""
    members = list(getattr(det, "members", [det]))
    on_cpu = not hasattr(members[0], "backbone") or members[0].backbone.device.type == "cpu"  # a graph: onnxruntime, CPU
    if not images or not on_cpu:
        return score_images(det, images)
    seen = [max(_seen_pixels(m.card.preprocess, im.size) for m in members) for im in images]
    passes: list[list[int]] = [[]]
    total = 0
    for i in sorted(range(len(images)), key=lambda i: (seen[i], images[i].size)):
        if passes[-1] and total + seen[i] > CPU_PASS_PIXELS:
            passes.append([])
            total = 0
        passes[-1].append(i)
        total += seen[i]
    probs = np.empty(len(images))
    for idx in passes:
        probs[idx] = score_images(det, [images[i] for i in idx], batch_size=len(idx))
    return probs


def assess_images(
    det: AnyDetector,
    sources: Sequence[str | Path | bytes | Image.Image],
    *,
    checks: bool | str = "quick",
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int | None = None,
) -> list[Assessment | ImageLoadError]:
    """Assess several images with one batched scoring pass; an image that cannot be decoded gives its
    :class:`~synthdet.io.pixels.ImageLoadError` in its place."""
    pending: list[Pending | ImageLoadError] = []
    for s in sources:
        try:
            pending.append(prepare(det, s, checks=checks, heatmap=heatmap, evidence=evidence, max_pixels=max_pixels))
        except ImageLoadError as e:
            pending.append(e)
    ok = [p for p in pending if isinstance(p, Pending)]
    t0 = time.perf_counter()
    images = [im for p in ok for im in p.images]
    probs = score_images(det, images, batch_size=batch_size) if batch_size else score_in_passes(det, images)
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
    checks: bool | str = "quick",
    heatmap: bool = False,
    evidence: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Assessment:
    """Assess one image (see the module's docstring); raises :class:`~synthdet.io.pixels.ImageLoadError` when it cannot
    be decoded."""
    (result,) = assess_images(det, [source], checks=checks, heatmap=heatmap, evidence=evidence, max_pixels=max_pixels)
    if isinstance(result, ImageLoadError):
        raise result
    return result


class Scorable:
    """What every detector kind offers on images in memory: :meth:`score` and :meth:`assess` (mixed into
    :class:`~synthdet.detectors.detector.Detector` and :class:`~synthdet.detectors.ensemble.EnsembleDetector`)."""

    def score(self, images: ImageLike | Sequence[ImageLike], **kw: Any) -> float | np.ndarray:
        """Probability of being generated for one image (a float) or a sequence (an array, in order): paths, bytes,
        PIL images or uint8 arrays, decoded in memory (:func:`synthdet.detectors.scoring.score`); for many files
        on disk ``predict_paths`` streams them instead."""
        return score(self, images, **kw)  # type: ignore[arg-type]  # subclasses have card and threshold

    def assess(self, source: str | Path | bytes | Image.Image, **kw: Any) -> Assessment:
        """A verdict in words with stability checks and evidence (:func:`assess_image`)."""
        return assess_image(self, source, **kw)  # type: ignore[arg-type]
