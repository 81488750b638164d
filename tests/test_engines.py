"""The engines' one interface (synthdet.engines.base): the registry and factory, what each engine loads, the feature
store an engine's features belong in, and the Ray engine's rules that need no running Ray (its actors' copy of the
backbone, its scores in input order whatever order its batches finish in)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from synthdet.backbones.base import Backbone
from synthdet.data.demo import demo_data_dir
from synthdet.detectors.detector import Detector
from synthdet.engines.base import ENGINES, Engine, EngineConfig, create_engine
from synthdet.engines.local import LocalEngine
from synthdet.engines.ray_data import RayDetector, RayEngine
from synthdet.engines.stream import scan_images
from synthdet.features.extract import FeatureBatch, FeatureStore, Item, extract
from synthdet.registry import UnknownNameError


def _paths(n: int) -> list[str]:
    paths = sorted(scan_images(demo_data_dir()))
    return paths[:: max(1, len(paths) // n)][:n]


def test_every_engine_is_registered_and_built_by_the_factory() -> None:
    assert ENGINES.names() == ["local", "onnx", "ray"]
    for name in ENGINES:
        engine = create_engine(name, actors=2)
        assert isinstance(engine, Engine) and engine.config == EngineConfig(actors=2)
    with pytest.raises(UnknownNameError, match="local, onnx, ray"):
        create_engine("spark")
    with pytest.raises(TypeError):
        create_engine("local", actor=2)  # a typo is an error, not a silent default


def test_local_engine_loads_a_ready_detector_and_extracts_as_extract_does(
    effnet_lite0: Backbone, tmp_path: Path,
) -> None:
    engine = create_engine("local")
    det = engine.load()
    assert isinstance(det, Detector) and det._backbone is not None  # built: a broken one fails before any output
    paths = _paths(4)
    shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    a, b = FeatureStore.for_backbone(effnet_lite0, tmp_path / "a"), engine.store(effnet_lite0, tmp_path / "b")
    assert a.identity == b.identity
    extract(effnet_lite0, paths, shas, a, views=[0, 1], num_workers=0)
    extract(effnet_lite0, paths, shas, b, views=[0, 1], num_workers=0, forward=engine.features)
    keys = [f"{s}:{v}" for s in shas for v in (0, 1)]
    (pa, la), (pb, lb) = a.load(keys, layers=True), b.load(keys, layers=True)
    assert np.array_equal(pa, pb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_onnx_engine_gives_no_features(effnet_lite0: Backbone) -> None:
    with pytest.raises(ValueError, match="probabilities, not features"):
        next(create_engine("onnx").features(effnet_lite0, [], taps=False))


def test_ray_features_are_stored_under_the_actors_device(
    effnet_lite0: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CPU actors compute float32 features even for a caller whose backbone is on a GPU (bf16 autocast): their store
    must say ``cpu``, or they would be read back as CUDA features."""
    monkeypatch.setattr(Backbone, "device", property(lambda self: torch.device("cuda")))
    assert FeatureStore.for_backbone(effnet_lite0, tmp_path).identity["device"] == "cuda"
    assert create_engine("ray").store(effnet_lite0, tmp_path).identity["device"] == "cpu"
    assert create_engine("local").store(effnet_lite0, tmp_path).identity["device"] == "cuda"
    assert create_engine("ray", num_gpus=1).device(effnet_lite0).type == "cuda"


def test_the_actors_copy_leaves_the_callers_backbone_alone(effnet_lite0: Backbone) -> None:
    pytest.importorskip("ray")
    from synthdet.engines.ray_data import actor_copy

    state = {k: (v.data_ptr(), v.clone()) for k, v in effnet_lite0.state_dict().items()}
    copy = actor_copy(effnet_lite0)
    assert copy is not effnet_lite0 and copy.device.type == "cpu"
    assert not {v.data_ptr() for v in copy.state_dict().values()} & {ptr for ptr, _ in state.values()}
    copy.fold_batchnorm()  # what an actor does first: in place, on its own copy only
    assert copy.folded and not effnet_lite0.folded
    for k, v in effnet_lite0.state_dict().items():
        assert v.data_ptr() == state[k][0] and torch.equal(v, state[k][1])
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(copy(x)[0], effnet_lite0(x)[0], atol=1e-4)


class _LastFirst(RayEngine):
    """The local engine's batches, yielded last first, as Ray's actors may finish them."""

    def features(self, backbone: Backbone, items: Iterable[Item], *, taps: bool, **options: object
                 ) -> Iterator[FeatureBatch]:
        yield from reversed(list(LocalEngine().features(backbone, items, taps=taps, num_workers=0, batch_size=2)))


def test_ray_detector_yields_rows_in_input_order(default_detector: Detector, tmp_path: Path) -> None:
    paths = [*_paths(5), str(tmp_path / "missing.jpg"), *_paths(7)[5:]]
    local = list(default_detector.predict_paths(paths, num_workers=0))
    rows = list(RayDetector(default_detector, _LastFirst()).predict_paths(paths))
    assert [r[0] for r in rows] == paths
    assert [(p, r) for p, _, r in rows] == [(p, r) for p, _, r in local]
    for (_, a, _), (_, b, _) in zip(rows, local):
        assert (a is None and b is None) or abs(a - b) < 1e-6
