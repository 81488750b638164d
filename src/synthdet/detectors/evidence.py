"""Evidence read from an image file — EXIF, the JPEG quality its quantisation tables imply, C2PA content credentials.

Reported beside a detector's score and never mixed into it: a missing EXIF block or a standard JPEG table says how
the file was last saved, not who made the picture.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, computed_field


class Exif(BaseModel):
    make: str | None = None
    model: str | None = None
    software: str | None = None
    datetime_original: str | None = None

    @computed_field  # type: ignore[prop-decorator]  # in the JSON too: the web page shows this name, not its own
    @property
    def camera(self) -> str | None:
        """Make and model as one name, the brand once ("Canon EOS 5D Mark IV", not "Canon Canon EOS …")."""
        make, model = (self.make or "").strip(), (self.model or "").strip()
        brand = make.split()[0].lower() if make else ""  # "NIKON CORPORATION" + "NIKON D3X": the model says it all
        if model and model.lower().startswith(brand):
            return model
        return f"{make} {model}".strip() or None


class JpegQuality(BaseModel):
    """What the quantisation tables say about the last JPEG encode (not about who made the image)."""

    quality: int  # the IJG quality whose standard tables are closest
    standard: bool  # the tables are exactly IJG's at that quality (libjpeg, Pillow, most software)
    mean_abs_diff: float  # mean absolute difference to those tables, per coefficient
    tables: int  # number of quantisation tables in the file


class C2pa(BaseModel):
    """C2PA content credentials: ``status`` ``present``, ``absent``, ``not-checked`` or ``error``."""

    status: Literal["present", "absent", "not-checked", "error"]
    detail: str = ""
    claim_generator: str | None = None
    issuer: str | None = None
    digital_source_types: list[str] = []
    validation_state: str | None = None


class Evidence(BaseModel):
    """Facts read from the file, shown beside the score and never mixed into it."""

    format: str | None
    exif: Exif
    jpeg: JpegQuality | None
    c2pa: C2pa
    notes: list[str] = []


#: The IJG (libjpeg) example quantisation tables at quality 50, in natural (row-major) order.
_IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_IJG_CHROMA = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, *([99] * 32)], dtype=np.float64)


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_quality_scaling``: the base table scaled for ``quality`` (1–100), baseline-clamped."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality  # integer arithmetic, as in libjpeg
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


_IJG_BY_QUALITY = {q: (ijg_table(_IJG_LUMA, q), ijg_table(_IJG_CHROMA, q)) for q in range(1, 101)}


def jpeg_quality(tables: dict[int, Sequence[int]]) -> JpegQuality | None:
    """The IJG quality whose standard tables are closest to a JPEG's quantisation tables (Pillow's
    ``img.quantization``: table id → 64 values in natural order); ``None`` without a luminance table."""
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    luma = np.asarray(tables[0], dtype=np.float64)
    chroma = np.asarray(tables[1], dtype=np.float64) if len(tables.get(1, ())) == 64 else None

    def distance(q: int) -> float:
        ref_l, ref_c = _IJG_BY_QUALITY[q]
        d = np.abs(luma - ref_l).sum() + (np.abs(chroma - ref_c).sum() if chroma is not None else 0.0)
        return float(d) / (64 * (2 if chroma is not None else 1))

    best = min(range(1, 101), key=lambda q: (distance(q), -q))
    return JpegQuality(quality=best, standard=distance(best) == 0.0, mean_abs_diff=round(distance(best), 3),
                       tables=len(tables))


_EXIF_TAGS = {"make": 0x010F, "model": 0x0110, "software": 0x0131}
_DATETIME_ORIGINAL, _EXIF_IFD = 0x9003, 0x8769
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif",
         "AVIF": "image/avif", "HEIF": "image/heif", "BMP": "image/bmp"}


def _text(value: Any) -> str | None:
    """An EXIF value as short printable text (camera strings are NUL-padded; hostile files can hold anything)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(c for c in str(value) if c.isprintable()).strip()
    return text[:120] or None


def read_c2pa(data: bytes, fmt: str | None) -> C2pa:
    """A summary of the file's C2PA manifest store, read with ``c2pa-python`` when it is installed."""
    try:
        import c2pa  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return C2pa(status="not-checked", detail="c2pa-python not installed: pip install 'synthdet[c2pa]'")
    mime = _MIME.get(fmt or "")
    if mime is None:
        return C2pa(status="not-checked", detail=f"format {fmt} not supported for C2PA")
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data))
        store = json.loads(reader.json())
    except Exception as e:  # the native reader raises its own error classes; "no JUMBF data" means absent
        msg = str(e)
        if "ManifestNotFound" in type(e).__name__ or "ManifestNotFound" in msg or "JUMBF" in msg:
            return C2pa(status="absent", detail="no C2PA manifest in the file")
        return C2pa(status="error", detail=msg.splitlines()[0][:200] if msg else type(e).__name__)
    active = store.get("manifests", {}).get(store.get("active_manifest", ""), {})
    sources = sorted({
        str(a.get("digitalSourceType", "")).rsplit("/", 1)[-1]
        for assertion in active.get("assertions", []) if str(assertion.get("label", "")).startswith("c2pa.actions")
        for a in assertion.get("data", {}).get("actions", []) if a.get("digitalSourceType")
    })
    generator = active.get("claim_generator") or ", ".join(  # claims v2 name their generators in a list
        " ".join(str(g.get(k, "")) for k in ("name", "version")).strip() for g in active.get("claim_generator_info", []))
    return C2pa(status="present", detail="C2PA manifest found", claim_generator=_text(generator),
                issuer=_text(active.get("signature_info", {}).get("issuer")), digital_source_types=sources,
                validation_state=_text(store.get("validation_state")))


def read_evidence(data: bytes) -> Evidence:
    """EXIF, JPEG quantisation and C2PA facts of an encoded image (header reads only; pixels are not decoded)."""
    notes = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            quant = jpeg_quality(getattr(img, "quantization", None) or {}) if fmt == "JPEG" else None
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; the note below says it once
                    exif = img.getexif()
                    fields = {k: _text(exif.get(tag)) for k, tag in _EXIF_TAGS.items()}
                    fields["datetime_original"] = _text(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))
            except Exception as e:  # a malformed EXIF block (any parser error) is a fact to report, not a failure
                fields = {}
                notes.append(f"EXIF present but unreadable ({type(e).__name__})")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return Evidence(format=None, exif=Exif(), jpeg=None, c2pa=C2pa(status="not-checked", detail="unreadable"))
    if not any(fields.values()) and not notes:
        notes.append("no camera EXIF (common after editing or upload; not evidence of generation by itself)")
    c2pa = read_c2pa(data, fmt)
    if c2pa.status == "present" and c2pa.digital_source_types:
        notes.append(f"C2PA credentials ({c2pa.validation_state or 'unvalidated'}) declare the source: "
                     f"{', '.join(c2pa.digital_source_types)}")
    if quant is not None and quant.standard:
        notes.append(f"standard IJG tables at quality {quant.quality}: the last encoder was libjpeg-like software")
    return Evidence(format=fmt, exif=Exif(**fields), jpeg=quant,
                    c2pa=c2pa, notes=notes)
