"""The one place that turns a detector folder into a runnable detector, whatever its kind."""

from __future__ import annotations

from pathlib import Path

from synthdet.detectors.card import DETECTOR_KINDS, default_detector_path, read_card, verify_files
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
    kind = card.kind
    for name in DETECTOR_KINDS.meta(kind)["files"]:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: a {kind} detector without {name}; copy the whole folder")
    verify_files(path, card)
    return DETECTOR_KINDS.get(kind)(path)  # type: ignore[no-any-return]
