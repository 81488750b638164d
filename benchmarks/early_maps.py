"""Learned early-stage features, screened on the crop view (issue 19, "what is left"): a small network trained on
EfficientNet-Lite0's stage-1 and stage-2 feature maps (stride 4 and 8, before the network turns semantic) of
native-scale crops, per protocol fold, against the linear probe of the pooled features.

    python benchmarks/protocol.py --pool build/protocol-pool/manifest.csv --out build/protocol-grown \
        --json benchmarks/results/protocol_grown.json --only views-C0.01        # the probe's held-out scores
    python benchmarks/early_maps.py extract                                   # maps of every crop (~7 min, 2 cores)
    python benchmarks/early_maps.py screen --width 32 --epochs 4 --json benchmarks/results/early_maps.json

Rows: the grown protocol pool less its final groups, every image held out by the fold of whole groups it belongs to
(``fold`` of the manifest, as the protocol). Each image gives the protocol's own ``crop`` view (a 224-px centre crop
of its original file at native scale, JPEG 70-95: :func:`~synthdet.data.perturbations.native_crop`) and, for the fit
rows only, one more 224-px native crop at a random position. The early network of a fold fits on the other folds'
images only and scores the held-out fold's centre crops. Reported: pooled and worst-group ROC AUC of the early
network alone, of the probe alone, and of their sum (each logit divided by its spread over all held-out rows, which
uses no label), with the paired group-bootstrap interval of the change, also on the rows whose original's short side
is 900-1100 px (size-matched: zoom level cannot tell the class there). Rows whose near-duplicate lies in another fold
(the protocol's split plan beside the probe's scores) are left out. A screen: the other views are not scored.
``--folds`` splits the ten fold models between processes (each saved as it ends); the table is written by the call
that finds all ten done.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (import fallback for a checkout)
import numpy as np
import pandas as pd
import torch
from pool_growth import SIZE_MATCHED, ranking
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from synthdet.data.perturbations import native_crop, random_crop
from synthdet.evaluation.selection import auc_gain_ci
from synthdet.features.extract import ViewsDecoder
from synthdet.io.pixels import DEFAULT_MAX_PIXELS, file_sizes
from synthdet.training.train import generalising_backbone

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "build" / "protocol-grown" / "manifest.csv"
OUT = ROOT / "build" / "early-maps"
PROBE = ROOT / "build" / "protocol-grown" / "views-C0.01" / "oof.csv"
SIDE = 224  # the crop view's side: stage 1 is 56 x 56, stage 2 28 x 28 (smaller images are zero-padded, masked)
S1, S2 = 56, 28
Norm = tuple[torch.Tensor, ...]
"""Per-channel mean and spread of stage 1, then of stage 2, from a fold's fit rows."""


def random_224(img: Any, key: str = "") -> Any:
    """A 224-px square at the image's own scale at a random position, JPEG 70-95 (a training view)."""
    return random_crop(img, key, sides=(SIDE, SIDE))


Taps = dict[str, tuple[int, int, int]]
"""Maps to store: name -> (index of the block they leave, channels, side of a full 224-px crop's map)."""
EARLY: Taps = {"s1": (1, 24, S1), "s2": (2, 40, S2)}


def extract(manifest: Path, out: Path, workers: int, taps: Taps = EARLY) -> None:
    """The ``taps`` maps of view ``centre`` and ``random`` of every image, float16, zero-padded; ``{view}-size``
    holds the valid rows and columns of the last tap's map (0: the file failed)."""
    df = pd.read_csv(manifest, dtype={"sha256": str})
    out.mkdir(parents=True, exist_ok=True)
    bb = generalising_backbone("effnet-lite0")
    m = bb.model.eval()
    n = len(df)
    last = max(k for k, _, _ in taps.values())
    for view, transform in (("centre", native_crop), ("random", random_224)):
        if (out / f"{view}.done").exists():
            continue
        maps = {name: np.lib.format.open_memmap(out / f"{view}-{name}.npy", "w+", np.float16, (n, c, side, side))
                for name, (_, c, side) in taps.items()}
        size = np.zeros((n, 2), np.int16)
        dec = ViewsDecoder(bb.preprocess, DEFAULT_MAX_PIXELS, transform)
        items = [(i, (p, s, [0])) for i, (p, s) in enumerate(zip(df["original"], df["sha256"], strict=True))]
        loader = DataLoader(dec, sampler=items, batch_size=16, num_workers=workers,  # type: ignore[arg-type]
                            collate_fn=list)
        start = time.perf_counter()
        for k, batch in enumerate(loader):
            for err_i, err in ((i, e) for i, t, e, _ in batch if t is None):
                print(f"skip {df['original'][err_i]}: {err}")
            by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
            for i, tensors, _, _ in batch:
                if tensors is not None:
                    by_shape.setdefault(tuple(tensors[0].shape), []).append((i, tensors[0]))
            for group in by_shape.values():
                rows = [i for i, _ in group]
                with torch.no_grad():
                    h = m.bn1(m.conv_stem(torch.stack([t for _, t in group])))
                    for b in range(last + 1):
                        h = m.blocks[b](h)
                        for name, (at, _, _) in taps.items():
                            if at == b:
                                maps[name][rows, :, :h.shape[2], :h.shape[3]] = h.numpy()
                size[rows] = h.shape[2:]
            if k % 40 == 0:
                print(f"{view}: {16 * (k + 1)}/{n} in {time.perf_counter() - start:.0f} s", flush=True)
        for a in maps.values():
            a.flush()
        np.save(out / f"{view}-size.npy", size)
        (out / f"{view}.done").write_text("ok")


