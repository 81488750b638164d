"""One self-contained HTML report for one or several evaluation runs, and the ``evaluate`` / ``report`` commands.

The report is a single file rendered from a Jinja2 template (``templates/report.html.j2``, autoescaped; inline CSS,
plots as base64 PNG rendered by matplotlib's Agg canvas, thumbnails as base64 JPEG, no external URL), so it can be
mailed, attached to an issue or opened offline. Several runs render side by
side: curves overlaid, tables with a column or row per run, and the gap of every run to the first (the
validation-to-test gap of Junaid et al. 2026, Table 2).
"""

from __future__ import annotations

import base64
import functools
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, precision_recall_curve, roc_curve

from synthdet.data.perturbations import SLICES, get_slice
from synthdet.data.provenance import HELD_OUT, describe_rows
from synthdet.evaluation.metrics import gap_table
from synthdet.evaluation.runs import CLEAN, EvalRun
from synthdet.io.atomic import write_text
from synthdet.io.pixels import ImageLoadError, load_image
from synthdet.version import __version__

#: Thumbnails shown per kind of error (false positives, false negatives) and run; bounds the report's size.
N_THUMBNAILS = 8
THUMB_PX = 150
#: Skipped files listed per run (the rest are in the run's skipped.csv).
N_SKIPPED = 20
_DPI = 96
#: Run colours (tab10), as hex: matplotlib draws with them, the template paints the swatches.
_COLORS = [to_hex(colormaps["tab10"](i)) for i in range(10)]


def _num(v: Any, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


@functools.cache
def _template(name: str = "report.html.j2") -> jinja2.Template:
    """A report template (package data under ``synthdet/templates``), every value HTML-escaped."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("synthdet.reporting", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.filters["num"] = _num
    return env.get_template(name)


# ------------------------------------------------------------------------------------------------ plots


def _figure_axes(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplot_kw: Any
) -> tuple[Figure, np.ndarray]:
    """A figure outside pyplot: no global backend or figure registry is touched, so importing this module in a
    notebook changes nothing there, and nothing needs closing."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def _png(fig: Figure) -> str:
    """The figure as base64 PNG (rendered by the Agg canvas that ``Figure.savefig`` uses for PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return base64.b64encode(buf.getvalue()).decode()


def _clean(run: EvalRun) -> tuple[np.ndarray, np.ndarray]:
    return run.scores["label"].to_numpy(dtype=int), run.scores[f"prob_{CLEAN}"].to_numpy(dtype=float)


def _curves(runs: list[EvalRun]) -> str:
    fig, axes = _figure_axes(1, 2, figsize=(11, 4.6))
    roc_ax, pr_ax = axes[0]
    for i, r in enumerate(runs):
        y, p = _clean(r)
        m = r.metrics[CLEAN]
        if len(np.unique(y)) < 2:  # a one-class set (all generated): no curve to draw; its TPR is in the tables
            continue
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        color = _COLORS[i % len(_COLORS)]
        roc_ax.plot(fpr, tpr, color=color, lw=1.8, label=f"{r.name}  AUC {m['roc_auc']:.3f}")
        pr_ax.step(rec, prec, where="post", color=color, lw=1.8, label=f"{r.name}  AP {m['ap']:.3f}")
        pr_ax.axhline(y.mean(), color=color, lw=0.8, ls=":")
    roc_ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    roc_ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title="ROC")
    pr_ax.set(xlabel="recall (fakes found)", ylabel="precision", title="Precision–recall (dotted: share of fakes)",
              ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # none when every run is one-class
            ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8.5)
    return _png(fig)


def _panels(n: int, width: float = 3.8, height: float = 3.2) -> tuple[Figure, np.ndarray]:
    """Up to three panels of ``width`` × ``height`` inches per row; the unused ones hidden."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = _figure_axes(rows, cols, figsize=(max(6.0, width * cols), height * rows))
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()


def _histograms(runs: list[EvalRun]) -> str:
    fig, axes = _panels(len(runs))
    bins = np.linspace(0, 1, 31)
    for ax, r in zip(axes, runs):
        y, p = _clean(r)
        ax.hist(p[y == 0], bins=bins, alpha=0.6, color="#2a7ab9", label=f"real (n={int((y == 0).sum())})")
        ax.hist(p[y == 1], bins=bins, alpha=0.6, color="#d1495b", label=f"fake (n={int((y == 1).sum())})")
        ax.axvline(0.5, color="#555", lw=0.9, ls=":", label="0.5")
        ax.axvline(r.threshold, color="#111", lw=1.2, ls="--", label=f"tuned {r.threshold:.3f}")
        ax.set(title=r.name, xlabel="probability of being generated", ylabel="images")
        ax.legend(fontsize=8)
    return _png(fig)


def _confusions(runs: list[EvalRun]) -> str:
    fig, axes = _figure_axes(len(runs), 2, figsize=(7.2, 3.1 * len(runs)))
    for row, r in zip(axes, runs):
        m = r.metrics[CLEAN]
        for ax, key in zip(row, ("at_0.5", "at_threshold")):
            c = m[key]["confusion"]
            mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
            share = mat / np.maximum(mat.sum(1, keepdims=True), 1)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            for (a, b), v in np.ndenumerate(mat):
                ax.text(b, a, f"{v}\n{share[a, b]:.0%}", ha="center", va="center",
                        color="white" if share[a, b] > 0.6 else "black", fontsize=10)
            ax.set_xticks([0, 1], ["real", "fake"])
            ax.set_yticks([0, 1], ["real", "fake"])
            ax.set(xlabel="predicted", ylabel="true",
                   title=f"{r.name}\n{'at 0.5' if key == 'at_0.5' else 'tuned'} (threshold {m[key]['threshold']:.3f})")
    return _png(fig)


def _reliability(runs: list[EvalRun]) -> str:
    fig, axes = _figure_axes(2, 1, figsize=(6.4, 6.2), height_ratios=[3, 1], sharex=True)
    ax, hist_ax = axes[:, 0]
    ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=0.8, label="perfectly calibrated")
    for i, r in enumerate(runs):
        y, p = _clean(r)
        frac, mean_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
        color = _COLORS[i % len(_COLORS)]
        ax.plot(mean_pred, frac, "o-", color=color, label=f"{r.name}  Brier {brier_score_loss(y, p):.3f}")
        hist_ax.hist(p, bins=np.linspace(0, 1, 11), histtype="step", lw=1.6, color=color)
    ax.set(ylabel="observed share of fakes", title="Reliability diagram (10 equal-width bins)", ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5, loc="upper left")
    hist_ax.set(xlabel="predicted probability of being generated", ylabel="images")
    return _png(fig)


