"""data: manifests from folders and CSVs, validated once; reproducible leakage-free splits and folds."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import encode_image, make_labelled_folder, synthetic_photo, write_image

from synthdet.data.inputs import iter_inputs
from synthdet.data.manifest import (
    COLUMNS,
    ManifestError,
    index,
    kfold,
    manifest_hash,
    read_manifest,
    split,
    write_manifest,
)
from synthdet.io.files import sha256_file


def idx(source: Path, **kw) -> pd.DataFrame:
    return index(source, workers=2, progress=False, **kw)


def fake_manifest(n_real: int, n_fake: int, *, seed: int = 0, unusable: int = 0) -> pd.DataFrame:
    """A manifest table without files: distinct sha256 per row, plus ``unusable`` rows (bad or unlabelled)."""
    rng = np.random.default_rng(seed)
    labels = [0] * n_real + [1] * n_fake
    rows = [
        {"path": f"img{i}.jpg", "label": lbl, "source": "", "generator": "",
         "sha256": hashlib.sha256(f"{seed}-{i}".encode()).hexdigest(), "width": 10, "height": 10, "format": "JPEG",
         "ok": True, "error": "", "phash": ""}
        for i, lbl in enumerate(labels)
    ]
    for j in range(unusable):
        rows.append({**rows[0], "path": f"bad{j}.jpg", "sha256": f"bad{j}", "ok": j % 2 == 1,
                     "label": -1 if j % 2 else int(rng.integers(0, 2)), "error": "" if j % 2 else "truncated"})
    return pd.DataFrame(rows)[COLUMNS]


# ------------------------------------------------------------------------------------------------ index: layouts


@pytest.mark.parametrize("layout", ["mediaeval", "named"])
def test_index_class_folders(tmp_path: Path, layout: str) -> None:
    root = make_labelled_folder(tmp_path / "ds", n_real=3, n_fake=4, layout=layout)
    real_dir = "0_real" if layout == "mediaeval" else "real"
    write_image(root / real_dir / "nested" / "deep.jpg", synthetic_photo(40, 30, seed=99))  # recursive
    (root / real_dir / "README.txt").write_text("not an image")  # ignored by suffix
    df = idx(root)
    assert list(df.columns) == COLUMNS
    assert len(df) == 8
    assert df["ok"].all() and (df["error"] == "").all()
    assert sorted(df["label"].tolist()) == [0] * 4 + [1] * 4
    for _, row in df.iterrows():
        parent = Path(row["path"]).relative_to(root).parts[0]
        assert row["label"] == (0 if parent == real_dir else 1)
        assert row["source"] == parent
        assert row["sha256"] == hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest()
    real = df[df["label"] == 0]
    fake = df[df["label"] == 1]
    assert set(real["format"]) == {"JPEG"} and set(fake["format"]) == {"PNG", "WEBP"}
    deep = df[df["path"].str.endswith("deep.jpg")].iloc[0]
    assert (deep["width"], deep["height"]) == (40, 30)
    assert set(zip(fake["width"], fake["height"])) == {(64, 64)}
    assert (df["generator"] == "").all()


def test_index_unlabelled_folder(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "inbox" / f"{i}.png", synthetic_photo(30, 20, seed=i))
    df = idx(tmp_path / "inbox")
    assert (df["label"] == -1).all() and df["ok"].all() and len(df) == 3


def test_index_dimensions_are_after_exif_rotation(tmp_path: Path) -> None:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(tmp_path / "d" / "r.jpg", synthetic_photo(60, 40), exif=exif.tobytes())
    row = idx(tmp_path / "d").iloc[0]
    assert (row["width"], row["height"]) == (40, 60)


def test_index_csv(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "a.jpg", synthetic_photo(50, 40, seed=1))
    write_image(tmp_path / "imgs" / "b.png", synthetic_photo(32, 32, seed=2))
    absolute = write_image(tmp_path / "elsewhere" / "c.webp", synthetic_photo(20, 20, seed=3))
    csv = tmp_path / "meta" / "list.csv"
    csv.parent.mkdir()
    shutil.move(str(tmp_path / "imgs"), str(csv.parent / "imgs"))
    csv.write_text(
        "path,label,source,generator\n"
        "imgs/a.jpg,0,camera,\n"
        "imgs/b.png,fake,comfy,FLUX.1\n"
        f"{absolute},1.0,web,SDXL\n"
    )
    df = idx(csv)
    assert list(df.columns) == COLUMNS
    assert df["path"].tolist() == [str(csv.parent / "imgs/a.jpg"), str(csv.parent / "imgs/b.png"), str(absolute)]
    assert df["label"].tolist() == [0, 1, 1]
    assert df["source"].tolist() == ["camera", "comfy", "web"]
    assert df["generator"].tolist() == ["", "FLUX.1", "SDXL"]
    assert df["format"].tolist() == ["JPEG", "PNG", "WEBP"]
    assert df[["width", "height"]].values.tolist() == [[50, 40], [32, 32], [20, 20]]
    assert df["ok"].all()


def test_index_csv_alternative_column_names(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    csv = tmp_path / "m.csv"
    csv.write_text("Filepath,Target\na.jpg,real\n")
    df = idx(csv)
    assert df["label"].tolist() == [0] and df["ok"].all()
    assert (df["source"] == "").all() and (df["generator"] == "").all()


def test_csv_without_label_column_names_columns(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("path,klass\na.jpg,0\n")
    with pytest.raises(ManifestError) as ei:
        idx(csv)
    msg = str(ei.value)
    assert "klass" in msg and "'label'" in msg and "label" in msg.lower()


def test_csv_without_path_column(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("name,label\na.jpg,0\n")
    with pytest.raises(ManifestError, match="path"):
        idx(csv)


def test_csv_bad_label_names_the_row(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.jpg,0\nb.jpg,1\nc.jpg,maybe\n")
    with pytest.raises(ManifestError) as ei:
        idx(csv)
    msg = str(ei.value)
    assert "row 4" in msg  # line 4 of the file: header + 3rd data row
    assert "'maybe'" in msg


def test_csv_empty_rows(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n")
    with pytest.raises(ManifestError, match="no rows"):
        idx(csv)


def test_empty_and_missing_sources(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no images"):
        idx(tmp_path / "empty")
    (tmp_path / "cls" / "0_real").mkdir(parents=True)
    (tmp_path / "cls" / "1_fake").mkdir()
    with pytest.raises(ManifestError, match="no images"):
        idx(tmp_path / "cls")
    with pytest.raises(ManifestError, match="no such"):
        idx(tmp_path / "nowhere")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ManifestError, match="expected"):
        idx(tmp_path / "x.json")


def test_bad_files_stay_with_reasons(tmp_path: Path) -> None:
    root = make_labelled_folder(tmp_path / "ds", n_real=2, n_fake=2)
    (root / "0_real" / "empty.jpg").write_bytes(b"")
    (root / "0_real" / "text.jpg").write_text("hello, not a jpeg\n" * 5)
    data = encode_image(synthetic_photo(120, 90, seed=8), "JPEG")
    (root / "1_fake" / "cut.jpg").write_bytes(data[: len(data) // 3])
    df = idx(root)
    assert len(df) == 7
    bad = df[~df["ok"]].set_index(df[~df["ok"]]["path"].map(lambda p: Path(p).name))
    assert sorted(bad.index) == ["cut.jpg", "empty.jpg", "text.jpg"]
    assert bad.loc["empty.jpg", "error"].startswith("empty-file")
    assert bad.loc["text.jpg", "error"].startswith("not-an-image")
    assert bad.loc["cut.jpg", "error"].split(":")[0] in ("truncated", "corrupt")
    assert bad.loc["cut.jpg", "sha256"] == sha256_file(root / "1_fake" / "cut.jpg")
    assert (bad["width"] == 0).all()
    assert df[df["ok"]]["error"].eq("").all() and df["ok"].sum() == 4


def test_csv_with_missing_file_and_too_large(tmp_path: Path) -> None:
    write_image(tmp_path / "big.png", synthetic_photo(100, 100))
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\nbig.png,1\ngone.jpg,0\n")
    df = idx(csv, max_pixels=5000)
    assert not df["ok"].any()
    assert df.loc[0, "error"].startswith("too-large")
    assert df.loc[1, "error"].startswith("unreadable")


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = np.random.default_rng(0).bytes(3 * 1024 + 7)
    path.write_bytes(payload)
    assert sha256_file(path) == hashlib.sha256(payload).hexdigest()
    assert sha256_file(path, chunk=1000) == hashlib.sha256(payload).hexdigest()  # multi-chunk path


# ------------------------------------------------------------------------------------------------ manifests on disk


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_manifest_roundtrip(tmp_path: Path, suffix: str) -> None:
    root = make_labelled_folder(tmp_path / "ds", n_real=2, n_fake=2)
    (root / "0_real" / "empty.jpg").write_bytes(b"")
    df = idx(root)
    out = write_manifest(df, tmp_path / "out" / f"manifest{suffix}")
    assert out.exists() and not list(out.parent.glob("*.tmp"))
    back = read_manifest(out)
    assert list(back.columns) == COLUMNS
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back["ok"].dtype == bool and back["ok"].tolist() == df["ok"].tolist()
    assert manifest_hash(back) == manifest_hash(df)
    if suffix == ".parquet":  # index() accepts a manifest too
        pd.testing.assert_frame_equal(idx(out), df, check_dtype=False)


def test_read_manifest_rejects_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("path,label\na.jpg,0\n")
    with pytest.raises(ManifestError, match="missing columns"):
        read_manifest(path)


def test_manifest_hash_identity() -> None:
    df = fake_manifest(10, 10)
    h = manifest_hash(df)
    assert len(h) == 16
    shuffled = df.sample(frac=1, random_state=3).reset_index(drop=True)
    assert manifest_hash(shuffled) == h
    renamed = df.assign(path=[f"other/{i}.png" for i in range(len(df))])
    assert manifest_hash(renamed) == h  # paths are not identity
    relabelled = df.copy()
    relabelled.loc[0, "label"] = 1
    assert manifest_hash(relabelled) != h
    assert manifest_hash(df.iloc[:-1]) != h


# ------------------------------------------------------------------------------------------------ split / kfold


def test_split_stratified_and_reproducible() -> None:
    df = fake_manifest(63, 37, unusable=4)
    a = split(df, seed=42)
    assert a.index.equals(df.index)
    assert np.array_equal(a.to_numpy(), split(df, seed=42).to_numpy())
    assert not np.array_equal(a.to_numpy(), split(df, seed=7).to_numpy())
    usable = df["ok"] & (df["label"] >= 0)
    assert (a[~usable] == "").all() and set(a[usable]) == {"fit", "test"}
    for label, n in ((0, 63), (1, 37)):
        n_val = int(((a == "test") & (df["label"] == label) & usable).sum())
        assert abs(n_val - 0.2 * n) <= 1
    assert abs(int((a == "test").sum()) - 20) <= 1


def test_split_independent_of_row_order_and_paths() -> None:
    df = fake_manifest(30, 30)
    a = pd.Series(split(df, seed=42).to_numpy(), index=df["sha256"])
    shuffled = df.sample(frac=1, random_state=1).reset_index(drop=True).assign(path=lambda d: "x/" + d["path"])
    b = pd.Series(split(shuffled, seed=42).to_numpy(), index=shuffled["sha256"])
    assert a.sort_index().equals(b.sort_index())


def test_split_val_fraction() -> None:
    df = fake_manifest(50, 50)
    assert int((split(df, val_fraction=0.5) == "test").sum()) == 50


def test_split_duplicates_share_a_side(tmp_path: Path) -> None:
    """Same bytes under two names (and even two classes folders' worth of copies) never straddle train and val."""
    root = make_labelled_folder(tmp_path / "ds", n_real=10, n_fake=10)
    for i in range(0, 10, 2):
        shutil.copy(root / "0_real" / f"r{i:03d}.jpg", root / "0_real" / f"copy_of_r{i:03d}.jpg")
    shutil.copy(root / "1_fake" / "f001.png", root / "1_fake" / "sub_f001.png")
    df = idx(root)
    assert df["sha256"].duplicated().sum() == 6
    for seed in range(5):
        side = split(df, seed=seed)
        per_sha = side.groupby(df["sha256"]).nunique()
        assert (per_sha == 1).all()
        folds = kfold(df, k=3, seed=seed)
        assert (folds.groupby(df["sha256"]).nunique() == 1).all()


def test_split_needs_both_classes() -> None:
    with pytest.raises(ManifestError, match="both classes"):
        split(fake_manifest(10, 0))


def test_kfold_disjoint_covering_stratified() -> None:
    df = fake_manifest(52, 23, unusable=3)
    k = 5
    folds = kfold(df, k=k, seed=42)
    usable = df["ok"] & (df["label"] >= 0)
    assert (folds[~usable] == -1).all()
    assert set(folds[usable]) == set(range(k))  # every usable row in exactly one fold, all folds used
    assert folds[usable].value_counts().sum() == usable.sum()
    for label, n in ((0, 52), (1, 23)):
        counts = folds[usable & (df["label"] == label)].value_counts()
        assert counts.max() - counts.min() <= 1
        assert abs(counts - n / k).max() <= 1
    assert np.array_equal(folds.to_numpy(), kfold(df, k=k, seed=42).to_numpy())
    assert not np.array_equal(folds.to_numpy(), kfold(df, k=k, seed=1).to_numpy())
    # fold f as validation = the complement as training: disjoint and together everything
    for f in range(k):
        val = set(df.loc[folds == f, "sha256"])
        train = set(df.loc[usable & (folds != f), "sha256"])
        assert not val & train and len(val | train) == usable.sum()


# ------------------------------------------------------------------------------------------------ iter_inputs


def test_iter_inputs(tmp_path: Path) -> None:
    a = write_image(tmp_path / "dir" / "a.jpg")
    b = write_image(tmp_path / "dir" / "sub" / "b.png")
    (tmp_path / "dir" / "c.txt").write_text("x")
    single = write_image(tmp_path / "single.webp")
    csv = tmp_path / "list.csv"
    csv.write_text(f"image_path\ndir/a.jpg\n{single}\n")
    got = list(iter_inputs([tmp_path / "dir", single, csv]))
    assert got == [a, b, single, a, single]
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ManifestError, match="no images"):
        list(iter_inputs([tmp_path / "nothing"]))


