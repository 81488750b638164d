"""Streaming, resumable scoring (synthdet.engines.stream): os.scandir listing, parts written whole, kill -9 then resume
with no duplicate and no missing row, CSV and parquet outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import synthetic_photo, write_image

pq = pytest.importorskip("pyarrow.parquet")

from synthdet.detectors.detector import Detector  # noqa: E402
from synthdet.detectors.loading import load_detector  # noqa: E402
from synthdet.engines.stream import done_paths, parts_dir, scan_images, score_stream  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _folder(root: Path, n: int, *, broken: int = 0) -> Path:
    for i in range(n):
        sub = root / f"d{i % 3}"
        write_image(sub / f"img{i:03d}.jpg", synthetic_photo(40 + i % 7, 36, seed=i))
    for i in range(broken):
        (root / f"broken{i}.png").write_bytes(b"not an image")
    (root / ".hidden.jpg").write_bytes(b"x")
    (root / "notes.txt").write_text("not an image")
    return root


def test_scan_images_streams_every_image_once(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", 7, broken=1)
    found = list(scan_images(root))
    assert sorted(Path(p).name for p in found) == sorted([f"img{i:03d}.jpg" for i in range(7)] + ["broken0.png"])
    assert len(set(found)) == len(found)


@pytest.fixture(scope="module")
def default_detector() -> Detector:
    det = load_detector()
    assert isinstance(det, Detector)
    return det


def test_parquet_resume_keeps_rows_and_scores_the_rest(tmp_path: Path, default_detector: Detector) -> None:
    root = _folder(tmp_path / "imgs", 9, broken=1)
    out = tmp_path / "scores.parquet"
    first = score_stream(default_detector, [root / "d0"], out, rows_per_part=2, num_workers=0)
    assert (first.scored, first.skipped, first.rows) == (3, 0, 3)
    assert not parts_dir(out).exists()
    again = score_stream(default_detector, [root], out, resume=True, rows_per_part=2, num_workers=0)
    assert (again.resumed, again.scored, again.skipped) == (3, 6, 1)
    table = pq.read_table(out).to_pydict()
    assert sorted(table["path"]) == sorted(scan_images(root))
    assert table["reason"].count(None) == 9 and sum(p is None for p in table["prob"]) == 1
    direct = dict((p, v) for p, v, _ in default_detector.predict_paths(sorted(scan_images(root)), num_workers=0))
    assert all(v is None and direct[p] is None or abs(v - direct[p]) < 1e-9 for p, v in zip(table["path"], table["prob"]))


def test_csv_output_and_resume_of_a_finished_run(tmp_path: Path, default_detector: Detector) -> None:
    root = _folder(tmp_path / "imgs", 4, broken=1)
    out = tmp_path / "scores.csv"
    score_stream(default_detector, [root], out, num_workers=0)
    lines = out.read_text().splitlines()
    assert lines[0] == "image_id,prob,label,threshold" and len(lines) == 5
    assert "broken0.png" in (tmp_path / "scores.csv.skipped.csv").read_text()
    again = score_stream(default_detector, [root], out, resume=True, num_workers=0)
    assert (again.scored, again.resumed, again.rows) == (0, 5, 4)
    assert out.read_text().splitlines() == lines
    write_image(root / "new.jpg", synthetic_photo(50, 40, seed=99))
    more = score_stream(default_detector, [root], out, resume=True, num_workers=0)
    assert (more.scored, more.resumed, more.rows) == (1, 5, 5)
    assert out.read_text().splitlines()[:5] == lines and out.read_text().splitlines()[5].startswith("new.jpg,")


def test_kill_9_then_resume_has_no_duplicate_and_no_missing_row(tmp_path: Path) -> None:
    N = 480  # enough that the kill lands mid-run however fast the machine scores
    root = _folder(tmp_path / "imgs", N)
    out = tmp_path / "scores.parquet"
    cmd = [sys.executable, "-m", "synthdet.cli", "predict", str(root), "-o", str(out), "--resume",
           "--rows-per-part", "4", "--batch-size", "4", "--workers", "0", "--quiet"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts_dir(out).glob("part-*.parquet"))) < 1:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "killed before the merge"
    partial = done_paths(out)
    assert 4 <= len(partial) < N
    (parts_dir(out) / "part-torn.parquet.tmp").write_bytes(b"PAR1 half a file")  # a torn write: never read back
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    paths = pq.read_table(out).column("path").to_pylist()
    assert len(paths) == len(set(paths)) == N
    assert sorted(paths) == sorted(scan_images(root))
    assert f"{len(partial)} already done" in res.stderr
