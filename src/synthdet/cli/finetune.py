"""``synthdet finetune``: fine-tune a backbone with a head from images (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthdet.cli._io import Quiet, say
from synthdet.data.augment import PRESETS
from synthdet.training.finetune import RECIPES, finetune_detector, recipe_config


def finetune_command(
    data: Annotated[list[Path], typer.Argument(
        help="Training data: folders (0_real/1_fake, real/fake), CSVs or manifests; several are mixed.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoints, and the detector in detector/.")],
    recipe: Annotated[str | None, typer.Option(
        help=f"A published setup ({', '.join(RECIPES)}): its backbone and settings; options override it.")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Name, timm:<model>, open_clip:<arch>/<tag> or dualstream:<model> [default: the recipe's, else "
             "effnet-lite0].")] = None,
    weights: Annotated[Path | None, typer.Option(help="Backbone weights file.")] = None,
    init: Annotated[Path | None, typer.Option(
        help="Continue from a trained detector folder (two-stage training); unset learning rates default to a "
             "tenth of its run's.")] = None,
    data_weight: Annotated[list[float] | None, typer.Option(
        "--data-weight", help="Share of training draws per DATA, in order (repeat once per DATA).")] = None,
    val_data: Annotated[Path | None, typer.Option(
        help="Source for epoch selection, threshold and held-out metrics [default: the first DATA].")] = None,
    head: Annotated[str | None, typer.Option(
        help="fusion (pooled + every block), or linear, residual, deep (pooled) [default: fusion].")] = None,
    unfreeze: Annotated[str | None, typer.Option(help="Last N blocks to train, or 'all' [default: 2].")] = None,
    preprocess: Annotated[str | None, typer.Option(
        help="letterbox (training: random-aspect crops, long side to size, zero-padded; inference: centre crop) or "
             "crop [default: the recipe's, else the backbone's: crop].")] = None,
    size: Annotated[int | None, typer.Option(min=16, help="Input size in pixels [default: the backbone's].")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="[default: 3]")] = None,
    patience: Annotated[int | None, typer.Option(
        min=1, help="Stop after N epochs without a better calib ROC AUC [default: never].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="[default: 16]")] = None,
    head_lr: Annotated[float | None, typer.Option(help="[default: 3e-4]")] = None,
    backbone_lr: Annotated[float | None, typer.Option(help="[default: 1e-5]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[default: 1e-4]")] = None,
    augment: Annotated[str | None, typer.Option(
        help=f"Preset before the random view: {', '.join(PRESETS)} [default: lean2026].")] = None,
    seed: Annotated[int | None, typer.Option(help="Training seed (the split keeps seed 42) [default: 1337].")] = None,
    num_workers: Annotated[int | None, typer.Option(help="DataLoader workers.")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="Continue an interrupted run in OUT.")] = True,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a backbone with a head, from images; keep the best epoch by validation ROC AUC."""
    try:
        cfg = recipe_config(
            recipe, unfreeze_blocks=unfreeze, head=head, preprocess=preprocess, image_size=size, epochs=epochs,
            patience=patience, batch_size=batch_size, head_lr=head_lr, backbone_lr=backbone_lr,
            weight_decay=weight_decay, augment=augment, seed=seed, num_workers=num_workers,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if data_weight is not None and len(data_weight) != len(data):
        raise typer.BadParameter(f"{len(data_weight)} --data-weight for {len(data)} DATA; give one per DATA")
    if init is not None and (backbone is not None or weights is not None):
        raise typer.BadParameter("--init names its own backbone and weights; pass neither --backbone nor --weights")
    if backbone is None and recipe is not None and init is None:
        backbone = RECIPES[recipe].backbone
    result, metrics = finetune_detector(data, data_weights=data_weight, val_data=val_data, backbone=backbone,
                                        weights=weights, init=init, cfg=cfg, out=out, resume=resume,
                                        progress=not quiet)
    b = result.best
    say(f"best epoch {b['epoch'] + 1}: calib ROC AUC {b['val_auc']:.4f}, AP {b['val_ap']:.4f}")
    at = metrics["at_threshold"]
    say(f"held-out test: ROC AUC {metrics['roc_auc']:.4f}, AP {metrics['ap']:.4f}, F1 {at['f1']:.4f} "
        f"at threshold {at['threshold']:.3f} (n={metrics['n']})")
    say(f"detector: {out / 'detector'} (score with: synthdet predict {out / 'detector'} IMAGES...)")
