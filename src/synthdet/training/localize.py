"""Train a Task B localizer (:mod:`synthdet.localization.models`) on ``(image, mask)`` triples.

Training crops masks and images alike (mask-aware social-media augmentation: flips, JPEG, rescale), optimises BCE
plus soft Dice under a warm-up + cosine schedule, stops early on the validation pixel F1, tunes both thresholds on the
validation set, and resumes from ``checkpoint.pt``: tensors and plain values only, read back with torch's
weights-only unpickler, so a checkpoint from someone else cannot run code.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel
from torch import nn

from synthdet.data.tilehash import TileIndex
from synthdet.io.atomic import atomic_path
from synthdet.localization.card import ImageScore, LocalizerCard, LocModel
from synthdet.localization.decision import fit_decision
from synthdet.localization.metrics import (
    balanced_threshold,
    best_loc_threshold,
    image_score,
    localization_metrics,
    tune_loc_threshold,
)
from synthdet.localization.models import Localizer, build_model, input_tensor, predict_map
from synthdet.localization.triples import host_digests, image_codes, load_pairs, source_groups, type_groups


class TrainConfig(BaseModel):
    model: LocModel = "unet"
    steps: int = 600
    batch: int = 8
    crop: int = 256
    lr: float = 1e-3
    eval_every: int = 50
    patience: int = 4  # evaluations without a better validation pixel F1 before stopping
    schedule: Literal["constant", "cosine"] = "cosine"  # cosine: linear warm-up, then decay to 0 at ``steps``
    image_score: ImageScore = "coverage"
    encoder_lr: float = 0.0  # patch head: the frozen encoder's learning rate as a share of ``lr`` (0: stays frozen)
    seed: int = 0


def _augmenter(crop: int, seed: int) -> Any:
    """Mask-aware augmentation: rescale, pad, crop, flip; JPEG only touches the image."""
    import cv2

    from synthdet.extras import require

    A = require("albumentations", "Localizer training")
    return A.Compose([
        A.RandomScale(scale_limit=(-0.3, 0.2), p=0.5),
        A.PadIfNeeded(min_height=crop, min_width=crop, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=crop, width=crop),
        A.HorizontalFlip(),
        A.ImageCompression(quality_range=(60, 100), p=0.5),
    ], seed=seed)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice: BCE alone settles on the empty mask when regions are small."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def _summary(df: pd.DataFrame) -> dict[str, Any]:
    """What a card records of one set: images, manipulated images, and ``brushnet 6, controlnet 6`` per method,
    source and type where the set has them."""
    out: dict[str, Any] = {"n": len(df), "n_manipulated": int((df["mask"] != "").sum())}
    for col in ("method", "source", "type"):
        if col in df and (df[col].fillna("") != "").any():
            out[f"per_{col}"] = ", ".join(f"{k or '-'} {n}" for k, n in df[col].fillna("").value_counts().sort_index().items())
    return out


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at ``step``: 1 (constant), or a linear warm-up over the first 5 % of the steps then
    a cosine decay to 0 at ``cfg.steps``: a short CPU run ends on small steps instead of wherever the noise left it."""
    if cfg.schedule == "constant":
        return 1.0
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return (step + 1) / warm
    return float(0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, cfg.steps - warm)))))


