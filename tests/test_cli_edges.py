"""Rough edges a new user hit (issue 20): what predict does with a first argument that is no detector, an output it
would overwrite, a run that scores nothing; what every command's help shows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import synthetic_photo, write_image
from typer.testing import CliRunner

from synthdet.cli import COMMANDS, app

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edges")
    write_image(root / "good" / "a.jpg", synthetic_photo(64, 48))
    (root / "bad").mkdir()
    (root / "bad" / "x.jpg").write_bytes(b"not an image")
    (root / "bad" / "y.png").write_bytes(b"nor this")
    return root


def test_a_first_argument_that_is_no_detector_is_refused_not_scored_as_an_image(images, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x02weights")
    res = runner.invoke(app, ["predict", str(tmp_path / "model.pt"), str(images / "good" / "a.jpg")])
    assert res.exit_code == 2 and "not a detector nor an image (.pt)" in res.output, res.output
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "head.safetensors").write_bytes(b"")
    res = runner.invoke(app, ["predict", str(tmp_path / "det"), str(images / "good" / "a.jpg")])
    assert res.exit_code == 2 and "detector folder without its card.json" in res.output, res.output
    renamed = tmp_path / "photo"  # an image without its suffix is still scored
    renamed.write_bytes((images / "good" / "a.jpg").read_bytes())
    res = runner.invoke(app, ["predict", str(renamed), str(images / "good" / "a.jpg"), "-q"])
    assert res.exit_code == 0, res.output


def test_predict_to_parquet_fails_when_nothing_scored_and_keeps_the_previous_output(images, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    out = tmp_path / "out.parquet"
    res = runner.invoke(app, ["predict", str(images / "bad"), "-o", str(out), "-q", "--workers", "0"])
    assert res.exit_code == 1 and "no image could be scored (2 skipped)" in res.output and not out.exists(), res.output
    res = runner.invoke(app, ["predict", str(images / "good"), "-o", str(out), "-q", "--workers", "0"])
    assert res.exit_code == 0, res.output
    before = out.read_bytes()
    res = runner.invoke(app, ["predict", str(images / "bad"), "-o", str(out), "-q", "--workers", "0"])
    assert res.exit_code == 1 and "kept as it was" in res.output, res.output
    assert out.read_bytes() == before and not list(tmp_path.glob("*.previous"))
    res = runner.invoke(app, ["predict", str(images), "-o", str(out), "-q", "--workers", "0"])  # a new one replaces it
    assert res.exit_code == 0 and len(pd.read_parquet(out)) == 3 and not list(tmp_path.glob("*.previous"))


@pytest.mark.parametrize("command", [["predict"], ["train"], ["data", "index"], ["localize", "train"]])
def test_help_shows_no_bool_placeholders_nor_completion_options_and_documents_workers(command: list[str]) -> None:
    res = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output and "completion" not in res.output, res.output
    if "--workers" in res.output:
        line = res.output[res.output.index("--workers"):].splitlines()[0]
        assert "workers" in line.split("--workers", 1)[1].lower(), line  # it says what it is
    assert set(COMMANDS) >= {"predict", "train", "data", "localize"}


def test_train_help_lists_every_registered_head() -> None:
    from synthdet.heads.base import HEADS

    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert all(name in res.output for name in HEADS.names()), res.output
