"""Why ``inpaint-sp`` is not learnt: how much of the TAEF2 round trip's trace survives the social-media chain.

An ``inpaint-sp`` region is the same content round-tripped through the TAEF2 autoencoder: no seam, no new object,
only the decoder's fine detail. For host photos of ``../shared/data/dev2`` (one region each, the generator's shapes)
this measures, per pixel, how well two local signals separate the region from the rest (ROC AUC over pixels, one
per image, then the median), at each step of the chain that every triple goes through:

- ``highpass``: local energy of the Laplacian (what a texture-sensitive CNN sees first);
- ``refixed``: how little a second round trip changes the pixel (|x - RT(x)|, low inside: a decoded region is close
  to a fixed point of its decoder). An oracle: it needs the very autoencoder that made the edit.

Steps: ``none`` (the composite as made), ``jpeg`` (quality 65-95), ``resize`` (0.6-1x, random filter), ``chain``
(both, as :func:`synthdet.localization.manipulate.social_chain`). Also the mean absolute change of the round trip
inside the region, and the JPEG error on the same pixels, in grey levels.

    python benchmarks/inpaint_signal.py [--n 30]
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from _common import ROOT
from PIL import Image
from scipy.ndimage import laplace, uniform_filter
from sklearn.metrics import roc_auc_score

from synthdet.data.manifest import index
from synthdet.io.pixels import load_image
from synthdet.localization import autoencoder as taef2
from synthdet.localization.manipulate import manipulate, social_chain, square


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def signals(img: Image.Image) -> dict[str, np.ndarray]:
    """Per-pixel scores (higher: more likely inside the round-tripped region)."""
    g = _grey(img)
    w, h = img.size
    pad = img.crop((0, 0, w - w % 8, h - h % 8))
    again = np.zeros_like(g)
    again[: pad.height, : pad.width] = np.abs(_grey(taef2.roundtrip(pad)) - _grey(pad))
    return {"highpass": -uniform_filter(np.abs(laplace(g)), 9), "refixed": -uniform_filter(again, 9)}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev2", type=Path, default=ROOT.parent / "shared" / "data" / "dev2")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "inpaint_signal.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reals = index(args.dev2)
    reals = reals[reals["label"] == 0].sample(args.n, random_state=0)
    rng = np.random.default_rng(0)
    steps = {"none": {"scale": (1.0, 1.0), "quality": None}, "jpeg": {"scale": (1.0, 1.0), "quality": (65, 95)},
             "resize": {"scale": (0.6, 1.0), "quality": None}, "chain": {"scale": (0.6, 1.0), "quality": (65, 95)}}
    aucs: dict[str, dict[str, list[float]]] = {s: {"highpass": [], "refixed": []} for s in steps}
    change, jpeg_err = [], []
    for path in reals["path"]:
        host = square(load_image(path), 256)
        img, mask = manipulate("inpaint-sp", host, None, rng)
        change.append(float(np.abs(_grey(img) - _grey(host))[mask].mean()))
        for name, how in steps.items():
            if how["quality"] is None:
                f = float(rng.uniform(*how["scale"]))
                size = (round(256 * f), round(256 * f))
                out = img.resize(size, Image.Resampling.BICUBIC) if f < 1 else img
                m = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)) if f < 1 else mask
            else:
                data, m = social_chain(img, mask, rng, scale=how["scale"], quality=how["quality"])
                out = Image.open(io.BytesIO(data)).convert("RGB")
                if name == "jpeg":
                    jpeg_err.append(float(np.abs(_grey(out) - _grey(img))[mask].mean()))
            for sig, score in signals(out).items():
                aucs[name][sig].append(float(roc_auc_score(m.ravel(), score.ravel())))
    result = {
        "rows": f"{args.n} real photos of dev2 (random_state 0), one inpaint-sp region each, 256-px canvas",
        "roundtrip_change_in_region_grey_levels": float(np.median(change)),
        "jpeg_error_in_region_grey_levels": float(np.median(jpeg_err)),
        "pixel_auc_median": {s: {k: float(np.median(v)) for k, v in d.items()} for s, d in aucs.items()},
        "pixel_auc_share_above_0.6": {s: {k: float(np.mean(np.asarray(v) > 0.6)) for k, v in d.items()}
                                      for s, d in aucs.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
