"""Where pretrained weights come from, and the one call that may download them.

Weights come from, in order: an explicit ``weights=FILE``; the packaged file (embedded backbones); the Hugging Face
cache, read offline. Nothing is ever downloaded at run time (importing this module sets ``HF_HUB_OFFLINE=1`` unless
the user chose otherwise); a missing file raises :class:`WeightsNotFoundError` saying what to place where.
:func:`fetch_weights` (``synthdet weights fetch``) downloads into that cache, in a child process.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn

from synthdet.backbones.base import BACKBONE_PREFIXES, BACKBONES, prefix_of, qualified_name

_OFFLINE_BY_USER = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time; set before any hub import


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on this machine; the message says which file to place where."""


def resolve_weights(explicit: str | Path | None, default: Path | None, hint: str) -> Path:
    """The weights file to load: ``explicit`` if given, else ``default``; one that does not exist raises
    :class:`WeightsNotFoundError` ending in ``hint`` (what to install or pass)."""
    path = Path(explicit) if explicit else default
    if path is None or not path.is_file():
        where = f"'{path}' does not exist" if path else "no weights file"
        raise WeightsNotFoundError(f"{where}. {hint}")
    return path


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict whose keys differ in naming but match in order and shape (e.g. lukemelas → timm)."""
    target = model.state_dict()
    if len(target) != len(state):
        raise ValueError(f"weights have {len(state)} tensors, model expects {len(target)}")
    mapped = {}
    for (k, v_model), (k_src, v) in zip(target.items(), state.items()):
        if v_model.shape != v.shape:
            raise ValueError(f"shape mismatch at {k} ({tuple(v_model.shape)}) vs {k_src} ({tuple(v.shape)})")
        mapped[k] = v
    model.load_state_dict(mapped)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a torch checkpoint (also one wrapped the way training scripts save
    it, under ``state_dict``, ``model`` or ``module``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return state


@cache
def _file_digest(path: str, mtime: float, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:12]


def file_digest(path: str | Path) -> str:
    """Short content hash of a weights file (the weights part of a backbone's identity), computed once per version
    of the file."""
    st = os.stat(path)
    return _file_digest(str(path), st.st_mtime, st.st_size)


def hf_cached_file(repo: str, filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` in the Hugging Face cache of hub repo ``repo``, found without any network call."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def hf_snapshot_folder(repo: str) -> Path:
    """Where the Hugging Face cache keeps ``repo``'s files (for messages saying what to place where)."""
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>"


_FETCH_SCRIPT = """
import sys
kind, arch, tag = sys.argv[1:4]
if kind == "timm":
    import timm
    timm.create_model(arch, pretrained=True)
else:
    import open_clip
    open_clip.create_model(arch, pretrained=tag, require_pretrained=True)
"""


def _fetch_target(name: str) -> tuple[str, str, str]:
    if name in BACKBONES:
        meta = BACKBONES.meta(name)
        if not meta.get("source"):
            raise ValueError(f"{name}: nothing to fetch. {meta['weights_hint']}")
        name = meta["source"]
    prefix, rest = prefix_of(name)
    if BACKBONE_PREFIXES.meta(prefix).get("members"):
        raise ValueError(f"{name}: a pair has no weights of its own; fetch each member's")
    if BACKBONE_PREFIXES.meta(prefix).get("wraps"):
        return _fetch_target(qualified_name(rest))
    if prefix == "timm":
        return "timm", rest, ""
    arch, _, tag = rest.partition("/")
    return "open_clip", arch, tag


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``, through the environment's proxy) gives no HTTP answer within
    ``timeout`` seconds, DNS included; None when it answers (any status)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:  # an answer, even 4xx/5xx: the hub is there
            result.append(None)
        except (urllib.error.URLError, OSError) as e:
            result.append(f"{urlsplit(endpoint).netloc}: {getattr(e, 'reason', e)}")

    thread = threading.Thread(target=probe, daemon=True)  # a hanging DNS lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return result[0] if result else f"no answer from {endpoint} within {timeout:g}s"


def fetch_weights(name: str, *, timeout: float = 600.0, connect_timeout: float = 3.0) -> None:
    """Download a backbone's weights into the Hugging Face cache (the one call allowed to use the network).

    Fails within ``connect_timeout`` seconds when ``HF_HUB_OFFLINE`` was set by the user or the hub does not answer;
    otherwise downloads in a child process with the hub online, so this process stays offline. Raises
    ``RuntimeError`` saying why and what to do instead.
    """
    import subprocess
    import sys

    kind, arch, tag = _fetch_target(name)
    instead = (f"run `synthdet weights fetch {name}` on a machine that can reach the hub and copy ~/.cache/huggingface "
               f"here, or pass --weights FILE")
    if _OFFLINE_BY_USER:
        raise RuntimeError(f"{name}: HF_HUB_OFFLINE is set in the environment; unset it to download, or {instead}")
    if (why := hub_unreachable(connect_timeout)) is not None:
        raise RuntimeError(f"{name}: the Hugging Face hub cannot be reached ({why}); {instead}")
    env = {**os.environ, "HF_HUB_OFFLINE": "0"}
    try:
        proc = subprocess.run([sys.executable, "-c", _FETCH_SCRIPT, kind, arch, tag], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{name}: no answer from the Hugging Face hub within {timeout:.0f}s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise RuntimeError(f"{name}: could not download weights ({last}); {instead}")
