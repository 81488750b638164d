"""SplitPlan: roles and folds grouped by content hash and near-duplicates, stratified, deterministic, saved."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_image
from PIL import Image

from synthdet.data.manifest import index
from synthdet.data.splits import RowSet, SplitPlan, hamming, near_duplicate_pairs, size_matched


def scene(seed: int, w: int = 120, h: int = 90) -> Image.Image:
    """A photo-like image whose coarse layout (what a perceptual hash sees) differs from seed to seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.uniform(0, 255, (4, 5, 3)).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def recompressed(img: Image.Image, scale: float = 0.7, quality: int = 60) -> Image.Image:
    """What a social network does to a photo: resized and re-encoded as JPEG."""
    small = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


@pytest.fixture(scope="module")
def near_dup_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, list[tuple[str, str]]]:
    """24 real + 16 fake scenes; 6 of them also present as a resized, re-compressed copy (different bytes)."""
    root = tmp_path_factory.mktemp("neardup")
    pairs = []
    for i in range(40):
        cls = "0_real" if i < 24 else "1_fake"
        img = scene(i)
        a = write_image(root / cls / f"img{i:02d}.png", img)
        if i % 7 == 0:
            b = write_image(root / cls / f"img{i:02d}_shared.jpg", recompressed(img))
            pairs.append((str(a), str(b)))
    return root, index(root, workers=2), pairs


def manifest(n_real: int, n_fake: int, generators: dict[str, int] | None = None) -> pd.DataFrame:
    """Rows without files: distinct hashes, no perceptual hash; fakes named by generator (counts given)."""
    gens = [g for g, n in (generators or {}).items() for _ in range(n)]
    gens += [""] * (n_fake - len(gens))
    return pd.DataFrame({
        "path": [f"{i}.jpg" for i in range(n_real + n_fake)],
        "sha256": [hashlib.sha256(b"%d" % i).hexdigest() for i in range(n_real + n_fake)],
        "label": [0] * n_real + [1] * n_fake, "ok": True, "source": "", "generator": [""] * n_real + gens,
    })


def test_near_duplicate_copies_never_straddle_roles_or_folds(near_dup_folder) -> None:
    _, df, pairs = near_dup_folder
    assert len(pairs) == 6 and df["ok"].all()
    by_path = df.set_index("path")
    for a, b in pairs:  # different bytes, close perceptual hashes: sha256 alone would not keep them together
        assert by_path.at[a, "sha256"] != by_path.at[b, "sha256"]
        codes = np.array([int(by_path.at[p, "phash"], 16) for p in (a, b)], dtype=np.uint64)
        assert hamming(codes[:1], codes[1:])[0] <= 3
    for seed in range(6):
        plan = SplitPlan.build(df, k=4, seed=seed)
        roles = pd.Series(plan.role_of(df["sha256"]), index=df["path"])
        folds = pd.Series(plan.fold_of(df["sha256"]), index=df["path"])
        for a, b in pairs:
            assert roles[a] == roles[b] and folds[a] == folds[b]
            for f in range(plan.k):
                assert len(set(plan.fold_roles(by_path.loc[[a, b], "sha256"], f))) == 1
    # distinct scenes are not merged: the only multi-image groups are the copies
    assert plan.n_images == 46 and plan.n_groups == 40


def test_exact_duplicates_are_one_image(near_dup_folder, tmp_path: Path) -> None:
    root, df, _ = near_dup_folder
    copies = pd.concat([df, df.iloc[:5].assign(path=lambda d: d["path"] + ".copy")], ignore_index=True)
    plan, base = SplitPlan.build(copies, seed=1), SplitPlan.build(df, seed=1)
    assert plan.n_images == base.n_images == df["sha256"].nunique()
    assert plan.id == base.id and plan.counts() == base.counts()
    roles = plan.role_of(copies["sha256"])
    assert (roles[:5] == roles[-5:]).all()


def test_deterministic_for_a_seed_and_independent_of_row_order() -> None:
    df = manifest(60, 40, {"SDXL": 20, "FLUX": 20})
    a = SplitPlan.build(df, seed=3)
    b = SplitPlan.build(df.sample(frac=1, random_state=0).assign(path=lambda d: "moved/" + d["path"]), seed=3)
    assert a == b and a.id == b.id
    assert SplitPlan.build(df, seed=4).id != a.id


