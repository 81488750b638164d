"""The Ray Data engine: the local engine's features and scores, spread over a machine's cores or a cluster.

:meth:`RayEngine.features` keeps :func:`~synthdet.features.extract.forward_batches`' contract (the same items in, the
same ``(pairs, pooled, layers, errors)`` out, batches as they finish), so :func:`~synthdet.features.extract.extract`
writes the same store shards with it, and :class:`RayDetector` gives :func:`~synthdet.engines.stream.score_stream` the
rows of :class:`~synthdet.detectors.detector.Detector`, in input order (streaming, parts, resume and merge are shared).
Inside: ``ray.data.from_items`` over a window of items → ``flat_map`` decoding in CPU tasks (the local engine's
decoder, one row per view) → ``map_batches`` with an actor pool, each actor holding its own copy of the backbone
(CPU actors, or one GPU each with ``num_gpus``) → the driver collects the window. Windows (``config.window`` items)
bound the driver's memory whatever the listing's length.

The caller's backbone stays where it is, untouched: the actors get a CPU copy (:func:`actor_copy`) and move it to
their own device, :meth:`RayEngine.device`, which is what a feature store of their features records
(:meth:`~synthdet.engines.base.Engine.store`). ``config.address`` joins a cluster; without one a local Ray starts
(or the running one is used).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import torch

from synthdet.backbones.base import Backbone
from synthdet.detectors.detector import Detector
from synthdet.detectors.loading import load_detector
from synthdet.engines.base import Engine, ScoreRow
from synthdet.extras import require
from synthdet.features.extract import (
    FeatureBatch,
    ForwardOptions,
    Item,
    ViewsDecoder,
    assemble_features,
    batch_size_default,
    forward_by_shape,
)
from synthdet.io.pixels import DEFAULT_MAX_PIXELS


def init_ray(address: str | None = None) -> Any:
    """``ray`` connected to ``address`` (a cluster), or to the running / a new local instance."""
    ray = require("ray", "--engine ray")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False  # the library is quiet; the CLI reports
    return ray


def actor_copy(backbone: Backbone) -> Backbone:
    """A CPU copy of ``backbone`` for the object store; the caller's keeps its device and its tensors (a backbone
    deep-copies into an independent network: :mod:`synthdet.backbones.base`)."""
    return copy.deepcopy(backbone).cpu()


class _Forward:
    """An actor: its own backbone on ``device``, run on batches of decoded views (``x``; failed rows pass through
    with ``err``)."""

    def __init__(self, backbone_ref: Any, taps: bool, device: str) -> None:
        import ray

        torch.set_num_threads(1)
        self.bb: Backbone = ray.get(backbone_ref).to(device).eval()
        self.taps = taps
        self.dim = self.bb.embed_dim + (sum(self.bb.layer_dims) if taps else 0)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [j for j, e in enumerate(batch["err"]) if not e]
        feat = np.zeros((len(batch["err"]), self.dim), dtype=np.float32)
        if ok:
            tensors = [torch.from_numpy(np.asarray(batch["x"][j], dtype=np.float32)) for j in ok]
            pooled, layers = forward_by_shape(self.bb, tensors, taps=self.taps)
            feat[ok] = torch.cat([pooled, *layers], dim=1).numpy()
        return {"i": batch["i"], "view": batch["view"], "err": batch["err"], "feat": feat}


def _decode(decoder: ViewsDecoder, window: list[Item], start: int, row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per decoded view of item ``row["i"]`` (a position in the stream; ``window`` begins at ``start``), or
    one row saying why it failed."""
    i = int(row["i"])
    _, tensors, err, views = decoder[(i, window[i - start])]
    if tensors is None:
        return [{"i": i, "view": -1, "err": err, "x": np.zeros((3, 1, 1), np.float32)}]
    return [{"i": i, "view": v, "err": "", "x": t.numpy()} for v, t in zip(views, tensors)]


