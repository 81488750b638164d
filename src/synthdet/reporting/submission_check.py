"""Check submission files before upload (:mod:`synthdet.reporting.submit` describes the format): every problem the
organisers would reject or score as zero is named, with the offending ids or rows.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import ExifTags, Image

from synthdet.io.pixels import IMAGE_SUFFIXES
from synthdet.reporting.submit import (
    MASKS_ZIP_SUFFIX,
    RUNS,
    TASK_A_COLUMNS,
    TASK_B_COLUMNS,
    list_test_images,
    listing,
)

#: EXIF orientations that swap width and height when a viewer applies them.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass
class CheckReport:
    """Everything a checker found; ``errors`` would get the submission rejected, ``warnings`` might not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


def _flag(messages: list[str], what: str, items: Sequence[str]) -> None:
    if len(items):
        messages.append(f"{what} ({len(items)}): {listing(items)}")


def _image_files(images_dir: Path, report: CheckReport) -> dict[str, Path] | None:
    """Test images by file name (the ``image_id``)."""
    if not images_dir.is_dir():
        report.errors.append(f"images directory not found: {images_dir}")
        return None
    paths = list_test_images(images_dir)
    counts = Counter(p.name for p in paths)
    _flag(
        report.errors,
        "file names occurring in several subfolders of the images directory (image_id would be ambiguous)",
        sorted(n for n, c in counts.items() if c > 1),
    )
    if not paths:
        report.errors.append(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {images_dir}")
    return {p.name: p for p in paths}


def _read_rows(path: Path | bytes, report: CheckReport) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """Header and ``(line number, fields)`` records of a CSV file (or its bytes, read from a zip), or None (with an
    error) when there is nothing to check."""
    if isinstance(path, Path) and not path.is_file():
        report.errors.append(f"file not found: {path}")
        return None
    data = path.read_bytes() if isinstance(path, Path) else path
    if not data.strip():
        report.errors.append("file is empty")
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        report.errors.append("file starts with a UTF-8 byte-order mark; the first column would not be 'image_id'")
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        report.errors.append(f"file is not UTF-8 text ({e})")
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    return header, [(reader.line_num, row) for row in reader if row]


def _check_header(header: list[str], columns: Sequence[str], report: CheckReport) -> None:
    if header == list(columns):
        return
    got, want = ",".join(header), ",".join(columns)
    if sorted(header) == sorted(columns):
        report.errors.append(f"columns in the wrong order: header is '{got}', expected '{want}'")
        return
    missing = [c for c in columns if c not in header]
    unexpected = [c for c in header if c not in columns]
    detail = "; ".join(
        part
        for part in (
            f"missing: {', '.join(missing)}" if missing else "",
            f"unexpected: {', '.join(unexpected)}" if unexpected else "",
        )
        if part
    )
    report.errors.append(f"wrong header '{got}', expected '{want}'" + (f" ({detail})" if detail else ""))


def _numbers(raw: pd.Series, who: pd.Series, column: str, report: CheckReport) -> pd.Series:
    """Parse a column; non-numeric and non-finite values are reported and come back as NaN."""
    text = raw.str.strip()
    num = pd.to_numeric(text, errors="coerce").astype(float)
    non_numeric = num.isna() & ~text.str.lower().isin({"nan", "+nan", "-nan"})
    _flag(
        report.errors, f"{column} is not a number", [f"{w} ({v!r})" for w, v in zip(who[non_numeric], raw[non_numeric])]
    )
    non_finite = ~non_numeric & ~np.isfinite(num)
    _flag(report.errors, f"{column} is not finite", [f"{w} ({v})" for w, v in zip(who[non_finite], raw[non_finite])])
    return num.where(np.isfinite(num))


def _check_threshold(values: pd.Series, column: str, report: CheckReport) -> None:
    distinct = sorted(values.dropna().unique())
    if len(distinct) > 1:
        report.errors.append(
            f"{column} must be one global value, found {len(distinct)} distinct thresholds: "
            f"{listing([f'{v:g}' for v in distinct])}"
        )
    outside = [f"{v:g}" for v in distinct if not 0.0 <= v <= 1.0]
    _flag(report.errors, f"{column} outside [0, 1]", outside)


def _check_scores(
    path: Path | bytes, columns: Sequence[str], images: dict[str, Path] | None, report: CheckReport
) -> None:
    """All Task A checks on a scores CSV with the given expected ``columns``."""
    parsed = _read_rows(path, report)
    if parsed is None:
        return
    header, records = parsed
    _check_header(header, columns, report)
    report.n_rows = len(records)
    if not records:
        report.errors.append("file is empty: a header but no data rows")
        return
    _flag(
        report.errors,
        f"rows with the wrong number of fields (expected {len(header)})",
        [f"line {ln} ({len(r)} fields)" for ln, r in records if len(r) != len(header)],
    )
    good = [(ln, r) for ln, r in records if len(r) == len(header)]
    df = pd.DataFrame([r for _, r in good], columns=header, dtype=str)
    lines = pd.Series([f"line {ln}" for ln, _ in good], index=df.index)
    if "image_id" not in df:
        who = lines
    else:
        ids = df.image_id
        who = ids.where(ids != "", lines)
        _flag(report.errors, "empty image_id", lines[ids == ""].tolist())
        _flag(
            report.errors,
            "image_id must be a bare file name without directories",
            ids[ids.str.contains(r"[/\\]")].tolist(),
        )
        counts = ids[ids != ""].value_counts()
        _flag(report.errors, "duplicate image_id", [f"{i} (x{c})" for i, c in counts[counts > 1].items()])
        if images is not None:  # ids of ragged rows count as present: their row error already names them
            k = header.index("image_id")
            present = {r[k] for _, r in records if len(r) > k}
            _flag(report.errors, "missing image_id (image in the images directory but not in the file)",
                  sorted(set(images) - present))
            _flag(report.errors, "extra image_id (in the file but not in the images directory)",
                  sorted(present - set(images) - {""}))

    prob = _numbers(df.prob, who, "prob", report) if "prob" in df else None
    if prob is not None:
        outside = prob.notna() & ~prob.between(0.0, 1.0)
        _flag(report.errors, "prob outside [0, 1]", [f"{w} ({p:g})" for w, p in zip(who[outside], prob[outside])])
        prob = prob.where(~outside)
    label = None
    if "label" in df:
        text = df.label.str.strip()
        valid = text.isin({"0", "1"})
        _flag(report.errors, "label is not 0 or 1", [f"{w} ({v!r})" for w, v in zip(who[~valid], df.label[~valid])])
        label = pd.to_numeric(text.where(valid), errors="coerce")
        if valid.all() and label.nunique() == 1:
            report.warnings.append(f"every label is {int(label.iloc[0])}: is the threshold sensible?")
    thresholds = {c: _numbers(df[c], who, c, report) for c in columns if "threshold" in c and c in df}
    for column, values in thresholds.items():
        _check_threshold(values, column, report)

    if prob is not None and label is not None and "threshold" in thresholds:
        thr = thresholds["threshold"]
        known = prob.notna() & label.notna() & thr.notna()
        wrong = known & (label != (prob >= thr).astype(int))
        _flag(
            report.errors,
            "label inconsistent with prob >= threshold",
            [
                f"{w} (prob {p:g}, threshold {t:g}, label {int(lab)})"
                for w, p, t, lab in zip(who[wrong], prob[wrong], thr[wrong], label[wrong])
            ],
        )


def check_task_a(csv_path: Path, images_dir: Path | None = None) -> CheckReport:
    """Check a Task A CSV; with ``images_dir`` also that it covers exactly the test images."""
    report = CheckReport()
    images = None if images_dir is None else _image_files(Path(images_dir), report)
    if images_dir is None:
        report.warnings.append("no images directory given: missing or extra image ids were not checked")
    _check_scores(Path(csv_path), TASK_A_COLUMNS, images, report)
    return report


def check_task_a_zip(zip_path: Path, images_dir: Path | None = None) -> CheckReport:
    """Check a Task A run as handed in: ``<team>_constrained.zip`` or ``<team>_open.zip`` holding exactly one CSV
    (one run per file) at its root, and that CSV by every rule of :func:`check_task_a`."""
    report = CheckReport()
    zip_path = Path(zip_path)
    stem = zip_path.name.removesuffix(".zip")
    team, _, run = stem.rpartition("_")
    if not zip_path.name.endswith(".zip") or run not in RUNS or not team:
        report.errors.append(f"run zip is named '{zip_path.name}', expected '<teamname>_constrained.zip' or "
                             "'<teamname>_open.zip'")
    images = None if images_dir is None else _image_files(Path(images_dir), report)
    if images_dir is None:
        report.warnings.append("no images directory given: missing or extra image ids were not checked")
    entries = _zip_entries(zip_path, report)
    if entries is None:
        return report
    csvs = [i for i in entries if i.filename.lower().endswith(".csv")]
    _flag(report.errors, "zip entries that are not the run's CSV", [i.filename for i in entries if i not in csvs])
    if len(csvs) != 1:
        report.errors.append(f"the zip must hold exactly one CSV (one run per file), found {len(csvs)}"
                             + (f": {listing([i.filename for i in csvs])}" if csvs else ""))
        return report
    if "/" in csvs[0].filename:
        report.warnings.append(f"the CSV is inside a folder of the zip ({csvs[0].filename}); expected at its root")
    with zipfile.ZipFile(zip_path) as zf:
        data = zf.read(csvs[0])
    _check_scores(data, TASK_A_COLUMNS, images, report)
    return report


def _zip_entries(zip_path: Path, report: CheckReport) -> list[zipfile.ZipInfo] | None:
    """The file entries of a zip, or None (with an error) when it is missing or not a zip."""
    if not zip_path.is_file():
        report.errors.append(f"zip not found: {zip_path}")
        return None
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return [i for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as e:
        report.errors.append(f"{zip_path.name} is not a valid zip file ({e})")
        return None


def _image_shapes(path: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(H, W)`` as stored and as shown after EXIF rotation, from the header only (no pixel decode)."""
    with Image.open(path) as im:
        w, h = im.size
        try:  # the base-class getexif reads parsed header info; PngImageFile.getexif would decode the pixels
            orientation = Image.Image.getexif(im).get(ExifTags.Base.Orientation)
        except Exception:  # malformed EXIF: viewers ignore it too
            orientation = None
    return (h, w), ((w, h) if orientation in _TRANSPOSING_ORIENTATIONS else (h, w))


def _check_masks(zip_path: Path, images: dict[str, Path] | None, report: CheckReport) -> None:
    name = zip_path.name
    if not name.endswith(MASKS_ZIP_SUFFIX) or name == MASKS_ZIP_SUFFIX:
        report.errors.append(f"masks zip is named '{name}', expected '<teamname>{MASKS_ZIP_SUFFIX}'")
    entries = _zip_entries(zip_path, report)
    if entries is None:
        return
    with zipfile.ZipFile(zip_path) as zf:
        npz = [i for i in entries if i.filename.lower().endswith(".npz")]
        _flag(report.errors, "zip entries that are not .npz files", [i.filename for i in entries if i not in npz])
        _flag(report.warnings, "npz files inside folders of the zip (expected at its root)",
              [i.filename for i in npz if "/" in i.filename])
        stem_counts = Counter(PurePosixPath(i.filename).stem for i in npz)
        _flag(report.errors, "several npz files for one image",
              sorted(i.filename for i in npz if stem_counts[PurePosixPath(i.filename).stem] > 1))

        by_stem: dict[str, Path] = {}
        if images is not None:
            image_stems = Counter(Path(n).stem for n in images)
            _flag(report.errors, "images sharing a file stem (their masks would share one .npz name)",
                  sorted(n for n in images if image_stems[Path(n).stem] > 1))
            by_stem = {Path(n).stem: p for n, p in images.items()}
            _flag(report.errors, "missing masks (image without an .npz)",
                  sorted(f"{s}.npz" for s in set(by_stem) - set(stem_counts)))
            _flag(report.errors, "extra masks (.npz without an image)",
                  sorted(f"{s}.npz" for s in set(stem_counts) - set(by_stem)))

        problems: dict[str, list[str]] = {}
        rotated: list[str] = []
        for info in npz:
            entry = info.filename
            try:
                with np.load(io.BytesIO(zf.read(info)), allow_pickle=False) as arrays:
                    keys = list(arrays.files)
                    if len(keys) != 1:
                        problems.setdefault("npz must hold exactly one array", []).append(f"{entry} ({keys})")
                        continue
                    arr = arrays[keys[0]]
            except Exception as e:  # any decoding failure means the organisers cannot read it either
                problems.setdefault("unreadable npz", []).append(f"{entry} ({type(e).__name__}: {e})")
                continue
            if arr.dtype != np.float16:
                problems.setdefault("wrong dtype (expected float16)", []).append(f"{entry} ({arr.dtype})")
            if arr.ndim != 2:
                problems.setdefault("mask is not 2-D (H, W)", []).append(f"{entry} (shape {arr.shape})")
            elif (image := by_stem.get(PurePosixPath(entry).stem)) is not None:
                try:
                    stored, shown = _image_shapes(image)
                except Exception as e:
                    problems.setdefault("cannot read image size", []).append(f"{image.name} ({e})")
                else:
                    if arr.shape == shown != stored:
                        rotated.append(f"{entry} ({arr.shape}, stored image is {stored})")
                    elif arr.shape != stored:
                        problems.setdefault("mask shape differs from the image's (H, W)", []).append(
                            f"{entry} ({arr.shape[0]}x{arr.shape[1]}, image {stored[0]}x{stored[1]})"
                        )
            if arr.dtype.kind not in "fiub":
                problems.setdefault("non-numeric mask", []).append(f"{entry} ({arr.dtype})")
                continue
            values = arr.astype(np.float32, copy=False)
            finite = np.isfinite(values)
            if not finite.all():
                problems.setdefault("mask contains NaN or inf", []).append(entry)
            if finite.any() and (values[finite].min() < 0.0 or values[finite].max() > 1.0):
                problems.setdefault("mask values outside [0, 1]", []).append(
                    f"{entry} (range {values[finite].min():g}..{values[finite].max():g})"
                )
        for what, items in problems.items():
            _flag(report.errors, what, items)
        _flag(report.warnings, "masks match the EXIF-rotated image size, not the stored pixel size", rotated)


def check_task_b(zip_path: Path, scores_csv: Path, images_dir: Path) -> CheckReport:
    """Check the Task B masks zip against the images' sizes, and ``scores.csv`` with the Task A rules."""
    report = CheckReport()
    images = _image_files(Path(images_dir), report)
    _check_masks(Path(zip_path), images, report)
    scores_csv = Path(scores_csv)
    if scores_csv.name != "scores.csv":
        report.warnings.append(f"the scores file is named '{scores_csv.name}', the organisers expect 'scores.csv'")
    scores = CheckReport()
    _check_scores(scores_csv, TASK_B_COLUMNS, images, scores)
    report.errors += [f"{scores_csv.name}: {m}" for m in scores.errors]
    report.warnings += [f"{scores_csv.name}: {m}" for m in scores.warnings]
    report.n_rows = scores.n_rows
    return report
