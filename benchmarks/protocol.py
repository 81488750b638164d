"""The generalisation protocol in three views: every lever scored on images from groups it never saw, as the file,
as a thumbnail and as a native-scale crop (issue 19).

    python scripts/rebuild_pool.py && python scripts/protocol_pool.py     # the pool (needs the sources' snapshots)
    python benchmarks/protocol.py [--only base native50 lite2 base+lite2] [--pool build/protocol-pool/manifest.csv]

Each lever is a :class:`~synthdet.training.train.ProbeConfig` cross-validated with :func:`~synthdet.training.cv.
cross_validate`: folds hold out whole groups (``fold``: about ten, each a set of whole generator lineages and photo
collections), every held-out image is scored by the same fold model as its framed pool copy (``file``, what the
model is trained on) and, cut from its original file as the world shows it, as the ``original`` file, a
``thumbnail`` and a native-scale ``crop``; the decisions (sigmoid calibration, threshold with every real group ≤ 5 % flagged, 90 % band) are chosen with each group
left out (nested). Reported per lever and view: pooled ROC AUC with its group-bootstrap interval, the worst group's
AUC, nested recall and worst real group's flag rate, and the CPU cost of scoring one image (ms, one process, the
machine's cores). A lever is kept only if it raises the worst view without lowering another.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (import fallback for a checkout)
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.evaluation.metrics import source_table
from synthdet.evaluation.selection import auc_ci, nested_decisions, nested_summary
from synthdet.features.extract import forward_files
from synthdet.training.cv import cross_validate
from synthdet.training.train import GENERALISING_HEAD, ProbeConfig, generalising_backbone

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
# the shipped default's protocol: its views (cut from each image's original file), decisions and final groups
from train_default import BAND_LEVEL, CAP_VIEWS, FINAL_FILE, HEAD, MAX_GROUP_FPR, VIEWS, final_groups  # noqa: E402

POOL = ROOT / "build" / "protocol-pool" / "manifest.csv"
RESULTS = ROOT / "benchmarks" / "results" / "protocol.json"
SELECTION = {"calibrate": "sigmoid", "max_group_fpr": MAX_GROUP_FPR, "band_level": BAND_LEVEL, "cap_views": CAP_VIEWS}


def native_views(share: float, name: str = "effnet-lite0") -> Callable[[], Backbone]:
    def build() -> Backbone:
        bb = generalising_backbone(name)
        bb.preprocess = bb.preprocess.model_copy(
            update={"views": bb.preprocess.views.model_copy(update={"p_native": share})})
        return bb
    return build


#: lever → (backbone factory, head settings, what it changes)
LEVERS: dict[str, tuple[Callable[[], Backbone], dict[str, Any], str]] = {
    "base": (lambda: generalising_backbone("effnet-lite0"), GENERALISING_HEAD,
             "the shipped recipe: EfficientNet-Lite0 up to 384 px, texture taps, logreg, 3 views (downscaled whole)"),
    "native50": (native_views(0.5), GENERALISING_HEAD,
                 "half the training views cut at the image's own scale (58-100 % of 384 px), the others as base"),
    "native50x5": (native_views(0.5), {**GENERALISING_HEAD, "n_views": 5}, "native50 with 5 views per image"),
    "C0.05": (lambda: generalising_backbone("effnet-lite0"), {**GENERALISING_HEAD, "head_params": {"C": 0.05}},
              "base with a 10x stronger L2 penalty on the logistic head"),
    "lite2": (lambda: generalising_backbone("effnet-lite2"), GENERALISING_HEAD, "base on EfficientNet-Lite2"),
    "C0.01": (lambda: generalising_backbone("effnet-lite0"), {**GENERALISING_HEAD, "head_params": {"C": 0.01}},
              "base with a 50x stronger L2 penalty on the logistic head"),
    "lite2-C0.01": (lambda: generalising_backbone("effnet-lite2"), {**GENERALISING_HEAD, "head_params": {"C": 0.01}},
                    "C0.01 on EfficientNet-Lite2"),
    "views-C0.01": (lambda: generalising_backbone("effnet-lite0"), HEAD,
                    "C0.01, and the thumbnail and native crop of the size-matched originals in the fit rows"),
    "lite2-views-C0.01": (lambda: generalising_backbone("effnet-lite2"), HEAD, "views-C0.01 on EfficientNet-Lite2"),
    "lite1-views-C0.01": (lambda: generalising_backbone("effnet-lite1"), HEAD, "views-C0.01 on EfficientNet-Lite1"),
    "lite2-native50": (native_views(0.5, "effnet-lite2"), GENERALISING_HEAD, "native50 on EfficientNet-Lite2"),
    "residual": (lambda: create_backbone("residual"), GENERALISING_HEAD,
                 "noise-residual statistics (6 fixed high-pass filters: spread, kurtosis, flatness, autocorrelation "
                 "at lags 1-8, colour coupling) of a 256-px window at the image's own scale, logreg, 3 views"),
}
#: lever → training-only images derived from the pool's: ``scripts/aligned_pool.py`` (25 per real group) and
#: ``scripts/aligned_pool.py --per-group 5 --manifest manifest-few.csv``
DERIVED = {"views-C0.01-aligned": ROOT / "build" / "aligned-pool" / "manifest.csv",
           "views-C0.01-aligned-few": ROOT / "build" / "aligned-pool" / "manifest-few.csv"}
LEVERS["views-C0.01-aligned"] = (*LEVERS["views-C0.01"][:2], "views-C0.01, and in its fit rows content-aligned pairs "
                                 "(up to 25 per real group) of real photographs' native 256-px crops and their TAEF2 "
                                 "autoencoder round trips (scripts/aligned_pool.py)")
LEVERS["views-C0.01-aligned-few"] = (*LEVERS["views-C0.01"][:2], "views-C0.01-aligned with the first 5 pairs per real "
                                     "group (the first five rounds of scripts/aligned_pool.py)")


def cpu_ms(bb: Backbone, paths: list[str]) -> float:
    """Wall ms per image to decode and run the backbone on view 0 (what scoring a file costs), one process."""
    list(forward_files(bb, paths[:4], taps=True, num_workers=0))  # warm-up
    start = time.perf_counter()
    for _ in forward_files(bb, paths, taps=True, num_workers=0, batch_size=8):
        pass
    return 1000 * (time.perf_counter() - start) / len(paths)


def view_row(ranking: dict[str, Any], nested: dict[str, Any]) -> dict[str, Any]:
    """One view's row of the table: pooled AUC, its interval and the worst group (``ranking``, as
    :meth:`~synthdet.training.cv.CVResult.view_summary` gives them), and the nested decisions' figures."""
    return {"roc_auc": ranking["roc_auc"], "roc_auc_ci": ranking["roc_auc_ci"],
            "worst_group_auc": ranking["worst_group_auc"], "worst_group": ranking["worst_group"],
            "recall_nested": nested["recall"], "recall_nested_ci": nested["recall_ci"],
            "worst_real_flagged_nested": nested["worst_real_flag_rate"],
            "worst_real_flagged_nested_ci": nested["worst_real_flag_rate_ci"],
            "real_flagged_nested": nested["real_flag_rate"]}


