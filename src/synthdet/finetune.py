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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
import typer
from pydantic import BaseModel, ConfigDict, field_validator
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .augment import PRESETS, apply, get_augment
from .backbones import Backbone, create_backbone
from .calibrate import f1_optimal_threshold
from .data import ManifestError, index, three_way_split
from .detector import Card, Detector
from .evaluate import binary_metrics
from .features import num_workers_default
from .heads import TorchProbe, make_head, train_epoch
from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from .preprocess import Preprocess

Item = tuple[str | Path, int]
"""A training or validation image: path and label (0 real, 1 generated)."""


class FineTuneConfig(BaseModel):
    """Everything that decides the result; saved in the checkpoint (resume refuses a different one) and the card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unfreeze_blocks: int | Literal["all"] = 2  # last N tap blocks (+ what follows them); "all" or -1: everything
    head: Literal["fusion", "linear"] = "fusion"  # fusion: pooled + every block vector; linear: pooled only
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
    """Decoded, augmented, preprocessed training images; item i's randomness in epoch e is fixed by (seed, e, i)."""

    def __init__(self, items: Sequence[Item], pre: Preprocess, augment: str, seed: int, max_pixels: int) -> None:
        self.items = items
        self.pre = pre
        self.augment = augment
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, float] | None:
        path, label = self.items[i]
        aug_seed, view = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(2)
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


# ----------------------------------------------------------------------------------------------------------- main
def finetune(
    backbone: Backbone,
    train_items: Sequence[Item],
    val_items: Sequence[Item],
    cfg: FineTuneConfig | None = None,
    out_dir: str | Path = "finetune",
    resume: bool = True,
    *,
    weights_file: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> FineTuneResult:
    """Train ``cfg.head`` with the last ``cfg.unfreeze_blocks`` blocks of ``backbone``; keep the best epoch.

    The backbone is trained in place (no copy of a ViT-L is made): pass a fresh one. ``weights_file`` is the file
    it was built from, recorded in the detector card so :func:`load_finetuned` can rebuild it. ``resume`` continues
    a run in ``out_dir`` from its last completed epoch (refusing one with another config or other data); False
    starts over. ``on_epoch_end`` receives each epoch's record after its checkpoint is written.
    """
    cfg = cfg or FineTuneConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len({int(y) for _, y in val_items}) < 2:
        raise ValueError("validation items need both classes (0 real, 1 generated) to select by ROC AUC")
    base_weights_id = backbone.weights_id
    fingerprint = hashlib.sha256(json.dumps({
        "config": cfg.fingerprint(), "backbone": backbone.id,
        "train": [[str(p), int(y)] for p, y in train_items], "val": [[str(p), int(y)] for p, y in val_items],
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

    taps = cfg.head == "fusion"
    n_features = backbone.embed_dim + (sum(backbone.layer_dims) if taps else 0)
    head_params: dict[str, Any] = {"lr": cfg.head_lr, "weight_decay": cfg.weight_decay,
                                   "label_smoothing": cfg.label_smoothing, "seed": cfg.seed}
    if taps:
        head_params["layer_dims"] = [backbone.embed_dim, *backbone.layer_dims]
    head: TorchProbe = make_head(cfg.head, **{**head_params, **cfg.head_params})
    model = _Model(backbone, head.init_net(n_features).to(dev), taps)
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
        data.epoch = epoch
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(data)).tolist()
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=order, num_workers=workers, collate_fn=_collate)
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
    tuned = {k[9:]: v for k, v in saved.items() if k.startswith("backbone.")}
    _load_tuned(backbone.model, tuned)
    model.head.load_state_dict({k[5:]: v for k, v in saved.items() if k.startswith("head.")})
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


# ------------------------------------------------------------------------------------------------------------ CLI
def _items(df: pd.DataFrame, part: str) -> list[Item]:
    rows = df[df["split"] == part].drop_duplicates("sha256")
    return list(zip(rows["path"], rows["label"].astype(int)))


def finetune_detector(
    data: str | Path | pd.DataFrame,
    *,
    backbone: str = "effnet-lite0",
    weights: str | Path | None = None,
    cfg: FineTuneConfig | None = None,
    out: str | Path = "finetune",
    resume: bool = True,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    split_seed: int = 42,
    progress: bool = True,
) -> tuple[FineTuneResult, dict[str, Any]]:
    """index → split (as ``train_detector``: val held out, the rest fit/calib) → fine-tune on fit, select and
    calibrate on calib → score val. Returns the result and the held-out metrics (also written to the card)."""
    cfg = cfg or FineTuneConfig()
    df = data.copy() if isinstance(data, pd.DataFrame) else index(data, progress=progress)
    df = df[df["ok"] & (df["label"] >= 0)].reset_index(drop=True)
    if df.empty or df["label"].nunique() < 2:
        raise ManifestError("fine-tuning needs decodable images of both classes (label 0 = real, 1 = fake)")
    df["split"] = three_way_split(df, val_fraction=val_fraction, calib_fraction=calib_fraction, seed=split_seed)
    bb = create_backbone(backbone, weights=weights)
    result = finetune(bb, _items(df, "fit"), _items(df, "calib"), cfg, out, resume, weights_file=weights,
                      progress=progress)
    det = result.detector
    prob, y = score_items(det, _items(df, "val"), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          max_pixels=cfg.max_pixels)
    metrics = binary_metrics(y, prob, threshold=det.threshold)
    det.card.metrics["val"] = metrics
    det.save(Path(out) / "detector")
    df.to_csv(Path(out) / "detector" / "manifest.csv", index=False)
    return result, metrics


def finetune_command(
    data: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake, real/fake), CSV or manifest.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoints, and the detector in detector/.")],
    backbone: Annotated[str, typer.Option(help="Name, timm:<model> or open_clip:<arch>/<tag>.")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Backbone weights file.")] = None,
    head: Annotated[str, typer.Option(help="fusion (pooled + every block) or linear (pooled).")] = "fusion",
    unfreeze: Annotated[str, typer.Option(help="Last N blocks to train, or 'all'.")] = "2",
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    head_lr: Annotated[float, typer.Option()] = 3e-4,
    backbone_lr: Annotated[float, typer.Option()] = 1e-5,
    augment: Annotated[str, typer.Option(help=f"Preset before the random view: {', '.join(PRESETS)}.")] = "lean2026",
    seed: Annotated[int, typer.Option(help="Training seed (the data split keeps seed 42).")] = 1337,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="Continue an interrupted run in OUT.")] = True,
) -> None:
    """Fine-tune the last blocks of a backbone with a head, from images; keep the best epoch by validation ROC AUC."""
    try:
        cfg = FineTuneConfig(
            unfreeze_blocks=unfreeze, head=head, epochs=epochs, batch_size=batch_size, head_lr=head_lr,
            backbone_lr=backbone_lr, augment=augment, seed=seed, num_workers=num_workers,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    result, metrics = finetune_detector(data, backbone=backbone, weights=weights, cfg=cfg, out=out, resume=resume)
    b = result.best
    typer.echo(f"best epoch {b['epoch'] + 1}: calib ROC AUC {b['val_auc']:.4f}, AP {b['val_ap']:.4f}")
    at = metrics["at_threshold"]
    typer.echo(f"held-out val: ROC AUC {metrics['roc_auc']:.4f}, AP {metrics['ap']:.4f}, F1 {at['f1']:.4f} "
               f"at threshold {at['threshold']:.3f} (n={metrics['n']})")
    typer.echo(f"detector: {out / 'detector'} (score with: synthdet predict {out / 'detector'} IMAGES...)")
