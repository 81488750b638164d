"""The one place that turns a detector folder into a runnable detector, whatever its kind."""

from __future__ import annotations

from pathlib import Path

from synthdet.detectors.card import DETECTOR_KINDS, check_files, default_detector_path, read_card
from synthdet.detectors.detector import Detector
from synthdet.detectors.ensemble import EnsembleDetector


def load_detector(path: str | Path | None = None) -> Detector | EnsembleDetector:
    """Load a saved detector of any kind; ``None`` loads the default detector shipped inside the package.

    The card's ``kind`` picks the loader :data:`~synthdet.detectors.card.DETECTOR_KINDS` registers: a probe or
    fine-tuned folder gives a :class:`Detector`, an ensemble an :class:`EnsembleDetector` (same ``card``,
    ``threshold``, ``predict_paths``, ``score`` and ``assess``), a Task B localizer its localizer. A folder missing a
    file its kind needs, or holding one whose sha256 is not the card's, is an error naming the file, before anything
    is loaded."""
    path = Path(path) if path is not None else default_detector_path()
    card = read_card(path)
    check_files(path, card)
    det = DETECTOR_KINDS.get(card.kind)(path)
    det.card._folder = path  # where its seen rows' tile index is read from, when asked (never to score)
    return det  # type: ignore[no-any-return]
