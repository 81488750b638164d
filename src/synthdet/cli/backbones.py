"""``synthdet backbones`` and ``synthdet weights``: what can extract features here, and fetching weights."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from synthdet.cli._io import Json, console, fail, print_json, say

#: Name patterns that reach any model of a library, listed after the registered backbones.
_GENERIC: tuple[dict[str, Any], ...] = (
    {"name": "timm:<model>", "description": "any timm model", "features": "pooled + per-block taps",
     "preprocessing": "from timm's config", "weights_here": None, "weights_from": "--weights FILE or HF cache"},
    {"name": "open_clip:<arch>/<tag>", "description": "any open_clip vision tower",
     "features": "pooled + block class tokens", "preprocessing": "from open_clip's config", "weights_here": None,
     "weights_from": "--weights FILE or HF cache"},
    {"name": "dualstream[-dct]:<model>", "description": "RGB model + FFT (or 8x8 block DCT) branch, for fine-tuning",
     "features": "[rgb pooled, freq 128]; freq + RGB taps", "preprocessing": "the RGB model's", "weights_here": None,
     "weights_from": "as the RGB model"},
)


def backbones(as_json: Json = False) -> None:
    """List every registered backbone, its features and preprocessing, and whether its weights are here."""
    from rich.markup import escape
    from rich.table import Table

    from synthdet.backbones.base import list_backbones

    rows: list[dict[str, Any]] = []
    for e in list_backbones():
        p = e.preprocess
        pre = (f"{p.size}px {p.mode} {p.resample}, JPEG q{p.jpeg_quality}, mean {tuple(round(m, 3) for m in p.mean)} "
               f"std {tuple(round(v, 3) for v in p.std)}") if p else "-"
        rows.append({"name": e.name, "description": e.description, "features": e.features, "preprocessing": pre,
                     "weights_here": e.weights_present(), "weights_from": e.weights_hint})
    rows += _GENERIC
    if as_json:
        print_json(rows)
        return
    table = Table("name", "description", "features", "preprocessing", "weights here", "weights from")
    for r in rows:
        here = "-" if r["weights_here"] is None else "yes" if r["weights_here"] else "[red]no[/]"
        table.add_row(*(escape(str(r[k])) for k in ("name", "description", "features", "preprocessing")), here,
                      escape(str(r["weights_from"])))
    console().print(table)


weights_app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Backbone weights: fetch into the Hugging Face cache where a hub is reachable.",
                          no_args_is_help=True)


@weights_app.command("fetch")
def weights_fetch(name: Annotated[str, typer.Argument(help="Backbone name, timm:<model> or open_clip:<arch>/<tag>.")]) -> None:
    """Download weights (needs internet); afterwards the backbone loads offline from the cache."""
    from synthdet.backbones.weights import fetch_weights

    try:
        fetch_weights(name)
    except RuntimeError as e:
        raise fail(str(e), code=1) from None
    say(f"{name}: weights are in the Hugging Face cache")
