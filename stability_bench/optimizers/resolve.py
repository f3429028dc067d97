"""Turn a case's ``class:`` string into an optimizer class.

Three spellings, so the namespace says where a class comes from:
``torch.optim.Adam`` (any torch.optim optimizer), ``reference.EMAHB`` (this package's
reference optimizers) and ``package.module:ClassName`` (a user's own optimizer).
"""
from __future__ import annotations

import torch

from stability_bench.registry import ImportPathError, import_object, nearest


class OptimizerResolveError(ValueError):
    """The class string names no optimizer; the message says what was meant."""


def _torch_optimizers() -> list[str]:
    return sorted(name for name, obj in vars(torch.optim).items()
                  if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)
                  and obj is not torch.optim.Optimizer)


def _hint(name: str, known: list[str], prefix: str) -> str:
    guess = nearest(name, known)
    return f" Did you mean {prefix + guess!r}?" if guess else ""


def resolve_optimizer_class(spec: str) -> type[torch.optim.Optimizer]:
    """The optimizer class named by ``spec``; :class:`OptimizerResolveError` otherwise."""
    from stability_bench.optimizers.reference import REFERENCE_OPTIMIZERS

    if not isinstance(spec, str) or not spec:
        raise OptimizerResolveError(f"expected a class name such as 'torch.optim.Adam', got {spec!r}")
    if ":" in spec:
        try:
            cls = import_object(spec, "optimizer")
        except ImportPathError as exc:
            raise OptimizerResolveError(str(exc)) from None
    elif spec.startswith("torch.optim."):
        name = spec[len("torch.optim."):]
        known = _torch_optimizers()
        if name not in known:
            raise OptimizerResolveError(
                f"torch.optim has no optimizer {name!r}.{_hint(name, known, 'torch.optim.')}")
        cls = getattr(torch.optim, name)
    elif spec.startswith("reference."):
        name = spec[len("reference."):]
        if name not in REFERENCE_OPTIMIZERS:
            raise OptimizerResolveError(
                f"no reference optimizer {name!r}.{_hint(name, REFERENCE_OPTIMIZERS.names(), 'reference.')}"
                f" Known: {', '.join(REFERENCE_OPTIMIZERS.names())}.")
        cls = REFERENCE_OPTIMIZERS.get(name)
    else:
        candidates = ([f"torch.optim.{n}" for n in _torch_optimizers()]
                      + [f"reference.{n}" for n in REFERENCE_OPTIMIZERS.names()])
        guess = nearest(spec, candidates) or nearest(f"torch.optim.{spec}", candidates)
        raise OptimizerResolveError(
            f"unknown optimizer class {spec!r}: write 'torch.optim.NAME', 'reference.NAME' or "
            f"'package.module:ClassName'." + (f" Did you mean {guess!r}?" if guess else ""))
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise OptimizerResolveError(f"{spec!r} is not a torch.optim.Optimizer subclass")
    return cls
