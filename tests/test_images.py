"""images.load_image: every way a file can arrive becomes RGB pixels, or an ImageLoadError with a precise reason."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_image, pixels, synthetic_photo, write_image
from PIL import Image

from synthdet.images import DEFAULT_MAX_PIXELS, ImageLoadError, is_image_path, load_image


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


# ------------------------------------------------------------------------------------------------ draft decode


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    return write_image(path, synthetic_photo(750, 500, seed=5).resize((3000, 2000), Image.Resampling.BICUBIC), quality=85)


@pytest.mark.parametrize("draft", [224, 300, 600])
def test_draft_decode_keeps_short_side(big_jpeg: Path, draft: int) -> None:
    img = load_image(big_jpeg, draft_size=draft)
    w, h = img.size
    assert min(w, h) >= draft
    assert w < 3000 and h < 2000  # really decoded at a reduced DCT scale
    assert w / h == pytest.approx(1.5, rel=0.01)


def test_draft_not_needed_keeps_full_size(big_jpeg: Path) -> None:
    assert load_image(big_jpeg).size == (3000, 2000)
    assert load_image(big_jpeg, draft_size=1500).size == (3000, 2000)  # a 1/2 scale would go below 1500


def test_draft_content_matches_full_decode(big_jpeg: Path) -> None:
    small = load_image(big_jpeg, draft_size=224)
    full = load_image(big_jpeg).resize(small.size, Image.Resampling.BOX)
    assert np.abs(pixels(small) - pixels(full)).mean() < 8


def test_draft_does_not_touch_png(tmp_path: Path) -> None:
    path = write_image(tmp_path / "big.png", synthetic_photo(1200, 900, seed=6))
    assert load_image(path, draft_size=224).size == (1200, 900)


def test_draft_with_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write_image(tmp_path / "rot.jpg", synthetic_photo(1600, 1000, seed=7), quality=85, exif=exif.tobytes())
    w, h = load_image(path, draft_size=224).size
    assert h > w and min(w, h) >= 224 and max(w, h) < 1600
