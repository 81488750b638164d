"""Reproduce the default detector shipped in the package (src/synthdet/pretrained/default/).

Builds a SplitPlan over the development set (../shared/data/dev, 927 images; grouped by content hash and
near-duplicates, stratified by label and generator/source, seed 42): ``test`` (20 %) is held out from everything.
The head is fitted on ``fit`` with its threshold from ``calib``, scored on ``test`` (the "pre-refit" figures), then
refitted on fit + calib with its threshold from out-of-fold probabilities; the saved model is scored on ``test`` at
the saved threshold. The card keeps both blocks, each naming its model, threshold and rows; ``plan.json`` is saved
beside it, so every figure can be recomputed on the rows the card names.

    python scripts/train_default.py [--data ../shared/data/dev/manifest.csv] [--limit 40 --out /tmp/default]

Choice of configuration (`python benchmarks/default_selection.py`, results in benchmarks/results/): EfficientNet-Lite
features pooled *and* from every stage ("concat"), a standardised logistic-regression head, and 4 cached views per
training image (random crop, down-up resize, JPEG 60-95). It was chosen by cross-source ROC AUC — train on ImageNet
photos + ComfyUI template images, test on DreamBooth/other photos + ComfyUI examples/InvokeAI — the closest proxy
available here for "other generators, other cameras".
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd

from synthdet.data import index
from synthdet.train import train_detector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dev" / "manifest.csv"
OUT = ROOT / "src" / "synthdet" / "pretrained" / "default"
CONFIG = {"backbone": "effnet-lite0", "head": "logreg", "features": "concat", "n_views": 4}


def first_per_class(df: pd.DataFrame, limit: int) -> pd.DataFrame:
    """A quick, reproducible subset: the first ``limit`` images of each class by content hash."""
    return df.sort_values("sha256").groupby("label", group_keys=False).head(limit).reset_index(drop=True)


def describe(block: dict) -> str:
    at = block["at_threshold"]
    return (f"{block['model']}: threshold {block['threshold']:.3f}, {block['rows']} {block['role']} rows "
            f"(n={block['n']}, digest {block['rows_digest']}): ROC AUC {block['roc_auc']:.4f}  AP {block['ap']:.4f}  "
            f"EER {block['eer']:.4f}  F1 {at['f1']:.4f}  accuracy {at['accuracy']:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--limit", type=int, default=None, help="Images per class (a quick check, not the shipped model).")
    args = ap.parse_args()
    df = index(args.data, progress=True)
    if args.limit:
        df = first_per_class(df[df["ok"]], args.limit)
    res = train_detector(df, **CONFIG, seed=args.seed, cache_dir=args.cache, refit=True, progress=True)
    staging = args.out.with_name(args.out.name + ".new")  # the old detector stays whole until the new one is
    shutil.rmtree(staging, ignore_errors=True)
    res.detector.save(staging)
    res.plan.save(staging / "plan.json")  # content hashes only: no local paths in the package
    shutil.rmtree(args.out, ignore_errors=True)
    staging.rename(args.out)
    card = res.detector.card
    print(f"split plan {res.plan.id}: {res.plan.counts()}  → {args.out}")
    print(describe(card.metrics["val"]))
    print(describe(card.metrics["pre_refit"]))


if __name__ == "__main__":
    main()
