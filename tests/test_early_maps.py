"""The early-stage screen (benchmarks/early_maps.py) on real demo images: maps of the protocol's own crop view, padding
that cannot reach a score, and fold models that never fit on the fold they score."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import early_maps  # noqa: E402
from conftest import demo_protocol_pool  # noqa: E402


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Twelve demo images (real and generated, some smaller than the crop) in three folds, their maps, and a probe's
    held-out crop logits."""
    tmp = tmp_path_factory.mktemp("early")
    manifest, rows = demo_protocol_pool(tmp)
    early_maps.extract(manifest, tmp / "maps", workers=0)
    return manifest, tmp, rows


def test_maps_are_the_crop_view_at_native_scale(pool: tuple[Path, Path, pd.DataFrame]) -> None:
    _, tmp, rows = pool
    size = np.load(tmp / "maps" / "centre-size.npy")
    s2 = np.load(tmp / "maps" / "centre-s2.npy")
    assert (size > 0).all()
    for i, path in enumerate(rows["original"]):  # a 224-px window of a 320-px file: 28 x 28 at stride 8
        w, h = Image.open(path).size
        side = -(-min(h, w, 224) // 8)  # "same" padding: ceil at each of the three stride-2 steps
        assert tuple(size[i]) == (side, side)
        assert np.abs(s2[i, :, size[i, 0]:, :]).max(initial=0) == 0  # padding stays zero
    # the random view is another window of the same image, not a copy of the centre
    assert not np.array_equal(np.load(tmp / "maps" / "random-s2.npy"), s2)


def test_padding_cannot_reach_the_score() -> None:
    torch.manual_seed(0)
    net = early_maps.EarlyNet(8).eval()
    size = np.array([[20, 17]], dtype=np.int16)
    mask = early_maps.masks(size)
    assert mask.sum() == 20 * 17
    rng = np.random.default_rng(0)
    s1 = rng.normal(size=(1, 24, 56, 56)).astype(np.float16)
    s2 = rng.normal(size=(1, 40, 28, 28)).astype(np.float16)
    norm = (torch.zeros(24, 1, 1), torch.ones(24, 1, 1), torch.zeros(40, 1, 1), torch.ones(40, 1, 1))
    before = net(*early_maps.inputs(s1, s2, mask, np.array([0]), norm))
    s1[:, :, 40:, :] = 99  # junk where the image has no pixels
    s2[:, :, :, 17:] = -99
    after = net(*early_maps.inputs(s1, s2, mask, np.array([0]), norm))
    assert torch.allclose(before, after)


def test_screen_never_fits_on_the_fold_it_scores(pool: tuple[Path, Path, pd.DataFrame],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    manifest, tmp, rows = pool
    fitted: list[np.ndarray] = []
    real_fit = early_maps.fit_fold

    def spy(s1: np.ndarray, s2: np.ndarray, mask: torch.Tensor, y: np.ndarray, fit: np.ndarray, **kw: int):
        fitted.append(fit)
        return real_fit(s1, s2, mask, y, fit, **kw)

    monkeypatch.setattr(early_maps, "fit_fold", spy)
    out = tmp / "screen.json"
    res = early_maps.screen(manifest, tmp / "maps", tmp / "oof.csv", epochs=1, n_boot=20, json_out=out, width=8)
    n = len(rows)
    folds = rows["fold"].to_numpy()
    for f, fit in zip(sorted(set(folds)), fitted, strict=True):
        images = fit % n  # both views of an image index it the same way
        assert not (folds[images] == f).any()
        assert len(fit) == 2 * (folds != f).sum()  # the centre and the random crop of every other fold's image
    scored = pd.read_csv(tmp / "maps" / "oof_early.csv", dtype={"sha256": str})
    assert sorted(scored["sha256"]) == sorted(rows["sha256"])
    assert json.loads(out.read_text())["probe"]["roc_auc"] == res["probe"]["roc_auc"]


def test_near_duplicates_split_between_folds_are_not_scored(tmp_path: Path) -> None:
    df = pd.DataFrame({"sha256": [f"{i:016x}" + "0" * 48 for i in range(5)],
                       "fold": ["fold00", "fold01", "fold00", "fold00", "fold01"]})
    plan = tmp_path / "plan.json"
    # near-duplicate groups: rows 0 and 1 (two folds), rows 2 and 3 (one fold), row 4 alone
    plan.write_text(json.dumps({"hashes": [s[:16] for s in df["sha256"]], "groups": [0, 0, 1, 1, 2]}))
    assert early_maps.split_near_duplicates(df, plan).tolist() == [True, True, False, False, False]
    assert not early_maps.split_near_duplicates(df, tmp_path / "missing.json").any()
