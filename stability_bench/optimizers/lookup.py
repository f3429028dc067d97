"""Per-class facts about optimizers (a preconditioner reader, a threshold rule) that follow
subclasses only as far as it is safe. The facts are the fields of one record per class
(``optimizers.records``); a :class:`ClassTable` is the lookup of one field.

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
from dataclasses import dataclass, replace
from typing import Any, Callable, Generic, Iterator, TypeVar

import torch
from torch.optim import Optimizer

__all__ = ["HOOKS", "UnknownTheory", "Unknown", "Records", "ClassTable", "class_label",
           "overridden_update_methods", "trusted_hook", "no_preconditioner", "optim_class"]

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


@dataclass(frozen=True)
class Unknown:
    """A record's answer "not known for this class", with the reason."""

    reason: str


@dataclass(frozen=True)
class _Fact:
    """The record of a stand-alone :class:`ClassTable`: one fact."""

    cls: type
    fact: Any = None


class Records:
    """Class → record: a frozen dataclass with a ``cls`` field and one field per fact, None
    where the record says nothing (a lookup then goes on up the MRO). ``make(cls)`` is the
    empty record of ``cls``, for facts registered for a class that has none yet."""

    def __init__(self, make: Callable[[type], Any]):
        self._make = make
        self._by_class: dict[type, Any] = {}

    def add(self, *records: Any) -> None:
        """Add (or replace) records; a record whose ``cls`` is None (a torch.optim class
        this torch lacks, see :func:`optim_class`) is skipped."""
        for record in records:
            if record.cls is not None:
                self._by_class[record.cls] = record

    def get(self, cls: type) -> Any | None:
        return self._by_class.get(cls)

    def fact(self, cls: type, field: str) -> Any | None:
        record = self._by_class.get(cls)
        return None if record is None else getattr(record, field)

    def set_fact(self, cls: type, field: str, value: Any) -> None:
        record = self._by_class.get(cls)
        self._by_class[cls] = replace(self._make(cls) if record is None else record, **{field: value})

    def __iter__(self) -> Iterator[Any]:
        return iter(list(self._by_class.values()))

    def __len__(self) -> int:
        return len(self._by_class)


class ClassTable(Generic[T]):
    """One fact of the optimizer records (the record field ``field``): class → fact, looked
    up along the MRO with the update-method rule above; a record can also state the fact
    explicitly unknown, with the reason (:class:`Unknown`). Registering here writes the
    class's record. Without ``records`` the table keeps records of its own."""

    def __init__(self, what: str, hook: str | None, records: Records | None = None, field: str = "fact"):
        self.what, self.hook = what, hook  # e.g. "preconditioner", "preconditioner"
        self.records = Records(_Fact) if records is None else records
        self.field = field

    def _fact(self, cls: type) -> Any | None:
        return self.records.fact(cls, self.field)

    def register(self, cls: type, fact: T | None = None):
        """``@table.register(torch.optim.Adam)`` or ``table.register(cls, fact)``."""
        def add(entry: T) -> T:
            if cls is not None:  # None: a torch.optim class this torch lacks (optim_class)
                self.records.set_fact(cls, self.field, entry)
            return entry
        return add(fact) if fact is not None else add

    def register_unknown(self, cls: type | None, reason: str) -> None:
        if cls is None:
            return
        self.records.set_fact(cls, self.field, Unknown(reason))

    def lookup(self, cls: type) -> tuple[T | None, str | None]:
        """(fact, None), or (None, why not): the nearest ancestor whose record states the
        fact decides, if ``cls`` still runs its update."""
        for base in cls.__mro__:
            fact = self._fact(base)
            if fact is not None:
                overridden = overridden_update_methods(cls, base)
                if overridden:
                    return None, _refusal(cls, base, overridden, self.what, self.hook)
                if isinstance(fact, Unknown):
                    return None, f"{class_label(base)}: {fact.reason}"
                return fact, None
        no_hook = f"it has no {self.hook}() method, and " if self.hook else ""
        return None, (f"{class_label(cls)} is not a class whose {self.what} is known: {no_hook}"
                      "neither it nor any ancestor is registered")

    def _stated(self) -> list[tuple[type, Any]]:
        return [(r.cls, getattr(r, self.field)) for r in self.records if getattr(r, self.field) is not None]

    def known(self) -> list[type]:
        return [cls for cls, fact in self._stated() if not isinstance(fact, Unknown)]

    def unknown(self) -> dict[type, str]:
        return {cls: fact.reason for cls, fact in self._stated() if isinstance(fact, Unknown)}

    def names(self) -> list[str]:
        return sorted(k.__name__ for k in self.known())

    def __contains__(self, cls: object) -> bool:
        return isinstance(cls, type) and self._fact(cls) is not None

    def __iter__(self) -> Iterator[type]:
        return iter(self.known() + list(self.unknown()))
