"""What decides a fine-tuning run's result: :class:`FineTuneConfig`, and the published setups in :data:`RECIPES`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthdet.io.pixels import DEFAULT_MAX_PIXELS


class FineTuneConfig(BaseModel):
    """Everything that decides the result; saved in the checkpoint (resume refuses a different one) and the card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unfreeze_blocks: int | Literal["all"] = 2  # last N tap blocks (+ what follows them); "all" or -1: everything
    head: Literal["fusion", "linear", "residual", "deep"] = "fusion"  # fusion: pooled + every block vector; others:
    # pooled only (residual/deep so that detectors trained on cached features can be continued)
    preprocess: Literal["letterbox", "crop"] | None = None  # None: the backbone's own chain. letterbox: training
    # views letterbox random crops whose aspect is drawn alike for both classes, inference the centre 1:1 crop
    image_size: int | None = Field(default=None, ge=16)  # None: the backbone's
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
        from synthdet.data.augment import (
            PRESETS,  # here, not at import: a saved config must load without the finetune extra
        )

        PRESETS.entry(v)  # an unknown name raises, listing the valid ones
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
        "our FFT branch (synthdet.backbones.spectral)"),
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
