"""Building a calibrated ensemble from saved detectors (``synthdet ensemble``, the ensemble recipes): the members'
held-out rows, calibration on images none of them has seen, and the card's figures with their provenance.
The ensemble itself — combining rules, scoring, loading — is :mod:`synthdet.detectors.ensemble`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from synthdet.data.manifest import manifest_hash, usable_rows
from synthdet.data.provenance import (
    HELD_OUT,
    ON_OVERLAP,
    TUNED_HERE,
    InSampleError,
    OnOverlap,
    copies_of,
    join_rows,
    overlap,
    provenance,
    seen_by,
    seen_list,
)
from synthdet.data.splits import RowSet, phash_codes
from synthdet.data.tilehash import TileIndex
from synthdet.detectors.calibrate import f1_optimal_threshold
from synthdet.detectors.card import (
    CardBase,
    seen_tiles,
)
from synthdet.detectors.ensemble import (
    EnsembleDetector,
    combine,
)
from synthdet.evaluation.metrics import binary_metrics
from synthdet.io.atomic import atomic_path


def saved_split(detector_dir: Path) -> pd.DataFrame | None:
    """A saved detector's ``manifest.csv`` as ``sha256``, ``split`` (when it has one) and ``phash``; None without one.
    The held-out split reads ``test`` whichever synthdet wrote it (``val`` before the split plan)."""
    manifest = detector_dir / "manifest.csv"
    if not manifest.is_file():
        return None
    df = pd.read_csv(manifest, usecols=lambda c: c in ("sha256", "split", "phash", "path"), dtype=str, keep_default_na=False)
    if "split" in df:
        df["split"] = df["split"].replace({"val": "test"})
    return df


def member_rows(member_dir: Path, card: CardBase) -> dict[str, RowSet] | None:
    """The rows a member was fitted / calibrated on: its card's ``rows``, or, for a detector saved before cards
    recorded them, the ``split`` column of its ``manifest.csv`` (``calib`` rows calibrated on, ``test`` held out
    unless it was refitted on fit+val, every other row fitted on). None when neither says (provenance unknown)."""
    if "fit" in card.rows:
        return dict(card.rows)
    df = saved_split(member_dir)
    if df is None:
        return None
    split = df["split"] if "split" in df else pd.Series("fit", index=df.index)
    held_out = {"calib"} if card.data.get("refit_on") == "fit+val" else {"calib", "test"}
    fit, calib = ~split.isin(held_out), split == "calib"
    return {"fit": RowSet.of_rows(df[fit]), "calib": RowSet.of_rows(df[calib])}


def build_ensemble(
    members: Sequence[str | Path],
    *,
    calib: str | Path | pd.DataFrame,
    out: str | Path,
    rule: str = "mean",
    weights: Sequence[float] | None = None,
    copy_members: bool = True,
    on_overlap: OnOverlap = "refuse",
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = False,
) -> EnsembleDetector:
    """Combine saved detectors, choose the F1-optimal threshold on ``calib`` (labelled images scored through the
    inference path) and save the ensemble to ``out``.

    The threshold must come from images no member was fitted or calibrated on (:func:`member_rows`): with
    ``on_overlap`` "refuse" an overlap raises :class:`~synthdet.evaluation.runs.InSampleError`, "drop" calibrates on the
    unseen remainder, "flag" calibrates anyway and the card's ``metrics["calib"]["rows"]`` says "in-sample". The
    card's ``rows`` join the members' rows with the calibration rows, so ``evaluate`` knows all the ensemble saw.
    """
    if on_overlap not in ON_OVERLAP:
        raise ValueError(f"on_overlap must be one of {', '.join(ON_OVERLAP)}, not {on_overlap!r}")
    ens = EnsembleDetector.from_members(members, rule=rule, weights=weights)
    df, skipped = usable_rows(calib, progress=progress)
    df = df.drop_duplicates("sha256").reset_index(drop=True)
    per_member = [member_rows(d, m.card) for d, m in zip(ens.member_dirs, ens.members)]
    known = [r for r in per_member if r is not None]
    seen = join_rows(known) if len(known) == len(per_member) else None
    codes = phash_codes(df)
    copies = copies_of(seen_tiles(ens), df["sha256"], df["path"]) if seen is not None else {}  # crops, resizes
    before = provenance(df["sha256"], seen, codes, copies)
    dropped = 0
    if seen is not None and before.get("n_seen") and on_overlap == "refuse":
        per_role = seen_by(df["sha256"], seen, codes, copies)
        table = seen_list(df, seen, per_role, copies)
        listing = Path(out).with_name(Path(out).name + ".seen.csv")  # beside: no half-made ensemble folder
        with atomic_path(listing) as tmp:  # every one; the message names the first few
            table.to_csv(tmp, index=False)
        names = [Path(p).name for p in table["path"]]
        raise InSampleError(
            f"{before['n_seen']} of the {before['n']} calibration images were used to fit or calibrate a member (by "
            f"content hash, as near-duplicates or as crops/resizes/re-encodes): {', '.join(names[:3])}"
            f"{f' and {len(names) - 3} more' if len(names) > 3 else ''}, all listed in {listing}; "
            f"the ensemble's threshold and figures would be in-sample. Calibrate on images no member has seen (e.g. "
            f"their shared val split), drop the overlap (on_overlap='drop') or flag it (on_overlap='flag')", table)
    if seen is not None and before["n_seen"] and on_overlap == "drop":
        unseen = ~df["sha256"].isin(overlap(seen, df["sha256"], codes, copies))
        dropped = int((~unseen).sum())
        df = df[unseen].reset_index(drop=True)
        codes = None if codes is None else codes[unseen.to_numpy()]
        if df["label"].nunique() < 2:
            raise InSampleError(f"after dropping the {dropped} calibration images the members have seen, "
                                f"{len(df)} remain, not both classes: give held-out calibration images")
    table = ens.member_probs(df["path"].tolist(), batch_size=batch_size, num_workers=num_workers, progress=progress)
    ok = np.isfinite(table).all(axis=1)
    y, table = df["label"].to_numpy()[ok], table[ok]
    prob = combine(table, ens.member_thresholds, rule, ens.card.weights)
    ens.card.threshold = f1_optimal_threshold(y, prob)
    ens.card.prior = float(y.mean())
    each = {}
    for j, (name, t) in enumerate(zip(ens.card.names, ens.member_thresholds)):
        mm = binary_metrics(y, table[:, j], threshold=t)
        each[name] = {"roc_auc": mm["roc_auc"], "ap": mm["ap"], "f1": mm["at_threshold"]["f1"], "threshold": t}
    shas = df.loc[ok, "sha256"]
    ok_codes = None if codes is None else codes[ok]
    rows = provenance(shas, seen, ok_codes, copies)
    if rows["status"] == HELD_OUT:  # held out from the members, but the threshold was tuned on these very rows
        rows["status"] = TUNED_HERE
    ens.card.metrics = {"calib": {**binary_metrics(y, prob, threshold=ens.card.threshold), "rows": rows},
                        "members": each}
    ens.card.rows = join_rows([*known, {"calib": RowSet.of(shas, ok_codes)}])
    ens.card._tiles = TileIndex.of_rows(df[ok])
    if seen is None:
        ens.card.rows.pop("fit", None)  # some member's rows are unknown: so are the ensemble's
    ens.card.data = {"calib": {
        "manifest_hash": manifest_hash(df[ok]), "n_images": int(ok.sum()), "skipped": len(skipped) + int((~ok).sum()),
        "dropped_seen": dropped, "on_overlap": on_overlap,
        "seen_by_members": {n: None if r is None else len(overlap(r, shas, ok_codes, copies))
                            for n, r in zip(ens.card.names, per_member)},
    }}
    ens.save(out, copy_members=copy_members)
    return ens
