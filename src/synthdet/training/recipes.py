"""Every system of the working notes as a named, runnable config (``configs/recipes/*.json``).

A recipe is a list of steps — ``probe`` (head on cached features), ``finetune`` (from images, optionally continuing
an earlier step: two-stage), ``ensemble`` (of earlier steps), ``cv`` (k-fold) and ``localize`` (a Task B localizer,
:mod:`synthdet.training.localize`) — with the section and table of the paper it reproduces. Steps write to ``OUT/<step id>/``, keyed by their inputs (``step.json``: the content digest of
the data they learn from and a digest of their config, members and init included): a finished step whose inputs
match is reused and says so, one whose inputs changed runs again, so an interrupted recipe resumes and a rerun on
other data never reuses stale members. A step whose backbone has no weights on this machine runs with a substitute
(``effnet-lite2`` by default) and says so, in the output and in ``OUT/recipe.json``.

Every reported figure says on which rows it was computed (``metrics["rows"]``: n, digest, status): probes and
fine-tunes on their held-out ``val`` split, cross-validation out of fold, ensembles on calibration rows none of
their members was fitted or calibrated on (rows a member has seen are dropped first), localizers on a split of
photos they were neither trained nor validated on. A figure that is not
held-out is kept apart, under ``metrics["not_held_out"]``, never beside held-out ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:
    from synthdet.training.train import ProbeConfig


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Literal["probe", "finetune", "ensemble", "cv", "localize"]
    backbone: str | None = None  # probe/finetune; finetune defaults to its fine-tuning recipe's backbone
    head: str | None = None  # probe (default linear), cv (default logreg)
    features: Literal["pooled", "concat"] = "pooled"  # probe, cv
    views: int = 4  # probe, cv: cached training views per image
    finetune: str | None = None  # a synthdet.training.finetune.RECIPES name (finetune, cv)
    overrides: dict[str, Any] = {}  # FineTuneConfig fields on top of that recipe; localize: TrainConfig fields
    manipulations: dict[str, Any] = {}  # localize, on a real/AI set: make_manipulations arguments (n, size, …)
    test: float = 0.2  # localize: share of host photos held out for the reported figures
    init: str | None = None  # finetune: continue the detector of this earlier step (two-stage training)
    data: Literal["train", "indomain"] = "train"  # which data the step trains on
    members: list[str] = []  # ensemble: earlier step ids
    rule: str = "mean"  # ensemble rule
    weights: list[float] | None = None  # ensemble weights (mean rule)
    k: int = 5  # cv folds

    @model_validator(mode="after")
    def _init_only_when_fine_tuning(self) -> Step:
        if self.init and self.kind != "finetune":
            raise ValueError(f"step {self.id!r} ({self.kind}): 'init' continues a detector, which only a finetune "
                             f"step does")
        return self


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    cites: str
    steps: list[Step]
    notes: str = ""


def load_recipes() -> dict[str, Recipe]:
    folder = resources.files("synthdet") / "configs" / "recipes"
    recipes = [Recipe.model_validate_json(f.read_text()) for f in folder.iterdir() if f.name.endswith(".json")]
    return {r.name: r for r in sorted(recipes, key=lambda r: r.name)}


def get_recipe(name: str) -> Recipe:
    recipes = load_recipes()
    if name not in recipes:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(recipes)}")
    return recipes[name]


def step_backbone(step: Step) -> str | None:
    """The backbone a step asks for (None for ensembles and continued fine-tuning)."""
    if step.kind in ("ensemble", "localize") or step.init:  # a localizer's encoder is the embedded EfficientNet-Lite0
        return None
    if step.backbone:
        return step.backbone
    if step.finetune:
        from synthdet.training.finetune import RECIPES

        return RECIPES[step.finetune].backbone
    return "effnet-lite0"


def _required(backbone: str | None, step: Step) -> str:
    """The backbone of a probe or cv step, which trains from scratch (:class:`Step` allows ``init`` on finetune
    steps only); a step with nothing to start from is an error in the recipe, not a default."""
    if backbone is None:
        raise ValueError(f"step {step.id!r} ({step.kind}) has no backbone to train")
    return backbone


def _probe_config(
    step: Step, backbone: str | None, cache_dir: str | Path | None, num_workers: int | None
) -> ProbeConfig:
    """The head on cached features a probe or cv step fits; without a ``head`` a probe fits ``linear`` and a cv step
    ``logreg``."""
    from synthdet.training.train import ProbeConfig

    head = step.head or ("logreg" if step.kind == "cv" else "linear")
    return ProbeConfig(backbone=_required(backbone, step), head=head, features=step.features, n_views=step.views,
                       cache_dir=cache_dir, num_workers=num_workers)


def detector_dir(out: Path, step: Step) -> Path:
    """Where a step's detector lives (fine-tuning runs keep checkpoints beside it)."""
    return out / step.id / "detector" if step.kind in ("finetune", "localize") else out / step.id


