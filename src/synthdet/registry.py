"""One generic registry, in the shape of timm's ``register_model``: a leaf module every other module may import.

Adding a backbone, head, detector kind, slice or augmentation preset is adding one registered entry::

    BACKBONES = Registry("backbone")

    @BACKBONES.register("effnet-lite0", description="…")
    def effnet_lite0(**kw): ...

An entry may also be registered *lazily* by import path (``"synthdet.detectors.ensemble:load_ensemble"``), so that a
registry can name an implementation whose module imports the registry's owner without an import cycle; the module
is imported only when the entry is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    target: T | str  # the object, or "package.module:attribute" until first use
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> T:
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self.target = obj  # type: ignore[assignment]
        return self.target  # type: ignore[return-value]


class UnknownNameError(KeyError, ValueError):
    """A name no entry was registered under; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Named entries of one kind (``what``: "backbone", "head", …), each with free-form metadata."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name", key=value)``; the name defaults to the object's ``__name__``."""

        def deco(obj: T) -> T:
            self.add(name or obj.__name__, obj, **meta)  # type: ignore[attr-defined]
            return obj

        return deco

    def add(self, name: str, target: T | str, **meta: Any) -> None:
        """Register ``target`` (or a lazy ``"module:attr"`` path) under ``name``; a second entry is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, dict(meta))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.what} {name!r}; choose from {', '.join(sorted(self._entries))}") from None

    def get(self, name: str) -> T:
        return self.entry(name).load()

    def meta(self, name: str) -> dict[str, Any]:
        return self.entry(name).meta

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