def test_stratified_by_label_and_generator() -> None:
    df = manifest(200, 100, {"SDXL": 50, "FLUX": 30, "rare": 3})
    plan = SplitPlan.build(df, test=0.2, calib=0.15, k=5, seed=0)
    roles = pd.Series(plan.role_of(df["sha256"]))
    for label, n in ((0, 200), (1, 100)):
        share = roles[df["label"] == label].value_counts()
        assert share["test"] == 0.2 * n and abs(share["calib"] - 0.8 * 0.15 * n) <= 1
    for gen, n in (("SDXL", 50), ("FLUX", 30)):
        assert abs((roles[df["generator"] == gen] == "test").sum() - 0.2 * n) <= 1
    assert "1/rare" not in plan.strata and "1/*" in plan.strata  # too small to stratify: pooled
    folds = pd.Series(plan.fold_of(df["sha256"]))
    sizes = folds.value_counts()
    assert sizes.max() - sizes.min() <= 1
    for label in (0, 1):
        per = folds[df["label"] == label].value_counts()
        assert per.max() - per.min() <= 1
    for f in range(5):  # each fold's training part has a calibration slice of both classes
        inner = pd.Series(plan.fold_roles(df["sha256"], f))
        assert ((inner == "test") == (folds == f)).all()
        assert set(df["label"][inner == "calib"]) == {0, 1}
        assert abs((inner == "calib").sum() - 0.15 * 240) <= 2


def test_label_conflicts_are_listed_and_left_out() -> None:
    df = manifest(20, 20)
    clash = df.iloc[[0]].assign(label=1, path="relabelled.jpg")
    plan = SplitPlan.build(pd.concat([df, clash], ignore_index=True), seed=0)
    assert plan.conflicts == [df["sha256"][0][:16]] and plan.n_images == 39
    assert plan.role_of([df["sha256"][0]])[0] == ""


def test_save_load_and_edit_detection(tmp_path: Path) -> None:
    plan = SplitPlan.build(manifest(30, 20), k=3, seed=0)
    path = plan.save(tmp_path / "plan.json")
    assert SplitPlan.load(path) == plan
    assert plan.rows("fit", "calib").n + plan.rows("test").n == plan.n_images
    assert isinstance(plan.rows("test"), RowSet) and not plan.rows("test").overlap(plan.rows("fit", "calib").hashes)
    data = json.loads(path.read_text())
    data["roles"][0] = "test" if data["roles"][0] != "test" else "fit"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="edited"):
        SplitPlan.load(path)


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, 400, dtype=np.int64).astype(np.uint64)
    for i in range(0, 400, 20):  # plant near-copies: flip up to 6 random bits
        flips = rng.choice(64, int(rng.integers(0, 7)), replace=False)
        codes[i + 1] = codes[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    dist = hamming(codes[:, None], codes[None, :])
    for bits in (0, 3, 6):
        brute = {(i, j) for i, j in zip(*np.nonzero(dist <= bits)) if i < j}
        assert near_duplicate_pairs(codes, bits) == brute
    with pytest.raises(ValueError):
        near_duplicate_pairs(codes, 8)


def test_a_near_duplicate_group_follows_its_first_image_in_leave_one_group_out(near_dup_folder) -> None:
    """Issue 20: the group went to the value of the image with the smallest hash, not the first in the manifest
    (as the README says): whichever order, the first listed image decides."""
    _, df, pairs = near_dup_folder
    a, b = pairs[0]
    rows = df[df["path"].isin([a, b])]
    rest = df[~df["path"].isin([a, b])].copy()
    rest["family"] = np.where(rest["label"] == 1, "fake:f", "real:" + (rest.index % 2).astype(str))
    for first, second in ((a, b), (b, a)):
        pair = rows.set_index("path").loc[[first, second]].reset_index()
        pair["family"] = ["real:first", "real:second"]
        plan = SplitPlan.build(pd.concat([pair, rest], ignore_index=True), test=0.0, fold_by="family")
        held = plan.fold_of(pair["sha256"])
        assert plan.fold_names[held[0]] == "real:first" and held[0] == held[1]


def test_size_matched_balances_every_size_bin_and_drops_unknown_sizes() -> None:
    """Per half-octave of megapixels as many photos as generated images (the larger class subsampled, seeded);
    NaN sizes are never drawn; a bin holding one class only contributes nothing."""
    rng = np.random.default_rng(1)
    mp = np.concatenate([rng.uniform(0.2, 12.0, 300), rng.uniform(0.2, 1.5, 200), [np.nan] * 5, [40.0]])
    labels = np.concatenate([np.zeros(300, int), np.ones(200, int), [1] * 5, [0]])
    keep = size_matched(mp, labels, seed=3)
    assert np.array_equal(keep, size_matched(mp, labels, seed=3)) and len(np.unique(keep)) == len(keep)
    assert not np.isnan(mp[keep]).any() and 505 not in keep  # the lone 40-Mpx photo has no generated partner
    bins = np.floor(2 * np.log2(mp[keep]))
    for b in np.unique(bins):
        assert (labels[keep][bins == b] == 0).sum() == (labels[keep][bins == b] == 1).sum()
    assert labels[keep].sum() * 2 == len(keep) and len(keep) < 400  # the large photos had no partner
    assert mp[keep][labels[keep] == 0].max() < 2.0  # so the kept photos are no larger than the generated images