def _val_maps(net: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> list[np.ndarray]:
    net.eval()
    maps = [predict_map(net, Image.fromarray(img), device=device) for img, _ in pairs]
    net.train()
    return maps


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`train_localizer`, through torch's weights-only unpickler: tensors, dicts,
    lists, numbers and strings come back; anything else (a pickled object that would run code on loading) is
    refused with a :class:`ValueError` before any of it is built. Numpy scalars are allowed (data only): checkpoints
    of earlier releases stored the learning-rate factor as one."""
    try:
        numpy_scalar = cast(Callable[..., Any], np.float64(0).__reduce__()[0])  # where this numpy keeps it
        with torch.serialization.safe_globals([numpy_scalar, np.dtype, type(np.dtype(np.float64))]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused globals, a truncated file, not a pickle at all: none of it is a checkpoint
        raise ValueError(f"{path}: not a localizer checkpoint; only tensors and plain values are loaded, and "
                         f"this file holds something else ({type(e).__name__}); train into a new folder") from None
    if not isinstance(ckpt, dict) or not {"net", "opt", "state", "rng", "torch_rng", "config"} <= ckpt.keys():
        raise ValueError(f"{path}: not a localizer checkpoint; train into a new folder")
    return ckpt


def train_localizer(
    train: pd.DataFrame,
    val: pd.DataFrame,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = False,
    data: dict[str, Any] | None = None,
) -> Localizer:
    """Train on ``train`` triples (:func:`~synthdet.localization.triples.read_triples`), stop early on ``val`` pixel
    F1 (at its best threshold, over manipulated images), tune ``loc_threshold`` (mean pixel F1) and the image-level
    threshold (balanced accuracy) on ``val``, save to ``out`` and return it.

    Every ``eval_every`` steps the state goes to ``out/checkpoint.pt``; ``resume`` continues from it (with more
    ``steps`` or another ``patience`` if wanted; any other change of configuration is refused).

    The card's ``data`` is ``data`` (where the sets came from) plus what the rows say of themselves: images,
    manipulated images, and counts per method, source and type.
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    for name, part in (("training", train), ("validation", val)):
        if not (part["mask"] != "").any():  # nothing to learn from, or to stop early and tune loc_threshold on
            raise ValueError(f"the {name} set ({len(part)} images) has no manipulated image (none with a mask); "
                             "give more data or another --val")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    ckpt_path = out / "checkpoint.pt"
    ckpt = _read_checkpoint(ckpt_path) if resume and ckpt_path.is_file() else None
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    net = build_model(cfg.model).to(device).train()
    groups = [{"params": [p for p in net.parameters() if p.requires_grad], "scale": 1.0}]
    if cfg.model == "patch" and cfg.encoder_lr > 0:  # low-level features tuned to edits, slowly; BN stays ImageNet's
        encoder = cast(nn.Module, net.encoder)
        encoder.requires_grad_(True)
        groups.append({"params": list(encoder.parameters()), "scale": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=1e-4)
    state: dict[str, Any] = {"step": 0, "best_f1": -1.0, "best": None, "bad": 0, "history": []}
    if ckpt is not None:
        fixed = cfg.model_dump(exclude={"steps", "patience"})  # a run may be extended, not changed
        if {k: v for k, v in ckpt["config"].items() if k in fixed} != fixed:
            raise ValueError(f"{ckpt_path}: saved with another configuration; train into a new folder")
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["opt"])
        state = ckpt["state"]
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
    train_pairs, val_pairs = load_pairs(train), load_pairs(val)
    aug = _augmenter(cfg.crop, cfg.seed + state["step"])  # a resumed run draws new crops
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"localize {cfg.model}", disable=None if progress else True)
    while state["step"] < cfg.steps and state["bad"] < cfg.patience:
        batch = [aug(image=img, mask=m.astype(np.uint8)) for img, m in rng.choices(train_pairs, k=cfg.batch)]
        x = torch.stack([input_tensor(b["image"]) for b in batch]).to(device)
        y = torch.stack([torch.from_numpy(b["mask"]).float()[None] for b in batch]).to(device)
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:  # from the step count alone: a resumed or extended run follows the schedule
            group["lr"] = cfg.lr * group.get("scale", 1.0) * _lr_factor(cfg, state["step"])
        opt.step()
        state["step"] += 1
        bar.update(1)
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            maps = _val_maps(net, val_pairs, device)
            f1 = best_loc_threshold(maps, [m for _, m in val_pairs])[1]  # at the best threshold: a model still
            f1 = 0.0 if np.isnan(f1) else f1  # short of calibrated confidence is not judged at 0.5
            state["history"].append({"step": state["step"], "loss": loss.item(), "val_f1": f1})
            if f1 > state["best_f1"]:
                state.update(best_f1=f1, bad=0, best={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            else:
                state["bad"] += 1
            with atomic_path(ckpt_path) as tmp:  # only what _read_checkpoint's weights-only unpickler accepts
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state, "rng": rng.getstate(),
                            "torch_rng": torch.get_rng_state(), "config": cfg.model_dump()}, tmp)
    bar.close()
    if state["best"] is not None:
        net.load_state_dict(state["best"])
    maps = _val_maps(net, val_pairs, device)
    trues = [m for _, m in val_pairs]
    loc_thr = tune_loc_threshold(maps, trues)
    labels = np.array([int(m.any()) for m in trues])
    head = fit_decision(maps, labels, loc_thr) if cfg.image_score == "learned" else None  # on held-out hosts
    scores = np.array([image_score(p, cfg.image_score, loc_threshold=loc_thr, head=head) for p in maps])
    thr = balanced_threshold(labels, scores)
    card = LocalizerCard(
        threshold=thr, prior=float(labels.mean()) if len(labels) else 0.5,
        data={**(data or {}), "train": _summary(train), "val": _summary(val)},
        model=cfg.model, loc_threshold=loc_thr, image_score=cfg.image_score,
        metrics={"val": localization_metrics(maps, trues, list(val["category"]), loc_threshold=loc_thr,
                                             image_threshold=thr, method=cfg.image_score,
                                             sources=source_groups(val), types=type_groups(val), head=head)},
        params={**({"decision": head} if head else {}), "config": cfg.model_dump(), "history": state["history"], "n_train": len(train), "n_val": len(val),
                "seen_hosts": sorted(set(host_digests(train) + host_digests(val))),
                "seen_phashes": image_codes(pd.concat([train, val])["path"]),
                "train_seconds": round(time.perf_counter() - start, 1), "device": str(device)},
    )
    seen = pd.concat([train, val])  # its photos' tiles: a crop or resize of one is not held out either
    card._tiles = TileIndex.build(zip(host_digests(seen), seen["path"].astype(str)))
    loc = Localizer(card, net.eval(), device)
    loc.save(out)
    return loc
