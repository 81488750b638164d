"""Last-block fine-tuning, screened on the crop view (issue 19, "what is left": fine-tuning): EfficientNet-Lite0's
last block and head convolution, started from their ImageNet weights, fine-tuned per protocol fold on native-scale
crops, against the linear probe of the frozen features.

    python benchmarks/protocol.py --pool build/protocol-pool/manifest.csv --out build/protocol-grown \
        --json benchmarks/results/protocol_grown.json --only views-C0.01        # the probe's held-out scores
    python benchmarks/tail_finetune.py extract                                # stage-6 maps of every crop
    python benchmarks/tail_finetune.py screen --epochs 3 --json benchmarks/results/tail_finetune.json

Rows and views are those of ``early_maps.py``: the grown protocol pool less its final groups, each image held out by
its fold of whole groups; the protocol's centre ``crop`` view (224 px at the image's own scale, JPEG 70-95) and, for
fit rows only, one more native crop at a random position. The frozen network runs once, up to the end of stage 6
(stride 32: a 7 x 7 map of 192 channels per crop); what is fitted is the rest of the network (the last inverted
residual block, the 1x1 head convolution to 1280 channels and its batch norm, about 0.9 M weights) and a linear
read-out of the mean over the map. Linear probe, then fine-tuning (LP-FT, Kumar et al. 2022): the read-out is first
fitted as a logistic regression on the frozen tail's features (scored as ``frozen``), then everything fitted is
trained together at a small learning rate (``fine-tuned``), batch-norm statistics kept. Fitting uses the crops whose
map is full (7 x 7; about 1 % of images are smaller than the crop); every held-out crop is scored at its own size, as
the whole network would score it (tested). Reported as in ``early_maps.py``: each alone and added to the probe, with
the paired group-bootstrap interval of the change.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common  # noqa: F401  (import fallback for a checkout)
import early_maps
import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from synthdet.training.train import generalising_backbone

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "tail-maps"
SIDE = 7  # stage 6's map of a 224-px crop (stride 32)
TAIL: early_maps.Taps = {"s6": (5, 192, SIDE)}
early_maps.LABELS.update({"frozen": "last block frozen (linear read-out)",
                          "finetuned": "last block fine-tuned (LP-FT)"})


class TailNet(nn.Module):
    """The network after stage 6 (last block, head convolution, its batch norm and activation) with a linear
    read-out of the spatial mean: on a crop's stage-6 map it computes what the whole network computes on the crop."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.tail = nn.Sequential(copy.deepcopy(model.blocks[6]), copy.deepcopy(model.conv_head),
                                  copy.deepcopy(model.bn2))
        for p in self.tail.parameters():
            p.requires_grad_(True)
        self.out = nn.Linear(1280, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x).mean((2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))[:, 0]


def by_size(size: np.ndarray, rows: np.ndarray) -> list[tuple[np.ndarray, int, int]]:
    """``rows`` split by the size of their valid map, so each batch runs unpadded."""
    keys = size[rows]
    return [(rows[(keys == k).all(1)], int(k[0]), int(k[1])) for k in np.unique(keys, axis=0)]


def apply(fn: Callable[[torch.Tensor], torch.Tensor], maps: np.ndarray, size: np.ndarray, rows: np.ndarray, batch: int = 256) -> np.ndarray:
    """``fn`` over ``rows``, each at its own valid size, without gradients; results in the order of ``rows``."""
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for part, h, w in by_size(size, rows):
            for k in range(0, len(part), batch):
                b = part[k:k + batch]
                z = fn(torch.from_numpy(maps[b, :, :h, :w]).float()).numpy()
                out.update(zip(b.tolist(), z, strict=True))
    return np.stack([out[int(i)] for i in rows]) if len(rows) else np.zeros(0)


def fit_fold(model: nn.Module, maps: np.ndarray, size: np.ndarray, y: np.ndarray, rows: np.ndarray, *,
             epochs: int, lr: float, c: float, seed: int) -> tuple[TailNet, TailNet]:
    """The frozen tail with its fitted read-out, and the same after fine-tuning; both fitted on ``rows`` whose map
    is full, classes weighted to balance."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = rows[(size[rows] == SIDE).all(1)]
    net = TailNet(model).eval()  # eval throughout: batch norm keeps its ImageNet statistics
    feats = apply(net.features, maps, size, rows)
    scaler = StandardScaler().fit(feats)
    read_out = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(scaler.transform(feats), y[rows])
    w = read_out.coef_[0] / scaler.scale_  # the scaler folded into the linear layer
    with torch.no_grad():
        net.out.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
        net.out.bias.fill_(float(read_out.intercept_[0] - (w * scaler.mean_).sum()))
    frozen = copy.deepcopy(net)
    early_maps.train(net, lambda b: net(torch.from_numpy(maps[b]).float()), y, rows, rng, epochs=epochs, lr=lr,
                     weight_decay=0.01, warmup=0.1)
    return frozen, net


def screen(manifest: Path, maps_dir: Path, probe: Path, epochs: int, n_boot: int, json_out: Path | None,
           only: list[str] | None = None, lr: float = 1e-4, c: float = 0.01, tag: str = "") -> dict[str, Any]:
    """Fit the folds in ``only`` (default: all) not already done; the table once every fold is done."""
    df = pd.read_csv(manifest, dtype={"sha256": str})
    (maps,), size = early_maps.load_views(maps_dir, ["s6"])
    y = np.concatenate([df["label"].to_numpy()] * 2)
    model = generalising_backbone("effnet-lite0").model

    def fit_score(fit: np.ndarray, held: np.ndarray) -> np.ndarray:
        frozen, tuned = fit_fold(model, maps, size, y, fit, epochs=epochs, lr=lr, c=c, seed=0)
        return np.stack([apply(net, maps, size, held) for net in (frozen, tuned)])

    early_maps.run_folds(df["fold"].to_numpy(), size[:, 0] > 0, maps_dir, tag, only, fit_score)
    logit = early_maps.held_out(df, maps_dir, tag)
    if logit is None:
        return {}
    return early_maps.report(df, {"frozen": logit[0], "finetuned": logit[1]}, probe, n_boot, json_out, maps_dir,
                             f"oof_tail{tag}.csv", f"{epochs} epochs, lr {lr:g}",
                             {"epochs": epochs, "lr": lr, "C": c})


def main() -> None:
    ap = early_maps.parser(__doc__, OUT, epochs=3)
    ap.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the fine-tuning")
    ap.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the linear read-out")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.step == "extract":
        early_maps.extract(a.manifest, a.maps, a.workers, TAIL)
    else:
        screen(a.manifest, a.maps, a.probe, a.epochs, a.n_boot, a.json, a.folds, a.lr, a.C, a.tag)


if __name__ == "__main__":
    main()
