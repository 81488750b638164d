"""Content provenance that survives a crop: the seen rows' tile index (issue 20). A 224-px crop of a training image,
a half-size copy and a JPEG-75 re-encode are recognised as seen; other images are not; the index travels beside the
card (recorded with its sha256), scoring does not need it, and evaluate names the copies it found."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import small_demo_csv
from PIL import Image

from synthdet.data.manifest import index
from synthdet.data.provenance import InSampleError
from synthdet.data.splits import RowSet
from synthdet.data.tilehash import SEEN_TILES, TileIndex
from synthdet.detectors.card import DamagedDetectorError, read_card, read_seen_tiles, save_card
from synthdet.detectors.loading import load_detector
from synthdet.detectors.scoring import detector_id
from synthdet.evaluation.runs import evaluate_detector, run_evaluation


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, TileIndex, Path]:
    """Twelve demo images (320 px), the first six indexed as "seen"; copies of the first one written as files."""
    tmp = tmp_path_factory.mktemp("tiles")
    df = index(small_demo_csv(tmp, 6), progress=False)
    tiles = TileIndex.of_rows(df.iloc[:6])
    first = Image.open(df["path"].iloc[0]).convert("RGB")
    _jpeg(first.crop((37, 51, 37 + 224, 51 + 224)), 90).save(tmp / "crop.jpg")
    _jpeg(first.resize((160, 160), Image.Resampling.LANCZOS), 90).save(tmp / "half.jpg")
    _jpeg(first, 75).save(tmp / "q75.jpg")
    return df, tiles, tmp


def test_crops_resizes_and_reencodes_of_a_seen_image_are_recognised_and_others_are_not(demo) -> None:
    df, tiles, tmp = demo
    first = df["sha256"].iloc[0][:16]
    got = tiles.match_paths([tmp / "crop.jpg", tmp / "half.jpg", tmp / "q75.jpg"])
    assert [name for name, _ in got] == [first] * 3, got
    assert all(n >= 5 for _, n in got)
    assert [name for name, _ in tiles.match_paths(df["path"].iloc[6:])] == [None] * 6  # never seen


def test_the_index_round_trips_and_a_join_keeps_names_apart(demo, tmp_path: Path) -> None:
    df, tiles, tmp = demo
    back = TileIndex.load(tiles.save(tmp_path / SEEN_TILES))
    assert back.names == tiles.names and (back.codes == tiles.codes).all()
    other = TileIndex.of_rows(df.iloc[6:8])
    joined = TileIndex.join([other, back])
    assert joined.match_paths([tmp / "crop.jpg"])[0][0] == df["sha256"].iloc[0][:16]
    assert joined.match_paths([df["path"].iloc[7]])[0][0] == df["sha256"].iloc[7][:16]


def test_the_card_records_the_index_and_scoring_does_not_need_it(demo, tmp_path: Path) -> None:
    df, tiles, _ = demo
    folder = tmp_path / "det"
    shutil.copytree(Path(load_detector().card._folder or ""), folder, ignore=shutil.ignore_patterns(SEEN_TILES))
    before = detector_id(load_detector(folder))
    card = read_card(folder)
    card._tiles = tiles
    save_card(card, folder)
    assert SEEN_TILES in read_card(folder).files and (folder / SEEN_TILES).is_file()
    det = load_detector(folder)
    assert detector_id(det) == before  # the model's identity is not the index's
    assert read_seen_tiles(det.card).names == tiles.names
    (folder / SEEN_TILES).write_bytes(b"not it")
    assert load_detector(folder).threshold == det.threshold  # scoring loads without it
    with pytest.raises(DamagedDetectorError, match="seen-tiles.npz"):
        read_seen_tiles(load_detector(folder).card)
    (folder / SEEN_TILES).unlink()
    assert load_detector(folder).threshold == det.threshold


def test_evaluate_refuses_a_crop_of_a_training_image_and_lists_every_seen_file(demo, tmp_path: Path) -> None:
    """Issue 20: 60 crops of the shipped default's training images were evaluated as 'held-out: 60 images'."""
    df, tiles, tmp = demo
    det = load_detector()
    det.card.rows = {"fit": RowSet.of(df["sha256"].iloc[:6]), "calib": RowSet.of([])}
    det.card._tiles = tiles
    pd.DataFrame({"path": [str(tmp / "crop.jpg"), str(tmp / "half.jpg"), *df["path"].iloc[6:]],
                  "label": [int(df["label"].iloc[0])] * 2 + list(df["label"].iloc[6:])}).to_csv(
        tmp_path / "eval.csv", index=False)
    rows = index(tmp_path / "eval.csv", progress=False)
    with pytest.raises(InSampleError, match=r"2 of the 8 images .*crops/resizes/re-encodes.*crop.jpg, half.jpg") as ei:
        evaluate_detector(det, rows, slices=[], bootstrap=0, num_workers=0)
    table = ei.value.table
    assert list(table["how"]) == ["crop/resize/re-encode"] * 2 and set(table["seen_as"]) == {df["sha256"].iloc[0][:16]}
    run = evaluate_detector(det, rows, slices=[], bootstrap=0, num_workers=0, on_overlap="drop")
    assert run.rows["status"] == "held-out" and run.rows["n"] == 6 and run.info["rows"]["dropped_seen"] == 2
    run.save(tmp_path / "run")
    assert pd.read_csv(tmp_path / "run" / "seen.csv")["path"].tolist() == [str(tmp / "crop.jpg"), str(tmp / "half.jpg")]
    folder = tmp_path / "det"  # a saved detector: the refusal writes every seen file to the run folder's seen.csv
    shutil.copytree(Path(load_detector().card._folder or ""), folder, ignore=shutil.ignore_patterns(SEEN_TILES))
    card = read_card(folder)
    card.rows, card._tiles = det.card.rows, tiles
    save_card(card, folder)
    with pytest.raises(InSampleError, match=r"all 2 listed in .*seen\.csv"):
        run_evaluation(folder, tmp_path / "eval.csv", tmp_path / "refused", slices=[], bootstrap=0)
    assert len(pd.read_csv(tmp_path / "refused" / "seen.csv")) == 2


def test_the_readme_shows_the_measured_provenance_figures() -> None:
    """The README's table is the saved benchmark's (benchmarks/provenance_copies.py), so the figures cannot drift."""
    import json
    import sys

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    from provenance_copies import readme_table

    res = json.loads((root / "benchmarks" / "results" / "provenance_copies.json").read_text())
    readme = (root / "README.md").read_text()
    assert readme_table(res) in readme
    assert "from the same photo collections and\ntemplate packs" in readme  # the demo's 0.858 is not a 'wild' figure
