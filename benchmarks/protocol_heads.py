"""Head-only levers of the three-view protocol, swept on the features ``benchmarks/protocol.py`` cached (issue 19).

    python benchmarks/protocol.py --only base lite2 --cache build/protocol-cache    # caches every view's features
    python benchmarks/protocol_heads.py --cache build/protocol-cache

The pair default (EfficientNet-Lite0 + Lite2, mean raw logit) refitted per fold on the same ten folds of whole groups
as the protocol, with the L2 penalty ``C`` of each logistic head and extra fit rows varied: view 0 of the thumbnail
and/or native crop of the training images' originals, for all of them or a size-matched subset
(:func:`synthdet.data.splits.size_matched`), optionally weighted by 1/sqrt(group size); ``crop-random`` (native-scale
squares of 160-320 px anywhere in the frame) is cut from the size-matched originals only. Each fold's heads are fitted
on every training-fold row (no calibration split: a logistic head does not early-stop), so the figures differ a little
from ``protocol.py``'s; every held-out image is scored in the four views by the fold model that never saw its group.
Reported: pooled ROC AUC and the worst group's per view, and ``original+crop``: the original scored at two scales
(:data:`MULTI_SCALE_CROP_WEIGHT`). Writes ``benchmarks/results/protocol_heads.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import _common  # noqa: F401  (import fallback for a checkout)
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from synthdet.data.perturbations import get_view
from synthdet.data.splits import size_matched
from synthdet.evaluation.metrics import source_table
from synthdet.features.extract import FeatureStore, view_features
from synthdet.heads.base import head_logit
from synthdet.heads.logreg import LogisticHead
from synthdet.io.pixels import file_megapixels
from synthdet.training.train import GENERALISING_HEAD, generalising_backbone, load_features

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from train_default import MEMBERS, VIEWS  # noqa: E402


class Lever(NamedTuple):
    C: float  # the logistic heads' inverse L2 penalty
    views: tuple[str, ...] = ()  # extra fit rows: these views (view 0) of the training images' originals
    matched: bool = False  # ... of the size-matched subset only
    group_weighted: bool = False  # rows weighted by 1/sqrt(group size)
    pool_rows: bool = True  # False: fitted on the extra views alone (a head for small inputs: scale-aware routing)


LEVERS: dict[str, Lever] = {
    "pair C0.5 (the generalising head)": Lever(0.5),
    "+crop, all images": Lever(0.5, ("crop",)),
    "+crop, size-matched": Lever(0.5, ("crop",), matched=True),
    "+thumbnail+crop, size-matched": Lever(0.5, ("thumbnail", "crop"), matched=True),
    "group-weighted": Lever(0.5, group_weighted=True),
    "group-weighted +crop, all images": Lever(0.5, ("crop",), group_weighted=True),
    "C0.05": Lever(0.05),
    "C0.02": Lever(0.02),
    "C0.05 +thumbnail+crop, size-matched": Lever(0.05, ("thumbnail", "crop"), matched=True),
    "C0.02 +thumbnail+crop, size-matched": Lever(0.02, ("thumbnail", "crop"), matched=True),
    "C0.01 +thumbnail+crop, size-matched (shipped)": Lever(0.01, ("thumbnail", "crop"), matched=True),
    "C0.005 +thumbnail+crop, size-matched": Lever(0.005, ("thumbnail", "crop"), matched=True),
    "C0.002 +thumbnail+crop, size-matched": Lever(0.002, ("thumbnail", "crop"), matched=True),
    "C0.01 +thumbnail+crop+crop-random, size-matched": Lever(0.01, ("thumbnail", "crop", "crop-random"), matched=True),
    "C0.005 +thumbnail+crop+crop-random, size-matched": Lever(0.005, ("thumbnail", "crop", "crop-random"), matched=True),
    "C0.01 crop+crop-random alone, size-matched": Lever(0.01, ("crop", "crop-random"), matched=True, pool_rows=False),
}
#: multi-scale inference, measured on every lever's held-out logits: the original scored as this mix of its whole
#: (downscaled to 384 px) and its 224-px native centre crop (two forward passes)
MULTI_SCALE_CROP_WEIGHT = 0.25


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=ROOT / "build" / "protocol" / "manifest.csv")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=list(LEVERS))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "protocol_heads.json")
    args = ap.parse_args()
    if not args.manifest.is_file():
        print(f"skipped: {args.manifest} not found (run benchmarks/protocol.py first)")
        return
    df = pd.read_csv(args.manifest, dtype={"sha256": str}).drop_duplicates("sha256").reset_index(drop=True)
    y, g, folds, shas = (df[c].to_numpy() for c in ("label", "group", "fold", "sha256"))
    n_views = GENERALISING_HEAD["n_views"]
    matched = size_matched(file_megapixels(df["original"]), y, seed=42)
    # views only ever fitted on (not among the protocol's VIEWS) are cut from the size-matched originals alone
    fit_only = sorted({v for lever in args.only for v in LEVERS[lever][1]} - set(VIEWS))
    members = []
    for name in MEMBERS:
        bb = generalising_backbone(name)
        X, _ = load_features(FeatureStore.for_backbone(bb, args.cache), list(shas), list(range(n_views)), "concat")
        shown = {v: view_features(bb, df["original"].tolist(), list(shas), v, None if v == "original" else get_view(v),
                                  "concat", tag="@original", cache_dir=args.cache, num_workers=0) for v in VIEWS}
        for v in fit_only:
            part = view_features(bb, df["original"].iloc[matched].tolist(), list(shas[matched]), v, get_view(v),
                                 "concat", tag="@original", cache_dir=args.cache, num_workers=0, progress=True)
            shown[v] = np.full((len(df), part.shape[1]), np.nan, dtype=np.float32)
            shown[v][matched] = part
        members.append((X, shown))
    # levers run before keep their results: a run of a few levers adds to the table instead of replacing it
    results = json.loads(args.json.read_text())["levers"] if args.json.is_file() else {}
    for lever in args.only:
        C, extra, match, weighted, pool_rows = LEVERS[lever]
        start = time.perf_counter()
        logits = {v: np.full(len(df), np.nan) for v in ("file", *VIEWS)}
        for f in np.unique(folds):
            train, test = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            pick = np.intersect1d(train, matched) if match else train
            per_member = []
            for X, shown in members:
                pool = train if pool_rows else train[:0]
                own = [pool.repeat(n_views)] + [pick[np.isfinite(shown[v][pick]).all(axis=1)] for v in extra]
                fit = np.concatenate([X[(pool[:, None] * n_views + np.arange(n_views)).ravel()],
                                      *(shown[v][i] for v, i in zip(extra, own[1:]))])
                owner = np.concatenate(own)
                weight = None
                if weighted:
                    counts = pd.Series(g[owner]).value_counts()
                    weight = 1 / np.sqrt(counts.loc[g[owner]].to_numpy())
                    weight /= weight.mean()
                head = LogisticHead(C=C).fit(fit, y[owner], sample_weight=weight)
                per_member.append({"file": head_logit(head, X[test * n_views]),
                                   **{v: head_logit(head, np.nan_to_num(shown[v][test])) for v in VIEWS}})
            for v in logits:
                logits[v][test] = np.mean([m[v] for m in per_member], axis=0)
        row = {}
        logits["original+crop"] = (1 - MULTI_SCALE_CROP_WEIGHT) * logits["original"] + MULTI_SCALE_CROP_WEIGHT * logits["crop"]
        for v, z in logits.items():
            t = source_table(y, z, g, threshold=np.inf)
            worst = t.loc[t["roc_auc"].idxmin()]
            row[v] = {"roc_auc": float(roc_auc_score(y, z)), "worst_group_auc": float(worst["roc_auc"]),
                      "worst_group": str(worst["group"])}
        results[lever] = {"views": row, "wall_s": round(time.perf_counter() - start, 1)}
        print(f"{lever}: " + "  ".join(f"{v} {r['roc_auc']:.3f} (worst {r['worst_group_auc']:.3f})"
                                       for v, r in row.items()), flush=True)
    args.json.write_text(json.dumps({
        "rows": f"{len(df)} images of {args.manifest.name} (the protocol pool less the final groups), {df['group'].nunique()} "
                "groups in ten folds; every image scored by the fold model that never saw its group",
        "size_matched_images": int(len(matched)), "levers": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
