"""Building blocks a case names: models, data sets, losses and batching.

Every component is a factory ``factory(ctx, **params)`` in a :class:`~stability_bench.registry.Registry`;
the case schema validates a case's keys against the factory's signature, so adding a
component is one decorated function.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BuildContext:
    """What every factory may need besides its own parameters."""

    seed: int
    dtype: torch.dtype
    generator: torch.Generator  # seeded from ``seed``; use it, not the global RNG, for data
