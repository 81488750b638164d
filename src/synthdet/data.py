"""Manifests: tables of images with labels, provenance and a content hash, validated once.

Accepted inputs (:func:`index`):
- a folder in the MediaEval layout (``0_real/``, ``1_fake/``) or ``real/`` + ``fake/``;
- a CSV with ``path,label`` and optional ``source,generator`` columns (paths relative to the CSV's folder);
- a folder of unlabelled images (label ``-1``), for prediction and submissions.

Every row records ``sha256, width, height, format, ok, error``; a file that does not decode stays in the table with
``ok=False`` and its reason, so nothing is silently dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm.auto import tqdm

from .pixels import DEFAULT_MAX_PIXELS, ImageLoadError, is_image_path, load_image

COLUMNS = ["path", "label", "source", "generator", "sha256", "width", "height", "format", "ok", "error"]
_CLASS_DIRS = {"0_real": 0, "1_fake": 1, "real": 0, "fake": 1}
_TRUE_LABELS = {"1": 1, "fake": 1, "ai": 1, "synthetic": 1, "generated": 1, "0": 0, "real": 0}


class ManifestError(ValueError):
    """The input cannot be read as a dataset at all (as opposed to one bad image in it)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))


def _rows_from_folder(root: Path) -> pd.DataFrame:
    class_dirs = {d.name: _CLASS_DIRS[d.name] for d in root.iterdir() if d.is_dir() and d.name in _CLASS_DIRS}
    if class_dirs:
        rows = [
            {"path": str(p), "label": label, "source": name}
            for name, label in sorted(class_dirs.items())
            for p in _list_images(root / name)
        ]
    else:
        rows = [{"path": str(p), "label": -1, "source": ""} for p in _list_images(root)]
    if not rows:
        raise ManifestError(
            f"{root}: no images found (expected 0_real/ + 1_fake/, real/ + fake/, or image files; "
            f"see synthdet.pixels.IMAGE_SUFFIXES)"
        )
    return pd.DataFrame(rows)


_PATH_COLUMNS = ("path", "filepath", "file", "image", "image_path")
_LABEL_COLUMNS = ("label", "target", "is_fake", "y")


def _find_column(df: pd.DataFrame, candidates: tuple[str, ...], what: str, csv: Path) -> str:
    cols = {c.strip().lower(): c for c in df.columns}
    found = next((cols[c] for c in candidates if c in cols), None)
    if found is None:
        raise ManifestError(f"{csv}: no {what} column; expected one of {list(candidates)}, found {list(df.columns)}")
    return found


def _parse_label(value: object, row: int, csv: Path) -> int:
    key = str(value).strip().lower()
    if key.endswith(".0"):
        key = key[:-2]
    if key not in _TRUE_LABELS:
        raise ManifestError(f"{csv}: row {row + 2}: label {value!r} is not one of 0/1/real/fake")
    return _TRUE_LABELS[key]


