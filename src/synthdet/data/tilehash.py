"""Content provenance that survives crops, resizes and re-encodes: tile hashes of the images a model has seen.

A whole-image hash (sha256, dHash) says nothing about a 224-px crop of a training photo. Here every seen image is cut
into :data:`TILE`-px tiles at native scale on two interleaved grids, and each textured tile is kept as a 63-bit sign
hash of the lowest DCT frequencies of its 16×16 cell means (so JPEG and a pixel of misalignment flip few bits) with
its grid position; tiles common to several seen images are dropped. A query is hashed at *every* pixel offset (a
crop's offset is unknown) and at half scale too (a 0.5× copy's 32-px windows are the seen 64-px tiles), so the search
does the work and what a card stores stays two tiles per 64×64 pixels, about 8 bytes each compressed. An image counts
as seen when :data:`MIN_TILES` tiles of one seen image lie within :data:`MAX_BITS` bits of its windows at one
consistent placement — a single similar tile is chance, several in the right layout are a copy. The constants were
chosen on dev → dev2 and are measured by ``benchmarks/provenance_copies.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from synthdet.data.splits import HASH_PREFIX

if TYPE_CHECKING:
    import pandas as pd

#: The file beside a detector's card that holds its seen rows' tiles (recorded in the card's ``files``).
SEEN_TILES = "seen-tiles.npz"
#: Tile side at native scale, and its cells per side (cell means are what is hashed).
TILE, CELLS = 64, 16
#: Stored tiles' grid step (half a tile: two interleaved grids, see :func:`image_tiles`).
STEP = TILE // 2
#: Hash bits within which a query window and a seen tile count as the same content.
MAX_BITS = 6
#: Matched tiles of one seen image, at one placement, that make a query a copy of it.
MIN_TILES = 5
#: Tiles whose DCT coefficients' RMS (grey levels) is below this are flat: their hash is noise, never stored.
MIN_CONTRAST = 5.0
#: Scales at which a query is searched (query pixels per seen pixel): native crops and half-size copies.
SCALES = (1.0, 0.5)
#: A query's search window (px, per side at its own scale): a copy matches anywhere, so a bigger image is searched
#: in its centre only, which bounds the work per image.
QUERY_WINDOW = 256
#: A stored tile like tiles of this many other seen images is a common pattern, not evidence (dropped).
COMMON_OWNERS = 3
#: Placements within this many px (seen scale) of each other are one placement.
PLACE_TOL = 4


def _dct_rows() -> np.ndarray:
    """The 8 lowest DCT-II frequencies over :data:`CELLS` cells, orthonormal: (8, CELLS)."""
    n = np.arange(CELLS)
    d = np.cos(np.pi * (2 * n[None, :] + 1) * np.arange(8)[:, None] / (2 * CELLS)) * np.sqrt(2 / CELLS)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


_D = _dct_rows()
_BITS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def gray(image: Image.Image) -> np.ndarray:
    """Luma as float32 (what is hashed: colour edits and chroma subsampling change little of it)."""
    return np.asarray(image.convert("L"), dtype=np.float32)


def _box_means(g: np.ndarray, cell: int) -> np.ndarray:
    """Mean of every ``cell``×``cell`` box, indexed by its top-left pixel (an integral image)."""
    s = np.pad(g.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return ((s[cell:, cell:] - s[:-cell, cell:] - s[cell:, :-cell] + s[:-cell, :-cell]) / (cell * cell)).astype(
        np.float32)


def _pack(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hash and contrast from (..., 8, 8) DCT coefficients: the signs of the 63 beyond DC, and their RMS."""
    ac = coef.reshape(*coef.shape[:-2], 64)[..., 1:]
    codes = ((ac > 0).astype(np.uint64) * _BITS[:63]).sum(-1, dtype=np.uint64)
    return codes, np.sqrt((ac * ac).mean(-1))


