"""Do the quick checks (one re-shared copy) give the verdicts the full checks (three steps apart) give?

    python benchmarks/check_sets.py [--n 600]

Scores ``--n`` images drawn (seeded) from ``../shared/data/dev2`` and ``dev`` with the shipped default on its
default runtime, each as it is and under every check of :data:`synthdet.detectors.assess.CHECKS`, in one process.
Among the images whose score alone is confident (outside the card's uncertainty band: only there can a check change
the verdict) it reports how often each check flips the label, how often the full set flips it, and how often the
quick setting reaches the full setting's verdict. Writes ``benchmarks/results/check_sets.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import _common
import numpy as np

from synthdet import load
from synthdet.detectors.assess import CHECK_SETS, CHECKS, band_of, prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--json", default=str(_common.ROOT / "benchmarks" / "results" / "check_sets.json"))
    args = ap.parse_args()
    shared = _common.ROOT.parent / "shared" / "data"
    paths = sorted(p for d in ("dev2", "dev") for p in (shared / d).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not paths:
        print(f"skipped: no images under {shared}")
        return
    paths = [paths[i] for i in np.random.default_rng(0).choice(len(paths), min(args.n, len(paths)), replace=False)]
    det = load()
    (low, high), _ = band_of(det)
    names = list(CHECKS)
    start = time.perf_counter()
    probs = []
    for p in paths:
        pending = prepare(det, p, checks="off", evidence=False)
        base = pending.images[0]
        probs.append(det.score([base] + [CHECKS[c][1](base, pending.sha256) for c in names]))
    p0, q = np.array(probs)[:, 0], {c: np.array(probs)[:, 1 + i] for i, c in enumerate(names)}
    confident = (p0 < low) | (p0 > high)
    flips = {c: (q[c] >= det.threshold) != (p0 >= det.threshold) for c in names}
    by_set = {s: np.any([flips[c] for c in cs], axis=0) for s, cs in CHECK_SETS.items() if cs}
    result = {
        "rows": f"{len(paths)} images drawn from ../shared/data/dev2 and dev (seed 0); {int(confident.sum())} "
                "with a confident score (outside the card's band)",
        "detector": det.card.data.get("name", "shipped default"), "threshold": det.threshold, "band": [low, high],
        "flip_rate_among_confident": {**{c: float(flips[c][confident].mean()) for c in names},
                                      **{f"set:{s}": float(v[confident].mean()) for s, v in by_set.items()}},
        "quick_matches_full_among_confident": float((by_set["quick"] == by_set["full"])[confident].mean()),
        "median_abs_shift": {c: float(np.median(np.abs(q[c] - p0))) for c in names},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    _common.ROOT.joinpath(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
