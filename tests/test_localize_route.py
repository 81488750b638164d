"""The README's Task B route on a plain real/fake folder (issue 20): index → make-manipulations → localize train →
localize evaluate. The folder's ``source`` is its class folder, so the triples must name their host photo themselves;
and a set built on the training photos under other names is in-sample by content, not held-out by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.data.demo import demo_data_dir

pytest.importorskip("segmentation_models_pytorch")
runner = CliRunner()


def _folder(root: Path, reals: list[Path], fakes: list[Path], prefix: str = "") -> Path:
    for cls, files in (("real", reals), ("fake", fakes)):
        (root / cls).mkdir(parents=True)
        for f in files:
            shutil.copyfile(f, root / cls / f"{prefix}{f.name}")
    return root


def _ok(*args: object) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_the_readme_route_works_on_a_plain_real_fake_folder(tmp_path: Path) -> None:
    demo = Path(demo_data_dir())
    reals, fakes = sorted((demo / "real").iterdir())[:8], sorted((demo / "fake").iterdir())[:4]
    data = _folder(tmp_path / "data", reals, fakes)
    _ok("data", "index", data, "-o", tmp_path / "m.csv", "-q")
    _ok("data", "make-manipulations", tmp_path / "m.csv", "-o", tmp_path / "manip", "--n", "24", "--size", "96", "-q")
    manip = pd.read_csv(tmp_path / "manip" / "manifest.csv")
    assert manip["source"].nunique() > 2  # one per host photo, not "real" for all
    out = _ok("localize", "train", tmp_path / "manip", "-o", tmp_path / "loc", "--model", "patch", "--steps", "2",
              "--batch", "4", "--crop", "64", "--device", "cpu", "-q")
    assert "validation (" in out and "nan" not in out, out
    # the same photos under other names: held out by name, seen by content
    again = _folder(tmp_path / "again", reals, fakes, prefix="copy_")
    _ok("data", "index", again, "-o", tmp_path / "a.csv", "-q")
    _ok("data", "make-manipulations", tmp_path / "a.csv", "-o", tmp_path / "amanip", "--n", "6", "--size", "96",
        "--seed", "5", "-q")
    rows = json.loads(_ok("localize", "evaluate", tmp_path / "loc", tmp_path / "amanip", "--json", "--device", "cpu"))
    rows = rows.get("rows") or rows["metrics"]["rows"]
    assert rows["status"] == "in-sample" and rows["n_seen_by_content"] >= 1, rows
