"""Small copies of the official MediaEval SynthIm and TGIF layouts, built from the photos and generated images shipped
in the package (demo data) with masks drawn here: what a participant downloads, in miniature.

Plain functions (``from mediaeval_layouts import task_b_tree``), each returning what the test needs to check the
reader against: nothing here calls synthdet.
"""

from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from synthdet.data.demo import demo_data_dir

#: Methods of the official Task B tree used here, with the type (sp/fr) taskB_val.csv gives them.
METHODS = {"brushnet": "sp", "controlnet": "fr", "removeanything": "sp"}
#: Host ids per source: COCO ids are 12 digits, RAISE ids are camera file names.
HOSTS = {"coco": ["000000570782", "000000308753", "000000109900", "000000039956"], "raise": ["r1a2b3c4dt", "r5e6f7a8bt"]}
SIZE = (96, 72)


def demo_images(label: int) -> list[Path]:
    """The demo data's images of one class (0: camera photos, 1: generated), in manifest order."""
    m = pd.read_csv(demo_data_dir() / "manifest.csv")
    return [demo_data_dir() / p for p in m[m.label == label].path]


def _photo(path: Path, size: tuple[int, int] = SIZE) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def draw_mask(size: tuple[int, int], seed: int) -> np.ndarray:
    """A filled ellipse or rectangle covering about a tenth to a quarter of the image."""
    rng = np.random.default_rng(seed)
    w, h = size
    mw, mh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
    x, y = int(rng.integers(0, w - mw)), int(rng.integers(0, h - mh))
    canvas = Image.new("L", size, 0)
    shape = ImageDraw.Draw(canvas).ellipse if seed % 2 else ImageDraw.Draw(canvas).rectangle
    shape([x, y, x + mw, y + mh], fill=255)
    return np.asarray(canvas) > 127


def splice(host: Image.Image, donor: Image.Image, mask: np.ndarray) -> Image.Image:
    """The host with the donor's pixels inside ``mask``."""
    out = np.asarray(host).copy()
    out[mask] = np.asarray(donor.resize(host.size))[mask]
    return Image.fromarray(out)


def _save_mask(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")


def _save_jpeg(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=92)


def task_b_tree(root: Path, methods: dict[str, str] = METHODS) -> pd.DataFrame:
    """``root/sagid/val/{coco,raise}/original/<id>.jpg`` and ``…/<method>/image/<source>_<id>_<method>_….jpg`` with
    ``…/<method>/mask/<stem>_mask.png``; returns the official ``taskB_val.csv`` rows (Windows separators)."""
    reals, fakes = demo_images(0), demo_images(1)
    rows, k = [], 0
    for source, ids in HOSTS.items():
        base = root / "sagid" / "val" / source
        for host_id in ids:
            host = _photo(reals[k])
            host_path = base / "original" / f"{host_id}.jpg"
            _save_jpeg(host, host_path)
            for j, (method, kind) in enumerate(methods.items()):
                mask = draw_mask(SIZE, seed=100 * k + j)
                stem = f"{source}_{host_id}_{method}_sd1-5_1_None"
                img = base / method / "image" / f"{stem}.jpg"
                _save_jpeg(splice(host, _photo(fakes[(k + j) % len(fakes)]), mask), img)
                _save_mask(mask, base / method / "mask" / f"{stem}_mask.png")
                rows.append({c: str(PureWindowsPath(p.relative_to(root))) for c, p in
                             (("img_path", img), ("mask_path", base / method / "mask" / f"{stem}_mask.png"),
                              ("src_path", host_path))} | {"type": kind})
            k += 1
    return pd.DataFrame(rows, columns=["img_path", "mask_path", "src_path", "type"])


def unlabelled_test_folder(root: Path, n: int = 4, offset: int = 20) -> list[Path]:
    """A flat folder of test images as the organisers send them (names without labels, originals and manipulated)."""
    reals, fakes = demo_images(0), demo_images(1)
    out = []
    for i in range(n):
        host = _photo(reals[offset + i])
        img = splice(host, _photo(fakes[offset + i]), draw_mask(SIZE, seed=900 + i)) if i % 2 else host
        out.append(root / f"fEdOddAW{i:04d}.jpg")
        _save_jpeg(img, out[-1])
    return out


def task_a_tree(root: Path, n: int = 8, offset: int = 30) -> Path:
    """``root/0_real/*.jpg`` and ``root/1_fake/*``: the Task A validation layout."""
    for label, folder in ((0, "0_real"), (1, "1_fake")):
        for i, src in enumerate(demo_images(label)[offset:offset + n]):
            _save_jpeg(_photo(src, (80, 80)), root / folder / f"{folder}_{i:03d}.jpg")
    return root


def tgif_tree(root: Path, ids: tuple[str, ...] = ("197658", "109118", "162415", "213171")) -> Path:
    """``orig/<id>_orig.png``, ``sd2-sp/<id>_mask_segm.png_sd2_0.png``, ``sdxl-fr/<id>_mask_bbox.png_sdxl-1024_0.png``,
    ``masks/<id>_mask_{segm,bbox}.png``, ``splits/{train,val}.csv`` and ``metadata/sd2_validation.csv``."""
    reals, fakes = demo_images(0), demo_images(1)
    for i, host_id in enumerate(ids):
        host = _photo(reals[40 + i])
        (root / "orig").mkdir(parents=True, exist_ok=True)
        host.save(root / "orig" / f"{host_id}_orig.png")
        for j, (folder, variation, name) in enumerate((("sd2-sp", "segm", "sd2"), ("sdxl-fr", "bbox", "sdxl-1024"))):
            mask = draw_mask(SIZE, seed=500 + 10 * i + j)
            _save_mask(mask, root / "masks" / f"{host_id}_mask_{variation}.png")
            (root / folder).mkdir(exist_ok=True)
            splice(host, _photo(fakes[40 + i + j]), mask).save(root / folder / f"{host_id}_mask_{variation}.png_{name}_0.png")
    (root / "splits").mkdir()
    for split, part in (("train", ids[:3]), ("val", ids[3:])):
        pd.DataFrame({"category": "baseball glove", "image_id": list(part), "width": SIZE[0], "height": SIZE[1],
                      "prompt": "baseball glove, a field"}).to_csv(root / "splits" / f"{split}.csv")
    (root / "metadata").mkdir()
    pd.DataFrame({"category": "baseball glove", "image_id": list(ids[:2]), "mask_variation": "segm",
                  "gen_variation_id": 0, "nima_mean": 5.0}).to_csv(root / "metadata" / "sd2_validation.csv", index=False)
    return root


def all_synthetic_folder(root: Path, n: int = 6, offset: int = 44) -> Path:
    """``root/1_fake/``: generated images only, each in a social-media variation (downscaled, JPEG at 60–90): the
    organisers' robustness set in miniature."""
    for i, src in enumerate(demo_images(1)[offset:offset + n]):
        img = _photo(src, (80 - 4 * i, 80 - 4 * i))
        path = root / "1_fake" / f"variation_{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=60 + 6 * i)
    return root
