"""The backbone interface and its registries: one place names every feature extractor.

Like timm's ``@register_model``: adding a backbone is adding one entry to a :class:`~synthdet.registry.Registry`,
made by the module of its family. Names are

- :data:`BACKBONES`, registered short names: ``effnet-lite0``, ``effnet-lite2`` (:mod:`~synthdet.backbones.timm_cnn`),
  ``clip-vit-l14``, ``eva02-l14`` (:mod:`~synthdet.backbones.open_clip_vit`);
- :data:`BACKBONE_PREFIXES`, generic forms ``<prefix>:<rest>``: ``timm:<model>``, ``open_clip:<arch>/<tag>`` and
  ``dualstream[-dct]:<model>`` (:mod:`~synthdet.backbones.spectral`, registered lazily by import path).

Importing any module of :mod:`synthdet.backbones` imports the package first, which registers every family, so
:func:`create_backbone` knows every name wherever it is imported from.

A :class:`Backbone` returns pooled features ``[B, D]`` and, when asked, one vector per block ("layer taps": the
class token of each transformer block, the pooled output of each CNN stage) for layer-wise fusion.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthdet.backbones.folding import fold_checked
from synthdet.backbones.pooling import TapPool, summarise_tap
from synthdet.io.pixels import Preprocess
from synthdet.registry import Registry, UnknownNameError

#: Where the forward passes running in this thread (or task) collect their layer taps, by backbone: the tap hooks are
#: registered once and shared by every thread, so what each call captures must live outside the backbone.
_SINKS: ContextVar[dict[nn.Module, list[torch.Tensor]] | None] = ContextVar("synthdet_tap_sinks", default=None)
#: Serialises BatchNorm folding. One lock for all backbones (each folds once), because a lock attribute would make a
#: Backbone impossible to deep-copy or pickle.
_FOLD_LOCK = threading.Lock()


class Backbone(nn.Module):
    """A frozen-by-default feature extractor with its preprocessing and a stable identity.

    ``model`` is the wrapped network; :meth:`forward_pooled` maps an input batch to pooled features (``model(x)``;
    a family whose network returns something else subclasses and overrides it, reading ``self.model``, so that a
    deep copy runs its own network). ``tap_modules`` are the blocks whose outputs become layer features
    (:func:`~synthdet.backbones.pooling.summarise_tap`). ``channels_last``: run the network on NHWC tensors, for
    convolutional networks (oneDNN on CPU and cuDNN on CUDA pick faster kernels: EfficientNet-Lite0 at 384 px runs
    1.7x faster per image on one CPU thread, measured in ``benchmarks/scale.py``); the features are the same up to
    float rounding.

    Several threads may share one backbone: the tap hooks are registered once, and each call collects its own taps.
    """

    def __init__(
        self,
        *,
        name: str,
        model: nn.Module,
        tap_modules: list[nn.Module],
        preprocess: Preprocess,
        weights_id: str,
        token_pool: str = "cls",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model.eval()
        self.channels_last = channels_last
        self.folded = False  # BatchNorm folded into the convolutions (:meth:`fold_batchnorm`)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.tap_modules = tap_modules
        for j, m in enumerate(tap_modules):  # a bound method, not a closure: a deep copy's hooks call the copy
            m.register_forward_hook(partial(self._capture, j))
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.token_pool = token_pool
        self.tap_pool: TapPool = "mean"
        self._measure()

    def _measure(self) -> None:
        with torch.no_grad():
            pooled, layers = self(torch.zeros(1, 3, self.preprocess.size, self.preprocess.size), taps=True)
        self.embed_dim = pooled.shape[1]
        self.layer_dims = [t.shape[1] for t in layers]

    def with_tap_pool(self, tap_pool: TapPool) -> Backbone:
        """Summarise each block's feature map by its spatial mean (``mean``), by mean and standard deviation
        (``meanstd``: the spread of a stage's activations carries noise statistics that a mean averages away), or by
        both plus the channel correlations of the early stages :data:`~synthdet.backbones.pooling.TEXTURE_TAPS`
        (``texture``: a Gram-style texture descriptor, where generator upsampling leaves its trace). CNN stages only
        (a token sequence has no spatial map)."""
        if tap_pool != self.tap_pool:
            self.tap_pool = tap_pool
            self._measure()
        return self

    @property
    def id(self) -> str:
        """Cache identity: name, weights, preprocessing and tap summary. Different weights or pixels never share
        features."""
        pool = "" if self.tap_pool == "mean" else f"-{self.tap_pool}"
        return f"{self.name.replace(':', '_').replace('/', '_')}@{self.weights_id}-{self.preprocess.id()}{pool}"

    @property
    def device(self) -> torch.device:
        """Where the network runs: its first parameter's device, or its first buffer's (fixed-filter networks)."""
        first = next(itertools.chain(self.model.parameters(), self.model.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def fold_batchnorm(self) -> int:
        """Fold each inference-mode BatchNorm that follows a convolution into that convolution's weights and bias, in
        place (:mod:`~synthdet.backbones.folding`); returns how many were folded. Only a frozen network in eval mode is
        folded (a trainable one keeps its BatchNorm to learn); the result is checked on a random batch, and undone if
        it differs. The inference paths call it (:func:`~synthdet.features.extract.forward_by_shape`), possibly from
        several threads at once: the check and the fold happen under a lock, and :attr:`folded` turns true only once
        the weights are final, so no thread runs a half-folded network."""
        if self.folded:
            return 0
        with _FOLD_LOCK:
            if self.folded or self.model.training or any(p.requires_grad for p in self.model.parameters()):
                return 0
            size = self.preprocess.size
            x = torch.randn(2, 3, size, size, device=self.device, generator=torch.Generator(self.device).manual_seed(0))
            folded = fold_checked(self.model, self.forward_pooled, x)
            self.folded = True  # also when nothing folds: checked once
        return folded

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The network's pooled features of ``x``, in its own dtype."""
        return self.model(x)

    def _capture(self, tap: int, _module: nn.Module, _args: Any, out: torch.Tensor | tuple) -> None:
        """Forward hook of block ``tap``: summarise its output into the taps of this thread's current call, if any."""
        sink = (_SINKS.get() or {}).get(self)
        if sink is not None:
            sink.append(summarise_tap(out, tap, tap_pool=self.tap_pool, token_pool=self.token_pool, name=self.name))

    def forward(self, x: torch.Tensor, *, taps: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        captured: list[torch.Tensor] = []
        if not taps:
            return self.forward_pooled(x).float(), captured
        token = _SINKS.set({**(_SINKS.get() or {}), self: captured})
        try:
            pooled = self.forward_pooled(x)
        finally:
            _SINKS.reset(token)
        return pooled.float(), captured


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
"""Named backbones, ``factory(*, weights, pretrained, preprocess) -> Backbone``; metadata: ``description``,
``weights_hint``, ``weights_present()``, ``source`` (the generic name to fetch weights for), ``features``,
``preprocess``."""

BACKBONE_PREFIXES: Registry[Callable[..., Backbone]] = Registry("backbone prefix")
"""Generic names ``<prefix>:<rest>``, ``factory(name, rest, *, weights, pretrained, preprocess) -> Backbone``;
metadata: ``usage``, ``description``, and either ``weights_present(rest)`` or ``wraps=True`` (``rest`` names another
backbone, whose weights it uses)."""


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone as listings show it."""

    name: str
    factory: Callable[..., Backbone]
    description: str
    weights_hint: str  # where weights come from, for `synthdet backbones` and error messages
    weights_present: Callable[[], bool]
    source: str = ""  # the generic name it stands for (open_clip:<arch>/<tag>), used to fetch weights
    features: str = ""  # pooled size and layer taps, for listings
    preprocess: Preprocess | None = None  # default preprocessing, for listings


def list_backbones() -> list[BackboneEntry]:
    return [BackboneEntry(name, BACKBONES.get(name), **BACKBONES.meta(name)) for name in BACKBONES]


def qualified_name(name: str) -> str:
    """A registered or prefixed backbone name as given; a bare model name means ``timm:<model>``."""
    return name if name in BACKBONES or ":" in name else f"timm:{name}"


def prefix_of(name: str) -> tuple[str, str]:
    """``(prefix, rest)`` of a generic name; an unknown name raises :class:`UnknownNameError` listing the valid forms."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in BACKBONE_PREFIXES:
        forms = " / ".join(BACKBONE_PREFIXES.meta(p)["usage"] for p in BACKBONE_PREFIXES)
        raise UnknownNameError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}; or use {forms}")
    return prefix, rest


def weights_available(name: str) -> bool:
    """Whether ``name`` can load pretrained weights on this machine, checked without any network call."""
    if name in BACKBONES:
        return BACKBONES.meta(name)["weights_present"]()
    try:
        prefix, rest = prefix_of(name)
    except UnknownNameError:
        return False
    meta = BACKBONE_PREFIXES.meta(prefix)
    return weights_available(qualified_name(rest)) if meta.get("wraps") else meta["weights_present"](rest)


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    preprocess: Preprocess | None = None,
    tap_pool: TapPool = "mean",
    device: str | torch.device | None = None,
) -> Backbone:
    """The one entry point: a registered name or ``<prefix>:<rest>`` (``timm:<model>``, ``open_clip:<arch>[/<tag>]``,
    ``dualstream:<model>`` …).

    ``pretrained=False`` builds a randomly initialised network (tests, tiny configs); ``tap_pool`` how block
    features are summarised (:meth:`Backbone.with_tap_pool`); ``device`` defaults to CUDA when available.
    """
    kw = {"weights": weights, "pretrained": pretrained, "preprocess": preprocess}
    if name in BACKBONES:
        bb = BACKBONES.get(name)(**kw)
    else:
        prefix, rest = prefix_of(name)
        bb = BACKBONE_PREFIXES.get(prefix)(name, rest, **kw)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb.with_tap_pool(tap_pool).to(default_device(device))


def default_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
