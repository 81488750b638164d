"""A detector scored from its ONNX graph by onnxruntime: the scoring install's path, with no torch.

The graph (written by :func:`synthdet.engines.onnx_export.export_onnx`) takes the preprocessed batch ``x``
(``float32 [B, 3, H, W]``, :meth:`~synthdet.io.pixels.Preprocess.to_array` stacked) and gives ``logit``, the head's
raw logit, and ``prob``, with the card's sigmoid calibration baked in for runtimes outside synthdet. Here ``logit``
goes through the card's calibration, as :meth:`Detector.predict_features` does, so recalibrating a detector never
needs a new graph. A detector folder keeps its graph beside its tensors as ``graph-<key>.onnx``, the key a digest of
everything the graph computes from (:func:`graph_key`): a retrained or altered folder never meets a stale graph.

Files are decoded by a pool of threads while the network runs (Pillow, numpy and onnxruntime release the GIL), a
few batches ahead, so a stream of any length is scored in order with flat memory.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from synthdet.detectors.assess import Scorable
from synthdet.detectors.calibrate import calibrated
from synthdet.detectors.card import Card, default_detector_path, read_card
from synthdet.extras import available, require
from synthdet.io.files import default_cache_dir, sha256_file
from synthdet.io.pixels import DEFAULT_MAX_PIXELS, ImageLoadError, ImageTransform, load_image, read_file
from synthdet.io.workers import num_workers_default, usable_cpus

#: Images per onnxruntime call (as the torch path on CPU: the per-image cost grows beyond 8).
BATCH_SIZE = 8


def graph_key(folder: str | Path, card: Card) -> str:
    """A digest of what a folder's graph computes from: the network (backbone, its weights, taps, preprocessing
    shape), the head and every tensor file in the folder. Calibration and threshold are not in it: they apply
    after the graph. A tensor file's digest is the card's record when it has one (loading checks the file against
    it), so the files are not hashed twice on the way to a score."""
    h = hashlib.sha256(card.model_dump_json(include={
        "kind", "backbone", "weights_id", "tap_pool", "features", "head", "head_params", "n_features", "preprocess",
    }).encode())
    for path in sorted(Path(folder).glob("*.safetensors")):
        h.update(f"{path.name}:{card.files.get(path.name) or sha256_file(path)}".encode())
    return h.hexdigest()[:16]


def graph_path(folder: str | Path, card: Card) -> Path:
    """Where a detector folder keeps its graph (which may not exist yet)."""
    return Path(folder) / f"graph-{graph_key(folder, card)}.onnx"


def has_graph(detector: str | Path | None = None) -> bool:
    """Whether ``--runtime auto`` can score ``detector`` with onnxruntime: onnxruntime is installed, and the
    detector is one graph that exists or can be exported here (torch and onnx installed)."""
    if not available("onnxruntime"):
        return False
    path = Path(detector) if detector is not None else default_detector_path()
    if path.is_file():
        return path.suffix.lower() == ".onnx"
    card = read_card(path)  # not a detector: the one-line error now, before torch would be imported to load it
    if not isinstance(card, Card):
        return False
    return any(p.is_file() for p in graph_places(path, card)) or (available("torch") and available("onnx"))


def graph_places(folder: Path, card: Card) -> tuple[Path, Path]:
    """Where a folder's graph is looked for and written: beside the detector, then the cache folder (for read-only
    folders)."""
    beside = graph_path(folder, card)
    return beside, default_cache_dir().parent / "onnx" / beside.name


class GraphDetector(Scorable):
    """A probe or fine-tuned detector run from its graph: the same ``card``, ``threshold``, ``predict_paths``,
    ``score`` and ``assess`` as :class:`~synthdet.detectors.detector.Detector`, and the same numbers (within
    1e-4 in probability, tested on ``dev2``)."""

    def __init__(self, card: Card, session: Any, path: Path) -> None:
        self.card = card
        self.session = session
        self.path = path

    @property
    def threshold(self) -> float:
        return self.card.threshold

    @classmethod
    def load(cls, graph: str | Path, card: Card | None = None, *, threads: int | None = None) -> GraphDetector:
        """The graph at ``graph``, calibrated and thresholded by ``card`` (by default the card in its metadata:
        a bare ``.onnx`` file). ``threads``: onnxruntime's intra-op threads (default: the cores the decoding
        threads leave, at least one)."""
        ort = require("onnxruntime", "scoring with an ONNX graph")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or max(1, usable_cpus() - num_workers_default())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        session = ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"])
        if "logit" not in {o.name for o in session.get_outputs()}:
            raise ValueError(f"{graph}: an ONNX graph without a 'logit' output (not a synthdet export, or one from "
                             "an earlier version): export it again (synthdet export DETECTOR --onnx FILE)")
        if card is None:
            meta = session.get_modelmeta().custom_metadata_map
            if "card" not in meta:
                raise ValueError(f"{graph}: an ONNX file without a synthdet card in its metadata (export it with "
                                 "synthdet export DETECTOR --onnx FILE)")
            card = Card.model_validate_json(meta["card"])
        return cls(card, session, Path(graph))

    def probabilities(self, arrays: Sequence[np.ndarray], *, batch_size: int | None = None) -> np.ndarray:
        """Probabilities of being generated for preprocessed ``[3, H, W]`` arrays, in order; one run per input
        size (at native scale, images smaller than the model size keep their own)."""
        logits = np.empty(len(arrays), dtype=np.float64)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for j, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(j)
        size = batch_size or BATCH_SIZE
        for idx in by_shape.values():
            for start in range(0, len(idx), size):
                part = idx[start:start + size]
                (z,) = self.session.run(["logit"], {"x": np.stack([arrays[j] for j in part])})
                logits[part] = np.asarray(z, dtype=np.float64).reshape(-1)
        return calibrated(self.card.calibration, logits)

    def score_decoded(self, images: Sequence[Image.Image], *, batch_size: int | None = None) -> np.ndarray:
        """Probabilities for decoded RGB images through the canonical chain (what
        :func:`~synthdet.detectors.scoring.score_images` calls for this kind)."""
        pre = self.card.preprocess
        return self.probabilities([pre.canonical(img) for img in images], batch_size=batch_size)

    def predict_paths(
        self,
        paths: Iterable[str | Path],
        *,
        batch_size: int | None = None,
        num_workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = False,
        transform: ImageTransform | None = None,
    ) -> Iterator[tuple[str, float | None, str]]:
        """Yield ``(path, probability, "")`` or ``(path, None, reason)`` in input order, as
        :meth:`Detector.predict_paths` does for the same files."""
        size = batch_size or BATCH_SIZE
        workers = num_workers_default() if num_workers is None else num_workers
        todo = iter(paths)
        pending: deque[tuple[str, Future[np.ndarray | str]]] = deque()
        bar = tqdm(desc="score", unit="img", disable=None if progress else True)
        with ThreadPoolExecutor(max(1, workers)) as pool:

            def fill() -> None:  # keep two batches decoding ahead of the network
                while len(pending) < 2 * size and (p := next(todo, None)) is not None:
                    pending.append((str(p), pool.submit(self._decode, str(p), max_pixels, transform)))

            fill()
            while pending:
                batch = [pending.popleft() for _ in range(min(size, len(pending)))]
                fill()
                decoded = [(p, f.result()) for p, f in batch]
                arrays = [d for _, d in decoded if isinstance(d, np.ndarray)]
                probs = iter(self.probabilities(arrays, batch_size=size)) if arrays else iter(())
                for p, d in decoded:
                    yield (p, float(next(probs)), "") if isinstance(d, np.ndarray) else (p, None, d)
                bar.update(len(batch))
        bar.close()

    def _decode(self, path: str, max_pixels: int, transform: ImageTransform | None) -> np.ndarray | str:
        """One file's canonical view, or why it cannot be scored. A transform (robustness slice) sees the image as
        stored, with no reduction first, as in :class:`~synthdet.features.extract.ViewsDecoder`."""
        pre = self.card.preprocess
        try:
            img = load_image(read_file(path), max_pixels=max_pixels)
            return pre.canonical(img) if transform is None else pre.to_array(pre.render(transform(img, path)))
        except ImageLoadError as e:
            return e.reason + (f": {e.detail}" if e.detail else "")
