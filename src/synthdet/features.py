"""Extract features once; train heads on cached tensors in seconds.

:class:`FeatureStore` is content-addressed: one folder per backbone identity (name + weights + preprocessing), keys
``"<sha256>:<view>"``. Features are float16 ``.npy`` shards, each written to a temporary folder and renamed into
place, so a run killed at any instant leaves only complete shards (plus a temp folder that the next open removes),
and a rerun computes only the missing keys. Shards are read back memory-mapped.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbones import Backbone
from .pixels import DEFAULT_MAX_PIXELS, ImageLoadError, load_image


def default_cache_dir() -> Path:
    return Path(os.environ.get("SYNTHDET_CACHE", Path.home() / ".cache" / "synthdet")) / "features"


def _fsync_write(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())


class FeatureStore:
    """Append-only, crash-safe store of pooled and per-layer features for one backbone identity."""

    def __init__(self, root: str | Path, backbone_id: str, *, embed_dim: int, layer_dims: Sequence[int] = ()) -> None:
        self.dir = Path(root) / backbone_id
        self.shards_dir = self.dir / "shards"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        meta = {"backbone_id": backbone_id, "embed_dim": int(embed_dim), "layer_dims": [int(d) for d in layer_dims]}
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if old != meta:
                raise ValueError(f"{self.dir}: store holds {old}, asked for {meta}")
        else:
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta))
            tmp.replace(meta_path)
        self.embed_dim = int(embed_dim)
        self.layer_dims = list(meta["layer_dims"])
        for stale in self.shards_dir.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self._index: dict[str, tuple[str, int]] = {}
        self._mmaps: dict[tuple[str, str], np.ndarray] = {}
        for shard in sorted(p for p in self.shards_dir.iterdir() if not p.name.startswith(".")):
            self._index_shard(shard.name)

    @classmethod
    def for_backbone(cls, backbone: Backbone, root: str | Path | None = None) -> FeatureStore:
        return cls(root or default_cache_dir(), backbone.id, embed_dim=backbone.embed_dim, layer_dims=backbone.layer_dims)

    def _index_shard(self, name: str) -> None:
        keys = (self.shards_dir / name / "keys.txt").read_text().split()
        for row, key in enumerate(keys):
            self._index.setdefault(key, (name, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self._index]

    def append(self, keys: Sequence[str], pooled: np.ndarray, layers: Sequence[np.ndarray] | None = None) -> None:
        if not keys:
            return
        if pooled.shape != (len(keys), self.embed_dim):
            raise ValueError(f"pooled has shape {pooled.shape}, expected ({len(keys)}, {self.embed_dim})")
        name = uuid.uuid4().hex
        tmp = self.shards_dir / f".tmp-{name}"
        tmp.mkdir()
        _fsync_write(tmp / "pooled.npy", pooled.astype(np.float16))
        if self.layer_dims:
            if layers is None or len(layers) != len(self.layer_dims):
                raise ValueError(f"expected {len(self.layer_dims)} layer arrays")
            for i, arr in enumerate(layers):
                _fsync_write(tmp / f"layer_{i:02d}.npy", arr.astype(np.float16))
        with open(tmp / "keys.txt", "w") as f:  # written last: a shard without keys is never indexed
            f.write("\n".join(keys))
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(self.shards_dir / name)
        self._index_shard(name)

    def _array(self, shard: str, what: str) -> np.ndarray:
        key = (shard, what)
        if key not in self._mmaps:
            self._mmaps[key] = np.load(self.shards_dir / shard / f"{what}.npy", mmap_mode="r")
        return self._mmaps[key]

    def _gather(self, keys: Sequence[str], what: str) -> np.ndarray:
        locs = [self._index[k] for k in keys]
        dim = self.embed_dim if what == "pooled" else self.layer_dims[int(what.split("_")[1])]
        out = np.empty((len(keys), dim), dtype=np.float16)
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, (shard, row) in enumerate(locs):
            by_shard.setdefault(shard, []).append((i, row))
        for shard, pairs in by_shard.items():
            dst, rows = zip(*pairs)
            out[list(dst)] = self._array(shard, what)[list(rows)]
        return out

    def load(self, keys: Sequence[str], *, layers: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """Pooled features ``[N, D]`` (float16) and, if asked, one ``[N, D_l]`` array per layer."""
        absent = self.missing(keys)
        if absent:
            raise KeyError(f"{len(absent)} keys not in {self.dir} (first: {absent[0]}); run `synthdet extract`")
        pooled = self._gather(keys, "pooled")
        per_layer = [self._gather(keys, f"layer_{i:02d}") for i in range(len(self.layer_dims))] if layers else []
        return pooled, per_layer

    def compact(self) -> None:
        """Merge all shards into one (fewer files to open); crash-safe because duplicates resolve to one copy."""
        shards = sorted(p.name for p in self.shards_dir.iterdir() if not p.name.startswith("."))
        if len(shards) < 2:
            return
        keys = list(self._index)
        pooled, layers = self.load(keys, layers=bool(self.layer_dims))
        self._mmaps.clear()
        self._index.clear()
        self.append(keys, pooled, layers or None)
        for s in shards:
            shutil.rmtree(self.shards_dir / s, ignore_errors=True)


@dataclass
class Skipped:
    path: str
    reason: str


ImageTransform = Callable[[Image.Image, str], Image.Image]
"""Applied to decoded pixels before preprocessing (e.g. a robustness slice); gets the image and its key."""


class _ViewsDataset(Dataset):
    """One item per image: the stacked tensors of the views still missing for it (decoded once)."""

    def __init__(
        self, items: Sequence[tuple[str, str, Sequence[int]]], backbone: Backbone, max_pixels: int,
        transform: ImageTransform | None = None,
    ) -> None:
        self.items = items
        self.pre = backbone.preprocess
        self.max_pixels = max_pixels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        path, sha, views = self.items[i]
        try:
            if self.transform is not None:  # a slice must see the image as stored: no draft decoding
                img = self.transform(load_image(path, max_pixels=self.max_pixels), sha)
                return i, torch.stack([self.pre(img, view=v, key=sha) for v in views]), ""
            # view 0 always comes from the same decode, so cached and freshly scored features agree; training views
            # (smaller crops) need more pixels, so a large JPEG is decoded a second time at a finer DCT scale
            img = load_image(path, max_pixels=self.max_pixels, draft_size=self.pre.canonical_draft_size)
            fine = img
            if any(views) and img.info.get("draft_scale", 1) > 1:
                fine = load_image(path, max_pixels=self.max_pixels, draft_size=self.pre.draft_size)
            return i, torch.stack([self.pre(img if v == 0 else fine, view=v, key=sha) for v in views]), ""
        except ImageLoadError as e:
            return i, None, e.reason + (f": {e.detail}" if e.detail else "")


def _collate(batch: list) -> list:
    return batch


def _regroup(loader: Iterable[list], size: int) -> Iterator[list]:
    """Concatenate small loader batches into groups of ``size`` items (the last one may be short)."""
    buf: list = []
    for batch in loader:
        buf.extend(batch)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def num_workers_default() -> int:
    return max(0, min(4, (os.cpu_count() or 1)))


def batch_size_default(device: torch.device) -> int:
    """Images per forward pass: small on CPU (measured: per-image cost of EfficientNet-Lite grows beyond batch 8
    as activations fall out of cache), large on CUDA."""
    return 64 if device.type == "cuda" else 8


@torch.inference_mode()
def forward_batches(
    backbone: Backbone,
    items: Sequence[tuple[str, str, Sequence[int]]],
    *,
    taps: bool,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "extract",
    progress: bool = False,
    transform: ImageTransform | None = None,
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, list[torch.Tensor], list[tuple[int, str]]]]:
    """Stream ``(item_view_pairs, pooled, layers, errors)`` over items, with bounded memory.

    Decoding runs in DataLoader workers; the network sees batches of about ``batch_size`` views; CUDA uses bf16
    autocast. Items that fail to decode come back in ``errors`` as ``(item index, reason)`` and never stop the run.
    ``transform`` alters decoded pixels first (robustness slices); draft decoding is then off, so the slice sees
    the image as stored.
    """
    workers = num_workers_default() if num_workers is None else num_workers
    batch_size = batch_size or batch_size_default(backbone.device)
    per_item = max(1, max((len(v) for _, _, v in items), default=1))
    per_forward = max(1, batch_size // per_item)
    loader = DataLoader(  # small loader batches keep every worker busy; the network still sees ``batch_size``
        _ViewsDataset(items, backbone, max_pixels, transform),
        batch_size=max(1, min(4, per_forward)),
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    device = backbone.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
    for batch in _regroup(loader, per_forward):
        pairs: list[tuple[int, int]] = []
        tensors: list[torch.Tensor] = []
        errors: list[tuple[int, str]] = []
        for i, t, err in batch:
            if t is None:
                errors.append((i, err))
                continue
            pairs.extend((i, v) for v in items[i][2])
            tensors.append(t)
        pooled, layers = torch.empty(0), []
        if tensors:
            x = torch.cat(tensors).to(device, non_blocking=True)
            with autocast:
                pooled, layers = backbone(x, taps=taps)
            pooled, layers = pooled.float().cpu(), [t.float().cpu() for t in layers]
        bar.update(len(batch))
        yield pairs, pooled, layers, errors
    bar.close()


@dataclass
class ExtractResult:
    computed: int = 0
    cached: int = 0
    skipped: list[Skipped] = field(default_factory=list)


def extract(
    backbone: Backbone,
    paths: Sequence[str],
    shas: Sequence[str],
    store: FeatureStore,
    *,
    views: Sequence[int] = (0,),
    batch_size: int | None = None,
    num_workers: int | None = None,
    flush_every: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> ExtractResult:
    """Compute the features of every (image, view) pair not yet in ``store``.

    Layer taps are always stored (they cost a pooling per block), so layer-wise heads never need a re-extraction.
    Results are flushed to a new shard every ``flush_every`` views, so a killed run loses at most that much work.
    """
    result = ExtractResult()
    todo: list[tuple[str, str, list[int]]] = []
    seen: set[str] = set()
    for path, sha in zip(paths, shas):
        if sha in seen:
            continue
        seen.add(sha)
        missing = [v for v in views if f"{sha}:{v}" not in store]
        result.cached += len(views) - len(missing)
        if missing:
            todo.append((path, sha, missing))
    if not todo:
        return result
    taps = bool(store.layer_dims)
    buf_keys: list[str] = []
    buf_pooled: list[torch.Tensor] = []
    buf_layers: list[list[torch.Tensor]] = []

    def flush() -> None:
        if buf_keys:
            layers = [torch.cat([b[i] for b in buf_layers]).numpy() for i in range(len(store.layer_dims))] if taps else None
            store.append(list(buf_keys), torch.cat(buf_pooled).numpy(), layers)
            result.computed += len(buf_keys)
            buf_keys.clear(), buf_pooled.clear(), buf_layers.clear()

    for pairs, pooled, layers, errors in forward_batches(
        backbone, todo, taps=taps, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
        progress=progress,
    ):
        result.skipped.extend(Skipped(todo[i][0], reason) for i, reason in errors)
        if pairs:
            buf_keys.extend(f"{todo[i][1]}:{v}" for i, v in pairs)
            buf_pooled.append(pooled)
            buf_layers.append(layers)
        if len(buf_keys) >= flush_every:
            flush()
    flush()
    return result
