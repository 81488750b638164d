"""Rebuild docs/example-report.html and docs/example-report.png from the development set.

Trains the demo detector exactly as ``synthdet demo`` does (effnet-lite0, concat features, logistic head, on the
200 images shipped in the package) and evaluates it on every image of ../shared/data/dev that is *not* one of those
200 (out of sample: other real sources such as the ImageNet photos, other generators), clean and under the
robustness slices of Lean 2026. Thumbnails show only images whose licence allows redistribution. With ``--run DIR``
the evaluation is kept there and reused on the next call, so the report re-renders without re-scoring.

    python docs/example_report.py [--data ../shared/data/dev/manifest.csv] [--cache DIR] [--run DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from synthdet.data.demo import demo_data_dir
from synthdet.data.manifest import index
from synthdet.evaluation.runs import EvalRun, evaluate_detector
from synthdet.reporting.html import render_report
from synthdet.training.train import ProbeConfig, train_detector

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "dev" / "manifest.csv"
SLICES = ["jpeg85", "resize0.5", "launder", "social", "small"]
#: Licences (prefixes of the dev manifest's ``licence``) that allow showing the image; as scripts/build_demo_data.py.
REDISTRIBUTABLE = ("CC-BY-4.0", "see skimage", "MIT (package; ComfyUI", "Apache-2.0")


def screenshot(html: Path, png: Path, size: str = "1280,2000") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size}", f"file://{html}"],
            check=True, capture_output=True, timeout=120,
        )


def evaluate(data: Path, cache: Path | None) -> EvalRun:
    """The demo detector on the development images it was not trained on."""
    demo = pd.read_csv(demo_data_dir() / "manifest.csv")
    seen = {Path(p).name for p in demo["path"]}
    manifest = index(data)
    unseen = manifest[~manifest["path"].map(lambda p: Path(p).name in seen)]
    with tempfile.TemporaryDirectory() as tmp:
        config = ProbeConfig(head="logreg", features="concat", n_views=4, cache_dir=cache)
        res = train_detector(demo_data_dir() / "manifest.csv", config, out=Path(tmp) / "det")
        return evaluate_detector(res.detector, unseen, slices=SLICES,
                                 name="demo detector on unseen development images", on_overlap="drop")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=None, help="feature cache root for training")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--run", type=Path, default=None, help="keep the evaluation run here and reuse it if present")
    args = ap.parse_args()
    if args.run is not None and (args.run / "metrics.json").is_file():
        run = EvalRun.load(args.run)
    else:
        run = evaluate(args.data, args.cache)
        run.info["data"] = f"{os.path.relpath(args.data, ROOT)} ({len(run.scores)} images)"
        if args.run is not None:
            run.save(args.run)
    licences = pd.read_csv(args.data)
    shareable = {str(args.data.parent / p) for p, lic in zip(licences["path"], licences["licence"])
                 if str(lic).startswith(REDISTRIBUTABLE)}
    html = render_report([run], args.out / "example-report.html", title="synthdet evaluation report — example",
                         thumbnails=lambda p: p in shareable)
    if shutil.which("chromium"):
        screenshot(html, args.out / "example-report.png")
    print(run.deltas().round(4).to_string())


if __name__ == "__main__":
    main()
