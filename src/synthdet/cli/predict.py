"""``synthdet predict``: a verdict for one image, Task A rows for many.

Rows stream as images are scored, to ``-o FILE`` (a temporary file renamed at the end: on failure no output file
remains) or to stdout. Files that cannot be scored are skipped, one ``skipped PATH: reason`` line each on stderr
and, with ``-o``, listed in ``FILE.skipped.csv`` beside it. A file whose name is not valid UTF-8 is skipped for
that reason: it has no faithful form in a UTF-8 CSV.

Exit codes: 0 at least one image scored; 1 none could be scored (no output file then); 2 usage or input error
(a named path does not exist, a folder holds no images, DETECTOR is not a detector).

``-o FILE.parquet`` or ``--resume`` stream through :func:`synthdet.engines.stream.score_stream`: the listing is scanned as it
goes, rows land in parts beside ``FILE`` as they are scored, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from synthdet.cli._io import Json, Quiet, console, fail, note, print_json, skipped


def predict(
    paths: Annotated[list[Path], typer.Argument(
        exists=True, metavar="PATHS", help="[DETECTOR] then image files, folders or a CSV with a path column.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="CSV to write (image_id,prob,label,threshold).")] = None,
    detector: Annotated[Path | None, typer.Option("-d", "--detector", help="Detector folder (default: the shipped one).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers (default: up to 4; 0: decode in this process).")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels.")] = 100_000_000,
    assess: Annotated[bool, typer.Option("--assess", help="A verdict in words per image: stability checks, "
                                         "uncertainty band, evidence (EXIF, JPEG quality, C2PA).")] = False,
    checks: Annotated[str | None, typer.Option("--checks", help="With --assess: quick (default; one re-shared copy: "
                                               "crop, 0.5x resize, JPEG 75 at once), full (the three apart: 3 "
                                               "forward passes more) or off.")] = None,
    heatmap: Annotated[bool, typer.Option("--heatmap", help="With --assess: 3x3 patch scores too.")] = False,
    localize: Annotated[bool, typer.Option("--localize", help="With --assess: was a region edited, and how much "
                                           "(Task B map: the shipped localizer, or --localizer).")] = False,
    localizer: Annotated[Path | None, typer.Option("--localizer", help="With --assess --localize: a localizer "
                                                   "folder (default: the shipped one).")] = None,
    as_json: Json = False,
    resume: Annotated[bool, typer.Option("--resume", help="Keep what an earlier (killed) run of -o wrote; score the "
                                         "rest (see synthdet.engines.stream).")] = False,
    rows_per_part: Annotated[int, typer.Option(min=1, help="With --resume / parquet: rows per part written (at most "
                                               "this much work is lost to a kill).")] = 1024,
    runtime: Annotated[str, typer.Option(help="auto: onnxruntime from the detector's ONNX graph when it has one "
                                         "(or one can be exported here, once), else torch; torch; or onnx (DETECTOR "
                                         "may be an exported .onnx file).")] = "auto",
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data: decoding tasks + backbone actors; needs -o).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: a local Ray).")] = None,
    actors: Annotated[int, typer.Option(min=1, help="--engine ray: backbone actors (give Ray one CPU more than this).")] = 1,
    quiet: Quiet = False,
) -> None:
    """Score images. One file prints a verdict; several stream the MediaEval Task A CSV to -o (or stdout)."""
    from synthdet.data.inputs import iter_inputs
    from synthdet.engines.base import create_engine, scoring_engine
    from synthdet.io.atomic import atomic_open, printable
    from synthdet.reporting.submit import write_scores

    if detector is None and paths and ((paths[0] / "card.json").is_file() or paths[0].suffix.lower() == ".onnx"):
        detector, paths = paths[0], paths[1:]
    elif detector is None and paths and (why := _not_an_input(paths[0])):
        raise fail(f"{paths[0]}: {why}; the first argument is a DETECTOR (a folder with card.json, or an .onnx "
                   "graph) or an image, folder of images or CSV listing")
    if not paths:
        raise fail("no images given")
    if heatmap and not assess:
        raise fail("--heatmap adds patch scores to --assess: give both")
    if checks is not None and not assess:
        raise fail("--checks sets --assess's stability checks: give both")
    if checks is not None:
        from synthdet.detectors.assess import check_names

        try:
            check_names(checks)
        except ValueError as e:
            raise fail(f"--{e}") from None
    if (localize or localizer is not None) and not assess:
        raise fail("--localize adds the edited region to --assess: give both")
    if out is not None and not out.parent.is_dir():
        raise fail(f"-o {out}: folder {out.parent} does not exist")
    if engine not in ("local", "ray"):
        raise fail(f"--engine {engine!r}: local or ray")
    if engine == "ray" and out is None:
        raise fail("--engine ray writes -o FILE (.parquet or .csv)")
    if assess and (out is not None or engine != "local"):
        raise fail("--assess prints assessments (--json for JSON); -o writes Task A files: use one or the other")
    runner = (create_engine("ray", actors=actors, address=ray_address) if engine == "ray"
              else scoring_engine(runtime, detector))
    det: Any = runner.load(detector)
    if assess:
        loc = None
        if localize or localizer is not None:
            from synthdet.localization.graph import open_localizer

            loc = open_localizer(localizer, runtime=runtime)
        _assess(det, list(iter_inputs(paths)), checks=checks or "quick", heatmap=heatmap, as_json=as_json,
                max_pixels=max_pixels, loc=loc)
        return
    if out is not None and (resume or out.suffix.lower() == ".parquet" or engine == "ray"):
        _stream(det, paths, out, resume=resume, rows_per_part=rows_per_part, batch_size=batch_size, num_workers=workers, max_pixels=max_pixels,
                quiet=quiet)
        return
    if resume:
        raise fail("--resume needs -o FILE (.parquet or .csv)")
    single = len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() != ".csv" and out is None
    results = det.predict_paths(iter_inputs(paths), batch_size=batch_size, num_workers=0 if single else workers,
                                max_pixels=max_pixels, progress=not (single or quiet))
    if single:
        path, prob, reason = next(results)
        if prob is None:
            raise fail(f"{path}: cannot be scored: {reason}", code=1)
        from synthdet.detectors.assess import band_of, band_verdict

        (low, high), _ = band_of(det)  # the words --assess uses for the same score (without its checks)
        console().print(f"{printable(Path(path).name)}: [bold]{band_verdict(prob, det.threshold, (low, high))}[/]  "
                        f"(p_fake={prob:.3f}, threshold {det.threshold:.3f}, uncertain within [{low:.3f}, {high:.3f}]; "
                        "stability checks: --assess)")
        return

    skips: list[tuple[str, str]] = []

    def skip(path: str, reason: str) -> None:
        skips.append((path, reason))
        skipped(path, reason)

    with atomic_open(out) if out else nullcontext(sys.stdout) as f:
        if (n := write_scores(results, det.threshold, f, skip)) == 0:  # raised inside: atomic_open leaves no file
            raise fail(f"no image could be scored ({len(skips)} skipped)" + (f"; {out} not written" if out else ""),
                       code=1)
    if out:
        _write_skips(skips, out.with_name(out.name + ".skipped.csv"))
    note(f"{n} scored{f' → {printable(out)}' if out else ''}, {len(skips)} skipped"
         f"{f' → {printable(out)}.skipped.csv' if out and skips else ''}")


def _assess(det: Any, paths: list[Path], *, checks: str, heatmap: bool, as_json: bool, max_pixels: int,
            loc: Any = None) -> None:
    """Print one assessment per image (``--json``: a list of them), with ``loc`` (a localizer) the edited region's
    summary too; exit 1 when none could be assessed."""
    from rich.markup import escape

    from synthdet.detectors.assess import assess_images
    from synthdet.io.atomic import printable
    from synthdet.io.pixels import ImageLoadError, load_image

    results, located = [], []
    chunks = (paths[i:i + 16] for i in range(0, len(paths), 16))  # one batched scoring pass per 16 images
    for path, a in ((p, r) for chunk in chunks
                    for p, r in zip(chunk, assess_images(det, chunk, checks=checks, heatmap=heatmap,
                                                                       max_pixels=max_pixels))):
        if isinstance(a, ImageLoadError):
            skipped(path, a.reason + (f": {a.detail}" if a.detail else ""))
            continue
        results.append(a)
        where = loc.summary(loc.predict_image(load_image(path, max_pixels=max_pixels))) if loc is not None else None
        located.append(where)
        if as_json:
            continue
        out = console()
        out.print(f"[bold]{escape(printable(a.name))}[/]: [bold]{a.verdict}[/]  (p_fake={a.probability:.3f}, "
                  f"threshold {a.threshold:.3f}, band [{a.band[0]:.3f}, {a.band[1]:.3f}]: {a.band_source})")
        for r in a.reasons:
            out.print(f"  because {escape(r)}")
        for c in a.checks:
            out.print(f"  check {c.name:<10} p={c.probability:.3f} {c.label:<9} {'agrees' if c.agrees else 'DISAGREES'}"
                      f"  ({escape(c.description)})")
        if a.evidence is not None:
            ev = a.evidence
            jpeg = (f"; JPEG quality ~{ev.jpeg.quality} ("
                    f"{'standard IJG tables' if ev.jpeg.standard else 'non-standard tables'})" if ev.jpeg else "")
            out.print(f"  evidence (not in the score): format {ev.format}; camera {escape(ev.exif.camera or 'none')}; "
                      f"software {escape(ev.exif.software or 'none')}{jpeg}; C2PA {ev.c2pa.status}"
                      f"{': ' + escape(ev.c2pa.detail) if ev.c2pa.status != 'absent' else ''}")
        if a.heatmap is not None:
            out.print("  heatmap (3x3 tiles, p_fake): " + " / ".join(" ".join(f"{x:.2f}" for x in row)
                                                                      for row in a.heatmap.scores))
        if where is not None:
            out.print(f"  edited region (Task B localizer): [bold]{where['verdict']}[/]  ({escape(where['words'])})")
    if as_json:
        print_json([{**a.model_dump(mode="json"), **({"localization": w} if w is not None else {})}
                    for a, w in zip(results, located)])
    if not results:
        raise fail(f"no image could be assessed ({len(paths)} skipped)", code=1)


def _not_an_input(path: Path) -> str:
    """Why ``path`` is neither a detector nor something to score (a model file, a detector folder without its
    card), or "" when it may be scored: it must not pass silently as an image that is then skipped."""
    from PIL import Image

    from synthdet.io.pixels import is_image_path

    if path.is_dir():
        if any(path.glob("*.safetensors")) or (path / "plan.json").is_file():
            return "a detector folder without its card.json (copy the whole folder)"
        return ""
    if path.suffix.lower() in (".csv", ".tsv") or is_image_path(path):
        return ""
    try:  # an image under another name is still an image
        with Image.open(path):
            return ""
    except (OSError, ValueError):
        return f"not a detector nor an image ({path.suffix or 'no suffix'})"


def _stream(det: Any, paths: list[Path], out: Path, *, resume: bool, rows_per_part: int, quiet: bool,
            **kwargs: Any) -> None:
    from synthdet.engines.stream import score_stream
    from synthdet.io.atomic import printable

    # without --resume the stream starts afresh: the previous output waits aside (FILE.previous) until the new one
    # is whole, and comes back when this run scores nothing or fails
    kept = [] if resume else [f for f in (out, out.with_name(out.name + ".skipped.csv")) if f.is_file()]
    for f in kept:
        f.replace(f.with_name(f.name + ".previous"))

    def restore() -> None:
        for f in kept:
            f.with_name(f.name + ".previous").replace(f)

    try:
        res = score_stream(det, paths, out, resume=resume, rows_per_part=rows_per_part, on_skip=skipped,
                           progress=not quiet, **kwargs)
    except Exception:
        restore()
        raise
    if res.scored == 0 and res.resumed == 0:  # rows of skipped files alone are no scores
        out.unlink(missing_ok=True)
        out.with_name(out.name + ".skipped.csv").unlink(missing_ok=True)
        restore()
        raise fail(f"no image could be scored ({res.skipped} skipped); {printable(out)} "
                   + ("kept as it was" if kept else "not written"), code=1)
    for f in kept:
        f.with_name(f.name + ".previous").unlink()
    note(f"{res.scored} scored, {res.skipped} skipped, {res.resumed} already done → {printable(out)} "
         f"({res.rows} rows, {res.scored / max(res.seconds, 1e-9):.1f} img/s this run)")


def _write_skips(skips: list[tuple[str, str]], dest: Path) -> None:
    """``path,reason`` rows (undecodable bytes of a name as ``\\xe9`` escapes); none: no file, not a stale one."""
    import csv

    from synthdet.io.atomic import atomic_open, printable

    if not skips:
        dest.unlink(missing_ok=True)
        return
    with atomic_open(dest) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows([printable(p), printable(r)] for p, r in skips)
