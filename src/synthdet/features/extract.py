"""Extract features once; train heads on cached tensors in seconds.

Features go to a :class:`~synthdet.features.store.FeatureStore` (content-addressed, verified, safe under ``kill -9`` and
concurrent writers; see :mod:`synthdet.features.store`), keyed ``"<sha256>:<view>"``. A rerun computes only the missing keys.
The sha256 is checked against the bytes actually decoded, so a file changed since it was indexed is never stored
under its old hash.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synthdet.backbones.base import Backbone
from synthdet.features.store import FeatureStore, store_identity, store_key
from synthdet.io.files import default_cache_dir
from synthdet.io.pixels import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageTransform,
    Preprocess,
    load_image,
    read_file,
    reduce_to,
)
from synthdet.io.workers import num_workers_default, usable_cpus
from synthdet.vocabulary import FeatureKind

__all__ = [
    "ExtractResult", "FeatureBatch", "FeatureKind", "FeatureStore", "ForwardOptions", "ImageTransform", "Skipped",
    "assemble_features", "default_cache_dir", "extract", "forward_batches", "view_features",
    "forward_by_shape", "forward_files", "num_workers_default",
    "store_identity", "store_key",
]


@dataclass
class Skipped:
    path: str
    reason: str






def assemble_features(pooled: np.ndarray | torch.Tensor, layers: list, kind: FeatureKind) -> np.ndarray:
    """The head's input: pooled features, or pooled and every layer tap concatenated (multi-scale evidence)."""
    parts = [pooled, *layers] if kind == "concat" else [pooled]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1)


Item = tuple[str, str, Sequence[int]]
"""``(path, key, views)``: a file, the key its features are stored under (its sha256, or the path when nothing is
stored), and the views still wanted of it."""


FeatureBatch = tuple[list[tuple[int, int]], torch.Tensor, list[torch.Tensor], list[tuple[int, str]]]
"""``(item_view_pairs, pooled, layers, errors)``: what :func:`forward_batches` (and every engine's feature pass) yields."""


class ForwardOptions(TypedDict, total=False):
    """:func:`forward_batches`' keyword options, named once for the engines that pass them through
    (:meth:`synthdet.engines.base.Engine.features`)."""

    batch_size: int | None
    num_workers: int | None
    max_pixels: int
    desc: str
    progress: bool
    transform: ImageTransform | None
    verify_sha: bool
    views_per_item: int | None


class ViewsDecoder(Dataset):
    """Decodes the items the sampler hands it, ``(stream position, item)``, into the stacked tensors of their views
    (decoded once). The items travel with the indices, so the listing is never held whole, in the parent or in a
    worker, and one worker pool serves a stream of any length. Ray's decoding tasks use it too (the same pixels).

    With ``verify_sha`` an item's key is the sha256 its features will be stored under; a file whose bytes no longer
    hash to it is refused (``changed-since-indexed``) rather than stored under a stale key.
    """

    def __init__(
        self, preprocess: Preprocess, max_pixels: int, transform: ImageTransform | None = None, verify_sha: bool = False,
    ) -> None:
        self.pre = preprocess
        self.max_pixels = max_pixels
        self.transform = transform
        self.verify_sha = verify_sha

    def __getitem__(self, index: tuple[int, Item]) -> tuple[int, list[torch.Tensor] | None, str, Sequence[int]]:
        i, (path, sha, views) = index
        try:
            data = read_file(path)
            if self.verify_sha and (actual := hashlib.sha256(data).hexdigest()) != sha:
                return i, None, f"changed-since-indexed: manifest sha {sha[:16]}… file sha {actual[:16]}…", views
            if self.transform is not None:  # a slice must see the image as stored: no reduction before it
                img = self.transform(load_image(data, max_pixels=self.max_pixels), sha)
                return i, [self.pre(img, view=v, key=sha) for v in views], "", views
            # one full decode serves every view: view 0 is reduced for inference (the same reduction as at scoring
            # time, so cached and fresh features agree); training views (smaller crops) keep more pixels, and native
            # views (windows at the image's own scale) all of them
            full = load_image(data, max_pixels=self.max_pixels)
            img = reduce_to(full, self.pre.canonical_draft_size)
            fine = reduce_to(full, self.pre.draft_size) if any(views) else img
            return i, [self.pre(img if v == 0 else full if self.pre.is_native_view(v, sha) else fine, view=v, key=sha)
                       for v in views], "", views
        except ImageLoadError as e:
            return i, None, e.reason + (f": {e.detail}" if e.detail else ""), views


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


def intra_op_threads(workers: int) -> int:
    """Threads for the network on CPU while ``workers`` decoding processes run: the cores they leave (at least one,
    at most what torch has). Intra-op threads that share the workers' cores spin-wait (measured on 2 cores with 2
    workers: 3.4 images/s with 2 threads, 6.2 with 1)."""
    return max(1, min(torch.get_num_threads(), usable_cpus() - workers))


