"""Detector cards: the JSON that makes a detector folder self-describing, and the registry of detector kinds.

On disk a detector is a folder: ``card.json`` (a small model card: everything needed to rebuild it and judge it)
and its tensors as safetensors (no pickle, safe to load from strangers). The card is one of three kinds, told apart
by ``kind`` (a pydantic discriminated union, :data:`AnyCard`):

- ``probe``: a frozen backbone's features + a head (``head.safetensors``), :class:`Card`;
- ``finetuned``: the same plus ``backbone.safetensors``, the tuned tensors over the base backbone, :class:`FinetunedCard`;
- ``ensemble``: saved detectors combined by a rule (``members/``), :class:`EnsembleCard`;

and kinds whose card lives with their model (the Task B ``localizer``). :func:`read_card` upgrades version-1 cards,
written before ``kind`` existed. :data:`DETECTOR_KINDS` names, for each kind, the loader that turns a folder into a
runnable detector (by import path: this module imports no model code); :func:`synthdet.detectors.loading.load_detector`
is the one place that calls it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from synthdet.data.splits import RowSet
from synthdet.data.tilehash import SEEN_TILES, TileIndex
from synthdet.detectors.calibrate import Calibration
from synthdet.io.atomic import write_text
from synthdet.io.files import sha256_file
from synthdet.io.pixels import Preprocess
from synthdet.registry import Entry, Registry
from synthdet.version import __version__
from synthdet.vocabulary import FeatureKind, TapPool

Rule = Literal["mean", "majority", "weighted-majority"]

#: Version of the card format this synthdet writes; older cards are upgraded on load, newer ones refused.
SCHEMA_VERSION = 2


class NotADetectorError(ValueError):
    """A ``card.json`` that is not a synthdet detector card; the message is one line naming the file and why."""


class DamagedDetectorError(NotADetectorError):
    """A detector file whose bytes are not those its card records (altered, cut short, half-copied)."""


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
    #: sha256 of every file the folder holds for this card (its kind's tensors), written with the card and checked on
    #: load (:func:`check_files`): a damaged file is refused instead of served, and the detector id covers the weights
    files: dict[str, str] = {}
    #: the seen rows' tile index (:mod:`synthdet.data.tilehash`) of a model trained in this process, written beside
    #: the card as ``seen-tiles.npz`` by :func:`save_card`; and the folder a loaded card came from (to read it back)
    _tiles: TileIndex | None = PrivateAttr(default=None)
    _folder: Path | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        """Equal by their fields: where a card was read from, and a tile index in memory, are not the card."""
        if not isinstance(other, BaseModel):
            return NotImplemented
        return (type(self) is type(other) and self.__dict__ == other.__dict__
                and self.__pydantic_extra__ == other.__pydantic_extra__)


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
    """Write ``card.json`` atomically, stamping the creation time once and recording the sha256 of the kind's files
    and of its ONNX graphs (``graph-*.onnx``) already in ``folder`` (write the tensors and graph first, the card
    last: a folder without its card is no detector)."""
    card.created = card.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    kind = str(getattr(card, "kind", ""))
    if card._tiles is not None:
        card._tiles.save(folder / SEEN_TILES)
    names = [*(DETECTOR_KINDS.meta(kind)["files"] if kind in DETECTOR_KINDS else ()),
             *sorted(p.name for p in folder.glob("graph-*.onnx")), SEEN_TILES]
    card.files = {name: sha256_file(folder / name) for name in names if (folder / name).is_file()}
    write_text(folder / "card.json", json.dumps(card.model_dump(mode="json"), indent=2) + "\n")


def check_files(folder: str | Path, card: CardBase) -> None:
    """Every file the card's kind needs is in ``folder`` (``FileNotFoundError`` naming the first missing), and each
    file the card records has the bytes it had when the card was written (:class:`DamagedDetectorError`, one line).
    Cards written before digests were recorded have none to check. The seen rows' tile index is not needed to score
    (a scoring install may leave it out): it is checked where it is read (:func:`read_seen_tiles`)."""
    folder = Path(folder)
    kind = str(getattr(card, "kind", ""))
    for name in DETECTOR_KINDS.meta(kind)["files"] if kind in DETECTOR_KINDS else ():
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: a {kind} detector without {name}; copy the whole folder")
    for name, digest in card.files.items():
        if name == SEEN_TILES:
            continue
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; its card records it: copy the whole detector folder")
        if sha256_file(path) != digest:
            raise DamagedDetectorError(f"{path}: not the file its card records (sha256 differs: altered or cut "
                                       "short); copy the detector folder again")


def read_seen_tiles(card: CardBase) -> TileIndex | None:
    """The tile index of the images a card's model has seen: the one trained in this process, else the card's
    ``seen-tiles.npz`` (its sha256 checked); None for a card without one (trained before it existed)."""
    if card._tiles is None and card._folder is not None and SEEN_TILES in card.files:
        path = card._folder / SEEN_TILES
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; its card records it (the rows the detector has seen): copy the "
                                    "whole detector folder")
        if sha256_file(path) != card.files[SEEN_TILES]:
            raise DamagedDetectorError(f"{path}: not the file its card records (sha256 differs)")
        card._tiles = _load_tiles(str(path), card.files[SEEN_TILES])
    return card._tiles


@lru_cache(maxsize=4)
def _load_tiles(path: str, digest: str) -> TileIndex:
    """One load per index file and content (the shipped default's takes seconds): every detector loaded from it in
    this process shares it; ``digest`` keys the content, so a replaced file is read again."""
    return TileIndex.load(path)


def seen_tiles(detector: Any) -> TileIndex | None:
    """The tile index of every image a detector (an ensemble: its members and its own calibration rows) has seen;
    None when no card has one."""
    parts = [read_seen_tiles(detector.card), *(seen_tiles(m) for m in getattr(detector, "members", None) or [])]
    known = [p for p in parts if p is not None]
    return None if not known else known[0] if len(known) == 1 else TileIndex.join(known)


def default_detector_path() -> Path:
    """The default detector shipped inside the package."""
    return Path(str(resources.files("synthdet") / "pretrained" / "default"))


DETECTOR_KINDS: Registry[Callable[[Path], Any]] = Registry("detector kind")
"""Loader of a detector folder by its card's ``kind``: ``loader(folder) -> detector``; metadata ``files``: what the
folder must hold besides ``card.json``; ``card``: the card class of a kind defined outside this module."""
DETECTOR_KINDS.add("probe", "synthdet.detectors.detector:load_probe", files=("head.safetensors",))
DETECTOR_KINDS.add("finetuned", "synthdet.training.finetune:load_finetuned", files=("head.safetensors", "backbone.safetensors"))
DETECTOR_KINDS.add("ensemble", "synthdet.detectors.ensemble:load_ensemble", files=())
DETECTOR_KINDS.add("localizer", "synthdet.localization.models:load_localizer", files=("model.safetensors",),
                   card="synthdet.localization.card:LocalizerCard")
