"""One self-contained HTML report for one or several evaluation runs, and the ``evaluate`` / ``report`` commands.

The report is a single file (inline CSS, plots as base64 PNG rendered by matplotlib's Agg canvas, thumbnails as base64
JPEG, no external URL), so it can be mailed, attached to an issue or opened offline. Several runs render side by
side: curves overlaid, tables with a column or row per run, and the gap of every run to the first (the
validation-to-test gap of Junaid et al. 2026, Table 2).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, precision_recall_curve, roc_curve

from . import __version__
from .evaluate import gap_table
from .pixels import ImageLoadError, load_image
from .slices import CLEAN, DEFAULT_SLICES, SLICES, EvalRun, evaluate_detector, get_slice

#: Thumbnails shown per kind of error (false positives, false negatives) and run; bounds the report's size.
N_THUMBNAILS = 8
THUMB_PX = 150
_DPI = 96
_COLORS = colormaps["tab10"].colors
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:18px 24px 60px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:18px;margin:0 0 10px;border-bottom:2px solid #e3e6ec;padding-bottom:4px}
h3{font-size:15px;margin:14px 0 6px}
section{background:#fff;border:1px solid #e3e6ec;border-radius:8px;padding:14px 18px;margin:16px 0}
.meta{color:#5b6475;font-size:13px}.note{color:#5b6475;font-size:12.5px;margin:6px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid #e8eaef;padding:4px 9px;text-align:right;white-space:nowrap}
th{background:#f0f2f6;font-weight:600}td.l,th.l{text-align:left;white-space:normal;max-width:360px}
.ci{color:#7a8294;font-size:11.5px}table.stack .ci{display:block}.neg{color:#b3261e}.pos{color:#1b7f3b}
img.plot{max-width:100%;height:auto;display:block;margin:6px 0}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:156px;font-size:11.5px;color:#3b4254}
figure img{display:block;border:1px solid #d5d9e1;max-width:150px;max-height:150px}
figcaption{word-break:break-all}summary{cursor:pointer;color:#2a5bd7;font-size:13px;margin:4px 0}
.ph{width:150px;height:96px;display:flex;align-items:center;justify-content:center;background:#eef0f4;color:#7a8294;border:1px dashed #c9ced8}
nav a{margin-right:12px;color:#2a5bd7;text-decoration:none;font-size:13px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
"""


# ------------------------------------------------------------------------------------------------ formatting


def _num(v: object, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.{digits}f}"


def _ci_cell(m: dict, key: str) -> str:
    """``value [low, high]`` for a metric of a metrics dict, the interval from its ``ci`` when there is one."""
    lo, hi = m.get("ci", {}).get(key, (None, None))
    ci = f' <span class="ci">[{_num(lo)}, {_num(hi)}]</span>' if lo is not None and not math.isnan(lo) else ""
    return _num(m[key]) + ci


