"""The compact development data shipped inside the package (see ``CREDITS.md``), for the demo and tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def demo_data_dir() -> Path:
    """Folder with ``manifest.csv`` (path,label,source,generator,licence) and ``real/``, ``fake/`` images."""
    path = Path(str(resources.files("synthdet") / "demo_data"))
    if not (path / "manifest.csv").is_file():
        raise FileNotFoundError(f"{path}: demo data missing from this installation (rebuild: scripts/build_demo_data.py)")
    return path