def _rows_from_csv(csv: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ManifestError(f"{csv}: not a readable CSV ({e})") from None
    cols = {c.strip().lower(): c for c in df.columns}
    path_col = _find_column(df, _PATH_COLUMNS, "path", csv)
    label_col = _find_column(df, _LABEL_COLUMNS, "label (0 = real, 1 = fake)", csv)
    base = csv.parent
    out = pd.DataFrame(
        {
            "path": [str(p if Path(p).is_absolute() else base / p) for p in df[path_col]],
            "label": [_parse_label(v, i, csv) for i, v in enumerate(df[label_col])],
            "source": df[cols["source"]] if "source" in cols else "",
            "generator": df[cols["generator"]] if "generator" in cols else "",
        }
    )
    if out.empty:
        raise ManifestError(f"{csv}: no rows")
    return out


def _is_manifest_csv(csv: Path) -> bool:
    """A CSV written by :func:`write_manifest` (every manifest column present), as opposed to a labels CSV."""
    try:
        header = pd.read_csv(csv, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return False
    return all(c in header for c in COLUMNS)


def _probe(path: str, max_pixels: int) -> dict:
    """Hash the bytes and check that the file really decodes (a header alone is not enough: truncation hides)."""
    rec: dict = {"sha256": "", "width": 0, "height": 0, "format": "", "ok": False, "error": ""}
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
) -> pd.DataFrame:
    """Build a manifest from a folder or labels CSV (an existing manifest is read back as it is). Bad files are kept
    with ``ok=False`` and a reason."""
    src = Path(source)
    if not src.exists():
        raise ManifestError(f"{src}: no such file or folder")
    if src.is_dir():
        df = _rows_from_folder(src)
    elif src.suffix.lower() == ".parquet" or (src.suffix.lower() == ".csv" and _is_manifest_csv(src)):
        return read_manifest(src)  # already indexed: nothing to hash or decode again
    elif src.suffix.lower() in (".csv", ".tsv"):
        df = _rows_from_csv(src)
    else:
        raise ManifestError(f"{src}: expected a folder, a .csv or a .parquet manifest")
    for col in ("source", "generator"):
        df[col] = df.get(col, "").fillna("") if col in df else ""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        recs = list(
            tqdm(
                pool.map(lambda p: _probe(p, max_pixels), df["path"]),
                total=len(df),
                desc="index",
                unit="img",
                disable=not progress,
            )
        )
    df = pd.concat([df.reset_index(drop=True), pd.DataFrame(recs)], axis=1)
    return df[COLUMNS]


def write_manifest(df: pd.DataFrame, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    tmp.replace(out)
    return out


def read_manifest(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: not a synthdet manifest (missing columns {missing}); build one with `synthdet data index`")
    df["ok"] = df["ok"].astype(str).str.lower().isin(["true", "1"])
    return df


def manifest_hash(df: pd.DataFrame) -> str:
    """Identity of a labelled dataset: the sorted (sha256, label) pairs, independent of paths and row order."""
    pairs = sorted(f"{s}:{int(lbl)}" for s, lbl in zip(df["sha256"], df["label"]))
    return hashlib.sha256("\n".join(pairs).encode()).hexdigest()[:16]


def _stratify_key(df: pd.DataFrame) -> np.ndarray:
    return df["label"].to_numpy()


def split(df: pd.DataFrame, *, val_fraction: float = 0.2, seed: int = 42) -> pd.Series:
    """Stratified train/val assignment (``'train'``/``'val'``), reproducible for a given seed.

    Rows are ordered by content hash first, so the split does not depend on file order or paths; duplicate images
    (same sha256) always land on the same side, which prevents train/val leakage through copies.
    """
    ok = df[df["ok"] & (df["label"] >= 0)]
    groups = ok.drop_duplicates("sha256").sort_values("sha256")
    if groups["label"].nunique() < 2:
        raise ManifestError("need both classes (label 0 and 1) among decodable images to split")
    _, val = train_test_split(
        groups["sha256"].to_numpy(), test_size=val_fraction, random_state=seed, stratify=_stratify_key(groups)
    )
    val_set = set(val)
    out = pd.Series("", index=df.index, dtype=object)
    out[ok.index] = ["val" if s in val_set else "train" for s in ok["sha256"]]
    return out


def three_way_split(
    df: pd.DataFrame, *, val_fraction: float = 0.2, calib_fraction: float = 0.15, seed: int = 42
) -> pd.Series:
    """Three-way split: ``val`` held out by :func:`synthdet.data.split`, the rest divided again
    into ``fit`` and ``calib`` (seed + 1). Rows must be decodable and labelled."""
    out = split(df, val_fraction=val_fraction, seed=seed)
    train_idx = df.index[out == "train"]
    inner = split(df.loc[train_idx], val_fraction=calib_fraction, seed=seed + 1)
    out[train_idx[inner == "val"]] = "calib"
    out[train_idx[inner == "train"]] = "fit"
    return out


def kfold(df: pd.DataFrame, *, k: int = 5, seed: int = 42) -> pd.Series:
    """Stratified k-fold assignment (fold id per row, -1 for unusable rows); copies share a fold."""
    ok = df[df["ok"] & (df["label"] >= 0)]
    groups = ok.drop_duplicates("sha256").sort_values("sha256").reset_index(drop=True)
    fold_of: dict[str, int] = {}
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, idx) in enumerate(skf.split(groups["sha256"], _stratify_key(groups))):
        fold_of.update({s: fold for s in groups["sha256"].iloc[idx]})
    out = pd.Series(-1, index=df.index, dtype=int)
    out[ok.index] = [fold_of[s] for s in ok["sha256"]]
    return out


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files, folders (recursively, image suffixes only) and CSVs with a path column into image paths."""
    for p in map(Path, paths):
        if p.is_dir():
            found = _list_images(p)
            if not found:
                raise ManifestError(f"{p}: folder contains no images")
            yield from found
        elif p.suffix.lower() == ".csv":
            yield from (Path(x) for x in _rows_from_csv_paths(p))
        else:
            yield p


def _rows_from_csv_paths(csv: Path) -> list[str]:
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    col = _find_column(df, _PATH_COLUMNS, "path", csv)
    return [p if Path(p).is_absolute() else str(csv.parent / p) for p in df[col]]
