"""The curated top-level API: ``synthdet.load``, ``Detector.score`` / ``.assess``, ``synthdet.localize``; lazy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_image, synthetic_photo, write_image
from PIL import Image

import synthdet
from synthdet.detectors.card import default_detector_path, read_card
from synthdet.detectors.detector import Detector
from synthdet.io.pixels import ImageLoadError


def test_import_synthdet_is_cheap() -> None:
    """``import synthdet`` loads no model code: torch, PIL and the detectors come with the first call that needs them."""
    code = ("import sys, synthdet\nheavy = {'torch', 'PIL', 'sklearn', 'synthdet.detectors'} & set(sys.modules)\n"
            "print(sorted(heavy), synthdet.__version__)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(synthdet.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["[]", synthdet.__version__]


def test_lazy_names_resolve_to_the_library_classes() -> None:
    assert synthdet.Detector is Detector
    assert {"load", "localize", "Detector", "EnsembleDetector", "Assessment", "Localizer"} <= set(dir(synthdet))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        _ = synthdet.nonsense  # type: ignore[attr-defined]


def test_load_gives_the_shipped_default_without_building_its_backbone() -> None:
    graph = synthdet.load()  # auto: the shipped graph, when onnxruntime is installed
    assert type(graph).__name__ == "GraphDetector" and graph.card == read_card(default_detector_path())
    det = synthdet.load(runtime="torch")
    assert isinstance(det, Detector)
    assert det.card == read_card(default_detector_path())
    assert det._backbone is None  # built on first use: loading a detector is cheap


def test_score_takes_paths_bytes_images_and_arrays_with_the_numbers_of_predict_paths(
    default_detector: Detector, tmp_path: Path
) -> None:
    img = synthetic_photo(160, 120, seed=4)
    path = write_image(tmp_path / "p.png", img)
    (_, expected, reason), = default_detector.predict_paths([path], num_workers=0)
    assert reason == "" and expected is not None
    for item in (path, str(path), encode_image(img, "PNG"), img, np.asarray(img)):
        got = default_detector.score(item)
        assert isinstance(got, float) and got == pytest.approx(expected, abs=1e-6), type(item)
    other = write_image(tmp_path / "q.jpg", synthetic_photo(120, 160, seed=9), quality=90)
    many = default_detector.score([path, other])
    assert isinstance(many, np.ndarray) and many.shape == (2,)
    assert many[0] == pytest.approx(expected, abs=1e-6) and 0.0 <= many[1] <= 1.0
    assert default_detector.score([]).shape == (0,)


def test_score_names_what_it_cannot_read(default_detector: Detector, tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.jpg"):
        default_detector.score(tmp_path / "empty.jpg")
    with pytest.raises(ValueError, match="uint8"):
        default_detector.score(np.zeros((8, 8, 3), dtype=np.float32))


def test_assess_from_the_top_level(default_detector: Detector, tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.jpg", synthetic_photo(128, 96, seed=2), quality=92)
    a = default_detector.assess(path, checks=False, evidence=False)
    assert isinstance(a, synthdet.Assessment)
    assert a.probability == pytest.approx(default_detector.score(Image.open(path)), abs=1e-6)
    assert a.verdict in ("likely generated", "likely real", "uncertain") and a.reasons


def test_localize_maps_every_image_at_its_size(tmp_path: Path) -> None:
    from synthdet.localization.models import Localizer, LocalizerCard, build_model

    loc = Localizer(LocalizerCard(threshold=0.5, model="patch"), build_model("patch", pretrained=False))
    loc.save(tmp_path / "loc")
    a = write_image(tmp_path / "a.png", synthetic_photo(96, 64, seed=1))
    b = synthetic_photo(40, 56, seed=2)
    maps = synthdet.localize(tmp_path / "loc", [a, b])
    assert [m.shape for m in maps] == [(64, 96), (56, 40)]
    assert all(m.dtype == np.float32 and 0.0 <= m.min() <= m.max() <= 1.0 for m in maps)
    np.testing.assert_allclose(maps[1], loc.predict_image(b), atol=1e-6)  # a folder or a loaded localizer alike
    assert isinstance(synthdet.load(tmp_path / "loc"), Localizer)
