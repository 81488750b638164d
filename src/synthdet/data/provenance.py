"""Provenance: which images a model has seen, and on which rows a figure was computed.

A detector's card records the rows (content hashes and dHash codes) it was fitted and calibrated on
(:class:`~synthdet.data.splits.RowSet`); every figure synthdet prints is checked against them here and labelled
``held-out``, ``in-sample`` or ``provenance unknown``. Evaluation, ensembles, recipes and Task B all use these.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, get_args

import pandas as pd

from synthdet.data.splits import HASH_PREFIX, RowSet
from synthdet.data.tilehash import TileIndex

#: What ``evaluate_detector`` does with rows the detector was fitted or calibrated on.
OnOverlap = Literal["refuse", "flag", "drop"]
ON_OVERLAP: tuple[str, ...] = get_args(OnOverlap)
HELD_OUT, IN_SAMPLE, UNKNOWN = "held-out", "in-sample", "provenance unknown"
#: Rows no model part was fitted on but a threshold was tuned on (an ensemble's calibration rows): not held-out.
TUNED_HERE = "threshold tuned here (held out from the members)"


#: Columns of the list of seen images (:func:`seen_list`; an evaluation's ``seen.csv``).
SEEN_COLUMNS = ("path", "sha256", "roles", "how", "seen_as")


class InSampleError(ValueError):
    """The rows to evaluate include rows the detector was fitted or calibrated on (``on_overlap="refuse"``);
    ``table`` lists every one (:func:`seen_list`)."""

    def __init__(self, message: str, table: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.table = table if table is not None else pd.DataFrame(columns=list(SEEN_COLUMNS))


def seen_list(rows: pd.DataFrame, seen: dict[str, RowSet], per_role: dict[str, set[str]],
              copies: dict[str, str]) -> pd.DataFrame:
    """One line per seen image of ``rows`` (``path``, ``sha256``): the roles it was seen in, how it was recognised
    (same file, near-duplicate, or crop/resize/re-encode by its tiles) and the seen image's hash prefix where the
    tiles named one."""
    out = []
    exact = set().union(*(rs.hashes for rs in seen.values()))
    for r in rows.itertuples():
        sha = str(r.sha256)
        roles = "+".join(role for role, found in per_role.items() if sha in found)
        if not roles:
            continue
        how = ("same content" if sha[:HASH_PREFIX] in exact else "crop/resize/re-encode" if sha in copies
               else "near-duplicate")
        out.append({"path": r.path, "sha256": sha, "roles": roles, "how": how, "seen_as": copies.get(sha, "")})
    return pd.DataFrame(out, columns=list(SEEN_COLUMNS))


def seen_rows(detector: Any) -> dict[str, RowSet] | None:
    """The rows a detector's parameters and threshold came from, per role (``fit``, ``calib``): its card's ``rows``;
    for an ensemble whose card does not cover its members, its own rows joined with every member's. None when a card
    does not record them (a detector saved before cards did): its figures are of unknown provenance."""
    own: dict[str, RowSet] = dict(getattr(detector.card, "rows", None) or {})
    if "fit" in own:
        return own
    members = getattr(detector, "members", None)
    if not members:
        return None
    parts = [seen_rows(m) for m in members]
    known = [p for p in parts if p is not None]
    return join_rows([*known, own]) if len(known) == len(parts) else None


def copies_of(tiles: TileIndex | None, shas: Iterable[str], paths: Iterable[str]) -> dict[str, str]:
    """Per query content hash, the seen image (its hash prefix) it is a crop, resize or re-encode of, for the files
    the tile index recognises (:meth:`TileIndex.match`); empty without an index."""
    if tiles is None:
        return {}
    shas, paths = [str(s) for s in shas], [str(p) for p in paths]
    return {s: name for s, (name, _) in zip(shas, tiles.match_paths(paths)) if name is not None}


def join_rows(parts: Iterable[dict[str, RowSet]]) -> dict[str, RowSet]:
    """Rows per role joined over several records (an ensemble's members and its own calibration rows)."""
    roles: dict[str, tuple[set[str], set[str]]] = {}
    for rows in parts:
        for role, rs in rows.items():
            hashes, codes = roles.setdefault(role, (set(), set()))
            hashes.update(rs.hashes)
            codes.update(rs.phashes)
    return {role: RowSet.of(hashes, codes) for role, (hashes, codes) in roles.items()}


def seen_by(shas: Iterable[str], seen: dict[str, RowSet], phashes: Iterable[str] | None = None,
            copies: dict[str, str] | None = None) -> dict[str, set[str]]:
    """Per role in ``seen``, the hashes among ``shas`` seen in it (as the same file or, given ``phashes``, as a
    near-duplicate, or, given ``copies`` (:func:`copies_of`), as a crop/resize/re-encode of an image of that role):
    one near-duplicate search per role."""
    shas = [str(s) for s in shas]
    codes = None if phashes is None else list(phashes)
    out = {}
    for role, rs in seen.items():
        found = rs.overlap(shas, codes)
        if copies:
            mine = set(rs.hashes)
            found |= {s for s in shas if copies.get(s, "")[:HASH_PREFIX] in mine}
        out[role] = found
    return out


def overlap(seen: dict[str, RowSet], shas: Iterable[str], phashes: Iterable[str] | None = None,
            copies: dict[str, str] | None = None) -> set[str]:
    """The hashes among ``shas`` that were seen in any role, as the same file or (given the rows' ``phashes``) as a
    near-duplicate of a seen image, or (given ``copies``) as a crop, resize or re-encode of one."""
    return set().union(*seen_by(shas, seen, phashes, copies).values())


def seen_counts(per_role: dict[str, set[str]]) -> dict[str, int]:
    """Images per combination of roles, each image once: ``{"fit": 2, "calib": 1}``, or ``{"fit+calib": 1}`` for an
    image that was both fitted and calibrated on (not one image counted twice)."""
    roles: dict[str, list[str]] = {}
    for role, found in per_role.items():
        for sha in found:
            roles.setdefault(sha, []).append(role)
    counts: dict[str, int] = {}
    for names in roles.values():
        key = "+".join(names)
        counts[key] = counts.get(key, 0) + 1
    order = list(per_role)  # single roles first, in the card's order, then combinations
    return dict(sorted(counts.items(), key=lambda kv: (kv[0].count("+"), [order.index(r) for r in kv[0].split("+")])))


def provenance(shas: Iterable[str], seen: dict[str, RowSet] | None,
               phashes: Iterable[str] | None = None, copies: dict[str, str] | None = None) -> dict[str, Any]:
    """Which rows a figure was computed on: ``n`` distinct images (duplicates count once), their ``digest``, and
    ``status``: held-out (none seen), in-sample (``n_seen`` of them were fitted or calibrated on, or are
    near-duplicates of such images when ``phashes`` are given, or crops/resizes/re-encodes of them in ``copies``; per
    role in ``seen``), or provenance unknown (``seen`` is None)."""
    shas = [str(s) for s in shas]
    rows = RowSet.of(shas)
    if seen is None:
        return {"n": rows.n, "digest": rows.digest, "status": UNKNOWN}
    per_role = seen_by(shas, seen, phashes, copies)
    n_seen = len(set().union(*per_role.values()))
    return {"n": rows.n, "digest": rows.digest, "status": IN_SAMPLE if n_seen else HELD_OUT, "n_seen": n_seen,
            "seen": {role: len(found) for role, found in per_role.items()}}


def describe_rows(rows: dict[str, Any]) -> str:
    """One line for a provenance record: ``held-out: 40 images (digest …)``, or in-sample with the overlap."""
    seen = f", {rows['n_seen']} seen in fitting/calibration" if rows.get("n_seen") else ""
    return f"{rows['status']}: {rows['n']} images{seen} (digest {rows['digest']})"
