"""Which levers make a detector hold up on generators and cameras it has never seen? Leave-one-source-out, measured.

The protocol (issue "Generalise"): the pool is ``../shared/data/dev`` ∪ ``dev2`` passed through one social-media
chain (``scripts/build_pool.py``: centre square, 384 px, JPEG q70–95, both classes alike), each image in a ``group``
(a generator family or a real-photo source). Each group is held out in turn; a head is fitted on every other group
and scores the held-out one, so every image gets a score from a model that never saw its source. Reported per lever:

- pooled ROC AUC of those scores, and per group: a fake family's AUC against every real photo, a real source's AUC
  against every fake — mean and worst over groups;
- the same on the ``native224`` pool (a 224 px centre crop at the image's own scale, no resampling), scored by the
  models fitted on the 384 pool: the second shape of hidden set A;
- the false-positive rate of each real source at one threshold, the F1-optimal threshold of the pooled scores.

    python scripts/build_pool.py && python scripts/build_pool.py --size 224 --scale native
    python benchmarks/generalisation.py extract      # backbone captures, cached in build/gen-cache (resumable)
    python benchmarks/generalisation.py levers       # the table → benchmarks/results/generalisation.json

Features are captured once per (backbone, pool, input scale, view) with every statistic a lever may use — pooled
output, per-stage mean and standard deviation, channel covariances of two early stages (texture), a 4×4 grid of
patch features, noise-residual spectra — and each lever is a choice of columns and of how scores are aggregated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.data.splits import SplitPlan
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.evaluation.metrics import source_table
from synthdet.io.pixels import Preprocess, load_image

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "build" / "pool"
CACHE = ROOT / "build" / "gen-cache"
RESULTS = ROOT / "benchmarks" / "results" / "generalisation.json"
POOLS = {"384": "resize384-q70-95", "224": "native224-q70-95"}
TEXTURE_STAGES = (1, 2)  # channel covariances of these stages (24 and 40 channels on lite0)


def residual_features(img: np.ndarray) -> np.ndarray:
    """Hand-made noise-residual and spectral statistics of the model's input (uint8 HxWx3): 45 numbers.

    A second-derivative high-pass leaves the noise and the upsampling traces that decoders add; its radially averaged
    log power spectrum (16 bins), the energy at the periods 2, 4 and 8 relative to their neighbourhood (upsampling
    peaks), per-channel residual spread and kurtosis, and the correlation of residuals across channels (camera
    demosaicing couples them).
    """
    x = img.astype(np.float32)
    r = (4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]) / 4.0
    g = r.mean(axis=2)
    n = min(g.shape)
    g = g[:n, :n] - g[:n, :n].mean()
    win = np.hanning(n)[:, None] * np.hanning(n)[None, :]
    p = np.abs(np.fft.fftshift(np.fft.fft2(g * win))) ** 2 + 1e-8
    yy, xx = np.indices(p.shape)
    c = n // 2
    rad = np.hypot(yy - c, xx - c) / c
    bins = np.minimum((rad * 16).astype(int), 15)
    logp = np.log(p)
    radial = np.bincount(bins.ravel(), logp.ravel(), 16) / np.maximum(np.bincount(bins.ravel(), None, 16), 1)
    radial = radial - radial[0]
    peaks = []
    for period in (2, 4, 8):
        k = n // period
        for dy, dx in ((0, k), (k, 0), (k, k)):
            y0, x0 = (c + dy) % n, (c + dx) % n
            patch = logp[max(0, y0 - 3):y0 + 4, max(0, x0 - 3):x0 + 4]
            peaks.append(logp[y0, x0] - np.median(patch))
    flat = r.reshape(-1, 3)
    std = flat.std(axis=0) + 1e-6
    kurt = ((flat - flat.mean(0)) ** 4).mean(0) / std**4
    corr = np.corrcoef(flat.T)[np.triu_indices(3, 1)]
    tail = [(np.abs(flat) > t).mean() for t in (1, 2, 4, 8, 16)]
    return np.concatenate([radial, peaks, np.log(std), np.log(kurt), corr, tail,
                           [np.log(g.std() + 1e-6)], [logp[c, c] - np.median(logp)]]).astype(np.float32)


class Capture:
    """Forward hooks on a timm EfficientNet: every statistic the levers use, from one forward pass."""

    def __init__(self, bb: Backbone) -> None:
        self.bb = bb
        self.maps: list[torch.Tensor] = []
        self.head: torch.Tensor | None = None
        for m in bb.tap_modules:
            m.register_forward_hook(lambda _m, _i, o: self.maps.append(o))
        bb.model.bn2.register_forward_hook(lambda _m, _i, o: setattr(self, "head", o))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        self.maps = []
        self.bb.model.forward_features(x)
        out: dict[str, np.ndarray] = {}
        assert self.head is not None
        out["pooled"] = self.head.mean(dim=(2, 3))[0].numpy()
        out["patches"] = torch.nn.functional.adaptive_avg_pool2d(self.head, 4)[0].flatten(1).T.numpy()  # 16 x C
        means, stds, gmax = [], [], []
        for m in self.maps:
            f = m[0].flatten(1)
            means.append(f.mean(1))
            stds.append(f.std(1))
            gmax.append(f.amax(1))
        out["mean"] = torch.cat(means).numpy()
        out["std"] = torch.cat(stds).numpy()
        out["max"] = torch.cat(gmax).numpy()
        tex = []
        for s in TEXTURE_STAGES:
            f = self.maps[s][0].flatten(1)
            f = f - f.mean(1, keepdim=True)
            cov = f @ f.T / f.shape[1]
            d = cov.diagonal().clamp_min(1e-8).sqrt()
            corr = cov / d[:, None] / d[None, :]
            tex.append(corr[torch.triu_indices(*corr.shape, 1).unbind()])
        out["texture"] = torch.cat(tex).numpy()
        return out


def extract_variant(backbone: str, pool: str, scale: str, views: list[int], *, flip_view: bool = False,
                    gray: bool = False) -> Path:
    """Captures for every image of ``pool`` under ``backbone`` fed at ``scale`` (``native``: the 384/224 pool image
    at its own size; ``resize``: resized to the backbone's size) → ``CACHE/<name>.npz``. Resumable per chunk."""
    name = f"{backbone}-{pool}-{scale}-v{''.join(map(str, views))}{'-flip' if flip_view else ''}{'-gray' if gray else ''}"
    dest = CACHE / f"{name}.npz"
    if dest.exists():
        return dest
    df = pd.read_csv(POOL / POOLS[pool] / "manifest.csv")
    bb = create_backbone(backbone)
    size = 384 if scale == "native" else bb.preprocess.size
    views_policy = bb.preprocess.views.model_copy(update={"crop_scale": (0.58, 1.0)}) if scale == "native" else None
    bb.preprocess = Preprocess(**{**bb.preprocess.model_dump(), "size": size, "scale": scale,
                                  **({"views": views_policy} if views_policy else {})})
    cap = Capture(bb)
    torch.set_num_threads(1)  # one process per core: intra-op threads suffer most when the machine is shared
    rows: dict[str, list[np.ndarray]] = {}
    for path, sha in tqdm(zip(POOL / POOLS[pool] / df["path"], df["sha256"]), total=len(df), desc=name, file=sys.stdout,
                          mininterval=30):
        img = load_image(path)
        if gray:
            img = img.convert("L").convert("RGB")
        for v in views:
            pil = bb.preprocess.render(img, view=v, key=sha)
            if flip_view:
                pil = pil.transpose(0)
            feats = cap(bb.preprocess.to_tensor(pil)[None])
            feats["residual"] = residual_features(np.asarray(pil))
            for k, val in feats.items():
                rows.setdefault(k, []).append(val.astype(np.float16 if k == "patches" else np.float32))
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.npz")
    np.savez(tmp, sha256=df["sha256"].to_numpy(), n_views=len(views),
             **{k: np.stack(v).reshape(len(df), len(views), *np.shape(v[0])) for k, v in rows.items()})
    tmp.rename(dest)
    return dest


EXTRACTIONS = [
    ("effnet-lite0", "384", "resize", [0, 1, 2]),
    ("effnet-lite0", "224", "resize", [0]),
    ("effnet-lite0", "384", "native", [0, 1, 2]),
    ("effnet-lite0", "224", "native", [0]),
    ("effnet-lite2", "384", "native", [0, 1, 2]),
    ("effnet-lite2", "224", "native", [0]),
]


def cmd_extract(args: argparse.Namespace) -> None:
    for backbone, pool, scale, views in EXTRACTIONS:
        if args.backbone and backbone != args.backbone:
            continue
        t = time.time()
        print(extract_variant(backbone, pool, scale, views), f"{time.time() - t:.0f} s", flush=True)
    if args.backbone in (None, "effnet-lite0"):
        for extra in ({"flip_view": True}, {"gray": True}):
            t = time.time()
            print(extract_variant("effnet-lite0", "384", "native", [0], **extra), f"{time.time() - t:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------------ the protocol
def load_variant(backbone: str, pool: str, scale: str, views: list[int], flip: bool = False,
                 gray: bool = False) -> dict[str, np.ndarray]:
    with np.load(extract_variant(backbone, pool, scale, views, flip_view=flip, gray=gray), allow_pickle=True) as z:
        return {k: z[k] for k in z.files}


def columns(cap: dict[str, np.ndarray], parts: tuple[str, ...]) -> np.ndarray:
    """[images, views, d]: the named captures side by side."""
    return np.concatenate([cap[p].astype(np.float32) for p in parts], axis=2)


def logreg(C: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000))


def loso(X: np.ndarray, y: np.ndarray, folds: np.ndarray, tests: dict[str, np.ndarray], *, C: float,
         train_views: int, patches: bool = False, balance: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Leave each fold (a group, near-duplicates kept with their first image) out in turn; ``X`` [images, views, d] (or [images, views, patches, d]); ``tests`` maps a
    test-set name to its view-0 features [images, d] (or [images, patches, d]). Returns out-of-group probabilities
    per test set. Patch levers fit on 4 patches per view (labelled with the image) and score the mean and max of
    every patch's probability."""
    out = {name: np.full(len(y), np.nan) for name in tests} | (
        {f"{name}:max": np.full(len(y), np.nan) for name in tests} if patches else {})
    rng = np.random.default_rng(0)
    for g in np.unique(folds):
        train = np.flatnonzero(folds != g)
        Xt = X[train, :train_views]
        if patches:
            pick = rng.integers(0, X.shape[2], size=(len(train), train_views, 4))
            Xt = np.take_along_axis(Xt, pick[..., None], axis=2)
            yt = np.repeat(y[train], train_views * 4)
        else:
            yt = np.repeat(y[train], train_views)
        w = None
        if balance is not None:  # every training group weighs the same within its class
            names, inv, counts = np.unique(balance[train], return_inverse=True, return_counts=True)
            w = np.repeat(1.0 / counts[inv], len(yt) // len(train))
            for c in (0, 1):
                w[yt == c] *= (yt == c).sum() / w[yt == c].sum()
        model = logreg(C).fit(Xt.reshape(len(yt), -1), yt, logisticregression__sample_weight=w)
        held = folds == g
        for name, T in tests.items():
            if patches:
                p = model.predict_proba(T[held].reshape(-1, T.shape[-1]))[:, 1].reshape(held.sum(), -1)
                out[name][held], out[f"{name}:max"][held] = p.mean(1), p.max(1)
            else:
                out[name][held] = model.predict_proba(T[held])[:, 1]
    return out


def summarise(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, threshold: float | None = None) -> dict:
    """Pooled AUC, group table (mean / worst AUC, worst real-source FPR) at the pooled F1-optimal threshold."""
    thr = f1_optimal_threshold(y, prob) if threshold is None else threshold
    table = source_table(y, prob, groups, threshold=thr)
    reals = table[table["label"] == 0]
    return {"roc_auc": float(roc_auc_score(y, prob)), "mean_group_auc": float(table["roc_auc"].mean()),
            "worst_group_auc": float(table["roc_auc"].min()),
            "worst_group": str(table.loc[table["roc_auc"].idxmin(), "group"]), "threshold": thr,
            "worst_real_fpr": float(reals["flagged"].max()),
            "worst_fpr_source": str(reals.loc[reals["flagged"].idxmax(), "group"]),
            "groups": table.round(4).to_dict("records")}


def lever_rows() -> list[dict]:
    """Every lever, each one change from its neighbour, so the table reads as a path."""
    L = [  # name, backbone variants, feature parts, train views, C, aggregation
        ("pooled, 224 resize, 1 view", ("effnet-lite0", "resize"), ("pooled",), 1, 0.5, None),
        ("pooled, 224 resize, 3 views", ("effnet-lite0", "resize"), ("pooled",), 3, 0.5, None),
        ("pooled+stage means (shipped), 224", ("effnet-lite0", "resize"), ("pooled", "mean"), 3, 0.5, None),
        ("pooled+stage mean/std, 224", ("effnet-lite0", "resize"), ("pooled", "mean", "std"), 3, 0.5, None),
        ("pooled+stage mean/std, native 384", ("effnet-lite0", "native"), ("pooled", "mean", "std"), 3, 0.5, None),
        ("… C=0.05", ("effnet-lite0", "native"), ("pooled", "mean", "std"), 3, 0.05, None),
        ("… + stage max", ("effnet-lite0", "native"), ("pooled", "mean", "std", "max"), 3, 0.5, None),
        ("… + texture (channel correlations)", ("effnet-lite0", "native"), ("pooled", "mean", "std", "texture"), 3, 0.5,
         None),
        ("… + noise residual/spectrum", ("effnet-lite0", "native"), ("pooled", "mean", "std", "residual"), 3, 0.5, None),
        ("noise residual/spectrum alone", ("effnet-lite0", "native"), ("residual",), 3, 0.5, None),
        ("patch scores (4x4 grid), native 384", ("effnet-lite0", "native"), ("patches",), 3, 0.5, "patches"),
        ("lite2: pooled+stage mean/std, native 384", ("effnet-lite2", "native"), ("pooled", "mean", "std"), 3, 0.5,
         None),
    ]
    rows = [dict(zip(("name", "variant", "parts", "views", "C", "agg"), r), balance=False) for r in L]
    rows.insert(5, {**rows[4], "name": "… group-balanced weights", "balance": True})
    rows.insert(5, {**rows[4], "name": "… 1 training view", "views": 1})
    tex = ("pooled", "mean", "std", "texture")
    rows += [
        {**rows[4], "name": "lite0 stats+texture+residual, native 384", "parts": (*tex, "residual")},
        {**rows[4], "name": "lite2 stats+texture, native 384", "variant": ("effnet-lite2", "native"), "parts": tex},
        {**rows[4], "name": "lite0 stats+texture, native 384, flip TTA", "parts": tex, "agg": "flip"},
        {**rows[4], "name": "ensemble: lite0 + lite2 stats+texture (mean prob)", "parts": tex,
         "agg": ("… + texture (channel correlations)", "lite2 stats+texture, native 384")},
    ]
    return rows


def cmd_levers(args: argparse.Namespace) -> None:
    df = pd.read_csv(POOL / POOLS["384"] / "manifest.csv")
    y, groups = df["label"].to_numpy(), df["group"].to_numpy()
    folds = SplitPlan.build(df, test=0.0, calib=0.0, fold_by="group").fold_of(df["sha256"])
    results: list[dict] = []
    probs: dict[str, np.ndarray] = {}
    probs224: dict[str, np.ndarray] = {}

    def report(lever: dict, out: dict[str, np.ndarray], t: float) -> None:
        backbone, scale = lever["variant"]
        for key in [k for k in out if k.startswith("384")]:
            suffix = key[3:]
            name = lever["name"] + (f" [{suffix[1:]}]" if suffix else (" [mean]" if lever["agg"] else ""))
            s384 = summarise(y, out[key], groups)
            s224 = summarise(y, out["224" + suffix], groups, threshold=s384["threshold"])
            row = {"lever": name, "features": list(lever["parts"]), "backbone": backbone, "input": scale,
                   "train_views": lever["views"], "C": lever["C"], "pool_384": s384, "native_224": s224,
                   "seconds": round(time.time() - t, 1)}
            results.append(row)
            probs[name], probs224[name] = out[key], out["224" + suffix]
            print(f"{name:55s} 384: AUC {s384['roc_auc']:.3f} mean {s384['mean_group_auc']:.3f} worst "
                  f"{s384['worst_group_auc']:.3f} ({s384['worst_group']}) FPRmax {s384['worst_real_fpr']:.2f} | "
                  f"224: AUC {s224['roc_auc']:.3f} worst {s224['worst_group_auc']:.3f} | {row['seconds']} s", flush=True)

    for lever in lever_rows():
        if args.only and not any(o in lever["name"] for o in args.only):
            continue
        t = time.time()
        backbone, scale = lever["variant"]
        if isinstance(lever["agg"], tuple):  # an ensemble of two levers already run: the mean of their probabilities
            old = pd.read_csv(CACHE / "oof.csv") if (CACHE / "oof.csv").exists() else pd.DataFrame()
            have = {**{c: old[c].to_numpy() for c in old.columns}, **probs}
            have224 = {**{c[:-5]: old[c].to_numpy() for c in old.columns if c.endswith(" @224")}, **probs224}
            out = {"384": np.mean([have[n] for n in lever["agg"]], axis=0),
                   "224": np.mean([have224[n] for n in lever["agg"]], axis=0)}
            lever = {**lever, "agg": None}
            report(lever, out, t)
            continue
        train = load_variant(backbone, "384", scale, [0, 1, 2])
        test224 = load_variant(backbone, "224", scale, [0])
        if lever["agg"] == "patches":
            X = train["patches"].astype(np.float32)
            tests = {"384": X[:, 0], "224": test224["patches"][:, 0].astype(np.float32)}
        else:
            X = columns(train, lever["parts"])
            tests = {"384": X[:, 0], "224": columns(test224, lever["parts"])[:, 0]}
        if lever["agg"] == "flip":
            tests["flip"] = columns(load_variant(backbone, "384", scale, [0], flip=True), lever["parts"])[:, 0]
        out = loso(X, y, folds, tests, C=lever["C"], train_views=lever["views"], patches=lever["agg"] == "patches",
                   balance=groups if lever["balance"] else None)
        if lever["agg"] == "flip":
            out["384"] = (out["384"] + out.pop("flip")) / 2
            lever = {**lever, "agg": None}
        report(lever, out, t)
    CACHE.mkdir(parents=True, exist_ok=True)
    old = pd.read_csv(CACHE / "oof.csv") if (CACHE / "oof.csv").exists() else pd.DataFrame(index=range(len(df)))
    new = pd.DataFrame({**probs, **{k + " @224": v for k, v in probs224.items()}})
    old.drop(columns=[c for c in new.columns if c in old], errors="ignore").join(new).to_csv(CACHE / "oof.csv",
                                                                                            index=False)
    write_results(df, results, args.only)


def write_results(df: pd.DataFrame, results: list[dict], only: list[str]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if only:  # a partial run updates its rows and keeps the others, in table order
        done = {r["lever"] for r in results}
        results = [r for r in data.get("levers", []) if r["lever"] not in done] + results
    RESULTS.write_text(json.dumps({**data, "protocol": __doc__.split("\n\n")[1], "n_images": len(df),
                                   "groups": df.groupby("group").size().to_dict(), "levers": results}, indent=1))


def demo_rows(df: pd.DataFrame) -> np.ndarray:
    """Pool rows whose original is one of the demo images shipped in the package, or a near-duplicate of one (the
    demo data are re-encoded copies of dev images)."""
    from synthdet.data.demo import demo_data_dir
    from synthdet.data.manifest import index
    from synthdet.data.splits import near_duplicate_of

    demo = index(demo_data_dir() / "manifest.csv")
    originals = pd.concat([index(ROOT.parent / "shared" / "data" / d / "manifest.csv") for d in ("dev", "dev2")])
    phash = originals.drop_duplicates("sha256").set_index("sha256")["phash"]
    return near_duplicate_of(phash.reindex(df["orig_sha256"]).fillna("").tolist(), demo["phash"].tolist())


def cmd_demo(args: argparse.Namespace) -> None:
    """The demo detector's recipe: fitted on the pool copies of the packaged demo images only, scored on every
    other pool image (none of them a near-duplicate of a demo image)."""
    from synthdet.data.manifest import read_manifest, write_manifest

    df = read_manifest(POOL / POOLS["384"] / "manifest.csv")
    y, groups = df["label"].to_numpy(), df["group"].to_numpy()
    train = demo_rows(df)
    print(f"demo rows in the pool: {train.sum()} ({y[train].sum()} fake); scored: {(~train).sum()}")
    write_manifest(df[~train], POOL / POOLS["384"] / "manifest-not-demo.csv")  # `synthdet evaluate DEMO` on the rest
    results = []
    for lever in lever_rows():
        if args.only and not any(o in lever["name"] for o in args.only) or lever["agg"]:
            continue
        backbone, scale = lever["variant"]
        X = columns(load_variant(backbone, "384", scale, [0, 1, 2]), lever["parts"])
        T224 = columns(load_variant(backbone, "224", scale, [0]), lever["parts"])[:, 0]
        Xt = X[train, :lever["views"]].reshape(-1, X.shape[-1])
        model = logreg(lever["C"]).fit(Xt, np.repeat(y[train], lever["views"]))
        s384 = summarise(y[~train], model.predict_proba(X[~train, 0])[:, 1], groups[~train])
        s224 = summarise(y[~train], model.predict_proba(T224[~train])[:, 1], groups[~train], s384["threshold"])
        results.append({"lever": lever["name"], "pool_384": s384, "native_224": s224})
        print(f"{lever['name']:55s} 384: AUC {s384['roc_auc']:.3f} worst {s384['worst_group_auc']:.3f} "
              f"({s384['worst_group']}) | 224: AUC {s224['roc_auc']:.3f}", flush=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(json.dumps({**data, "demo_recipe": {
        "rows": f"fitted on the {int(train.sum())} pool copies of the packaged demo images; scored on the other "
                f"{int((~train).sum())} (no near-duplicate of a demo image)", "levers": results}}, indent=1))


def cmd_table(_: argparse.Namespace) -> None:
    """The levers as a markdown table (README)."""
    data = json.loads(RESULTS.read_text())
    order = [r["name"] + s for r in lever_rows() for s in ("", " [mean]", " [max]")]
    rows = sorted(data["levers"], key=lambda r: order.index(r["lever"]) if r["lever"] in order else len(order))
    print("| lever | 384: pooled AUC | mean group AUC | worst group AUC | worst real-source FPR* | 224 native: "
          "pooled AUC | worst group AUC |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["pool_384"], r["native_224"]
        print(f"| {r['lever']} | {a['roc_auc']:.3f} | {a['mean_group_auc']:.3f} | {a['worst_group_auc']:.3f} "
              f"({a['worst_group']}) | {a['worst_real_fpr']:.0%} ({a['worst_fpr_source']}) | {b['roc_auc']:.3f} | "
              f"{b['worst_group_auc']:.3f} |")
    if "demo_recipe" in data:
        print(f"\nDemo recipe ({data['demo_recipe']['rows']}):\n")
        print("| lever | 384: AUC | worst group AUC | 224 native: AUC |\n|---|---|---|---|")
        for r in data["demo_recipe"]["levers"]:
            a, b = r["pool_384"], r["native_224"]
            print(f"| {r['lever']} | {a['roc_auc']:.3f} | {a['worst_group_auc']:.3f} ({a['worst_group']}) | "
                  f"{b['roc_auc']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ext = sub.add_parser("extract")
    ext.add_argument("--backbone", default=None, help="Only this backbone's captures (run one process per core).")
    ext.set_defaults(fn=cmd_extract)
    lev = sub.add_parser("levers")
    lev.add_argument("--only", nargs="*", default=[])
    lev.set_defaults(fn=cmd_levers)
    dem = sub.add_parser("demo")
    dem.add_argument("--only", nargs="*", default=[])
    dem.set_defaults(fn=cmd_demo)
    sub.add_parser("table").set_defaults(fn=cmd_table)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
