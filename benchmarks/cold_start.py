"""Cold start: how long a new process takes to give one verdict, and ``serve`` to answer ``/healthz``.

Each figure is the median of ``--repeats`` fresh processes (wall clock, this machine, idle or not: say which), for
the scoring install (``tests/no_torch.py``: torch, timm, scikit-learn, scipy, matplotlib, safetensors, jinja2 and
onnx made unimportable, as if not installed) and for the full install with ``--runtime auto`` (the shipped graph on
onnxruntime) and ``--runtime torch`` (the reference). The import profile is ``python -X importtime`` of the
scoring-install predict: the slowest top-level imports, cumulative microseconds.

    python benchmarks/cold_start.py              # → benchmarks/results/cold_start.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import _common  # noqa: F401  (puts src/ on sys.path in a bare checkout)

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = ROOT / "tests" / "no_torch.py"
IMAGE = ROOT / "src" / "synthdet" / "demo_data"


def _image() -> Path:
    return sorted(p for p in IMAGE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))[0]


def _cli(install: str) -> list[str]:
    return [sys.executable, str(NO_TORCH)] if install == "scoring" else [sys.executable, "-m", "synthdet.cli"]


def time_predict(install: str, runtime: str, image: Path) -> float:
    start = time.perf_counter()
    subprocess.run([*_cli(install), "predict", str(image), "--runtime", runtime], check=True, capture_output=True)
    return time.perf_counter() - start


def time_serve_ready(install: str, runtime: str) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    proc = subprocess.Popen([*_cli(install), "serve", "--port", str(port), "--runtime", runtime, "--log-level",
                             "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"serve exited with {proc.returncode}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def import_profile(image: Path, top: int = 12) -> list[dict[str, object]]:
    """The slowest imports of a scoring-install predict (``-X importtime``, cumulative µs, top-level packages)."""
    res = subprocess.run([sys.executable, "-X", "importtime", str(NO_TORCH), "predict", str(image)],
                         capture_output=True, text=True, check=True)
    rows = []
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) <= 1:  # top-level imports of the process (indent 0 or 1)
            rows.append({"module": m.group(4), "cumulative_us": int(m.group(2))})
    return sorted(rows, key=lambda r: -int(r["cumulative_us"]))[:top]  # type: ignore[call-overload]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cold_start.json")
    args = ap.parse_args()
    image = _image()
    setups = [("scoring", "auto"), ("full", "auto"), ("full", "torch")]
    rows = []
    for install, runtime in setups:
        predict = [time_predict(install, runtime, image) for _ in range(args.repeats)]
        serve = [time_serve_ready(install, runtime) for _ in range(args.repeats)]
        rows.append({"install": install, "runtime": runtime, "predict_s": predict, "serve_ready_s": serve,
                     "predict_median_s": statistics.median(predict), "serve_ready_median_s": statistics.median(serve)})
        print(f"{install:8} {runtime:6} predict {statistics.median(predict):.2f} s  serve ready "
              f"{statistics.median(serve):.2f} s", flush=True)
    result = {"image": str(image.relative_to(ROOT)), "repeats": args.repeats, "machine": platform.machine(),
              "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(), "rows": rows,
              "imports": import_profile(image)}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| install | runtime | cold `predict one.jpg` (median, s) | `serve` ready (median, s) |", "|---|---|---|---|"]
    lines += [f"| {r['install']} | {r['runtime']} | {r['predict_median_s']:.2f} | {r['serve_ready_median_s']:.2f} |"
              for r in rows]
    lines += ["", "| import (scoring install, predict) | cumulative ms |", "|---|---|"]
    lines += [f"| {r['module']} | {int(r['cumulative_us']) / 1000:.0f} |" for r in result["imports"]]  # type: ignore[union-attr]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
