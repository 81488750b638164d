"""One interface for the engines that run a backbone over image files: local torch, onnxruntime, Ray Data.

``synthdet extract``, ``predict`` and ``serve`` build theirs with :func:`create_engine` and call only :class:`Engine`:
:meth:`~Engine.features` (feature rows, :func:`~synthdet.features.extract.forward_batches`' contract, for
:func:`~synthdet.features.extract.extract`), :meth:`~Engine.store` (the feature store those rows belong in, keyed by
the device that really computes them) and :meth:`~Engine.load` (a saved detector ready to score files, by its
``predict_paths`` or :func:`~synthdet.engines.stream.score_stream`). :data:`ENGINES` names the engines by import
path, so neither onnxruntime nor Ray is imported before one of them is asked for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from synthdet.io.pixels import ImageTransform
from synthdet.registry import Registry

if TYPE_CHECKING:  # torch and the feature store belong to the engines that extract, not to scoring from a graph
    import torch

    from synthdet.backbones.base import Backbone
    from synthdet.features.extract import FeatureBatch, ForwardOptions, Item
    from synthdet.features.store import FeatureStore

ScoreRow = tuple[str, float | None, str]
"""``(path, probability of being generated, "")``, or ``(path, None, reason)`` for a file that cannot be scored."""


class Scorer(Protocol):
    """A detector ready to score files, whatever runs it (what :meth:`Engine.load` gives and
    :func:`~synthdet.engines.stream.score_stream` needs): rows in input order, every file once."""

    @property
    def threshold(self) -> float: ...

    def predict_paths(
        self, paths: Iterable[str | Path], *, batch_size: int | None = ..., num_workers: int | None = ...,
        max_pixels: int = ..., progress: bool = ..., transform: ImageTransform | None = ...,
    ) -> Iterator[ScoreRow]: ...


@dataclass(frozen=True)
class EngineConfig:
    """Where an engine runs. Each engine reads its own fields and ignores the others', so one command line can pass
    them all; how each call runs (batch size, decoding workers, pixel limit, progress) stays with the call."""

    actors: int = 1  # ray: backbone actors
    num_gpus: float = 0  # ray: GPUs per actor (0: CPU actors)
    window: int = 8192  # ray: files per dataset, which bounds the driver's memory whatever the listing's length
    address: str | None = None  # ray: the cluster to join (None: the running or a new local Ray)
    threads: int | None = None  # onnx: intra-op threads (None: the cores the decoding workers leave)


class Engine(ABC):
    """Image files in; feature rows or scores out, every file once, a file that cannot be decoded as its reason."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()

    def device(self, backbone: Backbone) -> torch.device:
        """Where this engine runs ``backbone`` (CUDA implies bf16 autocast, so its features differ from CPU ones)."""
        return backbone.device

    def store(self, backbone: Backbone, root: str | Path | None = None) -> FeatureStore:
        """The feature store of what :meth:`features` computes: keyed by the device that runs it, not the caller's."""
        from synthdet.features.store import FeatureStore

        return FeatureStore.for_backbone(backbone, root, device=self.device(backbone))

    @abstractmethod
    def features(
        self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: Unpack[ForwardOptions],
    ) -> Iterator[FeatureBatch]:
        """:func:`~synthdet.features.extract.forward_batches`' contract: every item once, in ``pairs`` or in
        ``errors``, by its position in ``items`` (the local engine yields them in order, others as they finish).
        ``backbone`` stays on its device: an engine that runs it elsewhere (Ray's actors) runs copies."""

    @abstractmethod
    def load(self, detector: str | Path | None = None) -> Scorer:
        """The saved detector at ``detector`` (``None``: the shipped one) scoring with this engine, its network built
        now so that a broken one fails before any output."""


ENGINES: Registry[type[Engine]] = Registry("engine")
ENGINES.add("local", "synthdet.engines.local:LocalEngine",
            description="torch in this process: DataLoader workers decode while the backbone runs where it is")
ENGINES.add("onnx", "synthdet.engines.onnx_runtime:OnnxEngine",
            description="onnxruntime on CPU: an exported detector graph scores (no features)")
ENGINES.add("ray", "synthdet.engines.ray_data:RayEngine",
            description="Ray Data: decoding tasks and backbone actors, on this machine or a cluster")


def create_engine(name: str, **config: Any) -> Engine:
    """The engine registered as ``name``, with :class:`EngineConfig` fields ``config``."""
    return ENGINES.get(name)(EngineConfig(**config))


#: What ``--runtime`` may name: ``onnx`` (onnxruntime from the detector's graph, no torch in the process), ``torch``
#: (the reference and training path), or ``auto``: onnx whenever the detector has a graph or one can be made here,
#: except on a CUDA machine, where torch on the GPU is faster.
RUNTIMES = ("auto", "torch", "onnx")


def resolve_runtime(runtime: str, detector: str | Path | None = None) -> str:
    """``"onnx"`` or ``"torch"``: what ``runtime`` (:data:`RUNTIMES`) means for ``detector`` (``None``: the shipped
    default) on this machine."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    if runtime == "auto":
        from synthdet.detectors.graph import has_graph

        return "torch" if cuda_machine() or not has_graph(detector) else "onnx"
    return runtime


def cuda_machine() -> bool:
    """Whether torch is installed and an NVIDIA driver is loaded: there torch on the GPU outruns onnxruntime on the
    CPU. Checked without importing torch (seconds of cold start that scoring on a CPU never needs)."""
    from synthdet.extras import available

    return Path("/proc/driver/nvidia/version").is_file() and available("torch")


def scoring_engine(runtime: str, detector: str | Path | None = None, **config: Any) -> Engine:
    """The engine that scores ``detector`` in this process under ``runtime`` (:func:`resolve_runtime`)."""
    return create_engine("onnx" if resolve_runtime(runtime, detector) == "onnx" else "local", **config)
