"""Time one fine-tuning epoch (issue 4, item 4) on whatever device is present, on the shipped demo data.

Rows: EfficientNet-Lite0 (real weights) with the last 2 stages + fusion head, and full fine-tuning; CLIP ViT-L/14
and EVA02-L-14 *architectures* with random weights (no weights can be installed here: the timing of a step does
not depend on the values) with the last 2 blocks + fusion head, batch 16, bf16 autocast on CUDA.
Prints a table and writes JSON (images/s per epoch, validation included).

    python benchmarks/finetune_gpu.py [--json benchmarks/results/finetune_gpu.json] [--models lite0-last2,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from synthdet.backbones.base import create_backbone
from synthdet.data.demo import demo_data_dir
from synthdet.training.finetune import FineTuneConfig, finetune

MODELS = {
    "lite0-last2": ("effnet-lite0", True, 2),
    "lite0-all": ("effnet-lite0", True, "all"),
    "vit-l14-last2": ("open_clip:ViT-L-14", False, 2),
    "eva02-l14-last2": ("open_clip:EVA02-L-14", False, 2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "finetune_gpu.json")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    root = demo_data_dir()
    df = pd.read_csv(root / "manifest.csv")
    items = [(str(root / p), int(y)) for p, y in zip(df.path, df.label)]
    train, val = items[::5] + items[1::5] + items[2::5] + items[3::5], items[4::5]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in args.models.split(","):
        backbone, pretrained, unfreeze = MODELS[name]
        bb = create_backbone(backbone, pretrained=pretrained, device=device)
        cfg = FineTuneConfig(unfreeze_blocks=unfreeze, epochs=1, num_workers=args.workers)
        with tempfile.TemporaryDirectory() as tmp:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = finetune(bb, train, val, cfg, tmp, resume=False, progress=False)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        rows.append({
            "model": name, "backbone": backbone, "pretrained": pretrained, "unfreeze": str(unfreeze),
            "trainable_tensors": len(res.trainable), "epoch_s": round(dt, 2),
            "images_per_s": round((len(train) + len(val)) / dt, 1),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
            "val_auc": round(res.best["val_auc"], 4),
        })
        del bb, res
    table = Table(*rows[0].keys(), title=f"one fine-tuning epoch, {len(train)} train + {len(val)} val images, {device}")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console().print(table)
    machine = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
               "torch": torch.__version__, "cpu_count": torch.get_num_threads()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
