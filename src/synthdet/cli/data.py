"""``synthdet data``: build and split dataset manifests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from synthdet.cli._io import Quiet, say, skipped

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(add_completion=False, rich_markup_mode=None, help="Build and split dataset manifests.", no_args_is_help=True)


@app.command("index")
def data_index(
    source: Annotated[Path, typer.Argument(help="Folder (0_real/1_fake, real/fake, the MediaEval Task B tree, TGIF, "
                                                "unlabelled test images) or CSV (path,label[,source,generator]; "
                                                "taskB_val.csv; a TGIF metadata/ or splits/ CSV).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Manifest to write (.csv, .tsv, or .parquet with the parquet extra).")] = Path("manifest.csv"),
    root: Annotated[Path | None, typer.Option(help="Folder an official CSV's paths start from (default: the CSV's "
                                                   "folder; for a TGIF CSV the TGIF folder two levels up).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Held-out fraction for the stratified split column.")] = 0.2,
    folds: Annotated[int, typer.Option(help="Number of stratified folds for the fold column (0: none).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of split and folds.")] = 42,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels (decompression bombs).")] = 100_000_000,
    quiet: Quiet = False,
) -> None:
    """Index images: hash, size, format, decodability; add reproducible split and fold columns."""
    from synthdet.data.manifest import index, split_columns, write_manifest

    df = index(source, max_pixels=max_pixels, progress=not quiet, root=root)
    labelled = (df["label"] >= 0) & df["ok"]
    if labelled.any() and df.loc[labelled, "label"].nunique() == 2:
        df = df.assign(**split_columns(df, val_fraction=val_fraction, k=folds, seed=seed))
    write_manifest(df, out)
    bad = df[~df["ok"]]
    say(f"{df.attrs.get('layout', 'data')}: {len(df)} images indexed → {out}  ({int(df['ok'].sum())} ok, "
        f"{len(bad)} unusable)")
    if "method" in df:
        say(f"  {_counts(df, 'label')}; per method: {_counts(df, 'method')}"
            + (f"; per type: {_counts(df[df['type'] != ''], 'type')}" if (df["type"] != "").any() else "")
            + (f"; per source: {_counts(df, 'source')}" if (df["source"] != "").any() else ""))
    for path, reason in zip(bad["path"], bad["error"]):
        skipped(path, reason)


def _counts(df: pd.DataFrame, column: str) -> str:
    """``coco 40, raise 20``: rows per value of a manifest column."""
    names = {"label": {0: "authentic", 1: "manipulated", -1: "unlabelled"}}.get(column, {})
    return ", ".join(f"{names.get(k, k)} {n}" for k, n in df[column].value_counts().sort_index().items())


@app.command("normalise")
def data_normalise(
    source: Annotated[Path, typer.Argument(help="Folder, CSV or manifest (its source/generator/group columns kept).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for the copies (images/) and their manifest.csv.")],
    size: Annotated[int, typer.Option(min=16, help="Side of the square copies.")] = 384,
    scale: Annotated[str, typer.Option(help="resize: centre square resized to SIZE; native: centre SIZE crop at "
                                            "the image's own scale.")] = "resize",
    quality: Annotated[tuple[int, int], typer.Option(help="JPEG quality range, drawn per image.")] = (70, 95),
    quiet: Quiet = False,
) -> None:
    """Pass every image, real or generated, through one social-media chain (centre square, SIZE px, JPEG at a
    quality from the range), so that format, size and compression tell the classes nothing; then judge detectors
    on the copies, e.g. with `synthdet cv OUT --group-by source`."""
    from synthdet.cli._io import fail
    from synthdet.data.manifest import index
    from synthdet.data.normalise import SocialChain, normalise_dataset

    if scale not in ("resize", "native"):
        raise fail(f"--scale must be resize or native, not {scale!r}")
    lo, hi = quality
    if not 1 <= lo <= hi <= 100:
        raise fail(f"--quality must be two qualities 1 ≤ low ≤ high ≤ 100, not {lo} {hi}")
    df = index(source, progress=not quiet)
    chain = SocialChain(size=size, scale=scale, quality=(lo, hi))  # type: ignore[arg-type]
    pool = normalise_dataset(df, out, chain=chain, progress=not quiet)
    for path, reason in [*zip(df.loc[~df["ok"], "path"], df.loc[~df["ok"], "error"]), *pool.attrs["skipped"]]:
        skipped(path, reason)
    say(f"{len(pool)} images → {out / 'manifest.csv'}  ({chain.name()}; {len(df) - len(pool)} skipped)")


@app.command("make-manipulations")
def data_make_manipulations(
    source: Annotated[Path, typer.Argument(help="Folder, CSV or manifest of real (0) and generated (1) images.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Folder for images/, masks/ and manifest.csv.")],
    n: Annotated[int, typer.Option(min=1, help="Number of triples (categories cycle).")] = 100,
    size: Annotated[int, typer.Option(min=32, help="Working canvas side (multiple of 8) before the social chain.")] = 256,
    categories: Annotated[str, typer.Option(help="Comma-separated subset of splice-ai, inpaint-sp, regen-fr, "
                                                 "splice-real, copy-move, authentic.")] = "",
    seed: int = 0,
    quiet: Quiet = False,
) -> None:
    """Build (image, mask, category) triples with exact masks for Task B: splices, autoencoder inpainting and
    regeneration, copy-move, and untouched photos; every triple then resized and JPEG-compressed."""
    from synthdet.data.manifest import index
    from synthdet.localization.manipulate import CATEGORIES, make_manipulations

    cats = tuple(c.strip() for c in categories.split(",") if c.strip()) or CATEGORIES
    df = index(source, progress=not quiet)
    m = make_manipulations(df, out, n=n, size=size, categories=cats, seed=seed, progress=not quiet, on_skip=skipped)
    counts = ", ".join(f"{c} {k}" for c, k in m["category"].value_counts().sort_index().items())
    say(f"{len(m)} triples → {out / 'manifest.csv'}  ({counts})")
