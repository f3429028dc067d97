"""Name → object registries for everything users extend (models, data, losses,
optimizers, metrics, comparators, probes).

A registry replaces an if-chain: a user adds an entry with ``@REGISTRY.register("name")``
and every case file can name it. Unknown names fail with the nearest valid names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in a registry; ``str()`` says what was meant and what exists."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        self.suggestions = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        super().__init__(str(self))

    def __str__(self) -> str:  # KeyError would quote the message
        hint = f"; did you mean {' or '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        return f"unknown {self.kind} {self.name!r}{hint} Known: {', '.join(sorted(self.known))}."


def nearest(name: str, known: list[str]) -> str | None:
    """The closest name in ``known`` to ``name`` (for 'did you mean' hints), or None."""
    match = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
    return match[0] if match else None


class Registry(Generic[T]):
    """A named collection of entries of one kind (e.g. ``"model"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Add ``obj`` under ``name``; usable as ``@registry.register("name")``."""
        def add(entry: T) -> T:
            self._entries[name] = entry
            return entry

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, list(self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable name (a list from YAML) is not in any registry
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` importing ``name`` from ``exports[name]`` on first use, so a
    package's ``import`` stays cheap (the pytest plugin and CLI import little up front)."""
    def __getattr__(name: str) -> object:
        if name in exports:
            import importlib

            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
