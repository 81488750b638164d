"""``synthdet localize``: Task B manipulation localization (train, predict, evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from synthdet.cli._io import Json, Quiet, fail, print_json, say, skipped

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Task B: where in the image was it generated or edited?", no_args_is_help=True)

Device = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 … (default: cuda if present).")]
Root = Annotated[Path | None, typer.Option(help="Folder an official CSV's paths start from (taskB_val.csv: the "
                                                "folder holding sagid/; default: the CSV's folder).")]
TASK_B_SET = ("Task B set: the MediaEval Task B tree (sagid/val) or taskB_val.csv, TGIF, a manifest with path,mask"
              "[,category,source], or a folder with images/ and masks/ (e.g. from `synthdet data make-manipulations`).")


def _read(source: Path, root: Path | None) -> pd.DataFrame:
    """The triples of ``source`` (:func:`read_triples`), each row left out said on stderr."""
    from synthdet.localization.triples import read_triples

    df = read_triples(source, root=root)
    for path, reason in df.attrs.get("skipped", []):
        skipped(path, reason)
    return df


@app.command("train")
def localize_train(
    source: Annotated[Path, typer.Argument(help=TASK_B_SET)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Detector folder to write (kind: localizer).")],
    val: Annotated[Path | None, typer.Option(help="Validation set (default: a source-disjoint share of SOURCE).")] = None,
    model: Annotated[str, typer.Option(help="unet (U-Net, EfficientNet-Lite0 encoder) or patch (frozen encoder, "
                                            "small head).")] = "unet",
    steps: Annotated[int, typer.Option(min=1, help="Training steps (batches).")] = 600,
    batch: Annotated[int, typer.Option(min=1)] = 8,
    crop: Annotated[int, typer.Option(min=32, help="Training crop side (multiple of 32).")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    schedule: Annotated[str, typer.Option(help="cosine (warm-up, then decay to 0 at --steps) or constant.")] = "cosine",
    eval_every: Annotated[int, typer.Option(min=1, help="Validate (and checkpoint) every N steps.")] = 50,
    patience: Annotated[int, typer.Option(min=1, help="Validations without a better pixel F1 before stopping.")] = 4,
    image_score: Annotated[str, typer.Option(help="Image-level score: coverage, topk, or learned (a logistic head on map statistics, fitted on the validation hosts).")] = "coverage",
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    root: Root = None,
    device: Device = None,
    seed: int = 0,
    quiet: Quiet = False,
) -> None:
    """Train a localizer with early stopping on validation pixel F1 (at its best threshold); tune the pixel and image
    thresholds."""
    from synthdet.backbones.base import default_device
    from synthdet.localization.triples import split_by_source
    from synthdet.training.localize import TrainConfig, train_localizer

    if crop % 32:
        raise fail(f"--crop must be a multiple of 32, not {crop}")
    df = _read(source, root)
    train_df, val_df = (df, _read(val, root)) if val else split_by_source(df, seed=seed)
    cfg = TrainConfig(model=model, steps=steps, batch=batch, crop=crop, lr=lr, eval_every=eval_every,  # type: ignore[arg-type]
                      patience=patience, schedule=schedule, image_score=image_score, seed=seed)  # type: ignore[arg-type]
    data = {"train_data": str(source), "val_data": str(val) if val else f"a host-disjoint share of {source}"}
    loc = train_localizer(train_df, val_df, out, cfg, device=default_device(device), resume=resume,
                          progress=not quiet, data=data)
    px = loc.card.metrics["val"]["pixel"]["at_threshold"]
    say(f"{model} → {out}: validation ({px['n_manipulated']} manipulated of {len(val_df)} images) pixel F1 "
        f"{px['f1']:.3f}, IoU {px['iou']:.3f} at loc_threshold {loc.card.loc_threshold:.2f}; trained on "
        f"{len(train_df)} images in {loc.card.params['train_seconds']} s")


@app.command("predict")
def localize_predict(
    inputs: Annotated[list[Path], typer.Argument(metavar="[LOCALIZER] IMAGES", help="Images or folders, after an "
                                                 "optional localizer folder (default: the shipped one).")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Folder for the maps (PNG, 0-255 probability) or, "
                                                                 "with --team, for the Task B submission.")] = None,
    localizer: Annotated[Path | None, typer.Option("-l", "--localizer", help="Localizer folder (default: the "
                                                                              "shipped one).")] = None,
    team: Annotated[str | None, typer.Option(help="Write TEAM_localization_masks.zip + scores.csv instead, and the "
                                                  "run description TEAM_localization_masks.run.txt.")] = None,
    run: Annotated[str, typer.Option(help="With --team, for the run description: constrained (TGIF only, as the "
                                          "organisers require for Task B) or open.")] = "constrained",
    device: Device = None,
    json_out: Json = False,
) -> None:
    """Per image, the image-level decision in words (was anything edited, and how much is flagged); with -o also
    the probability maps at each image's own size, or a checked MediaEval Task B submission (--team)."""
    import numpy as np
    from PIL import Image
    from rich.markup import escape

    from synthdet.data.inputs import iter_inputs
    from synthdet.io.atomic import atomic_path, printable
    from synthdet.localization.graph import open_localizer
    from synthdet.reporting.runcard import RUN_RULES, describe_run, write_run_description
    from synthdet.reporting.submission_check import check_task_b
    from synthdet.reporting.submit import spooled_maps, write_task_b

    if localizer is None and inputs and (inputs[0] / "card.json").is_file():
        localizer, inputs = inputs[0], inputs[1:]
    if run not in RUN_RULES:
        raise fail(f"--run must be one of {', '.join(RUN_RULES)}, not {run!r}")
    if team and out is None:
        raise fail("--team writes a submission folder: give -o FOLDER")
    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise fail(f"{missing[0]}: no such file or folder")
    paths = list(iter_inputs(inputs))
    if not paths:
        raise fail("no images given")
    loc = open_localizer(localizer, device)  # torch when installed, else the folder's ONNX graph
    name = str(localizer or "the shipped localizer")
    if team and out is not None:
        with spooled_maps(loc.predict_masks(paths), loc.score_map) as (masks, scores):
            zip_path, csv_path = write_task_b(masks, scores, loc.threshold, loc.card.loc_threshold, out, team,
                                              prior=loc.card.prior)
        folders = {p.parent for p in paths}
        text = describe_run(zip_path, team=team, task="B", run=run, detector=name, card=loc.card,
                            n_rows=len(paths), test_dir=next(iter(folders)) if len(folders) == 1 else None,
                            threshold=loc.threshold, loc_threshold=loc.card.loc_threshold)
        say(f"run description → {write_run_description(zip_path, text)}")
        if len(folders) == 1:
            report = check_task_b(zip_path, csv_path, folders.pop())
            for e in report.errors:
                skipped(zip_path, e)
            if not report.ok:
                raise fail("the submission does not pass the checker", 1)
        say(f"{len(paths)} masks → {zip_path}, scores → {csv_path}")
        return
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results = []
    for path, prob, reason in loc.predict_masks(paths):
        if prob is None:
            skipped(path, reason)
            continue
        summary = {"path": str(path), **loc.summary(prob)}
        if out is not None:
            with atomic_path(out / f"{Path(path).stem}.png") as tmp:
                Image.fromarray((np.clip(prob, 0, 1) * 255).round().astype(np.uint8)).save(tmp, format="PNG")
            summary["map"] = str(out / f"{Path(path).stem}.png")
        results.append(summary)
        if not json_out:
            say(f"[bold]{escape(printable(Path(path).name))}[/]: [bold]{summary['verdict']}[/]  ({escape(summary['words'])})")
    if json_out:
        print_json({"localizer": name, "rows": f"{len(results)} images given", "results": results})
    if not results:
        raise fail("no image could be read", 1)
    if out is not None and not json_out:
        say(f"{len(results)} maps → {out} (localizer: {name})")


