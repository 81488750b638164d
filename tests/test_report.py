"""evaluate_detector + report: a tiny real detector (trained here on demo images) scored clean and under slices; the
self-contained HTML report, checked as text and rendered by headless Chromium; the evaluate/report commands."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import small_demo_csv
from PIL import Image
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.data.manifest import index, write_manifest
from synthdet.data.perturbations import is_small
from synthdet.data.splits import RowSet
from synthdet.detectors.detector import Detector
from synthdet.evaluation.runs import EvalRun, evaluate_detector
from synthdet.reporting.html import render_report

SECTIONS = ("summary", "metrics", "curves", "histograms", "confusion", "reliability", "groups", "robustness", "errors",
            "skipped")
PLOTS = ("ROC and PR curves", "score histograms", "confusion matrices", "reliability diagram", "per-generator bars",
         "robustness deltas")




@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Detector, pd.DataFrame, EvalRun]:
    """Train on 40 demo images (~10 s), then evaluate on them plus three rows that cannot be scored."""
    from synthdet.training.train import ProbeConfig, train_detector

    tmp = tmp_path_factory.mktemp("report")
    csv = small_demo_csv(tmp, 20)
    res = train_detector(csv, ProbeConfig(head="logreg", n_views=1, cache_dir=tmp / "cache", num_workers=0),
                         out=tmp / "det", progress=False)
    split = res.manifest["split"]
    res.detector.card.rows = {role: RowSet.of(res.manifest.loc[split == role, "sha256"]) for role in ("fit", "calib")}
    res.detector.save(tmp / "det")
    manifest = index(csv, progress=False)
    gone = manifest.iloc[0].copy()
    gone["path"], gone["sha256"] = str(tmp / "deleted-after-indexing.jpg"), "f" * 64  # its own content, now gone
    bad = manifest.iloc[1].copy()
    bad["ok"], bad["error"] = False, "truncated"
    unlabelled = manifest.iloc[2].copy()
    unlabelled["label"] = -1
    manifest = pd.concat([manifest, pd.DataFrame([gone, bad, unlabelled])], ignore_index=True)
    write_manifest(manifest, tmp / "manifest.csv")
    run = evaluate_detector(res.detector, manifest, slices=["jpeg85", "small"], bootstrap=200, num_workers=0,
                            name="tiny", on_overlap="flag")  # its training data: every figure in-sample
    return tmp, res.detector, manifest, run


def test_evaluate_detector_scores_clean_and_slices(evaluated) -> None:
    _, det, manifest, run = evaluated
    s = run.scores
    assert len(s) == 40 and s["label"].sum() == 20
    assert {"path", "label", "source", "generator", "prob_clean", "prob_jpeg85"} <= set(s.columns)
    assert "prob_small" not in s  # a subset slice is not re-scored
    clean = dict((p, prob) for p, prob, _ in det.predict_paths(s["path"].head(4).tolist(), num_workers=0, progress=False))
    assert np.allclose([clean[p] for p in s["path"].head(4)], s["prob_clean"].head(4), atol=1e-6)
    assert not np.allclose(s["prob_clean"], s["prob_jpeg85"])  # the slice reached the pixels
    assert np.abs(s["prob_clean"] - s["prob_jpeg85"]).max() < 0.5  # … and is still the same image
    assert run.slices == ["clean", "jpeg85", "small"]
    assert run.metrics["small"]["n"] == int(is_small(s).sum())
    assert run.threshold == det.threshold and run.metrics["clean"]["at_threshold"]["threshold"] == det.threshold
    assert "generator" in run.metrics["clean"]["by"]  # per-generator metrics for clean
    assert "source" not in run.metrics["clean"]["by"]  # one source per file: no groups worth reporting
    d = run.deltas()
    assert list(d.index) == run.slices and d.loc["clean", "roc_auc_delta"] == 0
    assert d.loc["jpeg85", "f1_delta"] == pytest.approx(
        run.metrics["jpeg85"]["at_threshold"]["f1"] - run.metrics["clean"]["at_threshold"]["f1"])
    reasons = {(Path(r.path).name, r.slice): r.reason for r in run.skipped.itertuples()}
    assert reasons[("deleted-after-indexing.jpg", "clean")] == "not-found"
    assert ("no label" in reasons.values()) and ("truncated" in reasons.values())
    assert len(run.skipped) == 3


def test_eval_run_saves_and_loads(evaluated, tmp_path: Path) -> None:
    *_, run = evaluated
    back = EvalRun.load(run.save(tmp_path / "run"))
    pd.testing.assert_frame_equal(back.scores, run.scores)
    for metric, interval in run.metrics["clean"]["ci"].items():
        assert back.metrics["clean"]["ci"][metric] == pytest.approx(interval)
    assert len(back.skipped) == 3 and back.info["slices"] == run.info["slices"]


def check_html(html: str, n_runs: int) -> None:
    """Self-contained: no remote URL anywhere a browser would fetch one; all sections; inline PNG plots."""
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html, re.I) and "<script" not in html.lower()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html, anchor
    pngs = dict(re.findall(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html))
    assert set(PLOTS) <= set(pngs)
    for data in pngs.values():
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and im.width > 300
    assert re.search(r'src="data:image/jpeg;base64,', html)  # error thumbnails
    assert html.count('<span class="swatch"') >= n_runs


def test_report_single_run(evaluated, tmp_path: Path) -> None:
    *_, run = evaluated
    out = render_report([run], tmp_path / "r.html")
    html = out.read_text()
    check_html(html, 1)
    assert 'id="gap"' not in html  # no reference to compare with
    assert "Robustness slices" in html and "jpeg85" in html and "ROC AUC" in html
    # its own training data: every figure says in-sample, with the overlap, n and digest of the rows
    rows = run.metrics["clean"]["rows"]
    assert rows["status"] == "in-sample" and "tiny [in-sample]" in html and 'class="warn"' in html
    assert f"in-sample ({rows['n_seen']} of {rows['n']} seen)" in html and rows["digest"] in html
    held_out = {c: {**m, "rows": {**m["rows"], "status": "held-out", "n_seen": 0}} for c, m in run.metrics.items()}
    clean = render_report([replace(run, metrics=held_out)], tmp_path / "held-out.html").read_text()
    assert "in-sample" not in clean and 'class="warn"' not in clean and ">held-out<" in clean
    old = {c: {k: v for k, v in m.items() if k != "rows"} for c, m in run.metrics.items()}  # saved before rows
    unknown = render_report([replace(run, metrics=old)], tmp_path / "old.html").read_text()
    assert "tiny [provenance unknown]" in unknown and 'class="warn"' in unknown
    private = render_report([run], tmp_path / "private.html", thumbnails=False).read_text()
    assert "data:image/jpeg" not in private and "not shown" in private  # a report travels; private data need not
    some = render_report([run], tmp_path / "some.html", thumbnails=lambda p: "real" in Path(p).parts).read_text()
    assert 0 < some.count("data:image/jpeg") < html.count("data:image/jpeg")


def test_report_compares_runs_side_by_side(evaluated, tmp_path: Path) -> None:
    *_, run = evaluated
    other = EvalRun("tiny", run.threshold, run.scores, {"clean": run.metrics["clean"]}, run.skipped, run.info)
    html = render_report([run, other], tmp_path / "cmp.html").read_text()
    check_html(html, 2)
    assert 'id="gap"' in html and "tiny [in-sample] (2)" in html  # repeated names are told apart
    odd = render_report([replace(run, name="<i>x</i>")], tmp_path / "odd.html").read_text()
    assert "&lt;i&gt;x&lt;/i&gt;" in odd and "<i>x</i>" not in odd  # autoescaped


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_renders_in_headless_chromium(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    *_, run = request.getfixturevalue("evaluated")  # only now: skipping must not cost the training
    report = render_report([run], tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
         f"file://{report}"],
        check=True, capture_output=True, timeout=120,
    )
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        px = np.asarray(im.convert("L"), dtype=np.float64)
    assert px.std() > 20  # not blank: text, tables and plots
    assert (px < 100).mean() > 0.005  # dark ink (text, curves) somewhere
    upper, lower = px[:1000], px[1000:]
    assert upper.std() > 10 and lower.std() > 10  # content down the page, not only a header


def test_commands_evaluate_and_report(evaluated, tmp_path: Path) -> None:
    tmp, *_ = evaluated
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp / "det"), str(tmp / "manifest.csv"), "-o", str(tmp_path / "x"),
                              "-s", "small", "--bootstrap", "50", "--workers", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "were used to fit or calibrate this detector" in res.output  # its training data
    res = runner.invoke(app, ["evaluate", str(tmp / "det"), str(tmp / "manifest.csv"), "-o", str(tmp_path / "held"),
                              "-s", "small", "--bootstrap", "50", "--workers", "0", "--on-overlap", "drop"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "dropped " in res.output and "fitted or calibrated on" in res.output, res.output
    res = runner.invoke(app, ["evaluate", str(tmp / "det"), str(tmp / "manifest.csv"), "-o", str(tmp_path / "run"),
                              "-s", "small", "--bootstrap", "50", "--workers", "0", "--on-overlap", "flag"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "in-sample" in res.output
    for name in ("scores.csv", "metrics.json", "skipped.csv", "report.html"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "ROC AUC" in res.output and "small" in res.output
    run = EvalRun.load(tmp_path / "run")
    assert run.slices == ["clean", "small"] and run.name == "run" and len(run.skipped) == 3
    res = runner.invoke(app, ["report", str(tmp_path / "run"), str(tmp_path / "run"), "-o", str(tmp_path / "cmp.html")])
    assert res.exit_code == 0, res.output
    check_html((tmp_path / "cmp.html").read_text(), 2)
    res = runner.invoke(app, ["evaluate", str(tmp / "det"), str(tmp / "manifest.csv"), "-o", str(tmp_path / "x"),
                              "-s", "jpeg42"])
    assert res.exit_code == 2 and "unknown slice" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "y.html")])
    assert res.exit_code == 2
