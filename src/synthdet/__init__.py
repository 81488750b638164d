"""synthdet: tell real photographs from AI-generated images under real-world conditions, and show where an image
was edited.

The curated API, loaded lazily (``import synthdet`` imports no model code)::

    import synthdet

    det = synthdet.load()                       # the shipped default; synthdet.load("my-detector/") for yours
    det.score("photo.jpg")                      # probability of being generated: paths, bytes, PIL images, arrays
    det.score(["a.jpg", "b.png"])               # an array, in order
    a = det.assess("photo.jpg", heatmap=True)   # verdict in words, reasons, stability checks, evidence, heatmap
    print(a.verdict, a.reasons)

    loc = synthdet.load("my-localizer/")        # a Task B localizer (``synthdet localize train``)
    masks = synthdet.localize(loc, ["edited.jpg"])   # per image: a probability map of edited pixels

Everything else lives in the subpackages, bottom to top: ``io`` (bytes → pixels), ``data`` (manifests, splits,
provenance), ``backbones`` and ``heads``, ``features``, ``detectors``, ``evaluation``, ``reporting``, ``engines``
and ``localization``, ``training``, ``serve``, ``cli`` (``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthdet.version import __version__

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from synthdet.detectors.assess import Assessment
    from synthdet.detectors.detector import Detector
    from synthdet.detectors.ensemble import EnsembleDetector
    from synthdet.localization.models import Localizer

__all__ = ["Assessment", "Detector", "EnsembleDetector", "Localizer", "__version__", "load", "localize"]

_LAZY = {
    "Assessment": "synthdet.detectors.assess",
    "Detector": "synthdet.detectors.detector",
    "EnsembleDetector": "synthdet.detectors.ensemble",
    "Localizer": "synthdet.localization.models",
}


def load(path: str | Path | None = None, *, runtime: str = "auto") -> Any:
    """A saved detector of any kind, ready to score: ``None`` is the default shipped inside the package.

    ``runtime="auto"`` scores from the detector's ONNX graph with onnxruntime when it has one (the shipped default
    does; a detector you trained is exported once, beside it, when torch is installed): a
    :class:`~synthdet.detectors.graph.GraphDetector`, all the scoring install (no torch) has. ``"torch"`` loads the
    reference: a probe or fine-tuned folder gives a :class:`Detector`, an ensemble an :class:`EnsembleDetector`,
    a Task B localizer a :class:`Localizer` (:func:`synthdet.detectors.loading.load_detector`); ``auto`` gives these
    too for what has no graph. Every kind has ``score``, ``assess`` and ``predict_paths``."""
    from synthdet.engines.base import resolve_runtime

    if resolve_runtime(runtime, path) == "onnx":
        from synthdet.engines.onnx_runtime import load_graph

        return load_graph(path)
    from synthdet.detectors.loading import load_detector

    return load_detector(path)  # the network is built on first use: loading stays cheap


def localize(localizer: str | Path | Localizer | None, images: Sequence[str | Path | Image.Image]) -> list[np.ndarray]:
    """Per image, in order, the localizer's probability that each pixel was edited (``H×W`` float32 at the image's
    decoded size); ``localizer`` is a saved localizer folder, a loaded one, or None for the shipped default (scored from
    its ONNX graph on onnxruntime). A file that cannot be decoded raises
    :class:`~synthdet.io.pixels.ImageLoadError` naming it."""
    from synthdet.io.pixels import load_image
    from synthdet.localization.graph import open_localizer

    loc = open_localizer(localizer) if localizer is None or isinstance(localizer, str | Path) else localizer
    return [loc.predict_image(im if not isinstance(im, (str, Path)) else load_image(im)) for im in images]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'synthdet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
