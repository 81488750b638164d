"""Run descriptions: the text file handed in beside each submission zip, saying which data and which detector made
the run and under which rules (constrained: only the official training data; open: any data), read off the
detector's card so that what the working notes claim can be checked against what the model saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthdet.detectors.card import CardBase
from synthdet.io.atomic import write_text
from synthdet.version import __version__

#: What each run type allows, in the organisers' words (README of mever-team/mediaeval2025-sid).
RUN_RULES = {
    "constrained": "only the official training data (Task A: Wang et al. 2020 and Corvi et al. 2022; Task B: TGIF)",
    "open": "any data, including external or self-generated synthetic images",
}
TASKS = {"A": "real vs synthetic image detection", "B": "manipulated region localization"}
#: Card fields naming the model, in the order shown (those a card has).
_MODEL_FIELDS = ("kind", "backbone", "features", "head", "model", "encoder", "image_score", "weights_id")


def _value(v: Any, width: int = 160) -> str:
    text = ", ".join(map(str, v)) if isinstance(v, list | tuple) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def _data_lines(card: CardBase) -> list[str]:
    """What the card records of the training data: its ``data`` (sources, manifest hash, counts; not the split plan)
    and the rows fitted and calibrated on."""
    lines = [f"  {k}: {_value(v)}" for k, v in card.data.items() if k != "split_plan" and not isinstance(v, dict)]
    lines += [f"  {k}.{kk}: {_value(vv)}" for k, v in card.data.items() if isinstance(v, dict) and k != "split_plan"
              for kk, vv in v.items() if not isinstance(vv, dict)]
    lines += [f"  {role} rows: {rs.n} images (digest {rs.digest})" for role, rs in card.rows.items()]
    params = getattr(card, "params", {}) or {}
    lines += [f"  {k}: {params[k]}" for k in ("n_train", "n_val") if k in params]
    return lines or ["  (the card records nothing about its training data)"]


def describe_run(zip_path: Path, *, team: str, task: str, run: str, detector: str, card: CardBase, n_rows: int,
                 test_dir: Path | None, threshold: float, loc_threshold: float | None = None) -> str:
    """The run description of a written submission zip, as text (one ``key: value`` per line)."""
    model = "; ".join(f"{k} {getattr(card, k)}" for k in _MODEL_FIELDS if getattr(card, k, None) not in (None, ""))
    thresholds = f"threshold {threshold:.6f} (global)" + (
        f", loc_threshold {loc_threshold:.6f}" if loc_threshold is not None else "")
    lines = [
        f"# MediaEval SynthIm run description (synthdet {__version__})",
        f"team: {team}",
        f"task: {task} — {TASKS[task]}",
        f"run: {run} — {RUN_RULES[run]}",
        f"file: {Path(zip_path).name} ({n_rows} rows, one per test image"
        + (f" of {test_dir}" if test_dir is not None else "") + f"); {thresholds}",
        f"detector: {detector} ({model}); card created {card.created or 'unknown'} by synthdet {card.synthdet_version}",
        "training data (from the card):",
        *_data_lines(card),
    ]
    if threshold_from := card.data.get("threshold_from"):
        lines.append(f"threshold chosen: {threshold_from}")
    if run == "constrained" and "pool" in card.data:
        lines.append("warning: this detector was trained on a pool of its own (data.pool above), not only on the "
                     "official training data; a constrained run may use only the latter")
    lines.append(f"note: '{run}' is the team's declaration; the card above records what the detector was trained on, "
                 "to check against the run's rules")
    return "\n".join(lines) + "\n"


def write_run_description(zip_path: Path, text: str) -> Path:
    """Write ``text`` beside the zip as ``<zip stem>.run.txt``."""
    path = Path(zip_path).with_name(f"{Path(zip_path).stem}.run.txt")
    return write_text(path, text)
