"""Augmentation presets: each does what its description claims, reproducibly, and the preview CLI works."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from synthdet.cli.augment import augment_preview
from synthdet.data.augment import (
    PRESETS,
    JpegRGB,
    apply,
    contact_sheet,
    describe,
    get_augment,
    jpeg,
)
from synthdet.registry import Registry, UnknownNameError

app = typer.Typer()
app.command()(augment_preview)

JPEG_PRESETS = {"strong": (30, 95), "wang2020": (30, 100), "wang2020-0.1": (30, 100), "social": (70, 90)}


def photo(w: int = 300, h: int = 200, seed: int = 0) -> Image.Image:
    """Smooth colour gradient plus fine texture and noise: enough high frequencies for JPEG and blur to bite."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 200], axis=-1) + 25
    texture = 20 * np.sin(xx / 2.5)[..., None] * np.cos(yy / 3.5)[..., None]
    noise = np.random.default_rng(seed).normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base + texture + noise, 0, 255).astype(np.uint8), "RGB")


def pil_jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def mad(a: np.ndarray | Image.Image, b: np.ndarray | Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def laplacian_var(img: np.ndarray | Image.Image) -> float:
    gray = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("always", [False, True])
def test_every_preset_returns_rgb_image(name: str, always: bool) -> None:
    img = photo()
    aug = get_augment(name, seed=0, always=always)
    assert isinstance(aug, A.Compose)
    for _ in range(3):
        out = apply(aug, img)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == img.size
    assert np.asarray(img).dtype == np.uint8  # input untouched
    assert "\n" not in describe(name) and len(describe(name)) > 10


def test_descriptions_cite_sources() -> None:
    assert "Wang" in describe("wang2020") and "2020" in describe("wang2020")
    assert "0.1" in describe("wang2020-0.1")
    assert "Junaid" in describe("strong")
    assert "1080" in describe("social")


def test_none_is_pixel_exact_identity() -> None:
    img = photo()
    assert np.array_equal(np.asarray(apply(get_augment("none", always=True), img)), np.asarray(img))


def test_apply_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        apply(get_augment("none"), photo().convert("RGBA"))


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_matches_pil_round_trip(quality: int) -> None:
    x = np.asarray(photo())
    out = A.Compose([jpeg(quality)], seed=0)(image=x)["image"]
    assert mad(out, x) > 2.0  # really re-encoded
    assert mad(out, pil_jpeg(x, quality)) < 0.5  # ...as a genuine RGB JPEG, not channel-swapped


@pytest.mark.parametrize("name", sorted(JPEG_PRESETS))
def test_presets_end_in_real_jpeg(name: str) -> None:
    """The forced preset's output is exactly PIL's JPEG of what the earlier steps produced, at the drawn quality."""
    x = np.asarray(photo())
    full = get_augment(name, seed=7, always=True)
    full.save_applied_params = True
    result = full(image=x)
    step, params = result["applied_transforms"][-1]
    lo, hi = JPEG_PRESETS[name]
    assert step == JpegRGB.__name__ and lo <= params["quality"] <= hi

    data = {"image": x}
    for t in get_augment(name, seed=7, always=True).transforms[:-1]:  # same per-step seeds, JPEG left off
        data = t(**data)
    assert mad(result["image"], data["image"]) > 1.0
    assert mad(result["image"], pil_jpeg(data["image"], params["quality"])) < 0.5


def test_social_shrinks_long_side_to_1080_and_never_enlarges() -> None:
    for size, expected in [((2000, 1500), (1080, 810)), ((1500, 2000), (810, 1080)), ((300, 200), (300, 200))]:
        out = apply(get_augment("social", seed=0), photo(*size))
        assert out.size == expected


def test_wang2020_blur_lowers_high_frequency_energy() -> None:
    img = np.asarray(photo())
    blur = next(t for t in get_augment("wang2020", seed=0, always=True).transforms if isinstance(t, A.GaussianBlur))
    before = laplacian_var(img)
    after = [laplacian_var(blur(image=img)["image"]) for _ in range(8)]
    assert all(a <= before * 1.001 for a in after)
    assert np.mean(after) < 0.5 * before


def test_seed_reproducible_and_seeds_differ() -> None:
    img = photo()
    a, b = get_augment("strong", seed=3), get_augment("strong", seed=3)
    for _ in range(4):
        assert np.array_equal(np.asarray(apply(a, img)), np.asarray(apply(b, img)))
    c, d = get_augment("strong", seed=0, always=True), get_augment("strong", seed=1, always=True)
    assert not np.array_equal(np.asarray(apply(c, img)), np.asarray(apply(d, img)))


def test_seeded_steps_fire_independently() -> None:
    """wang2020 applies blur and JPEG independently with p=0.5; a shared seed would couple the two decisions."""
    x = np.asarray(photo(32, 32))
    combos: Counter[tuple[str, ...]] = Counter()
    for seed in range(200):
        aug = get_augment("wang2020", seed=seed)
        aug.save_applied_params = True
        combos[tuple(step for step, _ in aug(image=x)["applied_transforms"])] += 1
    assert set(combos) == {(), ("GaussianBlur",), (JpegRGB.__name__,), ("GaussianBlur", JpegRGB.__name__)}
    assert all(25 <= n <= 75 for n in combos.values())  # each ~50 of 200


def test_contact_sheet_geometry() -> None:
    img = photo()
    sheet = contact_sheet(img, ["none", "social"], n_samples=3, seed=0, tile=64)
    assert sheet.mode == "RGB" and sheet.size == (4 * 64, 2 * 64)
    full = contact_sheet(img, n_samples=1, tile=32)
    assert full.size == (2 * 32, len(PRESETS.names()) * 32)
    # Row "none": the augmented tile is the original tile apart from its label.
    tiles = np.asarray(sheet)
    assert np.array_equal(tiles[20:64, 0:64], tiles[20:64, 64:128])


def test_presets_are_a_registry() -> None:
    assert isinstance(PRESETS, Registry) and PRESETS.what == "augmentation preset"
    assert PRESETS.names() == ["none", "mild", "strong", "wang2020", "wang2020-0.1", "lean2026", "social"]
    assert describe("mild") == PRESETS.meta("mild")["description"]


def test_unknown_preset_names_valid_ones() -> None:
    calls = [lambda: get_augment("jpeg-heavy"), lambda: describe("jpeg-heavy"), lambda: contact_sheet(photo(), ["x"])]
    for call in calls:
        with pytest.raises(UnknownNameError) as err:  # a ValueError (and a KeyError)
            call()
        assert "unknown augmentation preset" in str(err.value)
        assert all(name in str(err.value) for name in PRESETS.names())


def test_cli_writes_png(tmp_path: Path) -> None:
    src, out = tmp_path / "in.png", tmp_path / "sub" / "sheet.png"
    photo().save(src)
    args = [str(src), "--out", str(out), "-p", "none", "-p", "wang2020", "-n", "2", "--tile", "48"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.size == (3 * 48, 2 * 48)


def test_cli_mounts_on_another_app(tmp_path: Path) -> None:
    main = typer.Typer()
    main.callback()(lambda: None)
    main.command("augment-preview")(augment_preview)
    src, out = tmp_path / "in.jpg", tmp_path / "sheet.png"
    photo().save(src, quality=90)
    args = ["augment-preview", str(src), "-o", str(out), "-p", "social", "-n", "1", "--tile", "32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as sheet:
        assert sheet.size == (64, 32)


def test_cli_corrupt_image_exits_2_with_reason(tmp_path: Path) -> None:
    bad, out = tmp_path / "broken.jpg", tmp_path / "sheet.png"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    result = CliRunner().invoke(app, [str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "broken.jpg" in result.output and ("corrupt" in result.output or "not-an-image" in result.output)
    assert not out.exists()


def test_cli_unknown_preset_exits_2(tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    photo().save(src)
    result = CliRunner().invoke(app, [str(src), "-p", "nope"])
    assert result.exit_code == 2 and "wang2020" in result.output
