"""Reproduce the default Task B localizer shipped in the package (src/synthdet/pretrained/localizer/).

    python scripts/train_localizer.py [--steps 1400] [--pool build/native-pool] [--out src/synthdet/pretrained/localizer]

1. Triples (:func:`synthdet.localization.manipulate.make_manipulations`) built from ``../shared/data/dev`` and,
   where it exists, the native-resolution pool (``--pool``, ``build/native-pool`` of ``scripts/rebuild_pool.py``: its
   real photographs as hosts, its generated images as donors), authentic photos twice as often as each manipulation
   (the image-level head needs negatives). Pool images of a repository dev2 draws from, or the same photo as a dev or
   dev2 image (sha256 or dHash), are dropped first: the test hosts and generators stay unseen. A fifth of the dev host
   photos and of the pool's collections is kept aside (source-disjoint) for early stopping, the pixel threshold and
   the image-level head. ``--leave-out`` categories (default ``inpaint-sp``, whose trace the social
   chain erases: ``benchmarks/inpaint_signal.py``) are built from dev but not trained or calibrated on, and not
   built from the pool.
2. The patch head (frozen EfficientNet-Lite0 to stride 16, a small convolutional head: 0.75 M weights, 3 MB) trained
   on one CPU thread; the image-level decision is a logistic head on map statistics
   (:mod:`synthdet.localization.decision`), fitted on the held-aside hosts.
3. Held-out figures on triples built the same way from ``../shared/data/dev2`` (no photo and no generator shared
   with dev or the pool's kept images; every category equally often, as ``synthdet data make-manipulations`` builds them): per category pixel
   F1/IoU, the authentic false-alarm pixel share, image-level ROC AUC (learned head and coverage) and the all-ones
   map on the same rows, written into the card's ``metrics["test"]``.
4. The ONNX graph beside the weights (:mod:`synthdet.localization.graph`), for the scoring install without torch.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.data.manifest import index
from synthdet.data.splits import near_duplicate_of
from synthdet.localization.evaluate import evaluate_localizer
from synthdet.localization.graph import export_graph
from synthdet.localization.manipulate import CATEGORIES, make_manipulations
from synthdet.localization.metrics import localization_metrics
from synthdet.localization.models import PATCH_BLOCKS, Localizer
from synthdet.localization.triples import host_keys, load_pairs, read_triples, split_by_source
from synthdet.training.localize import TrainConfig, train_localizer

ROOT = Path(__file__).resolve().parents[1]


def build(src: Path | pd.DataFrame, folder: Path, n: int, size: int, seed: int, categories: tuple[str, ...]) -> Path:
    """Triples of ``src`` (a folder, or indexed rows) in ``folder`` (reused when already built with these settings)."""
    if not (folder / "manifest.csv").is_file():
        t = time.perf_counter()
        make_manipulations(index(src) if isinstance(src, Path) else src, folder, n=n, size=size, seed=seed,
                           categories=categories)
        print(f"{n} triples in {time.perf_counter() - t:.0f} s → {folder}")
    return folder


def repository(source: str) -> str:
    """``github:owner/repo file`` (or ``…@commit:file``) → ``owner/repo``: the collection an image came from."""
    return str(source).split(":", 1)[-1].split()[0].split("@")[0] if source else ""


def pool_rows(pool: Path, *against: Path) -> tuple[pd.DataFrame, int]:
    """The pool's usable rows, less those of a repository ``against[-1]`` (dev2) draws from and those that are the
    same photo as an image of any of ``against`` (sha256, or dHash within the near-duplicate bits): ``(rows, n
    dropped)``."""
    df = index(pool / "manifest.csv")
    df = df[df["ok"].astype(bool)].reset_index(drop=True)
    refs = [index(a) for a in against]
    drop = df["repository"].isin({repository(s) for s in refs[-1]["source"]})
    for ref in refs:
        drop |= df["sha256"].isin(set(ref["sha256"])) | near_duplicate_of(list(df["phash"].fillna("")),
                                                                         list(ref["phash"].fillna("")))
    return df[~drop].reset_index(drop=True), int(drop.sum())


def split_by_group(df: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)`` with no collection (``source_group``) on both sides: a pool collection is often one photo
    series, whose frames would leak across a split by photo."""
    names = sorted(set(df["source_group"]))
    random.Random(seed).shuffle(names)
    is_val = df["source_group"].isin(names[: max(1, round(val_fraction * len(names)))])
    return df[~is_val].reset_index(drop=True), df[is_val].reset_index(drop=True)