def test_index_reads_an_existing_csv_manifest_back_without_reindexing(tmp_path: Path) -> None:
    from synthdet.data.manifest import index, write_manifest

    folder = make_labelled_folder(tmp_path / "data")
    df = index(folder, progress=False)
    out = write_manifest(df, tmp_path / "m.csv")
    first = Path(df.path.iloc[0])
    first.unlink()  # a re-index would now report this file as unreadable
    back = index(out, progress=False)
    assert len(back) == len(df) and back.ok.all()
    assert back.sha256.tolist() == df.sha256.tolist()


# ------------------------------------------------------------------------------------------------ rough edges


def test_folder_with_its_own_manifest_keeps_provenance(tmp_path: Path) -> None:
    """`evaluate`/`index` on a folder like ../shared/data/dev must read its manifest.csv (per-generator tables)."""
    root = tmp_path / "dev"
    write_image(root / "real" / "a.jpg", synthetic_photo(40, 30, seed=1))
    write_image(root / "fake" / "b.png", synthetic_photo(32, 32, seed=2))
    (root / "manifest.csv").write_text("path,label,source,generator\nreal/a.jpg,0,camera,\nfake/b.png,1,comfy,FLUX.1\n")
    df = idx(root)
    assert df["generator"].tolist() == ["", "FLUX.1"] and df["source"].tolist() == ["camera", "comfy"]
    assert df["ok"].all()


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_labelled_folder(tmp_path / "ds", n_real=2, n_fake=2)
    outside = write_image(tmp_path / "elsewhere" / "x.jpg", synthetic_photo(30, 30, seed=5))
    monkeypatch.chdir(tmp_path)  # index with paths relative to the working directory, as a user would
    df = index("ds", progress=False)
    df = pd.concat([df, df.iloc[[0]].assign(path=str(outside))], ignore_index=True)
    out = write_manifest(df, Path("ds") / "manifest.csv")
    stored = pd.read_csv(out)["path"].tolist()
    assert stored[0] == "0_real/r000.jpg" and stored[-1] == str(outside)  # inside: relative to it; outside: absolute
    monkeypatch.chdir(tmp_path / "elsewhere")  # read back from another working directory
    back = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert all(Path(p).is_file() for p in back["path"])
    assert back["sha256"].tolist() == df["sha256"].tolist()


