"""Ensembles of saved detectors, themselves a saved detector (Li 2025, ``seeds/002``: runs #8 and #9).

Rules, over the members' probabilities of being generated (:func:`combine`):

- ``mean``: weighted mean of the probabilities (weights given, or equal);
- ``majority``: each member votes "generated" when its probability reaches *its own* calibrated threshold; the
  output is the (weighted, default equal) fraction of votes for "generated" — Li's run #8;
- ``weighted-majority``: the same vote, each member weighted by its F1 on its held-out split (``card.metrics['val']
  ['at_threshold']['f1']``, or the cross-validation mean F1 of a detector refitted on everything) — run #9, which
  weighted by test-set F1; synthdet never looks at test labels.

Ties: a vote split exactly in half scores 0.5, and synthdet decides ``score >= threshold`` everywhere, so at the
plain-majority threshold 0.5 a tie counts as *generated* (a missed fake is the costlier error when triaging
misinformation). The saved ensemble does not keep 0.5: its threshold is the F1-optimal one on the calibration data
(``--calib``), which for a vote is the F1-optimal vote quota (ties prefer the higher quota, as in
:func:`~synthdet.detectors.calibrate.f1_optimal_threshold`). Calibration images must be unseen by the members (e.g. their
shared held-out ``val`` split); the card counts, per member, calibration images found in that member's
``manifest.csv`` outside its ``val`` split, and the command warns when there are any.

On disk an ensemble is a folder with ``card.json`` (``kind: "ensemble"``, rule, weights, members, threshold,
calibration metrics) and ``members/`` holding a copy of every member folder, so it is self-contained;
:meth:`synthdet.detectors.detector.Detector.load` returns an :class:`EnsembleDetector` for it. Members on the same backbone
(name, weights and preprocessing) share one forward pass per image.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np

from synthdet.backbones.base import Backbone
from synthdet.detectors.assess import Scorable
from synthdet.detectors.card import (
    DETECTOR_KINDS,
    Card,
    EnsembleCard,
    NotADetectorError,
    Rule,
    check_files,
    read_card,
    save_card,
)
from synthdet.detectors.detector import Detector
from synthdet.features.extract import ImageTransform, assemble_features, forward_files
from synthdet.io.pixels import DEFAULT_MAX_PIXELS

RULES: tuple[str, ...] = get_args(Rule)


def combine(
    probs: np.ndarray, thresholds: Sequence[float] | np.ndarray, rule: str, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Ensemble scores ``[n]`` from member probabilities ``[n, m]``; a row with a NaN (a member could not score the
    image) gives NaN. ``thresholds`` are the members' own, used by the votes; ``weights`` default to equal, except
    for ``weighted-majority``, which needs them (the members' validation F1)."""
    probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    m = probs.shape[1]
    w = _weights(m, rule, weights)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (m,):
        raise ValueError(f"need {m} member thresholds, got {len(thr)}")
    scores = probs if rule == "mean" else (probs >= thr).astype(np.float64)
    out = scores @ w / w.sum()
    out[np.isnan(probs).any(axis=1)] = np.nan
    return out


def _check_rule(rule: str) -> Rule:
    """``rule`` as a :data:`Rule` (CLI and recipe rules arrive as plain strings), or a ValueError naming the rules."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose from {', '.join(RULES)}")
    return cast(Rule, rule)


def _weights(m: int, rule: str, weights: Sequence[float] | None) -> np.ndarray:
    _check_rule(rule)
    if weights is None and rule == "weighted-majority":
        raise ValueError("weighted-majority needs weights (each member's validation F1)")
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {m} non-negative weights with a positive sum, got {list(w)}")
    return w


def validation_f1(card: Card) -> float:
    """A member's honest F1 at its own threshold: on its held-out split, or the CV mean of a refit-on-all detector."""
    if "val" in card.metrics:
        return float(card.metrics["val"]["at_threshold"]["f1"])
    if "cv" in card.metrics:
        return float(card.metrics["cv"]["mean"]["f1"])
    raise ValueError(f"{card.backbone} + {card.head}: its card has no validation F1 (metrics 'val' or 'cv') to "
                     f"weight by")


