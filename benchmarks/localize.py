"""Task B on the development data: U-Net vs frozen-backbone patch head, pixel F1/IoU per manipulation category.

Triples are built by :func:`synthdet.localization.manipulate.make_manipulations` from ``../shared/data/dev`` (training; a
source-disjoint tenth of it for early stopping and the thresholds) and from ``../shared/data/dev2`` (held out; no
source in common with dev; the same triples for every model). The autoencoder categories carry one tiny decoder's
trace (TAEF2): figures are per category, and none stands for a particular generator. Two trivial maps (all ones,
blank) are scored on the same triples; CPU time to build the triples and to train each model is recorded. The whole
run takes about 15 minutes on one CPU thread.

    python benchmarks/localize.py [--n-train 1200] [--n-test 240] [--unet-steps 500] [--patch-steps 400]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from _common import ROOT, data_missing

from synthdet.data.manifest import index
from synthdet.localization.evaluate import evaluate_localizer
from synthdet.localization.manipulate import make_manipulations
from synthdet.localization.metrics import localization_metrics
from synthdet.localization.triples import host_keys, load_pairs, read_triples, split_by_source
from synthdet.training.localize import TrainConfig, train_localizer


def main() -> None:
    import argparse

    import torch
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev", type=Path, default=ROOT.parent / "shared" / "data" / "dev")
    ap.add_argument("--dev2", type=Path, default=ROOT.parent / "shared" / "data" / "dev2")
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthdet-localize-bench"))
    ap.add_argument("--n-train", type=int, default=1200, help="distinct triples matter more than steps")
    ap.add_argument("--n-test", type=int, default=240)
    ap.add_argument("--val", type=float, default=0.1, help="share of the training photos kept for validation")
    ap.add_argument("--size", type=int, default=192, help="working canvas before the social chain (0.6-1x)")
    ap.add_argument("--unet-steps", type=int, default=500)
    ap.add_argument("--patch-steps", type=int, default=400)
    ap.add_argument("--crop", type=int, default=160)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--models", default="patch,unet")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "localize.json")
    args = ap.parse_args()
    console = Console()
    if data_missing(args.dev, console) or data_missing(args.dev2, console):
        return
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    sets, build_cpu = {}, {}
    for name, src, n, seed in (("train", args.dev, args.n_train, 1), ("test", args.dev2, args.n_test, 2)):
        folder = args.work / f"{name}-{n}-{args.size}-{seed}"
        if not (folder / "manifest.csv").is_file():
            t = time.process_time()
            make_manipulations(index(src), folder, n=n, size=args.size, seed=seed)
            build_cpu[name] = round(time.process_time() - t, 1)
            console.print(f"{name}: {n} triples from {src} in {build_cpu[name]:.0f} CPU s")
        sets[name] = read_triples(folder)
    fit, val = split_by_source(sets["train"], args.val, seed=0)
    test = sets["test"]
    assert not set(host_keys(test)) & set(host_keys(sets["train"]))  # no photo on both sides
    result: dict = {
        "data": {"train": f"{len(fit)} triples from dev", "val": f"{len(val)} triples from dev (source-disjoint)",
                 "test": f"{len(test)} triples from dev2 (no source shared with dev)", "size": args.size,
                 "categories": {str(k): int(v) for k, v in test["category"].value_counts().sort_index().items()},
                 "build_cpu_seconds": build_cpu or "triples reused from an earlier run"},
        "device": "cpu", "torch_threads": torch.get_num_threads(), "models": {},
    }
    truths = [m for _, m in load_pairs(test)]
    cats = list(test["category"])
    for name, fill in (("all_ones", np.ones), ("blank", np.zeros)):  # the trivial maps, on the same triples
        res = localization_metrics([fill(t.shape) for t in truths], truths, cats)
        result[f"baseline_{name}"] = {c: {"n": b["n"], "f1": b["at_0.5"]["f1"], "iou": b["at_0.5"]["iou"]}
                                      for c, b in [("all", res["pixel"]), *res["per_category"].items()]}
        console.print(f"{name} map: pixel F1 {result[f'baseline_{name}']['all']['f1']:.3f}")
    by_source: dict = {}
    for model in args.models.split(","):
        steps = args.unet_steps if model == "unet" else args.patch_steps
        cfg = TrainConfig(model=model, steps=steps, batch=args.batch, crop=args.crop, eval_every=50,
                          lr=1e-3 if model == "unet" else 2e-3)
        t = time.process_time()
        loc = train_localizer(fit, val, args.work / f"det-{model}", cfg, device="cpu")
        cpu = time.process_time() - t
        res = evaluate_localizer(loc, test)
        result["models"][model] = {"train_cpu_seconds": round(cpu, 1), "train_wall_seconds": loc.card.params["train_seconds"],
                                   "steps_run": loc.card.params["history"][-1]["step"], "config": cfg.model_dump(),
                                   "history": loc.card.params["history"], "loc_threshold": loc.card.loc_threshold,
                                   "test": res}
        by_source[model] = {"rows": res["rows"], "per_source": res["per_source"], "pixel": res["pixel"]}
        px = res["pixel"]["at_threshold"]
        console.print(f"{model}: test pixel F1 {px['f1']:.3f} IoU {px['iou']:.3f} on {px['n_manipulated']} manipulated "
                      f"(CPU {cpu:.0f} s)")
        for name, block in [*res["per_category"].items(), *res["per_source"].items()]:
            b, h = block["at_threshold"], block["at_0.5"]
            console.print(f"  {name:<12} n={block['n']:<4} F1 {b['f1']:.3f}  IoU {b['iou']:.3f}  (at 0.5: {h['f1']:.3f} "
                          f"{h['iou']:.3f})  authentic FP {b['authentic_fp_rate']:.3f}")
    result["run"] = {"wall_seconds": round(time.perf_counter() - start_wall, 1),
                     "cpu_seconds": round(time.process_time() - start_cpu, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, allow_nan=True) + "\n")
    by_source_json = args.json.with_name(args.json.stem + "_by_source.json")
    by_source_json.write_text(json.dumps({
        "how": f"benchmarks/localize.py, the same run as {args.json.name}: per source of the held-out dev2 triples",
        "source": "source_group: the collection of the photo each triple was built on", "models": by_source,
    }, indent=2, allow_nan=True) + "\n")
    console.print(f"→ {args.json}, {by_source_json}")


if __name__ == "__main__":
    main()
