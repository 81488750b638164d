"""preprocess: one chain for real and generated images; view 0 canonical, views k>0 reproducible augmentations."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import pixels, synthetic_photo
from PIL import Image
from pydantic import ValidationError

from synthdet.preprocess import Preprocess, ViewPolicy, jpeg_roundtrip


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return synthetic_photo(160, 120, seed=11)


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


# ------------------------------------------------------------------------------------------------ canonical view


def test_canonical_view_is_deterministic(photo: Image.Image) -> None:
    pre = Preprocess(size=64)
    a = pre.render(photo)
    assert np.array_equal(arr(a), arr(pre.render(photo)))
    assert np.array_equal(arr(a), arr(pre.render(photo, view=0, key="anything")))  # view 0 ignores the key
    assert np.array_equal(arr(a), arr(Preprocess(size=64).render(photo.copy())))  # a fresh instance agrees
    assert torch.equal(pre(photo), pre(photo))


def test_canonical_view_is_centre_crop_resize_jpeg(photo: Image.Image) -> None:
    pre = Preprocess(size=64, jpeg_quality=90)
    w, h = photo.size
    manual = photo.crop(((w - h) // 2, 0, (w - h) // 2 + h, h)).resize((64, 64), Image.Resampling.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    manual.save(buf, "JPEG", quality=90, subsampling=2)
    expected = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert np.array_equal(arr(pre.render(photo)), arr(expected))
    assert np.array_equal(arr(Preprocess(size=64, jpeg_quality=None).render(photo)), arr(manual))


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.parametrize("wh", [(160, 120), (90, 300), (50, 50), (3, 2)])
@pytest.mark.parametrize("mode", ["crop", "letterbox"])
def test_output_size(size: int, wh: tuple[int, int], mode: str) -> None:
    pre = Preprocess(size=size, mode=mode)
    img = synthetic_photo(*wh, seed=1)
    for view in (0, 1, 2):
        out = pre.render(img, view=view, key="k")
        assert out.size == (size, size) and out.mode == "RGB"
    t = pre(img, view=1, key="k")
    assert t.shape == (3, size, size) and t.dtype == torch.float32


def test_tiny_images_survive_training_views() -> None:
    """Icons and 1-px strips must not crash a training-view extraction."""
    pre = Preprocess(size=32)
    for wh in [(1, 1), (5, 40), (7, 7)]:
        img = synthetic_photo(*wh, seed=2)
        for view in range(1, 8):
            assert pre.render(img, view=view, key="tiny").size == (32, 32)


def test_to_tensor_normalisation() -> None:
    pre = Preprocess(size=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0), jpeg_quality=None)
    img = Image.new("RGB", (8, 8), (255, 0, 51))
    t = pre(img)
    assert torch.allclose(t[0], torch.full((8, 8), 1.0))
    assert torch.allclose(t[1], torch.full((8, 8), -1.0))
    assert torch.allclose(t[2], torch.full((8, 8), 0.1))


def test_letterbox_pads_with_black(photo: Image.Image) -> None:
    pre = Preprocess(size=64, mode="letterbox", jpeg_quality=None)
    wide = synthetic_photo(200, 100, seed=3)
    a = arr(pre.render(wide))
    assert (a[:16] == 0).all() and (a[48:] == 0).all()  # 200x100 → 64x32 centred: 16 rows of padding each side
    assert a[16:48].mean() > 40  # the content is there
    tall = arr(pre.render(synthetic_photo(50, 100, seed=4)))
    assert (tall[:, :16] == 0).all() and (tall[:, 48:] == 0).all()
    assert tall[:, 16:48].mean() > 40
    # whole image kept: the letterboxed content equals the resized full image
    assert np.array_equal(a[16:48], arr(wide.resize((64, 32), Image.Resampling.BICUBIC, reducing_gap=3.0)))
    # crop mode, by contrast, has no padding
    assert arr(Preprocess(size=64, jpeg_quality=None).render(wide))[:16].mean() > 40


# ------------------------------------------------------------------------------------------------ training views


def test_training_views_reproducible_per_key_and_view(photo: Image.Image) -> None:
    pre = Preprocess(size=64)
    keys = [f"sha{i}" for i in range(6)]
    renders = {(k, v): arr(pre.render(photo, view=v, key=k)) for k in keys for v in (1, 2, 3)}
    for (k, v), a in renders.items():
        assert np.array_equal(a, arr(Preprocess(size=64).render(photo, view=v, key=k)))
    canonical = arr(pre.render(photo))
    items = list(renders.items())
    for i, ((k1, v1), a1) in enumerate(items):
        assert not np.array_equal(a1, canonical)
        for (k2, v2), a2 in items[i + 1 :]:
            assert not np.array_equal(a1, a2), f"{k1}:{v1} == {k2}:{v2}"


def test_training_views_cover_the_policy() -> None:
    """Over many keys the random choices really happen: flips, grayscale off by default rarely, varied crops."""
    img = synthetic_photo(120, 90, seed=5)
    pre = Preprocess(size=32, views=ViewPolicy(p_flip=1.0, p_grayscale=1.0, p_downscale=0.0, crop_scale=(1.0, 1.0)),
                     jpeg_quality=None)
    out = arr(pre.render(img, view=1, key="x"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # grayscale always
    never = Preprocess(size=32, views=ViewPolicy(p_flip=0.0, p_grayscale=0.0, p_downscale=0.0, crop_scale=(1.0, 1.0),
                                                  jpeg_quality=(100, 100)))
    flip = Preprocess(size=32, views=ViewPolicy(p_flip=1.0, p_grayscale=0.0, p_downscale=0.0, crop_scale=(1.0, 1.0),
                                                 jpeg_quality=(100, 100)))
    a = pixels(never.render(img, view=1, key="x"))
    b = pixels(flip.render(img, view=1, key="x"))
    assert np.abs(a[:, ::-1] - b).mean() < 3 < np.abs(a - b).mean()


def test_view_jpeg_quality_is_drawn_from_the_range() -> None:
    img = synthetic_photo(96, 96, seed=6)
    base = dict(p_flip=0.0, p_grayscale=0.0, p_downscale=0.0, crop_scale=(1.0, 1.0))
    low = Preprocess(size=96, views=ViewPolicy(**base, jpeg_quality=(10, 10)))
    high = Preprocess(size=96, views=ViewPolicy(**base, jpeg_quality=(98, 98)))
    ref = pixels(Preprocess(size=96, jpeg_quality=None).render(img))
    err_low = np.abs(pixels(low.render(img, view=1, key="q")) - ref).mean()
    err_high = np.abs(pixels(high.render(img, view=1, key="q")) - ref).mean()
    assert err_low > err_high + 2


# ------------------------------------------------------------------------------------------------ jpeg_roundtrip


def test_jpeg_roundtrip_really_reencodes(photo: Image.Image) -> None:
    out = jpeg_roundtrip(photo, 75)
    assert out.mode == "RGB" and out.size == photo.size
    assert not np.array_equal(arr(out), arr(photo))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=75, subsampling=2)
    manual = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert np.array_equal(arr(out), arr(manual))  # exactly libjpeg at that quality with 4:2:0
    other = io.BytesIO()
    photo.save(other, "JPEG", quality=75, subsampling=0)
    assert not np.array_equal(arr(out), arr(Image.open(io.BytesIO(other.getvalue())).convert("RGB")))


def test_jpeg_roundtrip_error_and_size_monotonic_in_quality(photo: Image.Image) -> None:
    qualities = [20, 50, 80, 95]
    errors = [np.abs(pixels(jpeg_roundtrip(photo, q)) - pixels(photo)).mean() for q in qualities]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1] + 1

    def size(q: int) -> int:
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=q, subsampling=2)
        return len(buf.getvalue())

    assert [size(q) for q in qualities] == sorted(size(q) for q in qualities)
    # re-encoding what jpeg_roundtrip produced at the same quality changes little: it already is that JPEG
    once = jpeg_roundtrip(photo, 50)
    assert np.abs(pixels(jpeg_roundtrip(once, 50)) - pixels(once)).mean() < errors[1] / 2


def test_canonical_quality_applies(photo: Image.Image) -> None:
    plain = Preprocess(size=64, jpeg_quality=None).render(photo)
    q60 = Preprocess(size=64, jpeg_quality=60).render(photo)
    assert np.array_equal(arr(q60), arr(jpeg_roundtrip(plain, 60)))
    assert not np.array_equal(arr(q60), arr(plain))


# ------------------------------------------------------------------------------------------------ identity


def test_id_changes_with_every_field() -> None:
    base = Preprocess()
    variants = [
        Preprocess(size=256),
        Preprocess(mode="letterbox"),
        Preprocess(resample="bilinear"),
        Preprocess(resample="lanczos"),
        Preprocess(mean=(0.485, 0.456, 0.406)),
        Preprocess(std=(0.229, 0.224, 0.225)),
        Preprocess(jpeg_quality=95),
        Preprocess(jpeg_quality=None),
        Preprocess(views=ViewPolicy(crop_scale=(0.5, 1.0))),
        Preprocess(views=ViewPolicy(downscale=(0.5, 1.0))),
        Preprocess(views=ViewPolicy(p_downscale=0.0)),
        Preprocess(views=ViewPolicy(jpeg_quality=(70, 90))),
        Preprocess(views=ViewPolicy(p_flip=0.0)),
        Preprocess(views=ViewPolicy(p_grayscale=0.0)),
    ]
    # every field of both models is exercised by some variant
    changed = {name for v in variants for name in Preprocess.model_fields if getattr(v, name) != getattr(base, name)}
    assert changed == set(Preprocess.model_fields)
    changed_views = {n for v in variants for n in ViewPolicy.model_fields if getattr(v.views, n) != getattr(base.views, n)}
    assert changed_views == set(ViewPolicy.model_fields)
    ids = [base.id()] + [v.id() for v in variants]
    assert len(set(ids)) == len(ids)
    assert Preprocess().id() == base.id() and len(base.id()) == 12
    assert Preprocess(size=224, mode="crop").id() == base.id()  # explicit defaults are the same identity


def test_models_are_strict() -> None:
    with pytest.raises(ValidationError):
        Preprocess(sise=224)  # typo: refused, not ignored
    with pytest.raises(ValidationError):
        Preprocess(jpeg_quality=0)
    with pytest.raises(ValidationError):
        Preprocess(mode="stretch")
    with pytest.raises(ValidationError):
        ViewPolicy(p_flipp=0.5)
    pre = Preprocess()
    with pytest.raises(ValidationError):
        pre.size = 10  # frozen: an identity cannot drift


def test_draft_size_covers_smallest_crop() -> None:
    pre = Preprocess(size=224)
    assert pre.draft_size >= 224 / pre.views.crop_scale[0]
    assert Preprocess(size=224, views=ViewPolicy(crop_scale=(0.8, 1.0))).draft_size < pre.draft_size
