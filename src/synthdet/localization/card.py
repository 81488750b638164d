"""The card of a Task B localizer, and its name for the image-level score: torch-free, so the scoring install
(onnxruntime, no torch; :mod:`synthdet.localization.graph`) reads the same card the torch localizer writes."""

from __future__ import annotations

from typing import Any, Literal

from synthdet.detectors.card import CardBase

LocModel = Literal["unet", "patch"]
ImageScore = Literal["coverage", "topk", "learned"]
#: The encoder both localizers start from (timm name; embedded EfficientNet-Lite0 ImageNet weights).
ARCH = "tf_efficientnet_lite0"
#: Input sides must be multiples of the encoder's output stride.
STRIDE = 32


class LocalizerCard(CardBase):
    """A localizer: ``threshold`` is on the image-level score, ``loc_threshold`` on the pixel probabilities."""

    kind: Literal["localizer"] = "localizer"
    model: LocModel
    encoder: str = ARCH
    loc_threshold: float = 0.5
    image_score: ImageScore = "coverage"
    max_side: int = 1024  # larger images are predicted downscaled, the map resized back
    params: dict[str, Any] = {}
