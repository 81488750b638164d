"""Task B on the development data: U-Net vs frozen-backbone patch head, pixel F1/IoU per manipulation category.

Triples are built by :func:`synthdet.manipulate.make_manipulations` from ``../shared/data/dev`` (training; a
source-disjoint share of it for early stopping) and from ``../shared/data/dev2`` (held out; no source in common with
dev). The autoencoder categories carry one tiny decoder's trace (TAEF2): figures are per category, and none stands
for a particular generator. CPU time to train each model is recorded.

    python benchmarks/localize.py [--steps 300] [--n-train 240] [--n-test 120]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _common import ROOT, data_missing

from synthdet.data import index
from synthdet.localize import TrainConfig, evaluate_localizer, read_triples, split_by_source, train_localizer
from synthdet.manipulate import make_manipulations


def main() -> None:
    import argparse

    import torch
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    ap.add_argument("--dev2", type=Path, default=ROOT.parent / "shared" / "data" / "dev2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthdet-localize-bench"))
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--size", type=int, default=192, help="working canvas before the social chain (0.6-1x)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", default="patch,unet")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "localize.json")
    args = ap.parse_args()
    console = Console()
    if data_missing(args.dev, console) or data_missing(args.dev2, console):
        return
    sets = {}
    for name, src, n, seed in (("train", args.dev, args.n_train, 1), ("test", args.dev2, args.n_test, 2)):
        folder = args.work / name
        if not (folder / "manifest.csv").is_file():
            t = time.perf_counter()
            make_manipulations(index(src), folder, n=n, size=args.size, seed=seed)
            console.print(f"{name}: {n} triples from {src} in {time.perf_counter() - t:.0f} s")
        sets[name] = read_triples(folder)
    fit, val = split_by_source(sets["train"], 0.2, seed=0)
    result: dict = {
        "data": {"train": f"{len(fit)} triples from dev", "val": f"{len(val)} triples from dev (source-disjoint)",
                 "test": f"{len(sets['test'])} triples from dev2 (no source shared with dev)",
                 "size": args.size, "categories": sorted(set(sets["test"]["category"]))},
        "device": "cpu", "torch_threads": torch.get_num_threads(), "models": {},
    }
    from synthdet.localize import load_pairs
    from synthdet.locmetrics import localization_metrics

    truths = [m for _, m in load_pairs(sets["test"])]  # the trivial baseline: every pixel called manipulated
    ones = localization_metrics([np.ones(t.shape) for t in truths], truths, list(sets["test"]["category"]))
    result["baseline_all_ones"] = {c: b["at_0.5"]["f1"] for c, b in [("all", ones["pixel"]), *ones["per_category"].items()]}
    console.print(f"all-ones map: pixel F1 {result['baseline_all_ones']}")
    for model in args.models.split(","):
        cfg = TrainConfig(model=model, steps=args.steps, batch=args.batch, crop=args.crop, eval_every=50,
                          lr=1e-3 if model == "patch" else 5e-4)
        t = time.process_time()
        loc = train_localizer(fit, val, args.work / f"det-{model}", cfg, device="cpu")
        cpu = time.process_time() - t
        res = evaluate_localizer(loc, sets["test"])
        result["models"][model] = {"train_cpu_seconds": round(cpu, 1), "train_wall_seconds": loc.card.params["train_seconds"],
                                   "steps_run": loc.card.params["history"][-1]["step"], "config": cfg.model_dump(),
                                   "loc_threshold": loc.card.loc_threshold, "test": res}
        px = res["pixel"]["at_threshold"]
        console.print(f"{model}: test pixel F1 {px['f1']:.3f} IoU {px['iou']:.3f} on {px['n_manipulated']} manipulated "
                      f"(CPU {cpu:.0f} s)")
        for name, block in [*res["per_category"].items(), *res["per_source"].items()]:
            b = block["at_threshold"]
            console.print(f"  {name:<12} n={block['n']:<4} F1 {b['f1']:.3f}  IoU {b['iou']:.3f}  "
                          f"authentic FP {b['authentic_fp_rate']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    console.print(f"→ {args.json}")


if __name__ == "__main__":
    main()
