"""``synthdet evaluate`` and ``synthdet report``: evaluation runs with robustness slices, and their HTML reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from synthdet.cli._io import Json, Quiet, console, note, print_json, say, skipped
from synthdet.data.perturbations import DEFAULT_SLICES, SLICES
from synthdet.data.provenance import HELD_OUT, describe_rows
from synthdet.evaluation.runs import CLEAN

if TYPE_CHECKING:
    from rich.table import Table

    from synthdet.data.provenance import OnOverlap
    from synthdet.evaluation.runs import EvalRun


def _slice_names(values: Sequence[str]) -> list[str]:
    """``-s jpeg85 -s launder``, ``-s jpeg85,launder``, ``-s all`` or ``-s none``."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if names == ["none"]:
        return []
    return list(SLICES) if names == ["all"] else names


def _num(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.3f}"


def _summary(run: EvalRun) -> list[dict[str, Any]]:
    """One record per condition: n, ROC AUC with its 95% CI, F1 and accuracy, and their change from clean."""
    rows = []
    for s, row in run.deltas().iterrows():
        lo, hi = run.metrics[s].get("ci", {}).get("roc_auc", (float("nan"),) * 2)
        rows.append({"slice": s, "n": int(row.n), "roc_auc": row.roc_auc, "roc_auc_ci": [lo, hi],
                     "roc_auc_delta": row.roc_auc_delta, "f1": row.f1, "f1_delta": row.f1_delta,
                     "accuracy": row.accuracy, "accuracy_delta": row.accuracy_delta})
    return rows


def _summary_table(run: EvalRun) -> Table:
    from rich.markup import escape
    from rich.table import Table

    label = "" if run.rows["status"] == HELD_OUT else f" \\[{run.rows['status']}]"  # on every figure of the table
    table = Table(title=f"{escape(run.name)}{label} — threshold {run.threshold:.3f}",
                  caption=f"rows: {escape(describe_rows(run.rows))}")
    for col in ("slice", "n", "ROC AUC", "95% CI", "Δ AUC", "F1", "Δ F1", "accuracy", "Δ acc"):
        table.add_column(col, justify="left" if col == "slice" else "right")
    for r in _summary(run):
        clean = r["slice"] == CLEAN
        table.add_row(r["slice"], str(r["n"]), _num(r["roc_auc"]), "–".join(map(_num, r["roc_auc_ci"])),
                      "" if clean else f"{r['roc_auc_delta']:+.3f}", _num(r["f1"]),
                      "" if clean else f"{r['f1_delta']:+.3f}", _num(r["accuracy"]),
                      "" if clean else f"{r['accuracy_delta']:+.3f}")
    return table


def _sidbench(run: EvalRun) -> dict[str, dict[str, float]]:
    from synthdet.evaluation.metrics import sidbench_metrics

    return sidbench_metrics(run.metrics[CLEAN])