def _dense_hashes(g: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash and contrast (:func:`_pack`) of the tile of 16×16 cells of ``cell`` px at every top-left pixel: the
    8×8 lowest 2-D DCT frequencies of its cell means, computed separably over the whole image at once."""
    means = _box_means(g, cell)
    span = cell * (CELLS - 1)
    h, w = means.shape[0] - span, means.shape[1] - span
    if h <= 0 or w <= 0:
        return np.zeros((0, 0), np.uint64), np.zeros((0, 0), np.float32)
    rows = [sum(_D[v, j] * means[:, j * cell : j * cell + w] for j in range(CELLS)) for v in range(8)]
    coef = np.stack([np.stack([sum(_D[u, i] * rows[v][i * cell : i * cell + h] for i in range(CELLS))
                               for v in range(8)], -1) for u in range(8)], -2)
    return _pack(coef)


def _grid_hashes(g: np.ndarray, cell: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_dense_hashes` at every ``step``-th pixel only (the stored grid), without the dense work."""
    means = _box_means(g, cell)
    span = cell * (CELLS - 1)
    ys, xs = np.arange(0, means.shape[0] - span, step), np.arange(0, means.shape[1] - span, step)
    offs = np.arange(CELLS) * cell
    cells = means[(ys[:, None, None, None] + offs[None, None, :, None]), (xs[None, :, None, None] + offs[None, None, None, :])]
    return _pack(np.einsum("ui,yxij,vj->yxuv", _D, cells, _D, optimize=True))


@dataclass(frozen=True)
class Tiles:
    """The textured tiles of one image: hash, and top-left row and column in :data:`STEP` px."""

    codes: np.ndarray  # uint64
    rows: np.ndarray  # uint16
    cols: np.ndarray  # uint16


def image_tiles(image: Image.Image) -> Tiles:
    """What is stored for one seen image: its textured :data:`TILE`-px tiles at native scale, on two grids (the
    second shifted by half a tile both ways: twice the tiles inside any crop, for twice the space of one grid).
    Positions are in :data:`STEP` px."""
    codes, contrast = _grid_hashes(gray(image), TILE // CELLS, STEP)
    r, c = np.nonzero((contrast >= MIN_CONTRAST) & ((np.add.outer(np.arange(contrast.shape[0]),
                                                                  np.arange(contrast.shape[1])) % 2) == 0))
    return Tiles(codes[r, c], r.astype(np.uint16), c.astype(np.uint16))


def query_windows(image: Image.Image, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hashes of the query's windows within its central :data:`QUERY_WINDOW` (× ``scale``), for seen content at
    ``scale`` query px per seen px: (codes, y, x) with y, x in query pixels, at every pixel offset."""
    g = gray(image)
    h, w = g.shape
    side = round(QUERY_WINDOW * scale)
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    cell = max(1, round(TILE * scale / CELLS))
    codes, contrast = _dense_hashes(g[y0:y0 + side, x0:x0 + side], cell)
    ys, xs = np.nonzero(contrast >= MIN_CONTRAST * 0.75)  # a re-encoded copy loses a little contrast
    return codes[ys, xs], ys + y0, xs + x0


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (numpy 2's ``bitwise_count``; a byte table on numpy 1.26)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x, dtype=np.uint64)
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1)


class TileIndex:
    """Seen images' tiles, searchable by any 16-bit quarter of a hash (a copy's window within :data:`MAX_BITS`
    bits of its tile shares at least one quarter exactly, most of the time)."""

    def __init__(self, codes: np.ndarray, owner: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                 names: Sequence[str]) -> None:
        self.codes, self.owner = codes.astype(np.uint64), owner.astype(np.int64)
        self.rows, self.cols = rows.astype(np.int64), cols.astype(np.int64)
        self.names = list(names)
        self._keys = []
        for q in range(4):
            key = ((self.codes >> np.uint64(16 * q)) & np.uint64(0xFFFF)).astype(np.int64)
            order = np.argsort(key, kind="stable")
            self._keys.append((key[order], order))

    @classmethod
    def build(cls, images: Iterable[tuple[str, str | Path]]) -> TileIndex:
        """The index of seen images given as (name, path); a file that does not decode adds nothing (its exact
        hash is still on the card)."""
        def tiles() -> Iterable[tuple[str, Tiles]]:
            for name, path in images:
                try:
                    with Image.open(path) as im:
                        yield name, image_tiles(im)
                except (OSError, ValueError, Image.DecompressionBombError):
                    continue
        return cls.of(tiles())

    @classmethod
    def of_rows(cls, *parts: pd.DataFrame) -> TileIndex:
        """The index of the images of manifest slices (``sha256``, ``path``; each image once), named by their
        content-hash prefix as the card's rows are."""
        import pandas as pd

        rows = pd.concat([p[["sha256", "path"]] for p in parts]).drop_duplicates("sha256")
        return cls.build(zip(rows["sha256"].astype(str).str[:HASH_PREFIX], rows["path"].astype(str)))

    @classmethod
    def join(cls, parts: Sequence[TileIndex]) -> TileIndex:
        """One index over several (an ensemble's members and its own calibration rows); names stay distinct."""
        names: list[str] = []
        owners = []
        for part in parts:
            owners.append(part.owner + len(names))
            names += part.names
        if not parts:
            return cls.of([])
        return cls(np.concatenate([p.codes for p in parts]), np.concatenate(owners) if owners else np.zeros(0),
                   np.concatenate([p.rows for p in parts]), np.concatenate([p.cols for p in parts]), names)

    def match_paths(self, paths: Iterable[str | Path]) -> list[tuple[str | None, int]]:
        """:meth:`match` per file; (None, 0) for one that does not decode."""
        out: list[tuple[str | None, int]] = []
        for path in paths:
            try:
                with Image.open(path) as im:
                    out.append(self.match(im))
            except (OSError, ValueError, Image.DecompressionBombError):
                out.append((None, 0))
        return out

    @classmethod
    def of(cls, tiles: Iterable[tuple[str, Tiles]]) -> TileIndex:
        names: list[str] = []
        parts: list[tuple[np.ndarray, Tiles]] = []
        for name, t in tiles:
            parts.append((np.full(len(t.codes), len(names)), t))
            names.append(name)
        if not parts:
            empty = np.zeros(0, np.uint64)
            return cls(empty, empty, empty, empty, [])
        full = cls(np.concatenate([t.codes for _, t in parts]), np.concatenate([o for o, _ in parts]),
                   np.concatenate([t.rows for _, t in parts]), np.concatenate([t.cols for _, t in parts]), names)
        return full.distinctive()

    def distinctive(self) -> TileIndex:
        """Without the tiles that look like tiles of :data:`COMMON_OWNERS` other seen images (a sky ramp, a plain
        edge): common patterns are what unrelated images share, so they prove nothing and only cost space. (A tile
        shared with one or two others is kept: an edit's before and after, a photo series.)"""
        others = np.zeros(len(self.codes), np.int64)
        for start in range(0, len(self.codes), 50_000):  # memory: the pairs of one block at a time
            qi, ti = self._pairs(self.codes[start:start + 50_000])
            qi = qi + start
            other = self.owner[qi] != self.owner[ti]
            tile_owner = np.unique(np.stack([qi[other], self.owner[ti][other]], 1), axis=0)
            others += np.bincount(tile_owner[:, 0], minlength=len(self.codes))
        keep = others < COMMON_OWNERS
        return TileIndex(self.codes[keep], self.owner[keep], self.rows[keep], self.cols[keep], self.names)

    def _pairs(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query, tile) index pairs within :data:`MAX_BITS` bits, found through exact 16-bit quarters."""
        qs, ts = [], []
        for q, (keys, order) in enumerate(self._keys):
            key = ((codes >> np.uint64(16 * q)) & np.uint64(0xFFFF)).astype(np.int64)
            lo, hi = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
            n = hi - lo
            qi = np.repeat(np.arange(len(codes)), n)
            start = np.repeat(lo - np.cumsum(n) + n, n)
            ti = order[start + np.arange(len(qi))]
            close = _popcount(codes[qi] ^ self.codes[ti]) <= MAX_BITS
            qs.append(qi[close])
            ts.append(ti[close])
        pair = np.unique(np.concatenate(qs) * np.int64(len(self.codes)) + np.concatenate(ts))  # found twice: once
        return pair // len(self.codes), pair % len(self.codes)

    def match(self, image: Image.Image) -> tuple[str | None, int]:
        """The seen image this one is a copy of (crop, resize, re-encode), and the tiles that agree; (None, best)
        when no seen image has :data:`MIN_TILES` tiles at one placement."""
        best, best_n = -1, 0
        if not len(self.codes):
            return None, 0
        for scale in SCALES:
            codes, ys, xs = query_windows(image, scale)
            if not len(codes):
                continue
            qi, ti = self._pairs(codes)
            if not len(qi):
                continue
            # placement: where the query's origin falls in the seen image (seen px), rounded
            py = np.round((self.rows[ti] * STEP - ys[qi] / scale) / PLACE_TOL).astype(np.int64)
            px = np.round((self.cols[ti] * STEP - xs[qi] / scale) / PLACE_TOL).astype(np.int64)
            # one vote per distinct seen tile per (owner, placement); placements are small: 14 bits each
            place = (self.owner[ti] << 28) | ((py & 0x3FFF) << 14) | (px & 0x3FFF)
            order = np.lexsort((ti, place))
            place, ti = place[order], ti[order]
            distinct = np.r_[True, (np.diff(place) != 0) | (np.diff(ti) != 0)]
            groups, counts = np.unique(place[distinct], return_counts=True)
            k = int(np.argmax(counts))
            if counts[k] > best_n:
                best, best_n = int(groups[k] >> 28), int(counts[k])
        return (self.names[best] if best_n >= MIN_TILES else None), best_n

    # ---------------------------------------------------------------------------------------- storage
    def save(self, path: str | Path) -> Path:
        """A compressed ``.npz``: per tile its hash (8 bytes), owner and position; names once."""
        path = Path(path)
        with path.open("wb") as fh:
            np.savez_compressed(fh, codes=self.codes, owner=self.owner.astype(np.uint32),
                                rows=self.rows.astype(np.uint16), cols=self.cols.astype(np.uint16),
                                names=np.array(self.names))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TileIndex:
        with np.load(path) as z:
            return cls(z["codes"], z["owner"], z["rows"], z["cols"], [str(n) for n in z["names"]])
