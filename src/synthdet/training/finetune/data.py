"""Images → training tensors: decoding (:mod:`synthdet.io.pixels`), an augmentation preset, then a random view.

A view never lets the aspect ratio tell the classes apart. The crop chain cuts squares. The letterbox chain (the
CNN papers' "long side to size, zero-pad") would show every 4:3 photo with black bars and every square generated
image without, so it letterboxes a random crop whose aspect ratio is drawn from :data:`LETTERBOX_ASPECTS` — one
distribution for both classes: the bars then say which ratio was drawn, never which class. Inference (and the
validation that picks the epoch) uses the canonical view of the crop chain: the centre 1:1 crop, which letterboxed
has no bars at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from synthdet.data.augment import apply, get_augment
from synthdet.io.files import sha256_file
from synthdet.io.pixels import ImageLoadError, Preprocess, load_image

Item = tuple[str | Path, int]
"""A training or validation image: path and label (0 real, 1 generated)."""

#: Width:height ratios a letterbox run's training crops are drawn from, uniformly, whatever the image or its class.
LETTERBOX_ASPECTS: tuple[tuple[int, int], ...] = ((1, 1), (4, 3), (3, 4), (16, 9), (9, 16), (3, 2), (2, 3))


def content_box(size: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """Width and height of a letterboxed image's content at ``aspect``: the long side fills ``size``."""
    aw, ah = aspect
    return (size, max(1, round(size * ah / aw))) if aw >= ah else (max(1, round(size * aw / ah)), size)


def aspect_crop(img: Image.Image, ratio: float, rng: np.random.Generator) -> Image.Image:
    """The largest crop of ``img`` whose width / height is ``ratio``, at a random position."""
    w, h = img.size
    if w / h > ratio:
        cw, ch = max(1, min(w, round(h * ratio))), h
    else:
        cw, ch = w, max(1, min(h, round(w / ratio)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((left, top, left + cw, top + ch))


@dataclass(frozen=True)
class Views:
    """How a run turns decoded images into model inputs: ``pre`` is the inference chain (the card's, crop mode);
    ``letterbox`` makes training views letterboxed crops of a random aspect ratio instead of square crops."""

    pre: Preprocess
    letterbox: bool = False

    def train(self, img: Image.Image, seed: int, key: str) -> torch.Tensor:
        """A random training view, fixed by ``seed`` (and ``key``, the image's name)."""
        view = 1 + seed % (2**31 - 1)
        if not self.letterbox:
            return self.pre(img, view=view, key=key)
        rng = np.random.default_rng(seed)
        aspect = LETTERBOX_ASPECTS[int(rng.integers(len(LETTERBOX_ASPECTS)))]
        box = content_box(self.pre.size, aspect)
        crop = aspect_crop(img, box[0] / box[1], rng)
        crop = crop.resize(box, Image.Resampling[self.pre.resample.upper()], reducing_gap=3.0)
        # the letterbox chain pads the exact content box (no second resize), then flips and re-encodes as any view
        return self.pre.model_copy(update={"mode": "letterbox"})(crop, view=view, key=key)

    def describe(self) -> dict[str, str]:
        """What the model sees, in words: recorded on the card and logged by the run."""
        size, q = self.pre.size, self.pre.views.jpeg_quality
        if self.letterbox:
            ratios = ", ".join(f"{w}:{h}" for w, h in LETTERBOX_ASPECTS)
            train = (f"letterbox to {size} px of a random crop whose aspect ratio is drawn uniformly from {ratios} "
                     f"(the same for both classes); flip, greyscale, JPEG q{q[0]}-{q[1]}")
        else:
            lo, hi = self.pre.views.crop_scale
            train = (f"random square crop ({lo:g}-{hi:g} of the short side) resized to {size} px; down-up resize, "
                     f"flip, greyscale, JPEG q{q[0]}-{q[1]}")
        jpeg = f", JPEG q{self.pre.jpeg_quality}" if self.pre.jpeg_quality else ""
        return {"train": train, "inference": f"centre 1:1 crop resized to {size} px{jpeg}"}


def item_hashes(items: Sequence[Item]) -> list[str]:
    """Content hashes (sha256 of the file, as manifests record them) of the items whose file can be read."""
    out = []
    for path, _ in items:
        with contextlib.suppress(OSError):  # unreadable: never trained on either (TrainingImages skips it)
            out.append(sha256_file(path))
    return out


def epoch_order(n: int, seed: int, epoch: int, weights: Sequence[float] | None = None) -> list[int]:
    """The training items of one epoch, in order: a permutation of ``range(n)``, or with ``weights`` ``n`` draws with
    replacement in proportion to them (torch's ``WeightedRandomSampler``). Fixed by ``(seed, epoch)``, so a
    resumed run sees the same batches."""
    if weights is None:
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
    return list(WeightedRandomSampler(list(weights), n, replacement=True, generator=gen))


class TrainingImages(Dataset):
    """One epoch's decoded, augmented training views, in :func:`epoch_order`.

    Draw k of epoch e has its randomness fixed by (seed, e, k), so an image drawn twice in an epoch (weighted
    sampling) gets two different augmentations, and a resumed run the same ones.
    """

    def __init__(self, items: Sequence[Item], views: Views, augment: str, seed: int, max_pixels: int) -> None:
        self.items = items
        self.views = views
        self.augment = augment
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch, self.order = 0, list(range(len(items)))

    def set_epoch(self, epoch: int, order: list[int]) -> None:
        self.epoch, self.order = epoch, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, float] | None:
        path, label = self.items[self.order[k]]
        aug_seed, view_seed = np.random.SeedSequence([self.seed, self.epoch, k]).generate_state(2)
        try:
            pre = self.views.pre  # native views need the image at its own scale: no reduced decode then
            img = load_image(path, max_pixels=self.max_pixels, draft_size=None if pre.views.p_native else pre.draft_size)
        except ImageLoadError:
            return None  # the validated manifest should not contain these; one bad file must not stop training
        img = apply(get_augment(self.augment, seed=int(aug_seed)), img)
        return self.views.train(img, int(view_seed), key=str(path)), float(label)


def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the views that decoded; ``None`` when none did."""
    ok = [b for b in batch if b is not None]
    if not ok:
        return None
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok], dtype=torch.float32)
