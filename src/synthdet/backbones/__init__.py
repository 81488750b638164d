"""Backbones: the networks that turn preprocessed pixels into features, by name (``synthdet backbones`` lists them).

- :mod:`~synthdet.backbones.base`: the :class:`Backbone` wrapper, the registries and :func:`create_backbone`;
- :mod:`~synthdet.backbones.pooling`: how a block's output becomes a layer tap;
- :mod:`~synthdet.backbones.folding`: BatchNorm folded into convolutions for inference;
- :mod:`~synthdet.backbones.weights`: where weights come from (files, packages, the Hugging Face cache), fetching;
- families, each registering its names on import: :mod:`~synthdet.backbones.timm_cnn` (``effnet-lite0/2``,
  ``timm:``), :mod:`~synthdet.backbones.open_clip_vit` (``clip-vit-l14``, ``eva02-l14``, ``open_clip:``), and
  :mod:`~synthdet.backbones.spectral` (``dualstream[-dct]:``) and :mod:`~synthdet.backbones.pair` (``pair:<a>+<b>``),
  registered here by import path, since they build on :func:`create_backbone`.

Importing any of these modules runs this file first, so every name is registered wherever ``create_backbone`` is
imported from; neither timm nor open_clip is imported until a network is built.
"""

from __future__ import annotations

# The families register on import, timm's first: the order `synthdet backbones` lists them and error messages name
# the prefixes in.
from synthdet.backbones import timm_cnn  # noqa: F401

# isort: split
from synthdet.backbones import open_clip_vit  # noqa: F401

# isort: split
from synthdet.backbones import residual  # noqa: F401
from synthdet.backbones.base import (
    BACKBONE_PREFIXES,
    BACKBONES,
    Backbone,
    BackboneEntry,
    create_backbone,
    default_device,
    list_backbones,
    qualified_name,
    weights_available,
)
from synthdet.backbones.pooling import TapPool
from synthdet.backbones.weights import WeightsNotFoundError, fetch_weights, file_digest

BACKBONE_PREFIXES.add("dualstream", "synthdet.backbones.spectral:build_fft", usage="dualstream:<model>", wraps=True,
                      description="RGB model + FFT branch, for fine-tuning")
BACKBONE_PREFIXES.add("dualstream-dct", "synthdet.backbones.spectral:build_dct", usage="dualstream-dct:<model>", wraps=True,
                      description="RGB model + 8x8 block DCT branch, for fine-tuning")


def _pair_weights_present(rest: str) -> bool:
    from synthdet.backbones.pair import pair_weights_present  # the module imports only when asked

    return pair_weights_present(rest)


BACKBONE_PREFIXES.add("pair", "synthdet.backbones.pair:build_pair", usage="pair:<a>+<b>", members=True,
                      weights_present=_pair_weights_present, description="two backbones on one input, features side by side (the shipped default)")

__all__ = [
    "BACKBONES",
    "BACKBONE_PREFIXES",
    "Backbone",
    "BackboneEntry",
    "TapPool",
    "WeightsNotFoundError",
    "create_backbone",
    "default_device",
    "fetch_weights",
    "file_digest",
    "list_backbones",
    "qualified_name",
    "weights_available",
]
