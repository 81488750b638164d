"""open_clip vision towers as backbones: the generic ``open_clip:<arch>/<tag>`` and the registered ``clip-vit-l14``
(OpenAI CLIP ViT-L/14) and ``eva02-l14`` (EVA02-L-14), their weights read offline from the Hugging Face cache.

Importing this module registers them; ``open_clip`` itself (an optional extra) is imported only when a network is
built or its hub repo looked up.
"""

from __future__ import annotations

from pathlib import Path

from synthdet.backbones.base import BACKBONE_PREFIXES, BACKBONES, Backbone
from synthdet.backbones.weights import (
    WeightsNotFoundError,
    file_digest,
    hf_cached_file,
    hf_snapshot_folder,
    resolve_weights,
)
from synthdet.extras import MissingExtraError, require
from synthdet.io.pixels import Preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip_backbone(
    name: str, arch: str, tag: str | None, *, weights: str | Path | None, pretrained: bool,
    preprocess: Preprocess | None,
) -> Backbone:
    """open_clip model ``arch`` (its vision tower) as the backbone ``name``: random (``pretrained=False``), from
    ``weights``, or the checkpoint of ``tag`` in the Hugging Face cache."""
    open_clip = require("open_clip", "CLIP / EVA (open_clip) backbones")

    hint = (
        f"Place the open_clip checkpoint for {arch}/{tag} in the Hugging Face cache (~/.cache/huggingface/hub), "
        f"or pass --weights FILE (open_clip .bin/.pt/.safetensors). On a machine with internet: "
        f"`synthdet weights fetch open_clip:{arch}/{tag}`, then copy the cache here."
    )
    if weights:
        path = resolve_weights(weights, None, hint)
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
    return Backbone(name=name, model=visual, tap_modules=taps, preprocess=preprocess, weights_id=weights_id)


def _open_clip_hub(arch: str, tag: str) -> str:
    """The Hugging Face repo of an open_clip model, or "" when unknown (or open_clip is not installed)."""
    try:
        open_clip = require("open_clip", "CLIP / EVA (open_clip) backbones")
    except MissingExtraError:
        return ""
    return (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")


def open_clip_cached_file(arch: str, tag: str) -> Path | None:
    """The checkpoint of ``arch/tag`` in the Hugging Face cache, found without any network call."""
    repo = _open_clip_hub(arch, tag)
    return hf_cached_file(repo, _OPEN_CLIP_FILES) if repo else None


def _open_clip_expected(arch: str, tag: str) -> str:
    repo = _open_clip_hub(arch, tag)
    if not repo:
        return f"open_clip has no Hugging Face repo for {arch}/{tag}."
    return f"Expected {hf_snapshot_folder(repo) / _OPEN_CLIP_FILES[1]} (or {_OPEN_CLIP_FILES[0]}), from the hub repo {repo}."


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


def _open_clip_cached(rest: str) -> bool:
    arch, _, tag = rest.partition("/")
    return bool(tag) and open_clip_cached_file(arch, tag) is not None


@BACKBONE_PREFIXES.register("open_clip", usage="open_clip:<arch>/<tag>", description="any open_clip vision tower",
                            weights_present=_open_clip_cached)
def _open_clip_prefixed(
    name: str, rest: str, *, weights: str | Path | None, pretrained: bool, preprocess: Preprocess | None
) -> Backbone:
    arch, _, tag = rest.partition("/")
    return _open_clip_backbone(name, arch, tag or None, weights=weights, pretrained=pretrained, preprocess=preprocess)
