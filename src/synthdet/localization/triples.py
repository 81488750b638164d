"""Task B sets as tables of ``(image, mask, category)`` triples: read, load as pixels, split by host photo.

The host photo a triple was built on is what must not be shared between training and a held-out evaluation:
:func:`split_by_source` keeps a photo and its manipulations on one side, and :func:`host_digests` is what a localizer
card records of the photos it saw (hashed), so an evaluation can say whether its rows are held-out.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from synthdet.data.layouts import ORIGINAL, masks_as_images, read_layout
from synthdet.io.pixels import list_images, load_image
from synthdet.localization.manipulate import read_mask, source_group


def read_triples(source: str | Path, *, root: str | Path | None = None) -> pd.DataFrame:
    """A Task B set as ``path``, ``mask`` (absolute, ``""`` for an authentic image), ``label``, ``category``,
    ``source``, ``source_group`` (the host photo's collection, for per-source tables): from an official layout
    (:mod:`synthdet.data.layouts`: the MediaEval Task B tree or ``taskB_val.csv``, TGIF; ``category`` is the
    method, ``type`` and ``src_path`` kept), a manifest CSV with a ``mask`` column, or a folder with ``images/`` and
    ``masks/`` (a mask is matched by file stem; an image without one is authentic) or its own ``manifest.csv``.

    Rows that cannot be used (a manipulated image without its mask, a file that did not index) are left out and
    listed in ``df.attrs["skipped"]`` as ``(path, reason)``; a set without any mask, or whose images include masks,
    is refused (:func:`check_triples`)."""
    src = Path(source)
    if src.is_dir() and (src / "manifest.csv").is_file():
        src = src / "manifest.csv"
    official = read_layout(src, root)
    if official is not None:
        df = official.rows
    elif src.is_dir():
        masks = {p.stem: str(p) for p in list_images(src / "masks")} if (src / "masks").is_dir() else {}
        images = list_images(src / "images" if (src / "images").is_dir() else src)
        df = pd.DataFrame({"path": [str(p) for p in images], "mask": [masks.get(p.stem, "") for p in images]})
    else:
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
        if "path" not in df or "mask" not in df:
            raise ValueError(f"{src}: a Task B manifest needs path and mask columns")
        base = src.parent
        for col in ("path", "mask"):
            df[col] = [str(p if not p or Path(p).is_absolute() else base / p) for p in df[col]]
    bad = (df["error"].astype(str) != "") if "error" in df else pd.Series(False, index=df.index)
    if "ok" in df:
        bad |= ~df["ok"].astype(str).str.lower().isin(["true", "1"])
    skipped = [(str(p), str(e) or "did not index") for p, e in zip(df.loc[bad, "path"], df.loc[bad].get("error", ""))]
    df = df[~bad].copy()
    df["label"] = (df["mask"] != "").astype(int)
    if "category" not in df and "method" in df:  # an official layout, or a manifest `data index` wrote of one
        df["category"] = df["method"].replace(ORIGINAL, "authentic")
    for col in ("category", "source"):
        if col not in df:
            df[col] = np.where(df["label"] == 1, "manipulated", "authentic") if col == "category" else ""
    if "source_group" not in df:  # sets written before the column, or a user's own manifest
        df["source_group"] = [source_group(r) for r in df.to_dict("records")]
    df = df.reset_index(drop=True)
    check_triples(df, str(source))
    df.attrs["skipped"] = skipped
    return df


def check_triples(df: pd.DataFrame, what: str) -> None:
    """Refuse a Task B set that cannot be right: no image with a mask (nothing to localize or to score a map
    against), or masks among the images (a mask tree indexed as images, as ``data index`` of a Task B folder used to
    do)."""
    as_images = masks_as_images(df)
    if as_images:
        raise ValueError(f"{what}: {len(as_images)} of its {len(df)} images are masks indexed as images (e.g. "
                         f"{as_images[0]}); index the folder the organisers ship (sagid/val, TGIF) or a manifest "
                         "with a mask column, so each mask is paired with its image")
    if not (df["mask"] != "").any():
        raise ValueError(f"{what}: none of its {len(df)} images has a mask; Task B needs (image, mask) pairs: the "
                         "MediaEval Task B tree (<source>/<method>/image/ + mask/), taskB_val.csv, TGIF, images/ + "
                         "masks/, or a manifest with a mask column")


def load_pairs(df: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(RGB uint8 (H, W, 3), boolean (H, W))`` per row; a mask of another size is resized with nearest."""
    pairs = []
    for path, mask in zip(df["path"], df["mask"]):
        img = load_image(path)
        m = read_mask(mask or None, (img.height, img.width))
        if m.shape != (img.height, img.width):
            m = np.asarray(Image.fromarray(m).resize(img.size, Image.Resampling.NEAREST))
        pairs.append((np.asarray(img), m))
    return pairs


def source_groups(df: pd.DataFrame) -> list[str] | None:
    """The rows' ``source_group`` for per-source tables, or None for a table without the column."""
    return list(df["source_group"]) if "source_group" in df else None


def type_groups(df: pd.DataFrame) -> list[str] | None:
    """Per row, its manipulation type for per-type tables (sp: spliced, fr: fully regenerated; ``authentic`` for an
    authentic row, ``unknown`` where the layout does not say), or None when no row has one."""
    if "type" not in df or not (df["type"].fillna("") != "").any():
        return None
    return [str(t) or ("authentic" if lbl == 0 else "unknown") for t, lbl in zip(df["type"].fillna(""), df["label"])]


def host_keys(df: pd.DataFrame) -> list[str]:
    """Per row, the photo it was built on (``src_path`` of an official layout, else its ``source``; else its file):
    what a held-out evaluation must not share with the localizer's training and validation rows."""
    hosts = df["src_path"] if "src_path" in df else df["source"]
    return [str(s) or str(p) for s, p in zip(hosts.fillna(""), df["path"])]


def image_codes(paths: Iterable[str | Path]) -> list[str]:
    """Each image's 64-bit dHash ("" where it does not decode): two triples built on one photo, at any size, share
    it within a few bits, whatever their names say."""
    from synthdet.data.manifest import dhash

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(dhash(im))
        except (OSError, ValueError):
            out.append("")
    return out


def host_digests(df: pd.DataFrame) -> list[str]:
    """:func:`host_keys` hashed: a card records which photos it saw without naming them."""
    return [hashlib.sha1(k.encode()).hexdigest()[:16] for k in host_keys(df)]


def split_by_source(df: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)`` with no ``source`` on both sides (a photo and its manipulations stay together)."""
    groups = np.asarray(host_keys(df), dtype=object)
    names = sorted(set(groups.tolist()))
    random.Random(seed).shuffle(names)
    n_val = max(1, round(val_fraction * len(names))) if len(names) > 1 else 0
    is_val = np.isin(groups, names[:n_val])
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)
