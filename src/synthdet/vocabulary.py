"""Names that configs share across layers, kept free of torch so that a card (and the scoring install, which has no
torch) can validate them: what a head reads and how a layer tap is summarised."""

from __future__ import annotations

from typing import Literal

#: What a head reads: the pooled vector, or pooled and every layer tap concatenated.
FeatureKind = Literal["pooled", "concat"]

#: How a CNN stage's feature map becomes a vector (:mod:`synthdet.backbones.pooling`).
TapPool = Literal["mean", "meanstd", "texture"]