def _group_kind(m: dict) -> str:
    return "fake" if m["n_fake"] == m["n"] else "real" if m["n_fake"] == 0 else "mixed"


def _groups(runs: list[EvalRun]) -> list[dict[str, Any]]:
    """Per grouping column: a bar plot of the share classified correctly per value and run, and its table rows."""
    out = []
    for col in dict.fromkeys(c for r in runs for c in r.metrics[CLEAN].get("by", {})):
        by = [r.metrics[CLEAN].get("by", {}).get(col, {}) for r in runs]
        values = sorted({v for b in by for v in b}, key=lambda v: (-max(b[v]["n"] for b in by if v in b), v))
        first = [next(b[v] for b in by if v in b) for v in values]
        labels = [f"{v[:48] or '(empty)'} [{_group_kind(m)}, n={m['n']}]" for v, m in zip(values, first)]
        fig, axes = _figure_axes(figsize=(10.5, 1.2 + 0.24 * len(values) * max(1, 0.6 * len(runs))))
        ax = axes[0, 0]
        height = 0.8 / len(runs)
        for i, (r, b) in enumerate(zip(runs, by)):
            pos = np.arange(len(values)) + (i - (len(runs) - 1) / 2) * height
            acc = np.array([b[v]["at_threshold"]["accuracy"] if v in b else np.nan for v in values])
            ci = np.array([b[v]["at_threshold"].get("ci", {}).get("accuracy", [np.nan, np.nan]) if v in b
                           else [np.nan, np.nan] for v in values], dtype=float)
            err = np.abs(np.stack([acc - ci[:, 0], ci[:, 1] - acc]))
            ax.barh(pos, acc, height=height, color=_COLORS[i % len(_COLORS)], label=r.name,
                    xerr=np.nan_to_num(err), error_kw={"lw": 0.8, "ecolor": "#444"})
        ax.set_yticks(np.arange(len(values)), labels, fontsize=8)
        ax.set_ylim(len(values) - 0.5, -0.5)  # first value on top, no empty margin
        ax.set(xlim=(0, 1.02), xlabel="share classified correctly at the tuned threshold", title=f"per {col}")
        ax.grid(axis="x", alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8, loc="lower right")
        rows = [{"value": v, "kind": _group_kind(m), "n": m["n"], "per_run": [b.get(v) for b in by]}
                for v, m in zip(values, first)]
        out.append({"column": col, "plot": _png(fig), "rows": rows})
    return out


