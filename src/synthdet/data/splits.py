"""Which images a model has seen, recorded compactly by content hash, so later figures can prove they are held out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from synthdet.io.atomic import write_text

if TYPE_CHECKING:
    import pandas as pd

#: Hex digits of sha256 kept per image: 16 (64 bits) makes an accidental collision in a million images ~3e-8.
HASH_PREFIX = 16


class RowSet(BaseModel):
    """A set of images by content hash (sha256 prefixes, sorted, deduplicated) and a digest of the whole set.

    ``phashes`` (64-bit dHash per image, 16 hex, when the manifest had them) let :meth:`overlap` find near-duplicates
    too: a resized or re-encoded copy of a training image has another sha256 but (almost) the same dHash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    digest: str
    hashes: list[str]
    phashes: list[str] = []

    @classmethod
    def of(cls, shas: Iterable[str], phashes: Iterable[str] | None = None) -> RowSet:
        hashes = sorted({str(s)[:HASH_PREFIX] for s in shas})
        digest = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
        codes = sorted({str(p) for p in phashes if isinstance(p, str) and p}) if phashes is not None else []
        return cls(n=len(hashes), digest=digest, hashes=hashes, phashes=codes)

    @classmethod
    def of_rows(cls, rows: pd.DataFrame) -> RowSet:
        """The images of a manifest slice, with their dHash codes when it has them."""
        return cls.of(rows["sha256"], phash_codes(rows))

    def overlap(self, shas: Iterable[str], phashes: Iterable[str] | None = None) -> set[str]:
        """The full hashes among ``shas`` that this set contains, by content hash or, given the rows' ``phashes``,
        as a near-duplicate (dHash within :data:`NEAR_DUP_BITS` bits) of one of its images."""
        shas = [str(s) for s in shas]
        mine = set(self.hashes)
        found = {s for s in shas if s[:HASH_PREFIX] in mine}
        if phashes is not None and self.phashes:
            near = near_duplicate_of(list(phashes), self.phashes)
            found |= {s for s, hit in zip(shas, near, strict=True) if hit}
        return found


