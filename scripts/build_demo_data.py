"""Build the compact demo dataset shipped in the package from ../shared/data/dev.

Only rows whose licence allows redistribution are used (DreamBooth CC-BY-4.0, scikit-image, the MIT ComfyUI
template media, InvokeAI Apache-2.0); research-only ImageNet photos are never copied. Images are downscaled to a
long side of 320 px and re-saved in their original format family, so the shipped copy stays a few MB.

    python scripts/build_demo_data.py [--src ../shared/data/dev] [--n-per-class 100]
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import defaultdict
from pathlib import Path

from PIL import Image

REDISTRIBUTABLE = ("CC-BY-4.0", "see skimage", "MIT (package; ComfyUI", "Apache-2.0")
OUT = Path(__file__).resolve().parents[1] / "src" / "synthdet" / "demo_data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "dev")
    ap.add_argument("--n-per-class", type=int, default=100)
    ap.add_argument("--long-side", type=int, default=320)
    args = ap.parse_args()
    rows = [r for r in csv.DictReader(open(args.src / "manifest.csv")) if r["licence"].startswith(REDISTRIBUTABLE)]
    rng = random.Random(42)
    chosen = []
    for label in ("0", "1"):
        by_gen: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            if r["label"] == label:
                by_gen[r["generator"]].append(r)
        for group in by_gen.values():
            rng.shuffle(group)
        picked: list[dict] = []
        while len(picked) < args.n_per_class and any(by_gen.values()):  # round-robin: every generator represented
            for gen in sorted(by_gen):
                if by_gen[gen] and len(picked) < args.n_per_class:
                    picked.append(by_gen[gen].pop())
        chosen += picked
    shutil.rmtree(OUT, ignore_errors=True)
    for sub in ("real", "fake"):
        (OUT / sub).mkdir(parents=True)
    out_rows = []
    for r in chosen:
        src = args.src / r["path"]
        with Image.open(src) as im:
            fmt = im.format
            im = im.convert("RGB")
            im.thumbnail((args.long_side, args.long_side), Image.Resampling.LANCZOS)
            rel = Path("real" if r["label"] == "0" else "fake") / src.name
            kwargs = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}, "PNG": {"optimize": True}}.get(fmt, {})
            im.save(OUT / rel, format=fmt, **kwargs)
        out_rows.append({"path": str(rel), "label": r["label"], "source": r["source"], "generator": r["generator"],
                         "licence": r["licence"]})
    with open(OUT / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out_rows[0]))
        w.writeheader()
        w.writerows(out_rows)
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(out_rows)} images, {size / 1e6:.1f} MB → {OUT}")


if __name__ == "__main__":
    main()
