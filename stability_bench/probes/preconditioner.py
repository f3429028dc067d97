"""The preconditioner P of a live optimizer, for preconditioned-sharpness probes — or the
reason it is unknown.

Convention (Cohen et al. 2022, §2, and ``optimizers.reference``): the step is
x ← x − lr · P⁻¹ · (direction), where the direction is g (RMSprop, Adagrad) or the
momentum m (Adam: m an EMA of g, *not* bias-corrected). P is the matrix that turns the
optimizer's actual update into that form, so the preconditioned sharpness
λ₁(P⁻¹H) = λ₁(P^{-1/2} H P^{-1/2}) is compared with the threshold of the
non-preconditioned method at the same lr (``optimizers.thresholds``).

Which step. For the Adam family, RMSprop and Adagrad, P is P_t, the preconditioner
*applied at the last step taken* (t = the optimizer's step count), built from the current
state with step t's bias correction — the P of Cohen's λ₁(P_t⁻¹H_t) and what
``reference.Adam.preconditioner()`` returns; the next step's P also folds in the next
gradient, not known yet. Adadelta and Adafactor cannot give P_t back (their state no longer
holds what that step divided by: Adadelta's previous u, the parameter scale before
Adafactor's step): for them P is the one the *next* step applies if its gradient leaves the
second-moment statistics where they are — the same frozen-statistics P, one step on.

:func:`preconditioning` answers, in this order:

1. ``precond_inv_sqrt_apply(vectors)`` on the optimizer: a genuinely non-diagonal P
   (Shampoo-, Muon-like) given as an operator — ``vectors``: one tensor per parameter in
   ``param_groups`` order, shaped like it and in its dtype; returns P^{-1/2} applied to
   them, same shapes (P symmetric positive definite; None while unknown);
2. ``preconditioner()`` on the optimizer: the diagonal, one tensor per parameter (the
   reference optimizers; the hook for users' own optimizers; None while unknown);
   ``preconditioner = optimizers.lookup.no_preconditioner`` declares P = I;
3. ``PRECONDITIONERS``, the ``preconditioner`` of the optimizer records
   (``optimizers.records``, where the readers are), keyed by class and followed along the
   MRO: a user's subclass of torch's AdamW gets AdamW's reader unless it overrides AdamW's
   step (``optimizers.lookup`` says why that rule); every torch.optim class has one:

   SGD, ASGD    P = I (no preconditioner).
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
   RAdam        P = (1−β₁ᵗ)(√v_t + ε)/(r_t√(1−β₂ᵗ)) once the SMA length ρ_t > 5 (r_t the
                rectification), P = (1−β₁ᵗ) before (those steps are momentum SGD).
   SparseAdam   P = (1−β₁ᵗ)(√v_t + ε)/√(1−β₂ᵗ), for the entries a step's sparse gradient
                holds (only those move).
   RMSprop      P = √v + ε; centered: √(v − ḡ²) + ε (ḡ = ``grad_avg``). With momentum
                the step is buf ← μ·buf + g/P, x ← x − lr·buf: same P.
   Adagrad      P = √(Σg²) + ε. The lr decay lr/(1 + (t−1)·lr_decay) is a learning-rate
                schedule, not part of P (``thresholds`` applies it to the lr).
   Adamax       P = (1−β₁ᵗ)·u_t, u = ``exp_inf`` (torch: x ← x − lr/(1−β₁ᵗ)·m/u).
   Adadelta     P = √(v + ε)/√(u + ε), v = ``square_avg``, u = ``acc_delta`` (the EMA of
                squared past updates): x ← x − lr·g/P.
   Adafactor    P = √max(V̂, ε₁²) / max(ε₂, RMS(x)) per element, V̂ = R·C/mean(R) from
                the factored row (R) and column (C) statistics of a matrix (the last two
                dims), the plain EMA of g² for a vector; x ← x − ρ_t·g/P with
                ρ_t = min(lr, 1/√t) (``thresholds``: 2/ρ_t). Update clipping
                (RMS(g/√V̂) > d) is not part of P: it only shortens steps.
   LBFGS, Rprop, Muon: unknown, with the reason (``PRECONDITIONERS.unknown()``).

4. otherwise unknown: ``reason`` says why. P is never silently I for an optimizer it does
   not know.

P comes back as one tensor per parameter, in ``optimizer.param_groups`` order, or — with
``params`` — in the order of ``params`` (e.g. a ``LossHessian``'s), in each parameter's
dtype and device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch.optim import Optimizer

from stability_bench.optimizers.lookup import ClassTable, class_label, no_preconditioner, trusted_hook
from stability_bench.optimizers.records import (
    IDENTITY,
    RECORDS,
    Reader,
    adafactor_second_moment,
    radam_rectification,
)
from stability_bench.optimizers.state import per_param, steps_taken

__all__ = ["PRECONDITIONERS", "IDENTITY", "Preconditioning", "preconditioning", "precond_status",
           "diagonal_preconditioner", "is_preconditioned", "second_moment", "second_moment_status", "SECOND_MOMENTS",
           "flat_diagonal", "precond_sqrt_inv", "adafactor_second_moment", "radam_rectification"]

PRECONDITIONERS: ClassTable[Reader] = ClassTable("preconditioner", "preconditioner", RECORDS, "preconditioner")
NO_STEP_YET = "no optimizer step yet: P is built from the optimizer's state, which it does not have yet"


def _params(optimizer: Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


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


@dataclass(frozen=True)
class Preconditioning:
    """What is known of an optimizer's P now: ``kind`` "identity" (no preconditioner),
    "diagonal" (``diagonal``: one tensor per parameter), "operator" (``inv_sqrt``: flat
    float64 u ↦ P^{-1/2}u) or "unknown" (``reason`` says why: an optimizer the harness
    does not know, or no step yet)."""

    kind: Literal["identity", "diagonal", "operator", "unknown"]
    diagonal: list[torch.Tensor] | None = None
    inv_sqrt: Callable[[torch.Tensor], torch.Tensor] | None = None
    reason: str | None = None

    @property
    def known(self) -> bool:
        return self.kind != "unknown"

    @property
    def P(self):
        """What the quantity functions take: the diagonal, the operator, or None (P = I)."""
        return self.diagonal if self.kind == "diagonal" else self.inv_sqrt


def _unknown(reason: str) -> Preconditioning:
    return Preconditioning("unknown", reason=reason)


def _operator(hook: Callable, optimizer: Optimizer, params: Sequence[torch.Tensor]
              ) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """flat u (in ``params`` order, float64) ↦ P^{-1/2}u through the optimizer's
    ``precond_inv_sqrt_apply`` (which works in param-group order and the params' dtype)."""
    own = _params(optimizer)
    index = {id(p): i for i, p in enumerate(own)}
    missing = [i for i, p in enumerate(params) if id(p) not in index]
    if missing:
        raise ValueError(f"params {missing} are not optimized by this optimizer")
    if len(params) != len(own):
        raise ValueError(f"precond_inv_sqrt_apply acts on all {len(own)} parameters of the optimizer; "
                         f"got {len(params)}")
    sizes = [p.numel() for p in params]

    def apply(u: torch.Tensor) -> torch.Tensor | None:
        parts = torch.split(u.reshape(-1), sizes)
        vectors: list[torch.Tensor | None] = [None] * len(own)
        for p, part in zip(params, parts):
            vectors[index[id(p)]] = part.reshape(p.shape).to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            out = hook(optimizer, vectors)
        if out is None:
            return None
        out = list(out)
        if len(out) != len(own) or any(o.shape != p.shape for o, p in zip(out, own)):
            raise ValueError("precond_inv_sqrt_apply must return one tensor per parameter, shaped like it")
        return torch.cat([out[index[id(p)]].detach().reshape(-1).to(torch.float64) for p in params]).to(u.device)
    return apply


def preconditioning(optimizer: Optimizer, params: Sequence[torch.Tensor] | None = None) -> Preconditioning:
    """P now (see the module docstring), in the order of ``params`` (default: the
    optimizer's), or why it is unknown. Never changes the optimizer."""
    cls = type(optimizer)
    params = _params(optimizer) if params is None else list(params)
    hook, refused = trusted_hook(cls, "precond_inv_sqrt_apply", "preconditioner")
    if hook is not None:
        apply = _operator(hook, optimizer, params)
        dim = sum(p.numel() for p in params)
        if apply(torch.zeros(dim, dtype=torch.float64)) is None:
            return _unknown(f"{class_label(cls)}.precond_inv_sqrt_apply() returned None ({NO_STEP_YET})")
        return Preconditioning("operator", inv_sqrt=apply)
    if refused:
        return _unknown(refused)
    hook, refused = trusted_hook(cls, "preconditioner", "preconditioner")
    if hook is None and refused:
        return _unknown(refused)
    if hook is not None and hook is no_preconditioner:
        return Preconditioning("identity")
    if hook is None:
        reader, reason = PRECONDITIONERS.lookup(cls)
        if reader is None:
            return _unknown(reason)
        if reader is IDENTITY:
            return Preconditioning("identity")
        hook = reader
    Ps = hook(optimizer)
    if Ps is None:
        return _unknown(NO_STEP_YET)
    Ps = _check(list(Ps), optimizer)
    return Preconditioning("diagonal", diagonal=_reorder(Ps, optimizer, params))


def diagonal_preconditioner(optimizer: Optimizer, params: Sequence[torch.Tensor] | None = None
                            ) -> list[torch.Tensor] | None:
    """The diagonal P (see the module docstring), or None: unknown, no step yet, P = I or
    not a diagonal — :func:`preconditioning` says which."""
    return preconditioning(optimizer, params).diagonal


def is_preconditioned(optimizer: Optimizer) -> bool:
    """Whether ``optimizer`` has a preconditioner other than I (known or not)."""
    info = preconditioning(optimizer)
    return info.kind != "identity"


def precond_status(cls: type, hyperparams: dict | None = None) -> str | None:
    """None if the probes can know ``cls``'s P (once it has stepped), else the reason — at
    class level, for validation. (No P depends on hyperparameters; the argument is there
    to mirror ``thresholds.threshold_status``.)"""
    for name in ("precond_inv_sqrt_apply", "preconditioner"):
        hook, refused = trusted_hook(cls, name, "preconditioner")
        if hook is not None:
            return None
        if refused:
            return refused
    return PRECONDITIONERS.lookup(cls)[1]


def second_moment(optimizer: Optimizer, params: Sequence[torch.Tensor] | None = None,
                  bias_corrected: bool = True) -> list[torch.Tensor] | None:
    """The second-moment estimate v per parameter (for ``second_moment_ratio``): Adam,
    AdamW, NAdam, RAdam, SparseAdam and the reference Adam: ``exp_avg_sq``, divided by
    1−β₂ᵗ when ``bias_corrected`` (and the optimizer applies bias correction); RMSprop and
    Adadelta: ``square_avg`` (torch) / ``exp_avg_sq`` (reference); Adafactor: its V̂
    (:func:`adafactor_second_moment`). None for other optimizers or before a step."""
    def v_of(p, state, group):
        if "square_avg" in state:
            return state["square_avg"]
        if "exp_avg_sq" not in state:
            return adafactor_second_moment(p, state, group) if "row_var" in state or "variance" in state else None
        v = state["exp_avg_sq"]
        t = steps_taken(state)
        if "betas" in group:
            beta2 = float(group["betas"][1])
        elif "beta2" in group:
            beta2 = float(group["beta2"])
        else:
            return v
        if bias_corrected and t >= 1 and group.get("bias_correction", True) and "step" in state:
            v = v / (1.0 - beta2 ** t)
        return v

    vs = per_param(optimizer, v_of)
    if vs is None:
        return None
    vs = [v.detach() for v in vs]
    return vs if params is None else _reorder(vs, optimizer, params)


SECOND_MOMENTS: ClassTable[tuple[str, ...]] = ClassTable("second-moment estimate v", None, RECORDS, "second_moment")


def second_moment_status(cls: type) -> str | None:
    """None if :func:`second_moment` reads a v for ``cls`` (once it has stepped), else why
    not (class level, for validation)."""
    reason = SECOND_MOMENTS.lookup(cls)[1]
    return None if reason is None else (f"{reason}; g²/v needs the optimizer's second-moment estimate "
                                        "(the harness reads exp_avg_sq, square_avg or Adafactor's factors)")


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