# ------------------------------------------------------------------------------------------------ near-duplicates
#: Images whose 64-bit dHash differs in at most this many bits are one group. Measured on the dev sets: a copy
#: resized to 60 % and re-saved as JPEG q70 differs by 0-3 bits (one dev2 image in 69: 8); at <= 6 bits dev pairs
#: are edit before/after twins, inpainting variants and photo series of one subject, at 7 the first unrelated pair
#: appears. Must stay below 8: pairs are found by bucketing on each of the 8 bytes (two codes within 7 bits share
#: at least one byte exactly), not by comparing every pair.
NEAR_DUP_BITS = 6

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def size_matched(megapixels: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Indices of a subset in which every size bin (half an octave of megapixels) holds as many photos as generated
    images, drawn at random (seeded); images of unknown size (NaN) are left out. Views cut from these at their own
    scale cannot tell the class by zoom level, which views of the whole pool can (its photos are larger)."""
    rng = np.random.default_rng(seed)
    known = np.isfinite(megapixels) & (megapixels > 0)
    bins = np.full(len(labels), -999)
    bins[known] = np.floor(2 * np.log2(megapixels[known])).astype(int)
    keep: list[np.ndarray] = []
    for b in np.unique(bins[known]):
        real, fake = (np.flatnonzero(known & (bins == b) & (labels == c)) for c in (0, 1))
        n = min(len(real), len(fake))
        keep += [rng.choice(real, n, replace=False), rng.choice(fake, n, replace=False)]
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=int)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 codes (broadcasting)."""
    x = np.ascontiguousarray(np.bitwise_xor(a, b), dtype=np.uint64)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


def phash_codes(rows: pd.DataFrame) -> np.ndarray | None:
    """A manifest slice's dHash codes ("" where unknown), or None when it has no ``phash`` column."""
    return rows["phash"].fillna("").astype(str).to_numpy() if "phash" in rows else None


def near_duplicate_of(queries: Sequence[str], reference: Sequence[str], max_bits: int = NEAR_DUP_BITS,
                      block: int = 1024) -> np.ndarray:
    """For each query dHash (16 hex; empty = unknown), whether some reference code is within ``max_bits`` bits."""
    ref = np.array([int(c, 16) for c in reference if c], dtype=np.uint64)
    hit = np.zeros(len(queries), dtype=bool)
    known = [i for i, q in enumerate(queries) if isinstance(q, str) and q]
    if not len(ref) or not known:
        return hit
    codes = np.array([int(queries[i], 16) for i in known], dtype=np.uint64)
    for start in range(0, len(codes), block):  # memory: block x len(ref) distances at a time
        part = codes[start:start + block]
        hit[known[start:start + block]] = (hamming(part[:, None], ref[None, :]) <= max_bits).any(axis=1)
    return hit


def near_duplicate_pairs(codes: np.ndarray, max_bits: int = NEAR_DUP_BITS, block: int = 512) -> set[tuple[int, int]]:
    """Index pairs ``(i < j)`` whose codes differ in at most ``max_bits`` bits, without comparing every pair."""
    if not 0 <= max_bits < 8:
        raise ValueError(f"max_bits must be in 0..7, got {max_bits}")
    codes = np.asarray(codes, dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    for byte in range(8):
        chunk = (codes >> np.uint64(8 * byte)) & np.uint64(0xFF)
        order = np.argsort(chunk, kind="stable")
        for bucket in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1):
            for start in range(0, len(bucket), block):
                rows = bucket[start : start + block]
                close = hamming(codes[rows][:, None], codes[bucket][None, :]) <= max_bits
                for i, j in zip(*np.nonzero(close)):
                    a, b = int(rows[i]), int(bucket[j])
                    if a < b:
                        pairs.add((a, b))
    return pairs


def _components(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Union-find: the smallest member index of each item's connected component."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


# ------------------------------------------------------------------------------------------------ the plan
ROLES = ("fit", "calib", "test")
_ROLE_CHAR = {"fit": "f", "calib": "c", "test": "t"}
_CHAR_ROLE = {v: k for k, v in _ROLE_CHAR.items()}

#: A (label, generator/source) stratum needs this many groups to be kept apart; smaller ones are pooled per label.
MIN_STRATUM = 5


def _round_to_total(quota: np.ndarray, total: int, priority: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integers summing to ``total``, each the floor or ceil of ``quota``; the extra units go to the highest
    ``priority`` (random tie-break)."""
    base = np.floor(quota + 1e-9).astype(int)
    order = np.lexsort((rng.random(len(quota)), -priority))
    base[order[: total - base.sum()]] += 1
    return base


def _stratified_parts(labels: np.ndarray, strata: np.ndarray, fractions: list[float], rng: np.random.Generator
                      ) -> np.ndarray:
    """Part index per item. Per label each part gets the floor or ceil of its share (the extra units go where the
    parts' totals lag most, so totals stay balanced too; a part that would get none gets one); within each stratum of a label as close to its share as
    those label totals allow (controlled rounding: floors, then largest remainders)."""
    out = np.empty(len(labels), dtype=np.int64)
    frac = np.asarray(fractions, dtype=np.float64)
    assigned, seen = np.zeros(len(frac), dtype=int), 0
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        seen += len(idx)
        quota_label = frac * len(idx)
        targets = _round_to_total(quota_label, len(idx), frac * seen - assigned - np.floor(quota_label + 1e-9), rng)
        if len(idx) >= np.count_nonzero(frac):  # every part gets both classes when it can (calib: AUC, threshold)
            for p in np.flatnonzero((frac > 0) & (targets == 0)):
                targets[np.argmax(targets)] -= 1
                targets[p] += 1
        assigned += targets
        names, inverse = np.unique(strata[idx], return_inverse=True)
        sizes = np.bincount(inverse, minlength=len(names))
        quota = np.outer(sizes, frac)
        counts = np.floor(quota + 1e-9).astype(int)
        row_left, col_left = sizes - counts.sum(1), targets - counts.sum(0)
        cells = np.lexsort((rng.random(quota.size), -(quota - counts).ravel()))
        for s, p in zip(*np.unravel_index(cells, quota.shape)):  # largest remainders first
            if row_left[s] > 0 and col_left[p] > 0:
                counts[s, p] += 1
                row_left[s] -= 1
                col_left[p] -= 1
        for s in np.flatnonzero(row_left):  # whatever the greedy pass could not place (totals match, so it fits)
            while row_left[s] > 0:
                free = int(np.flatnonzero(col_left)[0])
                counts[s, free] += 1
                row_left[s] -= 1
                col_left[free] -= 1
        for s in range(len(names)):
            members = rng.permutation(idx[inverse == s])
            out[members] = np.repeat(np.arange(len(frac)), counts[s])
    return out


def _stratum_name(df: pd.DataFrame, row: int) -> str:
    """The finest provenance a row has: its generator, else its source, else nothing."""
    for col in ("generator", "source"):
        if col in df and str(df.at[row, col]).strip():
            return str(df.at[row, col]).strip()
    return ""


class SplitPlan(BaseModel):
    """Which image plays which role — ``fit`` / ``calib`` / ``test``, and k cross-validation folds — decided once.

    Built from a manifest by :meth:`build`: one entry per distinct image (same bytes = same image, counted once),
    grouped by content hash *and* near-duplicate (dHash within :data:`NEAR_DUP_BITS` bits: a photo and its
    re-compressed or resized copy), stratified by label and by generator/source where a stratum is large enough.
    A group never straddles roles or folds. Saved as JSON beside every artifact (``plan.json``); its ``id`` is a
    digest of the assignment, so two runs can prove they used the same split.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    seed: int
    test_fraction: float
    calib_fraction: float  # of the images that are not test
    k: int  # folds (0: none)
    near_dup_bits: int
    n_images: int
    n_groups: int
    hashes: list[str]  # 16-hex content-hash prefixes, sorted
    labels: list[int]
    groups: list[int]  # group id per image: index (in ``hashes``) of the group's first image
    roles: list[str]  # "fit" | "calib" | "test" per image
    folds: list[str] = []  # per image, k characters: its role ("f"/"c"/"t") when fold j is the test fold
    fold_names: list[str] = []  # leave-one-group-out plans: the group each fold holds out
    conflicts: list[str] = []  # content hashes labelled both real and fake: left out of every role
    strata: dict[str, int] = {}  # groups per stratum ("label/generator-or-source"; "label/*": pooled small ones)

    @classmethod
    def build(cls, manifest: pd.DataFrame, *, test: float = 0.2, calib: float = 0.15, k: int = 5, seed: int = 42,
              near_dup_bits: int = NEAR_DUP_BITS, fold_by: str | None = None) -> SplitPlan:
        """Plan over the decodable, labelled rows of ``manifest`` (columns ``sha256, label``; ``phash``,
        ``generator``, ``source`` when present; rows with one ``src_path``, a host photo and its manipulations in an
        official Task B layout, are one group).

        ``fold_by`` names a column (a generator family, a photo source): the folds are then its values, one held out
        at a time (leave-one-source-out; ``k`` is ignored), the protocol that predicts how a detector does on
        sources it has never seen. A near-duplicate group whose images carry two values follows its first image."""
        df = manifest
        if "ok" in df:
            df = df[df["ok"].astype(bool)]
        df = df[df["label"].astype(int) >= 0].copy()
        df["h"] = df["sha256"].astype(str).str[:HASH_PREFIX]
        df["order"] = np.arange(len(df))  # manifest order: a near-duplicate group's first image decides its fold
        by_hash = df.groupby("h")["label"].nunique()
        conflicts = sorted(by_hash.index[by_hash > 1])
        df = df[~df["h"].isin(conflicts)].drop_duplicates("h").sort_values("h").reset_index(drop=True)
        if df["label"].nunique() < 2:
            raise ValueError("a split plan needs decodable images of both classes (label 0 and 1)")
        n = len(df)
        codes = [int(c, 16) if isinstance(c, str) and c else None for c in (df["phash"] if "phash" in df else [""] * n)]
        have = [i for i, c in enumerate(codes) if c is not None]
        pairs = near_duplicate_pairs(np.array([codes[i] for i in have], dtype=np.uint64), near_dup_bits)
        links = [(have[a], have[b]) for a, b in pairs]
        if "src_path" in df:  # an official Task B row names its host photo: a host and its manipulations stay together
            first: dict[str, int] = {}
            links += [(first.setdefault(h, i), i) for i, h in enumerate(df["src_path"].fillna("").astype(str)) if h]
        groups = _components(n, links)

        # one entry per group: majority label (ties: fake), stratum from its first image's generator or source
        labels = df["label"].astype(int).to_numpy()
        roots, gidx = np.unique(groups, return_inverse=True)
        glabel = (np.bincount(gidx, weights=labels) / np.bincount(gidx) >= 0.5).astype(int)
        sub = np.array([_stratum_name(df, int(r)) for r in roots], dtype=object)
        strata = np.array([f"{lbl}/{s}" for lbl, s in zip(glabel, sub)], dtype=object)
        names, counts = np.unique(strata, return_counts=True)
        small = set(names[counts < MIN_STRATUM])
        strata = np.array([f"{lbl}/*" if s in small else s for lbl, s in zip(glabel, strata)], dtype=object)

        rng = np.random.default_rng(seed)
        fractions = [(1 - test) * (1 - calib), (1 - test) * calib, test]
        role_of_group = _stratified_parts(glabel, strata, fractions, rng)
        roles = [ROLES[role_of_group[g]] for g in gidx]
        folds: list[str] = []
        fold_names: list[str] = []
        if fold_by is not None:
            if fold_by not in df:
                raise ValueError(f"no column {fold_by!r} to make folds by (columns: {list(manifest.columns)})")
            by_group = np.lexsort((df["order"].to_numpy(), gidx))  # each group's first image (not its smallest hash)
            first_image = by_group[np.r_[0, np.flatnonzero(np.diff(gidx[by_group])) + 1]]
            values = df[fold_by].fillna("").astype(str).to_numpy()[first_image]
            fold_names = sorted(set(values.tolist()))
            if len(fold_names) < 2:
                raise ValueError(f"column {fold_by!r} has {len(fold_names)} value(s); leaving one out needs 2 or more")
            k = len(fold_names)
            fold_of_group = np.array([fold_names.index(v) for v in values])
        elif k >= 2:
            fold_of_group = _stratified_parts(glabel, strata, [1 / k] * k, np.random.default_rng([seed, k]))
        if k >= 2:
            table = np.full((len(roots), k), "f", dtype=object)
            for f in range(k):
                table[fold_of_group == f, f] = "t"
                train = np.flatnonzero(fold_of_group != f)
                inner = _stratified_parts(glabel[train], strata[train], [1 - calib, calib],
                                          np.random.default_rng([seed, k, f]))
                table[train[inner == 1], f] = "c"
            folds = ["".join(table[g]) for g in gidx]
        body = {
            "seed": seed, "test_fraction": test, "calib_fraction": calib, "k": k if k >= 2 else 0,
            "near_dup_bits": near_dup_bits, "n_images": n, "n_groups": len(roots), "hashes": df["h"].tolist(),
            "labels": labels.tolist(), "groups": groups.tolist(), "roles": roles, "folds": folds,
            "fold_names": fold_names, "conflicts": conflicts,
            "strata": {str(s): int(c) for s, c in zip(*np.unique(strata, return_counts=True))},
        }
        plan = cls(id="", **body)
        return plan.model_copy(update={"id": plan.content_digest()})

    def content_digest(self) -> str:
        """Digest of everything but ``id`` (which is this digest, once built); an empty ``fold_names`` is left out,
        so plans saved before leave-one-group-out folds existed keep their ids."""
        body = self.model_dump(mode="json", exclude={"id"} | (set() if self.fold_names else {"fold_names"}))
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    # -------------------------------------------------------------------------------------------- reading it
    def _positions(self, shas: Iterable[str]) -> np.ndarray:
        """Index in ``hashes`` of each sha (-1: not in the plan)."""
        keys = np.array([str(s)[:HASH_PREFIX] for s in shas], dtype=f"U{HASH_PREFIX}")
        table = np.array(self.hashes, dtype=f"U{HASH_PREFIX}")
        pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return np.where(table[pos] == keys, pos, -1)

    def role_of(self, shas: Iterable[str]) -> np.ndarray:
        """Role per content hash: ``"fit"``, ``"calib"``, ``"test"``, or ``""`` for images outside the plan."""
        pos = self._positions(shas)
        roles = np.array([*self.roles, ""], dtype=object)
        return roles[pos]

    def fold_of(self, shas: Iterable[str]) -> np.ndarray:
        """Cross-validation fold per content hash (-1: outside the plan)."""
        if not self.k:
            raise ValueError("this split plan was built without folds (k=0)")
        pos = self._positions(shas)
        fold = np.array([f.index("t") for f in self.folds] + [-1])
        return fold[pos]

    def fold_roles(self, shas: Iterable[str], fold: int) -> np.ndarray:
        """Roles when ``fold`` is the test fold: ``"test"`` for it, ``"fit"``/``"calib"`` (stratified, grouped)
        for the others, ``""`` outside the plan."""
        if not 0 <= fold < self.k:
            raise ValueError(f"fold {fold} out of range 0..{self.k - 1}")
        pos = self._positions(shas)
        roles = np.array([_CHAR_ROLE[f[fold]] for f in self.folds] + [""], dtype=object)
        return roles[pos]

    def rows(self, *roles: str) -> RowSet:
        """The images of the given roles as a :class:`RowSet` (what a card records)."""
        return RowSet.of(h for h, r in zip(self.hashes, self.roles) if r in roles)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images and fakes per role."""
        out = {r: {"n": 0, "n_fake": 0} for r in ROLES}
        for r, y in zip(self.roles, self.labels):
            out[r]["n"] += 1
            out[r]["n_fake"] += int(y)
        return out

    def summary(self) -> dict[str, object]:
        """What a card records about the plan (the plan itself is saved beside it)."""
        return {"id": self.id, "seed": self.seed, "k": self.k, "n_images": self.n_images, "n_groups": self.n_groups,
                "near_dup_bits": self.near_dup_bits, "label_conflicts": len(self.conflicts),
                "roles": self.counts()}

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> SplitPlan:
        plan = cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
        if plan.content_digest() != plan.id:
            raise ValueError(f"{path}: split plan was edited (its id does not match its contents)")
        return plan


def derived_rows(derived: pd.DataFrame | None, df: pd.DataFrame) -> pd.DataFrame:
    """Training-only images made from images of ``df`` (columns ``path``, ``sha256``, ``label`` and ``derived_from``:
    the sha256 of the source, e.g. a content-aligned autoencoder round trip of a crop of it). A model that fits on the
    source may fit on them too, and no other: so none trains on a copy of an image it is scored on. Images derived
    from anything else (a final group, a skipped file) are dropped."""
    import pandas as pd

    if derived is None:
        return pd.DataFrame(columns=["path", "sha256", "label", "derived_from"])
    missing = {"path", "sha256", "label", "derived_from"} - set(derived.columns)
    if missing:
        raise ValueError(f"derived images need columns {sorted(missing)}")
    if derived["sha256"].isin(df["sha256"]).any():
        raise ValueError("a derived image is also an image of the data: derived images are training-only")
    return derived[derived["derived_from"].isin(df["sha256"])].drop_duplicates("sha256").reset_index(drop=True)
