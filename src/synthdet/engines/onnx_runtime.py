"""A probe detector as one ONNX graph (backbone + feature assembly + head + sigmoid calibration), and scoring with
onnxruntime: CPU serving without torch's eager overhead, or any runtime that reads ONNX.

The graph takes the *preprocessed* batch ``x`` (``float32 [B, 3, H, W]``: :class:`~synthdet.io.pixels.Preprocess`
applied, as :meth:`Preprocess.__call__` returns it) and gives ``prob`` (``[B]``, the probability of being generated,
as :meth:`Detector.predict_features` reports it). The batch axis is dynamic; so are ``H``/``W`` when the card's
preprocessing keeps images at their native scale (``scale="native"``). Metadata (``metadata_props``): ``card`` (the
detector's card JSON: threshold, preprocessing, calibration …), ``preprocess`` (its chain alone, for other
runtimes), ``calibration_in_graph`` (``"1"``, or ``"0"`` for an isotonic calibration, applied after the graph).

Heads: ``logreg`` becomes standardisation + a linear layer + sigmoid from its fitted scaler and coefficients;
torch heads (``mlp`` …) export their network. Ensembles and other heads are refused (one line, why).
:class:`OnnxEngine` is the ``onnx`` engine (:mod:`synthdet.engines.base`): it loads detectors this way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Unpack, cast

import numpy as np
import torch
from torch import nn

from synthdet.backbones.base import Backbone
from synthdet.detectors.calibrate import logit
from synthdet.detectors.card import Card
from synthdet.detectors.detector import Detector
from synthdet.detectors.loading import load_detector
from synthdet.engines.base import Engine
from synthdet.extras import require
from synthdet.features.extract import FeatureBatch, ForwardOptions, Item, intra_op_threads, num_workers_default
from synthdet.heads.logreg import LogisticHead
from synthdet.heads.mlp import TorchProbe
from synthdet.io.atomic import atomic_path
from synthdet.io.files import default_cache_dir


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
    """Preprocessed pixels → probability, the computation :meth:`Detector.predict_paths` runs after decoding."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, layers = self.backbone(x, taps=self.concat)
        feats = torch.cat([pooled, *layers], dim=1) if self.concat else pooled
        logit = self.head(feats).reshape(-1)
        if self.calibrate:
            logit = self.a * logit + self.b
        return torch.sigmoid(logit)


def export_onnx(det: Detector, dest: str | Path, *, opset: int = 17) -> Path:
    """Write ``det`` as one ONNX graph to ``dest`` (atomically); see the module docstring for its contract."""
    onnx = require("onnx", "ONNX export")
    if not isinstance(det, Detector) or not isinstance(det.card, Card):
        raise ValueError("only probe and fine-tuned detectors export to ONNX (an ensemble: export each member)")
    card = det.card
    graph = DetectorGraph(det).eval()  # export restores the mode it found: train mode would stay on the backbone
    pre = card.preprocess
    native = getattr(pre, "scale", "resize") == "native"
    axes = {0: "batch", 2: "height", 3: "width"} if native else {0: "batch"}
    example = torch.zeros(2, 3, pre.size, pre.size)
    dest = Path(dest)
    with atomic_path(dest) as tmp, torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(graph, (example,), str(tmp), input_names=["x"], output_names=["prob"],
                          dynamic_axes={"x": axes, "prob": {0: "batch"}}, opset_version=opset, dynamo=False)
        model = onnx.load(str(tmp))
        meta = {"card": card.model_dump_json(), "preprocess": pre.model_dump_json(),
                "calibration_in_graph": "1" if graph.calibrate or card.calibration is None else "0",
                "producer": "synthdet"}
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp))
    return dest


class _OrtRunner:
    """What :func:`~synthdet.features.extract.forward_batches` needs of a backbone, backed by an onnxruntime session: the
    "pooled features" it returns are the graph's probabilities (one column), and there are no layer taps."""

    def __init__(self, session: Any, card: Card) -> None:
        self.session = session
        self.preprocess = card.preprocess
        self.device = torch.device("cpu")
        self.embed_dim = 1
        self.layer_dims: list[int] = []

    def __call__(self, x: torch.Tensor, *, taps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        (prob,) = self.session.run(["prob"], {"x": x.float().numpy()})
        return torch.from_numpy(prob)[:, None], []


class OnnxDetector(Detector):
    """A detector scored by onnxruntime: the same ``card``, ``threshold`` and ``predict_paths`` as :class:`Detector`
    (the same decoding and preprocessing), the network run from an exported graph."""

    def __init__(self, card: Card, session: Any, path: Path) -> None:
        super().__init__(card, head=None, backbone=cast(Backbone, _OrtRunner(session, card)))
        self.path = path
        self.in_graph = session.get_modelmeta().custom_metadata_map.get("calibration_in_graph", "1") == "1"

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int | None = None) -> OnnxDetector:  # type: ignore[override]
        """An exported ``.onnx`` file, or a detector folder (``None``: the shipped default) exported once into the
        cache (keyed by its card and head) and reused."""
        ort = require("onnxruntime", "--runtime onnx")
        path = Path(path) if path is not None else None
        if path is None or path.is_dir():
            path = cached_export(path)
        opts = ort.SessionOptions()
        # by default the cores the decoding workers leave free, as the torch path
        opts.intra_op_num_threads = threads or intra_op_threads(num_workers_default())
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        if "card" not in meta:
            raise ValueError(f"{path}: an ONNX file without a synthdet card in its metadata (export it with "
                             f"synthdet export DETECTOR --onnx FILE)")
        return cls(Card.model_validate_json(meta["card"]), session, path)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """``X`` holds the graph's probabilities already; an isotonic calibration (not in the graph) applies here."""
        prob = np.asarray(X, dtype=np.float64)[:, 0]
        cal = self.card.calibration
        return cal(logit(prob)) if cal is not None and not self.in_graph else prob


class OnnxEngine(Engine):
    """:class:`~synthdet.engines.base.Engine` on onnxruntime (CPU): detectors score as :class:`OnnxDetector` (the
    local engine's decoding, the network from an exported graph; ``config.threads`` intra-op threads)."""

    def features(
        self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: Unpack[ForwardOptions],
    ) -> Iterator[FeatureBatch]:
        raise ValueError("an exported graph gives probabilities, not features: extract with the local or ray engine")

    def load(self, detector: str | Path | None = None) -> OnnxDetector:
        return OnnxDetector.load(detector, threads=self.config.threads)


def cached_export(folder: Path | None) -> Path:
    """The ONNX export of a detector folder, made once per (card, head) content and kept in the cache dir."""
    det = load_detector(folder)
    if not isinstance(det, Detector):
        raise ValueError("only probe and fine-tuned detectors export to ONNX")
    src = Path(folder) if folder is not None else None
    from synthdet.detectors.card import default_detector_path

    src = src or default_detector_path()
    digest = hashlib.sha256()
    for name in sorted(p.name for p in src.glob("*.safetensors")) + ["card.json"]:
        digest.update(name.encode() + (src / name).read_bytes())
    dest = default_cache_dir().parent / "onnx" / f"{digest.hexdigest()[:20]}.onnx"
    return dest if dest.is_file() else export_onnx(det, dest)


def max_abs_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    """Largest |a - b| over rows both scored (parity checks)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return float(max((abs(x - y) for x, y in pairs), default=0.0))


def card_json(path: str | Path) -> dict[str, Any]:
    """The card stored in an exported file's metadata."""
    onnx = require("onnx", "reading an exported detector")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return cast(dict[str, Any], json.loads(props["card"]))
