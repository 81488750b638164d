"""slices: each robustness slice really does what its name says, deterministically per key; the small-bucket filter;
(Scoring a real detector under slices: test_evaluation.py, test_report.py.)"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pandas as pd
import pytest
from conftest import pixels, synthetic_photo
from PIL import Image

from synthdet.data.perturbations import (
    DEFAULT_SLICES,
    SLICES,
    get_slice,
    is_small,
    jpeg,
)

#: libjpeg's standard luminance table (ITU T.81 Annex K), natural order; quality q scales it (IJG formula).
STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
])


def quality_from_tables(data: bytes) -> int:
    """The IJG quality whose scaled standard table is the file's luminance table, read before decoding."""
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        luma = np.array(im.quantization[0])
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        if np.array_equal(np.clip((STD_LUMA * scale + 50) // 100, 1, 255), luma):
            return q
    raise AssertionError(f"not a standard-table JPEG: {luma[:8]}")


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """Pillow's own JPEG at ``quality`` (libjpeg's default 4:2:0), independent of the code under test."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def laplacian_variance(img: Image.Image) -> float:
    g = np.asarray(img.convert("L"), dtype=np.float64)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return synthetic_photo(240, 180, seed=3)


def test_registry_has_the_issue_slices() -> None:
    assert set(SLICES) == {"jpeg95", "jpeg85", "jpeg75", "jpeg50", "resize0.5", "resize0.25", "launder", "social",
                           "blur", "small", "thumbnail", "crop", "crop-random"}
    assert set(DEFAULT_SLICES) <= set(SLICES)
    assert get_slice("launder").name == "launder" and SLICES.meta("launder")["description"].startswith("random")
    with pytest.raises(ValueError, match="unknown slice"):
        get_slice("jpeg42")
    for s in map(get_slice, SLICES):
        assert (s.transform is None) != (s.select is None), s.name  # a transform or a subset, never both


@pytest.mark.parametrize("quality", [95, 85, 75, 50])
def test_pillow_jpeg_writes_the_requested_quality(photo: Image.Image, quality: int) -> None:
    assert quality_from_tables(encode_jpeg(photo, quality)) == quality


@pytest.mark.parametrize("quality", [95, 85, 75, 50])
def test_jpeg_slices_decode_their_quality(photo: Image.Image, quality: int) -> None:
    out = get_slice(f"jpeg{quality}")(photo, "k")
    assert out.size == photo.size and out.mode == "RGB"
    assert np.array_equal(pixels(out), pixels(decoded(encode_jpeg(photo, quality))))
    other = 50 if quality != 50 else 95
    assert not np.array_equal(pixels(out), pixels(decoded(encode_jpeg(photo, other))))
    err = np.abs(pixels(out) - pixels(photo)).mean()
    assert err > 0.2  # a lossy round trip, not a copy


def test_lower_jpeg_quality_loses_more(photo: Image.Image) -> None:
    errs = [np.abs(pixels(get_slice(f"jpeg{q}")(photo, "k")) - pixels(photo)).mean() for q in (95, 85, 75, 50)]
    assert errs == sorted(errs)


@pytest.mark.parametrize(("name", "factor"), [("resize0.5", 2), ("resize0.25", 4)])
def test_down_up_resize_keeps_size_and_removes_detail_finer_than_the_factor(name: str, factor: int) -> None:
    checker = ((np.indices((96, 128)).sum(0) % 2) * 255).astype(np.uint8)  # 1-px checkerboard: the finest detail
    img = Image.fromarray(np.stack([checker] * 3, -1), "RGB")
    out = get_slice(name)(img, "k")
    assert out.size == img.size
    assert pixels(out).std() < 0.2 * pixels(img).std()
    smooth = synthetic_photo(128, 96, seed=1)
    assert np.abs(pixels(get_slice(name)(smooth, "k")) - pixels(smooth)).mean() > 1


@pytest.mark.parametrize(("size", "expected"), [((2000, 1500), (1080, 810)), ((1200, 1600), (810, 1080)),
                                                ((800, 600), (800, 600))])
def test_social_caps_the_long_side_then_jpeg85(size: tuple[int, int], expected: tuple[int, int]) -> None:
    img = synthetic_photo(*size, seed=2)
    out = get_slice("social")(img, "k")
    assert out.size == expected
    resized = img if expected == size else img.resize(expected, Image.Resampling.BICUBIC)
    assert np.array_equal(pixels(out), pixels(jpeg(resized, quality=85)))


def test_launder_changes_content_keeps_size_and_is_seeded_by_key(photo: Image.Image) -> None:
    a = get_slice("launder")(photo, "img-a")
    assert a.size == photo.size and a.mode == "RGB"
    assert np.abs(pixels(a) - pixels(photo)).mean() > 5  # re-framed, not merely re-encoded
    assert np.abs(pixels(a) - pixels(get_slice("jpeg85")(photo, "img-a"))).mean() > 5
    keys = [f"img-{i}" for i in range(8)]
    outs = [pixels(get_slice("launder")(photo, k)) for k in keys]
    assert len({o.tobytes() for o in outs}) == len(keys)  # each key its own crop


def test_blur_lowers_laplacian_variance(photo: Image.Image) -> None:
    out = get_slice("blur")(photo, "k")
    assert out.size == photo.size
    assert laplacian_variance(out) < 0.3 * laplacian_variance(photo)


@pytest.mark.parametrize("name", sorted(set(SLICES) - {"small"}))
def test_every_transform_is_pure_and_deterministic_per_key(photo: Image.Image, name: str) -> None:
    s = get_slice(name)
    before = pixels(photo).copy()
    first, again = s(photo, "same-key"), s(photo, "same-key")
    assert np.array_equal(pixels(first), pixels(again))
    assert np.array_equal(pixels(photo), before)  # the input is not modified
    clone = pickle.loads(pickle.dumps(s))  # DataLoader workers receive slices pickled
    assert np.array_equal(pixels(clone(photo, "same-key")), pixels(first))


def test_small_bucket_is_a_subset_filter_on_the_short_side(photo: Image.Image) -> None:
    df = pd.DataFrame({"width": [600, 512, 1024, 300, 0, 4000], "height": [400, 512, 511, 2000, 0, 3000]})
    assert is_small(df).tolist() == [True, False, True, True, False, False]  # 0x0: did not decode, no size
    small = get_slice("small")
    assert small.select(df).tolist() == is_small(df).tolist()
    assert small(photo, "k") is photo  # a subset slice leaves pixels alone
    with pytest.raises(ValueError, match="width and height"):
        is_small(pd.DataFrame({"path": ["a.jpg"]}))


def test_protocol_views_thumbnail_and_native_crop() -> None:
    """The thumbnail is the centre square at 384 px; the crop keeps the image's own scale (no resampling: the same
    pixels up to the JPEG loss); both draw their JPEG quality per image, so a rerun gives the same pixels."""
    from synthdet.data.perturbations import CROP_SIDE, THUMBNAIL_SIDE, native_crop, thumbnail

    img = synthetic_photo(640, 480, seed=5)
    thumb = get_slice("thumbnail")(img, "k1")
    assert thumb.size == (THUMBNAIL_SIDE, THUMBNAIL_SIDE) and thumb.mode == "RGB"
    crop = get_slice("crop")(img, "k1")
    assert crop.size == (CROP_SIDE, CROP_SIDE)
    left, top = (640 - CROP_SIDE) // 2, (480 - CROP_SIDE) // 2
    exact = np.asarray(img.crop((left, top, left + CROP_SIDE, top + CROP_SIDE)), dtype=float)
    assert np.abs(np.asarray(crop, dtype=float) - exact).mean() < 6  # JPEG loss only, same position and scale
    assert np.array_equal(np.asarray(native_crop(img, "k1")), np.asarray(crop))
    assert np.array_equal(np.asarray(thumbnail(img, "k1")), np.asarray(thumb))
    small = synthetic_photo(100, 150, seed=6)
    assert get_slice("crop")(small, "k").size == (100, 150)  # smaller than the crop: the whole image


def test_random_crop_view_is_native_scale_anywhere_and_seeded() -> None:
    """The "crop-random" training view: a square of 160–320 px cut at the image's own scale (each pixel one source
    pixel), its side and position drawn per key, so a rerun gives the same pixels and other keys other crops; an
    image smaller than the drawn side is kept whole."""
    from synthdet.data.perturbations import RANDOM_CROP_SIDES, get_view

    x, y = np.meshgrid(np.arange(640), np.arange(480))  # a ramp that tells each pixel's coordinates (x, y) / 3
    img = Image.fromarray(np.stack([x // 3, y // 3, np.full_like(x, 128)], axis=-1).astype(np.uint8))
    view = get_view("crop-random")
    crops = {k: np.asarray(view(img, k), dtype=float) for k in "abcdef"}
    for c in crops.values():
        assert c.shape[0] == c.shape[1] and RANDOM_CROP_SIDES[0] <= c.shape[0] <= RANDOM_CROP_SIDES[1]
        side = c.shape[0]
        # native scale: across the crop the ramp climbs by the crop's own side / 3 (a resized crop would not)
        assert abs((c[:, -1, 0] - c[:, 0, 0]).mean() - (side - 1) / 3) < 2
    corners = {(round(3 * c[2, 2, 0]), round(3 * c[2, 2, 1])) for c in crops.values()}
    assert len({c.shape[0] for c in crops.values()}) > 1 and len(corners) > 1  # drawn, not fixed
    assert np.array_equal(np.asarray(view(img, "a"), dtype=float), crops["a"])
    assert view(synthetic_photo(120, 100, seed=8), "a").size == (120, 100)
