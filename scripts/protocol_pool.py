"""The pool of the generalisation protocol: ``../shared/data/dev`` ∪ ``dev2`` (their original files) ∪ the native
pool (``scripts/rebuild_pool.py``), every image in a ``group`` (one generator lineage, one photo collection) and a
``fold`` (whole groups per fold, for fewer fits), framed so that size, shape and file size cannot tell the classes
apart.

    python scripts/protocol_pool.py [--native build/native-pool] [--out build/protocol-pool]

The frame: generated images are mostly square and about 1 Mpx, camera photos 4:3 and up to 24 Mpx, so a detector
could learn the class from the frame (and, at the image's own scale, from the zoom level). Every image, of either
class, is cut to the frame of a generated image drawn at random from the pool (its aspect, and at most its pixel
count), at a random position and at its own scale — a crop, never a resampling — and stored as JPEG. Both classes
pass the same chain: decode (EXIF orientation applied) → a first JPEG generation for files that had none (lossless
PNG/WebP outputs; camera photos and JPEG outputs have theirs) → the crop → JPEG at a quality drawn from 85–97.

The frame drawn depends on the generated images present at the time, so each crop box, once drawn, is recorded in
``data/pool/frames.csv`` (by the sha256 of the original) and each group's fold in ``data/pool/folds.csv``: both are
committed, a rebuild cuts the same pixels into the same folds, and images or groups added later extend the tables
without moving what earlier figures were measured on.

Groups are lineages, not file labels: a model the detector was trained on must not come back as "unseen" under
another name, so DALL-E 2/3 and GPT-image are one group with ``dev``'s OpenAI images, every FLUX derivative is
``fake:flux``, SD 1.x/2.x checkpoints are one group, and families too small to score alone join the bucket ``dev``
already has for them (open DiTs, commercial APIs). Photo collections of fewer than 15 images join their
repository's bucket, and tiny repositories one ``real:misc-samples`` bucket.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from build_pool import OTHER_OPEN, pooled_manifest  # this script's folder: the dev/dev2 groups are defined there
from PIL import Image
from rebuild_pool import MAX_PIXELS, QUALITY, balance, describe, meta_auc
from tqdm import tqdm

from synthdet.io.files import sha256_file
from synthdet.io.pixels import jpeg_roundtrip, load_image

ROOT = Path(__file__).resolve().parents[1]

#: native-pool family → protocol group (a lineage, shared with dev/dev2's group names where they overlap)
LINEAGE = {
    **dict.fromkeys(["dalle2", "dalle3", "gpt-image"], "fake:openai"),
    **dict.fromkeys(["sd1", "sd2", "sdxs", "lcm"], "fake:sd1-sd2"),
    **dict.fromkeys(["sdxl", "sdxl-turbo", "stable-cascade", "wuerstchen"], "fake:sdxl"),
    **dict.fromkeys(["flux", "flux2", "chroma", "krea2"], "fake:flux"),
    **dict.fromkeys(["sd3", "pcm"], "fake:sd3"),
    "qwen-image": "fake:qwen", "gemini-image": "fake:gemini",
    **dict.fromkeys(["grok-image", "seedream", "ideogram", "firefly", "recraft", "reve", "luma"], "fake:commercial-api"),
    **dict.fromkeys(["progan", "stylegan", "stylegan2", "stylegan3"], "fake:stylegan"),  # NVIDIA's face GANs, one line
    **dict.fromkeys(["vqgan-clip", "vqgan"], "fake:gan-vqgan"),
    **dict.fromkeys(["ldm", "glid-3-xl", "majesty-diffusion"], "fake:ldm"),
    # the open DiT-era families held out one by one where the pool has enough of them (build_pool.FAKE_GROUPS names
    # the same groups in dev/dev2); the rest, a handful of images each, pooled (build_pool.OTHER_OPEN)
    **dict.fromkeys(["lumina", "lumina-dimoo"], "fake:lumina"), "z-image": "fake:z-image",
    "pixart-sigma": "fake:pixart", "auraflow": "fake:auraflow",
    **dict.fromkeys(["sana", "hidream", "cosmos", "cosmos-predict2", "ernie-image", "fibo", "x-omni", "hdm", "prx",
                     "meissonic", "amused", "cogview3", "kandinsky2", "instaflow", "unidiffuser", "hart", "emu3", "bria",
                     "f-lite", "wan"], OTHER_OPEN),
    "liquid": "fake:liquid",  # autoregressive (Liquid-7B); Janus, the other one with enough images, is a final group
}
MIN_COLLECTION = 15
#: each image's crop box (by the sha256 of its original) and each group's fold, as first drawn: committed, so that a
#: rebuild from the sources table cuts the same pixels into the same folds
FRAMES = ROOT / "data" / "pool" / "frames.csv"
FOLDS = ROOT / "data" / "pool" / "folds.csv"
BOX = ["x", "y", "width", "height"]


def native_groups(df: pd.DataFrame) -> pd.Series:
    fake = df["label"] == 1
    groups = pd.Series("", index=df.index)
    groups[fake] = [LINEAGE.get(f, f"fake:{f}") for f in df.loc[fake, "family"]]
    reals = df[~fake]
    repo = reals["repository"].str.split("/").str[1].str.lower()
    sizes = reals.groupby("collection")["collection"].transform("size")
    name = np.where(sizes >= MIN_COLLECTION, "real:" + reals["collection"], "real:" + repo)
    repo_sizes = pd.Series(name, index=reals.index).map(pd.Series(name).value_counts())
    groups[~fake] = np.where(repo_sizes >= MIN_COLLECTION, name, "real:misc-samples")
    return groups


Box = tuple[int, int, int, int]  # x, y, width, height of the crop on the decoded original


def frame(src: str, key: str, frames: np.ndarray, dest: Path, box: Box | None = None) -> tuple[Box, int]:
    """Store ``src`` cut to a frame drawn from ``frames`` (rows ``width, height``) as ``dest``, or to ``box`` where a
    previous build recorded one; the box and the stored bytes. The draws are seeded by ``key``, but the frame drawn
    depends on the generated images present at the time: recording the box makes a rebuild cut the same pixels."""
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:16], 16))
    q1, q2 = (int(q) for q in rng.integers(QUALITY[0], QUALITY[1] + 1, size=2))
    with Image.open(src) as im:
        first_generation = im.format == "JPEG"
    img = load_image(src, max_pixels=MAX_PIXELS)  # as synthdet decodes: EXIF orientation, alpha on white
    if not first_generation:
        img = jpeg_roundtrip(img, q1, subsampling="4:2:0")
    if box is None:
        box = draw_box(rng, img.size, frames)
    x0, y0, w, h = box
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    img.crop((x0, y0, x0 + w, y0 + h)).save(tmp, format="JPEG", quality=q2, subsampling="4:2:0")
    tmp.replace(dest)
    return box, dest.stat().st_size


def draw_box(rng: np.random.Generator, size: tuple[int, int], frames: np.ndarray) -> Box:
    """A generated image's frame (its aspect, at most its pixel count, 80-100 % of each side), at a random position."""
    tw, th = frames[rng.integers(len(frames))]
    W, H = size
    w = min(float(W), H * tw / th)
    h = w * th / tw
    if w * h > tw * th:
        s = float(np.sqrt(tw * th / (w * h)))
        w, h = w * s, h * s
    w, h = w * rng.uniform(0.8, 1.0), h * rng.uniform(0.8, 1.0)  # no class keeps its tell-tale sizes (512², 1024²)
    iw, ih = max(16, min(W, round(w))), max(16, min(H, round(h)))
    return int(rng.integers(0, W - iw + 1)), int(rng.integers(0, H - ih + 1)), iw, ih