def _delta(v: float) -> str:
    if math.isnan(v):
        return "–"
    v = 0.0 if abs(v) < 0.0005 else v  # no "-0.000"
    cls = "neg" if v < 0 else "pos" if v > 0 else ""
    return f'<span class="{cls}">{v:+.3f}</span>'


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1, stack: bool = False) -> str:
    """HTML table; cells are HTML already; the first ``left`` columns are left-aligned text; ``stack`` puts
    intervals under their values (wide tables)."""
    cls = [' class="l"' if i < left else "" for i in range(len(header))]
    head = "".join(f"<th{c}>{h}</th>" for c, h in zip(cls, header))
    body = "".join("<tr>" + "".join(f"<td{c}>{v}</td>" for c, v in zip(cls, row)) + "</tr>" for row in rows)
    cls_attr = ' class="stack"' if stack else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_axes(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **subplot_kw: Any
) -> tuple[Figure, np.ndarray]:
    """A figure outside pyplot: no global backend or figure registry is touched, so importing this module in a
    notebook changes nothing there, and nothing needs closing."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def _img_tag(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG (rendered by the Agg canvas that ``Figure.savefig`` uses for PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _swatch(i: int) -> str:
    r, g, b = (int(255 * c) for c in _COLORS[i % len(_COLORS)])
    return f'<span class="swatch" style="background:#{r:02x}{g:02x}{b:02x}"></span>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def _clean(run: EvalRun) -> tuple[np.ndarray, np.ndarray]:
    return run.scores["label"].to_numpy(dtype=int), run.scores[f"prob_{CLEAN}"].to_numpy(dtype=float)


# ------------------------------------------------------------------------------------------------ sections


def _summary(runs: list[EvalRun]) -> str:
    rows = []
    for i, r in enumerate(runs):
        m = r.metrics[CLEAN]
        info = r.info
        rows.append([
            _swatch(i) + html.escape(r.name), html.escape(str(info.get("data", ""))),
            f"{m['n']} ({m['n_fake']})", _ci_cell(m, "roc_auc"), _ci_cell(m, "ap"), _ci_cell(m, "eer"),
            _ci_cell(m["at_0.5"], "f1"), _ci_cell(m["at_threshold"], "f1") + f' <span class="ci">@{r.threshold:.3f}</span>',
            _ci_cell(m["oracle"], "f1") + f' <span class="ci">@{m["oracle"]["threshold"]:.3f}</span>',
            str(len(r.skipped)),
        ])
    level = runs[0].metrics[CLEAN].get("bootstrap", {})
    note = (f'<p class="note">Clean images. Brackets: {100 * level.get("level", 0.95):.0f} % percentile bootstrap '
            f'intervals ({level.get("n", 0)} resamples, stratified by class). "tuned" is the detector\'s own '
            f'threshold (chosen on its calibration split); the oracle threshold is re-tuned on this data, so it is '
            f'optimistic by construction.</p>')
    header = ["run", "data", "n (fake)", "ROC AUC", "AP", "EER", "F1 @ 0.5", "F1 @ tuned", "F1 oracle", "skipped"]
    return _section("summary", "Summary", _table(header, rows, left=2, stack=True) + note)


def _gap(runs: list[EvalRun]) -> str:
    table = gap_table({r.name: r.metrics[CLEAN] for r in runs})
    rows = [[html.escape(name), str(int(row.n)),
             *(cell for col in ("roc_auc", "ap", "f1", "accuracy") for cell in (_num(row[col]), _delta(row[f"{col}_delta"])))]
            for name, row in table.iterrows()]
    header = ["run", "n", "ROC AUC", "Δ", "AP", "Δ", "F1", "Δ", "accuracy", "Δ"]
    note = (f'<p class="note">Change from the first run ({html.escape(runs[0].name)}): with the first run on '
            f'validation data and the others on test data, this is the validation-to-test gap. F1 and accuracy at '
            f'each detector\'s tuned threshold.</p>')
    return _section("gap", "Gap to the reference run", _table(header, rows) + note)


def _metrics(runs: list[EvalRun]) -> str:
    parts = []
    for i, r in enumerate(runs):
        m = r.metrics[CLEAN]
        rows = []
        for key, label in (("at_0.5", "0.5"), ("at_threshold", "tuned"), ("oracle", "oracle")):
            d, c = m[key], m[key]["confusion"]
            rows.append([label, f"{d['threshold']:.3f}", *(_ci_cell(d, k) for k in ("accuracy", "precision", "recall", "f1")),
                         *(str(c[k]) for k in ("tn", "fp", "fn", "tp"))])
        parts.append(f"<h3>{_swatch(i)}{html.escape(r.name)}</h3>"
                     + _table(["at", "threshold", "accuracy", "precision", "recall", "F1", "TN", "FP", "FN", "TP"], rows))
    return _section("metrics", "Decision metrics (clean)", "".join(parts))


def _curves(runs: list[EvalRun]) -> str:
    fig, axes = _figure_axes(1, 2, figsize=(11, 4.6))
    roc_ax, pr_ax = axes[0]
    for i, r in enumerate(runs):
        y, p = _clean(r)
        m = r.metrics[CLEAN]
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
        ax.legend(loc="lower right" if ax is roc_ax else "lower left", fontsize=8.5)
    return _section("curves", "ROC and precision–recall curves", _img_tag(fig, "ROC and PR curves"))


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
    return _section("histograms", "Score distributions per class", _img_tag(fig, "score histograms"))


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
    return _section("confusion", "Confusion matrices (0.5 and tuned threshold)",
                    _img_tag(fig, "confusion matrices") + '<p class="note">Shares are per true class (rows).</p>')


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
    note = ('<p class="note">Points under the diagonal: the detector says "fake" more confidently than the data '
            'support. A shifted test distribution usually moves these points; re-tune the threshold rather than '
            'reading the probability literally.</p>')
    return _section("reliability", "Calibration", _img_tag(fig, "reliability diagram") + note)


def _group_kind(m: dict) -> str:
    return "fake" if m["n_fake"] == m["n"] else "real" if m["n_fake"] == 0 else "mixed"


def _groups(runs: list[EvalRun]) -> str:
    columns = list(dict.fromkeys(c for r in runs for c in r.metrics[CLEAN].get("by", {})))
    if not columns:
        return _section("groups", "Per source / generator", '<p class="note">No grouping column with several values.</p>')
    parts = []
    for col in columns:
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
        rows = []
        for v, m in zip(values, first):
            cells = [html.escape(v or "(empty)"), _group_kind(m), str(m["n"])]
            for b in by:
                g = b.get(v)
                cells += [_ci_cell(g["at_threshold"], "accuracy") if g else "–", _ci_cell(g, "roc_auc") if g else "–"]
            rows.append(cells)
        header = ["value", "class", "n"] + [h for r in runs for h in (f"correct {html.escape(r.name)}", "ROC AUC")]
        parts.append(f"<h3>per {html.escape(col)}</h3>" + _img_tag(fig, f"per-{col} bars")
                     + f"<details><summary>table ({len(values)} values)</summary>{_table(header, rows, left=2)}</details>")
    note = ('<p class="note">Single-class groups (every generator, every camera source) have no ROC AUC; their '
            '"correct" is the recall of fakes or the specificity on real photos. One easy family must not hide a weak '
            'one.</p>')
    return _section("groups", "Per source / generator (clean)", note + "".join(parts))


def _robustness(runs: list[EvalRun]) -> str:
    names = list(dict.fromkeys(s for r in runs for s in r.metrics if s != CLEAN))
    if not names:
        return _section("robustness", "Robustness slices", '<p class="note">No slice was evaluated.</p>')
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
    parts = [_img_tag(fig, "robustness deltas")]
    for i, (r, d) in enumerate(zip(runs, deltas)):
        rows = []
        for s in d.index:
            m = r.metrics[s]
            known = SLICES[s].description if s in SLICES else ""
            desc = "unaltered images" if s == CLEAN else r.info.get("slices", {}).get(s, known)
            rows.append([html.escape(s), html.escape(desc), str(m["n"]),
                         _ci_cell(m, "roc_auc"), _delta(d.loc[s, "roc_auc_delta"]),
                         _ci_cell(m["at_threshold"], "f1"), _delta(d.loc[s, "f1_delta"]),
                         _ci_cell(m["at_threshold"], "accuracy"), _delta(d.loc[s, "accuracy_delta"])])
        parts.append(f"<h3>{_swatch(i)}{html.escape(r.name)}</h3>"
                     + _table(["slice", "what", "n", "ROC AUC", "Δ", "F1 (tuned)", "Δ", "accuracy", "Δ"], rows, left=2))
        if r.info.get("empty_slices"):
            parts.append(f'<p class="note">No image in slice(s): {html.escape(", ".join(r.info["empty_slices"]))}.</p>')
    note = ('<p class="note">Transform slices re-score every image after the transform (seeded per image); subset '
            'slices (small) reuse the clean scores of their images. Δ is the change from clean.</p>')
    return _section("robustness", "Robustness slices", note + "".join(parts))


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


def _figure(row: pd.Series, show: Callable[[str], bool]) -> str:
    data = _thumbnail(row["path"]) if show(row["path"]) else ""
    img = ('<div class="ph">not shown</div>' if data == "" else '<div class="ph">file not found</div>' if data is None
           else f'<img alt="{html.escape(Path(row["path"]).name)}" src="data:image/jpeg;base64,{data}">')
    gen = html.escape(str(row.get("generator", ""))[:40])
    return (f"<figure>{img}<figcaption><b>p = {row[f'prob_{CLEAN}']:.3f}</b><br>{gen}<br>"
            f"{html.escape(Path(row['path']).name[-48:])}</figcaption></figure>")


def _errors(runs: list[EvalRun], show: Callable[[str], bool]) -> str:
    parts = []
    for i, r in enumerate(runs):
        s, p = r.scores, r.scores[f"prob_{CLEAN}"]
        fp = s[(s["label"] == 0) & (p >= r.threshold)].sort_values(f"prob_{CLEAN}", ascending=False)
        fn = s[(s["label"] == 1) & (p < r.threshold)].sort_values(f"prob_{CLEAN}")
        parts.append(f"<h3>{_swatch(i)}{html.escape(r.name)}</h3>")
        for title, rows, total in (("Real photos called fake, highest scores first", fp, len(fp)),
                                   ("Fakes called real, lowest scores first", fn, len(fn))):
            shown = rows.head(N_THUMBNAILS)
            figs = "".join(_figure(row, show) for _, row in shown.iterrows()) or '<p class="note">none</p>'
            parts.append(f'<p class="note"><b>{title}</b> — {len(shown)} of {total} at threshold '
                         f'{r.threshold:.3f}</p><div class="thumbs">{figs}</div>')
    return _section("errors", "Hardest errors (clean)", "".join(parts))


def _skipped(runs: list[EvalRun]) -> str:
    parts = []
    for r in runs:
        if len(r.skipped):
            rows = [[html.escape(str(x.path)), html.escape(str(x.slice)), html.escape(str(x.reason))]
                    for x in r.skipped.head(20).itertuples()]
            more = f'<p class="note">… and {len(r.skipped) - 20} more (skipped.csv).</p>' if len(r.skipped) > 20 else ""
            parts.append(f"<h3>{html.escape(r.name)}</h3>" + _table(["path", "stage", "reason"], rows, left=3) + more)
    return _section("skipped", "Files not scored", "".join(parts) or '<p class="note">None: every file was scored.</p>')


def render_report(
    runs: Sequence[EvalRun],
    out: str | Path,
    *,
    title: str = "synthdet evaluation report",
    thumbnails: bool | Callable[[str], bool] = True,
) -> Path:
    """Write one self-contained HTML report for ``runs`` (several: side by side, gaps to the first run).

    ``thumbnails``: show the hardest errors as images (True), not at all (False: private or unlicensed data, since a
    report travels), or only the paths a predicate accepts (e.g. rows whose licence allows redistribution).
    """
    if not runs:
        raise ValueError("render_report needs at least one evaluation run")
    runs = _unique_names(runs)
    show = thumbnails if callable(thumbnails) else lambda _: bool(thumbnails)
    sections = [_summary(runs), *([_gap(runs)] if len(runs) > 1 else []), _metrics(runs), _robustness(runs),
                _curves(runs), _histograms(runs), _confusions(runs), _reliability(runs), _groups(runs),
                _errors(runs, show), _skipped(runs)]
    nav = "".join(f'<a href="#{a}">{a}</a>' for a in (re.match(r'<section id="([^"]+)"', s)[1] for s in sections))
    runs_meta = "<br>".join(
        f"{_swatch(i)}<b>{html.escape(r.name)}</b>: {html.escape(_describe(r))}" for i, r in enumerate(runs))
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{_CSS}</style></head><body><main><h1>{html.escape(title)}</h1>"
           f'<p class="meta">{runs_meta}<br>rendered {time.strftime("%Y-%m-%d %H:%M")} by synthdet {__version__}</p>'
           f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out


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
             f"threshold {run.threshold:.3f}", run.info.get("created", "")]
    return " · ".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------------ one run
def run_evaluation(
    detector: Path | None,
    data: Path,
    out: Path,
    *,
    slices: Sequence[str] = DEFAULT_SLICES,
    bootstrap: int = 1000,
    batch_size: int | None = None,
    num_workers: int | None = None,
    split: str | None = None,
    name: str | None = None,
    thumbnails: bool = True,
    progress: bool = False,
) -> tuple[EvalRun, Path]:
    """``synthdet evaluate``: score DATA (optionally one ``split`` of its manifest) with a detector (None: the shipped
    one) clean and under ``slices``; save the run folder ``out`` and its HTML report; return the run and report."""
    from .data import ManifestError, index
    from .detector import Detector

    names = [get_slice(n).name for n in slices]  # unknown names fail before any scoring
    det = Detector.load(detector)
    df = index(data, progress=progress)
    if split is not None:
        if "split" not in df:
            raise ManifestError(f"{data}: no split column to select {split!r} from")
        df = df[df["split"] == split]
    run = evaluate_detector(det, df, slices=names, bootstrap=bootstrap, batch_size=batch_size, num_workers=num_workers,
                            name=name or Path(out).name, progress=progress)
    run.info["data"] = str(data) + (f" (split {split})" if split else "")
    run.info["detector"]["path"] = str(detector) if detector else "shipped default"
    run.save(out)
    return run, render_report([run], Path(out) / "report.html", thumbnails=thumbnails)
