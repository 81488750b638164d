#!/usr/bin/env python
"""5-fold cross-validation of frozen probes on the development data, and of an ensemble of saved detectors.

Probes (``synthdet.training.cv.cross_validate``, effnet-lite0 with its real weights, ``--views`` cached views per fit image):
logistic regression on pooled + stage features, the linear probe on pooled features, and layer-wise fusion on
pooled + stages. Folds are ``synthdet.data.manifest.kfold`` (stratified, seed 42); in each, the head early-stops and its F1
threshold is tuned on a 15 % calibration slice of the training folds, and ROC AUC, AP, F1 (at that threshold) and
EER are measured on the test fold. The table gives mean ± std over folds (population std).

Ensemble: two saved detectors trained on the standard split (``train_detector``/``finetune_detector``, val 20 %
seed 42, so both hold out the same ``val`` images): a logreg probe on pooled + stages (trained here from the cache)
and ``--finetuned DIR`` (a ``finetune_detector`` output, e.g. ``runs/ft/detector``) when given, else a fusion probe
(trained here). Their held-out ``val`` images are scored once; then 5-fold CV *over val*: each member alone and each
rule (mean, majority, F1-weighted majority) gets its threshold tuned on 4 folds and is measured on the fifth.

Features come from the feature cache (``--cache``, as ``synthdet extract --cache``); missing views are extracted
once. Skips cleanly when the data is absent.

    python benchmarks/cv.py --cache /tmp/sdcache
    python benchmarks/cv.py --cache /tmp/sdcache --finetuned runs/ft/detector
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from _common import ROOT, data_missing, dev_data_parser  # before synthdet: puts this checkout's src/ on the path

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.data.manifest import index
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.ensemble import RULES, EnsembleDetector, combine, validation_f1
from synthdet.training.cv import FOLD_METRICS, CVResult, FoldFitter, cross_validate, run_folds
from synthdet.training.train import ProbeConfig, train_detector

if TYPE_CHECKING:
    from rich.table import Table

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cv.json"
PROBES = [  # (label, head, features)
    ("logreg", "logreg", "concat"),
    ("linear probe", "linear", "pooled"),
    ("layer-wise fusion", "fusion", "concat"),
]


def main(argv: list[str] | None = None) -> dict | None:
    ap = dev_data_parser(__doc__.split("\n\n")[0], DEFAULT_JSON)
    ap.add_argument("--k", type=int, default=5, help="folds")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--finetuned", type=Path, default=None, help="a fine-tuned detector folder (ensemble member)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if data_missing(args.manifest, console):
        return None

    t_start = time.perf_counter()
    df = index(args.manifest, progress=False)
    bb = create_backbone(args.backbone)
    probes = []
    for label, head, features in PROBES:
        t0 = time.perf_counter()
        config = ProbeConfig(backbone=bb, head=head, features=features, n_views=args.views, seed=args.seed,
                             cache_dir=args.cache, num_workers=args.workers)
        res = cross_validate(df, config, k=args.k)
        probes.append(summarise(label, res.config["features"], res, time.perf_counter() - t0))
    c = res.config
    table = Table(title=f"{args.k}-fold CV on {args.manifest.parent.name} ({c['n_images']} images), {args.backbone}, "
                        f"fit rows x {args.views} views; F1 at each fold's calibrated threshold")
    add_columns(table, "head", "features")
    for r in probes:
        table.add_row(r["name"], r["features"], *cells(r))
    console.print(table)

    ensemble = run_ensemble(args, df, bb)
    table = Table(title=f"ensemble: {args.k}-fold CV over the members' shared held-out val split "
                        f"({ensemble['n_val']} images); threshold tuned on the other folds")
    add_columns(table, "candidate", "weights")
    for r in ensemble["rows"]:
        table.add_row(r["name"], r["weights"], *cells(r))
    console.print(table)

    report = {
        "benchmark": "cv",
        "config": {"manifest": str(args.manifest), "backbone": args.backbone, "backbone_id": bb.id,
                   "views": args.views, "k": args.k, "seed": args.seed, "cache": str(args.cache),
                   "n_images": c["n_images"], "std": "population (ddof 0) over folds"},
        "machine": {"device": str(bb.device), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "python": platform.python_version()},
        "probes": probes,
        "ensemble": ensemble,
        "seconds": time.perf_counter() - t_start,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json} ({report['seconds']:.0f} s)")
    return report


def summarise(name: str, features: str, res: CVResult, seconds: float) -> dict:
    return {"name": name, "features": features, "seconds": seconds, "folds": res.folds,
            **{m: {"mean": res.mean[m], "std": res.std[m]} for m in FOLD_METRICS}}


def add_columns(table: Table, *first: str) -> None:
    for col in first:
        table.add_column(col)
    for col in ("ROC AUC", "AP", "F1", "EER", "s"):
        table.add_column(col, justify="right")


def cells(r: dict) -> list[str]:
    return [*(f"{r[m]['mean']:.4f} ± {r[m]['std']:.4f}" for m in ("roc_auc", "ap", "f1", "eer")), f"{r['seconds']:.0f}"]


def run_ensemble(args: argparse.Namespace, df: pd.DataFrame, bb: Backbone) -> dict:
    """Score the members' shared val images once, then cross-validate each member and each rule over them."""
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / "logreg-concat"]
        config = ProbeConfig(backbone=bb, head="logreg", features="concat", n_views=args.views, seed=args.seed,
                             cache_dir=args.cache, num_workers=args.workers)
        train_detector(df, config, out=dirs[0])
        if args.finetuned is not None:
            dirs.append(args.finetuned)
        else:
            dirs.append(Path(tmp) / "fusion")
            train_detector(df, config.model_copy(update={"head": "fusion"}), out=dirs[1])
        ens = EnsembleDetector.from_members(dirs)
        val = None  # images every member held out
        for d in dirs:
            m = pd.read_csv(d / "manifest.csv")
            held = set(m.loc[m["split"].isin(["test", "val"]), "sha256"])  # train writes test, finetune val
            val = held if val is None else val & held
        rows = df[df["ok"] & df["sha256"].isin(val)].drop_duplicates("sha256").reset_index(drop=True)
        t0 = time.perf_counter()
        table = ens.member_probs(rows["path"].tolist(), num_workers=args.workers, progress=False)
        score_seconds = time.perf_counter() - t0
        names = [f"{m.card.backbone} + {m.card.head} ({m.card.features})"
                 + (" fine-tuned" if "finetune" in (m.card.model_extra or {}) else "") for m in ens.members]
        f1 = [validation_f1(m.card) for m in ens.members]
        candidates = [(f"member {j}: {n}", table[:, [j]], "mean", [1.0], "-") for j, n in enumerate(names)]
        for rule in RULES:
            w = f1 if rule == "weighted-majority" else [1.0] * len(dirs)
            candidates.append((f"ensemble: {rule}", table, rule, w, ", ".join(f"{x:.3f}" for x in w)))
        out = []
        for name, probs, rule, w, shown in candidates:
            t0 = time.perf_counter()
            thr = ens.member_thresholds if probs.shape[1] > 1 else [0.5]
            res = run_folds(rows, rule_fitter(probs, rows["label"].to_numpy(), thr, rule, w), k=args.k,
                            seed=args.seed)
            out.append({**summarise(name, "", res, time.perf_counter() - t0), "weights": shown})
    return {"members": names, "member_val_f1": f1, "n_val": len(rows), "score_seconds": score_seconds, "rows": out}


def rule_fitter(probs: np.ndarray, y: np.ndarray, thresholds: list[float], rule: str, w: list[float]) -> FoldFitter:
    """Nothing is fitted: the rule's scores on the test fold, with the F1 threshold tuned on every training fold."""

    def fit_fold(_: int, train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, float]:
        score = combine(probs, thresholds, rule, w)
        return score[test.index], f1_optimal_threshold(y[train.index], score[train.index])

    return fit_fold


if __name__ == "__main__":
    main()
