"""Build the leave-one-source-out pool: ``../shared/data/dev`` ∪ ``dev2``, social-media normalised, with a ``group``
column naming each image's generator family (fakes) or photo source (reals).

    python scripts/build_pool.py [--out build/pool] [--size 384] [--scale resize|native]

Writes ``OUT/<chain>/manifest.csv`` (+ ``images/``) for ``synthdet cv --group-by group`` and
``benchmarks/generalisation.py``. Groups are what a detector in the wild meets as "new": a generator family it was
never trained on (all SD 1.x checkpoints together, all FLUX versions together), a photo collection from other
cameras. Families with fewer than 8 images are merged into a neighbour that shares their traits (named below), so
that every held-out group has a measurable score.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from synthdet.data.manifest import index
from synthdet.data.normalise import SocialChain, normalise_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

#: Real photo sources, by the repository or package that published them.
REAL_GROUPS = {
    "EliSchwartz/imagenet-sample-images": "real:imagenet",
    "google/dreambooth": "real:dreambooth",
    "CompVis/taming-transformers": "real:coco-openimages-ade-flickr",
    "ageitgey/face_recognition": "real:faces",
    "davisking/dlib": "real:faces",
    "timesler/facenet-pytorch": "real:faces",
    "cszn/KAIR": "real:restoration-benchmarks",
    "megvii-research/NAFNet": "real:restoration-benchmarks",
    "xinntao/Real-ESRGAN": "real:restoration-benchmarks",
    "foolbox": "real:library-samples",
    "skimage": "real:library-samples",
    "pjreddie/darknet": "real:library-samples",
    "grip-unina/GANimageDetection": "real:library-samples",
}

#: Generator families, first match wins (case-insensitive, on "generator | source").
FAKE_GROUPS = [
    (r"nano banana|gemini", "fake:gemini"),
    (r"dall-e|gpt-image|openai", "fake:openai"),
    (r"karlo|unclip", "fake:unclip"),
    (r"vqgan|\bgan\b|biggan|progan|stylegan", "fake:gan-vqgan"),  # pre-diffusion: 15 VQGAN+CLIP, 4 GAN samples
    (r"flux|chroma|krea", "fake:flux"),
    (r"sdxl|stable cascade|sd-turbo", "fake:sdxl"),
    (r"stable diffusion 3|sd ?3|stability ai", "fake:sd3"),
    (r"invokeai", "fake:invokeai"),
    (r"qwen", "fake:qwen"),
    (r"stable diffusion|sd1|sd ?1\.|sd 2|lcm|deliberate|dreamshaper|lora|stablediffusion-cheatsheet|wyrde",
     "fake:sd1-sd2"),
    (r"unknown \(comfyui template", "fake:comfyui-templates-unknown"),
    (r"seedream|recraft|grok|luma|kling|reve|muse|mai-image|minimax|ideogram|joyai|bria|firered",
     "fake:commercial-api"),
    # the open DiT-era families with enough images to be held out alone (the pool's "fake:open-dit" lumped 20+)
    (r"z-image", "fake:z-image"),
    (r"lumina", "fake:lumina"),
    (r"pixart", "fake:pixart"),
    (r"auraflow", "fake:auraflow"),
]
#: Generated images of no family above: small open families (Meissonic, Kandinsky, HiDream, CogView …), too few each
#: to be a group of their own; a leave-one-group-out fold over this group mixes them.
OTHER_OPEN = "fake:open-other"


def family(row: pd.Series) -> str:
    src = str(row["source"]).split(" ")[0].split(":", 1)[-1]
    if row["label"] == 0:
        return REAL_GROUPS.get(src, "real:other")
    text = f"{row['generator']} | {row['source']}".lower()
    return next((name for pattern, name in FAKE_GROUPS if re.search(pattern, text)), OTHER_OPEN)


def pooled_manifest() -> pd.DataFrame:
    parts = []
    for name in ("dev", "dev2"):
        df = index(SHARED / name / "manifest.csv", progress=True)
        parts.append(df.assign(dataset=name))
    df = pd.concat(parts, ignore_index=True)
    df["group"] = df.apply(family, axis=1)
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "pool")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--scale", choices=["resize", "native"], default="resize")
    args = ap.parse_args()
    chain = SocialChain(size=args.size, scale=args.scale)
    pool = normalise_dataset(pooled_manifest(), args.out / chain.name(), chain=chain, progress=True)
    print(pool.groupby(["label", "group"]).size().to_string())
    for path, reason in pool.attrs["skipped"]:
        print(f"skipped {path}: {reason}")
    print(f"{len(pool)} images → {args.out / chain.name() / 'manifest.csv'}")


if __name__ == "__main__":
    main()
