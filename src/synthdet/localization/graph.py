"""A Task B localizer scored from its ONNX graph with onnxruntime: the scoring install (no torch) gets the same maps,
image-level decision and words as :class:`~synthdet.localization.models.Localizer`.

The graph (``graph-localizer.onnx`` beside ``model.safetensors``, its sha256 on the card) maps a ``(1, 3, H, W)``
input in [-1, 1], ``H`` and ``W`` multiples of :data:`~synthdet.localization.card.STRIDE`, to logits of the same
size; padding, the sigmoid and resizing back happen here in numpy, as :func:`~synthdet.localization.models.predict_map`
does them in torch. :func:`open_localizer` picks the graph when the folder has one (the shipped localizer does), torch
otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthdet.detectors.card import NotADetectorError, check_files, read_card
from synthdet.extras import available, require
from synthdet.localization.card import STRIDE, LocalizerCard
from synthdet.localization.decision import decision_score, default_localizer_path, maps_for, summarise

#: The graph's file name in a localizer folder.
GRAPH = "graph-localizer.onnx"


def export_graph(net: Any, folder: str | Path, *, opset: int = 17) -> Path:
    """Write ``net`` (a torch localizer network, logits out) as ``folder/graph-localizer.onnx`` with dynamic height
    and width; save the card after it so the card records its digest."""
    import torch

    dest = Path(folder) / GRAPH
    x = torch.zeros(1, 3, 4 * STRIDE, 4 * STRIDE)
    torch.onnx.export(net.eval(), (x,), str(dest), input_names=["x"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"x": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}},
                      dynamo=False)
    return dest


class GraphLocalizer:
    """A localizer folder's graph on onnxruntime (CPU), with the card's thresholds and image-level head."""

    def __init__(self, card: LocalizerCard, graph: Path, threads: int | None = None) -> None:
        ort = require("onnxruntime", "Scoring a localizer without torch")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.card = card
        self.session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def predict_image(self, img: Image.Image) -> np.ndarray:
        """Probability map (H, W) float32 at the image's own size (downscaled past ``max_side``, padded by
        reflection to a multiple of the stride, cropped and resized back)."""
        w, h = img.size
        work = img.convert("RGB")
        if max(w, h) > self.card.max_side:
            f = self.card.max_side / max(w, h)
            work = work.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
        x = np.asarray(work, dtype=np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        hh, ww = x.shape[-2:]
        ph, pw = (-hh) % STRIDE, (-ww) % STRIDE
        if ph or pw:
            pad = ((0, 0), (0, 0), (0, ph), (0, pw))
            x = np.pad(x, pad, mode="reflect") if min(hh, ww) > max(ph, pw) else np.pad(x, pad, mode="edge")
        (logits,) = self.session.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})
        prob = (1.0 / (1.0 + np.exp(-logits[0, 0, :hh, :ww].astype(np.float64)))).astype(np.float32)
        if (hh, ww) != (h, w):
            prob = np.asarray(Image.fromarray(prob, mode="F").resize((w, h), Image.Resampling.BILINEAR))
        return prob

    def score_map(self, prob: np.ndarray) -> float:
        """The image-level score; the graph path carries the learned head only (what the shipped localizer uses)."""
        head = self.card.params.get("decision")
        if self.card.image_score != "learned" or head is None:
            raise ValueError(f"a localizer scored by {self.card.image_score} needs torch's metrics; "
                             "pip install 'synthdet[train]'")
        return decision_score(prob, head)

    def summary(self, prob: np.ndarray) -> dict[str, Any]:
        return summarise(prob, self.score_map(prob), self.threshold, self.card.loc_threshold)

    def predict_masks(self, paths: Iterable[str | Path]) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """``(path, map or None, reason)`` per file; an unreadable file gets its load-error reason."""
        return maps_for(self.predict_image, paths)


def load_graph_localizer(path: str | Path | None = None, *, threads: int | None = None) -> GraphLocalizer:
    """The localizer folder ``path`` (None: the shipped one) scored from its graph; its files checked first."""
    path = Path(path) if path is not None else default_localizer_path()
    card = read_card(path)
    if not isinstance(card, LocalizerCard):
        raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not a localizer")
    check_files(path, card)
    if not (path / GRAPH).is_file():
        raise FileNotFoundError(f"{path}: no {GRAPH}; without torch a localizer needs its ONNX graph "
                                "(pip install 'synthdet[train]' to run it on torch)")
    return GraphLocalizer(card, path / GRAPH, threads)


def open_localizer(path: str | Path | None = None, device: str | None = None, runtime: str = "auto") -> Any:
    """A localizer ready to predict (None: the shipped one). ``auto`` scores the folder's ONNX graph when it has one
    and no ``device`` is asked for (as the Task A default: no torch import, a fast start), else runs on torch;
    ``torch`` or ``onnx`` force one. Without torch, the graph or a one-line error naming the extra."""
    if runtime not in ("auto", "torch", "onnx"):
        raise ValueError(f"runtime {runtime!r}: auto, torch or onnx")
    folder = Path(path) if path is not None else default_localizer_path()
    graph = runtime == "onnx" or (runtime == "auto" and device is None and (folder / GRAPH).is_file())
    if graph or not available("torch"):
        return load_graph_localizer(folder)
    from synthdet.backbones.base import default_device
    from synthdet.localization.models import load_localizer

    return load_localizer(folder, default_device(device))
