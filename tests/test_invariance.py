"""No path from file to model input may tell the classes apart by how an image is stored.

In the development data real photos are 4:3 camera JPEGs with EXIF and generated images square PNG/WebP, so every
property of the container (format, file size, metadata, colour mode, bit depth, aspect ratio) is a label leak if it
reaches the model. Pixel-level tests check the tensors the model sees; the detector-level tests run the shipped
default (``load_detector()``: packaged head, embedded EfficientNet-Lite0 weights, real forward pass) on large photos,
where reduced decoding engages.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import synthetic_photo
from PIL import Image, ImageCms

from synthdet.data.demo import demo_data_dir
from synthdet.io.pixels import Preprocess, load_image

PRE = Preprocess()  # the shipped default's chain: 224 px centre crop, bicubic, canonical JPEG q90
#: Lossless WebP at the fastest effort (the default effort takes seconds on a 1-Mpx image); still bit-exact.
WEBP_LOSSLESS = {"lossless": True, "method": 0, "quality": 0}


def model_input(source: Path | bytes, pre: Preprocess = PRE, views: tuple[int, ...] = (0, 1, 2)) -> torch.Tensor:
    """The tensors the model sees for ``source``, decoded as the feature extractor does (view 0 at the canonical
    reduction, training views at the finer one)."""
    canonical = load_image(source, draft_size=pre.canonical_draft_size)
    fine = load_image(source, draft_size=pre.draft_size)
    return torch.stack([pre(canonical if v == 0 else fine, view=v, key="k") for v in views])


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and torch.equal(a, b), f"max |diff| {(a - b).abs().max().item() * 127.5:.2f} levels"


def levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference in 8-bit grey levels (the default normalisation maps 255 levels onto [-1, 1])."""
    return float((a - b).abs().mean()) * 127.5


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A photo-like image large enough that both reductions engage (canonical factor 2, training factor 1)."""
    return synthetic_photo(1000, 960, seed=21)


# ----------------------------------------------------------------------------------------------- containers


def test_lossless_containers_give_identical_tensors(photo: Image.Image) -> None:
    ref = model_input(encode(photo, "PNG"))
    for fmt, kw in [("WEBP", WEBP_LOSSLESS), ("BMP", {}), ("TIFF", {}), ("PNG", {"compress_level": 0})]:
        assert_same(model_input(encode(photo, fmt, **kw)), ref)


def test_same_pixels_as_jpeg_and_png_give_identical_tensors(photo: Image.Image) -> None:
    """A JPEG and a PNG of exactly the pixels the JPEG decodes to: the old JPEG-only DCT draft made them differ."""
    jpg = encode(photo, "JPEG", quality=90)
    png = encode(load_image(jpg), "PNG")
    assert_same(model_input(jpg), model_input(png))


@pytest.mark.parametrize("size", [(400, 300), (1000, 960)])
def test_jpeg_q100_444_is_close_to_png(photo: Image.Image, size: tuple[int, int]) -> None:
    """JPEG q100 4:4:4 is not lossless (about half a level on average here); the chain keeps that within about a
    level, and a large image's reduction averages it down (the old JPEG-only draft left it at ~0.48 levels)."""
    img = photo.resize(size, Image.Resampling.BICUBIC) if size != photo.size else photo
    png, jpg = encode(img, "PNG"), encode(img, "JPEG", quality=100, subsampling=0)
    assert levels(model_input(png), model_input(jpg)) < 1.5
    if min(size) >= 2 * PRE.canonical_draft_size:
        plain = Preprocess(jpeg_quality=None)  # view 0 without the canonical re-encode, which amplifies ±1 changes
        assert levels(model_input(png, plain, views=(0,)), model_input(jpg, plain, views=(0,))) < 0.3


# --------------------------------------------------------------------------------------- metadata and size