def _sidbench_table(run: EvalRun) -> Table:
    """The organisers' metric set (SIDBench) on the clean rows, at the threshold, at 0.5 and at the F1 oracle."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="SIDBench metric set (clean) — decision prob ≥ threshold, the label a submission carries",
                  caption=f"rows: {escape(describe_rows(run.rows))}")
    cols = ("accuracy", "real_accuracy", "fake_accuracy", "precision", "recall", "f1", "roc_auc", "ap", "eer")
    for col in ("decision", "threshold", *cols):
        table.add_column(col.replace("_", " "), justify="left" if col == "decision" else "right")
    for point, m in _sidbench(run).items():
        table.add_row(point.replace("at_", "at "), _num(m["threshold"]), *(_num(m[c]) for c in cols))
    return table


def _one_class_table(run: EvalRun) -> Table:
    """A one-class set (all generated, or all real): per condition the share called correctly at the threshold (TPR
    or TNR) with its CI and change from clean, and the score quantiles; the caption says why AUC is absent."""
    from rich.markup import escape
    from rich.table import Table

    oc = run.metrics[CLEAN]["one_class"]
    label = "" if run.rows["status"] == HELD_OUT else f" \\[{run.rows['status']}]"
    table = Table(title=f"{escape(run.name)}{label} — one-class set, {oc['rate_name']} at threshold {run.threshold:.3f}",
                  caption=f"rows: {escape(describe_rows(run.rows))}\n{escape(oc['why_no_auc'])}")
    for col in ("slice", "n", oc["rate_name"], "95% CI", f"Δ {oc['rate_name']}", "p10", "median", "p90"):
        table.add_column(col, justify="left" if col == "slice" else "right")
    base = oc["rate"]
    for s, m in run.metrics.items():
        rec = m.get("one_class")
        if rec is None:
            continue
        q = rec["distribution"]["quantiles"]
        table.add_row(s, str(m["n"]), _num(rec["rate"]), "–".join(map(_num, rec["ci"] or (float("nan"),) * 2)),
                      "" if s == CLEAN else f"{rec['rate'] - base:+.3f}", _num(q["p10"]), _num(q["p50"]), _num(q["p90"]))
    return table


def evaluate(
    detector: Annotated[Path | None, typer.Argument(help="Detector folder (omit for the shipped default).")] = None,
    data: Annotated[Path | None, typer.Argument(help="Folder (0_real/1_fake, real/fake), CSV path,label or manifest.")] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder to write (scores, metrics, report.html).")] = Path("eval-run"),
    slices: Annotated[list[str], typer.Option(
        "-s", "--slice", help=f"Slice(s), repeatable or comma-separated; 'all' or 'none'. Known: {', '.join(SLICES)}.",
    )] = list(DEFAULT_SLICES),  # noqa: B006 - typer shows and copies the default
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals (0: none).")] = 1000,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers (default: up to 4).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    split: Annotated[str | None, typer.Option(help="Only rows of this split (e.g. 'test' in the manifest.csv a trained detector saved).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name in reports (default: the output folder's name).")] = None,
    thumbnails: Annotated[bool, typer.Option(help="Show the hardest errors as images in the report.")] = True,
    on_overlap: Annotated[str, typer.Option(help="Images the detector was fitted/calibrated on: refuse, drop them, "
                                                 "or flag every figure in-sample.")] = "refuse",
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Score DATA clean and under robustness slices; write the run folder and its HTML report."""
    from synthdet.evaluation.runs import run_evaluation
    from synthdet.reporting.html import render_report

    if data is None:  # one positional: it is the data, scored by the shipped detector
        detector, data = None, detector
    if data is None:
        raise typer.BadParameter("give DATA (and optionally a DETECTOR folder before it)")
    run = run_evaluation(detector, data, out, slices=_slice_names(slices), bootstrap=bootstrap,
                         batch_size=batch_size, num_workers=workers, split=split, name=name,
                         on_overlap=cast("OnOverlap", on_overlap), progress=not quiet)
    report = render_report([run], Path(out) / "report.html", thumbnails=thumbnails)
    for r in run.skipped.itertuples():
        skipped(r.path, f"({r.slice}) {r.reason}")
    if dropped := run.info["rows"].get("dropped_seen"):
        note(f"dropped {dropped} images the detector was fitted or calibrated on (same content or near-duplicate); "
             f"every figure is on the {run.rows['n']} held-out images")
    one_class = "one_class" in run.metrics[CLEAN]
    if as_json:
        print_json({"run": str(out), "report": str(report), "threshold": run.threshold, "rows": run.rows,
                    "slices": _summary(run), "sidbench": _sidbench(run),
                    **({"one_class": {s: m["one_class"] for s, m in run.metrics.items() if "one_class" in m}}
                       if one_class else {})})
        return
    console().print(_one_class_table(run) if one_class else _summary_table(run))
    if not one_class:
        console().print(_sidbench_table(run))
    say(f"run → [bold]{out}[/]   report → [bold]{report}[/]")


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by `synthdet evaluate` (first = reference).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="HTML file to write.")] = Path("report.html"),
    thumbnails: Annotated[bool, typer.Option(help="Show the hardest errors as images in the report.")] = True,
    as_json: Json = False,
) -> None:
    """Render one self-contained HTML report comparing evaluation runs side by side."""
    from synthdet.evaluation.runs import EvalRun
    from synthdet.reporting.html import render_report

    loaded = [EvalRun.load(r) for r in runs]
    path = render_report(loaded, out, thumbnails=thumbnails)
    if as_json:
        print_json({"report": str(path), "runs": [{"name": r.name, "threshold": r.threshold, "rows": r.rows,
                                                    "slices": _summary(r)}
                                                   for r in loaded]})
        return
    for run in loaded:
        console().print(_summary_table(run))
    say(f"report → [bold]{path}[/]")

