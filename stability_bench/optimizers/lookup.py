"""Per-class facts about optimizers (a preconditioner reader, a threshold rule) that follow
subclasses only as far as it is safe.

A fact registered for a class C — or a hook method (``stability_threshold``,
``preconditioner``, ``precond_inv_sqrt_apply``) defined on C — describes C's *update*.
A subclass S inherits it while S still runs that update: every *update method* of C
(``step`` and every other non-dunder method that C or its optimizer ancestors define,
hooks excluded — e.g. torch Adam's ``_init_group``, the reference optimizers' ``_update``)
must resolve on S to the same function as on C. So a user's ``class MyAdamW(AdamW)`` that
changes defaults in ``__init__`` or adds helper methods gets AdamW's reader; one that
overrides ``step`` (or ``_init_group``) may take a different step, and gets "unknown"
with that reason — never C's answer — until it supplies the hook itself or registers.
Lookup is by class object along the MRO, never by class name (a user's class named
``Adam`` is not torch's).

torch wraps ``step`` in a profiling hook on first instantiation, sometimes in the
subclass's own ``__dict__``; functions are compared unwrapped.
"""
from __future__ import annotations

import inspect
from typing import Callable, Generic, Iterator, TypeVar

import torch
from torch.optim import Optimizer

__all__ = ["HOOKS", "UnknownTheory", "ClassTable", "class_label", "overridden_update_methods",
           "trusted_hook", "no_preconditioner", "optim_class"]

T = TypeVar("T")

HOOKS = frozenset({"stability_threshold", "preconditioner", "precond_inv_sqrt_apply"})


class UnknownTheory(ValueError):
    """A figure theory cannot give for this optimizer; ``str()`` is the reason."""


def no_preconditioner(self) -> None:
    """A ``preconditioner`` hook meaning "this method has no preconditioner: P = I".
    Assign it in a class body (``preconditioner = no_preconditioner``)."""
    return None


def optim_class(name: str) -> type | None:
    """``torch.optim.<name>``, or None where this torch has no such class (Adafactor
    arrived in 2.5, Muon in 2.9): tables skip it."""
    return getattr(torch.optim, name, None)


def class_label(cls: type) -> str:
    """``torch.optim.Adam``, ``reference.GD`` or ``module:QualName``: how cases name classes."""
    module = cls.__module__
    if module.startswith("torch.optim") and getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim.{cls.__name__}"
    if module == "stability_bench.optimizers.reference":
        return f"reference.{cls.__name__}"
    return f"{module}:{cls.__qualname__}"


def _function(value):
    value = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    return inspect.unwrap(value) if callable(value) else value


def _update_methods(base: type) -> set[str]:
    names = {"step"}
    for k in base.__mro__:
        if k in (Optimizer, object) or not issubclass(k, Optimizer):
            continue
        names |= {n for n, v in vars(k).items()
                  if callable(v) and not (n.startswith("__") and n.endswith("__")) and n not in HOOKS}
    return names


def overridden_update_methods(cls: type, base: type) -> list[str]:
    """The update methods of ``base`` that ``cls`` (a subclass) resolves differently."""
    if cls is base:
        return []
    return sorted(n for n in _update_methods(base)
                  if _function(getattr(cls, n, None)) is not _function(getattr(base, n, None)))


def _refusal(cls: type, base: type, overridden: list[str], what: str, hook: str | None) -> str:
    fix = f"give {cls.__name__} a {hook}() method, or register it" if hook else "register it"
    return (f"{class_label(cls)} derives from {class_label(base)} but overrides "
            f"{', '.join(overridden)}, so it may not take {class_label(base)}'s step: its {what} is "
            f"not inherited ({fix})")


def trusted_hook(cls: type, name: str, what: str) -> tuple[Callable | None, str | None]:
    """(the hook function ``name`` if ``cls`` may use it, None) — or (None, reason) when the
    class that defines the hook is an ancestor whose update ``cls`` overrides. (None, None)
    when there is no such hook."""
    owner = next((k for k in cls.__mro__ if name in vars(k)), None)
    if owner is None or not callable(vars(owner)[name]):
        return None, None
    overridden = overridden_update_methods(cls, owner)
    if overridden:
        return None, _refusal(cls, owner, overridden, what, name)
    return _function(vars(owner)[name]), None


class ClassTable(Generic[T]):
    """Class → fact, looked up along the MRO with the update-method rule above; classes can
    also be registered as explicitly unknown, with the reason."""

    def __init__(self, what: str, hook: str | None):
        self.what, self.hook = what, hook  # e.g. "preconditioner", "preconditioner"
        self._known: dict[type, T] = {}
        self._unknown: dict[type, str] = {}

    def register(self, cls: type, fact: T | None = None):
        """``@table.register(torch.optim.Adam)`` or ``table.register(cls, fact)``."""
        def add(entry: T) -> T:
            if cls is not None:  # None: a torch.optim class this torch lacks (optim_class)
                self._unknown.pop(cls, None)
                self._known[cls] = entry
            return entry
        return add(fact) if fact is not None else add

    def register_unknown(self, cls: type | None, reason: str) -> None:
        if cls is None:
            return
        self._known.pop(cls, None)
        self._unknown[cls] = reason

    def lookup(self, cls: type) -> tuple[T | None, str | None]:
        """(fact, None), or (None, why not): the nearest registered ancestor decides, if
        ``cls`` still runs its update."""
        for base in cls.__mro__:
            if base in self._known or base in self._unknown:
                overridden = overridden_update_methods(cls, base)
                if overridden:
                    return None, _refusal(cls, base, overridden, self.what, self.hook)
                if base in self._unknown:
                    return None, f"{class_label(base)}: {self._unknown[base]}"
                return self._known[base], None
        no_hook = f"it has no {self.hook}() method, and " if self.hook else ""
        return None, (f"{class_label(cls)} is not a class whose {self.what} is known: {no_hook}"
                      "neither it nor any ancestor is registered")

    def known(self) -> list[type]:
        return list(self._known)

    def unknown(self) -> dict[type, str]:
        return dict(self._unknown)

    def names(self) -> list[str]:
        return sorted(k.__name__ for k in self._known)

    def __contains__(self, cls: object) -> bool:
        return cls in self._known or cls in self._unknown

    def __iter__(self) -> Iterator[type]:
        return iter(list(self._known) + list(self._unknown))
