"""The probe detector: a frozen backbone's features and a small head, with the card that describes them.

``Detector`` scores files (:meth:`Detector.predict_paths`, streamed through one worker pool), decoded images
(:meth:`Detector.score`) and explains one image (:meth:`Detector.assess`). Loading a folder of any kind goes through
:func:`synthdet.detectors.loading.load_detector`; a fine-tuned detector is this class over its tuned backbone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.detectors.assess import Scorable
from synthdet.detectors.calibrate import calibrated
from synthdet.detectors.card import Card, NotADetectorError, read_card, save_card
from synthdet.features.extract import ImageTransform, assemble_features, forward_files
from synthdet.heads.base import head_from_state, head_logit
from synthdet.io.atomic import atomic_path
from synthdet.io.pixels import DEFAULT_MAX_PIXELS


class Detector(Scorable):
    """``load_detector(path).predict_paths(paths)`` — the library entry point for scoring images."""

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
            bb = create_backbone(self.card.backbone, weights=self.card.weights_file, preprocess=self.card.preprocess,
                                 tap_pool=self.card.tap_pool)
            if bb.weights_id != self.card.weights_id:
                raise ValueError(
                    f"detector was trained on {self.card.backbone} weights {self.card.weights_id}, this machine has "
                    f"{bb.weights_id}: features would not match. Pass the original weights file."
                )
            self._backbone = bb
        return self._backbone

    def save(self, path: str | Path) -> Path:
        """Write ``head.safetensors`` and ``card.json``, each atomically."""
        path = Path(path)
        with atomic_path(path / "head.safetensors") as tmp:
            save_file(self.head.state(), str(tmp))
        save_card(self.card, path)
        return path

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Probabilities of being generated: the head's raw logit through the card's calibration when it has one."""
        z = head_logit(self.head, X)
        return calibrated(self.card.calibration, z)

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        transform: ImageTransform | None = None,
    ) -> Iterator[tuple[str, float | None, str]]:
        """Yield ``(path, probability of being generated, "")`` or ``(path, None, reason)``, in input order.

        ``paths`` may be a lazy stream of any length: one worker pool decodes it while the network runs, and only
        the files in flight are held (memory stays flat however many are scored). ``transform`` alters the decoded
        pixels first (robustness slices: JPEG, resize, crop …).
        """
        for batch, rows, pooled, layers, errors in forward_files(
            self.backbone, paths, taps=self.card.features == "concat", batch_size=batch_size,
            num_workers=num_workers, max_pixels=max_pixels, desc="score", progress=progress, transform=transform,
        ):
            probs = self.predict_features(assemble_features(pooled, layers, self.card.features)) if rows else ()
            prob_of = dict(zip(rows, map(float, probs)))
            for j, path in enumerate(batch):
                yield (path, prob_of[j], "") if j in prob_of else (path, None, errors[j])


def load_probe(path: Path) -> Detector:
    """The card and head of a probe or fine-tuned folder, without building the backbone (loaded on first use)."""
    card = read_card(path)
    if not isinstance(card, Card):
        raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not a features + head detector")
    head = head_from_state(card.head, card.head_params, load_file(str(path / "head.safetensors")), card.n_features)
    return Detector(card, head)
