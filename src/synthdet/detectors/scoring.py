"""Scoring decoded images with any detector: a probe, a fine-tuned network or an ensemble.

Files stream through :meth:`Detector.predict_paths`; images already in memory (a service's uploads, the variants an
assessment builds, a notebook's arrays) are scored here, through the same canonical chain (view 0) and so with the
same numbers. The detector is duck-typed (:class:`AnyDetector`), so this module sits below the detector classes
whose ``score`` and ``assess`` methods call it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from synthdet.data.tilehash import SEEN_TILES
from synthdet.io.pixels import DEFAULT_MAX_PIXELS, load_image

if TYPE_CHECKING:
    from synthdet.backbones.base import Backbone

#: What :func:`score` takes: a path, encoded bytes, a PIL image or an ``H×W×3`` (or ``H×W``) uint8 array.
ImageLike = str | Path | bytes | Image.Image | np.ndarray


class AnyDetector(Protocol):
    """What assessing needs of a detector — a probe, a fine-tuned network or an ensemble. Duck-typed, so that this
    module sits below the detector classes whose ``assess`` methods call it: ``card``, ``threshold``, and either
    ``backbone`` + ``predict_features`` (one model), ``members`` + ``groups`` + ``combine`` (an ensemble) or
    ``score_decoded`` (a graph run by onnxruntime)."""

    card: Any

    @property
    def threshold(self) -> float: ...


def detector_id(det: AnyDetector) -> str:
    """A short identity for a detector: backbone, head and a digest of its card (not of the seen rows' tile index:
    adding one to a card leaves the model, and its identity, as they were)."""
    card = det.card
    if SEEN_TILES in card.files:
        card = card.model_copy(update={"files": {k: v for k, v in card.files.items() if k != SEEN_TILES}})
    digest = hashlib.sha256(card.model_dump_json(exclude={"metrics", "rows"}).encode()).hexdigest()[:12]
    return f"{card.backbone}/{card.head}@{digest}"


def _members(det: AnyDetector) -> list[Any]:
    return list(getattr(det, "members", [det]))


def draft_size(det: AnyDetector) -> int | None:
    """The short side every member decodes to for inference, when they agree (then :func:`prepare` reduces once)."""
    sizes = {m.card.preprocess.canonical_draft_size for m in _members(det)}
    return sizes.pop() if len(sizes) == 1 else None


def _forward(backbone: Backbone, images: Sequence[Image.Image], taps: bool, batch_size: int) -> tuple[Any, list]:
    """Pooled features and layer taps of decoded images through the backbone's canonical chain (view 0), exactly as
    :meth:`Detector.predict_paths` computes them from files (torch is imported here, not by a graph's scoring)."""
    import torch

    from synthdet.features.extract import forward_by_shape

    pre = backbone.preprocess
    pooled, layers = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            tensors = [torch.from_numpy(pre.canonical(img)) for img in images[start:start + batch_size]]
            p, ls = forward_by_shape(backbone, tensors, taps=taps)  # native scale: sizes may differ
            pooled.append(p)
            layers.append(ls)
    return torch.cat(pooled), [torch.cat([part[j] for part in layers]) for j in range(len(layers[0]))]


def score_images(det: AnyDetector, images: Sequence[Image.Image], *, batch_size: int | None = None) -> np.ndarray:
    """Probabilities of being generated for decoded RGB images, in order; the same numbers ``predict_paths`` gives
    for the same pixels read from files (an ensemble combines its members by its rule)."""
    if not images:
        return np.empty(0)
    if (decoded := getattr(det, "score_decoded", None)) is not None:  # a graph: no backbone in this process
        return np.asarray(decoded(images, batch_size=batch_size), dtype=float)
    from synthdet.features.extract import assemble_features, batch_size_default

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
    return np.asarray(det.combine(table), dtype=float)  # type: ignore[attr-defined]


def as_image(item: ImageLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A decoded RGB image from any :data:`ImageLike`; files and bytes go through :func:`~synthdet.io.pixels.load_image`
    (EXIF rotation, modes, bombs: an :class:`~synthdet.io.pixels.ImageLoadError` names what is wrong)."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be uint8 H×W, H×W×3 or H×W×4, not {item.dtype} {item.shape}")
        return Image.fromarray(item).convert("RGB")
    return load_image(item, max_pixels=max_pixels)


def score(det: AnyDetector, items: ImageLike | Sequence[ImageLike], *, batch_size: int | None = None,
          max_pixels: int = DEFAULT_MAX_PIXELS) -> float | np.ndarray:
    """Probability of being generated for one image (a float) or for a sequence of them (an array, in order)."""
    single = isinstance(items, (str, Path, bytes, Image.Image, np.ndarray))
    seq: Sequence[ImageLike] = [items] if single else items  # type: ignore[list-item,assignment]
    probs = score_images(det, [as_image(x, max_pixels=max_pixels) for x in seq], batch_size=batch_size)
    return float(probs[0]) if single else probs
