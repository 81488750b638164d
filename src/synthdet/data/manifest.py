"""Manifests: tables of images with labels, provenance and a content hash, validated once.

Accepted inputs (:func:`index`), the one found named in ``df.attrs["layout"]``:
- the official MediaEval Task B tree and ``taskB_val.csv``, TGIF and its metadata/split CSVs
  (:mod:`synthdet.data.layouts`: ``mask``, ``method``, ``type``, ``src_path`` columns);
- a folder in the MediaEval Task A layout (``0_real/``, ``1_fake/``) or ``real/`` + ``fake/``;
- a CSV (or tab-separated ``.tsv``) with ``path,label`` and optional ``source,generator`` columns (paths relative
  to the file's folder); any other column (``group``, ``licence`` …) is kept after the manifest's own;
- a folder of unlabelled images (label ``-1``), for prediction and submissions.

Every row records ``sha256, width, height, format, ok, error, phash``; a file that does not decode stays in the table
with ``ok=False`` and its reason, so nothing is silently dropped. A file whose name is not valid UTF-8 (possible on
Linux) cannot be written to a CSV or a terminal faithfully: it stays in the table with ``ok=False``, error
``bad-name``, and its name shown with the bad bytes escaped (``caf\\xe9.jpg``); rename it to use it.

A folder that holds a ``manifest.csv`` (or ``.tsv``/``.parquet``) is indexed from it, so its ``source`` and
``generator`` columns survive. Manifests store paths (``path``, ``mask``, ``src_path``) relative to the manifest's own folder (files outside it
absolute), so they read back from any working directory. ``phash`` is a 64-bit difference hash (dHash, 16 hex) of
the decoded pixels: :class:`synthdet.data.splits.SplitPlan` groups near-duplicates by it. A content hash that appears
with both labels is reported (:class:`LabelConflictWarning`, ``df.attrs["label_conflicts"]``), never resolved
silently.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from synthdet.data.hashcache import ProbeCache
from synthdet.data.inputs import PATH_COLUMNS, ManifestError, find_column
from synthdet.data.layouts import read_layout
from synthdet.data.splits import SplitPlan
from synthdet.extras import require
from synthdet.io.atomic import atomic_path, printable
from synthdet.io.files import sha256_file
from synthdet.io.pixels import DEFAULT_MAX_PIXELS, ImageLoadError, list_images, load_image

COLUMNS = ["path", "label", "source", "generator", "sha256", "width", "height", "format", "ok", "error", "phash"]
#: Columns a manifest must have; ``phash`` (added later) is filled with "" when an older manifest lacks it.
REQUIRED_COLUMNS = COLUMNS[:-1]
#: Names a folder's own manifest may have, in order of preference.
FOLDER_MANIFESTS = ("manifest.csv", "manifest.tsv", "manifest.parquet")
#: Columns holding file paths: stored relative to the manifest's folder, read back absolute.
_PATH_VALUED = ("path", "mask", "src_path")
_CLASS_DIRS = {"0_real": 0, "1_fake": 1, "real": 0, "fake": 1}
_TRUE_LABELS = {"1": 1, "fake": 1, "ai": 1, "synthetic": 1, "generated": 1, "0": 0, "real": 0}


class LabelConflictWarning(UserWarning):
    """The same image (content hash) is labelled both real and fake."""


def _read_table(path: Path, **kwargs: object) -> pd.DataFrame:
    """A ``.tsv`` is tab-separated, anything else comma-separated."""
    return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", **kwargs)


def dhash(img: Image.Image) -> str:
    """64-bit difference hash (16 hex): signs of horizontal gradients on a 9x8 grey thumbnail. Survives
    re-compression and resizing; near-duplicates differ in a few bits."""
    small = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _folder_row(path: Path, label: int, source: str) -> dict[str, object]:
    """A listed file; one whose name is not valid UTF-8 gets its escaped name and its reason already."""
    shown = printable(path)  # a name that is not valid UTF-8 comes back with its bytes escaped
    error = "" if shown == str(path) else "bad-name: file name is not valid UTF-8 (shown with its bytes escaped); rename it"
    return {"path": shown, "label": label, "source": source, "error": error}


def _rows_from_folder(root: Path) -> tuple[str, pd.DataFrame]:
    """``(layout name, rows)`` of a folder that is in no official Task B layout."""
    if (root / "images").is_dir() and (root / "masks").is_dir():  # Task B: a mask marks a manipulated image
        masks = {p.stem: str(p) for p in list_images(root / "masks")}
        rows = [{**_folder_row(p, int(p.stem in masks), ""), "mask": masks.get(p.stem, "")}
                for p in list_images(root / "images")]
        if rows:
            return "Task B folder (images/ + masks/, a mask per manipulated image)", pd.DataFrame(rows)
    class_dirs = {d.name: _CLASS_DIRS[d.name] for d in root.iterdir() if d.is_dir() and d.name in _CLASS_DIRS}
    if class_dirs:
        rows = [
            _folder_row(p, label, name)
            for name, label in sorted(class_dirs.items())
            for p in list_images(root / name)
        ]
        name = f"MediaEval Task A tree ({' + '.join(f'{d}/' for d in sorted(class_dirs))})"
    else:
        rows = [_folder_row(p, -1, "") for p in list_images(root)]
        name = "unlabelled folder (a test set: label -1)"
    if not rows:
        raise ManifestError(
            f"{root}: no images found (expected 0_real/ + 1_fake/, real/ + fake/, the MediaEval Task B or TGIF "
            f"layout, or image files; see synthdet.io.pixels.IMAGE_SUFFIXES)"
        )
    return name, pd.DataFrame(rows)


_LABEL_COLUMNS = ("label", "target", "is_fake", "y")


def _parse_label(value: object, row: int, csv: Path) -> int:
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in _TRUE_LABELS:
        raise ManifestError(f"{csv}: row {row + 2}: label {value!r} is not one of 0/1/real/fake")
    return _TRUE_LABELS[key]


def _rows_from_csv(csv: Path) -> pd.DataFrame:
    try:
        df = _read_table(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ManifestError(f"{csv}: not a readable CSV ({e})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    path_col = find_column(df.columns, PATH_COLUMNS, "path", csv)
    label_col = find_column(df.columns, _LABEL_COLUMNS, "label (0 = real, 1 = fake)", csv)
    base = csv.parent
    out = pd.DataFrame(
        {
            "path": [str(p if Path(p).is_absolute() else base / p) for p in df[path_col]],
            "label": [_parse_label(v, i, csv) for i, v in enumerate(df[label_col])],
            "source": df[cols["source"]] if "source" in cols else "",
            "generator": df[cols["generator"]] if "generator" in cols else "",
        }
    )
    used = {path_col, label_col, cols.get("source"), cols.get("generator")}
    for col in df.columns:  # the user's own columns (group, licence …) travel with the rows
        if col not in used and col.strip().lower() not in COLUMNS:
            out[col] = df[col].to_numpy()
    if "mask" in out:  # Task B: mask files are relative to the CSV like the images; "" for an authentic image
        out["mask"] = [m if not m or Path(m).is_absolute() else str(base / m) for m in out["mask"]]
    if out.empty:
        raise ManifestError(f"{csv}: no rows")
    return out


def _is_manifest_csv(csv: Path) -> bool:
    """A CSV written by :func:`write_manifest` (every manifest column present), as opposed to a labels CSV."""
    try:
        header = _read_table(csv, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return all(c in header for c in REQUIRED_COLUMNS)


def _probe(path: str, max_pixels: int, known_error: str = "", cache: ProbeCache | None = None) -> dict:
    """Hash the bytes and check that the file really decodes (a header alone is not enough: truncation hides);
    a file ``cache`` knows (same path, size and mtime) is not read again."""
    rec: dict = {"sha256": "", "width": 0, "height": 0, "format": "", "ok": False, "error": known_error, "phash": ""}
    if known_error:
        return rec
    if cache is not None:
        if (hit := cache.get(path, max_pixels)) is not None:
            return hit
        rec = _probe(path, max_pixels)
        if rec["ok"] or rec["error"].split(":")[0] not in ("unreadable", "not-found"):
            cache.put(path, max_pixels, rec)
        return rec
    try:
        rec["sha256"] = sha256_file(path)
    except OSError as e:
        rec["error"] = f"unreadable: {e.strerror or e}"
        return rec
    try:
        img = load_image(path, max_pixels=max_pixels)
    except ImageLoadError as e:
        rec["error"] = e.reason + (f": {e.detail}" if e.detail else "")
        return rec
    rec["width"], rec["height"] = img.size
    rec["phash"] = dhash(img)
    with Image.open(path) as im:  # header only: the file is known to decode
        rec["format"] = im.format or ""
    rec["ok"] = True
    return rec


def index(
    source: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 4,
    progress: bool = False,
    use_cache: bool = True,
    root: str | Path | None = None,
) -> pd.DataFrame:
    """Build a manifest from a folder or labels CSV/TSV (an existing manifest is read back as it is; a folder with
    its own ``manifest.csv`` is indexed from it), naming the layout it found and the ``source`` in ``df.attrs`` (``root``:
    the folder an official CSV's paths start from). Bad files are kept with ``ok=False`` and a reason; content
    hashes labelled both ways are warned about and listed in ``df.attrs["label_conflicts"]``. With ``use_cache`` a
    file probed before with the same size and mtime is not read again (:mod:`synthdet.data.hashcache`)."""
    src = Path(source)
    if not src.exists():
        raise ManifestError(f"{src}: no such file or folder")
    if src.is_dir() and (own := next((src / n for n in FOLDER_MANIFESTS if (src / n).is_file()), None)):
        src = own
    suffix = src.suffix.lower()
    if (official := read_layout(src, root)) is not None:
        layout, df = official.name, official.rows
    elif src.is_dir():
        layout, df = _rows_from_folder(src)
    elif suffix == ".parquet" or (suffix in (".csv", ".tsv") and _is_manifest_csv(src)):
        df = read_manifest(src)  # already indexed: nothing to hash or decode again
        df.attrs.update(layout="synthdet manifest", source=str(source))
        return _with_conflicts(df)
    elif suffix in (".csv", ".tsv"):
        layout, df = "labels CSV (path, label)", _rows_from_csv(src)
    else:
        raise ManifestError(f"{src}: expected a folder, a .csv/.tsv or a .parquet manifest")
    for col in ("source", "generator"):
        df[col] = df[col].fillna("") if col in df else ""
    known = df.pop("error") if "error" in df else pd.Series("", index=df.index)
    cache = ProbeCache() if use_cache else None
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        recs = list(
            tqdm(
                pool.map(lambda p, e: _probe(p, max_pixels, e, cache), df["path"], known),
                total=len(df),
                desc="index",
                unit="img",
                disable=None if progress else True,  # None: only on a terminal (no \r frames in logs)
            )
        )
    df = pd.concat([df.reset_index(drop=True), pd.DataFrame(recs)], axis=1)
    df = df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]
    df.attrs.update(layout=layout, source=str(source))
    return _with_conflicts(df)


def label_conflicts(df: pd.DataFrame) -> pd.DataFrame:
    """Decodable rows whose content hash appears with both labels (the same image called real and fake)."""
    ok = df[df["ok"] & (df["label"] >= 0)]
    both = ok.groupby("sha256")["label"].nunique()
    return ok[ok["sha256"].isin(both.index[both > 1])]


def _with_conflicts(df: pd.DataFrame, shown: int = 5) -> pd.DataFrame:
    """Warn about label conflicts, naming them, and record their hashes in ``df.attrs["label_conflicts"]``."""
    bad = label_conflicts(df)
    shas = sorted(set(bad["sha256"]))
    df.attrs["label_conflicts"] = shas
    if shas:
        names = ", ".join(sorted(bad["path"].astype(str))[:shown]) + (" …" if len(bad) > shown else "")
        warnings.warn(
            f"{len(shas)} image(s) labelled both real and fake (same content hash): {names}. "
            "Split plans leave them out; fix the labels to use them.",
            LabelConflictWarning,
            stacklevel=3,
        )
    return df


def write_manifest(df: pd.DataFrame, out: str | Path) -> Path:
    """Write atomically, with paths relative to ``out``'s folder when they lie inside it (else absolute), so the
    manifest reads back from any working directory and moves with its images."""
    out = Path(out)
    base = out.parent.absolute()

    def stored(p: str) -> str:
        full = Path(os.path.abspath(p))
        return full.relative_to(base).as_posix() if full.is_relative_to(base) else str(full)

    table = df.assign(**{c: [stored(p) if p else "" for p in df[c].fillna("").astype(str)]
                         for c in _PATH_VALUED if c in df})
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            require("pyarrow", "a .parquet manifest")
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, sep="\t" if out.suffix.lower() == ".tsv" else ",", lineterminator="\n")
    return out


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest`; relative paths are resolved against its folder."""
    path = Path(path)
    text = {c: str for c in ("path", "source", "generator", "sha256", "format", "error", "phash", *_PATH_VALUED,
                             "method", "type")}
    parquet = path.suffix.lower() == ".parquet" and require("pyarrow", "a .parquet manifest")
    df = (pd.read_parquet(path) if parquet
          else _read_table(path, keep_default_na=False, dtype=text))
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: not a synthdet manifest (missing columns {missing}); build one with `synthdet data index`")
    df["ok"] = df["ok"].astype(str).str.lower().isin(["true", "1"])
    for col in _PATH_VALUED:
        if col in df:
            df[col] = [str(p) if not p or Path(p).is_absolute() else str(path.parent / p)
                       for p in df[col].fillna("").astype(str)]
    if "phash" not in df:
        df["phash"] = ""
    df["phash"] = df["phash"].astype(str)
    return df


def manifest_hash(df: pd.DataFrame) -> str:
    """Identity of a labelled dataset: the sorted (sha256, label) pairs, independent of paths and row order."""
    pairs = sorted(f"{s}:{int(lbl)}" for s, lbl in zip(df["sha256"], df["label"]))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]


