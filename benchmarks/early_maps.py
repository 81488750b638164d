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
uses no label), with the paired group-bootstrap interval of the change. A screen: the other views are not scored.
``--folds`` splits the ten fold models between processes (each saved as it ends); the table is written by the call
that finds all ten done.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (import fallback for a checkout)
import numpy as np
import pandas as pd
import torch
from pool_growth import ranking
from torch import nn
from torch.utils.data import DataLoader

from synthdet.data.perturbations import native_crop, random_crop
from synthdet.evaluation.selection import auc_gain_ci
from synthdet.features.extract import ViewsDecoder
from synthdet.io.pixels import DEFAULT_MAX_PIXELS
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


def extract(manifest: Path, out: Path, workers: int) -> None:
    """Stage-1 and stage-2 maps of view ``centre`` and ``random`` of every image, float16, zero-padded."""
    df = pd.read_csv(manifest, dtype={"sha256": str})
    out.mkdir(parents=True, exist_ok=True)
    bb = generalising_backbone("effnet-lite0")
    m = bb.model.eval()
    n = len(df)
    for view, transform in (("centre", native_crop), ("random", random_224)):
        if (out / f"{view}.done").exists():
            continue
        s1 = np.lib.format.open_memmap(out / f"{view}-s1.npy", "w+", np.float16, (n, 24, S1, S1))
        s2 = np.lib.format.open_memmap(out / f"{view}-s2.npy", "w+", np.float16, (n, 40, S2, S2))
        size = np.zeros((n, 2), np.int16)  # valid stage-2 rows, columns (0: the file failed)
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
                    f1 = m.blocks[1](m.blocks[0](m.bn1(m.conv_stem(torch.stack([t for _, t in group])))))
                    f2 = m.blocks[2](f1)
                s1[rows, :, :f1.shape[2], :f1.shape[3]] = f1.numpy()
                s2[rows, :, :f2.shape[2], :f2.shape[3]] = f2.numpy()
                size[rows] = f2.shape[2:]
            if k % 40 == 0:
                print(f"{view}: {16 * (k + 1)}/{n} in {time.perf_counter() - start:.0f} s", flush=True)
        s1.flush()
        s2.flush()
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
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    pos = float(y[rows].mean())
    weight = torch.as_tensor(np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos)), dtype=torch.float32)
    batch = min(64, len(rows))
    steps = epochs * (len(rows) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(rows)
        for k in range(len(order) // batch):  # the last short batch is dropped
            b = np.sort(order[batch * k: batch * (k + 1)])
            logit = net(*inputs(s1, s2, mask, b, norm))
            loss = (nn.functional.binary_cross_entropy_with_logits(
                logit, torch.as_tensor(y[b], dtype=torch.float32), reduction="none") * weight[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval(), norm


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
    n = len(df)
    y1 = df["label"].to_numpy()
    centre = [np.load(maps / f"centre-s{k}.npy", mmap_mode="r") for k in (1, 2)]
    rand = [np.load(maps / f"random-s{k}.npy", mmap_mode="r") for k in (1, 2)]
    s1 = np.concatenate([np.asarray(centre[0]), np.asarray(rand[0])])
    s2 = np.concatenate([np.asarray(centre[1]), np.asarray(rand[1])])
    size = np.concatenate([np.load(maps / "centre-size.npy"), np.load(maps / "random-size.npy")])
    mask = masks(size)
    y = np.concatenate([y1, y1])
    ok = size[:, 0] > 0
    folds = df["fold"].to_numpy()
    start = time.perf_counter()
    for f in only or sorted(set(folds)):
        if (maps / f"oof{tag}-{f}.npy").exists():
            continue
        held = np.flatnonzero((folds == f) & ok[:n])
        fit = np.flatnonzero(np.concatenate([folds != f, folds != f]) & ok)
        net, norm = fit_fold(s1, s2, mask, y, fit, epochs=epochs, width=width, seed=0)
        np.save(maps / f"oof{tag}-{f}.npy", np.stack([held, score(net, norm, s1, s2, mask, held)]))
        print(f"{f}: fit {len(fit)} views, held out {len(held)}, {time.perf_counter() - start:.0f} s", flush=True)
    parts = [maps / f"oof{tag}-{f}.npy" for f in sorted(set(folds))]
    if not all(p.exists() for p in parts):
        return {}
    logit = np.full(n, np.nan)
    for p in parts:
        rows, z = np.load(p)
        logit[rows.astype(int)] = z
    oof = pd.read_csv(probe, dtype={"sha256": str}).set_index("sha256")
    base = oof.loc[df["sha256"], "logit_crop"].to_numpy()
    keep = np.isfinite(logit) & np.isfinite(base)
    d = df[keep]
    yk, g = d["label"].to_numpy(), d["group"].to_numpy()
    early, probe_z = logit[keep], base[keep]
    both = early / early.std() + probe_z / probe_z.std()  # no label used: each logit over its own spread
    run = {"width": width, "epochs": epochs, "early": ranking(yk, early, g, n_boot),
           "probe+early": ranking(yk, both, g, n_boot), "gain_ci": auc_gain_ci(yk, probe_z, both, g, n_boot=n_boot)}
    pd.DataFrame({"sha256": d["sha256"], "logit_early": early}).to_csv(maps / f"oof_early{tag}.csv", index=False)
    res: dict[str, Any] = json.loads(json_out.read_text()) if json_out is not None and json_out.is_file() else {}
    res.update({"rows": f"{keep.sum()} held-out centre crops (the grown protocol pool less its final groups), each "
                        "scored by a model that never fitted on its fold of whole groups",
                "probe": {"lever": "views-C0.01", **ranking(yk, probe_z, g, n_boot)}})
    res.setdefault("runs", {})[f"width {width}, {epochs} epochs"] = run
    if json_out is not None:
        json_out.write_text(json.dumps(res, indent=1) + "\n")
        json_out.with_suffix(".md").write_text(table(res) + "\n")
    print(table(res))
    return res


def table(res: dict[str, Any]) -> str:
    def cell(r: dict[str, Any]) -> str:
        lo, hi = r["roc_auc_ci"]
        return f"{r['roc_auc']:.3f} [{lo:.3f}–{hi:.3f}] | {r['worst_group_auc']:.3f} ({r['worst_group']})"

    lines = [f"Crop view, {res['rows']}.", "",
             "| scores | ROC AUC [95% CI] | worst group | change vs probe [paired 95% CI] |", "|---|---|---|---|",
             f"| probe ({res['probe']['lever']}) | {cell(res['probe'])} | — |"]
    for name, r in res["runs"].items():
        lo, hi = r["gain_ci"]
        change = r["probe+early"]["roc_auc"] - res["probe"]["roc_auc"]
        lines += [f"| early network, {name} | {cell(r['early'])} | — |",
                  f"| probe + early network, {name} | {cell(r['probe+early'])} | "
                  f"{change:+.3f} [{lo:+.3f}, {hi:+.3f}] |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("step", choices=["extract", "screen"])
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--maps", type=Path, default=OUT)
    ap.add_argument("--probe", type=Path, default=PROBE, help="the probe's oof.csv (benchmarks/protocol.py)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--folds", nargs="*", default=None, help="fit only these folds (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=32, help="channels of the local detectors")
    ap.add_argument("--tag", default="", help="names this run's held-out scores beside the maps")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.step == "extract":
        extract(a.manifest, a.maps, a.workers)
    else:
        screen(a.manifest, a.maps, a.probe, a.epochs, a.n_boot, a.json, a.folds, a.width, a.tag)


if __name__ == "__main__":
    main()
