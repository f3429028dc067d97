"""Build a case's model, data or loss from its ``kind``: a registered name, a
``package.module:factory`` import path, or a name an entry point registers.

Registered factories take the build context first (``factory(ctx, **params)``); an
imported object may, too, by naming its first parameter ``ctx``, and is otherwise called
with the case's parameters alone — so ``kind: torch.nn:Linear`` or a user's
``nn.Module`` subclass works as is. Resolution is by name only: a worker process that
receives a case builds the same components.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from stability_bench.components import BuildContext
from stability_bench.components.data import TensorData
from stability_bench.registry import Registry


def takes_context(factory: Any) -> bool:
    """Whether ``factory``'s first parameter is the build context (named ``ctx``)."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return bool(params) and params[0].name == "ctx" and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


# Keys of a section that the harness applies itself and never passes to the factory, with
# their types (the schema validates them beside the factory's own parameters):
# ``loss: {negate: true}`` hands the optimizer −loss (see ``runner.train_step``).
HARNESS_KEYS: dict[str, dict[str, Any]] = {"loss": {"negate": bool}}


def build_component(registry: Registry, section: dict, ctx: BuildContext) -> Any:
    """Call the factory ``section['kind']`` names with the section's other keys (less the
    harness's own, ``HARNESS_KEYS``)."""
    factory = registry.get(section["kind"])
    own = HARNESS_KEYS.get(registry.kind, {})
    params = {k: v for k, v in section.items() if k != "kind" and k not in own}
    built = factory(ctx, **params) if takes_context(factory) else factory(**params)
    if registry.kind == "data":
        return as_tensor_data(built, section["kind"])
    return built


def as_tensor_data(built: Any, kind: str) -> TensorData:
    """A data factory's result as :class:`TensorData`: it may also return an ``(x, y)`` pair."""
    if isinstance(built, TensorData):
        return built
    if isinstance(built, (tuple, list)) and len(built) == 2 and all(isinstance(t, torch.Tensor) for t in built):
        return TensorData(*built)
    raise TypeError(f"data {kind!r} returned {type(built).__name__}; a data factory returns "
                    "TensorData or an (x, y) pair of tensors")
