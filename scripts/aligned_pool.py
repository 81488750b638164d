"""Content-aligned training pairs for the protocol pool: a native-scale crop of a real photograph and the same crop
after a round trip through a latent autoencoder (TAEF2, :mod:`synthdet.localization.autoencoder`), labelled real and
generated.

    python scripts/aligned_pool.py [--pool build/protocol-pool/manifest.csv] [--out build/aligned-pool] [--per-group 25]
    python scripts/aligned_pool.py --per-group 5 --manifest manifest-few.csv   # the first five rounds, same files

Why: in the pool, what a generated image shows and at what zoom differs from what a photograph shows, and a head
learns those (issue 19's trap: native crops of large photographs look "zoomed in" like generated images). An aligned
pair differs only in what a latent decoder does to fine detail — same content, same scale, same size, same JPEG
chain — so the only thing the pair can teach is the decoder's trace (Rajan et al., "Aligned datasets improve detection
of latent diffusion-generated images", ICLR 2025; B-Free, CVPR 2025). One decoder is not every generator: the
protocol measures whether the trace transfers to the generator lineages it holds out.

Each pair names the pool image it was cut from (``derived_from``, its sha256): ``cross_validate(derived=...)`` puts a
pair in the fit rows of exactly the fold models that train on that image, so a held-out image's pair is never
trained on. The final groups are never used. Both crops pass the pool's chain: decode, a first JPEG generation (the
photograph's own; the round trip gets one at a quality drawn from 85–97, as does a photograph stored losslessly), a
crop at the image's own scale on the 16-px JPEG grid, JPEG at a second drawn quality; box and qualities are seeded by
the source's sha256, so a rebuild writes the same bytes. Resumes: pairs already written are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from synthdet.io.atomic import atomic_open, write_text
from synthdet.io.files import sha256_file
from synthdet.io.pixels import jpeg_roundtrip, load_image
from synthdet.localization import autoencoder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from rebuild_pool import MAX_PIXELS, QUALITY  # noqa: E402
from train_default import final_groups  # noqa: E402

SIDE = 256  # the crop's side at the image's own scale (a multiple of the autoencoder's 8)


def rng_of(sha: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"aligned:{sha}".encode()).hexdigest()[:16], 16))


def pair(img: Image.Image, sha: str, jpeg: bool = True) -> tuple[bytes, bytes]:
    """The JPEG bytes of the real crop and of its autoencoder round trip: the same box, on the 16-px JPEG grid, and
    the same two JPEG generations — the photograph's own (one at a drawn quality if the file ``jpeg`` was not) and
    the stored one — so neither the crop's position nor the compression history tells them apart."""
    rng = rng_of(sha)
    q1, q2 = (int(q) for q in rng.integers(QUALITY[0], QUALITY[1] + 1, size=2))
    w, h = img.size
    side = min(SIDE, w, h) // autoencoder.SCALE * autoencoder.SCALE
    x, y = (16 * int(rng.integers(0, (n - side) // 16 + 1)) for n in (w, h))
    img = img.convert("RGB") if jpeg else jpeg_roundtrip(img.convert("RGB"), q1, subsampling="4:2:0")
    crop = img.crop((x, y, x + side, y + side))
    out = []
    for im in (crop, jpeg_roundtrip(autoencoder.roundtrip(crop), q1, subsampling="4:2:0")):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q2, subsampling="4:2:0")
        out.append(buf.getvalue())
    return out[0], out[1]


def choose(pool: pd.DataFrame, per_group: int) -> pd.DataFrame:
    """Up to ``per_group`` photographs of every real group (seeded), outside the final groups, in rounds (one of
    each group, then the next), so that a run stopped early still covers every group."""
    real = pool[(pool["label"] == 0) & ~pool["group"].isin(final_groups())].sample(frac=1.0, random_state=0)
    real = real.assign(round=real.groupby("group").cumcount())
    return real[real["round"] < per_group].sort_values(["round", "sha256"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=ROOT / "build" / "protocol-pool" / "manifest.csv")
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "aligned-pool")
    ap.add_argument("--per-group", type=int, default=25)
    ap.add_argument("--manifest", default="manifest.csv", help="its name in --out (a smaller --per-group reuses the "
                    "pairs of a larger one: the same photographs, in the same rounds)")
    args = ap.parse_args()
    pool = pd.read_csv(args.pool, dtype={"sha256": str})
    chosen = choose(pool, args.per_group)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in tqdm(chosen.itertuples(), total=len(chosen), desc="aligned pairs"):
        paths = [images / f"{r.sha256[:16]}-{kind}.jpg" for kind in ("real", "recon")]
        if not all(p.is_file() for p in paths):
            try:
                with Image.open(r.original) as im:
                    jpeg = im.format == "JPEG"
                img = load_image(r.original, max_pixels=MAX_PIXELS)
            except Exception as e:  # a source that no longer decodes is reported, the run goes on
                print(f"skipped {r.original}: {e}", file=sys.stderr)
                continue
            for p, data in zip(paths, pair(img, r.sha256, jpeg)):
                with atomic_open(p, "wb") as f:  # a run stopped mid-write leaves no half file to resume from
                    f.write(data)
        for p, label in zip(paths, (0, 1)):
            rows.append({"path": str(p), "sha256": sha256_file(p), "label": label, "derived_from": r.sha256,
                         "group": r.group})
        if len(rows) % 100 == 0:  # a run stopped early leaves a manifest of every pair written so far
            write_text(args.out / args.manifest, pd.DataFrame(rows).to_csv(index=False))
    write_text(args.out / args.manifest, pd.DataFrame(rows).to_csv(index=False))
    print(f"{len(rows) // 2} pairs from {chosen['group'].nunique()} real groups → {args.out / args.manifest}")


if __name__ == "__main__":
    main()
