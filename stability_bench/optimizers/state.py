"""Reading an optimizer's per-parameter state: what the records' formulas
(``optimizers.records``) and the probes (``probes.preconditioner``) share."""
from __future__ import annotations

from typing import Callable

import torch
from torch.optim import Optimizer

__all__ = ["steps_taken", "first_state", "per_param", "after_first_step"]


def steps_taken(state: dict) -> int:
    """Steps taken, from a parameter's state (0 before the first step)."""
    return int(float(state["step"])) if "step" in state else 0


def first_state(optimizer: Optimizer) -> dict:
    """The state of the first parameter of the first group that has one ({} before a step)."""
    for p in optimizer.param_groups[0]["params"]:
        state = optimizer.state.get(p)
        if state:
            return state
    return {}


def per_param(optimizer: Optimizer, fn: Callable[[torch.Tensor, dict, dict], torch.Tensor | None]):
    """fn(p, state, group) for every parameter, in param-group order; None if any is None."""
    out = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                state = optimizer.state.get(p)
                P = fn(p, state, group) if state else None
                if P is None:
                    return None
                out.append(P)
    return out


def after_first_step(optimizer: Optimizer, formula: Callable[..., torch.Tensor], with_param: bool = False):
    """:func:`per_param` of ``formula(state, group, t)`` (``formula(p, state, group, t)``
    with ``with_param``) — P at step count t ≥ 1; None before the first step, where P_0 is
    undefined with bias correction."""
    def P(p, state, group):
        t = steps_taken(state)
        if t < 1:
            return None
        return formula(p, state, group, t) if with_param else formula(state, group, t)
    return per_param(optimizer, P)
