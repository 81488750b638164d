"""``synthdet submit``: write a MediaEval Task A submission for a test folder and validate it, or only validate.

With ``--team NAME --run constrained|open`` the run is written as handed in: ``NAME_RUN.zip`` holding one CSV, and
beside it ``NAME_RUN.run.txt`` saying which data and which detector made it (from the detector's card).

Every test image gets a row, as the organisers require. An image that cannot be scored is reported like every
other skip (``skipped PATH: reason`` on stderr) and its row gets the detector's prior (the share of generated
images it was trained on) with the label that prior implies at the detector's threshold; the line says both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from synthdet.cli._io import Quiet, console, fail, say, skipped

if TYPE_CHECKING:
    from synthdet.reporting.submission_check import CheckReport


def _print_report(report: CheckReport, title: str) -> None:
    from rich.markup import escape

    out = console()
    out.print(f"[bold]{escape(title)}[/bold]: {report.n_rows} row(s)")
    for message in report.errors:
        out.print(f"[red]error[/red]   {escape(message)}")
    for message in report.warnings:
        out.print(f"[yellow]warning[/yellow] {escape(message)}")
    if report.ok:
        out.print("[green]OK[/green]: no errors")
    else:
        out.print(f"[red]FAILED[/red]: {len(report.errors)} error(s)")


def _check(file: Path, images: Path | None, masks: Path | None) -> None:
    from synthdet.reporting.submission_check import check_task_a, check_task_a_zip, check_task_b
    from synthdet.reporting.submit import MASKS_ZIP_SUFFIX

    if masks is None and file.name.endswith(MASKS_ZIP_SUFFIX):  # a Task B zip: its scores.csv lies beside it
        file, masks = file.with_name("scores.csv"), file
    if masks is None and file.suffix.lower() == ".zip":
        report, title = check_task_a_zip(file, images), f"Task A {file}"
    elif masks is None:
        report, title = check_task_a(file, images), f"Task A {file}"
    elif images is None:
        raise typer.BadParameter("mask shapes are checked against the images: pass --images too",
                                 param_hint="--images")
    else:
        report, title = check_task_b(masks, file, images), f"Task B {masks} + {file}"
    _print_report(report, title)
    if not report.ok:
        raise typer.Exit(code=1)


def submit(
    paths: Annotated[list[Path] | None, typer.Argument(
        help="[DETECTOR] TESTDIR: a detector folder (default: the shipped one) and the test images.")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Task A CSV to write (default submission.csv); with "
                                                                  "--team the folder for the zip (default: here).")] = None,
    team: Annotated[str | None, typer.Option(help="Team name: write TEAM_RUN.zip (one CSV inside, as handed in) and "
                                                  "its run description TEAM_RUN.run.txt.")] = None,
    run: Annotated[str | None, typer.Option(help="With --team: constrained (only the official training data) or "
                                                 "open (any data).")] = None,
    check: Annotated[Path | None, typer.Option(
        "--check", help="Validate this Task A CSV or TEAM_RUN.zip, or a Task B TEAM_localization_masks.zip (its "
                        "scores.csv beside it; or scores.csv with --masks), instead of writing one.")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Test images directory for --check.")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="Task B <team>_localization_masks.zip (with --check).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass.")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers.")] = None,
    runtime: Annotated[str, typer.Option(help="auto (onnxruntime from the detector's ONNX graph when it has one, "
                                         "else torch), torch or onnx.")] = "auto",
    quiet: Quiet = False,
) -> None:
    """Write a MediaEval Task A submission for every test image, then validate it; or only validate (--check).

    An image that cannot be scored still gets a row (the organisers require every test image): the detector's
    prior, labelled by that prior at the threshold; stderr names the file, the reason and the value written.
    """
    if check is not None:
        _check(check, images, masks)
        return
    from synthdet.engines.base import scoring_engine
    from synthdet.io.pixels import IMAGE_SUFFIXES
    from synthdet.reporting.runcard import describe_run, write_run_description
    from synthdet.reporting.submit import (
        RUNS,
        list_test_images,
        missing_row,
        task_a_zip_name,
        write_task_a,
        write_task_a_zip,
    )

    if (team is None) != (run is None):
        raise fail(f"--team and --run go together (--run {' or '.join(RUNS)})")
    if run is not None:
        task_a_zip_name(team or "", run)  # a bad team or run name fails before any scoring
    paths = list(paths or [])
    detector = paths.pop(0) if len(paths) == 2 else None
    if len(paths) != 1 or not paths[0].is_dir():
        raise typer.BadParameter("expected [DETECTOR] TESTDIR, with TESTDIR a folder of test images")
    test_dir = paths[0]
    files = list_test_images(test_dir)
    if not files:
        raise fail(f"{test_dir}: no test images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    det: Any = scoring_engine(runtime, detector).load(detector)
    prior = det.card.prior
    fill, label = missing_row(prior, det.threshold)
    rows = []
    for path, prob, reason in det.predict_paths(files, batch_size=batch_size, num_workers=workers,
                                                progress=not quiet):
        if prob is None:
            skipped(path, f"{reason}; its row gets the detector's prior {fill:g} → label {label} "
                          f"({'generated' if label else 'real'}) at threshold {det.threshold:.3f}")
        rows.append((path, prob))
    if team is None or run is None:
        written = write_task_a(rows, det.threshold, out or Path("submission.csv"), prior=prior)
    else:
        written = write_task_a_zip(rows, det.threshold, out or Path("."), team, run, prior=prior)
        text = describe_run(written, team=team, task="A", run=run, detector=str(detector or "shipped default"),
                            card=det.card, n_rows=len(rows), test_dir=test_dir, threshold=det.threshold)
        say(f"run description → {write_run_description(written, text)}")
    _check(written, test_dir, None)
