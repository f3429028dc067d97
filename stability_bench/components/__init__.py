"""Building blocks a case names: models, data sets, losses and batching.

Every component is a factory ``factory(ctx, **params)`` in a :class:`~stability_bench.registry.Registry`;
the case schema validates a case's keys against the factory's signature, so adding a
component is one decorated function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable

import torch


@dataclass(frozen=True)
class BuildContext:
    """What every factory may need besides its own parameters."""

    seed: int
    dtype: torch.dtype
    generator: torch.Generator  # seeded from ``seed``; use it, not the global RNG, for data


# ---- what the case schema checks before anything is built (validation only)
@dataclass(frozen=True)
class AtLeast:
    """``Annotated[int, AtLeast(1)]`` on a factory parameter: the schema rejects smaller
    values at validation, instead of a ZeroDivisionError or an empty tensor later."""

    minimum: int


Count = Annotated[int, AtLeast(1)]  # a size: examples, features, widths


def declares(*, targets: str | None = None, needs_targets: str | None = None,
             check: Callable[[dict], list[tuple[str, str]]] | None = None,
             prepare: Callable[[dict], None] | None = None):
    """Facts about a factory the schema checks across sections: the ``targets`` a data set
    gives (``"labels"`` or ``"real"``), the targets a loss ``needs_targets``, and ``check``,
    a function of the section's parameters returning ``(key, problem)`` pairs; and
    ``prepare``, called with the section's parameters once per plan before any run trains
    (a data set fetched on first use; ``FileNotFoundError`` when it cannot be had)."""
    def mark(factory):
        factory.targets, factory.needs_targets, factory.check = targets, needs_targets, check
        factory.prepare = prepare
        return factory

    return mark


def check_widths(params: dict) -> list[tuple[str, str]]:
    """``widths`` lists every layer, input and output included: at least two."""
    widths = params.get("widths")
    return [("widths", f"widths lists every layer, input and output included: at least 2, "
                       f"got {widths!r}")] if isinstance(widths, list) and len(widths) < 2 else []
