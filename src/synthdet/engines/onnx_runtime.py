"""The ``onnx`` engine: saved detectors scored from their ONNX graphs by onnxruntime on CPU, with no torch in the
process (:class:`~synthdet.detectors.graph.GraphDetector`). What ``predict``, ``serve`` and the stream engine use by
default whenever a graph exists or can be made (``--runtime auto``); torch stays the reference and the training path.

A detector folder's graph is found beside it (``graph-<key>.onnx``, :func:`~synthdet.detectors.graph.graph_path`;
the shipped default carries one, recorded with its sha256 on the card). A folder without one is exported once, on
first use, when torch and onnx are installed: beside it, or in the cache folder when the folder is read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Unpack

from synthdet.detectors.card import Card, check_files, default_detector_path, read_card
from synthdet.detectors.graph import GraphDetector, graph_places
from synthdet.engines.base import Engine
from synthdet.extras import require

if TYPE_CHECKING:
    from synthdet.backbones.base import Backbone
    from synthdet.features.extract import FeatureBatch, ForwardOptions, Item


class OnnxEngine(Engine):
    """:class:`~synthdet.engines.base.Engine` on onnxruntime (CPU): detectors score as :class:`GraphDetector`
    (``config.threads`` intra-op threads)."""

    def features(
        self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: Unpack[ForwardOptions],
    ) -> Iterator[FeatureBatch]:
        raise ValueError("an exported graph gives probabilities, not features: extract with the local or ray engine")

    def load(self, detector: str | Path | None = None) -> GraphDetector:
        return load_graph(detector, threads=self.config.threads)


def load_graph(detector: str | Path | None = None, *, threads: int | None = None) -> GraphDetector:
    """A detector folder (``None``: the shipped default) or an exported ``.onnx`` file, ready to score with
    onnxruntime. The folder's files are checked against its card first (a damaged one is an error naming it)."""
    path = Path(detector) if detector is not None else default_detector_path()
    if path.is_file() and path.suffix.lower() == ".onnx":
        return GraphDetector.load(path, threads=threads)
    card = read_card(path)
    check_files(path, card)
    if not isinstance(card, Card):
        raise ValueError(f"{path}: a {card.kind} detector has no single ONNX graph; score it with --runtime torch")
    return GraphDetector.load(_graph_file(path, card), card, threads=threads)


def _graph_file(folder: Path, card: Card) -> Path:
    """The folder's graph, exported now (once) when there is none."""
    places = graph_places(folder, card)
    for place in places:
        if place.is_file():
            return place
    require("torch", "exporting this detector to ONNX once (its folder has no graph)")
    from synthdet.detectors.loading import load_detector
    from synthdet.engines.onnx_export import export_onnx

    det = load_detector(folder)
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            return export_onnx(det, place)  # type: ignore[arg-type]
        except OSError:  # read-only (EACCES, EROFS) or taken: the next place
            continue
    raise PermissionError(f"{folder}: cannot write its ONNX graph beside it or in {places[1].parent}")
