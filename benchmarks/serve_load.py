"""Load on ``synthdet serve``: concurrent clients on loopback, micro-batching on vs off, vs offline ``predict``.

Starts the real service (``python -m synthdet.cli serve``, a subprocess) once per batching setting, sends every
image once per concurrency level from N asyncio clients (httpx, raw body, ``POST /v1/score``), and records p50/p99
latency, images/s and the server's peak RSS (``VmHWM``). The offline rows score the same images in one process:
``Detector.predict_paths`` over the files (what ``synthdet predict`` does) and :func:`synthdet.detectors.assess.assess_images`
(the service's work without HTTP). Clients, server and offline runs share this machine's cores: on a small shared
box the figures are ratios measured in one run, not capacities.

    python benchmarks/serve_load.py                        # 64 dev images (or generated ones), checks off
    python benchmarks/serve_load.py --n 128 --checks quick # each request also scores its re-shared copy
    python benchmarks/serve_load.py --checks all --batching on   # checks off, quick and full against one server

After the load, each server gets one 48-Mpx paletted PNG (a 150 kB upload): its RSS (``VmRSS``) before and after
shows whether a large decode's memory went back to the OS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts src/ on sys.path in a bare checkout)
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "dev"


def pick_images(n: int, tmp: Path) -> tuple[list[Path], str]:
    """``n`` files spread over the dev data (real and fake), or generated photo-like JPEGs when it is absent."""
    files = sorted(p for p in DEV.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if files:
        idx = np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)
        return [files[i] for i in idx], f"{DEV} ({len(files)} files, {min(n, len(files))} spread evenly)"
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = (rng.normal(128, 40, (384, 512, 3)).clip(0, 255)).astype(np.uint8)
        out.append(tmp / f"g{i:03d}.jpg")
        Image.fromarray(arr).save(out[-1], quality=90)
    return out, f"{n} generated 512x384 JPEGs (../shared absent)"


def peak_rss_mb(pid: int, key: str = "VmHWM") -> float:
    """A process's peak RSS (``VmHWM``), or its RSS now (``key="VmRSS"``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(port: int, max_batch: int, max_wait_ms: float, detector: str | None,
                 limits: str = "open") -> subprocess.Popen:
    """``synthdet serve`` in a subprocess: with ``limits="open"`` a queue and timeout no load reaches (capacity),
    with ``"default"`` the service's own defaults (queue 32, timeout 30 s: what overload does to clients)."""
    import httpx

    open_limits = ["--queue", "1024", "--timeout", "600"] if limits == "open" else []
    cmd = [sys.executable, "-m", "synthdet.cli", "serve", *([detector] if detector else []), "--port", str(port),
           *open_limits, "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning",
           "--max-connections-per-client", "1024"]  # the clients below all come from 127.0.0.1
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start within 180 s")


async def load(url: str, payloads: list[bytes], clients: int) -> dict:
    """Every payload once, from ``clients`` concurrent clients; latencies of the 200s, and the others counted."""
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)
    latencies: list[float] = []
    failures: dict[str, int] = {}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await http.post(url, content=body)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures[str(r.status_code)] = failures.get(str(r.status_code), 0) + 1

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await http.post(url, content=payloads[0])  # warm-up
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"clients": clients, "requests": len(payloads), "ok": len(latencies), "failures": failures,
            "wall_s": round(wall, 3), "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None}


def big_image_rss(pid: int, port: int) -> dict:
    """The server's RSS before and after one 8000×6000 paletted PNG (48 Mpx; 192 MB as palette plus RGB)."""
    import io

    import httpx
    from PIL import Image

    img = Image.new("P", (8000, 6000), 7)
    img.putpalette([(i * 37) % 256 for i in range(768)])
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    before = peak_rss_mb(pid, "VmRSS")
    status = httpx.post(f"http://127.0.0.1:{port}/v1/score?checks=false", content=buf.getvalue(), timeout=600).status_code
    return {"big_image": "8000x6000 paletted PNG", "status": status, "rss_before_mb": round(before, 1),
            "rss_after_mb": round(peak_rss_mb(pid, "VmRSS"), 1)}