def split_columns(df: pd.DataFrame, *, val_fraction: float = 0.2, k: int = 5, seed: int = 42) -> pd.DataFrame:
    """The ``split`` (``'fit'``/``'test'``, ``''`` for unusable rows) and ``fold`` (0..k-1, -1 for unusable rows; none
    when ``k < 2``) columns of a manifest, from one :class:`~synthdet.data.splits.SplitPlan` without calibration slice:
    stratified, taken by content hash (independent of file order and paths), copies and near-duplicates together."""
    plan = _plan(df, test=val_fraction, calib=0.0, k=k, seed=seed)
    out = pd.DataFrame({"split": pd.Series(plan.role_of(df["sha256"]), index=df.index, dtype=object)})
    if k >= 2:
        out["fold"] = pd.Series(plan.fold_of(df["sha256"]), index=df.index, dtype=int)
    return out


def split(df: pd.DataFrame, *, val_fraction: float = 0.2, seed: int = 42) -> pd.Series:
    """Stratified two-way assignment (``'fit'``/``'test'``, ``''`` for unusable rows), reproducible for a seed."""
    return split_columns(df, val_fraction=val_fraction, k=0, seed=seed)["split"]


def three_way_split(
    df: pd.DataFrame, *, val_fraction: float = 0.2, calib_fraction: float = 0.15, seed: int = 42
) -> pd.Series:
    """``fit`` / ``calib`` / ``test`` (the plan's roles) per row, ``''`` for unusable rows; ``calib`` is
    ``calib_fraction`` of the images that are not ``test``."""
    roles = _plan(df, test=val_fraction, calib=calib_fraction, k=0, seed=seed).role_of(df["sha256"])
    return pd.Series(roles, index=df.index, dtype=object)


def kfold(df: pd.DataFrame, *, k: int = 5, seed: int = 42) -> pd.Series:
    """Stratified k-fold assignment (fold id per row, -1 for unusable rows); copies and near-duplicates share a
    fold."""
    return split_columns(df, k=k, seed=seed)["fold"]


def _plan(df: pd.DataFrame, **kwargs: Any) -> SplitPlan:
    try:
        return SplitPlan.build(df, **kwargs)
    except ValueError as e:
        raise ManifestError(f"cannot split: {e}") from None


def usable_rows(
    data: str | Path | pd.DataFrame, *, progress: bool = False
) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Decodable, labelled rows of a folder, CSV or manifest frame, and the unusable files with their reasons."""
    df = data.copy() if isinstance(data, pd.DataFrame) else index(data, progress=progress)
    skipped = [(p, e) for p, e in zip(df.loc[~df["ok"], "path"], df.loc[~df["ok"], "error"])]
    df = df[df["ok"] & (df["label"] >= 0)].reset_index(drop=True)
    if df.empty or df["label"].nunique() < 2:
        raise ManifestError("training needs decodable images of both classes (label 0 = real, 1 = fake)")
    return df, skipped