class EarlyNet(nn.Module):
    """Stage 1 (stride 4) brought to stride 8 by a learned 3x3 convolution, joined to stage 2, three light layers of
    local detectors, then the masked mean and maximum over the valid positions, and a linear read-out."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.down = nn.Conv2d(24, 32, 3, stride=2, padding=1)
        self.local = nn.Sequential(
            nn.Conv2d(72, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(),
            nn.Conv2d(width, width, 1), nn.ReLU())
        self.out = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * width, 1))

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.local(torch.cat([torch.relu(self.down(s1)), s2], dim=1))
        w = mask[:, None]
        mean = (h * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1)
        top = (h - 1e4 * (1 - w)).amax((2, 3))
        return self.out(torch.cat([mean, top], dim=1))[:, 0]


def masks(size: np.ndarray) -> torch.Tensor:
    r = torch.arange(S2)
    rows, cols = torch.as_tensor(size[:, 0]), torch.as_tensor(size[:, 1])
    return ((r[None, :, None] < rows[:, None, None]) & (r[None, None, :] < cols[:, None, None])).float()


def fit_fold(s1: np.ndarray, s2: np.ndarray, mask: torch.Tensor, y: np.ndarray, rows: np.ndarray, *,
             epochs: int, width: int, seed: int) -> tuple[EarlyNet, Norm]:
    """Train on ``rows`` (both views), classes weighted to balance; the input standardised by the fit rows'
    per-channel mean and spread (no held-out row enters)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(rows, size=min(512, len(rows)), replace=False))
    a, b = s1[sub].astype(np.float32), s2[sub].astype(np.float32)
    norm = tuple(torch.as_tensor(v)[:, None, None]
                 for v in (a.mean((0, 2, 3)), a.std((0, 2, 3)) + 1e-3, b.mean((0, 2, 3)), b.std((0, 2, 3)) + 1e-3))
    net = EarlyNet(width)
    net.train()
    train(net, lambda b: net(*inputs(s1, s2, mask, b, norm)), y, rows, rng, epochs=epochs, lr=2e-3,
          weight_decay=0.05, warmup=0.3)
    return net.eval(), norm


def train(net: nn.Module, logits: Callable[[np.ndarray], torch.Tensor], y: np.ndarray, rows: np.ndarray,
          rng: np.random.Generator, *, epochs: int, lr: float, weight_decay: float, warmup: float) -> None:
    """AdamW on ``net``'s parameters over batches of 64 of ``rows`` (``logits(batch)`` gives theirs), a one-cycle
    schedule peaking at ``lr`` after the ``warmup`` share of steps, classes weighted to balance."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    pos = float(y[rows].mean())
    weight = torch.as_tensor(np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos)), dtype=torch.float32)
    batch = min(64, len(rows))
    steps = max(1, epochs * (len(rows) // batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warmup)
    for _ in range(epochs):
        order = rng.permutation(rows)
        for k in range(len(order) // batch):  # the last short batch is dropped
            b = np.sort(order[batch * k: batch * (k + 1)])
            loss = (nn.functional.binary_cross_entropy_with_logits(
                logits(b), torch.as_tensor(y[b], dtype=torch.float32), reduction="none") * weight[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def inputs(s1: np.ndarray, s2: np.ndarray, mask: torch.Tensor, b: np.ndarray,
           norm: Norm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``b`` standardised, as float32, with every padded position zero (so padding never reaches a score)."""
    mu1, sd1, mu2, sd2 = norm
    m = mask[b]
    x1 = (torch.from_numpy(s1[b]).float() - mu1) / sd1
    x2 = (torch.from_numpy(s2[b]).float() - mu2) / sd2
    up = m.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None]
    return x1 * up, x2 * m[:, None], m


