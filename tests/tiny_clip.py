"""Tiny randomly initialised open_clip ViTs, saved as local checkpoint files.

They go through exactly the path real CLIP weights take (an open_clip model config plus ``--weights FILE``), in
milliseconds, without a model hub. Import as ``from tiny_clip import tiny_clip_checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_clip_checkpoint(
    folder: Path, *, blocks: int = 3, width: int = 64, image_size: int = 32, patch_size: int = 8, embed_dim: int = 32,
    suffix: str = ".pt", seed: int = 0,
) -> tuple[str, Path]:
    """Register a ViT config with open_clip, save a random model's state dict; return (``open_clip:<arch>``, file).

    The architecture name encodes the shape, so configs registered by different tests never disagree.
    """
    import open_clip

    arch = f"TinyViT-B{blocks}-W{width}-S{image_size}-P{patch_size}-E{embed_dim}"
    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": blocks, "width": width, "head_width": 32,
                       "patch_size": patch_size},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    cfg_file = folder / f"{arch}.json"
    cfg_file.write_text(json.dumps(config))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(seed)
    state = open_clip.create_model(arch, pretrained=None).state_dict()
    weights = folder / f"{arch}-seed{seed}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    else:
        torch.save(state, weights)
    return f"open_clip:{arch}", weights
