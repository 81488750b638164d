"""Labelled sources → training, calibration and held-out items: several manifests mixed by weight, validation on
one, and no image whose content is held out ever trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from synthdet.data.manifest import ManifestError, index, split, three_way_split
from synthdet.training.finetune.data import Item

Source: TypeAlias = str | Path | pd.DataFrame
"""A dataset: a folder (0_real/1_fake, real/fake), a CSV, a manifest file, or a manifest frame."""


def _items(df: pd.DataFrame, part: str) -> list[Item]:
    rows = df[df["split"] == part].drop_duplicates("sha256")
    return list(zip(rows["path"], rows["label"].astype(int)))


@dataclass
class Mix:
    """What :func:`finetune_detector` trains on (``fit``, sampled by ``weights``, one per item, or uniformly when
    None), selects and calibrates on (``calib``) and reports (``val``); ``manifest`` is every row with its
    ``dataset`` and ``split``."""

    fit: list[Item]
    weights: list[float] | None
    calib: list[Item]
    val: list[Item]
    manifest: pd.DataFrame


def mix_sources(
    train: Sequence[pd.DataFrame],
    val: int | pd.DataFrame = 0,
    *,
    data_weights: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    calib_fraction: float = 0.15,
    seed: int = 42,
) -> Mix:
    """Training items from several labelled manifests, validation on one.

    ``val`` is the index of the training manifest to validate on — split three ways as in ``train_detector``, only
    its ``fit`` part trains — or a separate manifest, split into ``calib`` and a held-out ``val`` of
    ``val_fraction``. Images of other manifests whose content is in ``calib`` or ``val`` are dropped, so copies
    cannot leak. ``data_weights`` are shares of the training draws per manifest (1 and 0.5: two thirds of each
    epoch's images come from the first, whatever the sizes); None trains on every item once per epoch.
    """
    if data_weights is not None and (len(data_weights) != len(train) or min(data_weights) < 0
                                     or sum(data_weights) <= 0):
        raise ValueError(f"need one non-negative weight per training manifest ({len(train)}), not all zero; "
                         f"got {list(data_weights)}")
    inside = isinstance(val, int)
    if isinstance(val, int):
        held = train[val].copy()
        held["split"] = three_way_split(held, val_fraction=val_fraction, calib_fraction=calib_fraction, seed=seed)
    else:
        held = val.copy()
        held["split"] = split(held, val_fraction=val_fraction, seed=seed).replace({"fit": "calib"})
    shown = set(held.loc[held["split"].isin(["calib", "test"]), "sha256"])
    parts = [held if inside and i == val else df[~df["sha256"].isin(shown)].assign(split="fit")
             for i, df in enumerate(train)]
    fit_parts = [_items(df, "fit") for df in parts]
    fit = [item for part in fit_parts for item in part]
    if len({y for _, y in fit}) < 2:
        raise ManifestError("the training manifests need images of both classes (label 0 = real, 1 = fake)")
    weights = None if data_weights is None else [w / len(p) for w, p in zip(data_weights, fit_parts) for _ in p]
    manifest = pd.concat([*parts, *([] if inside else [held])], ignore_index=True)
    return Mix(fit, weights, _items(held, "calib"), _items(held, "test"), manifest)


def load_source(source: Source, name: str, progress: bool = False) -> pd.DataFrame:
    """Decodable, labelled rows of ``source``, each tagged with the ``dataset`` it came from."""
    df = source.copy() if isinstance(source, pd.DataFrame) else index(source, progress=progress)
    df = df[df["ok"] & (df["label"] >= 0)].reset_index(drop=True)
    if df.empty:
        raise ManifestError(f"{name}: no decodable labelled images (label 0 = real, 1 = fake)")
    return df.assign(dataset=name)


def same_source(a: Source, b: Source) -> bool:
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        return a is b
    return Path(a).resolve() == Path(b).resolve()
