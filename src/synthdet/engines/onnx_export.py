"""A probe or fine-tuned detector as one ONNX graph (backbone + feature assembly + head), for onnxruntime
(:class:`~synthdet.detectors.graph.GraphDetector`) or any runtime that reads ONNX. Needs torch and onnx: the
training install makes graphs, the scoring install runs them.

The graph takes the *preprocessed* batch ``x`` (``float32 [B, 3, H, W]``: :meth:`Preprocess.to_array` stacked) and
gives ``logit`` (``[B]``, the head's raw logit) and ``prob`` (``[B]``, with the card's sigmoid calibration applied;
an isotonic one is not in the graph: ``calibration_in_graph`` says so). The batch axis is dynamic; so are ``H``/``W``
when the card's preprocessing keeps images at their native scale (``scale="native"``). Metadata
(``metadata_props``): ``card`` (the detector's card JSON: threshold, preprocessing, calibration …), ``preprocess``
(its chain alone, for other runtimes), ``calibration_in_graph``.

Heads: ``logreg`` becomes standardisation + a linear layer from its fitted scaler and coefficients; torch heads
(``mlp`` …) export their network. Ensembles and other heads are refused (one line, why).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from synthdet.backbones.base import Backbone
from synthdet.detectors.detector import Detector
from synthdet.extras import require
from synthdet.heads.logreg import LogisticHead
from synthdet.heads.mlp import TorchProbe
from synthdet.io.atomic import atomic_path


class _LogisticLinear(nn.Module):
    """A fitted :class:`LogisticHead` as tensors: ``(x - mean) / scale`` then ``x @ coef + intercept`` (the logit)."""

    def __init__(self, head: LogisticHead) -> None:
        super().__init__()
        state = head.state()
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", state["mean"].float())
        self.register_buffer("scale", state["scale"].float())
        self.linear = nn.Linear(len(state["coef"]), 1)
        with torch.no_grad():
            self.linear.weight.copy_(state["coef"].float()[None])
            self.linear.bias.copy_(state["intercept"].float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.scale)


class DetectorGraph(nn.Module):
    """Preprocessed pixels → (calibrated probability, raw logit): what :meth:`Detector.predict_paths` runs after
    decoding."""

    def __init__(self, det: Detector) -> None:
        super().__init__()
        card = det.card
        self.backbone: Backbone = det.backbone.cpu().eval()
        self.concat = card.features == "concat"
        if isinstance(det.head, LogisticHead):
            self.head: nn.Module = _LogisticLinear(det.head)
        elif isinstance(det.head, TorchProbe):
            self.head = det.head.net_.cpu().eval()
        else:
            raise ValueError(f"head {card.head!r} has no ONNX export (logreg and torch heads do)")
        cal = card.calibration
        self.calibrate = cal is not None and cal.method == "sigmoid"
        self.a, self.b = (cal.a, cal.b) if cal is not None and self.calibrate else (1.0, 0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, layers = self.backbone(x, taps=self.concat)
        feats = torch.cat([pooled, *layers], dim=1) if self.concat else pooled
        logit = self.head(feats).reshape(-1)
        return torch.sigmoid(self.a * logit + self.b if self.calibrate else logit), logit


def export_onnx(det: Detector, dest: str | Path, *, opset: int = 17) -> Path:
    """Write ``det`` as one ONNX graph to ``dest`` (atomically, tracer warnings silenced); see the module docstring
    for its contract."""
    onnx = require("onnx", "ONNX export")
    if not isinstance(det, Detector):
        raise ValueError("only probe and fine-tuned detectors export to ONNX (an ensemble: export each member)")
    card = det.card
    graph = DetectorGraph(det).eval()  # export restores the mode it found: train mode would stay on the backbone
    pre = card.preprocess
    native = pre.scale == "native"
    axes = {0: "batch", 2: "height", 3: "width"} if native else {0: "batch"}
    example = torch.zeros(2, 3, pre.size, pre.size)
    dest = Path(dest)
    with atomic_path(dest) as tmp, torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic: the graph is checked against torch
        torch.onnx.export(graph, (example,), str(tmp), input_names=["x"], output_names=["prob", "logit"],
                          dynamic_axes={"x": axes, "prob": {0: "batch"}, "logit": {0: "batch"}},
                          opset_version=opset, dynamo=False)
        model = onnx.load(str(tmp))
        meta = {"card": card.model_dump_json(), "preprocess": pre.model_dump_json(),
                "calibration_in_graph": "1" if graph.calibrate or card.calibration is None else "0",
                "producer": "synthdet"}
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))
    return dest


def max_abs_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Largest |a - b| over rows both scored (parity checks)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return float(max((abs(x - y) for x, y in pairs), default=0.0))


def card_json(path: str | Path) -> dict[str, Any]:
    """The card stored in an exported file's metadata."""
    onnx = require("onnx", "reading an exported detector")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return cast(dict[str, Any], json.loads(props["card"]))
