"""The last-block fine-tuning screen (benchmarks/tail_finetune.py) on real demo images: the stored stage-6 maps and
the copied tail compute what the whole network computes on the crop view, the linear read-out is the logistic
regression it was fitted as, and fold models never fit on the fold they score."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tail_finetune  # noqa: E402
from conftest import demo_protocol_pool  # noqa: E402

from synthdet.data.perturbations import native_crop  # noqa: E402
from synthdet.features.extract import ViewsDecoder  # noqa: E402
from synthdet.io.pixels import DEFAULT_MAX_PIXELS  # noqa: E402
from synthdet.training.train import generalising_backbone  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Twelve demo images and one photo smaller than the crop (150 x 190), their stage-6 maps."""
    tmp = tmp_path_factory.mktemp("tail")
    manifest, rows = demo_protocol_pool(tmp)
    small = tmp / "small.jpg"
    Image.open(rows["original"][0]).convert("RGB").crop((0, 0, 150, 190)).save(small, quality=92)
    rows = pd.concat([rows, rows.iloc[[0]].assign(original=str(small), sha256="0" * 64, fold="fold00")],
                     ignore_index=True)
    rows.to_csv(manifest, index=False)
    tail_finetune.early_maps.extract(manifest, tmp / "maps", 0, tail_finetune.TAIL)
    return manifest, tmp, rows


def test_tail_on_stored_maps_is_the_whole_network(pool: tuple[Path, Path, pd.DataFrame]) -> None:
    _, tmp, rows = pool
    bb = generalising_backbone("effnet-lite0")
    net = tail_finetune.TailNet(bb.model).eval()
    (maps,), size = tail_finetune.early_maps.load_views(tmp / "maps", ["s6"])
    n = len(rows)
    assert (size[n - 1] < 7).all()  # a photo smaller than the crop gives a smaller map
    assert (size[: n - 1] == 7).all()
    feats = tail_finetune.apply(net.features, maps, size, np.arange(n))
    dec = ViewsDecoder(bb.preprocess, DEFAULT_MAX_PIXELS, native_crop)
    for i in (0, 5, n - 1):  # the crop view through the whole network, pooled before its classifier
        _, tensors, _, _ = dec[(i, (rows["original"][i], rows["sha256"][i], [0]))]
        assert tensors is not None
        with torch.no_grad():
            whole = bb.model.forward_head(bb.model.forward_features(tensors[0][None]), pre_logits=True)
        assert np.allclose(feats[i], whole[0].numpy(), atol=2e-3)


def test_read_out_starts_as_the_fitted_logistic_regression(pool: tuple[Path, Path, pd.DataFrame]) -> None:
    _, tmp, rows = pool
    (maps,), size = tail_finetune.early_maps.load_views(tmp / "maps", ["s6"])
    y = np.concatenate([rows["label"].to_numpy()] * 2)
    fit = np.arange(len(y))
    model = generalising_backbone("effnet-lite0").model
    frozen, tuned = tail_finetune.fit_fold(model, maps, size, y, fit, epochs=1, lr=1e-3, c=1.0, seed=0)
    z = tail_finetune.apply(frozen, maps, size, fit)
    feats = tail_finetune.apply(frozen.features, maps, size, fit)
    full = (size[fit] == 7).all(1)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000))
    ref.fit(feats[full], y[full])
    assert np.allclose(z, ref.decision_function(feats), atol=1e-3)
    # fine-tuning moved the tail itself, not only the read-out
    before = dict(frozen.tail.named_parameters())
    assert any(not torch.equal(p, before[k]) for k, p in tuned.tail.named_parameters())


def test_screen_never_fits_on_the_fold_it_scores(pool: tuple[Path, Path, pd.DataFrame],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, tmp, rows = pool
    fitted: list[np.ndarray] = []
    real_fit = tail_finetune.fit_fold

    def spy(model: torch.nn.Module, maps: np.ndarray, size: np.ndarray, y: np.ndarray, fit: np.ndarray, **kw):
        fitted.append(fit)
        return real_fit(model, maps, size, y, fit, **kw)

    monkeypatch.setattr(tail_finetune, "fit_fold", spy)
    rows.assign(logit_crop=np.linspace(-1, 1, len(rows)))[["sha256", "logit_crop"]].to_csv(tmp / "oof.csv")
    out = tmp / "screen.json"
    res = tail_finetune.screen(manifest, tmp / "maps", tmp / "oof.csv", epochs=1, n_boot=20, json_out=out)
    n = len(rows)
    folds = rows["fold"].to_numpy()
    for f, fit in zip(sorted(set(folds)), fitted, strict=True):
        assert not (folds[fit % n] == f).any()
        assert len(fit) == 2 * (folds != f).sum()
    scored = pd.read_csv(tmp / "maps" / "oof_tail.csv", dtype={"sha256": str})
    assert len(scored) == n  # the small photo is scored too, at its own size
    assert not np.allclose(scored["logit_frozen"], scored["logit_finetuned"])
    assert set(res["runs"]["1 epochs, lr 0.0001"]["scores"]) == {"frozen", "finetuned"}
