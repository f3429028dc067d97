"""The diagonal preconditioner P of a live optimizer, for preconditioned-sharpness probes.

Convention (Cohen et al. 2022, §2, and ``optimizers.reference``): the step is
x ← x − lr · P⁻¹ · (direction), where the direction is g (RMSprop, Adagrad) or the
momentum m (Adam: m an EMA of g, *not* bias-corrected). P is the diagonal that turns the
optimizer's actual update into that form, so the preconditioned sharpness
λ₁(P⁻¹H) = λ₁(P^{-1/2} H P^{-1/2}) is compared with the threshold of the
non-preconditioned method at the same lr (``optimizers.thresholds``).

Which step. ``diagonal_preconditioner`` returns P_t, the preconditioner *applied at the
last step taken* (t = the optimizer's step count), built from the current state with step
t's bias correction — the P of Cohen's λ₁(P_t⁻¹H_t) and what
``reference.Adam.preconditioner()`` returns. The next step's P also folds in the next
gradient, which is not known yet.

Lookup order (as for ``optimizers.thresholds``):
1. an optimizer with a ``preconditioner()`` method answers for itself (the reference
   optimizers; the documented hook for users' own optimizers);
2. otherwise ``PRECONDITIONERS``, keyed by class name, holds
   ``optimizer -> list[Tensor] | None`` for these torch.optim classes (users may
   register more):

   Adam, AdamW  P = (1−β₁ᵗ)(√(v_t/(1−β₂ᵗ)) + ε), v = ``max_exp_avg_sq`` with amsgrad.
                torch steps x ← x − lr·m/((1−β₁ᵗ)(√v̂ + ε)); Cohen's Eq. 2 prints the
                (1−β₁ᵗ) factor inverted, we follow torch. (AdamW's decoupled decay is not
                part of P.)
   NAdam        P = √(v_t/(1−β₂ᵗ)) + ε. torch's step is
                −lr·[(1−μ_t)/(1−Πμ)·g + μ_{t+1}/(1−Πμ·μ_{t+1})·m]/(√v̂ + ε): the two
                bias factors differ per term, so no single diagonal absorbs them; they
                tend to 1 within tens of steps and ``thresholds`` ignores them too (its
                NAdam threshold is for x ← x − lr·((1−μ)g + μm)/P), so P is the common
                denominator.
   RMSprop      P = √v + ε; centered: √(v − ḡ²) + ε (ḡ = ``grad_avg``). With momentum
                the step is buf ← μ·buf + g/P, x ← x − lr·buf: same P.
   Adagrad      P = √(Σg²) + ε. The lr decay lr/(1 + (t−1)·lr_decay) is a learning-rate
                schedule, not part of P (``thresholds`` applies it to the lr).
   Adamax       P = (1−β₁ᵗ)·u_t, u = ``exp_inf`` (torch: x ← x − lr/(1−β₁ᵗ)·m/u).
   (SGD and unknown classes: no entry, None.)

3. otherwise None. None also means "no state yet" (before the first step, or a parameter
   that has never had a gradient): P_0 is undefined with bias correction.

P comes back as one tensor per parameter, in ``optimizer.param_groups`` order, or — with
``params`` — in the order of ``params`` (e.g. a ``LossHessian``'s), in each parameter's
dtype and device.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.optim import Optimizer

from stability_bench.registry import Registry

__all__ = ["PRECONDITIONERS", "diagonal_preconditioner", "is_preconditioned", "second_moment",
           "flat_diagonal", "precond_sqrt_inv"]

PRECONDITIONERS: Registry[Callable[[Optimizer], list[torch.Tensor] | None]] = Registry("preconditioner")


def _params(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _per_param(optimizer: Optimizer, fn: Callable[[torch.Tensor, dict, dict], torch.Tensor | None]):
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


def _step(state: dict) -> int:
    return int(float(state["step"])) if "step" in state else 0


def _after_first_step(optimizer: Optimizer, formula: Callable[[dict, dict, int], torch.Tensor]):
    """:func:`_per_param` of ``formula(state, group, t)`` — P at step count t ≥ 1; None before
    the first step, where P_0 is undefined with bias correction."""
    def P(p, state, group):
        t = _step(state)
        return formula(state, group, t) if t >= 1 else None
    return _per_param(optimizer, P)


@PRECONDITIONERS.register("Adam")
@PRECONDITIONERS.register("AdamW")
def _adam(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta1, beta2 = (float(b) for b in group["betas"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        return bc1 * ((v / bc2).sqrt() + float(group["eps"]))
    return _after_first_step(optimizer, P)


@PRECONDITIONERS.register("NAdam")
def _nadam(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta2 = float(group["betas"][1])
        return (state["exp_avg_sq"] / (1.0 - beta2 ** t)).sqrt() + float(group["eps"])
    return _after_first_step(optimizer, P)


@PRECONDITIONERS.register("RMSprop")
def _rmsprop(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        v = state["square_avg"]
        if group.get("centered"):
            v = v - state["grad_avg"].square()
        return v.sqrt() + float(group["eps"])
    return _after_first_step(optimizer, P)


@PRECONDITIONERS.register("Adagrad")
def _adagrad(optimizer: Optimizer) -> list[torch.Tensor] | None:
    return _after_first_step(optimizer,
                             lambda state, group, t: state["sum"].sqrt() + float(group["eps"]))


@PRECONDITIONERS.register("Adamax")
def _adamax(optimizer: Optimizer) -> list[torch.Tensor] | None:
    return _after_first_step(optimizer,
                             lambda state, group, t: (1.0 - float(group["betas"][0]) ** t) * state["exp_inf"])


def _reorder(Ps: list[torch.Tensor], optimizer: Optimizer, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    by_id = {id(p): P for p, P in zip(_params(optimizer), Ps)}
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(f"params {missing} are not optimized by this optimizer")
    return [by_id[id(p)] for p in params]


def _check(Ps, optimizer: Optimizer) -> list[torch.Tensor]:
    params = _params(optimizer)
    if len(Ps) != len(params):
        raise ValueError(f"preconditioner() gave {len(Ps)} tensors for {len(params)} parameters")
    out = []
    for P, p in zip(Ps, params):
        P = torch.as_tensor(P).detach()
        if P.shape != p.shape:
            raise ValueError(f"preconditioner shape {tuple(P.shape)} != parameter shape {tuple(p.shape)}")
        out.append(P.to(device=p.device, dtype=p.dtype))
    return out


def diagonal_preconditioner(optimizer: Optimizer, params: Sequence[torch.Tensor] | None = None
                            ) -> list[torch.Tensor] | None:
    """P_t of the last step, one tensor per parameter (see the module docstring), or None
    when unknown or before the first step. Never changes the optimizer."""
    hook = getattr(optimizer, "preconditioner", None)
    if callable(hook):
        Ps = hook()
    else:
        name = type(optimizer).__name__
        if name not in PRECONDITIONERS:
            return None
        Ps = PRECONDITIONERS.get(name)(optimizer)
    if Ps is None:
        return None
    Ps = _check(list(Ps), optimizer)
    return Ps if params is None else _reorder(Ps, optimizer, params)


def is_preconditioned(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` preconditions at all (so a None from
    :func:`diagonal_preconditioner` means "no state yet", not "P = I"): a class in
    ``PRECONDITIONERS``, or one with a ``preconditioner()`` hook other than the reference
    optimizers' base one (GD and the momentum methods inherit that and return None)."""
    from stability_bench.optimizers.reference import ReferenceOptimizer

    hook = getattr(type(optimizer), "preconditioner", None)
    if callable(hook):
        return hook is not ReferenceOptimizer.preconditioner
    return type(optimizer).__name__ in PRECONDITIONERS


