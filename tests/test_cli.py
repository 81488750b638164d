"""The command line as a user runs it: index, extract, train, predict, backbones, demo; and, through real
subprocesses, what a user sees at the shell: exit codes, one-line errors, streamed CSVs, piped tables, import cost."""

from __future__ import annotations

import ast
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import synthetic_photo, write_image
from typer.testing import CliRunner

from synthdet.cli import app
from synthdet.data.demo import demo_data_dir
from synthdet.version import __version__

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dev"
SRC = Path(__file__).resolve().parents[1] / "src"
runner = CliRunner()
#: A file name that is not UTF-8 (Latin-1 "café.jpg"), as Linux allows.
LATIN1_NAME = b"caf\xe9.jpg"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}


def shell(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``synthdet ARGS`` in a child process, as a user runs it; stdout and stderr as bytes."""
    return subprocess.run([sys.executable, "-m", "synthdet.cli", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, timeout=600)


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
    assert set(df.loc[df.ok, "split"]) == {"fit", "test"} and set(df.loc[df.ok, "fold"]) == {0, 1, 2}
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
    # no generator column: one row per class, not one blank row whose "correct" would be the recall of both
    assert res.output.count("(not given)") == 2 and "generated" in res.output
    assert "warning:" in res.output and "too few images to trust" in res.output  # 24 images: tiny held-out splits

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
    skipped = list(csv.DictReader(open(tmp_path / "pred.csv.skipped.csv", encoding="utf-8")))
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


@pytest.mark.slow
def test_installed_entry_point_runs_demo(tmp_path: Path) -> None:
    """The README's main job, through the installed console script, in a folder without ../shared (slow: half a
    minute of training; CI runs it with the slow tests)."""
    exe = shutil.which("synthdet") or pytest.skip("synthdet console script not installed")
    env = {**os.environ, "SYNTHDET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([exe, "demo", "--out", str(tmp_path / "demo")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "held-out ROC AUC" in proc.stdout
    auc = float(proc.stdout.split("held-out ROC AUC")[1].split()[0])
    assert auc > 0.8
    assert (tmp_path / "demo" / "card.json").is_file()


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/dev")
def test_train_on_shared_dev_manifest(tmp_path: Path, cache: Path) -> None:
    """End to end on the curated development set's own CSV (path,label,source,generator; every fourth row, for time):
    its original formats, sizes and sources."""
    rows = pd.read_csv(SHARED / "manifest.csv").iloc[::4]
    listing = tmp_path / "dev.csv"
    rows.assign(path=[str(SHARED / p) for p in rows["path"]]).to_csv(listing, index=False)
    det = tmp_path / "det"
    res = run("train", listing, "-o", det, "--head", "logreg", "--views", "1")
    assert res.exit_code == 0, res.output
    card = pd.read_json(det / "card.json", typ="series")
    assert card["data"]["n_images"] == len(rows) >= 230
    assert card["metrics"]["val"]["roc_auc"] > 0.8


# ------------------------------------------------------------------------------------ the shell, in subprocesses


def test_import_is_light_and_help_lists_every_command() -> None:
    code = "import sys, synthdet.cli; print(','.join(m for m in ('torch', 'sklearn', 'pandas') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    res = shell("--help")
    assert res.returncode == 0
    for name in ("predict", "submit", "evaluate", "cv", "ensemble", "finetune", "recipes", "augment-preview"):
        assert name.encode() in res.stdout


def test_library_never_imports_typer_or_rich() -> None:
    pkg = SRC / "synthdet"
    offenders = []
    for path in pkg.rglob("*.py"):
        if pkg / "cli" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(pkg)}: {n}" for n in names if n.split(".")[0] in ("typer", "rich", "click")]
    assert not offenders


def test_version_alone_prints_the_version() -> None:
    res = shell("--version")
    assert res.returncode == 0 and res.stdout.decode().strip() == f"synthdet {__version__}"


def _mixed_folder(root: Path) -> Path:
    """Two good images, one broken file and one good image whose name is not UTF-8."""
    write_image(root / "a.jpg", synthetic_photo(64, 48, seed=1))
    write_image(root / "b.png", synthetic_photo(48, 48, seed=2))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (Path(os.fsdecode(os.fsencode(root) + b"/" + LATIN1_NAME))).write_bytes((root / "a.jpg").read_bytes())
    return root


def test_predict_streams_lf_rows_and_skips_bad_names_with_their_reason(tmp_path: Path) -> None:
    data = _mixed_folder(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    res = shell("predict", data, "--workers", "0", cwd=work)  # to stdout
    assert res.returncode == 0, res.stderr
    assert b"\r" not in res.stdout
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "image_id,prob,label,threshold" and sorted(x.split(",")[0] for x in lines[1:]) == ["a.jpg", "b.png"]
    err = res.stderr.decode()
    assert "skipped" in err and "broken.png" in err and "caf\\xe9.jpg" in err and "not valid UTF-8" in err
    assert "score:" not in err and "\r" not in err  # progress bars only on a terminal: none in a piped log
    assert not list(work.iterdir())  # no predictions.skipped.csv dropped into the working directory

    out = tmp_path / "out" / "pred.csv"
    out.parent.mkdir()  # -o names a file in a folder that exists (a missing one is refused: see below)
    res = shell("predict", data, "-o", out, "--workers", "0", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "score:" not in res.stderr.decode()  # --quiet: no progress bar
    text = out.read_bytes()
    assert b"\r" not in text and text.decode().splitlines()[1:] == lines[1:]
    skipped = list(csv.DictReader(open(out.with_name("pred.csv.skipped.csv"), encoding="utf-8")))
    assert sorted(Path(r["path"]).name for r in skipped) == ["broken.png", "caf\\xe9.jpg"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["pred.csv", "pred.csv.skipped.csv"]  # no temp files


def test_predict_fails_with_distinct_codes_and_leaves_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    res = shell("predict", tmp_path / "nope.jpg", "-o", out)
    assert res.returncode == 2 and b"does not exist" in res.stderr
    for bad in ("0", "-5"):
        assert shell("predict", tmp_path, "--max-pixels", bad).returncode == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    res = shell("predict", empty, "-o", out)
    assert res.returncode == 2 and b"no images" in res.stderr
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (unreadable / "y.jpg").write_text("nope")
    res = shell("predict", unreadable, "-o", out, "--workers", "0")
    assert res.returncode == 1 and b"no image could be scored" in res.stderr
    shown = [line.split(b"\r")[-1] for line in res.stderr.split(b"\n")]  # as a terminal shows them (bars redrawn)
    assert len([line for line in shown if line.startswith(b"skipped ")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "unreadable"]  # no header-only CSV, no temp file
    res = shell("predict", unreadable, "--workers", "0")
    assert res.returncode == 1 and res.stdout == b""


def test_errors_are_one_line(tmp_path: Path) -> None:
    images = tmp_path / "test"
    write_image(images / "a.jpg", synthetic_photo(32, 32))
    not_a_detector = tmp_path / "not-a-detector"
    not_a_detector.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "card.json").write_text(json.dumps({"name": "some other tool", "version": 3}))
    for args in (("submit", not_a_detector, images, "-o", tmp_path / "s.csv"),
                 ("submit", foreign, images, "-o", tmp_path / "s.csv"),
                 ("predict", foreign, images / "a.jpg")):
        res = shell(*args)
        err = res.stderr.decode()
        assert res.returncode == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
        assert "Traceback" not in err and res.stdout == b""
    assert not (tmp_path / "s.csv").exists()


def test_piped_tables_keep_full_names_and_have_json() -> None:
    res = shell("backbones")
    assert res.returncode == 0
    text = res.stdout.decode()
    clip = [line for line in text.splitlines() if "clip-vit-l14" in line]
    assert clip and all("OpenAI CLIP ViT-L/14 (open_clip)" in line and "ViT-L-14/openai, or --weights FILE" in line
                        for line in clip)
    assert "…" not in text
    rows = json.loads(runner.invoke(app, ["backbones", "--json"]).stdout)  # JSON: in process (one shell is enough)
    assert {"effnet-lite0", "clip-vit-l14"} <= {r["name"] for r in rows}
    recipes = json.loads(runner.invoke(app, ["recipes", "list", "--json"]).stdout)
    assert recipes and all("name" in r and "steps" in r for r in recipes)


def test_library_is_quiet_by_default(tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.jpg", synthetic_photo(32, 32))
    code = ("from synthdet.detectors.loading import load_detector; "
            f"print(list(load_detector().predict_paths([{str(img)!r}], num_workers=0))[0][1] is not None)")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr
    assert proc.stderr == ""


def test_evaluate_and_report_print_json(tmp_path: Path) -> None:
    from conftest import make_labelled_folder

    data = make_labelled_folder(tmp_path / "data", n_real=3, n_fake=3)
    run = tmp_path / "run"
    res = runner.invoke(app, ["evaluate", str(data), "-o", str(run), "-s", "none", "--bootstrap", "0", "--workers", "0",
                              "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["run"] == str(run) and [s["slice"] for s in doc["slices"]] == ["clean"] and doc["slices"][0]["n"] == 6
    res = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["runs"][0]["slices"][0]["n"] == 6


def test_predict_says_what_assess_says_and_refuses_flags_it_would_ignore(tmp_path: Path) -> None:
    """One image: the verdict in ``--assess``'s words for the same score (band alone, no checks), never "leaning";
    ``-o`` into a folder that does not exist and ``--heatmap`` without ``--assess`` are refused (exit 2), before any
    model loads and without creating anything."""
    from synthdet.detectors.assess import assess_image
    from synthdet.detectors.loading import load_detector

    image = sorted((demo_data_dir() / "fake").iterdir())[0]
    res = runner.invoke(app, ["predict", str(image)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    expected = assess_image(load_detector(), image, checks=False)
    assert f": {expected.verdict}  (p_fake={expected.probability:.3f}" in res.output, res.output
    assert "uncertain within [" in res.output and "leaning" not in res.output
    missing = tmp_path / "no-such-folder" / "x.csv"
    res = runner.invoke(app, ["predict", str(image), "-o", str(missing)])
    assert res.exit_code == 2 and "does not exist" in res.output and not missing.parent.exists()
    res = runner.invoke(app, ["predict", str(image), "--heatmap"])
    assert res.exit_code == 2 and "--assess" in res.output
