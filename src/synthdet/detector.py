"""The saved, self-describing unit users pass around: backbone id + preprocessing + head + threshold + card.

On disk a detector is a folder: ``card.json`` (a small model card: everything needed to rebuild it and judge it)
and ``head.safetensors`` (the head's tensors; no pickle, safe to load from strangers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file, save_file

from . import __version__
from .backbones import Backbone, create_backbone
from .features import ImageTransform, forward_batches
from .heads import head_from_state
from .pixels import DEFAULT_MAX_PIXELS
from .pixels import Preprocess

if TYPE_CHECKING:
    from .ensemble import EnsembleDetector

FeatureKind = Literal["pooled", "concat"]


class Card(BaseModel):
    """The model card: JSON, human-readable, enough to rebuild the detector and to judge it."""

    model_config = ConfigDict(extra="allow")

    synthdet_version: str = __version__
    backbone: str
    weights_id: str
    weights_file: str | None = None
    preprocess: Preprocess
    features: FeatureKind = "pooled"
    head: str
    head_params: dict[str, Any] = {}
    n_features: int
    threshold: float
    prior: float = 0.5  # probability reported for an image that cannot be scored (fraction of fakes seen)
    metrics: dict[str, Any] = {}
    data: dict[str, Any] = {}
    created: str = ""


def assemble_features(pooled: np.ndarray | torch.Tensor, layers: list, kind: FeatureKind) -> np.ndarray:
    """The head's input: pooled features, or pooled and every layer tap concatenated (multi-scale evidence)."""
    parts = [pooled, *layers] if kind == "concat" else [pooled]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)


class Detector:
    """``Detector.load(path).predict_paths(paths)`` — the library entry point for scoring images."""

    def __init__(self, card: Card, head: Any, backbone: Backbone | None = None) -> None:
        self.card = card
        self.head = head
        self._backbone = backbone

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            bb = create_backbone(self.card.backbone, weights=self.card.weights_file, preprocess=self.card.preprocess)
            if bb.weights_id != self.card.weights_id:
                raise ValueError(
                    f"detector was trained on {self.card.backbone} weights {self.card.weights_id}, this machine has "
                    f"{bb.weights_id}: features would not match. Pass the original weights file."
                )
            self._backbone = bb
        return self._backbone

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.card.created = self.card.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        save_file(self.head.state(), str(path / "head.safetensors"))
        tmp = path / "card.json.tmp"
        tmp.write_text(json.dumps(self.card.model_dump(mode="json"), indent=2))
        tmp.replace(path / "card.json")
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> Detector | EnsembleDetector:
        """Load a saved detector; ``None`` loads the default detector shipped inside the package. An ensemble folder
        gives an :class:`~synthdet.ensemble.EnsembleDetector`: same ``card``, ``threshold`` and ``predict_paths``."""
        path = Path(path) if path is not None else default_detector_path()
        card_file = path / "card.json"
        if not card_file.is_file():
            raise FileNotFoundError(f"{path}: not a synthdet detector (no card.json)")
        if json.loads(card_file.read_text()).get("kind") == "ensemble":  # saved detectors combined by a rule
            from .ensemble import load_ensemble

            return load_ensemble(path)
        if (path / "backbone.safetensors").is_file():  # fine-tuned: base backbone + tuned tensors
            from .finetune import load_finetuned

            return load_finetuned(path)
        return cls._load_plain(path)

    @classmethod
    def _load_plain(cls, path: Path) -> Detector:
        card = Card.model_validate_json((path / "card.json").read_text())
        head = head_from_state(card.head, card.head_params, load_file(str(path / "head.safetensors")), card.n_features)
        return cls(card, head)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(X)[:, 1]

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        chunk: int = 1024,
        progress: bool = False,
        transform: ImageTransform | None = None,
    ) -> Iterator[tuple[str, float | None, str]]:
        """Yield ``(path, probability of being generated, "")`` or ``(path, None, reason)``, in input order.

        Paths are consumed in chunks, so memory stays bounded however many files are scored. ``transform`` alters
        the decoded pixels first (robustness slices: JPEG, resize, crop …).
        """
        it = iter(paths)
        while batch := [str(p) for _, p in zip(range(chunk), it)]:
            items = [(p, p, [0]) for p in batch]
            probs: dict[int, float] = {}
            errors: dict[int, str] = {}
            for pairs, pooled, layers, errs in forward_batches(
                self.backbone, items, taps=self.card.features == "concat", batch_size=batch_size,
                num_workers=num_workers, max_pixels=max_pixels, desc="score", progress=progress, transform=transform,
            ):
                errors.update(errs)
                if pairs:
                    p = self.predict_features(assemble_features(pooled, layers, self.card.features))
                    probs.update({i: float(v) for (i, _), v in zip(pairs, p)})
            for i, path in enumerate(batch):
                yield (path, probs[i], "") if i in probs else (path, None, errors.get(i, "unknown error"))


def default_detector_path() -> Path:
    return Path(str(resources.files("synthdet") / "pretrained" / "default"))
