#!/usr/bin/env python
"""Layer-wise fusion vs pooled-feature probes on the development data, with the embedded backbone's real weights.

The splits are ``train_detector``'s: ``test`` (20 %, a SplitPlan, seed 42) is held out and only scored;
the rest is divided into ``fit`` (85 %) and ``calib`` (15 %, seed 43). Every head is fitted on ``fit`` (``--views``
cached views per image), early-stops on ``calib`` ROC AUC, and its F1 threshold is tuned on ``calib``
probabilities; ROC AUC, AP and F1 at that threshold are measured on ``test``. The torch heads are trained with
``--seeds`` seeds (mean ± standard deviation); logistic regression is deterministic.

Rows (effnet-lite0: pooled = 1280-d head output, layers = the 7 stage vectors, 16…320-d):

- logreg / linear probe on pooled features (the default detector's input);
- linear probe on pooled + stages concatenated (``features="concat"`` without fusion);
- layer-wise fusion (``LayerFusionHead``) on the 7 stages, and on pooled + 7 stages;
- with ``--finetune``: fusion head + the last 2 stages fine-tuned from images (``synthdet.training.finetune``, Lean 2026
  recipe, 3 epochs, batch 16), selected on ``calib``. Slow on CPU (minutes per epoch); meant for a GPU.

Features come from the feature cache (``--cache``, the same root ``synthdet extract --cache`` takes; default
``$SYNTHDET_CACHE``/``~/.cache/synthdet``); missing views are extracted once. Skips cleanly when the data is absent.

    python benchmarks/fusion.py --cache /tmp/sdcache
    python benchmarks/fusion.py --manifest src/synthdet/demo_data/manifest.csv --finetune
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch
from _common import ROOT, data_missing, dev_data_parser  # before synthdet: puts this checkout's src/ on the path

from synthdet.backbones.base import create_backbone
from synthdet.data.manifest import index, three_way_split
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.evaluation.metrics import binary_metrics
from synthdet.features.extract import FeatureStore, extract
from synthdet.heads.base import create_head
from synthdet.training.finetune import FineTuneConfig, finetune, score_items
from synthdet.training.train import load_features

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "fusion.json"


def main(argv: list[str] | None = None) -> dict | None:
    ap = dev_data_parser(__doc__.split("\n\n")[0], DEFAULT_JSON)
    ap.add_argument("--seeds", type=int, default=3, help="seeds per torch head")
    ap.add_argument("--finetune", action="store_true", help="add the fine-tuned fusion row (slow on CPU)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if data_missing(args.manifest, console):
        return None

    t_start = time.perf_counter()
    df = index(args.manifest, progress=False)
    df = df[df["ok"] & (df["label"] >= 0)].drop_duplicates("sha256").reset_index(drop=True)
    df["split"] = three_way_split(df)
    bb = create_backbone(args.backbone)
    store = FeatureStore.for_backbone(bb, args.cache)
    parts = {name: df[df["split"] == name] for name in ("fit", "calib", "test")}
    views = {"fit": list(range(args.views)), "calib": [0], "test": [0]}
    for name, rows in parts.items():
        extract(bb, rows["path"].tolist(), rows["sha256"].tolist(), store, views=views[name],
                num_workers=args.workers, progress=True)

    data = {}
    for name, rows in parts.items():
        X, owner = load_features(store, rows["sha256"].tolist(), views[name], "concat")
        data[name] = (X, rows["label"].to_numpy()[owner])
    d0, layer_dims = bb.embed_dim, bb.layer_dims
    columns = {"pooled": slice(0, d0), "stages": slice(d0, None), "pooled+stages": slice(0, None)}
    stage_names = [f"s{i + 1}" for i in range(len(layer_dims))]
    variants = [
        ("logreg", "pooled", "logreg", {}),
        ("linear probe", "pooled", "linear", {}),
        ("linear probe", "pooled+stages", "linear", {}),
        ("layer-wise fusion", "stages", "fusion", {"layer_dims": layer_dims}),
        ("layer-wise fusion", "pooled+stages", "fusion", {"layer_dims": [d0, *layer_dims]}),
    ]

    rows_out = []
    for label, feats, kind, params in variants:
        cols = columns[feats]
        (X_fit, y_fit), (X_cal, y_cal), (X_val, y_val) = ((data[k][0][:, cols], data[k][1]) for k in parts)
        runs = []
        for seed in range(1 if kind == "logreg" else args.seeds):
            t0 = time.perf_counter()
            head = create_head(kind, seed=seed, **params).fit(X_fit, y_fit, X_val=X_cal, y_val=y_cal)
            seconds = time.perf_counter() - t0
            thr = f1_optimal_threshold(y_cal, head.predict_proba(X_cal)[:, 1])
            m = binary_metrics(y_val, head.predict_proba(X_val)[:, 1], threshold=thr)
            run = {"seed": seed, "roc_auc": m["roc_auc"], "ap": m["ap"], "f1": m["at_threshold"]["f1"],
                   "threshold": thr, "fit_seconds": seconds}
            if kind == "fusion":
                run["alphas"] = head.alphas_.tolist()
                if seed == 0:
                    names = stage_names if feats == "stages" else ["pooled", *stage_names]
                    plot = args.json.with_name(f"fusion_alphas_{feats.replace('+', '_')}.png")
                    head.plot_alphas(plot, labels=names, title=f"{args.backbone} fusion on {feats}: α per layer")
            runs.append(run)
        rows_out.append(summarise(label, feats, X_fit.shape[1], runs))

    if args.finetune:
        rows_out.append(run_finetune(args, parts))

    n = {k: {"images": int(len(v)), "fake": int(v["label"].sum())} for k, v in parts.items()}
    table = Table(title=f"{args.backbone} on {args.manifest}: held-out test ({n['test']['images']} images), threshold "
                        f"tuned on calib ({n['calib']['images']}), fit {n['fit']['images']} x {args.views} views")
    for col, just in [("head", "left"), ("features", "left"), ("dim", "right"), ("ROC AUC", "right"),
                      ("F1 @ calib thr", "right"), ("AP", "right"), ("seeds", "right")]:
        table.add_column(col, justify=just)
    for r in rows_out:
        table.add_row(r["head"], r["features"], str(r["dim"]), fmt(r["roc_auc"]), fmt(r["f1"]), fmt(r["ap"]),
                      str(len(r["runs"])))
    console.print(table)
    for r in rows_out:
        if "alphas_mean" in r:
            names = stage_names if r["features"] == "stages" else ["pooled", *stage_names]
            console.print(f"α ({r['head']}, {r['features']}): " +
                          ", ".join(f"{k} {v:.2f}" for k, v in zip(names, r["alphas_mean"])))

    report = {
        "benchmark": "fusion",
        "config": {
            "manifest": str(args.manifest), "backbone": args.backbone, "backbone_id": bb.id,
            "embed_dim": d0, "layer_dims": layer_dims, "views": args.views, "seeds": args.seeds,
            "cache": str(store.dir), "splits": n, "split": "synthdet.data.manifest.three_way_split seed 42 (test 20%, calib 15%)",
        },
        "machine": {"device": str(bb.device), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "results": rows_out,
        "seconds": time.perf_counter() - t_start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json} ({report['seconds']:.0f} s)")
    return report


def summarise(head: str, features: str, dim: int, runs: list[dict]) -> dict:
    out = {"head": head, "features": features, "dim": dim, "runs": runs}
    for key in ("roc_auc", "ap", "f1"):
        vals = np.array([r[key] for r in runs])
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std())}
    if runs and "alphas" in runs[0]:
        out["alphas_mean"] = np.mean([r["alphas"] for r in runs], axis=0).tolist()
    return out


def fmt(stat: dict) -> str:
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat["std"] > 0 else "")


def run_finetune(args: argparse.Namespace, parts: dict) -> dict:
    """Fusion head + last 2 stages from images (a fresh backbone: fine-tuning trains it in place)."""
    bb = create_backbone(args.backbone)
    items = {k: list(zip(v["path"], v["label"].astype(int))) for k, v in parts.items()}
    cfg = FineTuneConfig(num_workers=args.workers)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = finetune(bb, items["fit"], items["calib"], cfg, run_dir)
    det = result.detector
    prob, y = score_items(det, items["test"], num_workers=args.workers)
    m = binary_metrics(y, prob, threshold=det.threshold)
    run = {"seed": cfg.seed, "roc_auc": m["roc_auc"], "ap": m["ap"], "f1": m["at_threshold"]["f1"],
           "threshold": det.threshold, "fit_seconds": time.perf_counter() - t0, "alphas": det.head.alphas_.tolist(),
           "history": result.history, "best": result.best}
    return summarise("fusion + last 2 stages fine-tuned", "pooled+stages", det.card.n_features, [run])


if __name__ == "__main__":
    main()
