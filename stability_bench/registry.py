"""Name → object registries for everything users extend (models, data, losses,
optimizers, metrics, comparators, probes).

A registry replaces an if-chain: a user adds an entry with ``@REGISTRY.register("name")``
and every case file can name it. Unknown names fail with the nearest valid names.

Besides its registered names, every registry resolves ``package.module:name`` by import
(so a worker process finds a user's component from the name alone), and a name it does
not hold triggers, once per process, the loading of the ``stability_bench.components``
entry points of installed packages, which register their components when imported.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in a registry; ``str()`` says what was meant and what exists."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        self.suggestions = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        super().__init__(str(self))

    def __reduce__(self):  # rebuilt from its fields in another process (worker pools pickle it)
        return type(self), (self.kind, self.name, self.known)

    broken: list[str] = []  # entry points that failed to load (set by Registry.get)

    def __str__(self) -> str:  # KeyError would quote the message
        hint = f"; did you mean {' or '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        known = f" Known: {', '.join(sorted(self.known))}." if self.known else f" No {self.kind} is registered."
        failed = f" Entry points that failed to load: {'; '.join(self.broken)}." if self.broken else ""
        return f"unknown {self.kind} {self.name!r}{hint}{known}{failed}"


class ImportPathError(ValueError):
    """``package.module:name`` that does not import; the message names the module and the
    exception, so a case error can say why."""


def describe_exception(exc: BaseException) -> str:
    """``Type: first line of the message`` — how a user's code failing is named in one line
    (messages are one line per problem)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def a_or_an(noun: str) -> str:
    """``an int``, ``a float``: the indefinite article a type name takes."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


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
        """The entry ``name``; ``package.module:attr`` by import (:class:`ImportPathError`
        if that fails); an unknown plain name after loading the entry points
        (:class:`UnknownNameError`, which names entry points that failed to load)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            pass
        if isinstance(name, str) and ":" in name:
            return import_object(name, self.kind)
        if isinstance(name, str) and load_entry_points():
            return self.get(name)
        error = UnknownNameError(self.kind, name, list(self._entries))
        error.broken = list(_ENTRY_POINT_ERRORS)
        raise error

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


def import_object(spec: str, what: str) -> Any:
    """The object ``package.module:name`` (or dotted ``package.module.Name``) names;
    :class:`ImportPathError` naming the module and the exception otherwise."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ImportPathError(f"{spec!r} is not an import path: write 'package.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            # the module (or a package above it) is nowhere on sys.path
            raise ImportPathError(f"cannot import module {module_name!r} for {what} {spec!r}: module "
                                  f"{exc.name!r} was not found; is it installed, or on PYTHONPATH?") from None
        raise ImportPathError(_raised_while_importing(module_name, what, spec, exc)) from None
    except Exception as exc:  # any import-time failure of user code is a case error
        raise ImportPathError(_raised_while_importing(module_name, what, spec, exc)) from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        public = [n for n in vars(module) if not n.startswith("_")]
        guess = nearest(attr, public)
        raise ImportPathError(f"module {module_name!r} has no attribute {attr!r} (for {what} {spec!r})"
                              + (f"; did you mean {guess!r}?" if guess else "")) from None
    return obj


def _raised_while_importing(module_name: str, what: str, spec: str, exc: Exception) -> str:
    """The module was found, and its code (or a module it imports) raised."""
    return (f"cannot import module {module_name!r} for {what} {spec!r}: it was found but raised while "
            f"importing: {describe_exception(exc)}")


ENTRY_POINT_GROUP = "stability_bench.components"
_ENTRY_POINTS_LOADED = False
_ENTRY_POINT_ERRORS: list[str] = []


def load_entry_points() -> bool:
    """Load the ``stability_bench.components`` entry points, once per process: each is a
    module (importing it registers its components) or a callable, called with no
    arguments, that registers them. Returns True the first time (so a lookup retries),
    False afterwards. A failing entry point is remembered for the 'unknown name' message,
    not raised: one broken package must not hide the components of the others."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return False
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = ep.load()
            if ep.attr and callable(loaded):
                loaded()
        except Exception as exc:
            _ENTRY_POINT_ERRORS.append(f"{ep.name} = {ep.value}: {type(exc).__name__}: {exc}")
    return True
