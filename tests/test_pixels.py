"""pixels: every way a file can arrive becomes RGB pixels (or an ImageLoadError with a precise reason), and one
chain for real and generated images turns them into model input; view 0 canonical, views k>0 reproducible."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import encode_image, pixels, synthetic_photo, write_image
from PIL import Image
from pydantic import ValidationError

from synthdet.io.pixels import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    ImageLoadError,
    Preprocess,
    ViewPolicy,
    is_image_path,
    jpeg_roundtrip,
    load_image,
    peek_size,
    reduce_to,
)


def two_halves(w: int = 60, h: int = 40) -> np.ndarray:
    """Left half red, right half blue: orientation is visible at a glance."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return a


def png_header_only(w: int, h: int, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A syntactically valid PNG whose header claims ``w``×``h`` but whose pixel data is a few bytes."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------- plain formats


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".bmp", ".gif", ".tiff"])
def test_common_formats_decode_to_rgb(tmp_path: Path, suffix: str) -> None:
    src = synthetic_photo(70, 50, seed=1)
    path = write_image(tmp_path / f"x{suffix}", src)
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (70, 50)
    if suffix in (".png", ".bmp", ".tiff"):  # lossless: exactly the source pixels
        assert np.array_equal(np.asarray(img), np.asarray(src))
    elif suffix != ".gif":  # lossy but close
        assert np.abs(pixels(img) - pixels(src)).mean() < 12


