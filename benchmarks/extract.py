#!/usr/bin/env python
"""Feature extraction throughput: synthdet's real path vs a naive per-image loop, on the same images, in one run.

Paths timed (each warmed up once on a few images first, then timed over all images; ``--repeat R`` runs R
interleaved rounds and keeps each path's fastest):

- naive loop: ``Image.open(p).convert("RGB")`` full decode -> torchvision Resize/CenterCrop/ToTensor/Normalize (backbone
  mean/std) -> one forward per image (batch of 1) under ``torch.no_grad``.
- synthdet forward_batches: ``forward_batches(bb, [(p, p, [0]), ...], taps=False, ...)``: reduced decode, DataLoader
  workers, batching, inference_mode (bf16 autocast on CUDA).
- synthdet extract, cold: ``extract()`` into a fresh temporary FeatureStore (layer taps + writing the shards).
- synthdet extract, cached: the same ``extract()`` call again on the same store; it must compute 0.
- forward-only floor: the backbone on a preloaded random batch of ``--batch-size``, as forward_batches calls it.
- forward-only, batch 1: the same with a batch of one, for reading the naive loop (how much batching alone buys).

A second section times decoding alone for large JPEGs (full decode, then the box reduction every format gets): full decode vs
``load_image(..., draft_size=...)`` at the draft sizes the library uses (``preprocess.canonical_draft_size`` for view 0,
i.e. inference and this benchmark's synthdet rows; ``preprocess.draft_size`` for training views).

Compare the ratios, not the absolute numbers: they are all measured in one process, on one machine, in one run.

    python benchmarks/extract.py                                   # generated images, defaults
    python benchmarks/extract.py --images ../shared/data/dev/real --n 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, features

_SRC = Path(__file__).resolve().parents[1] / "src"
if (_SRC / "synthdet").is_dir():  # benchmark this checkout, installed or not
    sys.path.insert(0, str(_SRC))

from synthdet.backbones.base import Backbone, create_backbone  # noqa: E402
from synthdet.features.extract import FeatureStore, batch_size_default, extract, forward_batches, num_workers_default  # noqa: E402
from synthdet.io.pixels import ImageLoadError, is_image_path, load_image  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "extract.json"

#: The generated set cycles through these (name, size, format, save options).
KINDS = [
    ("large", (4000, 3000), "JPEG", {"quality": 92}),  # 12 Mpx camera-sized
    ("medium", (1024, 1024), "PNG", {"compress_level": 6}),  # generator-sized
    ("small", (500, 375), "JPEG", {"quality": 92}),  # web-sized
]
WARMUP = 4
NAIVE, FB, COLD, HOT = "naive loop", "synthdet forward_batches", "synthdet extract, cold", "synthdet extract, cached"
FLOOR, FLOOR1 = "forward-only floor", "forward-only, batch 1"


# --------------------------------------------------------------------------------------------------------------- images
def synth_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photo-like image from noise: smooth colour field + gradients + shapes (edges) + fine grain."""
    cells = rng.integers(0, 256, size=(max(2, h // 200), max(2, w // 200), 3), dtype=np.uint8)
    img = Image.fromarray(cells, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 20, w // 3)), y0 + int(rng.integers(h // 20, h // 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    arr = np.asarray(img, dtype=np.float32)
    arr += np.linspace(-40, 40, w, dtype=np.float32)[None, :, None]
    arr += np.linspace(-25, 25, h, dtype=np.float32)[:, None, None]
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * 4.0  # sensor-like grain
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def generate_images(folder: Path, n: int, seed: int = 0) -> list[tuple[Path, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind, (w, h), fmt, opts = KINDS[i % len(KINDS)]
        path = folder / f"{i:04d}_{kind}.{'jpg' if fmt == 'JPEG' else 'png'}"
        synth_image(rng, w, h).save(path, format=fmt, **opts)
        out.append((path, kind))
    return out


def pick_images(folder: Path, n: int) -> list[Path]:
    """``n`` images spread evenly over the sorted folder (deterministic, covers every source), decodable only."""
    allp = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p))
    if not allp:
        raise SystemExit(f"no images under {folder}")
    idx = np.unique(np.linspace(0, len(allp) - 1, min(n, len(allp))).round().astype(int))
    return [allp[i] for i in idx]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_transform(bb: Backbone):
    from torchvision import transforms as T

    pre = bb.preprocess
    return T.Compose([
        T.Resize(pre.size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(pre.size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])


def run_naive(bb: Backbone, paths: list[Path], tf) -> torch.Tensor:
    device = bb.device
    feats = []
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB")
            x = tf(img).unsqueeze(0).to(device)
            pooled, _ = bb(x)
            feats.append(pooled.cpu())
    return torch.cat(feats)


def run_forward_batches(bb: Backbone, paths: list[Path], batch_size: int, workers: int) -> tuple[torch.Tensor, int]:
    items = [(str(p), str(p), [0]) for p in paths]
    out = torch.zeros(len(paths), bb.embed_dim)
    n_err = 0
    for pairs, pooled, _layers, errors in forward_batches(
        bb, items, taps=False, batch_size=batch_size, num_workers=workers, progress=False
    ):
        n_err += len(errors)
        if pairs:
            out[[i for i, _ in pairs]] = pooled
    return out, n_err


@torch.inference_mode()
def run_floor(bb: Backbone, x: torch.Tensor, iters: int) -> None:
    """The backbone alone, called exactly as forward_batches calls it (same autocast, same output copies)."""
    device = bb.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in range(iters):
        with autocast:
            pooled, _ = bb(x, taps=False)
        pooled.float().cpu()


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers are joined, so counted)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, device: torch.device):
    """``(wall seconds, CPU seconds, result)`` of ``fn()``."""
    sync(device)
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def draft_sizes(pre) -> dict[str, int]:
    """The draft sizes the library decodes with: view 0 (canonical, if this version has it) and training views."""
    out = {}
    if hasattr(pre, "canonical_draft_size"):
        out["view 0"] = int(pre.canonical_draft_size)
    out["training views"] = int(pre.draft_size)
    return out


def decode_section(paths: list[Path], drafts: dict[str, int]) -> dict | None:
    """ms/image for large JPEGs: naive full decode, load_image without draft, load_image at each library draft size."""
    if not paths:
        return None
    methods = {
        "full decode (Image.open().convert)": lambda p: Image.open(p).convert("RGB"),
        "load_image (no draft)": lambda p: load_image(p),
    }
    for what, size in drafts.items():
        methods[f"load_image (draft_size={size}, {what})"] = lambda p, size=size: load_image(p, draft_size=size)
    passes = max(1, math.ceil(32 / len(paths)))  # at least 32 decodes per method
    rows = {}
    for name, fn in methods.items():
        fn(paths[0])  # warm-up
        sizes = set()
        t0 = time.perf_counter()
        for _ in range(passes):
            for p in paths:
                sizes.add(fn(p).size)
        dt = time.perf_counter() - t0
        rows[name] = {"ms_per_image": 1000 * dt / (passes * len(paths)),
                      "decoded_sizes": sorted(f"{w}x{h}" for w, h in sizes)}
    full = next(iter(rows.values()))["ms_per_image"]
    for r in rows.values():
        r["speedup_vs_full"] = full / r["ms_per_image"]
    src = set()
    for p in paths:
        with Image.open(p) as im:
            src.add(f"{im.size[0]}x{im.size[1]}")
    return {"images": len(paths), "passes": passes, "source_sizes": sorted(src), "draft_sizes": drafts, "methods": rows}


# ---------------------------------------------------------------------------------------------------------------- facts
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device) -> dict:
    import PIL
    import torchvision

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu_name(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ----------------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, help="use this folder (recursive) instead of a generated set")
    ap.add_argument("--n", type=int, default=48, help="number of images (default 48)")
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--batch-size", type=int, default=None, help="default: synthdet's (8 on CPU, 64 on CUDA)")
    ap.add_argument("--workers", type=int, default=None, help=f"DataLoader workers (default: synthdet's, {num_workers_default()} here)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in the main process (default: torch's, usually the core count)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="timed rounds; paths are interleaved round by round and each keeps its fastest (default 1)")
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = num_workers_default() if args.workers is None else args.workers
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="synthdet-bench-") as tmp:
        tmp = Path(tmp)
        # ---- images
        t0 = time.perf_counter()
        if args.images:
            source = str(args.images)
            picked = pick_images(args.images, args.n)
            kinds = {p: p.suffix.lower().lstrip(".") for p in picked}
        else:
            source = f"generated ({', '.join(f'{k} {w}x{h} {f}' for k, (w, h), f, _ in KINDS)})"
            gen_dir = tmp / "images"
            gen_dir.mkdir()
            with console.status(f"generating {args.n} images..."):
                gen = generate_images(gen_dir, args.n)
            picked = [p for p, _ in gen]
            kinds = dict(gen)
        gen_s = time.perf_counter() - t0
        paths, dropped = [], []
        for p in picked:  # every path gets the same decodable files; also warms the page cache for all of them
            try:
                load_image(p, draft_size=64)
                p.read_bytes()
                paths.append(p)
            except ImageLoadError as e:
                dropped.append(f"{p.name}: {e.reason}")
        if not paths:
            raise SystemExit("no decodable images")
        n = len(paths)
        sizes = []
        for p in paths:
            with Image.open(p) as im:
                sizes.append((im.size, im.format))
        kind_counts: dict[str, int] = {}
        for p in paths:
            kind_counts[kinds[p]] = kind_counts.get(kinds[p], 0) + 1
        mpx = sum(w * h for (w, h), _ in sizes) / 1e6
        nbytes = sum(p.stat().st_size for p in paths)
        shas = [sha256_file(p) for p in paths]  # computed by `synthdet index` in real use, not by extract()

        # ---- backbone
        with console.status(f"loading {args.backbone} on {device}..."):
            bb = create_backbone(args.backbone, device=device)
        args.batch_size = args.batch_size or batch_size_default(bb.device)
        pre = bb.preprocess
        facts = machine_facts(device)
        console.print(
            f"[bold]{args.backbone}[/] on {facts['device_name']} ({device}), torch threads {facts['torch_threads']}, "
            f"{facts['cpu_count']} CPUs, workers {workers}, batch {args.batch_size}\n"
            f"{n} images from {source}: {kind_counts}, {mpx:.1f} Mpx, {nbytes / 1e6:.1f} MB"
            + (f" ({len(dropped)} undecodable dropped)" if dropped else "")
        )
        warm = paths[: min(WARMUP, n)]
        warm_shas = shas[: len(warm)]
        tf = naive_transform(bb)
        results: dict[str, dict] = {}

        def record(name: str, seconds: float, cpu: float, images: int, **extra) -> None:
            """Keep the fastest of the rounds for each path."""
            if name not in results or seconds < results[name]["seconds"]:
                results[name] = {"images": images, "seconds": seconds, "images_per_s": images / seconds,
                                 "cpu_seconds": cpu, "cpu_ms_per_image": 1000 * cpu / images, **extra}

        str_paths = [str(p) for p in paths]
        x = torch.randn(args.batch_size, 3, pre.size, pre.size, device=device)
        x1 = x[:1].clone()
        iters = max(3, math.ceil(n / args.batch_size))
        iters1 = min(n, 32)

        # ---- warm-up: every path once on a few images (workers, allocator, cuDNN/oneDNN kernels, page cache)
        with console.status("warm-up..."):
            run_naive(bb, warm, tf)
            run_forward_batches(bb, warm, args.batch_size, workers)
            warm_store = FeatureStore.for_backbone(bb, tmp / "store-warmup")
            extract(bb, [str(p) for p in warm], warm_shas, warm_store, batch_size=args.batch_size, num_workers=workers,
                    progress=False)
            run_floor(bb, x, 1)
            run_floor(bb, x1, 2)

        load_before = os.getloadavg()
        rounds = max(1, args.repeat)
        for r in range(rounds):
            tag = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
            with console.status(f"naive loop{tag}..."):
                dt, cpu, naive_feats = timed(lambda: run_naive(bb, paths, tf), device)
            record(NAIVE, dt, cpu, n)

            with console.status(f"synthdet forward_batches{tag}..."):
                dt, cpu, (fb_feats, fb_err) = timed(lambda: run_forward_batches(bb, paths, args.batch_size, workers), device)
            record(FB, dt, cpu, n - fb_err, errors=fb_err)

            with console.status(f"synthdet extract, cold then cached{tag}..."):
                store = FeatureStore.for_backbone(bb, tmp / f"store-{r}")
                dt, cpu, cold = timed(lambda s=store: extract(bb, str_paths, shas, s, batch_size=args.batch_size,
                                                         num_workers=workers, progress=False), device)
                record(COLD, dt, cpu, n, computed=cold.computed, cached=cold.cached,
                       skipped=len(cold.skipped))
                dt, cpu, hot = timed(lambda s=store: extract(bb, str_paths, shas, s, batch_size=args.batch_size,
                                                        num_workers=workers, progress=False), device)
                record(HOT, dt, cpu, n, computed=hot.computed, cached=hot.cached,
                       skipped=len(hot.skipped))

            with console.status(f"forward-only floor{tag}..."):
                dt, cpu, _ = timed(lambda: run_floor(bb, x, iters), device)
                record(FLOOR, dt, cpu, iters * args.batch_size, batch=args.batch_size, batches=iters)
                dt, cpu, _ = timed(lambda: run_floor(bb, x1, iters1), device)
                record(FLOOR1, dt, cpu, iters1, batch=1, batches=iters1)
        load_after = os.getloadavg()

        # ---- decode alone, large JPEGs (those whose short side lets draft pick a 1/2 or smaller DCT scale)
        drafts = draft_sizes(pre)
        min_draft = min(drafts.values())
        big = [p for p, ((w, h), fmt) in zip(paths, sizes) if fmt == "JPEG" and min(w, h) // min_draft >= 2]
        with console.status(f"decode: {len(big)} large JPEGs..."):
            decode = decode_section(big, drafts)

    # ---- sanity: both paths computed comparable features (they differ by design: synthdet re-encodes JPEG q90,
    # draft-decodes, crops before resizing; bf16 on CUDA)
    cos = torch.nn.functional.cosine_similarity(naive_feats.float(), fb_feats.float(), dim=1)
    sanity = {"cosine_naive_vs_synthdet_mean": float(cos.mean()), "cosine_min": float(cos.min())}

    ips = {k: v["images_per_s"] for k, v in results.items()}
    ratios = {
        "synthdet/naive": ips[FB] / ips[NAIVE],
        "synthdet/floor": ips[FB] / ips[FLOOR],
        "extract_cold/naive": ips[COLD] / ips[NAIVE],
        "naive/floor": ips[NAIVE] / ips[FLOOR],
        "floor_batch1/floor": ips[FLOOR1] / ips[FLOOR],
        # the same comparison in CPU time per image: less sensitive to other jobs on a shared machine
        "synthdet/naive_cpu": results[NAIVE]["cpu_ms_per_image"] / results[FB]["cpu_ms_per_image"],
    }

    # ---- print
    table = Table(title=f"feature extraction: {args.backbone} on {device}, {n} images, batch {args.batch_size}, "
                        f"workers {workers}, best of {rounds}")
    for col, just in [("path", "left"), ("images", "right"), ("seconds", "right"), ("images/s", "right"),
                      ("ms/image", "right"), ("CPU ms/image", "right"), ("vs naive", "right"), ("note", "left")]:
        table.add_column(col, justify=just)
    for name, r in results.items():
        if "computed" in r:
            note = f"computed {r['computed']}, cached {r['cached']}" + (f", skipped {r['skipped']}" if r["skipped"] else "")
        elif "batch" in r:
            note = f"{r['batches']} x batch {r['batch']}, random input"
        else:
            note = f"{r['errors']} errors" if r.get("errors") else ""
        table.add_row(
            name, str(r["images"]), f"{r['seconds']:.3f}", f"{r['images_per_s']:,.1f}",
            f"{1000 / r['images_per_s']:.2f}", f"{r['cpu_ms_per_image']:.1f}", f"{r['images_per_s'] / ips[NAIVE]:,.2f}x",
            note,
        )
    console.print(table)
    console.print(
        f"synthdet/naive = [bold]{ratios['synthdet/naive']:.2f}x[/]   "
        f"synthdet/floor = [bold]{ratios['synthdet/floor']:.2f}[/] (share of forward-only throughput reached)   "
        f"naive/floor = {ratios['naive/floor']:.2f}   extract cold/naive = {ratios['extract_cold/naive']:.2f}x   "
        f"synthdet/naive in CPU time = {ratios['synthdet/naive_cpu']:.2f}x"
    )
    busy = max(load_before[0], load_after[0]) > (facts["cpu_count"] or 1) + 0.5
    console.print(
        f"load average (1 min) before/after timing: {load_before[0]:.2f} / {load_after[0]:.2f} on {facts['cpu_count']} CPUs"
        + ("  [yellow]busy machine: numbers are noisy, and batch-1 forwards with more than 1 torch thread suffer most "
           "(compare --threads 1)[/]" if busy else "")
    )
    console.print(
        f"sanity: cosine(naive, synthdet) features mean {sanity['cosine_naive_vs_synthdet_mean']:.3f}, "
        f"min {sanity['cosine_min']:.3f}"
    )
    if decode:
        src = decode["source_sizes"]
        dt_ = Table(title=f"decode only: {decode['images']} large JPEGs ({', '.join(src[:3])}"
                          f"{', ...' if len(src) > 3 else ''})")
        dt_.add_column("method")
        dt_.add_column("decoded to", justify="right")
        dt_.add_column("ms/image", justify="right")
        dt_.add_column("speed-up vs full", justify="right")
        for name, r in decode["methods"].items():
            ds = r["decoded_sizes"]
            dt_.add_row(name, ", ".join(ds[:3]) + (", ..." if len(ds) > 3 else ""), f"{r['ms_per_image']:.1f}", f"{r['speedup_vs_full']:.2f}x")
        console.print(dt_)
    else:
        console.print(
            f"decode only: skipped, no JPEG with short side >= {2 * min_draft} px "
            f"(draft sizes {drafts}; smaller JPEGs decode at full size either way)"
        )

    report = {
        "benchmark": "extract",
        "config": {
            "images": source, "n_requested": args.n, "n": n, "dropped": dropped, "backbone": args.backbone,
            "backbone_id": bb.id, "batch_size": args.batch_size, "workers": workers, "device": str(device),
            "warmup_images": len(warm), "rounds": rounds, "threads": torch.get_num_threads(), "draft_sizes": drafts,
            "preprocess": pre.model_dump(mode="json"),
        },
        "machine": facts,
        "image_set": {"kinds": kind_counts, "megapixels": mpx, "bytes": nbytes, "setup_seconds": gen_s},
        "results": results,
        "ratios": ratios,
        "decode": decode,
        "sanity": sanity,
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
