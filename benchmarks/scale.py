#!/usr/bin/env python
"""Scoring at scale: images/s, CPU time per image and peak RSS of ``score_stream`` (listing, decoding, forward,
parquet parts, merge) for N generated files, local engine vs Ray (1 and 2 actors), torch vs onnxruntime, against the
forward-only floors (the network alone on preloaded tensors, one thread, same batch size) measured in the same run:
``floor-torch`` runs the backbone as the library does (``channels_last``, BatchNorm folded), ``floor-torch-unfolded``
keeps the BatchNorm, ``floor-torch-nchw`` also runs on default-layout tensors (how it ran before), ``floor-onnx`` the exported graph
in onnxruntime. Two ratios per row: CPU time per image over the floor's (``cpu_per_image_vs_*``: what a pipeline
adds to the network), and images/s over the machine's floor (``throughput_vs_*``: every core running the network
alone at the floor's CPU time per image). Pipelines run with every core (``--threads``; the library leaves the
decoding workers theirs).

Pools (``--pool-kind``): ``photo``, photo-like images of 0.3-12 Mpx (JPEG and PNG), for throughput; ``tiny``,
64-128 px images, for the pipeline's own cost and memory at 10k-100k files (the network's cost is small there).

Each configuration runs in its own subprocess (so its peak RSS is its own: ``ru_maxrss`` of that process and its
waited children; Ray's workers are not children of the driver, so for Ray only the driver is counted). Files: a
pool of ``--pool`` distinct generated photos (mixed sizes, JPEG and PNG) hard-linked ``N`` times under different
names, so decoding costs what real files cost and disk stays small. Compare ratios, not absolute numbers: the
machine is shared, and all rows come from one run.

    python benchmarks/scale.py --n 1000                 # writes benchmarks/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from extract import synth_image  # noqa: E402

SIZES = {
    "photo": [(640, 480), (1024, 768), (1600, 1200), (480, 640), (800, 800), (2048, 1536), (4000, 3000), (1024, 1024)],
    "tiny": [(96, 64), (64, 96), (128, 128), (112, 80)],
}
CONFIGS = ["floor-torch", "floor-torch-unfolded", "floor-torch-nchw", "floor-onnx", "local-torch", "local-onnx", "ray-1", "ray-2"]


def make_folder(root: Path, n: int, pool: int, kind: str = "photo") -> Path:
    rng = np.random.default_rng(0)
    src = root / "pool"
    src.mkdir(parents=True)
    files = []
    for i in range(pool):
        w, h = SIZES[kind][i % len(SIZES[kind])]
        path = src / (f"p{i}.jpg" if i % 4 else f"p{i}.png")
        synth_image(rng, w, h).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))
        files.append(path)
    data = root / "data"
    for i in range(n):
        sub = data / f"d{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        os.link(files[i % pool], sub / f"img{i:07d}{files[i % pool].suffix}")
    return data


def run_one(config: str, folder: Path, out: Path, batch_size: int, threads: int) -> dict:
    """One configuration in this process; returns its timing."""
    import torch

    from synthdet.detectors.loading import load_detector
    from synthdet.engines.base import create_engine
    from synthdet.engines.stream import score_stream
    from synthdet.features.extract import assemble_features

    # floors: one thread, the most CPU-efficient way to run the network (their CPU ms per image is the yardstick);
    # pipelines: every core (decoding workers run one thread each), as a user's run does
    torch.set_num_threads(1 if config.startswith("floor") else threads)
    n_floor = 256
    if config.startswith("floor"):
        det = load_detector()
        size = det.card.preprocess.size
        x = torch.randn(batch_size, 3, size, size)
        if config.startswith("floor-torch"):
            bb = det.backbone
            if config == "floor-torch-nchw":
                bb.channels_last = False
                bb.model.to(memory_format=torch.contiguous_format)
            elif config == "floor-torch":
                bb.fold_batchnorm()  # as the library's inference path does

            def step() -> None:
                with torch.inference_mode():
                    p, ls = bb(x, taps=det.card.features == "concat")
                    det.predict_features(assemble_features(p, ls, det.card.features))
        else:
            sess = create_engine("onnx").load().backbone

            def step() -> None:
                sess(x)
        step()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n_floor // batch_size):
            step()
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"images": n_floor // batch_size * batch_size, "seconds": dt, "cpu_seconds": cpu}
    if config == "local-torch":
        scorer = create_engine("local").load()
    elif config == "local-onnx":
        scorer = create_engine("onnx").load()
    else:
        import ray

        actors = int(config.split("-")[1])
        ray.init(num_cpus=actors + 1, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        scorer = create_engine("ray", actors=actors).load()
    t0, c0 = time.perf_counter(), _cpu()
    res = score_stream(scorer, [folder], out, batch_size=batch_size)
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"images": res.scored, "skipped": res.skipped, "seconds": dt,
            "cpu_seconds": None if config.startswith("ray") else cpu}  # Ray's workers are not our children


def _cpu() -> float:
    """CPU seconds of this process and its waited children (the decoding workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def table(results: list[dict]) -> str:
    """Markdown rows of result JSONs: images/s, CPU ms per image and its ratio to each floor, peak RSS."""
    out = ["| files | configuration | images/s | CPU ms/image | × torch floor | × old torch floor | × onnx floor "
           "| peak RSS MB (main / largest worker) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for res in results:
        for name, r in res["rows"].items():
            if "images_per_s" not in r:
                out.append(f"| {res['n_files']:,} {res['pool_kind']} | {name} | error: {r.get('error')} | | | | | |")
                continue
            floors = [res["rows"].get(f, {}).get("cpu_ms_per_image") for f in ("floor-torch", "floor-torch-nchw", "floor-onnx")]
            cells = [f"{r['cpu_ms_per_image'] / f:.2f}" if f and r.get("cpu_ms_per_image") else "" for f in floors]
            cpu = f"{r['cpu_ms_per_image']:.1f}" if r.get("cpu_ms_per_image") else "(not counted)"
            files = "" if name.startswith("floor") else f"{res['n_files']:,} "
            out.append(f"| {files}{res['pool_kind']} | {name} | {r['images_per_s']:.1f} | {cpu} | {' | '.join(cells)} "
                       f"| {r['peak_rss_mb']:.0f} / {r['peak_rss_worker_mb']:.0f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=24)
    ap.add_argument("--pool-kind", choices=sorted(SIZES), default="photo")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the local pipelines")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json", type=Path, default=HERE / "results" / "scale.json")
    ap.add_argument("--note", default="compare ratios within this run", help="what else ran on the machine")
    ap.add_argument("--table", nargs="+", type=Path, help="print the markdown table of these result JSONs and exit")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(f.read_text()) for f in args.table]))
        return
    if args.one:
        row = run_one(args.one, args.folder, args.out, args.batch_size, args.threads)
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["peak_rss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(json.dumps(row))
        return
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp), args.n, args.pool, args.pool_kind)
        for config in args.configs.split(","):
            cmd = [sys.executable, __file__, "--one", config, "--folder", str(folder), "--out",
                   str(Path(tmp) / f"{config}.parquet"), "--batch-size", str(args.batch_size),
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                rows[config] = {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
            else:
                rows[config] = json.loads(res.stdout.strip().splitlines()[-1])
                r = rows[config]
                r["images_per_s"] = r["images"] / r["seconds"]
                if r.get("cpu_seconds") is not None:
                    r["cpu_ms_per_image"] = 1000 * r["cpu_seconds"] / max(1, r["images"])
            print(config, rows[config], flush=True)
    cpus = len(os.sched_getaffinity(0))
    for floor_name in ("floor-torch", "floor-torch-unfolded", "floor-torch-nchw", "floor-onnx"):
        floor = rows.get(floor_name, {})
        if not floor.get("cpu_ms_per_image"):
            continue
        # the machine's floor: every core running the network alone, at the floor's CPU time per image
        floor["machine_images_per_s"] = cpus * 1000 / floor["cpu_ms_per_image"]
        for name, r in rows.items():
            if "images_per_s" in r and not name.startswith("floor"):
                r[f"throughput_vs_{floor_name}"] = r["images_per_s"] / floor["machine_images_per_s"]
            if r.get("cpu_ms_per_image"):
                r[f"cpu_per_image_vs_{floor_name}"] = r["cpu_ms_per_image"] / floor["cpu_ms_per_image"]
    result = {
        "what": "score_stream over N generated files (hard links of a pool of distinct photos), one process per row",
        "n_files": args.n, "pool": args.pool, "pool_kind": args.pool_kind, "batch_size": args.batch_size,
        "sizes": SIZES[args.pool_kind],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "cpus_usable": len(os.sched_getaffinity(0)), "pipeline_threads": args.threads},
        "note": args.note,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
