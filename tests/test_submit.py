"""Submission writers and checkers: every malformation the organisers would reject is caught by name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_photo, write_image
from PIL import Image
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.detectors.card import default_detector_path
from synthdet.reporting.submission_check import check_task_a, check_task_b
from synthdet.reporting.submit import (
    TASK_A_COLUMNS,
    TASK_B_COLUMNS,
    RowError,
    TaskAWriter,
    missing_row,
    write_scores,
    write_task_a,
    write_task_b,
)

SRC = Path(__file__).resolve().parents[1] / "src"

#: name -> (width, height); different sizes and an upper-case suffix on purpose.
IMAGES = {"a.jpg": (32, 24), "b.png": (20, 40), "C.BMP": (17, 9)}
HEADER = ",".join(TASK_A_COLUMNS)
VALID_ROWS = ["a.jpg,0.900000,1,0.500000", "b.png,0.100000,0,0.500000", "C.BMP,0.500000,1,0.500000"]


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    for name, size in IMAGES.items():
        Image.new("RGB", size, (120, 30, 200)).save(d / name)
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.jpg").write_bytes(b"")
    return d


def _shape(name: str) -> tuple[int, int]:
    w, h = IMAGES[name]
    return h, w


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "task_a.csv"
    path.write_text(text)
    return path


def test_written_task_a_passes(tmp_path: Path, images_dir: Path) -> None:
    out = write_task_a([("a.jpg", 0.9), ("b.png", 0.1), ("sub/C.BMP", 0.5)], 0.5, tmp_path / "out" / "a.csv")
    report = check_task_a(out, images_dir)
    assert report.ok, report.errors
    assert report.n_rows == 3
    assert out.read_text().splitlines() == [HEADER, *VALID_ROWS]
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.csv"]  # no temp file left behind


def test_label_follows_the_written_rounding(tmp_path: Path, images_dir: Path) -> None:
    """0.4999996 is written as 0.500000, so with threshold 0.5 the label a reader expects is 1."""
    out = write_task_a([("a.jpg", 0.4999996), ("b.png", 0.1), ("C.BMP", 0.7)], 0.5, tmp_path / "a.csv")
    row = pd.read_csv(out).iloc[0]
    assert (row.prob, row.label) == (0.5, 1)
    assert check_task_a(out, images_dir).ok


def test_missing_prob_gets_the_given_prior_and_its_label_without_a_warning(tmp_path: Path, images_dir: Path) -> None:
    with pytest.raises(ValueError, match="no prior"):
        write_task_a([("a.jpg", 0.9), ("b.png", None), ("C.BMP", 0.1)], 0.6, tmp_path / "a.csv")
    assert not (tmp_path / "a.csv").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller reports the file; the library does not warn
        out = write_task_a([("a.jpg", 0.9), ("b.png", float("nan")), ("C.BMP", None)], 0.6, tmp_path / "a.csv",
                           prior=0.3)
    df = pd.read_csv(out).set_index("image_id")
    assert df.loc[["b.png", "C.BMP"], "prob"].tolist() == [0.3, 0.3] and df.loc[["b.png", "C.BMP"], "label"].tolist() == [0, 0]
    out = write_task_a([("a.jpg", 0.9), ("b.png", None), ("C.BMP", 0.1)], 0.6, tmp_path / "a.csv", prior=0.8)
    assert pd.read_csv(out).set_index("image_id").loc["b.png", ["prob", "label"]].tolist() == [0.8, 1]
    assert missing_row(0.8, 0.6) == (0.8, 1) and missing_row(0.3, 0.6) == (0.3, 0)
    assert check_task_a(out, images_dir).ok


def test_one_writer_streams_lf_rows_and_refuses_what_the_organisers_would_reject() -> None:
    sink = io.StringIO()
    writer = TaskAWriter(sink, 0.5)
    assert sink.getvalue() == ""  # the header comes with the first row: nothing scored, nothing written
    assert writer.write("dir/a.jpg", 0.4999996) == 1
    for path, prob, error in (("other/a.jpg", 0.2, "duplicate image_id a.jpg"), ("b.png", 1.5, "outside"),
                              (os.fsdecode(b"caf\xe9.jpg"), 0.2, r"caf\\xe9\.jpg.*not valid UTF-8")):
        with pytest.raises(RowError, match=error):
            writer.write(path, prob)
    assert sink.getvalue() == "image_id,prob,label,threshold\na.jpg,0.500000,1,0.500000\n"

    skipped: list[tuple[str, str]] = []
    sink = io.StringIO()
    results = [("x/a.jpg", 0.7, ""), ("x/bad.png", None, "not-an-image"), (os.fsdecode(b"caf\xe9.jpg"), 0.1, "")]
    assert write_scores(results, 0.5, sink, lambda p, r: skipped.append((p, r))) == 1
    assert sink.getvalue().splitlines() == ["image_id,prob,label,threshold", "a.jpg,0.700000,1,0.500000"]
    assert [p for p, _ in skipped] == ["x/bad.png", os.fsdecode(b"caf\xe9.jpg")] and skipped[0][1] == "not-an-image"
    assert write_scores([("bad.png", None, "x")], 0.5, sink := io.StringIO(), lambda p, r: None) == 0
    assert sink.getvalue() == ""


@pytest.mark.parametrize(
    ("rows", "error"),
    [
        ([("a.jpg", 1.5)], r"prob outside \[0, 1\]: a\.jpg \(1\.5\)"),
        ([("a.jpg", 0.5), ("dir/a.jpg", 0.5)], "duplicate image_id"),
        ([], "no rows"),
    ],
)
def test_write_task_a_refuses_bad_input(tmp_path: Path, rows: list, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        write_task_a(rows, 0.5, tmp_path / "a.csv")
    assert not list(tmp_path.iterdir())


def _text(rows: list[str], header: str = HEADER) -> str:
    return header + "\n" + "\n".join(rows)


def _replace(row: int, new: str) -> list[str]:
    rows = list(VALID_ROWS)
    rows[row] = new
    return rows


# case -> (csv text, expected substring of the single error)
MALFORMED_A = {
    "wrong header": (_text(VALID_ROWS, "image_id,score,label,threshold"), "wrong header 'image_id,score"),
    "column order": (
        _text([",".join(r.split(",")[i] for i in (0, 2, 1, 3)) for r in VALID_ROWS], "image_id,label,prob,threshold"),
        "columns in the wrong order",
    ),
    "missing id": (
        _text(VALID_ROWS[:2]),
        "missing image_id (image in the images directory but not in the file) (1): C.BMP",
    ),
    "extra id": (
        _text([*VALID_ROWS, "zz.jpg,0.2,0,0.5"]),
        "extra image_id (in the file but not in the images directory) (1): zz.jpg",
    ),
    "duplicate id": (_text([*VALID_ROWS, VALID_ROWS[0]]), "duplicate image_id (1): a.jpg (x2)"),
    "prob > 1": (_text(_replace(0, "a.jpg,1.5,1,0.5")), "prob outside [0, 1] (1): a.jpg (1.5)"),
    "prob < 0": (_text(_replace(1, "b.png,-0.1,0,0.5")), "prob outside [0, 1] (1): b.png (-0.1)"),
    "NaN prob": (_text(_replace(1, "b.png,nan,0,0.5")), "prob is not finite (1): b.png (nan)"),
    "empty prob": (_text(_replace(1, "b.png,,0,0.5")), "prob is not a number (1): b.png ('')"),
    "text prob": (_text(_replace(1, "b.png,low,0,0.5")), "prob is not a number (1): b.png ('low')"),
    "label 2": (_text(_replace(0, "a.jpg,0.9,2,0.5")), "label is not 0 or 1 (1): a.jpg ('2')"),
    "label True": (_text(_replace(0, "a.jpg,0.9,True,0.5")), "label is not 0 or 1 (1): a.jpg ('True')"),
    "inconsistent label": (
        _text(_replace(0, "a.jpg,0.9,0,0.5")),
        "label inconsistent with prob >= threshold (1): a.jpg (prob 0.9, threshold 0.5, label 0)",
    ),
    "mixed thresholds": (
        _text(_replace(1, "b.png,0.1,0,0.6")),
        "threshold must be one global value, found 2 distinct thresholds: 0.5, 0.6",
    ),
    "threshold > 1": (
        _text([f"{r.rsplit(',', 2)[0]},0,1.5" for r in VALID_ROWS]),
        "threshold outside [0, 1] (1): 1.5",
    ),
    "ragged row": (
        _text(_replace(1, "b.png,0.1,0")),
        "wrong number of fields (expected 4) (1): line 3 (3 fields)",
    ),
    "empty file": ("", "file is empty"),
    "header only": (HEADER + "\n", "file is empty: a header but no data rows"),
}


@pytest.mark.parametrize(("text", "error"), MALFORMED_A.values(), ids=MALFORMED_A.keys())
def test_task_a_checker_catches(tmp_path: Path, images_dir: Path, text: str, error: str) -> None:
    report = check_task_a(_csv(tmp_path, text), images_dir)
    assert not report.ok
    assert len(report.errors) == 1, report.errors
    assert error in report.errors[0]


def test_task_a_messages_are_capped(tmp_path: Path, images_dir: Path) -> None:
    extra = [f"x{i:02d}.jpg,0.1,0,0.5" for i in range(25)]
    report = check_task_a(_csv(tmp_path, _text([*VALID_ROWS, *extra])), images_dir)
    (message,) = report.errors
    assert message.startswith("extra image_id") and "(25)" in message
    assert "x09.jpg, … and 15 more" in message and "x10.jpg" not in message


def test_task_a_without_images_dir_warns_only(tmp_path: Path) -> None:
    report = check_task_a(_csv(tmp_path, _text(VALID_ROWS)))
    assert report.ok
    assert any("not checked" in w for w in report.warnings)


# ------------------------------------------------------------------------------------------------------ Task B


def _masks(scale: float = 1.0) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(name, rng.uniform(-0.2, 1.2, _shape(name)) * scale) for name in IMAGES]


def _scores() -> list[tuple[str, float]]:
    return [("a.jpg", 0.9), ("b.png", 0.1), ("C.BMP", 0.5)]


def test_task_b_roundtrip(tmp_path: Path, images_dir: Path) -> None:
    zip_path, csv_path = write_task_b(_masks(), _scores(), 0.5, 0.3, tmp_path / "sub", "myteam")
    assert zip_path.name == "myteam_localization_masks.zip" and csv_path.name == "scores.csv"
    report = check_task_b(zip_path, csv_path, images_dir)
    assert report.ok, report.errors
    assert report.n_rows == 3
    assert pd.read_csv(csv_path).columns.tolist() == list(TASK_B_COLUMNS)
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["C.npz", "a.npz", "b.npz"]
        for name in IMAGES:
            mask = np.load(io.BytesIO(zf.read(f"{Path(name).stem}.npz")))["mask"]
            assert mask.dtype == np.float16 and mask.shape == _shape(name)
            assert 0.0 <= mask.min() and mask.max() <= 1.0  # clipped


@pytest.mark.parametrize(
    ("masks", "error"),
    [
        ([("a.jpg", np.zeros((2, 2, 3)))], "must be 2-D"),
        ([("a.jpg", np.full((2, 2), np.nan))], "NaN or inf"),
        ([("a.jpg", np.zeros((2, 2)))], "no mask for 2 scored image"),
    ],
)
def test_write_task_b_refuses_bad_masks(tmp_path: Path, masks: list, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        write_task_b(masks, _scores(), 0.5, 0.5, tmp_path, "team")
    assert not list(tmp_path.iterdir())


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good_entries() -> dict[str, bytes]:
    return {f"{Path(n).stem}.npz": _npz(mask=np.full(_shape(n), 0.5, np.float16)) for n in IMAGES}


def _edit(name: str, data: bytes | None) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:
        if data is None:
            del entries[name]
        else:
            entries[name] = data

    return edit


def _f16(shape: tuple[int, ...], value: float = 0.0) -> np.ndarray:
    return np.full(shape, value, np.float16)


# case -> (edit of the valid zip entries, expected substring of the single error)
MALFORMED_B = {
    "float32": (
        _edit("a.npz", _npz(mask=np.zeros((24, 32), np.float32))),
        "wrong dtype (expected float16) (1): a.npz (float32)",
    ),
    "wrong shape": (
        _edit("b.npz", _npz(mask=_f16((20, 40)))),
        "mask shape differs from the image's (H, W) (1): b.npz (20x40, image 40x20)",
    ),
    "3-D": (_edit("a.npz", _npz(mask=_f16((24, 32, 1)))), "mask is not 2-D (H, W) (1): a.npz (shape (24, 32, 1))"),
    "values > 1": (
        _edit("a.npz", _npz(mask=_f16((24, 32), 1.5))),
        "mask values outside [0, 1] (1): a.npz (range 1.5..1.5)",
    ),
    "NaN values": (_edit("a.npz", _npz(mask=_f16((24, 32), np.nan))), "mask contains NaN or inf (1): a.npz"),
    "two arrays": (
        _edit("a.npz", _npz(mask=_f16((24, 32)), extra=np.zeros(1))),
        "exactly one array (1): a.npz (['mask', 'extra'])",
    ),
    "missing npz": (_edit("C.npz", None), "missing masks (image without an .npz) (1): C.npz"),
    "extra npz": (_edit("zz.npz", _npz(mask=_f16((2, 2)))), "extra masks (.npz without an image) (1): zz.npz"),
    "not npz": (_edit("readme.txt", b"hi"), "zip entries that are not .npz files (1): readme.txt"),
    "corrupt npz": (_edit("a.npz", b"garbage"), "unreadable npz (1): a.npz"),
    "two npz for one image": (
        _edit("sub/a.npz", _npz(mask=_f16((24, 32)))),
        "several npz files for one image (2): a.npz, sub/a.npz",
    ),
}


@pytest.mark.parametrize(("edit", "error"), MALFORMED_B.values(), ids=MALFORMED_B.keys())
def test_task_b_checker_catches(
    tmp_path: Path, images_dir: Path, edit: Callable[[dict[str, bytes]], None], error: str
) -> None:
    _, csv_path = write_task_b(_masks(), _scores(), 0.5, 0.5, tmp_path, "team")
    entries = _good_entries()
    edit(entries)
    zip_path = tmp_path / "team_localization_masks.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    report = check_task_b(zip_path, csv_path, images_dir)
    assert len(report.errors) == 1, report.errors
    assert error in report.errors[0]


def test_task_b_checker_zip_name_and_scores_header(tmp_path: Path, images_dir: Path) -> None:
    zip_path, _ = write_task_b(_masks(), _scores(), 0.5, 0.5, tmp_path, "team")
    renamed = zip_path.rename(tmp_path / "masks.zip")
    task_a_csv = write_task_a(_scores(), 0.5, tmp_path / "scores.csv")
    errors = check_task_b(renamed, task_a_csv, images_dir).errors
    assert len(errors) == 2, errors
    assert "expected '<teamname>_localization_masks.zip'" in errors[0]
    assert errors[1].startswith("scores.csv: wrong header") and "missing: loc_threshold" in errors[1]


def test_task_b_checker_mixed_loc_thresholds(tmp_path: Path, images_dir: Path) -> None:
    zip_path, csv_path = write_task_b(_masks(), _scores(), 0.5, 0.5, tmp_path, "team")
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",0.7"
    csv_path.write_text("\n".join(lines))
    (error,) = check_task_b(zip_path, csv_path, images_dir).errors
    assert "scores.csv: loc_threshold must be one global value" in error


def test_task_b_accepts_exif_rotated_masks_with_warning(tmp_path: Path) -> None:
    """A phone JPEG stored 32x24 but shown 24x32: either mask orientation passes, the rotated one with a warning."""
    images = tmp_path / "images"
    images.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (32, 24)).save(images / "p.jpg", exif=exif)
    for shape, n_warnings in (((24, 32), 0), ((32, 24), 1)):
        zip_path, csv_path = write_task_b([("p.jpg", np.zeros(shape))], [("p.jpg", 0.9)], 0.5, 0.5, tmp_path, "t")
        report = check_task_b(zip_path, csv_path, images)
        assert report.ok, report.errors
        assert sum("EXIF-rotated" in w for w in report.warnings) == n_warnings


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_check(tmp_path: Path, images_dir: Path) -> None:
    runner = CliRunner()
    good = write_task_a(_scores(), 0.5, tmp_path / "good.csv")
    result = runner.invoke(app, ["submit", "--check", str(good), "--images", str(images_dir)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output

    bad = _csv(tmp_path, _text([*VALID_ROWS, VALID_ROWS[0]]))
    result = runner.invoke(app, ["submit", "--check", str(bad), "--images", str(images_dir)])
    assert result.exit_code == 1
    assert "duplicate image_id (1): a.jpg (x2)" in result.output


def test_cli_check_task_b(tmp_path: Path, images_dir: Path) -> None:
    zip_path, csv_path = write_task_b(_masks(), _scores(), 0.5, 0.5, tmp_path, "team")
    runner = CliRunner()
    result = runner.invoke(app, ["submit", "--check", str(csv_path), "--images", str(images_dir), "--masks", str(zip_path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["submit", "--check", str(csv_path), "--masks", str(zip_path)])
    assert result.exit_code == 2  # usage error: masks need the images


def _shell(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "synthdet.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def test_submit_scores_every_test_image_says_why_and_shares_the_predict_writer(tmp_path: Path) -> None:
    """`synthdet submit TESTDIR -o team.csv` with the shipped detector: one row per image, the unreadable one with
    the detector's prior and the label it implies, said on stderr like every skip; `predict -o` writes the same rows."""
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for i, (w, h) in enumerate([(96, 72), (64, 64)]):
        write_image(test_dir / f"img{i}.jpg", synthetic_photo(w, h, seed=i))
    (test_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "team_constrained.csv"
    res = _shell("submit", test_dir, "-o", out, "--workers", "0", "--quiet")
    assert res.returncode == 0, res.stderr
    card = json.loads((default_detector_path() / "card.json").read_text())
    prior, label = missing_row(card["prior"], card["threshold"])
    skip = [line for line in res.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skip) == 1 and "broken.png" in skip[0] and f"prior {prior:g} → label {label}" in skip[0]
    assert "Warning" not in res.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == list(TASK_A_COLUMNS)
    assert sorted(df.image_id) == ["broken.png", "img0.jpg", "img1.jpg"]
    assert df.set_index("image_id").loc["broken.png", ["prob", "label"]].tolist() == [prior, label]
    assert df.threshold.nunique() == 1 and df.prob.between(0, 1).all()
    assert check_task_a(out, test_dir).ok and "OK" in res.stdout

    pred = tmp_path / "pred.csv"
    res = _shell("predict", test_dir, "-o", pred, "--workers", "0", "--quiet")
    assert res.returncode == 0, res.stderr
    submitted = [line for line in out.read_bytes().split(b"\n") if not line.startswith(b"broken.png")]
    assert pred.read_bytes().split(b"\n") == submitted  # same bytes: one writer, LF everywhere
