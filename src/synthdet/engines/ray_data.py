"""The Ray Data engine: the same features and scores as the local engine, spread over a machine's cores or a cluster.

:func:`ray_forward_batches` has :func:`~synthdet.features.extract.forward_batches`' contract (same items in, same
``(pairs, pooled, layers, errors)`` out), so :func:`~synthdet.features.extract.extract` writes the same store shards with it
(``extract(..., forward=ray_forward_batches)``) and :class:`RayScorer` gives :func:`~synthdet.engines.local.score_stream`
the same rows as :class:`~synthdet.detectors.detector.Detector` (so streaming, parts, resume and merge are shared). Inside:
``ray.data.from_items`` over a window of items → ``flat_map`` decoding in CPU tasks (the local engine's decoder,
one row per view) → ``map_batches`` with an actor pool, each actor holding one copy of the backbone (CPU actors, or
one GPU each with ``num_gpus=1``) → the driver collects the window. Windows (``window`` items) bound the memory of
the driver whatever the listing's length. Connect to a cluster with ``address`` (``ray.init(address=...)``);
without one, a local Ray starts (or the running one is used).
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from synthdet.backbones.base import Backbone
from synthdet.detectors.detector import Detector
from synthdet.detectors.loading import load_detector
from synthdet.extras import require
from synthdet.features.extract import ImageTransform, _ViewsDataset, assemble_features, forward_by_shape
from synthdet.io.pixels import DEFAULT_MAX_PIXELS


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """``ray`` connected to ``address`` (a cluster), or to the running / a new local instance."""
    ray = require("ray", "--engine ray")
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False  # the library is quiet; the CLI reports
    return ray


class _Forward:
    """An actor: one backbone, run on batches of decoded views (``x``; failed rows pass through with ``err``)."""

    def __init__(self, backbone_ref: Any, taps: bool, num_gpus: float) -> None:
        import ray

        torch.set_num_threads(1)
        bb: Backbone = ray.get(backbone_ref)
        self.bb = bb.to("cuda" if num_gpus and torch.cuda.is_available() else "cpu").eval()
        self.taps = taps
        self.dim = bb.embed_dim + (sum(bb.layer_dims) if taps else 0)

    @torch.inference_mode()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [j for j, e in enumerate(batch["err"]) if not e]
        feat = np.zeros((len(batch["err"]), self.dim), dtype=np.float32)
        if ok:
            tensors = [torch.from_numpy(np.asarray(batch["x"][j], dtype=np.float32)) for j in ok]
            pooled, layers = forward_by_shape(self.bb, tensors, taps=self.taps)
            feat[ok] = torch.cat([pooled, *layers], dim=1).numpy()
        return {"i": batch["i"], "view": batch["view"], "err": batch["err"], "feat": feat}


def ray_forward_batches(
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
    verify_sha: bool = False,
    actors: int = 1,
    num_gpus: float = 0,
    window: int = 8192,
    address: str | None = None,
) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor, list[torch.Tensor], list[tuple[int, str]]]]:
    """:func:`~synthdet.features.extract.forward_batches` on Ray Data (see the module docstring); ``num_workers`` and
    ``desc``/``progress`` are accepted for the same signature (Ray schedules decoding tasks itself)."""
    ray = init_ray(address)
    batch_size = batch_size or (64 if num_gpus else 8)
    decoder = _ViewsDataset(cast(Backbone, types.SimpleNamespace(preprocess=backbone.preprocess)), max_pixels,
                            transform, verify_sha)
    ref = ray.put(backbone.cpu())
    dims = [backbone.embed_dim, *(backbone.layer_dims if taps else [])]

    def decode(row: dict[str, Any]) -> list[dict[str, Any]]:
        i = int(row["i"])
        _, tensors, err, views = decoder[(i, items[i])]
        if tensors is None:
            return [{"i": i, "view": -1, "err": err, "x": np.zeros((3, 1, 1), np.float32)}]
        return [{"i": i, "view": v, "err": "", "x": t.numpy()} for v, t in zip(views, tensors)]

    for start in range(0, len(items), window):
        ds = ray.data.from_items([{"i": i} for i in range(start, min(start + window, len(items)))])
        ds = ds.flat_map(decode).map_batches(
            _Forward, fn_constructor_args=(ref, taps, num_gpus), batch_size=batch_size, batch_format="numpy",
            concurrency=actors, num_gpus=num_gpus or None, num_cpus=1,
        )
        for out in ds.iter_batches(batch_size=max(batch_size, 64), batch_format="numpy"):
            keep = [j for j, e in enumerate(out["err"]) if not e]
            errors = [(int(out["i"][j]), str(out["err"][j])) for j in range(len(out["err"])) if out["err"][j]]
            pairs = [(int(out["i"][j]), int(out["view"][j])) for j in keep]
            feat = torch.from_numpy(np.asarray(out["feat"], dtype=np.float32)[keep])
            parts = list(torch.split(feat, dims, dim=1))
            yield pairs, parts[0], parts[1:], errors


class RayScorer:
    """A saved detector scored on Ray: ``threshold`` and ``predict_paths`` as :class:`Detector` (rows in input
    order within each window), for :func:`~synthdet.engines.local.score_stream`."""

    def __init__(self, path: str | Path | None = None, *, actors: int = 1, num_gpus: float = 0, window: int = 8192,
                 address: str | None = None) -> None:
        det = load_detector(path)
        if not isinstance(det, Detector):
            raise ValueError("--engine ray scores probe and fine-tuned detectors (an ensemble: score its members)")
        self.det = det
        self.options = {"actors": actors, "num_gpus": num_gpus, "window": window, "address": address}

    @property
    def threshold(self) -> float:
        return self.det.threshold

    def predict_paths(self, paths: Iterable[str | Path], *, batch_size: int | None = None, max_pixels: int =
                      DEFAULT_MAX_PIXELS, **_: Any) -> Iterator[tuple[str, float | None, str]]:
        it = iter(paths)
        window = int(cast(int, self.options["window"]))
        concat = self.det.card.features == "concat"
        while batch := [str(p) for _, p in zip(range(window), it)]:
            probs: dict[int, float] = {}
            errors: dict[int, str] = {}
            for pairs, pooled, layers, errs in ray_forward_batches(
                self.det.backbone, [(p, p, [0]) for p in batch], taps=concat, batch_size=batch_size,
                max_pixels=max_pixels, **self.options,  # type: ignore[arg-type]
            ):
                errors.update(errs)
                if pairs:
                    p = self.det.predict_features(assemble_features(pooled, layers, self.det.card.features))
                    probs.update({i: float(v) for (i, _), v in zip(pairs, p)})
            for i, path in enumerate(batch):
                yield (path, probs[i], "") if i in probs else (path, None, errors.get(i, "unknown error"))
