"""The on-disk feature store: content-addressed, verified, and safe under crashes and concurrent writers.

One folder per *store key* (:func:`store_key`): the backbone identity plus everything else that changes a feature
(library versions, storage dtype, device class). Inside it::

    meta.json            the full identity, embed and layer dims (atomic)
    lock                 fcntl.flock'ed around every change to the set of shards
    shards/<name>/       pooled.npy, layer_XX.npy (float16), keys.txt, shard.json (written last)
    quarantine/<name>/   shards found damaged, kept for inspection (safe to delete)

Keys are ``"<sha256>:<view>"``. A shard is written under a per-writer temporary name (``.tmp-<name>-<pid>@<host>``)
and renamed into place, so readers only ever see complete shards; a temporary folder is removed only when its
writer is dead (or it is older than :data:`STALE_TEMP_S`), so two processes can extract into one store at once.

Damage is detected, named and repaired, never fatal. Opening checks every shard cheaply (``shard.json`` readable,
each array present with the recorded size and shape, ``keys.txt`` with the recorded row count and checksum) without
reading arrays. Array checksums are verified lazily, once per shard and instance, the first time a shard is read
(:meth:`FeatureStore.load`, and :func:`synthdet.features.extract.extract` before it decides what is missing), or for every
shard by :meth:`FeatureStore.verify`. A damaged shard is logged, recorded in :attr:`FeatureStore.problems` and moved
to ``quarantine/``; its keys become missing, so the next extraction recomputes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from synthdet.io.atomic import write_text
from synthdet.io.files import default_cache_dir, sha256_file

if TYPE_CHECKING:
    import torch

    from synthdet.backbones.base import Backbone

log = logging.getLogger(__name__)

FEATURE_DTYPE = "float16"
#: A temporary shard folder older than this is removed even if a process with its writer's pid still runs (pid
#: reuse, or a writer on another host sharing the cache). Writing one shard takes seconds.
STALE_TEMP_S = 3600.0
_SHARD_FORMAT = 1
_TMP_RE = re.compile(r"^\.tmp-[0-9a-f]+-[0-9a-f]+-(\d+)@(.+)$")


def _major_minor(dist: str) -> str:
    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"
    return ".".join(version.split("+")[0].split(".")[:2])


def store_identity(backbone: Backbone, device: str | torch.device | None = None) -> dict[str, str]:
    """Everything that changes a stored feature, as strings.

    ``backbone`` is its :attr:`~synthdet.backbones.base.Backbone.id` (name, weights, preprocessing); torch, timm and
    Pillow enter as major.minor (kernels and resampling change between releases, not patch to patch); ``dtype`` is
    the storage dtype; ``device`` is the device *type* (``forward_batches`` runs CUDA under bf16 autocast, so cuda
    features differ from cpu ones; the device index does not matter). ``device`` defaults to the backbone's.
    """
    dev = str(device).split(":")[0] if device is not None else backbone.device.type
    return {
        "backbone": backbone.id,
        "torch": _major_minor("torch"),
        "timm": _major_minor("timm"),
        "pillow": _major_minor("pillow"),
        "dtype": FEATURE_DTYPE,
        "device": dev,
    }


def store_key(identity: Mapping[str, str]) -> str:
    """The folder name of a store: the backbone id, then every other component of ``identity`` as ``k=v``.

    Every component appears in the name, so changing any one of them gives another folder.
    """
    rest = ",".join(f"{k}={v}" for k, v in sorted(identity.items()) if k != "backbone")
    return f"{identity['backbone']}__{rest}"


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through (``np.save`` accepts any ``.write``)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def _sync(f: IO[Any]) -> None:
    """Flush a file written inside a shard's temp folder to disk before the folder is renamed into place."""
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class FeatureStore:
    """Append-only, verified, crash- and concurrency-safe store of pooled and per-layer features for one identity.

    ``key`` names the folder under ``root``; :meth:`for_backbone` derives it from :func:`store_identity`.
    ``problems`` lists every damaged shard this instance found (also logged as warnings).
    """

    def __init__(
        self, root: str | Path, key: str, *, embed_dim: int, layer_dims: Sequence[int] = (),
        identity: Mapping[str, str] | None = None,
    ) -> None:
        self.dir = Path(root) / key
        self.shards_dir = self.dir / "shards"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        self.embed_dim = int(embed_dim)
        self.layer_dims = [int(d) for d in layer_dims]
        self.identity = dict(identity or {})
        self.problems: list[str] = []
        self._lock_depth = 0
        self._shards: dict[str, list[str]] = {}  # shard name → its keys, row order
        self._index: dict[str, tuple[str, int]] = {}
        self._verified: set[str] = set()
        self._mmaps: dict[tuple[str, str], np.ndarray] = {}
        meta = {"key": key, "identity": self.identity, "embed_dim": self.embed_dim, "layer_dims": self.layer_dims}
        meta_path = self.dir / "meta.json"
        with self._locked():
            if meta_path.exists():
                old = json.loads(meta_path.read_text(encoding="utf-8"))
                if old != meta:
                    raise ValueError(f"{self.dir}: store holds {old}, asked for {meta}")
            else:
                write_text(meta_path, json.dumps(meta, indent=1) + "\n")
            self._remove_leftovers()
        self._scan()

    @classmethod
    def for_backbone(
        cls, backbone: Backbone, root: str | Path | None = None, *, device: str | torch.device | None = None,
    ) -> FeatureStore:
        """The store of ``backbone``'s features computed on ``device`` (default: its current one; an engine that runs
        copies elsewhere, such as Ray's actors, names theirs) under ``root`` (default :func:`default_cache_dir`), in
        the folder :func:`store_key` names and with :func:`store_identity` in ``meta.json``."""
        identity = store_identity(backbone, device)
        return cls(root or default_cache_dir(), store_key(identity), embed_dim=backbone.embed_dim,
                   layer_dims=backbone.layer_dims, identity=identity)

    # ------------------------------------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``<store>/lock`` across processes; re-entrant within this instance."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remove_leftovers(self) -> None:
        """Under the lock: remove temp shards of dead writers (or stale ones) and shards a compact left behind."""
        host = socket.gethostname()
        now = time.time()
        for p in self.shards_dir.iterdir():
            if p.name.startswith(".dead-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".tmp-"):
                m = _TMP_RE.match(p.name)
                try:
                    age = now - p.stat().st_mtime
                except FileNotFoundError:
                    continue
                dead = m is not None and m.group(2) == host and not _pid_alive(int(m.group(1)))
                if dead or age > STALE_TEMP_S:
                    shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ shards

    def _array_names(self) -> dict[str, int]:
        return {"pooled": self.embed_dim, **{f"layer_{i:02d}": d for i, d in enumerate(self.layer_dims)}}

    def _check(self, name: str, *, full: bool) -> tuple[str | None, list[str]]:
        """``(problem or None, keys)`` for one shard; ``full`` also hashes every array."""
        d = self.shards_dir / name
        try:
            man = json.loads((d / "shard.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "has no shard.json (incomplete or foreign)", []
        except (OSError, ValueError) as e:
            return f"has an unreadable shard.json ({type(e).__name__}: {e})", []
        try:
            raw = (d / "keys.txt").read_bytes()
        except FileNotFoundError:
            return "has no keys.txt", []
        try:
            return self._check_against(d, man, raw, full=full)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            return f"has an inconsistent shard.json ({type(e).__name__}: {e})", []

    def _check_against(self, d: Path, man: dict, raw_keys: bytes, *, full: bool) -> tuple[str | None, list[str]]:
        rows, arrays = int(man["rows"]), man["arrays"]
        keys = raw_keys.decode("utf-8", errors="replace").split()
        if len(keys) != rows or hashlib.sha256(raw_keys).hexdigest() != man["keys_sha256"]:
            return f"keys.txt does not match shard.json ({len(keys)} keys, {rows} rows recorded)", []
        expected = self._array_names()
        if set(arrays) != set(expected):
            return f"holds arrays {sorted(arrays)}, expected {sorted(expected)}", []
        for what, dim in expected.items():
            rec, path = arrays[what], d / f"{what}.npy"
            if rec["shape"] != [rows, dim] or rec["dtype"] != FEATURE_DTYPE:
                return f"{what}.npy is recorded as {rec['shape']} {rec['dtype']}, expected [{rows}, {dim}]", []
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return f"has no {what}.npy", []
            if size != rec["bytes"]:
                return f"{what}.npy has {size} bytes, shard.json records {rec['bytes']} (truncated?)", []
            if full and sha256_file(path) != rec["sha256"]:
                return f"{what}.npy fails its sha256 checksum (edited or corrupted)", []
        return None, keys

    def _rebuild_index(self) -> None:
        """First copy wins, in shard-name order (names start with their creation time)."""
        self._index = {}
        for name in sorted(self._shards):
            for row, key in enumerate(self._shards[name]):
                self._index.setdefault(key, (name, row))

    def _forget(self, names: Sequence[str]) -> None:
        for name in names:
            self._shards.pop(name, None)
            self._verified.discard(name)
            for what in self._array_names():
                self._mmaps.pop((name, what), None)
        self._rebuild_index()

    def _quarantine(self, name: str, *, full: bool) -> None:
        """Move a damaged shard aside, under the lock, after checking it again: it may have been compacted away."""
        with self._locked():
            d = self.shards_dir / name
            again, keys = self._check(name, full=full) if d.is_dir() else (None, [])
            if again is None and keys:  # a concurrent change, not damage
                self._shards[name] = keys
                self._rebuild_index()
                return
            if d.is_dir():
                dest = self.dir / "quarantine" / name
                dest.parent.mkdir(exist_ok=True)
                if dest.exists():
                    dest = dest.with_name(f"{name}-{uuid.uuid4().hex[:8]}")
                d.rename(dest)
                msg = f"{self.dir.name}: shard {name} {again}; moved to {dest}, its keys will be recomputed"
                log.warning(msg)
                self.problems.append(msg)
        self._forget([name])

    def _scan(self) -> None:
        """Pick up shards written since the last scan (also by other processes), drop vanished ones."""
        on_disk = {p.name for p in self.shards_dir.iterdir() if not p.name.startswith(".")}
        gone = [n for n in self._shards if n not in on_disk]
        new = sorted(on_disk - set(self._shards))
        for name in new:
            problem, keys = self._check(name, full=False)
            if problem is None:
                self._shards[name] = keys
            else:
                self._quarantine(name, full=False)
        if new or gone:
            self._forget(gone)  # and re-index: a new shard may sort before known ones

    def verify(self, keys: Sequence[str] | None = None) -> list[str]:
        """Hash the arrays of every shard holding ``keys`` (all shards when None) against its ``shard.json``.

        Each shard is hashed once per instance; damaged ones are quarantined and their keys become missing.
        Returns the problems found by this call.
        """
        before = len(self.problems)
        if keys is None:
            self._scan()
            names = set(self._shards)
        else:
            self.missing(keys)  # a miss rescans: shards written by other processes since the last look
            names = {self._index[k][0] for k in keys if k in self._index}
        for name in sorted(names - self._verified):
            problem, _ = self._check(name, full=True)
            if problem is None:
                self._verified.add(name)
            else:
                self._quarantine(name, full=True)
        return self.problems[before:]

    # ------------------------------------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Keys not stored; on a miss, shards written by other processes since the last look are picked up first."""
        absent = [k for k in keys if k not in self._index]
        if absent:
            self._scan()
            absent = [k for k in absent if k not in self._index]
        return absent

    def _array(self, shard: str, what: str) -> np.ndarray:
        key = (shard, what)
        if key not in self._mmaps:
            self._mmaps[key] = np.load(self.shards_dir / shard / f"{what}.npy", mmap_mode="r")
        return self._mmaps[key]

    def _gather(self, keys: Sequence[str], what: str) -> np.ndarray:
        dim = self._array_names()[what]
        out = np.empty((len(keys), dim), dtype=np.float16)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, k in enumerate(keys):
            shard, row = self._index[k]
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            dst, rows = zip(*pairs)
            out[list(dst)] = self._array(shard, what)[list(rows)]
        return out

    def load(self, keys: Sequence[str], *, layers: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled features ``[N, D]`` (float16) and, if asked, one ``[N, D_l]`` array per layer.

        The shards read are checksum-verified first (once per instance); a damaged one is quarantined and its keys
        reported missing. A shard compacted away by another process meanwhile is looked up again.
        """
        for _ in range(3):
            self.verify(keys)  # rescans on a miss, then hashes the shards about to be read
            absent = [k for k in keys if k not in self._index]
            if absent:
                break
            try:
                pooled = self._gather(keys, "pooled")
                per_layer = [self._gather(keys, f"layer_{i:02d}") for i in range(len(self.layer_dims))] if layers else []
                return pooled, per_layer
            except FileNotFoundError:  # removed by a concurrent compact(): rescan and retry
                self._forget(list(self._shards))
                self._scan()
        else:
            raise RuntimeError(f"{self.dir}: shards keep vanishing while reading (concurrent compact?)")
        why = f"; damaged shards: {'; '.join(self.problems)}" if self.problems else ""
        raise KeyError(f"{len(absent)} keys not in {self.dir} (first: {absent[0]}); run `synthdet extract`{why}")

    # ------------------------------------------------------------------------------------------------ writing

    def append(self, keys: Sequence[str], pooled: np.ndarray, layers: Sequence[np.ndarray] | None = None) -> None:
        """Write one shard: arrays and ``keys.txt`` into a per-writer temp folder, ``shard.json`` (row count, per-array
        sha256/size/shape/dtype) last, then rename it into place under the lock."""
        if not keys:
            return
        if pooled.shape != (len(keys), self.embed_dim):
            raise ValueError(f"pooled has shape {pooled.shape}, expected ({len(keys)}, {self.embed_dim})")
        if self.layer_dims and (layers is None or len(layers) != len(self.layer_dims)):
            raise ValueError(f"expected {len(self.layer_dims)} layer arrays")
        arrays = {"pooled": pooled, **{f"layer_{i:02d}": a for i, a in zip(range(len(self.layer_dims)), layers or [])}}
        for what, dim in self._array_names().items():
            if arrays[what].shape != (len(keys), dim):
                raise ValueError(f"{what} has shape {arrays[what].shape}, expected ({len(keys)}, {dim})")
        name = f"{time.time_ns():016x}-{uuid.uuid4().hex[:12]}"
        tmp = self.shards_dir / f".tmp-{name}-{os.getpid()}@{socket.gethostname()}"
        tmp.mkdir()
        try:
            records = {}
            for what, arr in arrays.items():
                arr16 = np.ascontiguousarray(arr, dtype=np.float16)
                with open(tmp / f"{what}.npy", "wb") as f:  # the folder's rename makes the shard appear whole
                    w = _HashingWriter(f)
                    np.save(w, arr16)  # type: ignore[arg-type]
                    _sync(f)
                records[what] = {"sha256": w.sha.hexdigest(), "bytes": w.size, "shape": list(arr16.shape),
                                 "dtype": FEATURE_DTYPE}
            raw_keys = "\n".join(keys).encode("utf-8")
            with open(tmp / "keys.txt", "wb") as f:
                f.write(raw_keys)
                _sync(f)
            manifest = {"format": _SHARD_FORMAT, "rows": len(keys), "keys_sha256": hashlib.sha256(raw_keys).hexdigest(),
                        "arrays": records}
            with open(tmp / "shard.json", "w", encoding="utf-8") as f:  # last: it vouches for the rest
                f.write(json.dumps(manifest, indent=1) + "\n")
                _sync(f)
            with self._locked():
                tmp.rename(self.shards_dir / name)
                _fsync_dir(self.shards_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._shards[name] = list(keys)
        self._verified.add(name)
        for row, key in enumerate(keys):
            self._index.setdefault(key, (name, row))

    def compact(self) -> None:
        """Merge all shards into one (fewer files to open), holding the lock throughout.

        Crash-safe: the merged shard is complete before the old ones are renamed to ``.dead-*`` and removed, and a
        duplicate key resolves to one copy; leftover ``.dead-*`` folders are removed on the next open.
        """
        with self._locked():
            self.verify()  # never vouch for damaged rows with a fresh checksum
            names = sorted(self._shards)
            if len(names) < 2:
                return
            keys = list(self._index)
            pooled, layers = self.load(keys, layers=bool(self.layer_dims))
            self.append(keys, pooled, layers or None)
            for name in names:
                (self.shards_dir / name).rename(self.shards_dir / f".dead-{name}")
            _fsync_dir(self.shards_dir)
            for name in names:
                shutil.rmtree(self.shards_dir / f".dead-{name}", ignore_errors=True)
            self._forget(names)
