"""What more training images buy: one lever's held-out scores from the protocol run on the grown pool against those
from the run on the pool before, on the images both pools hold (issue 19, item 4).

    python scripts/rebuild_pool.py && python scripts/protocol_pool.py          # the grown pool; old folds kept
    python benchmarks/protocol.py --pool build/protocol-pool/manifest.csv --out build/protocol-grown \\
        --json benchmarks/results/protocol_grown.json --only views-C0.01 lite2-views-C0.01 views-C0.01+lite2-views-C0.01
    python benchmarks/pool_growth.py --before build/protocol --after build/protocol-grown

The grown pool keeps every earlier group's fold (``data/pool/folds.csv``), so an image of the earlier pool is held out
by the same fold in both runs (but for the few that a new image near-duplicates in another group: they follow it and
are left out), and the fold models differ only by the images the pool gained in the other folds' groups. Per view: ROC AUC before and after on those images, the paired group-bootstrap interval of the change, the
worst group; the same on the rows whose native short side is 900–1100 px (where zoom level cannot tell the class);
and the grown run's figures on the images new in the pool, held out like the others.

The same paired comparison judges a change of recipe on one pool (``--after-levers``: the same folds, the same rows):

    python benchmarks/pool_growth.py --before build/protocol-grown --after build/protocol-grown \
        --levers views-C0.01 --after-levers views-C0.01-aligned --out benchmarks/results/aligned_gain.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (puts src/ on sys.path in a bare checkout)
import numpy as np
import pandas as pd
from protocol import mean_logits
from size_matched import SIZE_MATCHED
from sklearn.metrics import roc_auc_score

from synthdet.evaluation.metrics import source_table
from synthdet.evaluation.selection import auc_ci, auc_gain_ci
from synthdet.io.pixels import file_sizes

ROOT = Path(__file__).resolve().parents[1]
PAIR = ["views-C0.01", "lite2-views-C0.01"]


def ranking(y: np.ndarray, z: np.ndarray, g: np.ndarray, n_boot: int) -> dict[str, Any]:
    table = source_table(y, z, g, threshold=np.inf)
    worst = table.loc[table["roc_auc"].idxmin()]
    return {"roc_auc": float(roc_auc_score(y, z)), "roc_auc_ci": auc_ci(y, z, g, n_boot=n_boot),
            "worst_group_auc": float(worst["roc_auc"]), "worst_group": str(worst["group"])}


def compare(both: pd.DataFrame, before: dict[str, np.ndarray], after: dict[str, np.ndarray],
            n_boot: int) -> dict[str, Any]:
    y, g = both["label"].to_numpy(), both["group"].to_numpy()
    out: dict[str, Any] = {"n": len(both), "n_real": int((y == 0).sum()), "groups": int(both["group"].nunique())}
    for view in before:
        a, b = before[view], after[view]
        out[view] = {"before": ranking(y, a, g, n_boot), "after": ranking(y, b, g, n_boot),
                     "gain_ci": auc_gain_ci(y, a, b, g, n_boot=n_boot)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=ROOT / "build" / "protocol")
    ap.add_argument("--after", type=Path, default=ROOT / "build" / "protocol-grown")
    ap.add_argument("--levers", nargs="+", default=PAIR, help="their mean logit is the detector compared")
    ap.add_argument("--after-levers", nargs="+", default=None, help="the detector after (default: --levers)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pool_growth.json")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    old, old_z = mean_logits(args.levers, args.before)
    new, new_z = mean_logits(args.after_levers or args.levers, args.after)
    new = new.assign(row=np.arange(len(new)))
    both = new.merge(old[["sha256"]].assign(old_row=np.arange(len(old))), on="sha256")
    # a near-duplicate follows its first image's fold (synthdet.training.cv): an earlier image that a new one
    # near-duplicates in another group moves fold, and is left out of the comparison
    same_fold = old["fold"].to_numpy()[both["old_row"]] == both["fold"].to_numpy()
    moved, both = int((~same_fold).sum()), both[same_fold].reset_index(drop=True)
    before = {v: z[both["old_row"]] for v, z in old_z.items()}
    after = {v: z[both["row"]] for v, z in new_z.items()}
    short = file_sizes(pd.read_csv(args.after / "manifest.csv").set_index("path").loc[both["path"], "original"]).min(axis=1)
    matched = (short >= SIZE_MATCHED[0]) & (short <= SIZE_MATCHED[1])
    fresh = new[~new["sha256"].isin(old["sha256"])]
    common = "" if args.after_levers else "earlier_"  # two recipes on one pool: every image is in both runs
    result: dict[str, Any] = {
        "levers": args.levers, **({"after_levers": args.after_levers} if args.after_levers else {}),
        "rows": "held-out: each image scored by the fold model whose training excluded its whole fold of groups, in "
                "both runs; the earlier pool's images are held out by the same fold in both",
        "pool": {"before": len(old), "after": len(new), "new_images": len(fresh), "moved_fold_left_out": moved,
                 "new_by_label": fresh["label"].value_counts().to_dict()},
        f"{common}images": compare(both, before, after, args.n_boot),
        f"{common}images_size_matched": compare(both[matched], {v: z[matched] for v, z in before.items()},
                                                {v: z[matched] for v, z in after.items()}, args.n_boot),
    }
    if fresh["label"].nunique() == 2:
        idx = fresh["row"].to_numpy()
        result["new_images"] = {v: ranking(fresh["label"].to_numpy(), z[idx], fresh["group"].to_numpy(), args.n_boot)
                                for v, z in new_z.items()}
    args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    lines = ["| rows | view | ROC AUC before [95% CI] | after [95% CI] | change [paired 95% CI] | worst group before → after |",
             "|---|---|---|---|---|---|"]
    labels = ("pool", "short side 900–1100") if args.after_levers else ("earlier pool", "earlier, short side 900–1100")
    for key, label in zip((f"{common}images", f"{common}images_size_matched"), labels):
        part = result[key]
        for view in new_z:
            b, a, (lo, hi) = part[view]["before"], part[view]["after"], part[view]["gain_ci"]
            lines.append(f"| {label} ({part['n']}) | {view} | {b['roc_auc']:.3f} [{b['roc_auc_ci'][0]:.3f}–"
                         f"{b['roc_auc_ci'][1]:.3f}] | {a['roc_auc']:.3f} [{a['roc_auc_ci'][0]:.3f}–{a['roc_auc_ci'][1]:.3f}]"
                         f" | {a['roc_auc'] - b['roc_auc']:+.3f} [{lo:+.3f}–{hi:+.3f}] | {b['worst_group_auc']:.3f} "
                         f"({b['worst_group']}) → {a['worst_group_auc']:.3f} ({a['worst_group']}) |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if "new_images" in result:
        print(f"new images ({len(fresh)}): " + ", ".join(f"{v} {r['roc_auc']:.3f}" for v, r in result["new_images"].items()))


if __name__ == "__main__":
    main()