def _frame_row(args: tuple[str, str, np.ndarray, Path, Box | None]) -> tuple[Box, int]:
    src, key, frames, dest, box = args
    if box is not None and dest.is_file():  # resume: cut before, to the recorded box
        return box, dest.stat().st_size
    return frame(src, key, frames, dest, box)


def assign_folds(groups: pd.Series, labels: pd.Series, k: int, fixed: dict[str, str] | None = None) -> pd.Series:
    """Whole groups into ``k`` folds, largest first into the fold with the fewest images of that class, so every
    fold holds reals and fakes and about the same number of each. Groups in ``fixed`` (a previous build's folds) keep
    theirs, so that adding groups to the pool does not reshuffle the folds that earlier figures were measured on."""
    fixed = fixed or {}
    counts = pd.DataFrame({"group": groups, "label": labels}).groupby("group")["label"].agg(["size", "mean"])
    load = np.zeros((k, 2))
    fold_of: dict[str, str] = {}
    ordered = counts.sort_values("size", ascending=False, kind="stable")
    for g, row in ordered.iterrows():
        if str(g) in fixed:
            fold_of[str(g)] = fixed[str(g)]
            load[int(fixed[str(g)].removeprefix("fold")), int(row["mean"] >= 0.5)] += row["size"]
    for g, row in ordered.iterrows():
        if str(g) not in fold_of:
            cls = int(row["mean"] >= 0.5)
            f = int(np.argmin(load[:, cls]))
            load[f, cls] += row["size"]
            fold_of[str(g)] = f"fold{f:02d}"
    return groups.map(fold_of)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--native", type=Path, default=ROOT / "build" / "native-pool")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "protocol-pool")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--frames", type=Path, default=FRAMES, help="crop boxes recorded by earlier builds (kept, extended)")
    ap.add_argument("--fold-table", type=Path, default=FOLDS, help="group → fold of earlier builds (kept, extended)")
    ap.add_argument("--ratio", type=float, default=0.0,
                    help="then at most this class ratio per size/orientation bin (0: none; framing suffices)")
    args = ap.parse_args()
    args.out = args.out.resolve()  # the manifest's paths are absolute, wherever it is read from
    dev = pooled_manifest()
    dev = dev[dev["ok"]].assign(bytes=lambda d: [Path(p).stat().st_size for p in d["path"]])
    native = pd.read_csv(args.native / "manifest.csv", dtype={"sha256": str})
    native = native.assign(path=[str((args.native / p).resolve()) for p in native["path"]], group=native_groups(native),
                           dataset="native")
    keep = ["path", "sha256", "label", "source", "generator", "group", "dataset", "width", "height", "bytes"]
    pool = pd.concat([dev[keep], native[keep]], ignore_index=True).drop_duplicates("sha256")
    before = {**describe(pool), "meta_auc": meta_auc(pool)}
    fakes = pool[pool["label"] == 1]
    frames = fakes[["width", "height"]].to_numpy()
    recorded = pd.read_csv(args.frames, dtype={"sha256": str}) if args.frames.is_file() else pd.DataFrame(
        columns=["sha256", *BOX])
    boxes: dict[str, Box] = {r.sha256: (int(r.x), int(r.y), int(r.width), int(r.height))
                             for r in recorded.itertuples()}
    jobs = [(p, sha, frames, args.out / "images" / f"{sha[:20]}.jpg", boxes.get(sha))
            for p, sha in zip(pool["path"], pool["sha256"])]
    with ProcessPoolExecutor(args.workers) as ex:
        cut = list(tqdm(ex.map(_frame_row, jobs, chunksize=8), total=len(jobs), desc="frame"))
    boxes.update((sha, box) for sha, (box, _) in zip(pool["sha256"], cut))
    table = pd.DataFrame([(sha, *box) for sha, box in sorted(boxes.items())], columns=["sha256", *BOX])
    table.to_csv(args.frames, index=False, lineterminator="\n")
    pool = pool.assign(original=pool["path"], path=[str(j[3]) for j in jobs], width=[c[0][2] for c in cut],
                       height=[c[0][3] for c in cut], bytes=[c[1] for c in cut])
    pool["sha256"] = [sha256_file(p) for p in pool["path"]]
    framed = {**describe(pool), "meta_auc": meta_auc(pool)}
    if args.ratio:
        pool = balance(pool, ratio=args.ratio)
    fixed = pd.read_csv(args.fold_table) if args.fold_table.is_file() else pd.DataFrame(columns=["group", "fold"])
    pool["fold"] = assign_folds(pool["group"], pool["label"], args.folds, dict(zip(fixed["group"], fixed["fold"])))
    folds = pool[["group", "fold"]].drop_duplicates().sort_values("group")
    pd.concat([fixed[~fixed["group"].isin(folds["group"])], folds]).sort_values("group").to_csv(
        args.fold_table, index=False, lineterminator="\n")
    after = {**describe(pool), "meta_auc": meta_auc(pool)}
    pool.to_csv(args.out / "manifest.csv", index=False, lineterminator="\n")
    report = {"originals": before, "framed": framed, **({"balanced": {"ratio": args.ratio, **after}} if args.ratio else {})}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(pool.groupby(["label", "group"]).size().to_string(), file=sys.stderr)
    print(json.dumps(report, indent=1))
    print(f"{len(pool)} images, {pool['group'].nunique()} groups, {pool['fold'].nunique()} folds → {args.out}; "
          f"frame-only ROC AUC {before['meta_auc']:.3f} on the originals, {framed['meta_auc']:.3f} framed"
          + (f", {after['meta_auc']:.3f} balanced" if args.ratio else ""))


if __name__ == "__main__":
    main()
