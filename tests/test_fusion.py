"""Layer taps of open_clip ViTs loaded from local files, their cache round trip, and the layer-wise fusion head.

Backbones are tiny randomly initialised open_clip configs saved as checkpoint files (``tiny_clip``), loaded through
``create_backbone("open_clip:<arch>", weights=FILE)`` — the same code path as ViT-L/14 with ``--weights``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_photo, write_image
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from tiny_clip import tiny_clip_checkpoint

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.backbones.weights import WeightsNotFoundError, file_digest
from synthdet.features.extract import FeatureStore, assemble_features, extract, forward_batches
from synthdet.heads.base import HEADS, create_head, head_from_state
from synthdet.heads.fusion import LayerFusionHead

BLOCKS, WIDTH, EMBED = 3, 64, 32
DIMS = [16, 24, 16, 8]  # synthetic "layers"; only layer INFORMATIVE carries the label
INFORMATIVE = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"), blocks=BLOCKS, width=WIDTH, embed_dim=EMBED)


@pytest.fixture(scope="module")
def backbone(tiny: tuple[str, Path]) -> Backbone:
    name, weights = tiny
    return create_backbone(name, weights=weights, device="cpu")


# ------------------------------------------------------------------------------------------------ loading and taps
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_loads_weights_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    name, weights = tiny_clip_checkpoint(tmp_path, blocks=2, suffix=suffix, seed=5)
    bb = create_backbone(name, weights=weights, device="cpu")
    saved = load_file(str(weights)) if suffix == ".safetensors" else torch.load(weights, weights_only=True)
    loaded = bb.model.state_dict()
    assert loaded and all(torch.equal(v, saved[f"visual.{k}"]) for k, v in loaded.items())
    assert bb.weights_id == file_digest(weights)
    assert not any(p.requires_grad for p in bb.parameters())


def test_missing_weights_file_says_what_to_place_where(tiny: tuple[str, Path], tmp_path: Path) -> None:
    name, _ = tiny
    missing = tmp_path / "nowhere" / "ViT-L-14.safetensors"
    with pytest.raises(WeightsNotFoundError, match="--weights") as info:
        create_backbone(name, weights=missing, device="cpu")
    assert str(missing) in str(info.value)


def test_taps_are_the_class_token_after_every_block(backbone: Backbone) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, layers = backbone(x, taps=True)
        no_taps = backbone(x)
    assert pooled.shape == (2, EMBED) and backbone.embed_dim == EMBED
    assert len(layers) == BLOCKS and backbone.layer_dims == [WIDTH] * BLOCKS
    assert all(t.shape == (2, WIDTH) and t.dtype == torch.float32 for t in layers)
    assert no_taps[1] == [] and torch.equal(no_taps[0], pooled)
    visual = backbone.model
    with torch.no_grad():  # open_clip pools the last block's class token through ln_post and proj
        assert torch.allclose(visual.ln_post(layers[-1]) @ visual.proj, pooled, atol=1e-5)
    assert not torch.allclose(layers[0], layers[1])


def test_layer_features_round_trip_through_the_cache(backbone: Backbone, tmp_path: Path) -> None:
    paths = [str(write_image(tmp_path / f"img{i}.jpg", synthetic_photo(48, 40, seed=i))) for i in range(4)]
    shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]  # the cache verifies content hashes
    store = FeatureStore.for_backbone(backbone, tmp_path / "cache")
    assert store.layer_dims == [WIDTH] * BLOCKS
    first = extract(backbone, paths, shas, store, views=(0, 1), num_workers=0, progress=False)
    assert first.computed == 8 and not first.skipped
    again = FeatureStore.for_backbone(backbone, tmp_path / "cache")  # reopened from disk
    assert extract(backbone, paths, shas, again, views=(0, 1), num_workers=0, progress=False).computed == 0
    pooled, layers = again.load([f"{s}:0" for s in shas], layers=True)
    assert pooled.shape == (4, EMBED) and len(layers) == BLOCKS
    assert all(a.shape == (4, WIDTH) and a.dtype == np.float16 for a in layers)
    (_, direct_pooled, direct_layers, _), = forward_batches(
        backbone, [(p, p, [0]) for p in paths], taps=True, num_workers=0, progress=False
    )
    for cached, direct in zip([pooled, *layers], [direct_pooled, *direct_layers]):
        np.testing.assert_allclose(cached.astype(np.float32), direct.numpy(), rtol=1e-2, atol=1e-2)
    X = assemble_features(pooled, layers, "concat")
    head = create_head("fusion", layer_dims=[EMBED, *store.layer_dims], epochs=2, proj_dim=8, hidden=8)
    assert head.fit(X, np.array([0, 1, 0, 1])).predict_proba(X).shape == (4, 2)


# ---------------------------------------------------------------------------------------------------- fusion head
def per_layer_data(n: int, seed: int, shift: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise in every layer; layer INFORMATIVE also holds two blobs ``2 * shift`` apart (Bayes AUC 0.98)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    parts = [rng.normal(size=(n, d)) for d in DIMS]
    direction = np.random.default_rng(7).normal(size=DIMS[INFORMATIVE])
    parts[INFORMATIVE] += np.outer(2 * y - 1, direction / np.linalg.norm(direction)) * shift
    return np.concatenate(parts, axis=1).astype(np.float32), y


@pytest.fixture(scope="module")
def fitted() -> tuple[LayerFusionHead, np.ndarray, np.ndarray]:
    X, y = per_layer_data(600, seed=1)
    Xt, yt = per_layer_data(400, seed=2)
    head = LayerFusionHead(layer_dims=DIMS, proj_dim=32, hidden=32, epochs=15, batch_size=64).fit(X, y)
    return head, Xt, yt


def test_fusion_is_a_registered_head() -> None:
    assert HEADS.get("fusion") is LayerFusionHead
    assert isinstance(create_head("fusion", layer_dims=[4, 4]), LayerFusionHead)
    assert create_head("fusion", layer_dims=[4, 4]).get_params()["layer_dims"] == [4, 4]


def test_fusion_learns_and_weights_the_informative_layer(fitted) -> None:
    head, Xt, yt = fitted
    assert roc_auc_score(yt, head.predict_proba(Xt)[:, 1]) > 0.93
    alphas = head.alphas_
    assert alphas.shape == (len(DIMS),) and abs(alphas.sum() - 1) < 1e-9 and (alphas > 0).all()
    assert int(alphas.argmax()) == INFORMATIVE and alphas[INFORMATIVE] > 0.6


def test_plot_alphas_writes_a_png(fitted, tmp_path: Path) -> None:
    head, _, _ = fitted
    out = head.plot_alphas(tmp_path / "plots" / "alphas.png", labels=["a", "b", "c", "d"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="4 layers"):
        head.plot_alphas(tmp_path / "bad.png", labels=["a"])


@pytest.mark.parametrize("shared", [False, True])
def test_state_round_trips_through_safetensors(shared: bool, tmp_path: Path) -> None:
    dims = [8, 8, 8, 4]
    X = np.random.default_rng(0).normal(size=(60, sum(dims))).astype(np.float32)
    y = np.arange(60) % 2
    head = LayerFusionHead(layer_dims=dims, shared_projection=shared, proj_dim=8, hidden=8, epochs=2).fit(X, y)
    save_file(head.state(), str(tmp_path / "head.safetensors"))
    back = head_from_state("fusion", head.get_params(), load_file(str(tmp_path / "head.safetensors")), X.shape[1])
    # a head fitted on CUDA is reloaded on CPU: equal up to float rounding
    np.testing.assert_allclose(back.predict_proba(X), head.predict_proba(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(back.alphas_, head.alphas_)
    n_proj = 2 if shared else 4  # one projection per distinct width when shared
    assert len(head.net_.proj) == n_proj
    assert clone(head).get_params() == head.get_params()


def test_layer_dims_must_add_up_to_the_features() -> None:
    with pytest.raises(ValueError, match="sum to 7"):
        LayerFusionHead(layer_dims=[3, 4], epochs=1).fit(np.zeros((20, 8), np.float32), np.arange(20) % 2)
