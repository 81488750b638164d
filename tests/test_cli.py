"""The command line as a user runs it: index, extract, train, predict, backbones, demo."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.demo import demo_data_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
runner = CliRunner()


def run(*args: str) -> object:
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A MediaEval-layout folder (0_real/, 1_fake/) with 12 demo images per class and two bad files."""
    root = tmp_path / "data"
    demo = demo_data_dir()
    for sub, cls in (("0_real", "real"), ("1_fake", "fake")):
        (root / sub).mkdir(parents=True)
        for p in sorted((demo / cls).iterdir())[:12]:
            shutil.copy(p, root / sub / p.name)
    (root / "1_fake" / "notes.jpg").write_text("this is not an image")
    (root / "0_real" / "cut.jpg").write_bytes(next((demo / "real").glob("*.jpg")).read_bytes()[:500])
    return root


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYNTHDET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_data_index_records_bad_files(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    res = run("data", "index", folder, "-o", out, "--folds", "3")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out)
    assert len(df) == 26 and (~df.ok).sum() == 2
    bad = df.set_index(df.path.map(lambda p: Path(p).name)).loc[["notes.jpg", "cut.jpg"]]
    assert bad.error.iloc[0].startswith("not-an-image") and bad.error.iloc[1].startswith(("truncated", "corrupt"))
    assert set(df.loc[df.ok, "split"]) == {"train", "val"} and set(df.loc[df.ok, "fold"]) == {0, 1, 2}
    assert "notes.jpg" in res.output


def test_data_index_wrong_label_column_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,klass\na.jpg,1\n")
    res = run("data", "index", bad, "-o", tmp_path / "m.csv")
    assert res.exit_code == 2 and "label" in res.output and "klass" in res.output


def test_data_index_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = run("data", "index", tmp_path / "empty")
    assert res.exit_code == 2 and "no images" in res.output


def test_extract_then_train_then_predict(folder: Path, tmp_path: Path, cache: Path) -> None:
    res = run("extract", folder, "--views", "2", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "48 views computed" in res.output and "2 skipped" in res.output
    det = tmp_path / "det"
    res = run("train", folder, "-o", det, "--head", "logreg", "--views", "2", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert "ROC AUC" in res.output and (det / "card.json").is_file()
    assert "0 views computed" not in res.output  # train reports a table, extraction was cached

    one = next((folder / "1_fake").glob("*.webp"))
    res = run("predict", det, one)
    assert res.exit_code == 0 and one.name in res.output and "p_fake=" in res.output

    out = tmp_path / "pred.csv"
    res = run("predict", det, folder, "-o", out, "--workers", "0")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ["image_id", "prob", "label", "threshold"]
    assert len(rows) == 24 and len({r["threshold"] for r in rows}) == 1
    assert all(int(r["label"]) == int(float(r["prob"]) >= float(r["threshold"])) for r in rows)
    assert all("/" not in r["image_id"] for r in rows)
    skipped = list(csv.DictReader(open(tmp_path / "pred.csv.skipped.csv")))
    assert sorted(Path(r["path"]).name for r in skipped) == ["cut.jpg", "notes.jpg"]


def test_predict_single_bad_file_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    res = run("predict", bad)
    assert res.exit_code == 1 and "cannot be scored" in res.output


def test_backbones_lists_registry() -> None:
    res = runner.invoke(app, ["backbones"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for name in ("effnet-lite0", "effnet-lite2", "clip-vit-l14", "eva02-l14", "timm:<model>"):
        assert name in res.output


def test_installed_entry_point_runs_demo(tmp_path: Path) -> None:
    """The README's main job, through the installed console script, in a folder without ../shared."""
    exe = shutil.which("synthdet") or pytest.skip("synthdet console script not installed")
    env = {**os.environ, "SYNTHDET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([exe, "demo", "--out", str(tmp_path / "demo")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out ROC AUC" in proc.stdout
    auc = float(proc.stdout.split("held-out ROC AUC")[1].split()[0])
    assert auc > 0.8
    assert (tmp_path / "demo" / "card.json").is_file()


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/dev")
def test_train_on_shared_dev_manifest(tmp_path: Path, cache: Path) -> None:
    """End to end on the curated development set: CSV with path,label,source,generator."""
    det = tmp_path / "det"
    res = run("train", SHARED / "manifest.csv", "-o", det, "--head", "logreg", "--views", "1")
    assert res.exit_code == 0, res.output
    card = pd.read_json(det / "card.json", typ="series")
    assert card["data"]["n_images"] >= 900
    assert card["metrics"]["val"]["roc_auc"] > 0.85