def test_exif_present_or_stripped_gives_identical_tensors(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SynthCam"  # Make
    exif[0x0110] = "Model 1"  # Model
    exif[0x0112] = 1  # orientation: as stored
    for fmt, kw in [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", WEBP_LOSSLESS)]:
        with_exif, without = encode(photo, fmt, exif=exif.tobytes(), **kw), encode(photo, fmt, **kw)
        assert with_exif != without and Image.open(io.BytesIO(with_exif)).getexif().get(0x010F) == "SynthCam"
        assert_same(model_input(with_exif), model_input(without))


def test_icc_profile_and_text_chunks_are_ignored(photo: Image.Image) -> None:
    from PIL import PngImagePlugin

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("parameters", "a prompt, Steps: 30, Sampler: Euler a")  # what generators write
    ref = model_input(encode(photo, "PNG"))
    assert_same(model_input(encode(photo, "PNG", pnginfo=text)), ref)
    assert_same(model_input(encode(photo, "PNG", icc_profile=icc)), ref)
    jpg = encode(photo, "JPEG", quality=90)
    assert_same(model_input(encode(photo, "JPEG", quality=90, icc_profile=icc)), model_input(jpg))


def test_file_size_does_not_change_tensors(photo: Image.Image) -> None:
    """Same pixels, very different byte counts: PNG compression level, JPEG Huffman optimisation, progressive."""
    small, big = encode(photo, "PNG", compress_level=9), encode(photo, "PNG", compress_level=0)
    assert len(big) > 1.2 * len(small)
    assert_same(model_input(small), model_input(big))
    base = encode(photo, "JPEG", quality=90)
    for kw in [{"optimize": True}, {"progressive": True}]:
        other = encode(photo, "JPEG", quality=90, **kw)
        assert len(other) != len(base)
        assert_same(model_input(other), model_input(base))


# ------------------------------------------------------------------------------------------- colour modes


def test_greyscale_stored_as_l_or_rgb_gives_identical_tensors(photo: Image.Image) -> None:
    grey = photo.convert("L")
    for fmt in ("PNG", "WEBP"):
        kw = WEBP_LOSSLESS if fmt == "WEBP" else {}
        assert_same(model_input(encode(grey, fmt, **kw)), model_input(encode(grey.convert("RGB"), fmt, **kw)))


def test_opaque_alpha_and_palette_give_identical_tensors(photo: Image.Image) -> None:
    ref = model_input(encode(photo, "PNG"))
    assert_same(model_input(encode(photo.convert("RGBA"), "PNG")), ref)
    pal = photo.quantize(256, method=Image.Quantize.FASTOCTREE)
    assert_same(model_input(encode(pal, "PNG")), model_input(encode(pal.convert("RGB"), "PNG")))


def png16(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w, _ = rgb16.shape
    rows = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16bit_png_is_near_identical_to_its_8bit_version() -> None:
    rng = np.random.default_rng(4)
    rgb16 = (np.asarray(synthetic_photo(480, 360, seed=4), np.uint16) * 257 + rng.integers(0, 257, (360, 480, 3))).astype(np.uint16)
    rgb8 = Image.fromarray(np.round(rgb16 / 257).astype(np.uint8))
    assert levels(model_input(png16(rgb16)), model_input(encode(rgb8, "PNG"))) < 1.0
    grey16 = rgb16[..., 0]
    grey8 = Image.fromarray(np.round(grey16 / 257).astype(np.uint8))
    assert_same(model_input(encode(Image.fromarray(grey16), "PNG")), model_input(encode(grey8, "PNG")))


# ------------------------------------------------------------------------------------------- aspect ratio


@pytest.mark.parametrize("side", [240, 960])
def test_4_3_and_square_sources_give_the_same_square_crop(side: int) -> None:
    """A 4:3 photo and the square that is its centre reach the model identically: no bars, no aspect cue."""
    wide = synthetic_photo(side * 4 // 3, side, seed=9)
    offset = (wide.width - side) // 2
    square = wide.crop((offset, 0, offset + side, side))
    a = model_input(encode(wide, "PNG"), views=(0,))
    b = model_input(encode(square, "PNG"), views=(0,))
    assert a.shape == (1, 3, PRE.size, PRE.size)
    assert_same(a, b)
    black = (torch.zeros(3) - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    edges = torch.cat([a[0, :, 0], a[0, :, -1], a[0, :, :, 0], a[0, :, :, -1]], dim=1)
    assert not torch.isclose(edges, black[:, None].expand_as(edges), atol=0.05).all(dim=0).any()  # no black bars


# ------------------------------------------------------------------------------ the shipped default detector


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    """Real photos from the packaged demo data, upscaled to a 960-px short side with mild sensor-like noise (an
    upscaled photo lacks the fine detail of a real camera photo, which is what reduced-DCT decoding changes)."""
    demo = sorted((demo_data_dir() / "real").glob("*.jpg"))[::30][:3]
    out = []
    for i, path in enumerate(demo):
        img = Image.open(path).convert("RGB")
        big = img.resize((img.width * 960 // min(img.size), img.height * 960 // min(img.size)), Image.Resampling.LANCZOS)
        noise = np.random.default_rng(i).normal(0, 2.0, (big.height, big.width, 3))
        out.append(Image.fromarray(np.clip(np.asarray(big, np.float64) + noise, 0, 255).astype(np.uint8)))
    return out


@pytest.fixture(scope="module")
def shipped() -> Any:
    """The shipped default as users score it: its ONNX graph on onnxruntime (torch parity: tests/test_graph.py)."""
    from synthdet.engines.onnx_runtime import load_graph

    return load_graph()


def shipped_scores(det: Any, paths: list[Path]) -> np.ndarray:
    results = list(det.predict_paths(paths, progress=False, num_workers=0))
    assert all(p is not None for _, p, _ in results), results
    return np.array([p for _, p, _ in results], dtype=np.float64)


def test_shipped_default_scores_the_same_pixels_identically_in_any_container(
    tmp_path: Path, large_photos: list[Image.Image], shipped: Any
) -> None:
    """Each photo as a camera-like JPEG, and its decoded pixels as PNG, lossless WebP and BMP: one score per photo.

    The old decoder reduced JPEGs (only) at the DCT, so the same pixels scored differently by container."""
    paths = []
    for i, img in enumerate(large_photos):
        jpg = tmp_path / f"{i}.jpg"
        img.save(jpg, "JPEG", quality=92)
        decoded = load_image(jpg)
        assert min(decoded.size) >= 900
        paths.append(jpg)
        for fmt, suffix, kw in [("PNG", ".png", {}), ("WEBP", ".webp", WEBP_LOSSLESS), ("BMP", ".bmp", {})]:
            decoded.save(tmp_path / f"{i}{suffix}", fmt, **kw)
            paths.append(tmp_path / f"{i}{suffix}")
    p = shipped_scores(shipped, paths).reshape(len(large_photos), 4)
    lg = logit(p)
    assert np.ptp(p, axis=1).max() < 1e-5, p
    assert np.ptp(lg, axis=1).max() < 1e-3, lg



def test_shipped_default_scores_png_lossless_webp_and_jpeg_q100_within_001(
    tmp_path: Path, large_photos: list[Image.Image], shipped: Any
) -> None:
    """The issue's check: each large photo saved independently as PNG, lossless WebP and JPEG q100 4:4:4.

    PNG and lossless WebP hold the same pixels and must score identically; JPEG q100 rounds each pixel by about half a
    grey level, and the score may move by less than 0.05: the default of this release moves by up to 0.001 (the
    pair on the earlier pool 0.011, a single Lite0 probe 0.041; the old JPEG-only DCT reduction moved it by up to 0.025, and the
    container itself never moves it)."""
    paths = []
    for i, img in enumerate(large_photos):
        for fmt, suffix, kw in [("PNG", ".png", {}), ("WEBP", ".webp", WEBP_LOSSLESS),
                                ("JPEG", ".jpg", {"quality": 100, "subsampling": 0})]:
            img.save(tmp_path / f"{i}{suffix}", fmt, **kw)
            paths.append(tmp_path / f"{i}{suffix}")
    p = shipped_scores(shipped, paths).reshape(len(large_photos), 3)
    assert np.array_equal(p[:, 0], p[:, 1]), p
    assert np.abs(p[:, 2] - p[:, 0]).max() < 0.05, p


# ------------------------------------------------ the shipped default: what users do to a photo before scoring it
#: Largest score change allowed for each everyday transformation of the same picture, on the shipped default (its
#: reported, calibrated probability). Measured on 8 packaged demo pictures with the default of this release (largest
#: change: EXIF 0, formats 0.050, half size 0.202, greyscale 0.286; README, "Invariance"); the tolerances leave a
#: margin over them.
TOLERANCE = {"exif": 0.0, "png-jpeg95-webp95": 0.12, "half-size": 0.30, "greyscale": 0.33}


def everyday_copies(img: Image.Image) -> dict[str, dict[str, bytes]]:
    """One picture as users meet it: the reference (PNG), and each transformation's copies."""
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "EOS 5D", "Adobe Photoshop"
    half = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
    return {
        "exif": {"with": encode(img, "JPEG", quality=95, exif=exif), "without": encode(img, "JPEG", quality=95)},
        "png-jpeg95-webp95": {"png": encode(img, "PNG"), "jpeg95": encode(img, "JPEG", quality=95),
                              "webp95": encode(img, "WEBP", quality=95)},
        "half-size": {"full": encode(img, "PNG"), "half": encode(half, "PNG")},
        "greyscale": {"colour": encode(img, "PNG"), "grey": encode(img.convert("L"), "PNG")},
    }


def everyday_pictures() -> list[Image.Image]:
    """Four real photos and four generated images from the packaged demo data (256–320 px), brought to a 640-px short
    side with mild sensor-like noise so that half size is still a picture of ordinary size."""
    import pandas as pd

    rows = pd.read_csv(demo_data_dir() / "manifest.csv")
    out = []
    for label in (0, 1):
        for i, path in enumerate(rows[rows["label"] == label]["path"].iloc[::25][:4]):
            img = load_image(demo_data_dir() / path)
            big = img.resize((img.width * 640 // min(img.size), img.height * 640 // min(img.size)),
                             Image.Resampling.LANCZOS)
            noise = np.random.default_rng(10 * label + i).normal(0, 2.0, (big.height, big.width, 3))
            out.append(Image.fromarray(np.clip(np.asarray(big, np.float64) + noise, 0, 255).astype(np.uint8)))
    return out


def test_shipped_default_is_stable_under_everyday_transformations(tmp_path: Path, shipped: Any) -> None:
    pictures = everyday_pictures()
    assert len(pictures) == 8
    deltas: dict[str, list[float]] = {name: [] for name in TOLERANCE}
    for i, img in enumerate(pictures):  # each picture's copies encoded once, scored in one pass
        groups = everyday_copies(img)
        paths = []
        for name, copies in groups.items():
            for kind, data in copies.items():
                (tmp_path / f"{name}-{i}-{kind}").write_bytes(data)
                paths.append(tmp_path / f"{name}-{i}-{kind}")
        scores = iter(shipped_scores(shipped, paths))
        for name, copies in groups.items():
            p = np.array([next(scores) for _ in copies])
            deltas[name].append(float(np.ptp(p)))
            if i < 4:  # a real photo: no everyday copy of it may be called generated
                assert p.max() < shipped.threshold, (name, i, p)
    for name, tol in TOLERANCE.items():
        assert max(deltas[name]) <= tol, (name, np.round(deltas[name], 4))