def _finished(out: Path, step: Step) -> bool:
    marker = out / step.id / ("cv.json" if step.kind == "cv" else "")
    return marker.is_file() if step.kind == "cv" else (detector_dir(out, step) / "card.json").is_file()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _saved_step(out: Path, step: Step) -> dict[str, Any] | None:
    """The record a finished step left in ``step.json`` (its inputs and reported entry), or None."""
    path = out / step.id / "step.json"
    if not (_finished(out, step) and path.is_file()):
        return None
    return json.loads(path.read_text())


def _val_rows(det_dir: Path) -> dict[str, Any]:
    """Provenance of a trained step's figures: its manifest's held-out split, against the rows it was fitted or
    calibrated on."""
    from synthdet.data.provenance import UNKNOWN, copies_of, provenance
    from synthdet.data.splits import phash_codes
    from synthdet.detectors.card import read_card, read_seen_tiles
    from synthdet.training.ensemble import member_rows, saved_split

    df = saved_split(det_dir)
    if df is None or "split" not in df:
        return {"role": "val", "status": UNKNOWN}
    held = df[df["split"] == "test"]
    card = read_card(det_dir)
    card._folder = det_dir
    copies = copies_of(read_seen_tiles(card), held["sha256"], held["path"]) if "path" in held else {}
    return {"role": "val", **provenance(held["sha256"], member_rows(det_dir, card), phash_codes(held), copies)}


