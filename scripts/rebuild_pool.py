"""Rebuild the native-resolution training pool from its sources table (``data/pool/sources.csv``).

    python scripts/rebuild_pool.py [--mirrors DIR] [--out build/native-pool] [--allow-missing]

Each row names one image in a public git repository: ``repository,commit,path,sha256`` plus ``label``, ``generator``,
``family`` (generated images) or ``collection`` (photographs) and ``licence``. The images are never committed: this
script reads them from local snapshots of those repositories (``DIR/<owner>+<name>/repo``, ``DIR/<owner>+<name>`` or
``DIR/<owner>/<name>``: a bare snapshot or a clone; ``git clone`` of the repository at ``commit`` works), checks every
blob's sha256, and writes ``OUT/images/`` plus ``OUT/manifest.csv``.

Storage keeps every image at its native resolution (never resampled). Files that are not JPEG already (PNG, WebP,
BMP, TIFF, AVIF: most generator outputs, a few photo sets) are encoded once as baseline JPEG at a quality drawn per
image from 85–97 (4:2:0, as cameras and platforms write), alpha composited on white: so both classes carry one JPEG
generation and the container, the bytes per pixel or a lossless history cannot tell them apart. JPEG files are
copied byte for byte. A run resumes: images already written with the right digest are kept.

Then ``OUT/report.json``: per class, the distributions of megapixels, aspect and bytes per pixel, and the ROC AUC of
a classifier that sees only width, height, aspect and file size (5-fold, grouped by source): the pool must keep it
≤ 0.60, or a detector can learn the classes from the frame instead of the pixels (``--balance`` subsamples per size
and aspect bin until it does).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from synthdet.io.pixels import load_image

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "data" / "pool" / "sources.csv"
COLUMNS = ["repository", "commit", "path", "sha256", "bytes", "format", "width", "height", "label", "generator",
           "family", "collection", "licence", "note"]
QUALITY = (85, 97)
META_AUC_BAR = 0.60

MAX_PIXELS = 120_000_000  # the largest camera files of the sources decode; Pillow's own bomb check follows it
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def git_dir(mirrors: Path, repository: str) -> Path | None:
    owner, name = repository.split("/", 1)
    for base in (mirrors / f"{owner}+{name}" / "repo", mirrors / f"{owner}+{name}", mirrors / owner / name):
        for candidate in (base, base / ".git"):  # a bare snapshot or a clone's git folder
            if (candidate / "HEAD").is_file():
                return candidate
    return None


class Blobs:
    """``git cat-file --batch`` on one repository: blobs by ``commit:path`` without a process per file."""

    def __init__(self, gitdir: Path) -> None:
        self.proc = subprocess.Popen(["git", f"--git-dir={gitdir}", "cat-file", "--batch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def get(self, commit: str, path: str) -> bytes | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{commit}:{path}\n".encode())
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().decode().split()
        if len(header) < 3 or header[1] != "blob":
            return None
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def quality_for(sha256: str) -> int:
    """The JPEG quality an image is stored at: drawn once from :data:`QUALITY`, seeded by its digest."""
    rng = np.random.default_rng(int(sha256[:16], 16))
    return int(rng.integers(QUALITY[0], QUALITY[1] + 1))


def stored_bytes(data: bytes, sha256: str) -> tuple[bytes, int, int, str]:
    """``(bytes to store, width, height, how)``: JPEGs as they are, anything else decoded as synthdet decodes it
    (EXIF orientation applied, palette and alpha to RGB on white: :func:`~synthdet.io.pixels.load_image`) and encoded
    once as JPEG at its own size."""
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format
        if fmt == "JPEG":  # as a viewer shows it: orientations 5-8 turn the frame by 90°
            w, h = (im.height, im.width) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else im.size
            return data, w, h, "copied"
    rgb = load_image(data, max_pixels=MAX_PIXELS)
    q = quality_for(sha256)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=q, subsampling="4:2:0")
    return buf.getvalue(), rgb.width, rgb.height, f"{fmt} → JPEG q{q}"


def group_of(row: pd.Series) -> str:
    return f"fake:{row['family']}" if int(row["label"]) == 1 else f"real:{row['collection']}"


def rebuild(sources: pd.DataFrame, mirrors: Path, out: Path, *, allow_missing: bool) -> pd.DataFrame:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, missing = [], []
    bar = tqdm(total=len(sources), desc="rebuild", unit="img")
    for repo, part in sources.groupby("repository", sort=True):
        gd = git_dir(mirrors, str(repo))
        if gd is None:
            missing.append(f"{repo}: no snapshot under {mirrors} ({len(part)} images)")
            continue
        blobs = Blobs(gd)
        for r in part.itertuples(index=False):
            bar.update()
            dest = images / ("real" if int(r.label) == 0 else "fake") / f"{r.sha256[:20]}.jpg"
            data = blobs.get(r.commit, r.path)
            if data is None or hashlib.sha256(data).hexdigest() != r.sha256:
                missing.append(f"{repo}@{r.commit[:10]}:{r.path}: " + ("absent" if data is None else "digest differs"))
                continue
            body, w, h, how = stored_bytes(data, r.sha256)
            if not dest.is_file() or dest.stat().st_size != len(body):
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(".tmp")
                tmp.write_bytes(body)
                tmp.replace(dest)
            rows.append({**r._asdict(), "stored": how, "path": str(dest.relative_to(out)),
                         "source": f"github:{repo}@{r.commit[:12]}:{r.path}", "width": w, "height": h,
                         "bytes": len(body)})
        blobs.close()
    bar.close()
    if missing:
        print(f"{len(missing)} image(s) could not be rebuilt:", *missing[:20], sep="\n  ", file=sys.stderr)
        if not allow_missing:
            sys.exit(1)
    df = pd.DataFrame(rows).astype({"label": int})
    df["group"] = df.apply(group_of, axis=1)
    return df


def describe(df: pd.DataFrame) -> dict:
    """Per class: quantiles of megapixels, aspect (long/short) and bytes per pixel; counts per group."""
    mp = df["width"] * df["height"] / 1e6
    aspect = np.maximum(df["width"], df["height"]) / np.minimum(df["width"], df["height"])
    bpp = df["bytes"] * 8 / (df["width"] * df["height"])
    out: dict = {}
    for label, name in ((0, "real"), (1, "generated")):
        sel = df["label"] == label
        out[name] = {"n": int(sel.sum()), "groups": int(df.loc[sel, "group"].nunique()),
                     **{k: [round(float(v), 3) for v in np.quantile(s[sel], [0.1, 0.25, 0.5, 0.75, 0.9])]
                        for k, s in (("megapixels_q10_25_50_75_90", mp), ("aspect_q10_25_50_75_90", aspect),
                                     ("bits_per_pixel_q10_25_50_75_90", bpp))},
                     "share_2mp_or_more": round(float((mp[sel] >= 2).mean()), 3)}
    return out


def meta_auc(df: pd.DataFrame) -> float:
    """Out-of-fold ROC AUC of a gradient-boosted classifier on width, height, aspect and file size alone (folds
    grouped by source group, so it cannot memorise one collection's size)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict

    X = np.column_stack([np.log(df["width"]), np.log(df["height"]), np.log(df["width"] / df["height"]),
                         np.log(df["bytes"])])
    p = cross_val_predict(HistGradientBoostingClassifier(max_depth=3, random_state=0), X, df["label"],
                          groups=df["group"], cv=GroupKFold(5), method="predict_proba")[:, 1]
    return float(roc_auc_score(df["label"], p))


def balance(df: pd.DataFrame, *, ratio: float, seed: int = 0) -> pd.DataFrame:
    """Subsample so that in every bin of (megapixels, orientation) neither class has more than ``ratio`` times the
    other's count: size and shape then say little about the class."""
    mp_bins = np.digitize(np.log2(df["width"] * df["height"] / 1e6), np.arange(-3, 5, 0.75))
    orient = np.sign(df["width"] - df["height"])
    key = pd.Series(mp_bins * 3 + orient + 1, index=df.index)
    rng = np.random.default_rng(seed)
    keep = []
    for _, part in df.groupby(key):
        counts = part["label"].value_counts()
        cap = int(np.ceil(ratio * counts.min())) if len(counts) == 2 else 0
        for _, cls in part.groupby("label"):
            keep.extend(cls.index if len(cls) <= cap else rng.choice(cls.index, size=cap, replace=False))
    return df.loc[sorted(keep)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", type=Path, nargs="+", default=[SOURCES],
                    help="sources tables, concatenated (e.g. the table and a candidate growth of data/pool/candidates)")
    ap.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "native-pool")
    ap.add_argument("--balance", type=float, default=None, help="per-bin class ratio cap (e.g. 1.5)")
    ap.add_argument("--allow-missing", action="store_true", help="write what could be rebuilt; exit 0")
    args = ap.parse_args()
    sources = pd.concat([pd.read_csv(t, dtype=str, keep_default_na=False) for t in args.sources], ignore_index=True)
    df = rebuild(sources, args.mirrors, args.out, allow_missing=args.allow_missing)
    report = {"all": {**describe(df), "meta_auc": meta_auc(df)}}
    if args.balance:
        df = balance(df, ratio=args.balance)
        report["balanced"] = {"ratio": args.balance, **describe(df), "meta_auc": meta_auc(df)}
    df.to_csv(args.out / "manifest.csv", index=False, lineterminator="\n")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    final = report.get("balanced", report["all"])["meta_auc"]
    print(f"{len(df)} images in {df['group'].nunique()} groups → {args.out / 'manifest.csv'}; "
          f"frame-only classifier ROC AUC {final:.3f} (bar ≤ {META_AUC_BAR})")


if __name__ == "__main__":
    main()
