"""Fine-tuned EfficientNet-Lite vs frozen probe vs their ensemble, by 5-fold CV (issue 5's comparison).

Same folds for all three (stratified, seed 42, by content hash). Per fold:
- ``probe``: effnet-lite0 features (pooled + stages, 4 cached views), logistic head, threshold on a calib slice;
- ``finetune``: effnet-lite0 fully fine-tuned from images (AdamW, cosine, 3 epochs, ``strong`` augmentation +
  random crop/down-up/JPEG views), best epoch and threshold on the same calib slice;
- ``ensemble``: mean of the two probabilities, decided at the mean of the two members' calibrated thresholds.
Fine-tuning wants a GPU: on 2 CPU cores one fold takes tens of minutes.

    python benchmarks/cv_finetune.py --data MANIFEST_OR_CSV [--epochs 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from synthdet.data.manifest import usable_rows
from synthdet.training.cv import FOLD_METRICS, cross_validate, fold_metrics, run_folds
from synthdet.training.finetune import FineTuneConfig
from synthdet.training.finetune.pipeline import finetune_fitter
from synthdet.training.train import ProbeConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev" / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--run-dir", type=Path, default=Path("cv-finetune-run"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "cv_finetune.json")
    args = ap.parse_args()
    df, _ = usable_rows(args.data, progress=False)
    t0 = time.perf_counter()
    config = ProbeConfig(backbone="effnet-lite0", head="logreg", features="concat", num_workers=args.workers)
    probe = cross_validate(df, config, k=args.k)
    t_probe = time.perf_counter() - t0
    cfg = FineTuneConfig(unfreeze_blocks="all", head="linear", epochs=args.epochs, batch_size=32, head_lr=3e-4,
                         backbone_lr=1e-4, augment="strong", num_workers=args.workers)
    t0 = time.perf_counter()
    tuned = run_folds(df, finetune_fitter("effnet-lite0", cfg, args.run_dir, progress=False), k=args.k)
    t_ft = time.perf_counter() - t0
    a = probe.oof.set_index("sha256")
    b = tuned.oof.set_index("sha256").loc[a.index]
    assert (a["fold"] == b["fold"]).all(), "probe and fine-tuning folds differ"
    ens_rows = []
    for f in range(args.k):
        m = (a["fold"] == f).to_numpy()
        p = (a["prob"].to_numpy()[m] + b["prob"].to_numpy()[m]) / 2
        thr = float((a["threshold"].to_numpy()[m][0] + b["threshold"].to_numpy()[m][0]) / 2)
        ens_rows.append(fold_metrics(a["label"].to_numpy()[m], p, thr))
    ens = pd.DataFrame(ens_rows)
    results = {
        "probe (logreg, concat)": (probe.mean, probe.std),
        f"fine-tuned effnet-lite0 ({args.epochs} ep)": (tuned.mean, tuned.std),
        "ensemble (mean)": ({k: float(ens[k].mean()) for k in FOLD_METRICS},
                            {k: float(ens[k].std(ddof=0)) for k in FOLD_METRICS}),
    }
    table = Table("model", *FOLD_METRICS, title=f"{args.k}-fold CV on {args.data} ({len(df)} images), "
                  f"{'cuda' if torch.cuda.is_available() else 'cpu'}")
    for name, (mean, std) in results.items():
        table.add_row(name, *(f"{mean[k]:.4f} ± {std[k]:.4f}" for k in FOLD_METRICS))
    Console().print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "data": str(args.data), "n_images": len(df), "k": args.k, "seconds": {"probe": t_probe, "finetune": t_ft},
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "results": {n: {"mean": m, "std": s} for n, (m, s) in results.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