def run_recipe(
    name: str | Recipe,
    data: Sequence[str | Path],
    *,
    out: str | Path,
    indomain: str | Path | None = None,
    steps: Sequence[str] | None = None,
    fallback: str = "effnet-lite2",
    epochs: int | None = None,
    train_steps: int | None = None,
    cache_dir: str | Path | None = None,
    num_workers: int | None = None,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
) -> dict[str, Any]:
    """Run a recipe (a shipped one by name, or your own :class:`Recipe`) — its steps, or only ``steps`` and what they
    depend on; returns the run record (also saved). ``epochs`` overrides fine-tuning steps' epochs, ``train_steps``
    localize steps' training steps (e.g. for a smoke run)."""
    from synthdet.backbones.base import weights_available
    from synthdet.data.manifest import index, manifest_hash, usable_rows
    from synthdet.data.provenance import HELD_OUT
    from synthdet.data.splits import RowSet
    from synthdet.io.atomic import write_text
    from synthdet.training.cv import cross_validate, run_folds, save_cv
    from synthdet.training.ensemble import build_ensemble
    from synthdet.training.finetune import finetune_detector, recipe_config
    from synthdet.training.finetune.pipeline import finetune_fitter
    from synthdet.training.train import train_detector

    recipe = name if isinstance(name, Recipe) else get_recipe(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_id = {s.id: s for s in recipe.steps}
    wanted = _with_dependencies(by_id, steps or list(by_id))
    sources = [Path(d) for d in data]
    if not sources:
        raise ValueError("a recipe needs at least one DATA source")

    frames: dict[tuple[Path, ...], pd.DataFrame] = {}

    def frame(paths: Sequence[Path]) -> pd.DataFrame:
        key = tuple(paths)
        if key not in frames:
            frames[key] = pd.concat([index(p, progress=False) for p in paths], ignore_index=True)
        return frames[key]

    keys: dict[str, str] = {}

    record: dict[str, Any] = {"recipe": recipe.name, "cites": recipe.cites, "data": [str(s) for s in sources],
                              "indomain": str(indomain) if indomain else None, "steps": {}}
    for step in (s for s in recipe.steps if s.id in wanted):
        asked = step_backbone(step)
        backbone = asked
        if asked is not None and not weights_available(asked):
            prefix = asked.partition(":")[0]  # a wrapper such as dualstream: keeps its shape around the substitute
            backbone = f"{prefix}:{fallback}" if prefix.startswith("dualstream") else fallback
            log(f"{step.id}: weights for {asked} are not on this machine → running with {fallback}")
        entry: dict[str, Any] = {"kind": step.kind, "backbone_asked": asked, "backbone": backbone,
                                 "dir": str(detector_dir(out, step))}
        train_src = [Path(indomain)] if step.data == "indomain" and indomain else sources
        data_src = ([Path(indomain)] if indomain else sources[:1]) if step.kind == "ensemble" else train_src
        inputs = {"data": manifest_hash(frame(data_src)),
                  "config": _digest({"step": step.model_dump(), "backbone": backbone, "epochs": epochs,
                                     "after": [keys[d] for d in step.members + ([step.init] if step.init else [])],
                                     **({"train_steps": train_steps} if step.kind == "localize" else {})})}
        keys[step.id] = _digest(inputs)
        entry["inputs"] = inputs
        record["steps"][step.id] = entry
        saved = _saved_step(out, step)
        if saved is not None and saved.get("inputs") == inputs:
            record["steps"][step.id] = saved["entry"]
            log(f"{step.id}: done already, same inputs (data {inputs['data']}, config {inputs['config']}) "
                f"→ reusing {entry['dir']}")
            continue
        if (out / step.id).exists():
            why = "inputs changed" if saved is not None else "unfinished, or from before steps were keyed by inputs"
            log(f"{step.id}: {why} → running it again")
            shutil.rmtree(out / step.id)
        made_of = backbone or (step.overrides.get("model", "unet") if step.kind == "localize"
                               else "from " + str(step.init or step.members))
        log(f"{recipe.name} / {step.id} ({step.kind}, {made_of})")
        if step.kind == "probe":
            res = train_detector(frame(train_src), _probe_config(step, backbone, cache_dir, num_workers),
                                 out=detector_dir(out, step))
            entry["metrics"] = _summary(res.metrics, _val_rows(detector_dir(out, step)))
        elif step.kind == "finetune":
            cfg = recipe_config(step.finetune, **step.overrides, epochs=epochs, num_workers=num_workers)
            init = detector_dir(out, by_id[step.init]) if step.init else None
            _, metrics = finetune_detector(list(train_src), backbone=None if init else backbone, init=init, cfg=cfg,
                                           out=out / step.id)
            entry["metrics"] = _summary(metrics, _val_rows(detector_dir(out, step)))
        elif step.kind == "ensemble":  # calibrated on the rows of its data that no member has seen
            members = [detector_dir(out, by_id[m]) for m in step.members]
            ens = build_ensemble(members, calib=frame(data_src), out=detector_dir(out, step), rule=step.rule,
                                 weights=step.weights, num_workers=num_workers, on_overlap="drop")
            calib = ens.card.metrics["calib"]
            entry["calibrated_on"] = {"data": [str(d) for d in data_src], **ens.card.data["calib"]}
            entry["metrics"] = _summary(calib, {"role": "calib (threshold tuned here)", **calib["rows"]})
        elif step.kind == "localize":
            entry.update(_localize_step(step, train_src, frame(train_src), out / step.id, train_steps, log))
        else:  # cv
            if step.finetune:
                cfg = recipe_config(step.finetune, **step.overrides, epochs=epochs, num_workers=num_workers)
                result = run_folds(usable_rows(frame(train_src), progress=False)[0],
                                   finetune_fitter(_required(backbone, step), cfg, out / step.id / "folds"), k=step.k)
            else:
                result = cross_validate(frame(train_src), _probe_config(step, backbone, cache_dir, num_workers),
                                        k=step.k)
            save_cv(result, out / step.id)
            oof = RowSet.of(result.oof["sha256"])  # every figure out of fold: held-out by construction
            rows = {"role": "out-of-fold", "n": oof.n, "digest": oof.digest, "status": HELD_OUT}
            entry["metrics"] = {**result.summary(), "rows": rows}
        write_text(out / step.id / "step.json", json.dumps({"inputs": inputs, "entry": entry}, indent=2, default=str))
        write_text(out / "recipe.json", json.dumps(record, indent=2, default=str))
    write_text(out / "recipe.json", json.dumps(record, indent=2, default=str))
    return record


def _localize_step(step: Step, sources: Sequence[Path], df: pd.DataFrame, folder: Path, train_steps: int | None,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """A Task B localizer: triples from the data (used as they are when the data is a Task B set with masks, else
    built by :func:`synthdet.localization.manipulate.make_manipulations`), a source-disjoint held-out split for the reported
    figures, early stopping and thresholds on a source-disjoint validation share of the rest. Writes the detector,
    ``test_metrics.json`` and ``report.html`` (both on the held-out split) and returns the step's record entries."""
    from synthdet.backbones.base import default_device
    from synthdet.data.provenance import HELD_OUT, IN_SAMPLE
    from synthdet.io.atomic import write_text
    from synthdet.localization.evaluate import LocEvaluation
    from synthdet.localization.manipulate import make_manipulations
    from synthdet.localization.triples import read_triples, split_by_source
    from synthdet.reporting.html import render_localization_report
    from synthdet.training.localize import TrainConfig, train_localizer

    cfg = TrainConfig(**{**step.overrides, **({"steps": train_steps} if train_steps else {})})
    if "mask" in df:
        if len(sources) != 1:
            raise ValueError(f"step {step.id!r}: a Task B set (with masks) is read from one DATA source")
        triples, made = read_triples(sources[0]), f"the Task B set {sources[0]}"
    else:
        args = {"seed": cfg.seed, **step.manipulations}
        log(f"{step.id}: building {args.get('n', 100)} Task B triples from {len(df)} images")
        make_manipulations(df, folder / "triples", **args)
        triples, made = read_triples(folder / "triples"), f"triples made from {', '.join(map(str, sources))}"
    rest, test = split_by_source(triples, step.test, seed=cfg.seed)
    fit, val = split_by_source(rest, 0.2, seed=cfg.seed)
    loc = train_localizer(fit, val, folder / "detector", cfg, device=default_device())
    ev = LocEvaluation(loc, test)
    held = {"role": f"test split ({len(test)} of {len(triples)} {made}; host photos held out)", **ev.metrics["rows"]}
    metrics = {**ev.metrics, "rows": held}
    write_text(folder / "test_metrics.json", json.dumps(metrics, indent=2, default=str))
    render_localization_report(metrics, ev.examples(), folder / "report.html", title=f"{step.id}: held-out split",
                               about=f"{step.id} ({cfg.model}, {cfg.steps} steps) · {held['role']}")
    px, image = metrics["pixel"]["at_threshold"], metrics["image"]
    figures = {"pixel_f1": px["f1"], "pixel_iou": px["iou"], "pixel_f1_at_0.5": metrics["pixel"]["at_0.5"]["f1"],
               "loc_threshold": px["threshold"], "image_roc_auc": image["roc_auc"],
               "image_balanced_accuracy": image["balanced_accuracy"], "image_f1": image["f1"],
               "per_category": {c: {"n": b["n"], "n_manipulated": b["at_threshold"]["n_manipulated"],
                                    "pixel_f1": b["at_threshold"]["f1"], "pixel_iou": b["at_threshold"]["iou"]}
                                for c, b in metrics["per_category"].items()}}
    val_px = loc.card.metrics["val"]["pixel"]["at_threshold"]
    tuned_on = {"role": f"validation split ({len(val)} images; early stopping and thresholds tuned here)",
                "n": len(val), "status": IN_SAMPLE}
    entry: dict[str, Any] = {"data": made, "n_train": len(fit), "n_val": len(val), "n_test": len(test),
                             "report": str(folder / "report.html"), "test_metrics": str(folder / "test_metrics.json")}
    if held["status"] == HELD_OUT:
        entry["metrics"] = {**figures, "rows": held}
        entry["not_held_out"] = {"pixel_f1": val_px["f1"], "pixel_iou": val_px["iou"], "rows": tuned_on}
    else:  # cannot happen with a source-disjoint split unless sources repeat under other names; never hidden
        entry["metrics"] = {"not_held_out": figures, "rows": held}
    return entry


def _with_dependencies(by_id: dict[str, Step], wanted: Sequence[str]) -> set[str]:
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; steps: {', '.join(by_id)}")
    todo, seen = list(wanted), set()
    while todo:
        sid = todo.pop()
        if sid not in seen:
            seen.add(sid)
            step = by_id[sid]
            todo += step.members + ([step.init] if step.init else [])
    return seen


def _summary(metrics: dict[str, Any], rows: dict[str, Any]) -> dict[str, Any]:
    """The headline figures and the rows they were computed on; figures that are not held-out are kept apart."""
    from synthdet.data.provenance import HELD_OUT

    figures = {"roc_auc": metrics["roc_auc"], "ap": metrics["ap"], "f1_tuned": metrics["at_threshold"]["f1"],
               "threshold": metrics["at_threshold"]["threshold"]}
    return {**figures, "rows": rows} if rows.get("status") == HELD_OUT else {"not_held_out": figures, "rows": rows}
