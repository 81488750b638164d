"""``synthdet recipes``: named configs reproducing every system of the working notes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthdet.cli._io import Json, console, note, print_json

app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Named configs reproducing every system of the working notes.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: Json = False) -> None:
    """Every recipe, its steps and the paper section it reproduces."""
    from rich.markup import escape
    from rich.table import Table

    from synthdet.backbones.base import weights_available
    from synthdet.training.recipes import load_recipes, step_backbone

    recipes = load_recipes().values()
    if as_json:
        print_json([{**r.model_dump(mode="json"),
                     "weights_here": {s.id: weights_available(b) for s in r.steps if (b := step_backbone(s))}}
                    for r in recipes])
        return
    table = Table("recipe", "steps", "reproduces", title="synthdet recipes")
    for r in recipes:
        steps = []
        for s in r.steps:
            bb = step_backbone(s)
            mark = "" if bb is None or weights_available(bb) else " [yellow](→ effnet-lite2)[/]"
            steps.append(f"{escape(s.id)}: {s.kind}{' ' + escape(bb) if bb else ''}{mark}")
        table.add_row(f"[bold]{escape(r.name)}[/]\n{escape(r.title)}", "\n".join(steps), escape(r.cites))
    console().print(table)


@app.command("show")
def show_cmd(name: Annotated[str, typer.Argument(help="Recipe name.")]) -> None:
    """The full config of one recipe, as JSON."""
    from synthdet.training.recipes import get_recipe

    try:
        recipe = get_recipe(name)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    print_json(recipe.model_dump(mode="json"))


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Recipe name (see `synthdet recipes list`).")],
    data: Annotated[list[Path], typer.Argument(help="Training data: folders, CSVs or manifests (several are mixed).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder (one subfolder per step; resumable).")] = Path("recipe-run"),
    indomain: Annotated[Path | None, typer.Option(help="Small labelled in-domain set (two-stage steps, in-domain probes, ensemble calibration).")] = None,
    step: Annotated[list[str] | None, typer.Option("--step", help="Run only these steps (and what they need).")] = None,
    fallback: Annotated[str, typer.Option(help="Backbone used where a step's weights are absent.")] = "effnet-lite2",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the epochs of fine-tuning steps (e.g. 1 for a smoke run).")] = None,
    train_steps: Annotated[int | None, typer.Option(min=1, help="Override the training steps of localize steps.")] = None,
    cache: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers.")] = None,
    as_json: Json = False,
) -> None:
    """Run a recipe end to end on your data."""
    from rich.markup import escape
    from rich.table import Table

    from synthdet.training.recipes import run_recipe

    try:
        record = run_recipe(name, data, out=out, indomain=indomain, steps=step, fallback=fallback, epochs=epochs,
                            train_steps=train_steps, cache_dir=cache, num_workers=workers, log=lambda m: note(escape(m)))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if as_json:
        print_json(record)
        return
    table = Table("step", "kind", "backbone", "ROC AUC", "AP", "F1 (tuned)", "pixel F1", "rows", title=f"{name} → {out}",
                  caption="figures on held-out rows only; others are in recipe.json under not_held_out; localize "
                          "steps: image-level ROC AUC and F1 from the mask, pixel F1 at the tuned threshold")
    for sid, entry in record["steps"].items():
        m = entry.get("metrics", {})
        keys = (("image_roc_auc", "-", "image_f1", "pixel_f1") if entry["kind"] == "localize"
                else ("roc_auc", "ap", "f1_tuned", "-"))
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), float) else "-" for k in keys]
        rows = m.get("rows", {})
        table.add_row(sid, entry["kind"], str(entry["backbone"] or "-"), *cells,
                      f"{rows.get('role', '')} {rows.get('status', '-')} n={rows.get('n', '?')}")
    console().print(table)
