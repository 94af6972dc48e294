"""One small Registry class used by every kind (models, losses, datasets, trainers)."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from sandbox.errors import SandboxError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping of builders: ``MODELS["unet"](**opts) -> nn.Module``.

    Looking up an unknown name raises a :class:`SandboxError` listing the accepted names,
    so a typo in a YAML file is one clear line, never a ``KeyError`` from deep inside.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise SandboxError(f"unknown {self.kind} {name!r}; accepted: {', '.join(self.names())}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)
