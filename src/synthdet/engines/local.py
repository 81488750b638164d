"""The local engine: torch in this process, on the device the backbone is on.

Its feature pass is :func:`~synthdet.features.extract.forward_batches` (one pool of DataLoader workers decodes while the
network runs) and a saved detector scores through its own ``predict_paths``, the same loop. Streamed, resumable
output (``predict -o FILE --resume``), for this engine and the others: :mod:`synthdet.engines.stream`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Unpack

from synthdet.backbones.base import Backbone
from synthdet.detectors.detector import Detector
from synthdet.detectors.ensemble import EnsembleDetector
from synthdet.detectors.loading import load_detector
from synthdet.engines.base import Engine
from synthdet.features.extract import FeatureBatch, ForwardOptions, Item, forward_batches


class LocalEngine(Engine):
    """:class:`~synthdet.engines.base.Engine` on torch in this process (see the module docstring)."""

    def features(
        self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: Unpack[ForwardOptions],
    ) -> Iterator[FeatureBatch]:
        return forward_batches(backbone, items, taps=taps, **options)

    def load(self, detector: str | Path | None = None) -> Detector | EnsembleDetector:
        det = load_detector(detector)
        _ = det.backbone
        return det
