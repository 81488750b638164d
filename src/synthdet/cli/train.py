"""``synthdet extract``, ``train`` and ``demo``: features into the cache, and detectors out of them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from synthdet.cli._io import (
    Json,
    NativeSize,
    Quiet,
    TapPoolOption,
    console,
    fail,
    make_backbone,
    note,
    print_json,
    say,
    skipped,
)

if TYPE_CHECKING:
    from rich.table import Table

    from synthdet.training.train import ProbeConfig, TrainResult


def extract(
    data: Annotated[Path, typer.Argument(help="Folder, CSV or manifest.")],
    backbone: Annotated[str, typer.Option(help="Backbone name (see `synthdet backbones`).")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    views: Annotated[int, typer.Option(min=1, help="Views per image: 1 = canonical only, more = cached augmentations.")] = 1,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root (default $SYNTHDET_CACHE or ~/.cache/synthdet).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers (default: up to 4).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda if present).")] = None,
    native_size: NativeSize = None,
    tap_pool: TapPoolOption = "mean",
    engine: Annotated[str, typer.Option(help="local, or ray (Ray Data: decoding tasks + backbone actors).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join (default: a local Ray).")] = None,
    actors: Annotated[int, typer.Option(min=1, help="--engine ray: backbone actors (give Ray one CPU more than this).")] = 1,
    quiet: Quiet = False,
) -> None:
    """Run a backbone over a dataset once; features go to the on-disk cache (resumable, float16, memory-mapped)."""
    from synthdet.data.manifest import index
    from synthdet.engines.base import create_engine
    from synthdet.features.extract import extract as run_extract

    if engine not in ("local", "ray"):
        raise fail(f"--engine {engine!r}: local or ray")
    runner = create_engine(engine, actors=actors, address=ray_address)
    df = index(data, progress=not quiet)
    bb = make_backbone(backbone, weights=weights, native_size=native_size, tap_pool=tap_pool, device=device)
    ok = df[df["ok"]]
    store = runner.store(bb, cache)  # keyed by the device the engine runs the backbone on (Ray: its actors')
    t0 = time.perf_counter()
    res = run_extract(bb, ok["path"].tolist(), ok["sha256"].tolist(), store, views=list(range(views)),
                      batch_size=batch_size, num_workers=workers, progress=not quiet, forward=runner.features)
    dt = time.perf_counter() - t0
    say(f"{res.computed} views computed, {res.cached} cached, {len(res.skipped) + int((~df['ok']).sum())} skipped "
        f"in {dt:.1f}s → {store.dir}")
    for path, reason in zip(df.loc[~df["ok"], "path"], df.loc[~df["ok"], "error"]):
        skipped(path, reason)
    for s in res.skipped:
        skipped(s.path, s.reason)


def _metrics_table(title: str, metrics: dict) -> Table:
    from rich.table import Table

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
    from rich.markup import escape
    from rich.table import Table

    table = Table("generator", "class", "n", "correct",
                  title="held-out, per generator and class (share correct at the tuned threshold)")
    for gen, m in sorted(metrics.get("by", {}).get("generator", {}).items(), key=lambda kv: -kv[1]["n"]):
        c = m["at_threshold"]["confusion"]  # a group may hold both classes (no generator column): one row each
        for cls, right, n in (("generated", c["tp"], c["tp"] + c["fn"]), ("real", c["tn"], c["tn"] + c["fp"])):
            if n:
                table.add_row(escape(gen) or "(not given)", cls, str(n), f"{right / n:.2f}")
    return table


#: Held-out splits smaller than this give figures too noisy to read (one image moves accuracy by over 3 points).
SMALL_SPLIT = 30


def _run_train(data: Path, out: Path, config: ProbeConfig, *, progress: bool, refit: bool = False,
               as_json: bool = False) -> TrainResult:
    """``train_detector`` on DATA, then its held-out figures as tables (or JSON) and its skips on stderr."""
    from synthdet.data.manifest import index
    from synthdet.training.train import train_detector

    df = index(data, progress=progress)
    res = train_detector(df, config, out=out, refit=refit, progress=progress)
    for path, reason in res.skipped:
        skipped(path, reason)
    card = res.detector.card
    if as_json:
        print_json({"detector": str(out), "threshold": card.threshold, "held_out": res.metrics})
        return res
    console().print(_metrics_table(f"held-out split — {card.backbone} + {card.head} ({card.features})", res.metrics))
    console().print(_generator_table(res.metrics))
    small = {name: split["n"] for name, split in card.data.get("splits", {}).items()
             if name in ("calib", "test") and split["n"] < SMALL_SPLIT}
    if small:
        note("warning: " + ", ".join(f"{n} {name} images" for name, n in small.items()) + ": the threshold and the "
             "figures above rest on too few images to trust: give more data, or `synthdet cv` for k-fold figures")
    say(f"detector saved → [bold]{out}[/]  (threshold {card.threshold:.3f}, chosen on the calibration split)")
    return res


def train(
    data: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake or real/fake), CSV path,label or manifest.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Detector folder to write.")] = Path("detector"),
    backbone: Annotated[str, typer.Option(help="Backbone name (see `synthdet backbones`).")] = "effnet-lite0",
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.")] = None,
    head: Annotated[str, typer.Option(help="linear | residual | deep | logreg | fusion (layer-wise: reads every block).")] = "linear",
    features: Annotated[str, typer.Option(help="pooled | concat (pooled + every layer tap)")] = "pooled",
    views: Annotated[int, typer.Option(min=1, help="Cached training views per image (view 0 canonical, rest augmented).")] = 4,
    seed: Annotated[int, typer.Option()] = 42,
    cache: Annotated[Path | None, typer.Option(help="Feature cache root.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per forward pass (default: 8 on CPU, 64 on CUDA).")] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="Decoding workers (default: up to 4; 0: decode in this process).")] = None,
    refit: Annotated[bool, typer.Option(help="After scoring the test rows, refit on fit+calib (threshold from out-of-fold probabilities); the test rows stay held out.")] = False,
    native_size: NativeSize = None,
    tap_pool: TapPoolOption = "mean",
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """index → extract (cached) → split → fit → calibrate → evaluate → save, on your own data."""
    from synthdet.features.extract import FeatureKind
    from synthdet.training.train import ProbeConfig

    if features not in ("pooled", "concat"):
        raise fail(f"--features must be pooled or concat, not {features!r}")
    bb = make_backbone(backbone, weights=weights, native_size=native_size, tap_pool=tap_pool)
    config = ProbeConfig(backbone=bb, weights=weights, head=head, features=cast(FeatureKind, features), n_views=views,
                         seed=seed, cache_dir=cache, batch_size=batch_size, num_workers=workers)
    _run_train(data, out, config, progress=not quiet, refit=refit, as_json=as_json)


def demo(
    out: Annotated[Path, typer.Option("-o", "--out", help="Where the demo detector and report go.")] = Path("synthdet-demo"),
    backbone: Annotated[str, typer.Option(help="Backbone (the embedded default needs no download).")] = "effnet-lite0",
    cache: Annotated[Path | None, typer.Option(help="Feature cache root (default: inside --out).")] = None,
    quiet: Quiet = False,
) -> None:
    """The main job, offline: train and evaluate a detector on the data shipped in the package, with the recipe
    of the shipped default (images at their own scale up to 384 px, stage statistics, logistic head)."""
    from synthdet.data.demo import demo_data_dir
    from synthdet.training.train import GENERALISING_HEAD, ProbeConfig, generalising_backbone

    data = demo_data_dir()
    note(f"[bold]synthdet demo[/] — data: {data} (shipped compact copy; see CREDITS.md), backbone {backbone}")
    t0 = time.perf_counter()
    config = ProbeConfig(backbone=generalising_backbone(backbone), **GENERALISING_HEAD,
                         cache_dir=cache or out / "cache")
    res = _run_train(data / "manifest.csv", out, config, progress=not quiet)
    say(f"done in {time.perf_counter() - t0:.0f}s — held-out ROC AUC [bold]{res.metrics['roc_auc']:.4f}[/]")
    say(f"try: synthdet predict {out} some_photo.jpg")
