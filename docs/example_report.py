"""Rebuild docs/example-report.html and docs/example-report.png from the development set.

Evaluates the shipped default detector on ../shared/data/dev with the robustness slices of Lean 2026. The default was
trained on every image there, so its absolute numbers are in-sample: the changes under the slices are the point.
Without a shipped default, trains a linear-head detector on the same data (into a temporary folder, never into the
package) and evaluates its held-out ``val`` split. Thumbnails show only images whose licence allows redistribution. With ``--run DIR``
the evaluation is kept there and reused on the next call, so the report can be re-rendered without re-scoring.

    python docs/example_report.py [--data ../shared/data/dev/manifest.csv] [--cache DIR] [--run DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from synthdet.data import index
from synthdet.detector import Detector, default_detector_path
from synthdet.report import render_report
from synthdet.slices import EvalRun, evaluate_detector
from synthdet.train import train_detector

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
    """The default detector on every image (in-sample), or a freshly trained one on its held-out split."""
    if (default_detector_path() / "card.json").is_file():
        run = evaluate_detector(Detector.load(), index(data), slices=SLICES,
                                name="default detector (in-sample: trained on this data)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            res = train_detector(data, head="linear", cache_dir=cache, out=Path(tmp) / "det")
            run = evaluate_detector(res.detector, res.manifest[res.manifest["split"] == "val"], slices=SLICES,
                                    name="effnet-lite0 + linear, held-out val split")
    run.info["data"] = f"{data.parent.name} development set ({len(run.scores)} images)"
    return run


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
