"""``synthdet ensemble``: combine saved detectors by a rule into one calibrated detector."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from synthdet.data.provenance import OnOverlap

from synthdet.cli._io import Json, Quiet, console, note, print_json, say


def ensemble_command(
    members: Annotated[list[Path], typer.Argument(help="Two or more saved detector folders.")],
    calib: Annotated[Path, typer.Option(help="Labelled images unseen by the members (folder, CSV or manifest): the "
                                             "ensemble threshold is the F1-optimal one there.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Ensemble detector folder to write.")],
    rule: Annotated[str, typer.Option(help="mean | majority | weighted-majority")] = "mean",
    weights: Annotated[str | None, typer.Option(help="Comma-separated member weights, e.g. 0.3,0.7 (default: equal; "
                                                     "weighted-majority: each member's validation F1).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int | None, typer.Option(min=0, help="DataLoader workers.")] = None,
    on_overlap: Annotated[str, typer.Option(help="Calibration images a member has seen: refuse, drop them, or "
                                                       "flag the ensemble's figures in-sample.")] = "refuse",
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Combine saved detectors by a rule into one detector, calibrated on held-out images."""
    from rich.table import Table

    from synthdet.data.provenance import describe_rows
    from synthdet.training.ensemble import build_ensemble

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        raise typer.BadParameter(f"--weights must be comma-separated numbers, not {weights!r}") from None
    ens = build_ensemble(members, calib=calib, out=out, rule=rule, weights=w, batch_size=batch_size,
                         num_workers=workers, on_overlap=cast("OnOverlap", on_overlap),
                         progress=not quiet)
    for name, n in ens.card.data["calib"]["seen_by_members"].items():
        if n:
            note(f"[yellow]warning[/] {name} was fitted or calibrated on {n} of the calibration images: its "
                 f"scores there are optimistic, and so is the ensemble's threshold")
    cal = ens.card.metrics["calib"]
    if as_json:
        print_json({"ensemble": str(out), "rule": rule, "threshold": ens.threshold, "weights": ens.card.weights,
                    "calib": cal, "members": ens.card.metrics["members"]})
        return
    table = Table(title=f"ensemble ({rule}) on the calibration data: n={cal['n']} ({cal['n_fake']} fake)")
    for col in ("member", "detector", "weight", "threshold", "ROC AUC", "AP", "F1"):
        table.add_column(col, justify="left" if col in ("member", "detector") else "right")
    for name, m, wt in zip(ens.card.names, ens.members, ens.card.weights):
        mm = ens.card.metrics["members"][name]
        table.add_row(name, f"{m.card.backbone} + {m.card.head} ({m.card.features})", f"{wt:.3f}",
                      f"{mm['threshold']:.3f}", f"{mm['roc_auc']:.4f}", f"{mm['ap']:.4f}", f"{mm['f1']:.4f}")
    table.add_section()
    table.add_row("ensemble", rule, "", f"{ens.threshold:.3f}", f"{cal['roc_auc']:.4f}", f"{cal['ap']:.4f}",
                  f"{cal['at_threshold']['f1']:.4f}")
    table.caption = (f"rows: {describe_rows(cal['rows'])}. F1 at each member's own threshold; the ensemble's "
                     f"threshold is F1-optimal here (optimistic)")
    console().print(table)
    say(f"ensemble saved → [bold]{out}[/]  (score with: synthdet predict {out} IMAGES...)")
