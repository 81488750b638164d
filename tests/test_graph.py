"""Scoring from ONNX graphs (synthdet.detectors.graph, engines.onnx_runtime, engines.onnx_export): the shipped
default's committed graph, export once beside a user's detector, parity with torch on real images, and the scoring
install — every command it offers run with torch and the other ``[train]`` packages absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_photo, write_image

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from synthdet.backbones.base import create_backbone  # noqa: E402
from synthdet.data.demo import demo_data_dir  # noqa: E402
from synthdet.detectors.calibrate import Calibration  # noqa: E402
from synthdet.detectors.card import Card, DamagedDetectorError, default_detector_path, read_card  # noqa: E402
from synthdet.detectors.detector import Detector  # noqa: E402
from synthdet.detectors.graph import (  # noqa: E402
    GraphDetector,
    graph_path,
    has_graph,
)
from synthdet.engines.base import resolve_runtime, scoring_engine  # noqa: E402
from synthdet.engines.onnx_export import card_json, export_onnx, max_abs_diff  # noqa: E402
from synthdet.engines.onnx_runtime import load_graph  # noqa: E402
from synthdet.engines.stream import scan_images  # noqa: E402
from synthdet.features.extract import assemble_features, forward_batches  # noqa: E402
from synthdet.heads.logreg import LogisticHead  # noqa: E402

NO_TORCH = Path(__file__).with_name("no_torch.py")
SHARED_DEV2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev2"


def _demo(n: int) -> list[str]:
    paths = sorted(scan_images(demo_data_dir()))
    return paths[:: max(1, len(paths) // n)][:n]


def _dev2(n: int | None) -> list[str]:
    if not SHARED_DEV2.is_dir():
        pytest.skip("needs ../shared/data/dev2")
    paths = sorted(scan_images(SHARED_DEV2))
    return paths if n is None else paths[:: max(1, len(paths) // n)][:n]


@pytest.fixture(scope="module")
def shipped_graph() -> GraphDetector:
    return load_graph()


def test_shipped_default_carries_its_graph_on_the_card(shipped_graph: GraphDetector) -> None:
    folder = default_detector_path()
    card = read_card(folder)
    assert isinstance(card, Card)
    graph = graph_path(folder, card)
    assert graph.is_file() and graph.name in card.files  # verified at every load, like the head
    assert shipped_graph.path == graph and has_graph(None)
    assert isinstance(scoring_engine("auto").load(), GraphDetector)
    assert resolve_runtime("auto") == "onnx" and resolve_runtime("torch") == "torch"
    with pytest.raises(ValueError, match="--runtime 'tf'"):
        resolve_runtime("tf")


def test_shipped_graph_matches_torch_on_demo_images(shipped_graph: GraphDetector, default_detector: Detector,
                                                    tmp_path: Path) -> None:
    paths = [*_demo(16), str(tmp_path / "missing.jpg")]
    ref = list(default_detector.predict_paths(paths, num_workers=0))
    got = list(shipped_graph.predict_paths(paths, num_workers=2, batch_size=5))  # threads, batches across shapes
    assert [r[0] for r in got] == paths and got[-1][1] is None and got[-1][2] == ref[-1][2] == "not-found"
    assert max_abs_diff([r[1] for r in ref], [r[1] for r in got]) <= 1e-4
    assert len({round(r[1], 3) for r in got[:-1] if r[1] is not None}) > 5  # real, varied scores


@pytest.mark.shared
def test_shipped_graph_matches_torch_on_dev2_sample(shipped_graph: GraphDetector, default_detector: Detector) -> None:
    paths = _dev2(16)
    ref = [p for _, p, _ in default_detector.predict_paths(paths)]
    got = [p for _, p, _ in shipped_graph.predict_paths(paths)]
    assert None not in got and max_abs_diff(ref, got) <= 1e-4


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_graph_matches_torch_on_all_of_dev2(shipped_graph: GraphDetector, default_detector: Detector) -> None:
    paths = _dev2(None)
    ref = [p for _, p, _ in default_detector.predict_paths(paths)]
    got = [p for _, p, _ in shipped_graph.predict_paths(paths)]
    assert len(got) > 600 and max_abs_diff(ref, got) <= 1e-4


def test_assessment_from_the_graph_matches_torch(shipped_graph: GraphDetector, default_detector: Detector) -> None:
    path = _demo(1)[0]
    a, b = (d.assess(path, heatmap=True, checks="full") for d in (shipped_graph, default_detector))
    assert a.verdict == b.verdict and abs(a.probability - b.probability) <= 1e-4
    assert [c.name for c in a.checks] == [c.name for c in b.checks]
    assert max(abs(c.probability - d.probability) for c, d in zip(a.checks, b.checks)) <= 1e-4
    assert a.heatmap is not None and b.heatmap is not None
    assert np.allclose(a.heatmap.scores, b.heatmap.scores, atol=1e-4)


def test_damaged_shipped_graph_is_refused(tmp_path: Path) -> None:
    folder = shutil.copytree(default_detector_path(), tmp_path / "default")
    graph = next(folder.glob("graph-*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    graph.write_bytes(bytes(data))
    with pytest.raises(DamagedDetectorError, match=graph.name):
        load_graph(folder)


@pytest.fixture(scope="module")
def native_detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Detector, list[str], np.ndarray]:
    """A native-scale (dynamic H/W), texture-pooled probe with a sigmoid calibration on the embedded Lite0."""
    tmp = tmp_path_factory.mktemp("native")
    pre = create_backbone("effnet-lite0", device="cpu", tap_pool="texture").preprocess.at_native(160)
    bb = create_backbone("effnet-lite0", device="cpu", tap_pool="texture", preprocess=pre)
    paths = _demo(10) + [str(write_image(tmp / f"s{i}.png", synthetic_photo(64 + 24 * i, 80, seed=i)))
                         for i in range(3)]
    feats = [assemble_features(pooled, layers, "concat")
             for _, pooled, layers, _ in forward_batches(bb, [(p, p, [0]) for p in paths], taps=True, num_workers=0)]
    X = np.concatenate(feats)
    head = LogisticHead(C=0.1).fit(X, np.arange(len(X)) % 2)
    card = Card(threshold=0.5, backbone="effnet-lite0", weights_id=bb.weights_id, preprocess=pre, tap_pool="texture",
                features="concat", head="logreg", head_params={"C": 0.1}, n_features=X.shape[1],
                calibration=Calibration(method="sigmoid", a=0.6, b=0.3))
    return Detector(card, head, bb), paths, X


def test_native_scale_graph_with_calibration(native_detector: tuple[Detector, list[str], np.ndarray], tmp_path: Path) -> None:
    """Dynamic H/W (images below the model size keep theirs), texture statistics; the graph's card (metadata)
    calibrates its logit, and a recalibrated card needs no new graph."""
    det, paths, _ = native_detector
    out = export_onnx(det, tmp_path / "native.onnx")
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert card_json(out)["threshold"] == det.threshold
    ref = [p for _, p, _ in det.predict_paths(paths, num_workers=0)]
    graph = GraphDetector.load(out)
    got = [p for _, p, _ in graph.predict_paths(paths, num_workers=0)]
    assert None not in ref and max_abs_diff(ref, got) <= 1e-4
    def with_a(a: float) -> list[float | None]:
        card = det.card.model_copy(update={"calibration": Calibration(method="sigmoid", a=a, b=0.0)})
        return [p for _, p, _ in GraphDetector.load(out, card).predict_paths(paths[:3], num_workers=0)]

    plain, flipped = with_a(1.0), with_a(-1.0)  # sigmoid(-z) = 1 - sigmoid(z): the card calibrates, not the graph
    assert all(p is not None and f is not None and abs(f - (1 - p)) < 1e-6 for p, f in zip(plain, flipped))


def test_user_detector_is_exported_once_beside_it(native_detector: tuple[Detector, list[str], np.ndarray], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    det, paths, X = native_detector
    monkeypatch.setenv("SYNTHDET_CACHE", str(tmp_path / "cache"))
    folder = det.save(tmp_path / "mine")
    assert has_graph(folder) and not list(folder.glob("graph-*.onnx"))
    first = load_graph(folder)
    graph = next(folder.glob("graph-*.onnx"))
    stamp = graph.stat().st_mtime_ns
    second = load_graph(folder)
    assert second.path == first.path == graph and graph.stat().st_mtime_ns == stamp  # reused, not re-exported
    got = [p for _, p, _ in second.predict_paths(paths[:4], num_workers=0)]
    assert max_abs_diff([p for _, p, _ in det.predict_paths(paths[:4], num_workers=0)], got) <= 1e-4
    # a refitted head: a new key, never the stale graph
    Detector(det.card, LogisticHead(C=1.0).fit(X, (np.arange(len(X)) // 2) % 2), det.backbone).save(folder)
    assert load_graph(folder).path != graph


def test_folder_that_cannot_take_its_graph_exports_to_the_cache(
        native_detector: tuple[Detector, list[str], np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (an installed package, a mounted share) gets its graph in the cache instead. Simulated by
    a directory squatting on the graph's name: root writes into read-only folders regardless."""
    det, _, _ = native_detector
    monkeypatch.setenv("SYNTHDET_CACHE", str(tmp_path / "cache"))
    folder = det.save(tmp_path / "ro")
    graph_path(folder, det.card).mkdir()
    assert load_graph(folder).path.is_relative_to(tmp_path / "cache")


