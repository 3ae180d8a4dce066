"""A small name -> builder registry, in the style of torchvision's ``register_model``/``get_model``.

Backbones, losses and index kinds each keep one ``Registry``; config names an entry by string.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@LOSSES.register("arcface")`` on a class or builder function."""

        def wrap(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            from facerec.errors import ConfigError

            raise ConfigError(self.kind, name, f"one of {sorted(self._entries)}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