def offline(paths: list[Path], payloads: list[bytes], checks: str, detector: str | None) -> list[dict]:
    import torch

    from synthdet.detectors.assess import assess_images
    from synthdet.detectors.loading import load_detector

    det = load_detector(detector)
    _ = det.backbone
    rows = []
    list(det.predict_paths(paths[:2], num_workers=0))  # warm-up
    t0 = time.perf_counter()
    n = sum(p is not None for _, p, _ in det.predict_paths(paths, num_workers=0))
    wall = time.perf_counter() - t0
    rows.append({"path": "offline predict_paths (synthdet predict)", "images": n, "wall_s": round(wall, 3),
                 "images_per_s": round(n / wall, 2), "threads": torch.get_num_threads()})
    t0 = time.perf_counter()
    res = assess_images(det, payloads, checks=checks, evidence=True)
    wall = time.perf_counter() - t0
    n = sum(not isinstance(r, Exception) for r in res)
    rows.append({"path": f"offline assess_images (checks={checks})", "images": n,
                 "wall_s": round(wall, 3), "images_per_s": round(n / wall, 2), "threads": torch.get_num_threads()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="images (each sent once per concurrency level)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--checks", choices=["off", "quick", "full", "all"], default="off",
                    help="the stability checks each request scores (all: off, quick, full against the same server)")
    ap.add_argument("--batching", choices=["both", "on", "off"], default="both",
                    help="servers to start: micro-batching on (--max-batch), off (1), or one after the other")
    ap.add_argument("--max-batch", type=int, default=8, help="micro-batching on: requests per forward pass")
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--detector", default=None, help="detector folder (default: the shipped one)")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    ap.add_argument("--limits", choices=["open", "default"], default="open",
                    help="open: queue and timeout out of reach (capacity); default: the service's own (overload)")
    ap.add_argument("--no-offline", action="store_true", help="skip the offline rows")
    args = ap.parse_args()

    from synthdet.io.atomic import write_text

    with tempfile.TemporaryDirectory() as tmp:
        paths, source = pick_images(args.n, Path(tmp))
        payloads = [p.read_bytes() for p in paths]
        levels = ["off", "quick", "full"] if args.checks == "all" else [args.checks]
        offline_rows = [] if args.no_offline else [
            row for checks in levels for row in offline(paths, payloads, checks, args.detector)]
        served, memory = [], []
        servers = [("micro-batching on", args.max_batch), ("micro-batching off", 1)]
        for label, max_batch in [x for x in servers if args.batching in ("both", x[0].rsplit(" ", 1)[1])]:
            proc = start_server(args.port, max_batch, args.max_wait_ms, args.detector, args.limits)
            try:
                for checks in levels:
                    url = f"http://127.0.0.1:{args.port}/v1/score?checks={checks}"
                    for c in args.clients:
                        cpu = cpu_seconds(proc.pid)
                        row = asyncio.run(load(url, payloads, c))
                        row["server_cpu_ms_per_request"] = round(1e3 * (cpu_seconds(proc.pid) - cpu) / (len(payloads) + 1), 1)
                        served.append({"server": label, "max_batch": max_batch, "checks": checks, **row})
                rss = peak_rss_mb(proc.pid)
                for row in served:
                    if row["server"] == label:
                        row["server_peak_rss_mb"] = round(rss, 1)
                memory.append({"server": label, **big_image_rss(proc.pid, args.port)})
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    result = {
        "what": "POST /v1/score (raw body) on loopback; every image once per concurrency level",
        "images": source, "checks": args.checks, "max_wait_ms": args.max_wait_ms, "limits": args.limits,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared by clients, server and other jobs "
                   f"(load average {os.getloadavg()[0]:.1f} at the end); OMP_NUM_THREADS="
                   f"{os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "offline": offline_rows, "served": served, "big_image_memory": memory,
    }
    write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(f"images: {source}; checks {args.checks}; {result['machine']}")
    print(f"{'path':<44} {'checks':>6} {'clients':>7} {'ok/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'statuses':>18} "
          f"{'CPU ms/req':>10} {'RSS MB':>7}")
    for r in offline_rows:
        print(f"{r['path']:<44} {'-':>6} {'-':>7} {r['images_per_s']:>7} {'-':>8} {'-':>8} {'-':>8} {'-':>18} {'-':>10} {'-':>7}")
    for r in served:
        mix = " ".join(f"{k}:{v}" for k, v in {"200": r["ok"], **r["failures"]}.items())
        print(f"{'serve, ' + r['server']:<44} {r['checks']:>6} {r['clients']:>7} {r['images_per_s']:>7} {r['p50_ms']!s:>8} "
              f"{r['p95_ms']!s:>8} {r['p99_ms']!s:>8} {mix:>18} {r['server_cpu_ms_per_request']:>10} "
              f"{r['server_peak_rss_mb']:>7}")
    for m in memory:
        print(f"serve, {m['server']}: one {m['big_image']} ({m['status']}): RSS {m['rss_before_mb']} → "
              f"{m['rss_after_mb']} MB")
    print(f"→ {args.json}")


if __name__ == "__main__":
    main()