def test_tsv_is_tab_separated(tmp_path: Path) -> None:
    write_image(tmp_path / "a, b.jpg", synthetic_photo(20, 20, seed=1))  # a comma in the name: fine in a TSV
    write_image(tmp_path / "c.png", synthetic_photo(20, 20, seed=2))
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("path\tlabel\tgenerator\na, b.jpg\t0\t\nc.png\t1\tSDXL, v1\n")
    df = idx(tsv)
    assert df["ok"].all() and df["label"].tolist() == [0, 1] and df["generator"].tolist() == ["", "SDXL, v1"]
    out = write_manifest(df, tmp_path / "m.tsv")
    assert "\t" in out.read_text().splitlines()[0]
    pd.testing.assert_frame_equal(idx(out), df, check_dtype=False)


def test_conflicting_labels_are_reported_not_dropped(tmp_path: Path) -> None:
    from synthdet.data.manifest import LabelConflictWarning

    write_image(tmp_path / "a.jpg", synthetic_photo(20, 20, seed=1))
    write_image(tmp_path / "b.jpg", synthetic_photo(20, 20, seed=2))
    shutil.copy(tmp_path / "a.jpg", tmp_path / "a_copy.jpg")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.jpg,0\nb.jpg,1\na_copy.jpg,1\n")
    with pytest.warns(LabelConflictWarning, match=r"1 image\(s\) labelled both.*a\.jpg.*a_copy\.jpg"):
        df = idx(csv)
    assert len(df) == 3 and df.attrs["label_conflicts"] == [sha256_file(tmp_path / "a.jpg")]


