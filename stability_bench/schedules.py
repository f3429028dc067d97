"""Learning-rate schedules a case declares under ``schedule:``.

Two forms:

* ``{class: torch.optim.lr_scheduler.CosineAnnealingLR, T_max: 100}`` — any scheduler
  class by import path (dotted, or ``package.module:Class``), built with the run's
  optimizer and the other keys; a parameter named ``schedulers`` takes a list of schedule
  specs, built the same way (``SequentialLR``, ``ChainedScheduler``).
* ``{warmup: W, then: cosine | linear | constant, min_factor: m}`` — the shorthand, a
  ``LambdaLR`` whose factor for optimizer step t (0-based; η is the optimizer's lr, T the
  case's ``steps``, D = max(1, T − W), s = t − W) is

  - t < W:           (t + 1) / W                 (linear warmup, never 0)
  - then constant:   1
  - then linear:     1 − (1 − m)·s/D
  - then cosine:     m + (1 − m)·(1 + cos(π·s/D))/2

The harness steps the schedule once per optimizer step, after it, so step t runs at the
lr the schedule gives for t — which is what the history's ``lr`` column and the
``threshold`` probe read (``param_groups[0]``).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from stability_bench.registry import import_object

SHORTHAND_KEYS: dict[str, Any] = {"warmup": int, "then": Literal["cosine", "linear", "constant"],
                                  "min_factor": float}
SHORTHAND_DEFAULTS = {"then": "constant", "min_factor": 0.0}


@dataclass(frozen=True)
class WarmupThen:
    """The shorthand's lr factor for step t (a class, not a lambda, so it pickles)."""

    warmup: int
    then: str
    min_factor: float
    steps: int

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        s, d = t - self.warmup, max(1, self.steps - self.warmup)
        m = self.min_factor
        if self.then == "linear":
            return 1.0 - (1.0 - m) * s / d
        if self.then == "cosine":
            return m + (1.0 - m) * (1.0 + math.cos(math.pi * s / d)) / 2.0
        return 1.0


def scheduler_class(spec: str) -> type:
    """The scheduler class ``spec`` names (``ImportPathError`` if it does not import)."""
    return import_object(spec, "schedule")


def unsupported_step(cls: type) -> str | None:
    """Why the harness cannot step ``cls`` once per optimizer step with no argument, or None."""
    step = getattr(cls, "step", None)
    if not callable(step):
        return f"{cls.__name__} has no step() method"
    required = [p.name for p in list(inspect.signature(step).parameters.values())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        return (f"{cls.__name__}.step() needs {', '.join(map(repr, required))}: the harness steps a "
                "schedule once per optimizer step with no arguments (schedules that react to the "
                "loss, like ReduceLROnPlateau, are not supported)")
    return None


def build_schedule(spec: dict, optimizer: torch.optim.Optimizer, steps: int):
    """The scheduler a validated ``schedule:`` spec describes, on ``optimizer``."""
    if "class" not in spec:
        options = {**SHORTHAND_DEFAULTS, **spec}
        factor = WarmupThen(options["warmup"], options["then"], float(options["min_factor"]), steps)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    cls = scheduler_class(spec["class"])
    params = {k: v for k, v in spec.items() if k != "class"}
    if "schedulers" in params:
        params["schedulers"] = [build_schedule(s, optimizer, steps) for s in params["schedulers"]]
    if "optimizer" in inspect.signature(cls).parameters:
        params["optimizer"] = optimizer
    return cls(**params)
