"""Type checks of YAML values against type hints, with the case format's messages.

Shared by the schema and by the sections other modules validate (``critical_lr:``), so
that every message reads alike: ``expected a list of 2 numbers, got 0.9``, a quoted number
named as such, "did you mean" for unknown keys and names. (Only ``AtLeast`` comes from the components package.)
"""
from __future__ import annotations

import inspect
import math
import re
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Union

from stability_bench.components import AtLeast
from stability_bench.registry import nearest
from stability_bench.yamlsource import KeyPath, Problem

@dataclass(frozen=True)
class Arguments:
    """What a callable takes by keyword (past ``skip`` leading parameters such as ``self,
    params`` or a component's ``ctx``): the one reading of a signature that the schema's
    checks of components, probes, schedulers, clipping and optimizers share."""

    hints: dict[str, Any]      # name → type hint (Annotated limits kept); Any where none
    defaults: dict[str, Any]   # name → default; inspect.Parameter.empty where required
    var_kw: bool               # takes **kwargs

    @property
    def required(self) -> set[str]:
        return {name for name, default in self.defaults.items() if default is inspect.Parameter.empty}


def arguments(fn: Any, skip: int = 0) -> Arguments:
    """The :class:`Arguments` of ``fn`` (a class: its constructor's)."""
    parameters = list(inspect.signature(fn).parameters.values())
    try:
        hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn, include_extras=True)
    except Exception:  # unresolvable annotations: the names still count
        hints = {}
    named = [p for p in parameters[skip:] if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    return Arguments({p.name: hints.get(p.name, Any) for p in named}, {p.name: p.default for p in named},
                     any(p.kind is p.VAR_KEYWORD for p in parameters))


NUMBER_STRING = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def unknown_message(what: str, name: Any, known: list[str]) -> str:
    """``unknown metric 'x'; did you mean 'y'? Known: ...`` for any registry-like name."""
    guess = nearest(str(name), known)
    return (f"unknown {what} {name!r}" + (f"; did you mean {guess!r}?" if guess else "")
            + (f" Known: {', '.join(known)}." if known else f" There is no {what} to name here."))


_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true/false", "true/false values"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}
PLAIN = (int, float, bool, str, type(None))  # what YAML can write; other classes (Tensor) it cannot


def is_union(origin: Any) -> bool:
    return origin is Union or getattr(origin, "__name__", "") == "UnionType"


def type_name(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return type_name(args[0], plural)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if is_union(origin):
        writable = [a for a in args if not isinstance(a, type) or a in PLAIN] or list(args)
        return " or ".join(type_name(a, plural) for a in writable)
    if origin in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        if origin is tuple and items and Ellipsis not in args:
            return f"a list of {len(items)} {type_name(items[0], plural=True)}"
        return f"a list of {type_name(items[0], plural=True)}" if items else "a list"
    if origin is dict and len(args) == 2:
        return f"a mapping of {type_name(args[0], True)} to {type_name(args[1], True)}"
    if hint in _NAMES:
        return _NAMES[hint][plural]
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a type hint, strictly: ints count as floats, bools are not
    numbers, NaN is no number, a tuple has its length, a dict's keys and values their types."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Annotated:
        return matches(value, args[0])
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if is_union(origin):
        return any(matches(value, a) for a in args)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            matches(k, args[0]) and matches(v, args[1]) for k, v in value.items()))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint) if isinstance(hint, type) else True


def _limit_problem(value: Any, hint: Any) -> str | None:
    """A value that has the right type but breaks an ``AtLeast`` bound of the hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        for limit in args[1:]:
            if isinstance(limit, AtLeast) and matches(value, args[0]) and value < limit.minimum:
                return f"must be at least {limit.minimum}, got {value!r}"
        return _limit_problem(value, args[0])
    if is_union(origin):
        return next((_limit_problem(value, a) for a in args if matches(value, a)), None)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = [a for a in args if a is not Ellipsis]
        per_item = items if origin is tuple and Ellipsis not in args else items[:1] * len(value)
        return next((f"[{i}] {p}" for i, (v, a) in enumerate(zip(value, per_item))
                     if (p := _limit_problem(v, a))), None)
    return None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def type_problem(value: Any, hint: Any, path: KeyPath, finite: bool = False) -> Problem | None:
    """What is wrong with ``value`` for ``hint`` (None if nothing); ``finite`` also refuses
    ±inf (a learning rate or a data size cannot be infinite; a bound can)."""
    if matches(value, hint):
        limit = _limit_problem(value, hint)
        if limit:
            return Problem(path, limit)
        if finite and _non_finite(value):
            return Problem(path, f"expected a finite number, got {value!r}")
        return None
    message = f"expected {type_name(hint)}, got {value!r}"
    if isinstance(value, float) and value != value:
        message = f"expected {type_name(hint)}, got .nan (not a number: every comparison with it is false)"
    elif isinstance(value, str) and NUMBER_STRING.match(value.strip()):
        message += f" (a string); did you mean the number {value.strip()}, without quotes?"
    elif typing.get_origin(hint) is list and matches(value, typing.get_args(hint)[0]):
        message += f"; a list of one is written [{value}]"  # devices: cpu, seeds: 0
    return Problem(path, message)


def check_mapping(value: Any, allowed: Mapping[str, Any], required: set[str], path: KeyPath,
                   problems: list[Problem], what: str, finite: bool = False) -> bool:
    """Keys of a mapping against ``allowed`` (name → type hint); returns False if not a mapping."""
    if not isinstance(value, dict):
        problems.append(Problem(path, f"{what} must be a mapping, got {value!r}"))
        return False
    for key in value:
        if key not in allowed:
            guess = nearest(str(key), list(allowed))
            hint = f"; did you mean {guess!r}?" if guess else f"; valid keys: {', '.join(allowed)}"
            problems.append(Problem(path + (key,), f"unknown key {key!r} in {what}{hint}"))
        else:
            problem = type_problem(value[key], allowed[key], path + (key,), finite)
            if problem:
                problems.append(problem)
    for key in sorted(required - set(value)):
        problems.append(Problem(path, f"{what} is missing the required key {key!r}"))
    return True
