"""ONNX export (synthdet.engines.onnx_runtime): one graph, onnxruntime scoring with the same decoding, parity with torch on
real images (the shipped default and a native-scale texture-pooled detector with a sigmoid calibration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_photo, write_image

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from synthdet.backbones.base import create_backbone  # noqa: E402
from synthdet.data.demo import demo_data_dir  # noqa: E402
from synthdet.detectors.calibrate import Calibration  # noqa: E402
from synthdet.detectors.card import Card  # noqa: E402
from synthdet.detectors.detector import Detector  # noqa: E402
from synthdet.detectors.loading import load_detector  # noqa: E402
from synthdet.engines.onnx_runtime import OnnxDetector, card_json, export_onnx, max_abs_diff  # noqa: E402
from synthdet.engines.stream import scan_images  # noqa: E402
from synthdet.features.extract import (  # noqa: E402
    assemble_features,
    forward_batches,
)
from synthdet.heads.logreg import LogisticHead  # noqa: E402


def _demo(n: int) -> list[str]:
    paths = sorted(scan_images(demo_data_dir()))
    return paths[:: max(1, len(paths) // n)][:n]


def test_default_detector_parity_on_demo_images(tmp_path: Path) -> None:
    det = load_detector()
    assert isinstance(det, Detector)
    out = export_onnx(det, tmp_path / "d.onnx")
    model = onnx.load(str(out))
    x = model.graph.input[0].type.tensor_type.shape.dim
    native = det.card.preprocess.scale == "native"  # dynamic height/width: images below the size keep theirs
    assert x[0].dim_param == "batch"
    assert (x[2].dim_param == "height") if native else (x[2].dim_value == det.card.preprocess.size)
    assert card_json(out)["threshold"] == det.threshold
    paths = [*_demo(24), str(write_image(tmp_path / "bad.jpg", synthetic_photo(30, 20)).with_name("missing.jpg"))]
    ref = list(det.predict_paths(paths, num_workers=0))
    got = list(OnnxDetector.load(out).predict_paths(paths, num_workers=0))
    assert [r[0] for r in got] == paths and got[-1][1] is None and got[-1][2] == ref[-1][2]
    assert max_abs_diff([r[1] for r in ref], [r[1] for r in got]) < 1e-3
    assert len({round(r[1], 3) for r in got[:-1] if r[1] is not None}) > 5  # real, varied scores


def test_native_scale_texture_detector_with_calibration(tmp_path: Path) -> None:
    """Dynamic H/W (images below the model size keep theirs), texture statistics and a sigmoid calibration, all in
    the graph."""
    bb = create_backbone("effnet-lite0", device="cpu", tap_pool="texture")
    pre = bb.preprocess.at_native(160)
    bb = create_backbone("effnet-lite0", device="cpu", tap_pool="texture", preprocess=pre)
    paths = _demo(10) + [str(write_image(tmp_path / f"s{i}.png", synthetic_photo(64 + 24 * i, 80, seed=i)))
                         for i in range(3)]
    feats = [assemble_features(pooled, layers, "concat")
             for _, pooled, layers, _ in forward_batches(bb, [(p, p, [0]) for p in paths], taps=True, num_workers=0)]
    X = np.concatenate(feats)
    head = LogisticHead(C=0.1).fit(X, np.arange(len(X)) % 2)
    card = Card(threshold=0.5, backbone="effnet-lite0", weights_id=bb.weights_id, preprocess=pre, tap_pool="texture",
                features="concat", head="logreg", head_params={"C": 0.1}, n_features=X.shape[1],
                calibration=Calibration(method="sigmoid", a=0.6, b=0.3))
    det = Detector(card, head, bb)
    out = export_onnx(det, tmp_path / "native.onnx")
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    ref = [p for _, p, _ in det.predict_paths(paths, num_workers=0)]
    got = [p for _, p, _ in OnnxDetector.load(out).predict_paths(paths, num_workers=0)]
    assert None not in ref and max_abs_diff(ref, got) < 1e-3


def test_export_cli_and_predict_runtime_onnx(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthdet.cli import app

    out = tmp_path / "d.onnx"
    res = CliRunner().invoke(app, ["export", "--onnx", str(out)])
    assert res.exit_code == 0, res.output
    assert "max |Δprob|" in res.output
    csv = tmp_path / "s.csv"
    res = CliRunner().invoke(app, ["predict", str(out), *_demo(3), "-o", str(csv), "--runtime", "onnx", "--quiet"])
    assert res.exit_code == 0, res.output
    assert len(csv.read_text().splitlines()) == 4
