"""Reproduce the default detector shipped in the package (src/synthdet/pretrained/default/).

Trains on the full development set (../shared/data/dev, 927 images) with the embedded backbone, evaluates on the
held-out split, then refits on fit + val with the threshold re-tuned on the untouched calibration split.

    python scripts/train_default.py [--data ../shared/data/dev/manifest.csv]

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

from synthdet.train import train_detector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dev" / "manifest.csv"
OUT = ROOT / "src" / "synthdet" / "pretrained" / "default"
CONFIG = {"backbone": "effnet-lite0", "head": "logreg", "features": "concat", "n_views": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args()
    res = train_detector(args.data, **CONFIG, cache_dir=args.cache, refit=True)
    shutil.rmtree(args.out, ignore_errors=True)
    res.detector.save(args.out)
    m = res.metrics
    print(f"held-out (before refit): ROC AUC {m['roc_auc']:.4f}  AP {m['ap']:.4f}  EER {m['eer']:.4f}  "
          f"F1@tuned {m['at_threshold']['f1']:.4f}  → {args.out}")


if __name__ == "__main__":
    main()
