"""The native pool's rebuild (scripts/rebuild_pool.py) and framing (scripts/protocol_pool.py), on a real git repository
made here: blobs read by commit and path, digests checked, one JPEG generation for both classes, crops never
resampled, and frames that say nothing about the class."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from protocol_pool import frame  # noqa: E402
from rebuild_pool import COLUMNS, meta_auc, rebuild  # noqa: E402


def ramps(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), np.full((h, w), 100.0)], axis=2).round().astype(np.uint8)


def encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A git repository ``owner/name`` under a mirrors folder, with a camera-like JPEG and a generator-like PNG."""
    mirrors = tmp_path_factory.mktemp("mirrors")
    repo = mirrors / "owner+name"
    files = {"photos/cam.jpg": encoded(ramps(1600, 1200), "JPEG"), "out/gen.png": encoded(ramps(512, 512), "PNG")}
    for rel, data in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_bytes(data)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "images"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    rows = [{"repository": "owner/name", "commit": commit, "path": rel, "sha256": hashlib.sha256(data).hexdigest(),
             "bytes": len(data), "format": "", "width": 0, "height": 0, "label": int(rel.endswith(".png")),
             "generator": "", "family": "test-gen", "collection": "test-cam", "licence": "MIT", "note": ""}
            for rel, data in files.items()]
    return mirrors, pd.DataFrame(rows, columns=COLUMNS)


def test_rebuild_reads_blobs_by_commit_checks_digests_and_gives_both_classes_one_jpeg_generation(
    mirror: tuple[Path, pd.DataFrame], tmp_path: Path,
) -> None:
    mirrors, sources = mirror
    df = rebuild(sources, mirrors, tmp_path, allow_missing=False)
    assert set(df["group"]) == {"real:test-cam", "fake:test-gen"}
    cam, gen = (df[df["label"] == label].iloc[0] for label in (0, 1))
    assert (tmp_path / cam["path"]).read_bytes() == (mirrors / "owner+name" / "photos/cam.jpg").read_bytes()  # as shot
    with Image.open(tmp_path / gen["path"]) as im:
        assert im.format == "JPEG" and im.size == (512, 512)  # the PNG, once JPEG, at its own size
    assert "PNG → JPEG q" in gen["stored"] and cam["stored"] == "copied"
    bad = sources.assign(sha256=["0" * 64, sources["sha256"].iloc[1]])
    with pytest.raises(SystemExit):
        rebuild(bad, mirrors, tmp_path / "bad", allow_missing=False)  # a changed blob is refused, not stored
    assert len(rebuild(bad, mirrors, tmp_path / "bad", allow_missing=True)) == 1


def test_framing_crops_at_the_images_own_scale_to_frames_of_generated_images(tmp_path: Path) -> None:
    """A 1600x1200 photo framed by a pool of 512² and 768x512 generated images comes out with one of their aspects,
    no more pixels than the frame, and one pixel per original pixel (the ramps keep their slope)."""
    src = tmp_path / "cam.jpg"
    src.write_bytes(encoded(ramps(1600, 1200), "JPEG"))
    frames = np.array([[512, 512], [768, 512]])
    for i in range(6):
        (_, _, w, h), size = frame(str(src), f"key{i}", frames, tmp_path / f"out{i}.jpg")
        assert w * h <= 768 * 512 and min(abs(w / h - 1.0), abs(w / h - 1.5)) < 0.35 and size > 0
        out = np.asarray(Image.open(tmp_path / f"out{i}.jpg"), dtype=np.float64)
        slope = np.polyfit(np.arange(out.shape[1]), out[:, :, 0].mean(axis=0), 1)[0]
        assert slope == pytest.approx(255 / 1599, rel=0.05)
    box, _ = frame(str(src), "key0", frames, tmp_path / "again.jpg")
    assert (tmp_path / "again.jpg").read_bytes() == (tmp_path / "out0.jpg").read_bytes()  # seeded by its key


def test_a_recorded_box_cuts_the_same_pixels_whatever_generated_images_the_pool_holds_now(tmp_path: Path) -> None:
    """The frame drawn depends on the generated images present when the pool was built; a rebuild given the recorded
    box (data/pool/frames.csv) stores the same bytes, while a fresh draw from another list of frames does not."""
    src = tmp_path / "cam.jpg"
    src.write_bytes(encoded(ramps(1600, 1200), "JPEG"))
    box, _ = frame(str(src), "k", np.array([[512, 512], [768, 512]]), tmp_path / "first.jpg")
    other = np.array([[1024, 640], [640, 960], [896, 896]])
    frame(str(src), "k", other, tmp_path / "redrawn.jpg")
    assert (tmp_path / "redrawn.jpg").read_bytes() != (tmp_path / "first.jpg").read_bytes()
    again, _ = frame(str(src), "k", other, tmp_path / "rebuilt.jpg", box)
    assert again == box and (tmp_path / "rebuilt.jpg").read_bytes() == (tmp_path / "first.jpg").read_bytes()