def run_lever(name: str, manifest: Path, pool: pd.DataFrame, out: Path, cache: Path | None) -> dict[str, Any]:
    build, head, what = LEVERS[name]
    bb = build()
    config = ProbeConfig(backbone=bb, **head, cache_dir=cache)
    derived = pd.read_csv(DERIVED[name], dtype={"sha256": str, "derived_from": str}) if name in DERIVED else None
    start = time.perf_counter()
    res = cross_validate(manifest, config, group_by="group", folds_by="fold", views=VIEWS, views_from="original",
                         derived=derived, out=out / name, progress=True, **SELECTION)
    summary = res.summary()
    rows = {view: view_row(b, summary["nested"][view]) for view, b in summary["views"].items()}
    sample = pool.sample(min(48, len(pool)), random_state=0)["path"].tolist()
    return {"lever": name, "what": what, "views": rows, "n_images": res.config["n_images"], "k": res.config["k"],
            **({"derived_images": len(derived)} if derived is not None else {}),
            "groups": int(pool["group"].nunique()), "cpu_ms_per_image": cpu_ms(bb, sample),
            "wall_s": time.perf_counter() - start, "selection": SELECTION,
            "rows": "held-out: each image scored by a model whose training excluded its whole fold of groups; "
                    "decisions chosen with its group left out"}


