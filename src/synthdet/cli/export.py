"""``synthdet export``: a detector as one portable ONNX graph (see :mod:`synthdet.engines.onnx_export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from synthdet.cli._io import Quiet, fail, note


def export(
    detector: Annotated[Path | None, typer.Argument(help="Detector folder (default: the shipped one).")] = None,
    onnx: Annotated[Path | None, typer.Option("--onnx", help="ONNX file to write.")] = None,
    check: Annotated[bool, typer.Option(help="Score the demo images with torch and onnxruntime; report max |Δprob|.")] = True,
    quiet: Quiet = False,
) -> None:
    """Export backbone + head (+ calibration) as one ONNX graph with a dynamic batch (and H/W at native scale)."""
    from synthdet.data.demo import demo_data_dir
    from synthdet.detectors.detector import Detector
    from synthdet.detectors.graph import GraphDetector
    from synthdet.detectors.loading import load_detector
    from synthdet.engines.onnx_export import export_onnx, max_abs_diff
    from synthdet.engines.stream import scan_images
    from synthdet.io.atomic import printable

    if onnx is None:
        raise fail("say what to write: --onnx FILE")
    det = load_detector(detector)
    if not isinstance(det, Detector):
        raise fail("an ensemble has no single graph: export each member")
    export_onnx(det, onnx)
    msg = f"wrote {printable(onnx)} ({onnx.stat().st_size / 1e6:.1f} MB)"
    if check:
        paths = sorted(scan_images(demo_data_dir()))[:16]
        ref = [p for _, p, _ in det.predict_paths(paths, num_workers=0)]
        got = [p for _, p, _ in GraphDetector.load(onnx).predict_paths(paths, num_workers=0)]
        msg += f"; max |Δprob| onnxruntime vs torch {max_abs_diff(ref, got):.2e} on {len(paths)} demo images"
    if not quiet:
        note(msg)