def test_groups_keep_their_recorded_folds_and_new_groups_fill_the_lightest() -> None:
    from protocol_pool import assign_folds
    groups = pd.Series(["a"] * 50 + ["b"] * 40 + ["c"] * 30 + ["new"] * 20)
    labels = pd.Series([1] * 140)
    first = assign_folds(groups[:120], labels[:120], 3)
    fixed = dict(zip(groups[:120], first))
    grown = assign_folds(groups, labels, 3, fixed)
    assert (grown[:120] == first).all()  # the folds earlier figures were measured on are kept
    assert grown.iloc[-1] == first[groups[:120] == "c"].iloc[0]  # the lightest fold (c's 30) takes the new group
    assert assign_folds(groups, labels, 3).nunique() == 3


def test_frames_tell_nothing_once_framed_while_originals_do() -> None:
    """The frame-only classifier (width, height, aspect, bytes) separates originals whose classes differ in frame,
    and not frames drawn from one class's sizes for both."""
    rng = np.random.default_rng(0)
    n = 200
    fakes = pd.DataFrame({"width": rng.choice([512, 1024], n), "label": 1})
    fakes["height"] = fakes["width"]
    reals = pd.DataFrame({"width": rng.choice([4000, 1600], n), "height": rng.choice([3000, 1200], n), "label": 0})
    orig = pd.concat([fakes, reals], ignore_index=True)
    orig["bytes"] = orig["width"] * orig["height"] * rng.uniform(0.2, 0.4, len(orig))
    orig["group"] = [f"g{i % 10}-{lab}" for i, lab in enumerate(orig["label"])]
    assert meta_auc(orig) > 0.95
    drawn = fakes.sample(len(orig), replace=True, random_state=1)[["width", "height"]].to_numpy()
    framed = orig.assign(width=(drawn[:, 0] * rng.uniform(0.8, 1, len(orig))).round(),
                         height=(drawn[:, 1] * rng.uniform(0.8, 1, len(orig))).round())
    framed["bytes"] = framed["width"] * framed["height"] * rng.uniform(0.2, 0.4, len(orig))
    assert meta_auc(framed) < 0.6


def test_the_open_dit_families_are_groups_of_their_own_not_one_lump() -> None:
    """Issue 20: ``fake:open-dit`` held 224 images of 20+ generators, so leaving it out left out all of them at once;
    the sources table names each image's family, so the families with enough images are groups of their own."""
    from build_pool import OTHER_OPEN, family
    from protocol_pool import native_groups

    native = pd.DataFrame({"label": 1, "family": ["z-image", "lumina", "pixart-sigma", "auraflow", "meissonic"],
                           "repository": "x/y", "collection": "c"})
    assert list(native_groups(native)) == ["fake:z-image", "fake:lumina", "fake:pixart", "fake:auraflow", OTHER_OPEN]
    dev = [{"label": 1, "generator": g, "source": "github:a/b f.png"}
           for g in ("Z-Image-Turbo", "Lumina-Image-2.0", "PixArt-Sigma (XL-2)", "AuraFlow v0.2", "Meissonic")]
    assert [family(pd.Series(r)) for r in dev] == ["fake:z-image", "fake:lumina", "fake:pixart", "fake:auraflow",
                                                   OTHER_OPEN]


def test_aligned_pairs_differ_only_in_the_autoencoders_fine_detail(tmp_path: Path) -> None:
    """scripts/aligned_pool.py: a real crop and its TAEF2 round trip share box, size, two JPEG generations and content
    (close in PSNR, far from identical); the pair is a function of the source's digest; groups are taken in rounds, capped,
    and the final groups never."""
    from aligned_pool import SIDE, choose, pair
    from train_default import final_groups

    rng = np.random.default_rng(0)
    photo = Image.fromarray((ramps(400, 300).astype(float) * 0.8 + rng.normal(0, 12, (300, 400, 3))).clip(0, 255)
                            .astype(np.uint8))
    real, recon = pair(photo, "ab" * 32)
    assert pair(photo, "ab" * 32) == (real, recon) and pair(photo, "cd" * 32)[0] != real
    a, b = (np.asarray(Image.open(io.BytesIO(x)), dtype=float) for x in (real, recon))
    assert a.shape == b.shape == (SIDE, SIDE, 3)
    psnr = 10 * np.log10(255**2 / ((a - b) ** 2).mean())
    assert 18 < psnr < 45, psnr  # the same picture, not the same pixels
    assert Image.open(io.BytesIO(real)).format == Image.open(io.BytesIO(recon)).format == "JPEG"
    assert pair(photo, "ab" * 32, jpeg=False) != (real, recon)  # a lossless photograph gets its first generation
    small = Image.fromarray(ramps(100, 90))
    assert Image.open(io.BytesIO(pair(small, "ef" * 32)[1])).size == (88, 88)  # the largest multiple of 8 that fits
    held = final_groups()[0]
    pool = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(12)], "label": [0] * 10 + [1] * 2,
                         "group": ["real:a"] * 6 + ["real:b"] * 2 + [held] * 2 + ["fake:x"] * 2})
    chosen = choose(pool, per_group=3)
    assert list(chosen["group"].iloc[:2].sort_values()) == ["real:a", "real:b"]  # one of each group first
    assert chosen["group"].value_counts().to_dict() == {"real:a": 3, "real:b": 2}
