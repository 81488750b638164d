"""The official MediaEval SynthIm and TGIF layouts, recognised by their shape and read into manifest rows.

What a participant downloads (``mever-team/mediaeval2025-sid`` README and ``taskB_val.csv``; ``IDLabMedia/tgif-dataset``):

- **Task B validation/test tree**: ``<source>/original/*.jpg`` (authentic) and ``<source>/<method>/image/*.jpg`` with
  ``<source>/<method>/mask/<stem>_mask.png``; sources coco, raise, openimages; methods brushnet, controlnet, hdpainter,
  inpaintanything, mixed, powerpaint, removeanything. Given the folder holding the sources (``sagid/val``), one
  source, or up to two levels above them (``sagid``).
- **taskB_val.csv**: ``img_path,mask_path,src_path,type`` with Windows (``\\``) or POSIX separators, relative to the
  CSV's folder or ``root``; one row per manipulated image, its host photo in ``src_path``, each host once as an
  authentic row.
- **TGIF**: ``orig/`` (authentic COCO photos), ``<model>-<sp|fr>/`` (``ps-sp``, ``sd2-sp``, ``sd2-fr``, ``sdxl-fr``)
  and ``masks/``, files named by the COCO image id (``<id>_mask_<bbox|segm>.png_<model>[-<crop>]_<g>.png``, mask
  ``<id>_mask_<bbox|segm>.png``); ``splits/{train,val,test}.csv`` beside them give ``tgif_split`` per host. One of
  its ``metadata/*.csv`` or ``splits/*.csv`` selects that file's rows of the TGIF folder (``root``, default the
  CSV's grandparent).

Every row keeps ``method``, ``type`` (sp/fr, where known), ``source`` (coco/raise/openimages) and ``src_path`` (the
host photo): the groups of leave-one-method-out protocols, and what keeps a host and its manipulations on one side of
a split. A manipulated image whose mask is missing keeps its row with an ``error``; nothing is dropped silently.
The Task A layouts (``0_real/`` + ``1_fake/``, an unlabelled folder) are read by :mod:`synthdet.data.manifest`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from synthdet.io.pixels import list_images

#: Columns the official layouts add to a manifest (after its own).
LAYOUT_COLUMNS = ("mask", "method", "type", "src_path")
ORIGINAL = "original"  # the method of an authentic row
TASK_B_CSV_COLUMNS = ("img_path", "mask_path", "src_path", "type")
_TGIF_GEN = re.compile(r"^([a-z0-9]+)-(sp|fr)$")
_TGIF_NAME = re.compile(r"^(\d+)_mask_(bbox|segm)\.png_(.+?)_(\d+)\.\w+$")
_TGIF_ID = re.compile(r"^(\d+)_")


class LayoutError(ValueError):
    """A file in an official layout that cannot be read as one (a CSV whose paths lead nowhere)."""


@dataclass
class Layout:
    """An official layout found at a path: its ``name`` (shown by ``synthdet data index``) and its ``rows`` (``path,
    label, source, generator`` plus :data:`LAYOUT_COLUMNS` and ``error``, not yet probed)."""

    name: str
    rows: pd.DataFrame


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _row(path: Path | str, label: int, source: str, method: str, mask: str = "", type_: str = "",
         src_path: str = "", error: str = "") -> dict[str, object]:
    return {"path": str(path), "label": label, "source": source, "generator": "" if label == 0 else method,
            "mask": mask, "method": method, "type": type_, "src_path": src_path, "error": error}


# ------------------------------------------------------------------------------------------ Task B tree


def _is_source_dir(d: Path) -> bool:
    return (d / ORIGINAL).is_dir() or any((m / "image").is_dir() for m in _subdirs(d))


def _source_dirs(src: Path) -> list[Path]:
    """The ``<source>`` folders of a Task B tree at ``src`` (itself, its children or its grandchildren)."""
    if _is_source_dir(src):
        return [src]
    for depth in range(2):
        level = [src] if depth == 0 else _subdirs(src)
        found = [s for d in level for s in _subdirs(d) if _is_source_dir(s)]
        if found:
            return found
    return []


def _host(stem: str, originals: dict[str, Path]) -> str:
    """The original a manipulated image was built on: the first ``_``-separated token of its name that names an
    original (``coco_000000570782_controlnet_…`` → ``original/000000570782.jpg``), else ``""``."""
    return next((str(originals[t]) for t in stem.split("_") if t in originals), "")


def _task_b_tree(src: Path) -> Layout | None:
    sources = _source_dirs(src)
    if not sources:
        return None
    rows = []
    for s in sources:
        name = s.name.lower()
        originals = {p.stem: p for p in list_images(s / ORIGINAL)} if (s / ORIGINAL).is_dir() else {}
        rows += [_row(p, 0, name, ORIGINAL, src_path=str(p)) for p in originals.values()]
        for m in _subdirs(s):
            if m.name == ORIGINAL or not (m / "image").is_dir():
                continue
            masks = {p.stem: p for p in list_images(m / "mask")} if (m / "mask").is_dir() else {}
            for p in list_images(m / "image"):
                mask = masks.get(f"{p.stem}_mask") or masks.get(p.stem)
                error = "" if mask else f"no-mask: no {p.stem}_mask.png in {m / 'mask'}"
                rows.append(_row(p, 1, name, m.name, str(mask or ""), src_path=_host(p.stem, originals), error=error))
    if not rows:
        return None
    names = ", ".join(s.name for s in sources)
    return Layout(f"MediaEval Task B tree ({names}: original/ + <method>/image/ + <method>/mask/)", pd.DataFrame(rows))


def _official_path(value: str, base: Path) -> Path:
    """A path of the official CSV (``sagid\\val\\coco\\…`` or ``sagid/val/coco/…``) under ``base``."""
    p = Path(PureWindowsPath(value.strip()).as_posix())
    return p if p.is_absolute() else base / p


def _task_b_csv(csv: Path, df: pd.DataFrame, root: Path | None) -> Layout:
    cols = {c.strip().lower(): c for c in df.columns}
    base = root or csv.parent
    imgs = [_official_path(v, base) for v in df[cols["img_path"]]]
    if imgs and not any(p.is_file() for p in imgs):
        raise LayoutError(f"{csv}: none of its {len(imgs)} img_path files is under {base} (e.g. {imgs[0]}); pass "
                          "--root, the folder that holds the paths' first component (sagid/)")
    rows, hosts = [], {}
    for img, mask, host, kind in zip(imgs, df[cols["mask_path"]], df[cols["src_path"]], df[cols["type"]]):
        host_path = _official_path(host, base) if host.strip() else None
        method = img.parent.parent.name if img.parent.name == "image" else img.parent.name
        source = img.parents[2].name if img.parent.name == "image" and len(img.parents) > 2 else ""
        rows.append(_row(img, 1, source, method, str(_official_path(mask, base)) if mask.strip() else "",
                         kind.strip(), str(host_path or ""), "" if mask.strip() else "no-mask: empty mask_path"))
        if host_path is not None:
            hosts[str(host_path)] = host_path.parents[1].name if len(host_path.parents) > 1 else ""
    rows += [_row(h, 0, source, ORIGINAL, src_path=h) for h, source in hosts.items()]
    n = len(rows) - len(hosts)
    return Layout(f"MediaEval Task B CSV (img_path, mask_path, src_path, type): {n} manipulated rows, "
                  f"{len(hosts)} host photos (src_path) as authentic rows", pd.DataFrame(rows))


# ------------------------------------------------------------------------------------------------- TGIF


def _is_tgif(d: Path) -> bool:
    return d.is_dir() and (d / "masks").is_dir() and any(
        s.name == "orig" or _TGIF_GEN.match(s.name) for s in _subdirs(d))


def _tgif_splits(root: Path) -> dict[str, tuple[str, str]]:
    """COCO image id → (split, category) from ``splits/{train,val,test}.csv`` (absent: empty)."""
    out: dict[str, tuple[str, str]] = {}
    for name in ("train", "val", "test"):
        f = root / "splits" / f"{name}.csv"
        if f.is_file():
            t = pd.read_csv(f, dtype=str, keep_default_na=False)
            out.update({i: (name, c) for i, c in zip(t["image_id"], t.get("category", [""] * len(t)))})
    return out


def _tgif_mask(masks: dict[str, list[Path]], host_id: str, variation: str, method: str) -> Path | None:
    """The mask of a TGIF fake: the model's own (Photoshop's ``…png_ps_mask.png``) or the shared one, preferring
    one in a folder named after the model."""
    for name in (f"{host_id}_mask_{variation}.png_{method}_mask.png", f"{host_id}_mask_{variation}.png"):
        found = masks.get(name, [])
        if found:
            return next((p for p in found if method in p.parent.name), found[0])
    return None


def _tgif(root: Path) -> Layout:
    masks: dict[str, list[Path]] = {}
    for p in list_images(root / "masks"):
        masks.setdefault(p.name, []).append(p)
    splits = _tgif_splits(root)
    hosts: dict[str, Path] = {}
    rows = []
    if (root / "orig").is_dir():
        for p in list_images(root / "orig"):
            if "_mask" in p.name:  # the generator also leaves masks beside the originals
                continue
            host_id = m.group(1) if (m := _TGIF_ID.match(p.name)) else p.stem
            hosts.setdefault(host_id, p)
            rows.append({**_row(p, 0, "coco", ORIGINAL, src_path=str(p)), "host_id": host_id})
    for d in _subdirs(root):
        if not (g := _TGIF_GEN.match(d.name)):
            continue
        method, kind = g.groups()
        for p in list_images(d):
            parsed = _TGIF_NAME.match(p.name)
            host_id = parsed.group(1) if parsed else (m.group(1) if (m := _TGIF_ID.match(p.name)) else "")
            mask = _tgif_mask(masks, host_id, parsed.group(2), method) if parsed else None
            error = "" if mask else f"no-mask: no mask for {p.name} in {root / 'masks'}"
            rows.append({**_row(p, 1, "coco", method, str(mask or ""), kind, "", error), "host_id": host_id,
                         "mask_variation": parsed.group(2) if parsed else "",
                         "gen_variation_id": parsed.group(4) if parsed else ""})
    if not rows:
        raise LayoutError(f"{root}: a TGIF folder without images in orig/ or <model>-<sp|fr>/")
    df = pd.DataFrame(rows)
    df["src_path"] = [s or str(hosts.get(h, "")) for s, h in zip(df["src_path"], df["host_id"])]
    if splits:
        df["tgif_split"] = [splits.get(h, ("", ""))[0] for h in df["host_id"]]
        df["coco_category"] = [splits.get(h, ("", ""))[1] for h in df["host_id"]]
    gens = ", ".join(d.name for d in _subdirs(root) if _TGIF_GEN.match(d.name))
    return Layout(f"TGIF (orig/, {gens}, masks/{', splits/' if splits else ''})", df)


def _tgif_csv(csv: Path, df: pd.DataFrame, root: Path | None) -> Layout:
    """The rows of the TGIF folder that a ``metadata/<model>_<split>.csv`` or ``splits/<split>.csv`` lists."""
    base = root or csv.parent.parent
    if not _is_tgif(base):
        raise LayoutError(f"{csv}: a TGIF metadata or split CSV lists image ids; {base} is not a TGIF folder (orig/, "
                          "<model>-<sp|fr>/, masks/); pass --root")
    layout = _tgif(base)
    rows = layout.rows
    ids = set(df["image_id"].astype(str))
    keep = rows["host_id"].isin(ids)
    model = csv.stem.split("_")[0]
    if "mask_variation" in df.columns:  # metadata/<model>_<split>.csv: one row per generated image
        wanted = set(zip(df["image_id"].astype(str), df["mask_variation"], df["gen_variation_id"].astype(str)))
        listed = [(h, v, g) in wanted for h, v, g in
                  zip(rows["host_id"], rows["mask_variation"], rows["gen_variation_id"])]
        keep &= (rows["method"] == model) & np.array(listed, bool)
    elif model == "orig":  # metadata/orig_<split>.csv: the host photos
        keep &= rows["method"] == ORIGINAL
    return Layout(f"{layout.name}, the {int(keep.sum())} rows {csv.name} lists", rows[keep].reset_index(drop=True))


# ---------------------------------------------------------------------------------------------- entry


def masks_as_images(df: pd.DataFrame) -> list[str]:
    """Paths of ``df`` that are masks, not images: another row's ``mask``, a ``*_mask.*`` file or a file in a
    ``mask/`` or ``masks/`` folder (a Task B tree indexed as a plain folder of images)."""
    masks = set(df["mask"].fillna("").astype(str)) - {""} if "mask" in df else set()
    return [str(p) for p in df["path"] if str(p) in masks or Path(str(p)).stem.endswith("_mask")
            or Path(str(p)).parent.name in ("mask", "masks")]



def read_layout(src: str | Path, root: str | Path | None = None) -> Layout | None:
    """The official layout at ``src`` (a folder or a CSV; ``root``: the folder a CSV's paths start from), or None
    when ``src`` is in none of them."""
    src = Path(src)
    root = Path(root) if root is not None else None
    if src.is_dir():
        return _tgif(src) if _is_tgif(src) else _task_b_tree(src)
    if src.suffix.lower() != ".csv" or not src.is_file():
        return None
    try:
        df = pd.read_csv(src, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None
    cols = {c.strip().lower() for c in df.columns}
    if set(TASK_B_CSV_COLUMNS) <= cols:
        return _task_b_csv(src, df, root)
    if "image_id" in cols and not {"path", "prob"} & cols:
        return _tgif_csv(src, df, root)
    return None