def second_moment(optimizer: Optimizer, params: Sequence[torch.Tensor] | None = None,
                  bias_corrected: bool = True) -> list[torch.Tensor] | None:
    """The second-moment estimate v per parameter (for ``second_moment_ratio``): Adam,
    AdamW, NAdam and the reference Adam: ``exp_avg_sq``, divided by 1−β₂ᵗ when
    ``bias_corrected`` (and the optimizer applies bias correction); RMSprop: ``square_avg``
    (torch) / ``exp_avg_sq`` (reference). None for other optimizers or before a step."""
    def v_of(p, state, group):
        if "square_avg" in state:
            return state["square_avg"]
        if "exp_avg_sq" not in state:
            return None
        v = state["exp_avg_sq"]
        t = _step(state)
        if "betas" in group:
            beta2 = float(group["betas"][1])
        elif "beta2" in group:
            beta2 = float(group["beta2"])
        else:
            return v
        if bias_corrected and t >= 1 and group.get("bias_correction", True) and "step" in state:
            v = v / (1.0 - beta2 ** t)
        return v

    vs = _per_param(optimizer, v_of)
    if vs is None:
        return None
    vs = [v.detach() for v in vs]
    return vs if params is None else _reorder(vs, optimizer, params)


def flat_diagonal(P: Sequence[torch.Tensor] | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """P (per-parameter list or already flat) as one flat vector."""
    if torch.is_tensor(P):
        return P.detach().reshape(-1).to(dtype)
    return torch.cat([t.detach().reshape(-1) for t in P]).to(dtype)


def precond_sqrt_inv(P: Sequence[torch.Tensor] | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """P^{-1/2} as a flat vector; P must be > 0 everywhere."""
    flat = flat_diagonal(P, dtype)
    if not bool(torch.all(flat > 0)):
        raise ValueError("preconditioner entries must be > 0 (and finite)")
    return flat.rsqrt()