def test_export_cli_and_predict_runtime_onnx(native_detector: tuple[Detector, list[str], np.ndarray],
                                             tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthdet.cli import app

    det, paths, _ = native_detector
    folder = det.save(tmp_path / "mine")
    out = tmp_path / "d.onnx"
    res = CliRunner().invoke(app, ["export", str(folder), "--onnx", str(out)])
    assert res.exit_code == 0, res.output
    diff = float(res.output.split("max |Δprob| onnxruntime vs torch")[1].split()[0])
    assert diff <= 1e-4
    csv = tmp_path / "s.csv"
    res = CliRunner().invoke(app, ["predict", str(out), *paths[:3], "-o", str(csv), "--runtime", "onnx", "--quiet"])
    assert res.exit_code == 0, res.output
    got = [float(line.split(",")[1]) for line in csv.read_text().splitlines()[1:]]
    assert max_abs_diff(got, [p for _, p, _ in det.predict_paths(paths[:3], num_workers=0)]) <= 1e-4


# ------------------------------------------------------------------------------------------ the scoring install
def _no_torch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(NO_TORCH), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def test_scoring_install_scores_assesses_and_submits_without_torch(tmp_path: Path,
                                                                   shipped_graph: GraphDetector) -> None:
    """predict (one image, a folder to CSV, --assess --heatmap --json) and submit run with torch, timm, scikit-learn,
    scipy, matplotlib, safetensors, jinja2 and onnx all absent, and give the full install's numbers."""
    paths = _demo(6)
    folder = tmp_path / "test"
    folder.mkdir()
    for p in paths:
        shutil.copy(p, folder / Path(p).name)
    one = _no_torch("predict", paths[0], cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "p_fake=" in one.stdout
    rows = _no_torch("predict", str(folder), "-o", str(tmp_path / "s.csv"), "--quiet", cwd=tmp_path)
    assert rows.returncode == 0, rows.stderr
    got = {line.split(",")[0]: float(line.split(",")[1]) for line in (tmp_path / "s.csv").read_text().splitlines()[1:]}
    ref = {Path(p).name: prob for p, prob, _ in shipped_graph.predict_paths(sorted(folder.iterdir()), num_workers=0)}
    assert got.keys() == ref.keys() and max(abs(got[k] - ref[k]) for k in got) <= 1e-6
    assessed = _no_torch("predict", paths[1], "--assess", "--heatmap", "--json", cwd=tmp_path)
    assert assessed.returncode == 0, assessed.stderr
    (a,) = json.loads(assessed.stdout)
    assert len(a["checks"]) == 1 and len(a["heatmap"]["scores"]) == 3 and a["verdict"]
    sub = _no_torch("submit", str(folder), "-o", str(tmp_path / "run.csv"), "--quiet", cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    assert len((tmp_path / "run.csv").read_text().splitlines()) == len(paths) + 1


@pytest.mark.parametrize("command", ["train", "evaluate"])  # needs torch when it runs · when its module imports
def test_scoring_install_names_the_extra_for_training(command: str, tmp_path: Path, labelled_folder: Path) -> None:
    res = _no_torch(command, str(labelled_folder), "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"synthdet {command} needs" in lines[0] and "synthdet[train]" in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_scoring_install_serves_without_torch(tmp_path: Path) -> None:
    """``serve`` on the scoring install (+ ``[serve]``): ready, scoring and localizing (the shipped localizer's graph)
    with the [train] packages absent."""
    pytest.importorskip("fastapi")
    import socket
    import time
    import urllib.request
    import uuid

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(NO_TORCH), "serve", "--port", str(port), "--log-level", "warning"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert json.loads(r.read())["status"] == "ok"
                    break
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        path = Path(_demo(1)[0])
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        assert answer["name"] == path.name and 0 <= answer["probability"] <= 1
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/localize", data=path.read_bytes())
        with urllib.request.urlopen(req, timeout=30) as r:  # the shipped localizer, from its ONNX graph
            assert r.status == 200 and r.headers["X-Verdict"] in ("likely edited", "no edit found")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_auto_prefers_torch_on_a_cuda_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    import synthdet.engines.base as base

    monkeypatch.setattr(base, "cuda_machine", lambda: True)
    assert base.resolve_runtime("auto") == "torch" and base.resolve_runtime("onnx") == "onnx"
    monkeypatch.setattr(base, "cuda_machine", lambda: False)
    assert base.resolve_runtime("auto") == "onnx"