def test_path_and_bytes_and_str_agree(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", synthetic_photo(40, 30, seed=2))
    from_path = np.asarray(load_image(path))
    assert np.array_equal(from_path, np.asarray(load_image(str(path))))
    assert np.array_equal(from_path, np.asarray(load_image(path.read_bytes())))


def test_every_listed_suffix_round_trips_through_this_pillow(tmp_path: Path) -> None:
    """A suffix is listed only if this Pillow build writes and reads it (``.heic`` used to be listed and never
    decoded); a listed ``.avif`` must really decode here."""
    formats = Image.registered_extensions()
    src = synthetic_photo(48, 32, seed=3)
    for suffix in sorted(IMAGE_SUFFIXES):
        assert formats.get(suffix) in Image.SAVE, f"{suffix}: this Pillow cannot write it, so it cannot be tested"
        path = tmp_path / f"x{suffix}"
        src.save(path, formats[suffix])
        img = load_image(path)
        assert img.mode == "RGB" and img.size == src.size, suffix
    assert {".jpg", ".jpeg", ".png", ".bmp"} <= IMAGE_SUFFIXES


def test_is_image_path() -> None:
    assert is_image_path("a/b.JPG") and is_image_path("x.webp") and is_image_path(Path("y.tiff"))
    assert not is_image_path("notes.txt") and not is_image_path("archive.jpg.zip") and not is_image_path("noext")


# ------------------------------------------------------------------------------------------------ EXIF and modes


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90° clockwise
    src = two_halves(60, 40)
    path = write_image(tmp_path / "rotated.jpg", Image.fromarray(src), quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (60, 40)  # the file really is stored un-rotated
    img = load_image(path)
    assert img.size == (40, 60)  # width and height swapped
    expected = np.rot90(src, k=-1)  # clockwise: the red left half ends on top
    assert np.abs(pixels(img) - expected.astype(np.int16)).mean() < 6
    assert tuple(np.asarray(img)[5, 20]) == pytest.approx((255, 0, 0), abs=8)
    assert tuple(np.asarray(img)[55, 20]) == pytest.approx((0, 0, 255), abs=8)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = write_image(tmp_path / "cmyk.jpg", Image.fromarray(two_halves()).convert("CMYK"), quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (60, 40)
    a = np.asarray(img).astype(int)
    assert np.abs(a[20, 10] - (255, 0, 0)).max() <= 8
    assert np.abs(a[20, 50] - (0, 0, 255)).max() <= 8


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    idx = np.zeros((20, 30), np.uint8)
    idx[:, 15:] = 1
    p = Image.fromarray(idx, "P")
    p.putpalette([10, 20, 30] + [200, 100, 50] + [0, 0, 0] * 254)
    path = tmp_path / "pal.png"
    p.save(path, transparency=0)  # palette index 0 is fully transparent
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    a = np.asarray(load_image(path))
    assert (a[:, :15] == 255).all()  # transparent → white, not the hidden palette colour (10, 20, 30)
    assert (a[:, 15:] == (200, 100, 50)).all()


def test_la_alpha_composited_on_white(tmp_path: Path) -> None:
    lum = np.full((10, 30), 40, np.uint8)
    alpha = np.zeros((10, 30), np.uint8)
    alpha[:, 10:20] = 128
    alpha[:, 20:] = 255
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(lum), Image.fromarray(alpha)]).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "LA"
    a = np.asarray(load_image(path)).astype(int)
    assert (a[:, :10] == 255).all()
    assert np.abs(a[:, 10:20] - (40 * 128 + 255 * 127) / 255).max() <= 1
    assert (a[:, 20:] == 40).all()


def test_rgba_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 30, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[:, 10:20, 3] = 128
    rgba[:, 20:, 3] = 255
    path = write_image(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA"))
    a = np.asarray(load_image(path)).astype(int)
    assert (a[:, :10] == 255).all()  # fully transparent: white, not the hidden red
    expected_half = np.array([200 * 128 + 255 * 127, 255 * 127, 255 * 127]) / 255
    assert np.abs(a[:, 10:20] - expected_half).max() <= 1
    assert (a[:, 20:] == (200, 0, 0)).all()


def test_16bit_grayscale_png_is_scaled_to_8bit(tmp_path: Path) -> None:
    levels = np.array([0, 257, 257 * 100, 257 * 200, 65535], dtype=np.uint16)  # 8-bit 0, 1, 100, 200, 255
    arr = np.tile(levels, (4, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # really a 16-bit image on disk
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (5, 4)
    a = np.asarray(img)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert a[0, :, 0].tolist() == [0, 1, 100, 200, 255]


def test_16bit_dark_image_not_clipped(tmp_path: Path) -> None:
    """A dark 16-bit image (all values < 256) is still 16-bit: it must come out nearly black, not stretched."""
    arr = np.full((4, 4), 200, dtype=np.uint16)
    path = tmp_path / "dark.png"
    Image.fromarray(arr).save(path)
    assert np.asarray(load_image(path)).max() <= 1


def test_float_tiff_is_normalised(tmp_path: Path) -> None:
    arr = np.linspace(-1.0, 3.0, 20, dtype=np.float32).reshape(4, 5)
    path = tmp_path / "f.tiff"
    Image.fromarray(arr, "F").save(path)
    a = np.asarray(load_image(path))[..., 0]
    assert a.min() == 0 and a.max() == 255
    assert (np.diff(a.ravel().astype(int)) >= 0).all()


# ------------------------------------------------------------------------------------------------ broken inputs


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode_image(synthetic_photo(200, 150, seed=3), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.reason in ("truncated", "corrupt")
    assert ei.value.path == str(path)
    with pytest.raises(ImageLoadError) as eb:
        load_image(data[: len(data) // 2])
    assert eb.value.reason in ("truncated", "corrupt")


def test_garbage_after_valid_header_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(encode_image(synthetic_photo(120, 90, seed=4), "PNG"))
    data[60:] = bytes(len(data) - 60)  # keep the header, zero the compressed data
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.reason in ("truncated", "corrupt")


def test_malformed_header_is_corrupt() -> None:
    # Pillow raises on a BMP header with an impossible bit depth; the handler once named a Pillow attribute that does
    # not exist, so such errors escaped as an AttributeError instead of a per-file "corrupt"
    with pytest.raises(ImageLoadError) as ei:
        load_image(b"BM" + bytes(12) + struct.pack("<I", 40) + struct.pack("<ii", 4, 4) + struct.pack("<HH", 1, 7)
                   + bytes(24))
    assert ei.value.reason == "corrupt" and "depth" in ei.value.detail


@pytest.mark.parametrize("fmt", ["EPS", "PDF", "PPM", "ICO", "TGA"])
def test_formats_outside_the_allow_list_are_refused_before_any_decoder_runs(fmt: str) -> None:
    """Pillow would sniff and open these (EPS through Ghostscript, a program run on the file's bytes): refused as
    not an image, the accepted formats named, nothing of the decoder's internals said."""
    with pytest.raises(ImageLoadError) as ei:
        load_image(encode_image(synthetic_photo(64, 48), fmt))
    assert ei.value.reason == "not-an-image" and "JPEG, MPO, PNG" in ei.value.detail
    assert "Ghostscript" not in str(ei.value)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.reason == "empty-file"
    with pytest.raises(ImageLoadError) as eb:
        load_image(b"")
    assert eb.value.reason == "empty-file"


def test_text_file_with_jpg_suffix(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.reason == "not-an-image"
    assert str(path) in str(ei.value)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as ei:
        load_image(tmp_path / "nope.jpg")
    assert ei.value.reason == "not-found"
    with pytest.raises(ImageLoadError) as ed:
        load_image(tmp_path)
    assert ed.value.reason == "is-a-directory"


def test_error_is_an_exception_with_reason_and_detail() -> None:
    err = ImageLoadError("x.jpg", "corrupt", "bad marker")
    assert isinstance(err, Exception)
    assert (err.path, err.reason, err.detail) == ("x.jpg", "corrupt", "bad marker")
    assert str(err) == "x.jpg: corrupt (bad marker)"


# ------------------------------------------------------------------------------------------------ pixel limits


def test_decompression_bomb_single_colour_png(tmp_path: Path) -> None:
    """A real 20000×20000 single-colour PNG compresses to a few hundred KB; the header alone must refuse it."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(20000, 20000))
    assert path.stat().st_size < 1000
    with pytest.raises(ImageLoadError) as ei:
        load_image(path)
    assert ei.value.reason == "too-large"
    assert "limit" in ei.value.detail
    assert f"{DEFAULT_MAX_PIXELS:,}" in ei.value.detail  # names the limit the user can change


def test_real_single_colour_png_over_a_small_limit(tmp_path: Path) -> None:
    path = tmp_path / "flat.png"
    Image.new("RGB", (2000, 1500), (30, 60, 90)).save(path, optimize=True)
    assert path.stat().st_size < 50_000  # compresses tiny, decodes big
    with pytest.raises(ImageLoadError) as ei:
        load_image(path, max_pixels=1_000_000)
    assert ei.value.reason == "too-large"
    assert "1,000,000" in ei.value.detail and "3,000,000" in ei.value.detail
    img = load_image(path, max_pixels=3_000_000)  # exactly at the limit is allowed
    assert img.size == (2000, 1500) and np.asarray(img)[0, 0].tolist() == [30, 60, 90]


def test_max_pixels_is_configurable_both_ways(tmp_path: Path) -> None:
    path = write_image(tmp_path / "p.png", synthetic_photo(50, 40))
    assert load_image(path).size == (50, 40)
    with pytest.raises(ImageLoadError) as ei:
        load_image(path, max_pixels=50 * 40 - 1)
    assert ei.value.reason == "too-large"
    assert load_image(path, max_pixels=50 * 40).size == (50, 40)


def test_limit_is_ours_not_pillows(tmp_path: Path) -> None:
    """95 Mpx is under the documented default of 100 Mpx: not 'too-large' (Pillow only warns at ~89 Mpx).

    The header-only file then fails as a broken image, which proves the size check let it through.
    """
    data = png_header_only(10000, 9500, bit_depth=1, colour_type=0)
    with pytest.raises(ImageLoadError) as ei:
        load_image(data)
    assert ei.value.reason in ("truncated", "corrupt")
    with pytest.raises(ImageLoadError) as es:
        load_image(data, max_pixels=90_000_000)
    assert es.value.reason == "too-large"
    assert "90,000,000" in es.value.detail


# ------------------------------------------------------------------------------------------------ reduced decode


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    return write_image(path, synthetic_photo(750, 500, seed=5).resize((3000, 2000), Image.Resampling.BICUBIC), quality=85)


@pytest.mark.parametrize(("draft", "factor"), [(224, 8), (300, 6), (600, 3), (1000, 2)])
def test_reduced_decode_keeps_short_side(big_jpeg: Path, draft: int, factor: int) -> None:
    img = load_image(big_jpeg, draft_size=draft)
    assert img.info["draft_scale"] == factor  # the largest integer factor that keeps ``draft`` px, not a power of 2
    assert img.size == (-(-3000 // factor), -(-2000 // factor)) and min(img.size) >= draft  # reduce() rounds up


def test_reduction_not_needed_keeps_full_size(big_jpeg: Path) -> None:
    assert load_image(big_jpeg).size == (3000, 2000)
    assert load_image(big_jpeg, draft_size=1500).size == (3000, 2000)  # a factor of 2 would go below 1500
    assert load_image(big_jpeg, draft_size=1500).info["draft_scale"] == 1


def test_reduced_decode_is_the_box_reduction_of_the_full_decode(big_jpeg: Path) -> None:
    small = load_image(big_jpeg, draft_size=224)
    assert np.array_equal(np.asarray(small), np.asarray(load_image(big_jpeg).reduce(small.info["draft_scale"])))


def test_reduced_decode_is_format_blind(tmp_path: Path) -> None:
    """The same pixels as JPEG and as PNG reduce to the same pixels (the old JPEG-only DCT draft did not)."""
    jpg = write_image(tmp_path / "a.jpg", synthetic_photo(1200, 900, seed=6), quality=90)
    png = write_image(tmp_path / "a.png", load_image(jpg))  # exactly the pixels the JPEG decodes to
    a, b = load_image(jpg, draft_size=224), load_image(png, draft_size=224)
    assert a.info["draft_scale"] == b.info["draft_scale"] == 4
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_reduced_decode_with_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write_image(tmp_path / "rot.jpg", synthetic_photo(1600, 1000, seed=7), quality=85, exif=exif.tobytes())
    img = load_image(path, draft_size=224)
    assert img.size == (1000 // 4, 1600 // 4) and img.info["draft_scale"] == 4
    assert img.info["full_size"] == (1000, 1600)  # the upload's size, after rotation, kept beside the reduced copy


def test_peek_size_reads_the_header_alone() -> None:
    """Sizes come from the first bytes of a file (a truncated PNG or JPEG still gives them); what is not an accepted
    image gives None, EPS included (its header is never handed to Ghostscript)."""
    png = encode_image(synthetic_photo(300, 200, seed=1), "PNG")
    jpg = encode_image(synthetic_photo(300, 200, seed=1), "JPEG")
    assert peek_size(png[:64]) == (300, 200) and peek_size(jpg[:1024]) == (300, 200)
    assert peek_size(b"not an image") is None and peek_size(b"") is None
    assert peek_size(encode_image(synthetic_photo(30, 20), "EPS")) is None


def test_palette_image_is_reduced_as_colours_not_indices(tmp_path: Path) -> None:
    src = synthetic_photo(900, 900, seed=8).quantize(64)
    path = write_image(tmp_path / "p.png", src)
    img = load_image(path, draft_size=300)
    assert img.info["draft_scale"] == 3
    assert np.array_equal(np.asarray(img), np.asarray(src.convert("RGB").reduce(3)))


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
    out = jpeg_roundtrip(photo, 75, subsampling="4:2:0")
    assert out.mode == "RGB" and out.size == photo.size
    assert not np.array_equal(arr(out), arr(photo))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=75, subsampling=2)
    manual = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    assert np.array_equal(arr(out), arr(manual))  # exactly libjpeg at that quality with 4:2:0
    other = io.BytesIO()
    photo.save(other, "JPEG", quality=75, subsampling=0)
    full_chroma = Image.open(io.BytesIO(other.getvalue())).convert("RGB")
    assert not np.array_equal(arr(out), arr(full_chroma))
    assert np.array_equal(arr(jpeg_roundtrip(photo, 75, subsampling="4:4:4")), arr(full_chroma))


def test_jpeg_roundtrip_keeps_greyscale(photo: Image.Image) -> None:
    grey = photo.convert("L")
    out = jpeg_roundtrip(grey, 80, subsampling="4:2:0")
    assert out.mode == "L" and out.size == grey.size
    buf = io.BytesIO()
    grey.save(buf, "JPEG", quality=80)
    assert np.array_equal(arr(out), arr(Image.open(io.BytesIO(buf.getvalue()))))  # one-channel JPEG, not RGB


def test_jpeg_roundtrip_error_and_size_monotonic_in_quality(photo: Image.Image) -> None:
    qualities = [20, 50, 80, 95]
    errors = [np.abs(pixels(jpeg_roundtrip(photo, q, subsampling="4:2:0")) - pixels(photo)).mean() for q in qualities]
    assert errors == sorted(errors, reverse=True) and errors[0] > errors[-1] + 1

    def size(q: int) -> int:
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=q, subsampling=2)
        return len(buf.getvalue())

    assert [size(q) for q in qualities] == sorted(size(q) for q in qualities)
    # re-encoding what jpeg_roundtrip produced at the same quality changes little: it already is that JPEG
    once = jpeg_roundtrip(photo, 50, subsampling="4:2:0")
    assert np.abs(pixels(jpeg_roundtrip(once, 50, subsampling="4:2:0")) - pixels(once)).mean() < errors[1] / 2


def test_canonical_quality_applies(photo: Image.Image) -> None:
    plain = Preprocess(size=64, jpeg_quality=None).render(photo)
    q60 = Preprocess(size=64, jpeg_quality=60).render(photo)
    assert np.array_equal(arr(q60), arr(jpeg_roundtrip(plain, 60, subsampling="4:2:0")))
    assert not np.array_equal(arr(q60), arr(plain))


# ------------------------------------------------------------------------------------------------ identity


def test_id_changes_with_every_field() -> None:
    base = Preprocess()
    variants = [
        Preprocess(size=256),
        Preprocess(mode="letterbox"),
        Preprocess(scale="native"),
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
        Preprocess(views=ViewPolicy(p_native=0.5)),
        Preprocess(views=ViewPolicy(p_native=0.5, native_side=(0.3, 1.0))),
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


def test_resize_scale_keeps_the_ids_of_detectors_made_before_it_existed() -> None:
    """``scale="resize"`` is what every earlier Preprocess did, so it must not invalidate cached features."""
    assert Preprocess().id() == Preprocess(scale="resize").id()
    assert Preprocess.model_validate({k: v for k, v in Preprocess().model_dump().items() if k != "scale"}).id() \
        == Preprocess().id()


def test_native_scale_feeds_small_crops_at_their_own_size_and_shrinks_large_ones() -> None:
    rng = np.random.default_rng(0)
    pre = Preprocess(size=96, scale="native", jpeg_quality=None)
    small = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    large = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    assert pre.render(small).size == (60, 60)  # centre square, no resampling
    assert np.array_equal(np.asarray(pre.render(small)), np.asarray(small)[:, 10:70])
    assert pre.render(large).size == (96, 96)
    assert Preprocess(size=96, jpeg_quality=None).render(small).size == (96, 96)  # resize: upsampled
    for v in range(1, 6):  # training views: crops at native scale, never larger than the model size
        side = pre.render(large, view=v, key="k").size[0]
        assert side <= 96
        assert pre.render(small, view=v, key="k").size[0] <= 60


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


def test_one_full_decode_reduced_twice_equals_two_reduced_decodes(big_jpeg: Path) -> None:
    """What the feature extractor needs for view 0 and training views, from a single decode."""
    full = load_image(big_jpeg)
    for short in (224, 600, 1500):
        once = reduce_to(full, short)
        again = load_image(big_jpeg, draft_size=short)
        assert once.info["draft_scale"] == again.info["draft_scale"]
        assert np.array_equal(np.asarray(once), np.asarray(again))


def test_native_views_are_windows_at_the_images_own_scale_and_leave_older_ids_alone() -> None:
    """A native training view is a crop of the full-resolution image, never resampled (its side comes from
    ``native_side`` × size); the other views are the downscaled whole. Without native views the id is the one
    detectors trained before the field existed carry."""
    h, w = 900, 1200
    yy, xx = np.mgrid[0:h, 0:w]
    ramps = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), np.full((h, w), 128.0)], axis=2)
    img = Image.fromarray(ramps.round().astype(np.uint8))
    pre = Preprocess(size=128, scale="native",
                     views=ViewPolicy(p_native=0.5, native_side=(0.5, 1.0), jpeg_quality=(100, 100), p_flip=0.0,
                                      p_grayscale=0.0, p_downscale=0.0))
    native = [v for v in range(1, 40) if pre.is_native_view(v, "k")]
    assert 8 < len(native) < 32 and not pre.is_native_view(0, "k")  # about half; view 0 never
    for v in native[:5]:
        out = np.asarray(pre.render(img, view=v, key="k"), dtype=np.float64)
        assert 64 <= out.shape[0] == out.shape[1] <= 128
        # one output pixel per input pixel: the ramps keep their slope (a downscaled view would be steeper)
        slope_x = np.polyfit(np.arange(out.shape[1]), out[:, :, 0].mean(axis=0), 1)[0]
        slope_y = np.polyfit(np.arange(out.shape[0]), out[:, :, 1].mean(axis=1), 1)[0]
        assert slope_x == pytest.approx(255 / (w - 1), rel=0.05) and slope_y == pytest.approx(255 / (h - 1), rel=0.05)
    other = next(v for v in range(1, 40) if v not in native)
    whole = np.asarray(pre.render(img, view=other, key="k"), dtype=np.float64)
    assert whole.shape[:2] == (128, 128)
    assert np.polyfit(np.arange(128), whole[:, :, 0].mean(axis=0), 1)[0] > 1.5 * 255 / (w - 1)  # downscaled
    off = Preprocess(size=128, scale="native")
    assert off.id() == Preprocess(size=128, scale="native", views=ViewPolicy(native_side=(0.2, 0.4))).id()
    assert off.id() != pre.id()


def test_a_window_is_cut_at_the_images_own_scale_and_never_resampled() -> None:
    """``mode="window"``: view 0 is the centre window's pixels exactly, a small image whole; a training view is a
    window at another position, same size; nothing is decoded reduced."""
    pre = Preprocess(size=64, mode="window", jpeg_quality=None, views=ViewPolicy(p_flip=0.0, p_grayscale=0.0,
                                                                                jpeg_quality=(100, 100)))
    img = synthetic_photo(200, 150, seed=3)
    centre = np.asarray(img)[43:107, 68:132]
    assert np.array_equal(np.asarray(pre.render(img)), centre)
    small = synthetic_photo(50, 40, seed=4)
    assert np.array_equal(np.asarray(pre.render(small)), np.asarray(small))
    view = pre.render(img, view=1, key="k")
    assert view.size == (64, 64) and not np.array_equal(np.asarray(view), centre)
    assert pre.canonical_draft_size is None and pre.draft_size is None
    assert pre.id() != Preprocess(size=64, jpeg_quality=None).id()


def test_file_sizes_read_headers_and_give_nan_for_what_cannot_be_read(tmp_path: Path) -> None:
    """Width and height from each header (EXIF rotation aside, as stored); a missing file, a non-image or no path at
    all is NaN, not an error: a size bin is left empty rather than a run stopped."""
    from synthdet.io.pixels import file_megapixels, file_sizes

    photo = write_image(tmp_path / "a.png", synthetic_photo(300, 200))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    paths = [photo, tmp_path / "b.jpg", tmp_path / "missing.jpg", float("nan")]
    sizes = file_sizes(paths)  # type: ignore[arg-type]
    assert sizes[0].tolist() == [300.0, 200.0] and np.isnan(sizes[1:]).all()
    assert file_megapixels(paths)[0] == pytest.approx(0.06) and np.isnan(file_megapixels(paths)[1:]).all()  # type: ignore[arg-type]
    assert file_sizes([]).shape == (0, 2)
