"""Fine-tuning from images: only the unfrozen blocks move, runs resume after interruption, results score paths.

Backbones are tiny random open_clip ViTs loaded from checkpoint files (``tiny_clip``) and a random ResNet-18 at
32 px; images are real files on disk. Every run is a few batches of 32 px images on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import labelled_items
from pydantic import ValidationError
from tiny_clip import tiny_clip_checkpoint

from synthdet.backbones.base import Backbone, create_backbone
from synthdet.detectors.loading import load_detector
from synthdet.io.pixels import Preprocess
from synthdet.training.finetune import FineTuneConfig, finetune, load_finetuned, trainable_parameters

BLOCKS = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return tiny_clip_checkpoint(tmp_path_factory.mktemp("tiny_clip"), blocks=BLOCKS)


def fresh(tiny: tuple[str, Path]) -> Backbone:
    """Fine-tuning trains a backbone in place, so every run gets its own copy of the file's weights."""
    name, weights = tiny
    return create_backbone(name, weights=weights, device="cpu")


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    """12 training and 6 validation images: real 4:3 photo-like JPEGs, "generated" square noisy PNGs."""
    out = labelled_items(tmp_path_factory.mktemp("images"), 18)
    return out[:12], out[12:]


def config(**kw) -> FineTuneConfig:
    base = {"epochs": 1, "batch_size": 4, "num_workers": 0, "backbone_lr": 1e-3}
    return FineTuneConfig(**{**base, **kw})


def test_config_parses_unfreeze_and_rejects_unknown_presets() -> None:
    assert FineTuneConfig().unfreeze_blocks == 2 and FineTuneConfig().head == "fusion"
    assert FineTuneConfig(unfreeze_blocks=-1).unfreeze_blocks == "all"
    assert FineTuneConfig(unfreeze_blocks="ALL").unfreeze_blocks == "all"
    assert FineTuneConfig(unfreeze_blocks="3").unfreeze_blocks == 3
    with pytest.raises(ValidationError):
        FineTuneConfig(unfreeze_blocks=-2)
    with pytest.raises(ValidationError, match="unknown augmentation preset .nope.; choose from"):
        FineTuneConfig(augment="nope")


def test_selects_the_last_blocks_and_what_follows_them(tiny, resnet18_random: Backbone) -> None:
    bb = fresh(tiny)
    every = [n for n, _ in bb.model.named_parameters()]
    last = {n for n in every if n.startswith(f"transformer.resblocks.{BLOCKS - 1}.")}
    assert set(trainable_parameters(bb, 1)) == last | {"ln_post.weight", "ln_post.bias", "proj"}
    two = set(trainable_parameters(bb, 2))
    last_two = (f"transformer.resblocks.{BLOCKS - 2}.", f"transformer.resblocks.{BLOCKS - 1}.")
    assert {n for n in two if n.startswith("transformer.resblocks.")} == {n for n in every if n.startswith(last_two)}
    assert trainable_parameters(bb, 0) == [] and trainable_parameters(bb, "all") == every
    with pytest.raises(ValueError, match="has 3 blocks"):
        trainable_parameters(bb, BLOCKS + 1)
    cnn = set(trainable_parameters(resnet18_random, 2))  # CNN: the last two stages
    assert cnn == {n for n, _ in resnet18_random.model.named_parameters() if n.startswith(("layer3.", "layer4."))}
    assert not any(p.requires_grad for p in bb.parameters())  # selecting changes nothing


def test_finetuning_moves_only_the_unfrozen_blocks(tiny, items, tmp_path: Path) -> None:
    train, val = items
    bb = fresh(tiny)
    base_id = bb.weights_id
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    result = finetune(bb, train, val, config(unfreeze_blocks=1), tmp_path / "run", progress=False)
    after = bb.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(result.trainable)
    assert all(k.startswith((f"transformer.resblocks.{BLOCKS - 1}.", "ln_post.", "proj")) for k in changed)
    assert not any(p.requires_grad for p in bb.parameters()) and not bb.model.training
    assert result.best["epoch"] == 0 and set(result.best) == {"epoch", "val_auc", "val_ap"}
    det = result.detector
    assert det.card.features == "concat" and det.card.head == "fusion" and 0 <= det.threshold <= 1
    assert det.card.weights_id == bb.weights_id and bb.weights_id.startswith(f"{base_id}.ft-")  # a new cache id
    assert len(det.head.alphas_) == 1 + BLOCKS  # pooled + one per block
    assert (tmp_path / "run" / "detector" / "alphas.png").is_file()
    scored = list(det.predict_paths([p for p, _ in val] + [str(tmp_path / "missing.jpg")], num_workers=0,
                                    progress=False))
    assert all(0 <= p <= 1 for _, p, _ in scored[:-1]) and scored[-1][1] is None