def _robustness(runs: list[EvalRun]) -> dict[str, Any] | None:
    """A bar plot of every slice's change from clean, and per run the slice table rows (None: no slice)."""
    names = list(dict.fromkeys(s for r in runs for s in r.metrics if s != CLEAN))
    if not names:
        return None
    deltas = [r.deltas() for r in runs]
    fig, axes = _figure_axes(1, 3, figsize=(12, 3.8))
    axes = axes[0]
    width = 0.8 / len(runs)
    for ax, col, title in zip(axes, ("roc_auc", "f1", "accuracy"), ("Δ ROC AUC", "Δ F1 (tuned)", "Δ accuracy (tuned)")):
        for i, (r, d) in enumerate(zip(runs, deltas)):
            vals = [d.loc[s, f"{col}_delta"] if s in d.index else np.nan for s in names]
            ax.bar(np.arange(len(names)) + (i - (len(runs) - 1) / 2) * width, vals, width=width,
                   color=_COLORS[i % len(_COLORS)], label=r.name)
        ax.axhline(0, color="#333", lw=0.8)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    if len(runs) > 1:
        axes[0].legend(fontsize=8)
    per_run = []
    for r, d in zip(runs, deltas):
        slices = []
        for s in d.index:
            known = get_slice(s).description if s in SLICES else ""
            slices.append({"name": s, "m": r.metrics[s], "d": d.loc[s].to_dict(), "rows": r.rows_for(s),
                           "what": "unaltered images" if s == CLEAN else r.info.get("slices", {}).get(s, known)})
        per_run.append({"name": r.name, "slices": slices, "empty": r.info.get("empty_slices", [])})
    return {"plot": _png(fig), "runs": per_run}


def _thumbnail(path: str) -> str | None:
    """A small base64 JPEG of the image, or None when the file is gone or unreadable (a report outlives data)."""
    try:
        img = load_image(path, draft_size=THUMB_PX)
    except (ImageLoadError, OSError):
        return None
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=72)
    return base64.b64encode(buf.getvalue()).decode()