def mean_logits(names: list[str], out: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Several levers' held-out scores (``out/<lever>/oof.csv``) as one detector's: the first lever's rows and, per
    view, the mean raw logit of all of them. Refused unless every lever scored the same rows on the same folds."""
    frames = [pd.read_csv(out / name / "oof.csv", dtype={"sha256": str}) for name in names]
    m = frames[0]
    for j, other in enumerate(frames[1:], 1):
        m = m.merge(other[["sha256", "fold", "logit", *(f"logit_{v}" for v in VIEWS)]], on="sha256",
                    suffixes=("", f"_{j}"))
        if not (m["fold"] == m[f"fold_{j}"]).all() or len(m) != len(frames[0]):
            raise ValueError(f"{names[0]} and {names[j]} were not run on the same folds")
    cols = {"file": "logit", **{v: f"logit_{v}" for v in VIEWS}}
    logits = {v: np.mean([m[c if j == 0 else f"{c}_{j}"] for j in range(len(frames))], axis=0)
              for v, c in cols.items()}
    return m, logits


def mean_lever(levers: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Several levers' fold models as one detector (mean raw logit), from their saved held-out scores: the same folds,
    views and nested decisions; the CPU cost is the sum. For two logistic probes on the same pixels this is exactly
    what ``cross_validate([a, b])`` and the saved pair compute (tests/test_cv.py)."""
    m, logits = mean_logits([lv["lever"] for lv in levers], out)
    y, g = m["label"].to_numpy(), m["group"].to_numpy()
    decisions = nested_decisions(y, logits, g, **SELECTION)
    rows: dict[str, Any] = {}
    for view, z in logits.items():
        ok = np.isfinite(z)
        groups = source_table(y[ok], z[ok], g[ok], threshold=np.inf)
        worst = groups.loc[groups["roc_auc"].idxmin()]
        ranking = {"roc_auc": float(roc_auc_score(y[ok], z[ok])), "roc_auc_ci": auc_ci(y[ok], z[ok], g[ok]),
                   "worst_group_auc": float(worst["roc_auc"]), "worst_group": str(worst["group"])}
        rows[view] = view_row(ranking, nested_summary(decisions, view))
    names = [lv["lever"] for lv in levers]
    first = levers[0]
    return {"lever": "+".join(names), "what": f"mean logit of {', '.join(names)}",
            "views": rows, "n_images": first["n_images"], "k": first["k"], "groups": first["groups"],
            "cpu_ms_per_image": sum(lv["cpu_ms_per_image"] for lv in levers), "wall_s": 0.0, "selection": SELECTION,
            "rows": first["rows"]}


def retime(done: dict[str, dict[str, Any]], pool: pd.DataFrame, path: Path) -> None:
    """Every lever's CPU ms per image measured again in one process on the same 48 images, so that the column's
    ratios come from one run (a lever joined by ``+`` costs the sum of its parts)."""
    sample = pool.sample(min(48, len(pool)), random_state=0)["path"].tolist()
    single = {name: cpu_ms(LEVERS[name][0](), sample) for name in done if "+" not in name}
    for name, r in done.items():
        r["cpu_ms_per_image"] = sum(single[part] for part in name.split("+"))
        r["cpu_ms_measured"] = "one run, all levers, idle machine (--timing)"
    saved = json.loads(path.read_text())
    saved["levers"] = list(done.values())
    path.write_text(json.dumps(saved, indent=2, default=float))
    path.with_suffix(".md").write_text(table(list(done.values())) + "\n")
    print(table(list(done.values())))


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| lever | view | ROC AUC [95% CI] | worst group AUC | nested recall | nested worst real flagged | CPU ms/img |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        for view, v in r["views"].items():
            lo, hi = v["roc_auc_ci"]
            lines.append(f"| {r['lever']} | {view} | {v['roc_auc']:.3f} [{lo:.3f}–{hi:.3f}] | "
                         f"{v['worst_group_auc']:.3f} ({v['worst_group']}) | {v['recall_nested']:.1%} | "
                         f"{v['worst_real_flagged_nested']:.1%} | {r['cpu_ms_per_image']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=POOL)
    ap.add_argument("--only", nargs="*", default=["base", "native50"])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "protocol")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--timing", action="store_true",
                    help="re-measure every lever's CPU ms in this one run (an idle machine), from the results so far")
    args = ap.parse_args()
    if not args.pool.is_file():
        print(f"skipped: {args.pool} not found (build it: scripts/rebuild_pool.py, scripts/protocol_pool.py)")
        return
    pool = pd.read_csv(args.pool, dtype={"sha256": str})
    pool = pool[~pool["group"].isin(final_groups())]  # declared up front, scored only by shipped defaults
    manifest = args.out / "manifest.csv"  # the pool less the final groups
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pool.to_csv(manifest, index=False)
    done = {r["lever"]: r for r in json.loads(args.json.read_text())["levers"]} if args.json.is_file() else {}
    if args.timing:
        return retime(done, pool, args.json)
    for name in args.only:
        if "+" in name:  # levers already run: their held-out scores averaged
            done[name] = mean_lever([done[part] for part in name.split("+")], args.out)
        else:
            done[name] = run_lever(name, manifest, pool, args.out, args.cache)
        results = list(done.values())
        args.json.write_text(json.dumps({"pool": {"n": len(pool), "groups": int(pool["group"].nunique()),
                                                  "left_out": f"the final groups of {FINAL_FILE.relative_to(ROOT)}",
                                                  "by_label": pool["label"].value_counts().to_dict()},
                                         "levers": results}, indent=2, default=float))
        print(table(results), flush=True)
    args.json.with_suffix(".md").write_text(table(list(done.values())) + "\n")


if __name__ == "__main__":
    main()