def test_a_saved_run_reloads_with_its_tuned_weights(tiny, items, tmp_path: Path) -> None:
    train, val = items
    name, weights = tiny
    result = finetune(fresh(tiny), train, val, config(head="linear"), tmp_path / "run", weights_file=weights,
                      progress=False)
    paths = [p for p, _ in val]
    expected = [p for _, p, _ in result.detector.predict_paths(paths, num_workers=0, progress=False)]
    det = load_finetuned(tmp_path / "run" / "detector", device="cpu")
    assert det.card.weights_id == result.detector.card.weights_id
    # the same tensors on the same device score identically; CPU vs CUDA (bf16 autocast) only approximately
    tol = 0.0 if result.detector.backbone.device.type == "cpu" else 0.02
    assert np.allclose([p for _, p, _ in det.predict_paths(paths, num_workers=0, progress=False)], expected, atol=tol)
    via_load = load_detector(tmp_path / "run" / "detector")  # the generic entry point finds the tuned tensors
    assert np.allclose([p for _, p, _ in via_load.predict_paths(paths, num_workers=0, progress=False)], expected,
                       atol=tol)
    stripped = tmp_path / "stripped"
    shutil.copytree(tmp_path / "run" / "detector", stripped)
    (stripped / "backbone.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="finetuned detector without backbone.safetensors"):
        load_detector(stripped)  # without the tuned tensors it must refuse, not guess


def test_an_interrupted_run_resumes_where_it_stopped(tiny, items, tmp_path: Path) -> None:
    train, val = items
    cfg = config(epochs=3)

    def crash_after_first(record: dict) -> None:
        if record["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(fresh(tiny), train, val, cfg, tmp_path / "run", on_epoch_end=crash_after_first, progress=False)
    seen: list[int] = []
    resumed = finetune(fresh(tiny), train, val, cfg, tmp_path / "run", on_epoch_end=lambda r: seen.append(r["epoch"]),
                       progress=False)
    assert seen == [1, 2] and [r["epoch"] for r in resumed.history] == [0, 1, 2]
    straight = finetune(fresh(tiny), train, val, cfg, tmp_path / "straight", progress=False)

    def drop_time(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert drop_time(resumed.history) == drop_time(straight.history)  # same batches, same RNG: the same run
    assert resumed.detector.card.weights_id == straight.detector.card.weights_id
    again = finetune(fresh(tiny), train, val, cfg, tmp_path / "run", on_epoch_end=seen.append, progress=False)
    assert seen == [1, 2] and again.best == resumed.best  # a finished run is not trained again
    with pytest.raises(ValueError, match="another config"):
        finetune(fresh(tiny), train, val, config(epochs=3, seed=1), tmp_path / "run", progress=False)


def test_full_finetuning_of_a_cnn(items, tmp_path: Path, capsys: pytest.CaptureFixture,
                                  caplog: pytest.LogCaptureFixture) -> None:
    train, val = items
    bb = create_backbone("timm:resnet18", pretrained=False, preprocess=Preprocess(size=32), device="cpu")
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    with caplog.at_level("INFO", logger="synthdet.training.finetune"):
        result = finetune(bb, train, val, config(unfreeze_blocks="all", head="linear", augment="strong"),
                          tmp_path / "run")
    assert capsys.readouterr().err == ""  # a library call draws no progress bars unless asked
    assert "train views: random square crop" in caplog.text  # the run says what the model saw
    assert not list((tmp_path / "run").glob(".*.tmp"))  # checkpoints were written whole, then renamed
    after = bb.model.state_dict()
    assert set(result.trainable) == {n for n, _ in bb.model.named_parameters()}
    assert all(not torch.equal(before[n], after[n]) for n in result.trainable)
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # BatchNorm trained too
    assert len(list(result.detector.predict_paths([p for p, _ in val], num_workers=0, progress=False))) == len(val)


def test_command_fine_tunes_a_folder_and_scores_the_held_out_split(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from conftest import make_labelled_folder
    from typer.testing import CliRunner

    from synthdet.cli.finetune import finetune_command
    from synthdet.data.manifest import index, read_manifest, three_way_split

    name, weights = tiny
    data = make_labelled_folder(tmp_path / "data", n_real=10, n_fake=10)
    monkeypatch.chdir(tmp_path)  # the data given by a relative path: the saved manifest must still find it
    data = data.relative_to(tmp_path)
    app = typer.Typer()
    app.command()(finetune_command)
    app.command("other")(lambda: None)  # two commands: the sub-command name is part of the call, as in synthdet
    out = tmp_path / "run"
    args = ["finetune-command", str(data), "-o", str(out), "--backbone", name, "--weights", str(weights),
            "--unfreeze", "1", "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "held-out test: ROC AUC" in res.output
    det = load_finetuned(out / "detector", device="cpu")
    held_out = int((three_way_split(index(data)) == "test").sum())  # 4 images, more when near-duplicates group
    assert set(det.card.metrics) == {"calib", "val"} and det.card.metrics["val"]["n"] == held_out >= 4
    saved = read_manifest(out / "detector" / "manifest.csv")  # read back from another working directory
    monkeypatch.chdir(out)
    assert len(saved) == 20 and all(Path(p).is_file() for p in saved["path"])
    monkeypatch.chdir(tmp_path)
    bad = CliRunner().invoke(app, [*args[:-6], "--unfreeze", "-3"])
    assert bad.exit_code != 0 and "unfreeze_blocks" in bad.output