@app.command("evaluate")
def localize_evaluate(
    args: Annotated[list[Path], typer.Argument(metavar="[LOCALIZER] SOURCE", help="An optional localizer folder "
                                               "(default: the shipped one), then the " + TASK_B_SET)],
    overlays: Annotated[Path | None, typer.Option(help="Also write a PNG: best and worst image per category (found "
                                                         "yellow, missed green, false alarm red), then the map.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report: the tables and "
                                                       "overlays of predicted against true masks.")] = None,
    root: Root = None,
    device: Device = None,
    json_out: Json = False,
) -> None:
    """Pixel F1/IoU at 0.5 and at the tuned threshold, per method, per type (sp/fr) and per source (the host photo's
    collection), under the organisers' pixel convention (TGIF); image-level ROC AUC, balanced accuracy, F1."""
    from synthdet.backbones.base import default_device
    from synthdet.localization.evaluate import LocEvaluation
    from synthdet.localization.models import load_localizer

    if len(args) not in (1, 2):
        raise fail(f"give [LOCALIZER] SOURCE, not {len(args)} paths")
    detector, source = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    df = _read(source, root)
    loc = load_localizer(detector, default_device(device))
    ev = LocEvaluation(loc, df)
    res = ev.metrics
    if overlays is not None:
        ev.write_overlay_sheet(overlays)
    if report is not None:
        from synthdet.reporting.html import render_localization_report

        render_localization_report(res, ev.examples(), report, about=f"localizer {detector or 'shipped'} ({loc.card.model}) · "
                                   f"data {source}")
    if json_out:
        print_json({**res, **({"report": str(report)} if report else {})})
        return
    rows = res["rows"]
    seen = f", {rows['n_seen']} built on photos seen in training" if rows["n_seen"] else ""
    say(f"{len(df)} images of {source} ({rows['status']}{seen}); pixel metrics over the manipulated images of each "
        "row (and over all its images), image metrics over all")
    say(f"  convention: {res['convention']}")
    tables = [("method" if "method" in df else "category", "per_category"), ("type", "per_type"),
              ("source", "per_source")]
    for title, key in ((t, k) for t, k in tables if k in res):
        say(f"  per {title}:")
        rows = [("all", res["pixel"]), *res[key].items()] if key == "per_category" else res[key].items()
        width = max(12, *(len(name) for name, _ in rows))
        for name, block in rows:
            a, t = block["at_0.5"], block["at_threshold"]
            line = f"    {name:<{width}} {a['n_manipulated']:>4} manipulated of {block['n']:<5}"
            if a["n_manipulated"]:
                line += (f" F1@0.5 {a['f1']:.3f}  IoU@0.5 {a['iou']:.3f}  F1@{t['threshold']:.2f} {t['f1']:.3f}  "
                         f"IoU {t['iou']:.3f}  PI-F1 {t['pi_f1']:.3f}")
            if t["n_authentic"]:
                line += f"  authentic pixels flagged@{t['threshold']:.2f} {t['authentic_fp_rate']:.3f}"
            line += f"  all-images F1 {t['f1_all_images']:.3f} IoU {t['iou_all_images']:.3f}"
            say(line)
    im = res["image"]
    say(f"  image ({im['method']}, n={im['n']}): ROC AUC {im['roc_auc']:.3f}  balanced acc "
        f"{im['balanced_accuracy']:.3f}  F1 {im['f1']:.3f} at {im['threshold']:.3f}  (coverage alone: ROC AUC "
        f"{im['coverage_roc_auc']:.3f})")
    if report is not None:
        say(f"report → {report}")
