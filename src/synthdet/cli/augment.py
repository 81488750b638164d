"""``synthdet augment-preview``: what each augmentation preset does to one image, as a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthdet.cli._io import fail, say
from synthdet.data.augment import PRESETS


def augment_preview(
    image: Annotated[Path, typer.Argument(help="Image to augment.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the contact sheet (PNG).")] = Path(
        "augment-preview.png"
    ),
    presets: Annotated[
        list[str] | None, typer.Option("--preset", "-p", help=f"Repeatable; default all: {', '.join(PRESETS)}.")
    ] = None,
    samples: Annotated[int, typer.Option("--samples", "-n", min=0, help="Random draws per preset.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for reproducible draws.")] = 0,
    tile: Annotated[int, typer.Option(min=16, help="Tile edge in pixels.")] = 256,
) -> None:
    """Write a contact sheet: one row per preset, the original then random augmented draws."""
    from synthdet.data.augment import preview
    from synthdet.io.pixels import ImageLoadError

    names = presets or list(PRESETS)
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise typer.BadParameter(
            f"unknown preset(s) {', '.join(unknown)}; valid presets: {', '.join(PRESETS)}", param_hint="--preset"
        )
    try:
        preview(image, out, names, n_samples=samples, seed=seed, tile=tile)
    except ImageLoadError as e:
        raise fail(f"cannot read {image}: {e.reason}" + (f" ({e.detail})" if e.detail else "")) from None
    say(f"wrote {out} ({len(names)} presets x {samples + 1} columns)")
