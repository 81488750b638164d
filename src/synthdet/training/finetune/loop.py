"""The training loop: epochs over random views, validation through the inference path, best-epoch selection, early
stopping, and checkpoints from which a killed run resumes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from synthdet.backbones.base import Backbone
from synthdet.data.splits import RowSet
from synthdet.data.tilehash import TileIndex
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.card import FinetunedCard, seen_tiles
from synthdet.detectors.detector import Detector
from synthdet.evaluation.metrics import binary_metrics
from synthdet.heads.base import create_head
from synthdet.heads.mlp import TorchProbe, train_bce_epoch
from synthdet.io.atomic import atomic_path
from synthdet.io.workers import num_workers_default
from synthdet.training.finetune.config import FineTuneConfig
from synthdet.training.finetune.data import Item, TrainingImages, Views, collate, epoch_order, item_hashes
from synthdet.training.finetune.model import (
    InitDetector,
    Network,
    digest,
    load_tuned,
    save_finetuned,
    set_preprocess,
    trainable_parameters,
    tuned_names,
    tuned_state,
)

log = logging.getLogger(__name__)


@dataclass
class FineTuneResult:
    """``detector`` scores paths (``detector.predict_paths``) with the best epoch's weights and a threshold tuned
    on the validation items; ``best`` holds that epoch's ``epoch``, ``val_auc``, ``val_ap``."""

    detector: Detector
    history: list[dict[str, Any]]
    best: dict[str, Any]
    out_dir: Path
    trainable: list[str]


def _is_better(auc: float, ap: float, best: dict[str, Any], tol: float = 1e-6) -> bool:
    return auc > best["val_auc"] + tol or (abs(auc - best["val_auc"]) <= tol and ap > best["val_ap"] + tol)


