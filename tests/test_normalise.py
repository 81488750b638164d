"""normalise: one social-media chain for both classes, reproducible, resumable, provenance kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import synthetic_photo
from PIL import Image

from synthdet.data.manifest import index
from synthdet.data.normalise import SocialChain, normalise_dataset
from synthdet.io.files import sha256_file


def folder(tmp_path: Path) -> Path:
    """A real 4:3 JPEG with EXIF and a square PNG 'fake' with alpha: the format/size traps of the dev data."""
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    synthetic_photo(640, 480, seed=1).save(root / "real" / "a.jpg", quality=97, exif=exif)
    fake = synthetic_photo(512, 512, seed=2).convert("RGBA")
    fake.save(root / "fake" / "b.png")
    (root / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def test_both_classes_come_out_as_the_same_kind_of_file(tmp_path: Path) -> None:
    df = index(folder(tmp_path))
    pool = normalise_dataset(df, tmp_path / "pool", chain=SocialChain(size=128))
    assert len(pool) == 2 and [p for p, _ in pool.attrs["skipped"]] == []  # broken.png was already not ok
    for path in pool["path"]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (128, 128) and im.mode == "RGB"
            assert not im.getexif()  # no camera metadata survives
    assert set(pool["format"]) == {"JPEG"} and set(pool["width"]) == {128}
    assert (pool["orig_sha256"] == df[df["ok"]]["sha256"].to_numpy()).all()  # provenance
    assert (pool["sha256"] == [sha256_file(p) for p in pool["path"]]).all()
    again = pd.read_csv(tmp_path / "pool" / "manifest.csv")
    assert list(again["sha256"]) == list(pool["sha256"])


def test_rebuilding_is_byte_identical_and_native_crops_do_not_resample(tmp_path: Path) -> None:
    df = index(folder(tmp_path))
    a = normalise_dataset(df, tmp_path / "a", chain=SocialChain(size=96, quality=(80, 80)))
    b = normalise_dataset(df, tmp_path / "b", chain=SocialChain(size=96, quality=(80, 80)))
    assert list(a["sha256"]) == list(b["sha256"])
    native = normalise_dataset(df, tmp_path / "n", chain=SocialChain(size=96, scale="native", quality=(100, 100)))
    real = native[native["label"] == 0].iloc[0]
    with Image.open(real["path"]) as im, Image.open(df[df["label"] == 0].iloc[0]["path"]) as orig:
        crop = np.asarray(orig.convert("RGB"), dtype=np.int16)[192:288, 272:368]  # the centre 96 px, as stored
        assert np.abs(np.asarray(im, dtype=np.int16) - crop).mean() < 3  # only JPEG q100 error, no resize blur
