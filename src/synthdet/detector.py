"""The saved, self-describing unit users pass around: backbone id + preprocessing + head + threshold + card.

On disk a detector is a folder: ``card.json`` (a small model card: everything needed to rebuild it and judge it)
and its tensors as safetensors (no pickle, safe to load from strangers). The card is one of three kinds, told apart
by ``kind`` (a pydantic discriminated union, :data:`AnyCard`):

- ``probe``: a frozen backbone's features + a head (``head.safetensors``), :class:`Card`;
- ``finetuned``: the same plus ``backbone.safetensors``, the tuned tensors over the base backbone, :class:`FinetunedCard`;
- ``ensemble``: saved detectors combined by a rule (``members/``), :class:`EnsembleCard`.

:meth:`Detector.load` reads the card (:func:`read_card`: version-1 cards, written before ``kind`` existed, are
upgraded) and hands the folder to the loader :data:`DETECTOR_KINDS` registers for its kind; the fine-tuned and
ensemble loaders are registered by import path, so this module imports neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_path, write_text
from .backbones import Backbone, TapPool, create_backbone
from .calibrate import Calibration
from .features import ImageTransform, forward_files
from .heads import head_from_state
from .pixels import DEFAULT_MAX_PIXELS, Preprocess
from .registry import Entry, Registry
from .splits import RowSet

if TYPE_CHECKING:
    from .assess import Assessment
    from .ensemble import EnsembleDetector

FeatureKind = Literal["pooled", "concat"]
Rule = Literal["mean", "majority", "weighted-majority"]

#: Version of the card format this synthdet writes; older cards are upgraded on load, newer ones refused.
SCHEMA_VERSION = 2


class NotADetectorError(ValueError):
    """A ``card.json`` that is not a synthdet detector card; the message is one line naming the file and why."""


class CardBase(BaseModel):
    """Fields every detector card has: what it decides and how it was judged."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    synthdet_version: str = __version__
    threshold: float
    prior: float = 0.5  # probability reported for an image that cannot be scored (fraction of fakes seen)
    metrics: dict[str, Any] = {}
    rows: dict[str, RowSet] = {}  # "fit", "calib": the images (content hashes) the model was fitted / calibrated on
    calibration: Calibration | None = None  # raw head probability → reported probability; threshold is on the latter
    data: dict[str, Any] = {}
    created: str = ""


class Card(CardBase):
    """A probe: a frozen backbone's features (pooled, or pooled + layer taps) and a head on them."""

    kind: Literal["probe"] = "probe"
    backbone: str
    weights_id: str
    weights_file: str | None = None
    preprocess: Preprocess
    tap_pool: TapPool = "mean"  # how block features were summarised (Backbone.with_tap_pool)
    features: FeatureKind = "pooled"
    head: str
    head_params: dict[str, Any] = {}
    n_features: int


class FinetunedCard(Card):
    """A fine-tuned network: the probe's fields (``weights_id`` is the tuned identity) and, as the extra field
    ``finetune``, the run's record (``base_weights_id``: the backbone the tuned tensors apply to; config, history)."""

    kind: Literal["finetuned"] = "finetuned"  # type: ignore[assignment]


class EnsembleCard(CardBase):
    """Saved detectors combined by a rule; ``backbone``/``weights_id``/``head``/``features`` summarise the members
    for reports that show any detector's card."""

    kind: Literal["ensemble"] = "ensemble"
    rule: Rule
    names: list[str]  # m<j>-<folder name>: table rows, metric keys, and the folder names under members/
    members: list[str]  # member folders; relative ones are inside the ensemble folder
    weights: list[float]
    backbone: str
    weights_id: str
    head: str
    features: str


AnyCard = Annotated[Card | FinetunedCard | EnsembleCard, Field(discriminator="kind")]
_CARDS: TypeAdapter[Card | FinetunedCard | EnsembleCard] = TypeAdapter(AnyCard)