class RayEngine(Engine):
    """:class:`~synthdet.engines.base.Engine` on Ray Data (see the module docstring); ``config``: ``actors``,
    ``num_gpus``, ``window``, ``address``."""

    def device(self, backbone: Backbone) -> torch.device:
        """The actors' device, whatever the caller's: CUDA when each has a GPU (``num_gpus``), else the CPU."""
        return torch.device("cuda" if self.config.num_gpus else "cpu")

    def features(
        self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: Unpack[ForwardOptions],
    ) -> Iterator[FeatureBatch]:
        """``batch_size``, ``max_pixels``, ``transform`` and ``verify_sha`` apply as locally; decoding workers and
        progress are Ray's to schedule."""
        ray = init_ray(self.config.address)
        device = self.device(backbone)
        batch_size = options.get("batch_size") or batch_size_default(device)
        decoder = ViewsDecoder(backbone.preprocess, options.get("max_pixels", DEFAULT_MAX_PIXELS),
                               options.get("transform"), options.get("verify_sha", False))
        dims = [backbone.embed_dim, *(backbone.layer_dims if taps else [])]
        ref = ray.put(actor_copy(backbone))
        stream, start = iter(items), 0
        while window := list(islice(stream, self.config.window)):
            ds = ray.data.from_items([{"i": start + j} for j in range(len(window))]).flat_map(
                partial(_decode, decoder, window, start),
            ).map_batches(
                _Forward, fn_constructor_args=(ref, taps, str(device)), batch_size=batch_size, batch_format="numpy",
                concurrency=self.config.actors, num_gpus=self.config.num_gpus or None, num_cpus=1,
            )
            start += len(window)
            for out in ds.iter_batches(batch_size=max(batch_size, 64), batch_format="numpy"):
                keep = [j for j, e in enumerate(out["err"]) if not e]
                errors = [(int(out["i"][j]), str(out["err"][j])) for j in range(len(out["err"])) if out["err"][j]]
                pairs = [(int(out["i"][j]), int(out["view"][j])) for j in keep]
                feat = torch.from_numpy(np.asarray(out["feat"], dtype=np.float32)[keep])
                pooled, *layers = torch.split(feat, dims, dim=1)
                yield pairs, pooled, layers, errors

    def load(self, detector: str | Path | None = None) -> RayDetector:
        det = load_detector(detector)
        if not isinstance(det, Detector):
            raise ValueError("--engine ray scores probe and fine-tuned detectors (an ensemble: score its members)")
        _ = det.backbone
        return RayDetector(det, self)


class RayDetector:
    """A saved detector scored on Ray: ``threshold`` and ``predict_paths`` as :class:`Detector`, rows in input order
    (each yielded as soon as every row before it is done), for :func:`~synthdet.engines.stream.score_stream`."""

    def __init__(self, det: Detector, engine: RayEngine) -> None:
        self.det = det
        self.engine = engine

    @property
    def threshold(self) -> float:
        return self.det.threshold

    def predict_paths(self, paths: Iterable[str | Path], **options: Unpack[ForwardOptions]) -> Iterator[ScoreRow]:
        pending: dict[int, str] = {}  # stream position -> path, for the files listed and not yet yielded
        done: dict[int, tuple[float | None, str]] = {}

        def items() -> Iterator[Item]:
            for i, p in enumerate(paths):
                pending[i] = str(p)
                yield pending[i], pending[i], [0]

        card = self.det.card
        following = 0
        for pairs, pooled, layers, errors in self.engine.features(
            self.det.backbone, items(), taps=card.features == "concat", **options,
        ):
            done.update((i, (None, reason)) for i, reason in errors)
            if pairs:
                probs = self.det.predict_features(assemble_features(pooled, layers, card.features))
                done.update((i, (float(p), "")) for (i, _), p in zip(pairs, probs))
            while following in done:
                yield pending.pop(following), *done.pop(following)
                following += 1
        for i in sorted(pending):  # a row Ray lost: said, not dropped
            yield pending[i], *done.get(i, (None, "unknown error"))
