"""Shared fixtures: real images made with numpy/PIL and written with real codecs, a temporary feature cache, and
small real backbones.

Helpers are plain functions (importable as ``from conftest import synthetic_photo``) and fixtures wrap them for
``tmp_path``; nothing here mocks synthdet.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

# One intra-op thread: the models in tests are tiny or single-image, and OpenMP worker threads spin-wait badly on a
# shared 2-core CI box (a 150-step MLP fit took 19 s with 2 threads under load, 0.14 s with 1).
torch.set_num_threads(1)

#: Pillow format names by file suffix.
FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
           ".tif": "TIFF", ".tiff": "TIFF"}


def synthetic_photo(w: int = 96, h: int = 72, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients, a fine periodic texture and Gaussian noise.

    Different seeds give different phases, colours and noise, so two seeds never produce the same bytes.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tint = rng.uniform(0.6, 1.0, 3)
    base = np.stack([xx / max(w, 1) * 200, yy / max(h, 1) * 200, (xx + yy) / max(w + h, 1) * 200], axis=-1) * tint + 25
    phase = rng.uniform(0, 2 * np.pi, 2)
    texture = 20 * np.sin(xx / 2.5 + phase[0])[..., None] * np.cos(yy / 3.5 + phase[1])[..., None]
    noise = rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base + texture + noise, 0, 255).astype(np.uint8), "RGB")


def encode_image(img: Image.Image, fmt: str = "JPEG", **save_kwargs) -> bytes:
    """Encode with Pillow's real codec and return the bytes."""
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 90)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def write_image(path: str | Path, img: Image.Image | None = None, *, fmt: str | None = None, **save_kwargs) -> Path:
    """Write ``img`` (default: a synthetic photo) to ``path``; the format follows the suffix unless given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = synthetic_photo() if img is None else img
    path.write_bytes(encode_image(img, fmt or FORMATS[path.suffix.lower()], **save_kwargs))
    return path


def small_demo_csv(tmp_path: Path, n_per_class: int = 24) -> Path:
    """A labelled CSV over the first images of each class of the demo data shipped in the package."""
    from synthdet.data.demo import demo_data_dir

    src = pd.read_csv(demo_data_dir() / "manifest.csv")
    part = pd.concat([src[src.label == c].head(n_per_class) for c in (0, 1)])
    part = part.assign(path=[str(demo_data_dir() / p) for p in part.path])
    out = tmp_path / "small.csv"
    part.to_csv(out, index=False)
    return out


def demo_protocol_pool(tmp: Path) -> tuple[Path, pd.DataFrame]:
    """Twelve demo images (six per class) as a protocol pool: ``original``, ``sha256``, three folds and a group per
    class and fold; with a probe's held-out crop logits (``oof.csv``) beside the manifest."""
    from synthdet.data.demo import demo_data_dir
    from synthdet.io.files import sha256_file

    demo = pd.read_csv(demo_data_dir() / "manifest.csv")
    rows = pd.concat([demo[demo["label"] == 0].head(6), demo[demo["label"] == 1].head(6)], ignore_index=True)
    rows["original"] = [str(demo_data_dir() / p) for p in rows["path"]]
    rows["sha256"] = [sha256_file(p) for p in rows["original"]]
    rows["fold"] = [f"fold0{i % 3}" for i in range(len(rows))]
    rows["group"] = [f"{'fake' if y else 'real'}:g{i % 3}" for i, y in enumerate(rows["label"])]
    manifest = tmp / "manifest.csv"
    rows.to_csv(manifest, index=False)
    pd.DataFrame({"sha256": rows["sha256"], "logit_crop": np.linspace(-1, 1, len(rows))}).to_csv(tmp / "oof.csv")
    return manifest, rows


def labelled_items(root: Path, n: int) -> list[tuple[str, int]]:
    """``n`` tiny training images alternating real (4:3 photo-like JPEG) and "generated" (square noisy PNG)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 2:
            arr = np.asarray(synthetic_photo(40, 40, seed=i), dtype=np.int16) + rng.integers(-40, 40, (40, 40, 3))
            path = write_image(root / f"fake{i}.png", Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
        else:
            path = write_image(root / f"real{i}.jpg", synthetic_photo(48, 36, seed=i))
        out.append((str(path), i % 2))
    return out


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_image("a/b.png", w=128, h=96, seed=3, img=None, fmt=None, **save_kwargs)`` → path in tmp_path."""

    def make(name: str = "photo.jpg", *, w: int = 96, h: int = 72, seed: int = 0, img: Image.Image | None = None,
             fmt: str | None = None, **save_kwargs) -> Path:
        return write_image(tmp_path / name, synthetic_photo(w, h, seed) if img is None else img, fmt=fmt, **save_kwargs)

    return make


def make_labelled_folder(root: Path, *, n_real: int = 4, n_fake: int = 4, layout: str = "mediaeval",
                         seed: int = 0) -> Path:
    """A dataset folder shaped like the traps in the dev data: real 4:3 JPEGs, fake square PNG/WebP.

    ``layout``: ``"mediaeval"`` (``0_real/``, ``1_fake/``) or ``"named"`` (``real/``, ``fake/``).
    """
    real_dir, fake_dir = ("0_real", "1_fake") if layout == "mediaeval" else ("real", "fake")
    for i in range(n_real):
        write_image(root / real_dir / f"r{i:03d}.jpg", synthetic_photo(80, 60, seed * 1000 + i))
    for i in range(n_fake):
        suffix = ".png" if i % 2 else ".webp"
        write_image(root / fake_dir / f"f{i:03d}{suffix}", synthetic_photo(64, 64, seed * 1000 + 500 + i))
    return root


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    return make_labelled_folder(tmp_path / "dataset")


@pytest.fixture
def feature_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``SYNTHDET_CACHE`` at a fresh folder for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYNTHDET_CACHE", str(cache))
    return cache


# Created for each test: inference folds a frozen CNN's BatchNorm in place (Backbone.fold_batchnorm), which must not
# leak from one test into the next through a shared object.
@pytest.fixture
def effnet_lite0():
    """The embedded EfficientNet-Lite0 with its packaged ImageNet weights (offline, ~1 s), on CPU, as created."""
    from synthdet.backbones.base import create_backbone

    return create_backbone("effnet-lite0", device="cpu")


@pytest.fixture
def resnet18_random():
    """A randomly initialised timm ResNet-18 (fast; weights differ per test), on CPU, as created."""
    from synthdet.backbones.base import create_backbone

    return create_backbone("timm:resnet18", pretrained=False, device="cpu")


@pytest.fixture(scope="session")
def default_detector():
    """The shipped default detector, its backbone built (a few seconds, once per session)."""
    from synthdet.detectors.detector import Detector
    from synthdet.detectors.loading import load_detector

    det = load_detector()
    assert isinstance(det, Detector)
    _ = det.backbone
    return det
