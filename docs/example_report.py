"""Rebuild docs/example-report.html and docs/example-report.png from the development set.

Evaluates the shipped default detector on ../shared/data/dev; while no default is shipped, trains a linear-head
detector on the same data (into a temporary folder, never into the package) and evaluates its held-out ``val``
split, so the numbers are honest. Thumbnails show only images whose licence allows redistribution.

    python docs/example_report.py [--data ../shared/data/dev/manifest.csv] [--cache DIR]
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
from synthdet.slices import evaluate_detector
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=None, help="feature cache root for training")
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    licences = pd.read_csv(args.data)
    shareable = {str(args.data.parent / p) for p, lic in zip(licences["path"], licences["licence"])
                 if str(lic).startswith(REDISTRIBUTABLE)}
    with tempfile.TemporaryDirectory() as tmp:
        if (default_detector_path() / "card.json").is_file():
            det, name = Detector.load(), "default detector (in-sample: trained on this data)"
            manifest = index(args.data)
        else:
            res = train_detector(args.data, head="linear", cache_dir=args.cache, out=Path(tmp) / "det")
            det, name = res.detector, "effnet-lite0 + linear, held-out val split"
            manifest = res.manifest[res.manifest["split"] == "val"]
        run = evaluate_detector(det, manifest, slices=SLICES, name=name)
    run.info["data"] = f"{args.data.parent.name} development set ({len(run.scores)} images)"
    html = render_report([run], args.out / "example-report.html", title="synthdet evaluation report — example",
                         thumbnails=lambda p: p in shareable)
    if shutil.which("chromium"):
        screenshot(html, args.out / "example-report.png")
    print(run.deltas().round(4).to_string())


if __name__ == "__main__":
    main()