def upgrade_card(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A card's JSON in the current schema. Version 1 had no ``kind``: a folder with ``backbone.safetensors`` held a
    fine-tuned network, ``"kind": "ensemble"`` an ensemble, anything else a probe."""
    version = raw.get("schema_version", 1)
    if not isinstance(version, int) or version < 1:
        raise NotADetectorError(f"{folder / 'card.json'}: not a synthdet detector card (schema_version {version!r})")
    if version > SCHEMA_VERSION:
        raise NotADetectorError(f"{folder / 'card.json'}: written by a newer synthdet (card schema {version}; this "
                                f"version reads up to {SCHEMA_VERSION}): upgrade synthdet")
    if version == 1:
        kind = "finetuned" if (folder / "backbone.safetensors").is_file() else "probe"
        raw = {**raw, "kind": raw.get("kind", kind), "schema_version": SCHEMA_VERSION}
    return raw


def _reasons(err: ValidationError, limit: int = 3) -> str:
    """pydantic's errors as short clauses: ``missing 'backbone', 'head'``, ``kind 'foo' unknown``, …"""
    missing: list[str] = []
    other: list[str] = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"][1:])  # the first element is the kind's variant
        if e["type"] == "union_tag_invalid":
            ctx = e.get("ctx", {})
            other.append(f"kind {ctx.get('tag')!r} unknown; kinds: {ctx.get('expected_tags')}")
        elif e["type"] == "missing":
            missing.append(repr(loc))
        else:
            other.append(f"{loc!r}: {e['msg']}")
    clauses = ([f"missing {', '.join(missing)}"] if missing else []) + other[:limit]
    return "; ".join(clauses) + (f"; and {len(other) - limit} more" if len(other) > limit else "")


def read_card(folder: str | Path) -> Card | FinetunedCard | EnsembleCard:
    """The card of a detector folder, upgraded to the current schema; :class:`NotADetectorError` (one line) for a
    ``card.json`` that is not a synthdet card, ``FileNotFoundError`` for a folder without one."""
    folder = Path(folder)
    file = folder / "card.json"
    if not file.is_file():
        raise FileNotFoundError(f"{folder}: not a synthdet detector (no card.json)")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotADetectorError(f"{file}: not a synthdet detector card (not JSON: {e})") from None
    if not isinstance(raw, dict):
        raise NotADetectorError(f"{file}: not a synthdet detector card (a JSON {type(raw).__name__}, not an object)")
    try:
        raw = upgrade_card(raw, folder)
        kind = str(raw.get("kind", ""))
        if kind in DETECTOR_KINDS and "card" in DETECTOR_KINDS.meta(kind):  # a kind whose card lives elsewhere
            return Entry(kind, DETECTOR_KINDS.meta(kind)["card"]).load().model_validate(raw)
        return _CARDS.validate_python(raw)
    except ValidationError as e:
        raise NotADetectorError(f"{file}: not a synthdet detector card ({_reasons(e)})") from None


def save_card(card: CardBase, folder: Path) -> None:
    """Write ``card.json`` atomically, stamping the creation time once."""
    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_text(folder / "card.json", json.dumps(card.model_dump(mode="json"), indent=2) + "\n")


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

    @classmethod
    def load(cls, path: str | Path | None = None) -> Detector | EnsembleDetector:
        """Load a saved detector of any kind; ``None`` loads the default detector shipped inside the package. An
        ensemble folder gives an :class:`~synthdet.ensemble.EnsembleDetector`: same ``card``, ``threshold`` and
        ``predict_paths``."""
        path = Path(path) if path is not None else default_detector_path()
        kind = read_card(path).kind
        for name in DETECTOR_KINDS.meta(kind)["files"]:
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path}: a {kind} detector without {name}; copy the whole folder")
        return DETECTOR_KINDS.get(kind)(path)

    @classmethod
    def _load_plain(cls, path: Path) -> Detector:
        """The card and head of a probe or fine-tuned folder, without building the backbone (loaded on first use)."""
        card = read_card(path)
        if not isinstance(card, Card):
            raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not a features + head detector")
        head = head_from_state(card.head, card.head_params, load_file(str(path / "head.safetensors")), card.n_features)
        return cls(card, head)

    def assess(self, source: Any, **kw: Any) -> Assessment:
        """A verdict in words with stability checks and evidence: :func:`synthdet.assess.assess_image`."""
        from .assess import assess_image

        return assess_image(self, source, **kw)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Probabilities of being generated: the head's, through the card's calibration when it has one."""
        prob = self.head.predict_proba(X)[:, 1]
        return self.card.calibration(prob) if self.card.calibration is not None else prob

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


def default_detector_path() -> Path:
    return Path(str(resources.files("synthdet") / "pretrained" / "default"))


DETECTOR_KINDS: Registry[Callable[[Path], Any]] = Registry("detector kind")
"""Loader of a detector folder by its card's ``kind``: ``loader(folder) -> detector``; metadata ``files``: what the
folder must hold besides ``card.json``."""
DETECTOR_KINDS.add("probe", Detector._load_plain, files=("head.safetensors",))
DETECTOR_KINDS.add("finetuned", "synthdet.finetune:load_finetuned", files=("head.safetensors", "backbone.safetensors"))
DETECTOR_KINDS.add("ensemble", "synthdet.ensemble:load_ensemble", files=())
DETECTOR_KINDS.add("localizer", "synthdet.localize:load_localizer", files=("model.safetensors",),
                   card="synthdet.localize:LocalizerCard")