def batch_size_default(device: torch.device) -> int:
    """Images per forward pass: small on CPU (measured: per-image cost of EfficientNet-Lite grows beyond batch 8
    as activations fall out of cache), large on CUDA."""
    return 64 if device.type == "cuda" else 8


@torch.inference_mode()
def forward_batches(
    backbone: Backbone,
    items: Iterable[Item],
    *,
    taps: bool,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    desc: str = "extract",
    progress: bool = False,
    transform: ImageTransform | None = None,
    verify_sha: bool = False,
    views_per_item: int | None = None,
) -> Iterator[FeatureBatch]:
    """Stream ``(item_view_pairs, pooled, layers, errors)`` over items, with bounded memory.

    ``items`` may be a list or a lazy stream of any length (indices are positions in it): one pool of DataLoader
    workers decodes while the network runs, for the whole stream, and only the items in flight are held. Each
    yielded batch covers the next items in order, every item once, in ``item_view_pairs`` or in ``errors``
    (``(item index, reason)``: a file that cannot be decoded never stops the run). The network sees batches of
    about ``batch_size`` views (``views_per_item``: how many views an item has, by default the most any item of a
    list has, else 1). CUDA: batches are stacked into pinned memory and copied without blocking, under bf16
    autocast; CNN backbones run ``channels_last`` (:class:`~synthdet.backbones.base.Backbone`).
    ``transform`` alters decoded pixels first (robustness slices); there is then no reduced decode, so the slice sees
    the image as stored. ``verify_sha``: each item's second field is the file's sha256; a file whose bytes no longer
    match comes back as an error (``changed-since-indexed``).
    """
    workers = num_workers_default() if num_workers is None else num_workers
    batch_size = batch_size or batch_size_default(backbone.device)
    total = len(items) if isinstance(items, Sequence) else None  # a lazy stream has no length
    if views_per_item is None:
        views_per_item = max((len(v) for _, _, v in items), default=1) if total is not None else 1
    per_forward = max(1, batch_size // max(1, views_per_item))
    loader = DataLoader(  # small loader batches keep every worker busy; the network still sees ``batch_size``
        ViewsDecoder(backbone.preprocess, max_pixels, transform, verify_sha),
        sampler=enumerate(items),  # type: ignore[arg-type]  # pulled lazily, as workers need more
        batch_size=max(1, min(4, per_forward)),
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    bar = tqdm(total=total, desc=desc, unit="img", disable=None if progress else True)
    threads = torch.get_num_threads()
    if workers and backbone.device.type == "cpu":
        torch.set_num_threads(intra_op_threads(workers))
    try:
        yield from _forward_loop(backbone, loader, per_forward, taps, bar)
    finally:
        torch.set_num_threads(threads)
        bar.close()


def _forward_loop(
    backbone: Backbone, loader: DataLoader, per_forward: int, taps: bool, bar: Any,
) -> Iterator[FeatureBatch]:
    for batch in _regroup(loader, per_forward):
        pairs: list[tuple[int, int]] = []
        tensors: list[torch.Tensor] = []
        errors: list[tuple[int, str]] = []
        for i, t, err, views in batch:
            if t is None:
                errors.append((i, err))
                continue
            pairs.extend((i, v) for v in views)
            tensors.extend(t)
        pooled, layers = torch.empty(0), list[torch.Tensor]()
        if tensors:
            pooled, layers = forward_by_shape(backbone, tensors, taps=taps)
        bar.update(len(batch))
        yield pairs, pooled, layers, errors


def forward_files(
    backbone: Backbone, paths: Iterable[str | Path], *, taps: bool, **kw: Any
) -> Iterator[tuple[list[str], list[int], torch.Tensor, list[torch.Tensor], dict[int, str]]]:
    """:func:`forward_batches` over a stream of files (view 0 each), batch by batch in input order:
    ``(paths, rows, pooled, layers, errors)``, where ``rows`` are the positions in ``paths`` that were decoded (the
    rows of ``pooled``/``layers``) and ``errors`` maps the others to why. ``kw`` as :func:`forward_batches`."""
    pending: dict[int, str] = {}  # stream position -> path, for the files handed to the workers and not yet back

    def items() -> Iterator[Item]:
        for i, p in enumerate(paths):
            pending[i] = str(p)
            yield pending[i], pending[i], [0]

    for pairs, pooled, layers, errs in forward_batches(backbone, items(), taps=taps, **kw):
        errors = dict(errs)
        order = sorted([*(i for i, _ in pairs), *errors])  # a batch is the next files of the stream
        where = {i: j for j, i in enumerate(order)}
        yield ([pending.pop(i) for i in order], [where[i] for i, _ in pairs], pooled, layers,
               {where[i]: reason for i, reason in errors.items()})


def forward_by_shape(
    backbone: Backbone, tensors: list[torch.Tensor], *, taps: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward pass per input size, results back in input order: at native scale (``Preprocess.scale``) images
    smaller than the model size keep their own size, and a fully convolutional backbone pools any size alike. Every
    inference path comes through here (local, Ray actors, ``assess``): CUDA runs under bf16 autocast."""
    if isinstance(backbone, Backbone):  # not an exported graph: fold its BatchNorm once, if frozen
        backbone.fold_batchnorm()
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for j, t in enumerate(tensors):
        by_shape.setdefault(tuple(t.shape), []).append(j)
    pooled = torch.empty(len(tensors), backbone.embed_dim)
    layers = [torch.empty(len(tensors), d) for d in backbone.layer_dims] if taps else []
    cuda = backbone.device.type == "cuda"
    for shape, idx in by_shape.items():
        # CUDA: stacked straight into pinned memory, so the copy to the device does not block the host
        x = torch.stack([tensors[j] for j in idx], out=torch.empty((len(idx), *shape), pin_memory=cuda))
        x = x.to(backbone.device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            p, ls = backbone(x, taps=taps)
        pooled[idx] = p.float().cpu()
        for out, part in zip(layers, ls):
            out[idx] = part.float().cpu()
    return pooled, layers


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
    forward: Callable[..., Iterator[FeatureBatch]] | None = None,
) -> ExtractResult:
    """Compute the features of every (image, view) pair not yet in ``store``.

    Layer taps are always stored (they cost a pooling per block), so layer-wise heads never need a re-extraction.
    Results are flushed to a new shard every ``flush_every`` views, so a killed run loses at most that much work.
    ``shas`` are the files' sha256 as indexed; each file is hashed again as it is decoded and skipped
    (``changed-since-indexed``) if it no longer matches. The shards holding cached keys are checksum-verified first,
    so damaged ones are recomputed (see ``store.problems``). Other processes may extract into the same store at once.
    ``forward``: another engine's feature pass with :func:`forward_batches`' contract (an engine's
    :meth:`~synthdet.engines.base.Engine.features`; its store: :meth:`~synthdet.engines.base.Engine.store`).
    """
    result = ExtractResult()
    firsts: dict[str, str] = {}
    for path, sha in zip(paths, shas):
        firsts.setdefault(sha, path)
    wanted = [f"{sha}:{v}" for sha in firsts for v in views]
    store.verify(wanted)  # rescans once on a miss (shards other processes wrote), then checks what it will reuse
    absent = {k for k in wanted if k not in store}  # the index is current now: no second scan of the shard folder
    todo: list[tuple[str, str, list[int]]] = []
    for sha, path in firsts.items():
        missing = [v for v in views if f"{sha}:{v}" in absent]
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
            buf_keys.clear()
            buf_pooled.clear()
            buf_layers.clear()

    for pairs, pooled, layers, errors in (forward or forward_batches)(
        backbone, todo, taps=taps, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels,
        progress=progress, verify_sha=True,
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


def view_features(bb: Backbone, files: Sequence[str], shas: Sequence[str], name: str,
                  transform: ImageTransform | None, features: FeatureKind, *, tag: str = "",
                  cache_dir: str | Path | None = None, batch_size: int | None = None, num_workers: int | None = None,
                  progress: bool = False) -> np.ndarray:
    """The head's input for every file shown as view ``name`` (view 0 of ``transform``'s pixels; ``None``: the file
    as scoring sees it), cached under ``<sha256>:<name><tag>`` in the store of ``bb``'s canonical chain
    (training-view settings do not change view 0, so recipes that differ only in their training views share these);
    rows of files that fail are NaN."""
    canonical = copy.copy(bb)  # shares the network; only the preprocessing identity differs
    canonical.preprocess = bb.preprocess.model_copy(
        update={"views": bb.preprocess.views.model_copy(update={"p_native": 0.0})})
    store = FeatureStore.for_backbone(canonical, cache_dir)
    keys = [f"{sha}:{name}{tag}" for sha in shas]
    store.verify(keys)
    todo = [i for i, k in enumerate(keys) if k not in store]
    batches = forward_files(bb, [files[i] for i in todo], taps=bool(store.layer_dims), transform=transform,
                            batch_size=batch_size, num_workers=num_workers, desc=name, progress=bool(todo) and progress)
    start = 0
    for batch, ok, pooled, layers, _ in batches:
        if ok:
            store.append([keys[todo[start + j]] for j in ok], pooled.numpy(), [t.numpy() for t in layers] or None)
        start += len(batch)
    done = [i for i, k in enumerate(keys) if k in store]
    if not done:
        return np.full((len(keys), 1), np.nan, dtype=np.float32)
    pooled_all, layers_all = store.load([keys[i] for i in done], layers=features == "concat")
    x = assemble_features(pooled_all, layers_all, features)
    out = np.full((len(keys), x.shape[1]), np.nan, dtype=np.float32)
    out[done] = x
    return out