def all_ones(df) -> dict:  # type: ignore[no-untyped-def]
    """The all-ones map on the same rows: the floor a localizer must clear."""
    truths = [m for _, m in load_pairs(df)]
    res = localization_metrics([np.ones(t.shape) for t in truths], truths, list(df["category"]))
    return {c: {"n": b["n"], "f1": b["at_0.5"]["f1"], "iou": b["at_0.5"]["iou"]}
            for c, b in [("all", res["pixel"]), *res["per_category"].items()]}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    ap.add_argument("--dev2", type=Path, default=ROOT.parent / "shared" / "data" / "dev2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthdet-localizer"))
    ap.add_argument("--out", type=Path, default=ROOT / "src" / "synthdet" / "pretrained" / "localizer")
    ap.add_argument("--n-train", type=int, default=1400)
    ap.add_argument("--pool", type=Path, default=ROOT / "build" / "native-pool",
                    help="the native-resolution pool (scripts/rebuild_pool.py); skipped when absent")
    ap.add_argument("--n-pool", type=int, default=1500, help="triples built from the pool (0: none)")
    ap.add_argument("--n-test", type=int, default=360)
    ap.add_argument("--size", type=int, default=256, help="canvas before the social chain, as make-manipulations")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--encoder-lr", type=float, default=0.1, help="the encoder's learning rate as a share of --lr")
    ap.add_argument("--leave-out", default="inpaint-sp", help="categories kept out of training and validation "
                    "(comma-separated): inpaint-sp's trace does not survive the social chain (benchmarks/inpaint_signal.py), "
                    "so its regions only teach the map to flag photo texture")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    left_out = tuple(args.leave_out.split(",")) if args.leave_out else ()
    train_dir = build(args.dev, args.work / f"train-{args.n_train}-{args.size}", args.n_train, args.size, 1,
                      (*CATEGORIES, "authentic"))
    test_dir = build(args.dev2, args.work / f"test-{args.n_test}-{args.size}", args.n_test, args.size, 2, CATEGORIES)
    triples = read_triples(train_dir)
    fit, val = split_by_source(triples[~triples["category"].isin(left_out)].reset_index(drop=True), 0.2, seed=0)
    from_pool = "no pool triples"
    if args.n_pool and (args.pool / "manifest.csv").is_file():
        rows, dropped = pool_rows(args.pool, args.dev, args.dev2)
        kept = tuple(c for c in (*CATEGORIES, "authentic") if c not in left_out)
        pool_dir = build(rows, args.work / f"pool-{args.n_pool}-{args.size}", args.n_pool, args.size, 3, kept)
        pool_fit, pool_val = split_by_group(read_triples(pool_dir), 0.2, seed=0)
        from_pool = (f"{len(pool_fit)} + {len(pool_val)} (val) triples from the native pool ({len(rows)} images after "
                     f"dropping {dropped}: dev2's repositories, and the same photo as a dev or dev2 image by sha256 "
                     "or dHash; val: a fifth of its collections)")
        fit, val = pd.concat([fit, pool_fit], ignore_index=True), pd.concat([val, pool_val], ignore_index=True)
    elif args.n_pool:
        print(f"no pool at {args.pool}: dev triples only")
    test = read_triples(test_dir)
    assert not set(host_keys(test)) & set(host_keys(fit) + host_keys(val))  # no photo on both sides
    cfg = TrainConfig(model="patch", steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr, eval_every=100,
                      patience=6, image_score="learned", encoder_lr=args.encoder_lr)
    det = args.work / "det"
    shutil.rmtree(det, ignore_errors=True)
    loc = train_localizer(fit, val, det, cfg, device="cpu", data={
        "train_data": f"{len(fit)} triples from dev and the pool (scripts/train_localizer.py; left out: "
                      f"{args.leave_out or 'none'}); {from_pool}",
        "val_data": f"{len(val)} triples, no host photo or pool collection shared with train: early stopping, "
                    "thresholds, the image-level head"})
    res = evaluate_localizer(loc, test)
    card = loc.card
    card.metrics["test"] = res
    card.metrics["test_all_ones"] = all_ones(test)
    card.data["test"] = (f"{len(test)} triples from dev2 (held-out: no host photo and no generator shared with dev, "
                         "and no pool image of a dev2 repository or duplicating a dev2 image among the training hosts "
                         "and donors; "
                         f"{', '.join(f'{c} {k}' for c, k in test['category'].value_counts().sort_index().items())})")
    card.params["encoder_blocks"] = PATCH_BLOCKS
    card.params["script_seconds"] = round(time.perf_counter() - start, 1)
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    export_graph(loc.net, args.out)  # the scoring install's copy; the card saved next records its digest
    Localizer(card, loc.net).save(args.out)
    px, im = res["pixel"]["at_threshold"], res["image"]
    print(json.dumps({"rows": res["rows"], "pixel_f1": px["f1"], "pixel_iou": px["iou"],
                      "all_ones_f1": card.metrics["test_all_ones"]["all"]["f1"],
                      "authentic_fp": px["authentic_fp_rate"], "image_auc": im["roc_auc"],
                      "coverage_auc": im["coverage_roc_auc"],
                      "per_category": {c: round(b["at_threshold"]["f1"], 3) for c, b in res["per_category"].items()},
                      "train_seconds": card.params["train_seconds"]}, indent=1))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
