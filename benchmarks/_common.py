"""What the benchmarks on the development data share: the import fallback and their common options."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

try:
    import synthdet  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

if TYPE_CHECKING:
    from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT.parent / "shared" / "data" / "dev" / "manifest.csv"


def dev_data_parser(description: str, default_json: Path) -> argparse.ArgumentParser:
    """Options every dev-data benchmark takes: data, backbone, cache, views, workers, JSON output."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="CSV path,label[,…] or a data folder")
    ap.add_argument("--backbone", default="effnet-lite0")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache root (default: synthdet's)")
    ap.add_argument("--views", type=int, default=4, help="cached views per fit image (view 0 + augmentations)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers for extraction and scoring")
    ap.add_argument("--json", type=Path, default=default_json)
    return ap


def data_missing(manifest: Path, console: Console) -> bool:
    """Say so and return True when the shared development data is absent, so the benchmark skips cleanly."""
    if manifest.exists():
        return False
    console.print(f"[yellow]skipped[/]: {manifest} not found (the shared development data is absent)")
    return True
