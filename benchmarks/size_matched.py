"""The shipped default's held-out figures on rows where native resolution cannot tell the classes apart.

The pool's classes differ in native size (generators output ~1024 px, many real collections are ImageNet-sized or
phone-sized), so a view that keeps the image's own scale (the 224-px native crop) can tell the class by zoom level:
the protocol then agrees with itself and not with the world (issue 19). This script reads the shipped default's
leave-one-group-out scores (``loso.csv``: every row scored by a model that never saw its group), finds each row's
original file through the protocol pool's manifest, reads its native size from the file header, and reports per view
the ROC AUC with a group-bootstrap interval on strata of the native short side, beside the AUC of the short side
alone (how much the size itself tells on those rows).

    python scripts/protocol_pool.py  # once: build/protocol-pool/manifest.csv (needs ../shared and the native pool)
    python benchmarks/size_matched.py      # → benchmarks/results/size_matched.json and .md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common  # noqa: F401  (puts src/ on sys.path in a bare checkout)
import pandas as pd
from sklearn.metrics import roc_auc_score

from synthdet.detectors.card import default_detector_path
from synthdet.evaluation.selection import auc_ci
from synthdet.io.pixels import file_sizes

ROOT = Path(__file__).resolve().parents[1]
VIEWS = {"file": "logit", "original": "logit_original", "thumbnail": "logit_thumbnail", "crop": "logit_crop"}
#: Native short side (px) strata: all rows, then bands where both classes have hundreds of rows.
SIZE_MATCHED = (900, 1100)  # where the native short side alone scores about 0.5 on the protocol pool
STRATA = [(0, 10**9), (512, 1100), (768, 1100), SIZE_MATCHED]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, default=ROOT / "build" / "protocol-pool" / "manifest.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "size_matched.json")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--scores", type=Path, default=None,
                    help="held-out scores of another recipe (a protocol lever's oof.csv) instead of the default's")
    args = ap.parse_args()
    loso = pd.read_csv(args.scores or default_detector_path() / "loso.csv", dtype={"sha256": str})
    loso["sha256"] = loso["sha256"].str[:16]
    pool = pd.read_csv(args.manifest, usecols=["sha256", "original"])
    pool["sha256"] = pool["sha256"].str[:16]
    df = loso.merge(pool.drop_duplicates("sha256"), on="sha256", how="left")
    wh = file_sizes(df["original"])
    df["short"], df["long"] = wh.min(axis=1), wh.max(axis=1)
    df = df[df["short"].notna()].reset_index(drop=True)
    rows = []
    for lo, hi in STRATA:
        d = df[(df["short"] >= lo) & (df["short"] <= hi)]
        y, g = d["label"].to_numpy(), d["group"].to_numpy()
        row: dict[str, object] = {"short_side": [lo, hi], "n": len(d), "n_real": int((y == 0).sum()),
                                  "n_fake": int((y == 1).sum()), "groups": int(d["group"].nunique()),
                                  "short_side_alone_auc": float(roc_auc_score(y, d["short"]))}
        for view, col in VIEWS.items():
            row[view] = {"roc_auc": float(roc_auc_score(y, d[col])),
                         "roc_auc_ci": auc_ci(y, d[col].to_numpy(), g, n_boot=args.n_boot)}
        rows.append(row)
        print(f"short side {lo}–{hi}: n {len(d)} ({row['n_real']} real / {row['n_fake']} fake); "
              + ", ".join(f"{v} {row[v]['roc_auc']:.3f}" for v in VIEWS)  # type: ignore[index]
              + f"; short side alone {row['short_side_alone_auc']:.3f}", flush=True)
    whose = f"{args.scores}'s" if args.scores else "the shipped default's leave-one-group-out scores (loso.csv):"
    result = {"rows": f"{whose} each image scored by a model that never saw its generator family or photo collection",
              "n_images": len(df), "strata": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| native short side (px) | images (real / fake, groups) | file | original | thumbnail | crop | short side "
             "alone |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["short_side"]  # type: ignore[misc]
        cells = [f"{r[v]['roc_auc']:.3f} [{r[v]['roc_auc_ci'][0]:.3f}–{r[v]['roc_auc_ci'][1]:.3f}]"  # type: ignore[index]
                 for v in VIEWS]
        span = "all" if hi >= 10**9 else f"{lo}–{hi}"
        lines.append(f"| {span} | {r['n']} ({r['n_real']} / {r['n_fake']}, {r['groups']}) | " + " | ".join(cells)
                     + f" | {r['short_side_alone_auc']:.3f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