def _errors(runs: list[EvalRun], show: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Per run, the hardest false positives and false negatives: thumbnail ("" not shown, None not found), score."""
    out = []
    for r in runs:
        s, p = r.scores, r.scores[f"prob_{CLEAN}"]
        fp = s[(s["label"] == 0) & (p >= r.threshold)].sort_values(f"prob_{CLEAN}", ascending=False)
        fn = s[(s["label"] == 1) & (p < r.threshold)].sort_values(f"prob_{CLEAN}")
        kinds = [{"title": title, "total": len(rows), "shown": [
            {"thumb": _thumbnail(row["path"]) if show(row["path"]) else "", "prob": float(row[f"prob_{CLEAN}"]),
             "generator": str(row.get("generator", ""))[:40], "name": Path(row["path"]).name}
            for _, row in rows.head(N_THUMBNAILS).iterrows()]}
            for title, rows in (("Real photos called fake, highest scores first", fp),
                                ("Fakes called real, lowest scores first", fn))]
        out.append({"name": r.name, "threshold": r.threshold, "kinds": kinds})
    return out


def render_report(
    runs: Sequence[EvalRun],
    out: str | Path,
    *,
    title: str = "synthdet evaluation report",
    thumbnails: bool | Callable[[str], bool] = True,
) -> Path:
    """Write one self-contained HTML report for ``runs`` (several: side by side, gaps to the first run).

    ``thumbnails``: show the hardest errors as images (True), not at all (False: private or unlicensed data, since a
    report travels), or only the paths a predicate accepts (e.g. rows whose licence allows redistribution). A run
    whose figures are not held-out (in-sample, or of unknown provenance) carries that label in its name, so every
    table and plot says it.
    """
    if not runs:
        raise ValueError("render_report needs at least one evaluation run")
    runs = _unique_names(_labelled(runs))
    show = thumbnails if callable(thumbnails) else lambda _: bool(thumbnails)
    robustness = _robustness(runs)
    groups = _groups(runs)
    gap = ([{**row.to_dict(), "name": name, "n": int(row.n)}
            for name, row in gap_table({r.name: r.metrics[CLEAN] for r in runs}).iterrows()] if len(runs) > 1 else [])
    anchors = ["summary", *(["gap"] if gap else []), "metrics", "robustness", "curves", "histograms", "confusion",
               "reliability", "groups", "errors", "skipped"]
    doc = _template().render(
        title=title, version=__version__, rendered=time.strftime("%Y-%m-%d %H:%M"), anchors=anchors,
        colors=_COLORS, bootstrap=runs[0].metrics[CLEAN].get("bootstrap", {}),
        runs=[{"name": r.name, "describe": _describe(r), "data": str(r.info.get("data", "")), "threshold": r.threshold,
               "clean": r.metrics[CLEAN], "rows": r.rows, "n_skipped": len(r.skipped),
               "skipped": r.skipped.head(N_SKIPPED).to_dict("records")} for r in runs],
        not_held_out=[r.name for r in runs if r.rows["status"] != HELD_OUT],
        gap=gap, robustness=robustness, groups=groups, errors=_errors(runs, show),
        plots={"curves": _curves(runs), "histograms": _histograms(runs), "confusion": _confusions(runs),
               "reliability": _reliability(runs)},
    )
    return write_text(out, doc)


def _labelled(runs: Sequence[EvalRun]) -> list[EvalRun]:
    """Runs whose clean figures are not held-out renamed ``name [in-sample]`` / ``name [provenance unknown]``."""
    return [r if r.rows["status"] == HELD_OUT else replace(r, name=f"{r.name} [{r.rows['status']}]") for r in runs]


def _unique_names(runs: Sequence[EvalRun]) -> list[EvalRun]:
    """Runs renamed ``name (2)`` … where names repeat: the gap table and legends are keyed by name."""
    seen: dict[str, int] = {}
    out = []
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        out.append(replace(r, name=f"{r.name} ({seen[r.name]})") if seen[r.name] > 1 else r)
    return out


def _describe(run: EvalRun) -> str:
    d = run.info.get("detector", {})
    parts = [f"{d.get('backbone', '?')} + {d.get('head', '?')} ({d.get('features', '?')})" if d else "",
             f"detector {d['path']}" if d.get("path") else "", f"data {run.info['data']}" if run.info.get("data") else "",
             f"threshold {run.threshold:.3f}", f"rows {describe_rows(run.rows)}", run.info.get("created", "")]
    return " · ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------ Task B
def _jpeg(img: Any, quality: int = 82) -> str:
    """A PIL image as base64 JPEG (overlays are small: a few kB each)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode()


def render_localization_report(
    metrics: dict[str, Any],
    examples: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    title: str = "synthdet localization report",
    about: str = "",
) -> Path:
    """Write one self-contained HTML report of a Task B evaluation: ``metrics`` from
    :func:`synthdet.localization.evaluate.evaluate_localizer` (with its ``rows`` provenance), the pixel tables per category,
    per type and per source, the image-level decision, and ``examples`` (:meth:`synthdet.localization.evaluate.LocEvaluation.examples`: PIL
    ``overlay`` and ``map`` images) as embedded JPEG overlays of predicted against true masks."""
    shown = [{**{k: v for k, v in e.items() if k not in ("overlay", "map")}, "name": Path(e["path"]).name,
              "overlay": _jpeg(e["overlay"]), "map": _jpeg(e["map"])} for e in examples]
    tables = [("category", [("all", metrics["pixel"]), *metrics["per_category"].items()])]
    tables += [(name, list(metrics[f"per_{name}"].items())) for name in ("type", "source") if f"per_{name}" in metrics]
    doc = _template("localize.html.j2").render(
        title=title, version=__version__, rendered=time.strftime("%Y-%m-%d %H:%M"), about=about,
        rows=metrics["rows"], image=metrics["image"], tables=tables, examples=shown,
        loc_threshold=metrics["pixel"]["at_threshold"]["threshold"], convention=metrics.get("convention", ""),
    )
    return write_text(out, doc)