def score_items(detector: Detector, items: Sequence[Item], **predict_kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of the labelled items that decode, through the inference path (``predict_paths``)."""
    probs = detector.predict_paths([str(p) for p, _ in items], **{"progress": False, **predict_kw})
    pairs = [(p, int(lbl)) for (_, p, _), (_, lbl) in zip(probs, items) if p is not None]
    return np.array([p for p, _ in pairs], dtype=np.float64), np.array([y for _, y in pairs], dtype=int)


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
    had tuned stay in the result even where this stage freezes them. ``cfg.image_size`` resizes the backbone's
    chain first (:func:`set_preprocess`); the chain becomes the crop chain, and ``cfg.preprocess == "letterbox"``
    (or a letterbox chain on the backbone) makes training views letterboxed random-aspect crops
    (:class:`~synthdet.training.finetune.data.Views`, recorded as ``card.finetune["views"]``). ``item_weights`` (one per
    training item) makes each epoch ``len(train_items)`` weighted draws with replacement instead of a permutation
    (data mixing). ``weights_file`` is the file the backbone was built from (a detector folder names its own),
    recorded in the card so :func:`load_finetuned` can rebuild it. ``resume`` continues a run in ``out_dir`` from
    its last completed epoch (refusing one with another config, start or data); False starts over.
    ``on_epoch_end`` receives each epoch's record after its checkpoint is written.
    """
    cfg = cfg or FineTuneConfig()
    init: InitDetector | None = None
    if not isinstance(backbone, Backbone):
        if weights_file is not None:
            raise ValueError("a detector folder names its own backbone weights; do not pass weights_file with it")
        init = InitDetector.load(backbone)
        cfg = init.config(cfg)
        backbone, weights_file = init.detector.backbone, init.detector.card.weights_file
    if backbone.folded:
        raise ValueError("this backbone has served inference, so its BatchNorm is folded into its convolutions "
                         "(Backbone.fold_batchnorm); fine-tune a freshly created one")
    letterbox = (cfg.preprocess or backbone.preprocess.mode) == "letterbox"
    set_preprocess(backbone, "crop", cfg.image_size)  # inference: the canonical centre crop, whatever the training
    views = Views(backbone.preprocess, letterbox)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len({int(y) for _, y in val_items}) < 2:
        raise ValueError("validation items need both classes (0 real, 1 generated) to select by ROC AUC")
    if item_weights is not None and len(item_weights) != len(train_items):
        raise ValueError(f"{len(item_weights)} item weights for {len(train_items)} training items")
    base_weights_id = init.base_weights_id if init else backbone.weights_id
    start = {"weights_id": init.detector.card.weights_id, "head": digest(init.detector.head.state())} if init else None
    fingerprint = hashlib.sha256(json.dumps({
        "config": cfg.fingerprint(), "backbone": backbone.id, "init": start, "views": views.describe(),
        "train": [[str(p), int(y)] for p, y in train_items], "val": [[str(p), int(y)] for p, y in val_items],
        "item_weights": None if item_weights is None else [float(w) for w in item_weights],
    }).encode()).hexdigest()
    for part, text in views.describe().items():
        log.info("%s views: %s", part, text)
        if progress:
            tqdm.write(f"{part} views: {text}", file=sys.stderr)

    torch.manual_seed(cfg.seed)
    dev = backbone.device
    trainable = trainable_parameters(backbone, cfg.unfreeze_blocks)
    named = dict(backbone.model.named_parameters())
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    for n in trainable:
        named[n].requires_grad_(True)
    tuned = tuned_names(backbone.model)

    taps = init.detector.card.features == "concat" if init else cfg.head == "fusion"
    n_features = backbone.embed_dim + (sum(backbone.layer_dims) if taps else 0)
    if init:  # the detector's architecture (hidden size, fusion layer dims ...)
        shape: dict[str, Any] = init.detector.card.head_params
    else:
        shape = {"layer_dims": [backbone.embed_dim, *backbone.layer_dims]} if cfg.head == "fusion" else {}
    head: TorchProbe = create_head(cfg.head, **{
        **shape, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay, "label_smoothing": cfg.label_smoothing,
        "seed": cfg.seed, **cfg.head_params,
    })
    model = Network(backbone, head.init_net(n_features).to(dev), taps)
    if init:
        model.head.load_state_dict(init.detector.head.state())
    groups = head.param_groups(model.head)  # groups without an lr get head_lr
    groups.append({"params": [named[n] for n in trainable], "lr": cfg.backbone_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    steps = max(1, -(-len(train_items) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)

    card = FinetunedCard(
        backbone=backbone.name, weights_id=base_weights_id, weights_file=str(weights_file) if weights_file else None,
        preprocess=backbone.preprocess, features="concat" if taps else "pooled", head=cfg.head,
        head_params=head.get_params(), n_features=n_features, threshold=0.5,
    )
    scorer = Detector(card, head, backbone=backbone)

    ckpt_path, best_path = out / "checkpoint.pt", out / "best.safetensors"
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first, done = 0, False
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt["fingerprint"] != fingerprint:
            raise ValueError(
                f"{out}: holds a run with another config, backbone or data; pass resume=False to start over, or "
                f"use another folder"
            )
        load_tuned(backbone.model, ckpt["tuned"])
        model.head.load_state_dict(ckpt["head"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if dev.type == "cuda" and ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        history, best, first, done = ckpt["history"], ckpt["best"], ckpt["epoch"] + 1, ckpt["done"]

    data = TrainingImages(train_items, views, cfg.augment, cfg.seed, cfg.max_pixels)
    workers = num_workers_default() if cfg.num_workers is None else cfg.num_workers
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if dev.type == "cuda" and cfg.mixed_precision else contextlib.nullcontext
    )

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data.set_epoch(epoch, epoch_order(len(train_items), cfg.seed, epoch, item_weights))
        loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=workers, collate_fn=collate)
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=None if progress else True):
            if batch is not None:
                yield batch[0].to(dev, non_blocking=True), batch[1].to(dev)

    for epoch in range(first, cfg.epochs):
        if done:
            break
        t0 = time.perf_counter()
        model.set_modes()
        loss = train_bce_epoch(model, batches(epoch), opt, sched, label_smoothing=cfg.label_smoothing,
                               grad_clip=cfg.grad_clip, autocast=autocast)
        model.eval()
        prob, y = score_items(scorer, val_items, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                              max_pixels=cfg.max_pixels)
        auc, ap = float(roc_auc_score(y, prob)), float(average_precision_score(y, prob))
        record = {"epoch": epoch, "loss": loss, "val_auc": auc, "val_ap": ap, "seconds": time.perf_counter() - t0}
        history.append(record)
        if best is None or _is_better(auc, ap, best):
            best = {"epoch": epoch, "val_auc": auc, "val_ap": ap}
            tensors = {**{f"backbone.{k}": v for k, v in tuned_state(backbone.model, tuned).items()},
                       **{f"head.{k}": v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
                       "val_prob": torch.from_numpy(prob), "val_label": torch.from_numpy(y)}
            with atomic_path(best_path) as tmp:
                save_file(tensors, str(tmp), metadata={k: str(v) for k, v in best.items()})
        done = cfg.patience is not None and epoch - best["epoch"] >= cfg.patience
        with atomic_path(ckpt_path) as tmp:
            torch.save({
                "fingerprint": fingerprint, "epoch": epoch, "history": history, "best": best, "done": done,
                "tuned": tuned_state(backbone.model, tuned), "head": model.head.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
            }, tmp)
        log.info("epoch %d/%d: loss %.4f, val ROC AUC %.4f, AP %.4f", epoch + 1, cfg.epochs, loss, auc, ap)
        if on_epoch_end is not None:
            on_epoch_end(record)

    if best is None:
        raise ValueError(f"{out}: no epoch completed (epochs={cfg.epochs})")
    saved = load_file(str(best_path))
    load_tuned(backbone.model, {k[9:]: v for k, v in saved.items() if k.startswith("backbone.")})
    model.head.load_state_dict({k[5:]: v for k, v in saved.items() if k.startswith("head.")})
    earlier = [n for n in init.tuned_names if n not in set(tuned)] if init else []
    tuned_tensors = tuned_state(backbone.model, [*tuned, *earlier])  # relative to the base: earlier stages' too
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    model.eval()
    backbone.weights_id = f"{base_weights_id}.ft-{digest(tuned_tensors)}"  # a new identity: never shares cached features

    prob, y = saved["val_prob"].numpy(), saved["val_label"].numpy()
    card.weights_id = backbone.weights_id
    card.threshold = f1_optimal_threshold(y, prob)
    card.metrics = {"calib": binary_metrics(y, prob, threshold=card.threshold)}
    card.finetune = {  # type: ignore[attr-defined]  # Card allows extra fields
        "config": cfg.model_dump(mode="json"), "views": views.describe(), "base_weights_id": base_weights_id,
        "history": history, "best": best, "trainable_tensors": len(trainable),
        **({"init": {"path": str(init.path), "weights_id": init.detector.card.weights_id}} if init else {}),
    }
    seen = {"fit": item_hashes(train_items), "calib": item_hashes(val_items)}
    if init:  # what the first stage was fitted and calibrated on, this detector has seen too
        for part, rows in (getattr(init.detector.card, "rows", None) or {}).items():
            seen.setdefault(part, []).extend(RowSet.model_validate(rows).hashes)
    card.rows = {part: RowSet.of(shas) for part, shas in seen.items()}
    tiles = TileIndex.build((sha, p) for p, y in [*train_items, *val_items] for sha in item_hashes([(p, y)]))
    card._tiles = TileIndex.join([tiles, *([t] if init and (t := seen_tiles(init.detector)) else [])])
    detector = Detector(card, head, backbone=backbone)
    save_finetuned(detector, tuned_tensors, out / "detector")
    if taps:
        blocks = [str(i + 1) for i in range(len(backbone.layer_dims))]
        head.plot_alphas(out / "detector" / "alphas.png", labels=["pooled", *blocks],
                         title=f"{backbone.name}: which blocks matter (fine-tuned)")
    return FineTuneResult(detector, history, best, out, trainable)