def score(net: EarlyNet, norm: Norm, s1: np.ndarray, s2: np.ndarray, mask: torch.Tensor,
          rows: np.ndarray) -> np.ndarray:
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), 128):
            out.append(net(*inputs(s1, s2, mask, rows[k:k + 128], norm)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def screen(manifest: Path, maps: Path, probe: Path, epochs: int, n_boot: int, json_out: Path | None,
           only: list[str] | None = None, width: int = 32, tag: str = "") -> dict[str, Any]:
    """Fit the folds in ``only`` (default: all) not already done, each saved as it ends (two processes can share
    the folds); the table once every fold is done."""
    df = pd.read_csv(manifest, dtype={"sha256": str})
    y1 = df["label"].to_numpy()
    (s1, s2), size = load_views(maps, ["s1", "s2"])
    mask = masks(size)
    y = np.concatenate([y1, y1])
    ok = size[:, 0] > 0

    def fit_score(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        net, norm = fit_fold(s1, s2, mask, y, fit, epochs=epochs, width=width, seed=0)
        return score(net, norm, s1, s2, mask, held)[None]

    run_folds(df["fold"].to_numpy(), ok, maps, tag, only, fit_score)
    logit = held_out(df, maps, tag)
    if logit is None:
        return {}
    return report(df, {"early": logit[0]}, probe, n_boot, json_out, maps, f"oof_early{tag}.csv",
                  f"width {width}, {epochs} epochs", {"width": width, "epochs": epochs})


def load_views(maps: Path, names: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
    """The maps ``names`` of every image's centre crop, then of its random crop (row ``i + n``), and their sizes."""
    arrays = [np.concatenate([np.load(maps / f"{v}-{name}.npy") for v in ("centre", "random")]) for name in names]
    return arrays, np.concatenate([np.load(maps / f"{v}-size.npy") for v in ("centre", "random")])


def run_folds(folds: np.ndarray, ok: np.ndarray, maps: Path, tag: str, only: list[str] | None,
              fit_score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """For each fold in ``only`` (default: all) not already done: ``fit_score(fit, held)`` fits on both views of
    every other fold's images and returns rows of logits of the fold's centre crops, saved as the fold ends (two
    processes can share the folds; an interrupted screen resumes)."""
    n = len(folds)
    start = time.perf_counter()
    for f in only or sorted(set(folds)):
        part = maps / f"oof{tag}-{f}.npy"
        if part.exists():
            continue
        held = np.flatnonzero((folds == f) & ok[:n])
        fit = np.flatnonzero(np.concatenate([folds != f, folds != f]) & ok)
        np.save(part, np.vstack([held, fit_score(fit, held)]))
        print(f"{f}: fit {len(fit)} views, held out {len(held)}, {time.perf_counter() - start:.0f} s", flush=True)


def held_out(df: pd.DataFrame, maps: Path, tag: str) -> np.ndarray | None:
    """Every image's held-out logits (one row per kind of score; NaN where its file failed) from the saved fold
    parts, or None until every fold is done."""
    parts = [np.load(maps / f"oof{tag}-{f}.npy") for f in sorted(set(df["fold"]))
             if (maps / f"oof{tag}-{f}.npy").exists()]
    if len(parts) < df["fold"].nunique():
        return None
    logit = np.full((len(parts[0]) - 1, len(df)), np.nan)
    for part in parts:
        logit[:, part[0].astype(int)] = part[1:]
    return logit


def split_near_duplicates(df: pd.DataFrame, plan: Path) -> np.ndarray:
    """Rows with a near-duplicate in another ``fold`` (near-duplicate groups from the protocol's split plan, which
    holds such a group out together): a fold model may have fitted on a near-copy of them, so they are not scored.
    None is flagged without a plan."""
    if not plan.is_file():
        return np.zeros(len(df), dtype=bool)
    p = json.loads(plan.read_text())
    dup_group = dict(zip(p["hashes"], p["groups"], strict=True))
    g = pd.Series([dup_group.get(sha[:16], -1 - i) for i, sha in enumerate(df["sha256"])], index=df.index)
    return (df["fold"].groupby(g).transform("nunique") > 1).to_numpy()


LABELS = {"early": "early network"}
"""How the table names a kind of held-out scores (other screens add theirs)."""


def report(df: pd.DataFrame, scores: dict[str, np.ndarray], probe: Path, n_boot: int, json_out: Path | None,
           maps: Path, csv_name: str, run: str, params: dict[str, Any]) -> dict[str, Any]:
    """Each kind of held-out crop logits alone and added to the probe's (each over its own spread over the held-out
    rows: no label used), with the paired group-bootstrap interval of the change; the JSON and its table updated."""
    oof = pd.read_csv(probe, dtype={"sha256": str}).set_index("sha256")
    base = oof.loc[df["sha256"], "logit_crop"].to_numpy()
    split = split_near_duplicates(df, probe.parent / "plan.json")
    keep = np.isfinite(base) & np.logical_and.reduce([np.isfinite(z) for z in scores.values()]) & ~split
    d = df[keep]
    yk, g = d["label"].to_numpy(), d["group"].to_numpy()
    probe_z = base[keep]
    short = file_sizes(d["original"]).min(axis=1)
    sm = (short >= SIZE_MATCHED[0]) & (short <= SIZE_MATCHED[1])  # where the zoom level cannot tell the class
    sized = len(set(yk[sm])) == 2

    def rank(z: np.ndarray) -> dict[str, Any]:
        return {**ranking(yk, z, g, n_boot), **({"size_matched_auc": float(roc_auc_score(yk[sm], z[sm]))}
                                                 if sized else {})}

    entry: dict[str, Any] = {"params": params, "scores": {}}
    for kind, z in scores.items():
        zk = z[keep]
        both = zk / zk.std() + probe_z / probe_z.std()
        entry["scores"][kind] = {"label": LABELS[kind], "alone": rank(zk), "with_probe": rank(both),
                                 "gain_ci": auc_gain_ci(yk, probe_z, both, g, n_boot=n_boot)}
        if sized:
            entry["scores"][kind]["size_matched_gain_ci"] = auc_gain_ci(yk[sm], probe_z[sm], both[sm], g[sm],
                                                                        n_boot=n_boot)
    pd.DataFrame({"sha256": d["sha256"], **{f"logit_{k}": z[keep] for k, z in scores.items()}}).to_csv(
        maps / csv_name, index=False)
    res: dict[str, Any] = json.loads(json_out.read_text()) if json_out is not None and json_out.is_file() else {}
    res.update({"rows": f"{keep.sum()} held-out centre crops (the grown protocol pool less its final groups), each "
                        "scored by a model that never fitted on its fold of whole groups; left out: "
                        f"{int(split.sum())} whose near-duplicate is in another fold",
                "size_matched": f"{int(sm.sum())} of them whose original's short side is {SIZE_MATCHED[0]}-"
                                f"{SIZE_MATCHED[1]} px ({int((yk[sm] == 0).sum())} real)",
                "probe": {"lever": "views-C0.01", **rank(probe_z)}})
    res.setdefault("runs", {})[run] = entry
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1) + "\n")
        json_out.with_suffix(".md").write_text(table(res) + "\n")
    print(table(res))
    return res


def table(res: dict[str, Any]) -> str:
    def cell(r: dict[str, Any]) -> str:
        lo, hi = r["roc_auc_ci"]
        sized = f"{r['size_matched_auc']:.3f}" if "size_matched_auc" in r else "—"
        return f"{r['roc_auc']:.3f} [{lo:.3f}–{hi:.3f}] | {r['worst_group_auc']:.3f} ({r['worst_group']}) | {sized}"

    def change(r: dict[str, Any], key: str, ci: str) -> str:
        if ci not in r:
            return "—"
        lo, hi = r[ci]
        return f"{r['with_probe'][key] - res['probe'][key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    lines = [f"Crop view, {res['rows']}; size-matched: {res.get('size_matched', 'not measured')}.", "",
             "| scores | ROC AUC [95% CI] | worst group | size-matched AUC | change vs probe [paired 95% CI] | "
             "size-matched change |", "|---|---|---|---|---|---|",
             f"| probe ({res['probe']['lever']}) | {cell(res['probe'])} | — | — |"]
    for name, run in res["runs"].items():
        for r in run["scores"].values():
            lines += [f"| {r['label']}, {name} | {cell(r['alone'])} | — | — |",
                      f"| probe + {r['label']}, {name} | {cell(r['with_probe'])} | "
                      f"{change(r, 'roc_auc', 'gain_ci')} | {change(r, 'size_matched_auc', 'size_matched_gain_ci')} |"]
    return "\n".join(lines)


def parser(doc: str, maps: Path, epochs: int) -> argparse.ArgumentParser:
    """The options every screen on stored maps shares (``extract``, then ``screen`` by folds)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("step", choices=["extract", "screen"])
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--maps", type=Path, default=maps)
    ap.add_argument("--probe", type=Path, default=PROBE, help="the probe's oof.csv (benchmarks/protocol.py)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--folds", nargs="*", default=None, help="fit only these folds (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="names this run's held-out scores beside the maps")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    return ap


def main() -> None:
    ap = parser(__doc__, OUT, epochs=4)
    ap.add_argument("--width", type=int, default=32, help="channels of the local detectors")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.step == "extract":
        extract(a.manifest, a.maps, a.workers)
    else:
        screen(a.manifest, a.maps, a.probe, a.epochs, a.n_boot, a.json, a.folds, a.width, a.tag)


if __name__ == "__main__":
    main()