class EnsembleDetector(Scorable):
    """Saved detectors combined by a rule, with the interface of :class:`~synthdet.detectors.detector.Detector` that scoring
    uses: ``card``, ``threshold``, ``backbone``, ``predict_paths``."""

    def __init__(self, card: EnsembleCard, members: Sequence[Detector], member_dirs: Sequence[Path]) -> None:
        self.card = card
        self.members = list(members)
        self.member_dirs = [Path(d) for d in member_dirs]
        groups: dict[tuple, list[int]] = {}
        for j, m in enumerate(self.members):
            c = m.card
            key = (c.backbone, c.weights_id, c.weights_file, c.preprocess.model_dump_json(), c.tap_pool)
            groups.setdefault(key, []).append(j)
        self.groups = list(groups.values())  # member indices sharing one forward pass

    @classmethod
    def from_members(
        cls, member_dirs: Sequence[str | Path], *, rule: str = "mean", weights: Sequence[float] | None = None
    ) -> EnsembleDetector:
        """Load the members; weights default to equal, or to the members' validation F1 for ``weighted-majority``.
        The threshold stays 0.5 (the plain rule) until :func:`build_ensemble` calibrates it."""
        dirs = [Path(d) for d in member_dirs]
        if len(dirs) < 2:
            raise ValueError("an ensemble needs at least two detectors")
        members = [load_member(d) for d in dirs]
        cards = [m.card for m in members]
        if weights is None:
            weights = [validation_f1(c) for c in cards] if rule == "weighted-majority" else [1.0] * len(members)
        card = EnsembleCard(
            rule=_check_rule(rule), names=[f"m{j}-{d.resolve().name}" for j, d in enumerate(dirs)],
            members=[str(d) for d in dirs],
            weights=_weights(len(dirs), rule, weights).tolist(), threshold=0.5,
            backbone="+".join(c.backbone for c in cards), weights_id="+".join(c.weights_id for c in cards),
            head=f"ensemble-{rule}", features="+".join(str(c.features) for c in cards),
        )
        return cls(card, members, dirs)

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @property
    def member_thresholds(self) -> list[float]:
        return [m.threshold for m in self.members]

    def combine(self, probs: np.ndarray) -> np.ndarray:
        """Ensemble scores from the members' probabilities ``[n, m]`` by this ensemble's rule (:func:`combine`)."""
        return combine(probs, self.member_thresholds, self.card.rule, self.card.weights)

    @property
    def backbone(self) -> Backbone:
        """The first member's backbone; loads (and checks the weights of) every member's, so callers fail early."""
        for group in self.groups:
            _ = self.members[group[0]].backbone
        return self.members[0].backbone

    def _group_rows(self, group: list[int], paths: Iterable[str], **kw: Any) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """Per file, in input order: the probabilities of the members sharing this group's backbone (one forward
        pass serves them all), or ``None`` and why the file failed."""
        taps = any(self.members[j].card.features == "concat" for j in group)
        for batch, rows, pooled, layers, errors in forward_files(self.members[group[0]].backbone, paths, taps=taps,
                                                                 desc="score", **kw):
            cols = np.stack([self.members[j].predict_features(assemble_features(pooled, layers, self.members[j].card.features))
                             for j in group], axis=1) if rows else None
            row_of = {j: r for r, j in enumerate(rows)}
            for j, path in enumerate(batch):
                yield (path, cast(np.ndarray, cols)[row_of[j]], "") if j in row_of else (path, None, errors[j])

    def _tables(
        self, paths: Iterable[str | Path], *, batch_size: int | None = None, num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS, chunk: int = 1024, progress: bool = False,
        transform: ImageTransform | None = None,
    ) -> Iterator[tuple[list[str], np.ndarray, dict[int, str]]]:
        """Per ``chunk`` files: the members' probabilities ``[n, m]`` (NaN where a file failed) and the failures.
        Each backbone group streams the files through one long-lived worker pool; ``chunk`` only sizes the tables."""
        kw = {"batch_size": batch_size, "num_workers": num_workers, "max_pixels": max_pixels, "progress": progress,
              "transform": transform}
        streams = itertools.tee(map(str, paths), len(self.groups))  # the groups advance together: bounded buffer
        per_file = zip(*(self._group_rows(g, s, **kw) for g, s in zip(self.groups, streams)))
        while rows := list(itertools.islice(per_file, chunk)):
            table = np.full((len(rows), len(self.members)), np.nan)
            errors: dict[int, str] = {}
            for i, per_group in enumerate(rows):
                for group, (_, probs, reason) in zip(self.groups, per_group):
                    if probs is None:
                        errors.setdefault(i, reason)
                    else:
                        table[i, group] = probs
            yield [r[0][0] for r in rows], table, errors

    def member_probs(self, paths: Sequence[str | Path], **kw: Any) -> np.ndarray:
        """Every member's probability for every path, ``[n, m]`` (NaN rows: files that cannot be scored); ``kw`` as
        :meth:`predict_paths`. For calibration and benchmarks: any rule applies to it through :func:`combine`."""
        tables = [t for _, t, _ in self._tables(paths, **kw)]
        return np.concatenate(tables) if tables else np.empty((0, len(self.members)))

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
        """As :meth:`Detector.predict_paths`: ``(path, ensemble score, "")`` or ``(path, None, reason)``, in order."""
        for batch, table, errors in self._tables(paths, batch_size=batch_size, num_workers=num_workers,
                                                 max_pixels=max_pixels, chunk=chunk, progress=progress,
                                                 transform=transform):
            scores = combine(table, self.member_thresholds, self.card.rule, self.card.weights)
            for i, path in enumerate(batch):
                ok = np.isfinite(scores[i])
                yield (path, float(scores[i]), "") if ok else (path, None, errors.get(i, "unknown error"))

    def save(self, path: str | Path, *, copy_members: bool = True) -> Path:
        """Write ``card.json``; members are copied into ``members/`` (self-contained) or referenced by absolute path."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        refs = []
        for name, src in zip(self.card.names, self.member_dirs):
            if not copy_members:
                refs.append(str(src.resolve()))
                continue
            dst = path / "members" / name
            if src.resolve() != dst.resolve():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            refs.append(dst.relative_to(path).as_posix())
        self.card.members = refs
        save_card(self.card, path)
        return path


def load_member(path: Path) -> Detector:
    """A saved single detector (probe or fine-tuned); an ensemble cannot be a member."""
    card = read_card(path)
    if card.kind not in ("probe", "finetuned"):
        raise ValueError(f"{path}: an ensemble member must be a single detector, not an ensemble")
    check_files(path, card)
    det = DETECTOR_KINDS.get(card.kind)(path)
    if not isinstance(det, Detector):
        raise ValueError(f"{path}: an ensemble member must be a single detector, not an ensemble")
    det.card._folder = path  # its seen rows' tile index (provenance), read when asked
    return det


def load_ensemble(path: str | Path) -> EnsembleDetector:
    """The ensemble saved in ``path`` and its members (the loader :data:`~synthdet.detectors.detector.DETECTOR_KINDS` registers
    for ``kind: "ensemble"``)."""
    path = Path(path)
    card = read_card(path)
    if not isinstance(card, EnsembleCard):
        raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not an ensemble")
    dirs = [path / m for m in card.members]  # an absolute member path stays absolute
    return EnsembleDetector(card, [load_member(d) for d in dirs], dirs)