def test_non_utf8_file_name_is_kept_with_its_reason(tmp_path: Path) -> None:
    import os

    root = make_labelled_folder(tmp_path / "ds", n_real=2, n_fake=2)
    bad = os.fsencode(root / "0_real") + b"/caf\xe9.jpg"
    with open(bad, "wb") as f:
        f.write(encode_image(synthetic_photo(20, 20, seed=9), "JPEG"))
    df = idx(root)
    row = df[~df["ok"]]
    assert len(df) == 5 and len(row) == 1
    assert row["path"].iloc[0].endswith("caf\\xe9.jpg") and row["error"].iloc[0].startswith("bad-name")
    out = write_manifest(df, tmp_path / "m.csv")  # the table is writable: no surrogate reaches the CSV
    assert read_manifest(out)["ok"].sum() == 4


def test_write_manifest_is_atomic(tmp_path: Path) -> None:
    df = fake_manifest(3, 3)
    out = write_manifest(df, tmp_path / "m.parquet")
    before = out.read_bytes()
    broken = df.assign(width=[1, "two", 3.0, None, b"x", 6])  # pyarrow refuses a mixed column mid-write
    with pytest.raises(Exception, match="."):
        write_manifest(broken, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]


def test_phash_is_close_for_a_recompressed_copy(tmp_path: Path) -> None:
    from PIL import Image

    from synthdet.data.splits import hamming

    img = synthetic_photo(160, 120, seed=3)
    write_image(tmp_path / "d" / "a.png", img)
    write_image(tmp_path / "d" / "b.jpg", img.resize((112, 84), Image.Resampling.BILINEAR), quality=60)
    write_image(tmp_path / "d" / "c.png", synthetic_photo(160, 120, seed=3).transpose(Image.Transpose.ROTATE_180))
    codes = np.array([int(h, 16) for h in idx(tmp_path / "d")["phash"]], dtype=np.uint64)
    assert hamming(codes[0], codes[1]) <= 3 and hamming(codes[0], codes[2]) > 10
