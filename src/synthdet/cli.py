"""``synthdet`` command line: a thin layer over the library (no logic here that the library lacks)."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(help="Tell real photographs from AI-generated images.", no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Build and split dataset manifests.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _skipped(path: object, reason: str) -> None:
    """One line per unusable file on stderr, never wrapped, so it can be grepped."""
    err.print(f"[yellow]skipped[/] {path}: {reason}", soft_wrap=True, highlight=False)


def _mount_optional() -> None:
    from .augment import augment_preview
    from .cv import cv_command
    from .ensemble import ensemble_command
    from .finetune import finetune_command
    from .recipes import app as recipes_app
    from .report import evaluate_cmd, report_cmd
    from .submit import submit

    app.command("submit", help="Write a MediaEval Task A CSV for a test folder and validate it; or validate "
                "only (--check FILE --images DIR [--masks ZIP]).")(submit)
    app.add_typer(recipes_app, name="recipes")
    app.command("cv", help="Stratified k-fold cross-validation of a head on cached features (folds + mean ± std).")(
        cv_command
    )
    app.command("ensemble", help="Combine saved detectors (mean | majority | weighted-majority) into one calibrated "
                "detector.")(ensemble_command)
    app.command("evaluate", help="All Task A metrics with bootstrap CIs, per generator and under robustness slices; "
                "writes a run folder and an HTML report.")(evaluate_cmd)
    app.command("report", help="One self-contained HTML report comparing several evaluation runs.")(report_cmd)
    app.command("finetune", help="Fine-tune a backbone with a head from images: last-N-block or full CNN fine-tuning, "
                "recipes, data mixing (--data-weight/--val-data), two-stage (--init); resumable.")(
        finetune_command
    )
    app.command("augment-preview", help="Show every augmentation preset on one image, as a contact-sheet PNG.")(
        augment_preview
    )


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False) -> None:
    if version:
        console.print(f"synthdet {__version__}")
        raise typer.Exit()


@data_app.command("index")
def data_index(
    source: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake, real/fake) or CSV with path,label[,source,generator].")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Manifest to write (.parquet or .csv).")] = Path("manifest.parquet"),
    val_fraction: Annotated[float, typer.Option(help="Held-out fraction for the stratified split column.")] = 0.2,
    folds: Annotated[int, typer.Option(help="Number of stratified folds for the fold column (0: none).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of split and folds.")] = 42,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels (decompression bombs).")] = 100_000_000,
) -> None:
    """Index images: hash, size, format, decodability; add reproducible split and fold columns."""
    from .data import ManifestError, index, kfold, split, write_manifest

    try:
        df = index(source, max_pixels=max_pixels)
        labelled = (df["label"] >= 0) & df["ok"]
        if labelled.any() and df.loc[labelled, "label"].nunique() == 2:
            df["split"] = split(df, val_fraction=val_fraction, seed=seed)
            if folds > 1:
                df["fold"] = kfold(df, k=folds, seed=seed)
    except ManifestError as e:
        raise _fail(str(e)) from None
    write_manifest(df, out)
    bad = df[~df["ok"]]
    console.print(f"{len(df)} images indexed → {out}  ({int(df['ok'].sum())} ok, {len(bad)} unreadable)")
    for path, reason in zip(bad["path"], bad["error"]):
        _skipped(path, reason)


weights_app = typer.Typer(help="Backbone weights: fetch into the Hugging Face cache where a hub is reachable.",
                          no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch")
def weights_fetch(name: Annotated[str, typer.Argument(help="Backbone name, timm:<model> or open_clip:<arch>/<tag>.")]) -> None:
    """Download weights (needs internet); afterwards the backbone loads offline from the cache."""
    from .backbones import fetch_weights

    try:
        fetch_weights(name)
    except (RuntimeError, ValueError) as e:
        raise _fail(str(e), code=1) from None
    console.print(f"{name}: weights are in the Hugging Face cache")


@app.command()
def backbones() -> None:
    """List every registered backbone, its features and preprocessing, and whether its weights are here."""
    from .backbones import list_backbones

    table = Table("name", "description", "features", "preprocessing", "weights here", "weights from")
    for e in list_backbones():
        p = e.preprocess
        pre = (f"{p.size}px {p.mode} {p.resample}, JPEG q{p.jpeg_quality}, mean {tuple(round(m, 3) for m in p.mean)} "
               f"std {tuple(round(v, 3) for v in p.std)}") if p else "-"
        table.add_row(e.name, e.description, e.features, pre, "yes" if e.weights_present() else "[red]no[/]",
                      e.weights_hint)
    table.add_row("timm:<model>", "any timm model", "pooled + per-block taps", "from timm's config", "-",
                  "--weights FILE or HF cache")
    table.add_row("open_clip:<arch>/<tag>", "any open_clip vision tower", "pooled + block class tokens",
                  "from open_clip's config", "-", "--weights FILE or HF cache")
    table.add_row("dualstream[-dct]:<model>", "RGB model + FFT (or 8x8 block DCT) branch, for fine-tuning",
                  "[rgb pooled, freq 128]; freq + RGB taps", "the RGB model's", "-", "as the RGB model")
    console.print(table)


@app.command()
def extract(
    data: Annotated[Path, typer.Argument(help="Folder, CSV or manifest.")],
    backbone: Annotated[str, typer.Option(help="Backbone name (see `synthdet backbones`).")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    views: Annotated[int, typer.Option(help="Views per image: 1 = canonical only, more = cached augmentations.")] = 1,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root (default $SYNTHDET_CACHE or ~/.cache/synthdet).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding workers (default: up to 4).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda if present).")] = None,
) -> None:
    """Run a backbone over a dataset once; features go to the on-disk cache (resumable, float16, memory-mapped)."""
    from .backbones import WeightsNotFoundError, create_backbone
    from .data import ManifestError, index
    from .features import FeatureStore
    from .features import extract as run_extract

    try:
        df = index(data)
        bb = create_backbone(backbone, weights=weights, device=device)
    except (ManifestError, WeightsNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    ok = df[df["ok"]]
    store = FeatureStore.for_backbone(bb, cache)
    t0 = time.perf_counter()
    res = run_extract(bb, ok["path"].tolist(), ok["sha256"].tolist(), store, views=list(range(views)),
                      batch_size=batch_size, num_workers=workers, progress=True)
    dt = time.perf_counter() - t0
    console.print(
        f"{res.computed} views computed, {res.cached} cached, {len(res.skipped) + int((~df['ok']).sum())} skipped "
        f"in {dt:.1f}s → {store.dir}"
    )
    for s in res.skipped:
        _skipped(s.path, s.reason)


def _metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for col in ("at", "thr", "acc", "prec", "recall", "F1", "TN", "FP", "FN", "TP"):
        table.add_column(col, justify="right")
    for name, label in (("at_0.5", "0.5"), ("at_threshold", "tuned"), ("oracle", "oracle")):
        m = metrics[name]
        c = m["confusion"]
        table.add_row(label, f"{m['threshold']:.3f}", *(f"{m[k]:.3f}" for k in ("accuracy", "precision", "recall", "f1")),
                      *(str(c[k]) for k in ("tn", "fp", "fn", "tp")))
    table.caption = (
        f"n={metrics['n']} ({metrics['n_fake']} fake)   ROC AUC {metrics['roc_auc']:.4f}   AP {metrics['ap']:.4f}   "
        f"EER {metrics['eer']:.4f}"
    )
    return table


def _generator_table(metrics: dict) -> Table:
    table = Table("generator", "n", "correct", title="held-out, per generator (share correct at the tuned threshold)")
    for gen, m in sorted(metrics.get("by", {}).get("generator", {}).items(), key=lambda kv: -kv[1]["n"]):
        c = m["at_threshold"]["confusion"]
        rate = c["tp"] / max(1, c["tp"] + c["fn"]) if m["n_fake"] else c["tn"] / max(1, c["tn"] + c["fp"])
        table.add_row(gen[:60], str(m["n"]), f"{rate:.2f}")
    return table


def _run_train(data: Path, out: Path, **kwargs) -> None:
    from .backbones import WeightsNotFoundError
    from .data import ManifestError, index
    from .train import train_detector

    try:
        df = index(data)
        res = train_detector(df, out=out, **kwargs)
    except (ManifestError, WeightsNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    for path, reason in res.skipped:
        _skipped(path, reason)
    card = res.detector.card
    console.print(_metrics_table(f"held-out split — {card.backbone} + {card.head} ({card.features})", res.metrics))
    console.print(_generator_table(res.metrics))
    console.print(f"detector saved → [bold]{out}[/]  (threshold {card.threshold:.3f}, chosen on the calibration split)")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake or real/fake), CSV path,label or manifest.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Detector folder to write.")] = Path("detector"),
    backbone: Annotated[str, typer.Option(help="Backbone name (see `synthdet backbones`).")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    head: Annotated[str, typer.Option(help="linear | residual | deep | logreg")] = "linear",
    features: Annotated[str, typer.Option(help="pooled | concat (pooled + every layer tap)")] = "pooled",
    views: Annotated[int, typer.Option(help="Cached training views per image (view 0 canonical, rest augmented).")] = 4,
    seed: Annotated[int, typer.Option()] = 42,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option()] = None,
    refit: Annotated[bool, typer.Option(help="After evaluating, refit on fit+val (threshold re-tuned on calib).")] = False,
) -> None:
    """index → extract (cached) → split → fit → calibrate → evaluate → save, on your own data."""
    if features not in ("pooled", "concat"):
        raise _fail(f"--features must be pooled or concat, not {features!r}")
    _run_train(data, out, backbone=backbone, weights=weights, head=head, features=features, n_views=views, seed=seed,
               cache_dir=cache, batch_size=batch_size, num_workers=workers, refit=refit)


def _verdict(prob: float, threshold: float) -> str:
    fake = prob >= threshold
    margin = abs(prob - threshold) / max(threshold if not fake else 1 - threshold, 1e-6)
    strength = "likely" if margin > 0.5 else "leaning"
    return f"{strength} AI-generated" if fake else f"{strength} a real photograph"


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="[DETECTOR] then image files, folders or a CSV with a path column.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="CSV to write (image_id,prob,label,threshold).")] = None,
    detector: Annotated[Path | None, typer.Option("-d", "--detector", help="Detector folder (default: the shipped one).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option()] = None,
    max_pixels: Annotated[int, typer.Option(help="Refuse images with more pixels.")] = 100_000_000,
) -> None:
    """Score images. One file prints a verdict; several stream the MediaEval CSV to -o (or stdout)."""
    from .data import ManifestError, iter_inputs
    from .detector import Detector

    if detector is None and paths and (paths[0] / "card.json").is_file():
        detector, paths = paths[0], paths[1:]
    if not paths:
        raise _fail("no images given")
    try:
        det = Detector.load(detector)
        _ = det.backbone
    except (FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    single = len(paths) == 1 and paths[0].is_file() and paths[0].suffix.lower() != ".csv" and out is None
    thr = round(det.threshold, 6)
    try:
        inputs = iter_inputs(paths)
        results = det.predict_paths(inputs, batch_size=batch_size, num_workers=0 if single else workers,
                                    max_pixels=max_pixels, progress=not single)
        if single:
            path, prob, reason = next(results)
            if prob is None:
                raise _fail(f"{path}: cannot be scored: {reason}", code=1)
            console.print(f"{Path(path).name}: [bold]{_verdict(prob, det.threshold)}[/]  (p_fake={prob:.3f}, threshold {det.threshold:.3f})",
                          soft_wrap=True)
            return
        _write_predictions(results, out, thr)
    except ManifestError as e:
        raise _fail(str(e)) from None


def _write_predictions(results, out: Path | None, thr: float) -> None:
    """Stream rows as they are scored; unscorable files go to stderr and ``<out>.skipped.csv``."""
    sink = open(out, "w", newline="") if out else sys.stdout
    skipped_path = out.with_name(out.name + ".skipped.csv") if out else Path("predictions.skipped.csv")
    n = n_skipped = 0
    skip_file = None
    try:
        writer = csv.writer(sink)
        writer.writerow(["image_id", "prob", "label", "threshold"])
        for path, prob, reason in results:
            if prob is None:
                if skip_file is None:
                    skip_file = open(skipped_path, "w", newline="")
                    csv.writer(skip_file).writerow(["path", "reason"])
                csv.writer(skip_file).writerow([path, reason])
                _skipped(path, reason)
                n_skipped += 1
                continue
            p = round(prob, 6)
            writer.writerow([Path(path).name, f"{p:.6f}", int(p >= thr), f"{thr:.6f}"])
            n += 1
    finally:
        if out:
            sink.close()
        if skip_file:
            skip_file.close()
    err.print(f"{n} scored{f' → {out}' if out else ''}, {n_skipped} skipped{f' → {skipped_path}' if n_skipped else ''}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the demo detector and report go.")] = Path("synthdet-demo"),
    backbone: Annotated[str, typer.Option(help="Backbone (the embedded default needs no download).")] = "effnet-lite0",
    views: Annotated[int, typer.Option(help="Cached training views per image.")] = 4,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root (default: inside --out).")] = None,
) -> None:
    """The main job, offline: train and evaluate a detector on the data shipped in the package."""
    from .demo import demo_data_dir

    data = demo_data_dir()
    console.print(f"[bold]synthdet demo[/] — data: {data} (shipped compact copy; see CREDITS.md), backbone {backbone}")
    t0 = time.perf_counter()
    _run_train(data / "manifest.csv", out, backbone=backbone, head="logreg", features="concat", n_views=views,
               cache_dir=cache or out / "cache")
    summary = json.loads((out / "card.json").read_text())["metrics"]["val"]
    console.print(f"done in {time.perf_counter() - t0:.0f}s — held-out ROC AUC [bold]{summary['roc_auc']:.4f}[/]")
    console.print(f"try: synthdet predict {out} some_photo.jpg")


_mount_optional()


def main() -> None:  # pragma: no cover - console entry
    app()
