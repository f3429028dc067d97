"""One record per optimizer class: everything the harness knows about it, in one place
(in the spirit of PyTorch's ``OptimizerInfo``).

An :class:`OptimizerRecord` says, for one class, its stability threshold rule, its
preconditioner reader, the state keys its second-moment estimate v is read from, and the
step contract it declares. A field left None says nothing: the lookup goes on to the
class's ancestors. Facts follow subclasses along the MRO only while the subclass still
runs the recorded class's update (``optimizers.lookup``), and an optimizer's own hooks
(``stability_threshold``, ``preconditioner``, ``precond_inv_sqrt_apply``,
``stability_bench_contract``) come first. The generic machinery reads the records:
``optimizers.thresholds`` (``TORCH_THRESHOLDS``, the ``threshold`` field),
``probes.preconditioner`` (``PRECONDITIONERS`` and ``SECOND_MOMENTS``, the
``preconditioner`` and ``second_moment`` fields) and ``contracts`` (the ``contract`` field).

**Adding an optimizer is one record in this file** (its formulas next to it): append an
``OptimizerRecord`` to the list at the bottom. From outside the package, ``RECORDS.add(...)``
does the same, and ``TORCH_THRESHOLDS.register(cls, rule)`` /
``PRECONDITIONERS.register(cls, reader)`` write one field of a class's record.

Every torch.optim class has a record stating its threshold and its preconditioner, as a
formula or explicitly unknown with the reason (LBFGS, Rprop, Muon). The reference
optimizers answer both through their own hooks; their records give the second moments.
The formulas' derivations are their docstrings; the conventions (which P, which step) are
those of ``probes.preconditioner`` and ``optimizers.thresholds``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch.optim import Optimizer

from . import reference, theory
from .lookup import Records, Unknown, UnknownTheory, optim_class
from .state import after_first_step, steps_taken

__all__ = ["OptimizerRecord", "RECORDS", "Rule", "Reader", "IDENTITY", "Unknown",
           "adafactor_relative_step", "adafactor_second_moment", "radam_rectification"]

Rule = Callable[[dict, dict], float]
Reader = Callable[[Optimizer], "list[torch.Tensor] | None"]


@dataclass(frozen=True)
class OptimizerRecord:
    """What the harness knows about one optimizer class (None: nothing; the ancestors say).

    ``threshold``: ``rule(group, state) -> float``, the stability threshold for param group
    ``group`` (``state``: the first parameter's, {} before a step), raising
    ``UnknownTheory(reason)`` where theory gives none — or ``Unknown(reason)`` for the class.
    ``preconditioner``: ``reader(optimizer) -> list[Tensor] | None``, the diagonal P per
    parameter (None before a step), :data:`IDENTITY` for P = I, or ``Unknown(reason)``.
    ``second_moment``: the state keys ``probes.preconditioner.second_moment`` reads the
    second-moment estimate v from (a class without one has None).
    ``contract``: the step contracts the class declares (``contracts.CONTRACTS``), added to
    those detected from its ``step``."""

    cls: type | None
    threshold: Rule | Unknown | None = None
    preconditioner: Reader | Unknown | None = None
    second_moment: tuple[str, ...] | None = None
    contract: frozenset[str] | None = None


RECORDS = Records(OptimizerRecord)


def IDENTITY(optimizer: Optimizer) -> None:
    """The reader of methods without a preconditioner (P = I)."""
    return None


def _lr(group: dict) -> float:
    return float(group["lr"])


# ---- SGD --------------------------------------------------------------------------------


def _sgd_threshold(group: dict, state: dict) -> float:
    """Plain SGD: 2/lr. With momentum beta and dampening d, torch keeps
    buf <- beta*buf + (1-d)*g and steps x <- x - lr*buf; with m = buf/(1-d) this is
    m <- beta*m + g, x <- x - lr*(1-d)*m: StandardHB at learning rate lr*(1-d), so
    (2 + 2*beta)/((1-d)*lr). (torch sets buf = g, undamped, on the first step only;
    that changes the initial condition, not the recurrence.) nesterov=True (torch
    requires d = 0) is StandardNesterov at lr.
    """
    lr, beta = _lr(group), float(group["momentum"])
    if beta == 0:
        return theory.gd_threshold(lr)
    if group["nesterov"]:
        return theory.standard_nesterov_threshold(lr, beta)
    effective_lr = lr * (1.0 - float(group["dampening"]))
    if not effective_lr > 0:
        raise UnknownTheory(f"dampening {group['dampening']} >= 1 leaves no gradient in the momentum "
                            "buffer after the first step: no feedback, so no stability threshold")
    return theory.standard_hb_threshold(effective_lr, beta)


# ---- the Adam family --------------------------------------------------------------------


def _ema_heavy_ball_threshold(group: dict, state: dict) -> float:
    """Adam and its relatives whose step is x <- x - lr*P^-1*m with m an EMA of g: EMA
    heavy ball on P^-1 H, (2 + 2*beta1)/((1 - beta1)*lr) = 38/lr at beta1 = 0.9 (Cohen
    §4, Fig. 5, which finds the same for AdamW and AMSGrad). Bias correction, amsgrad,
    Adamax's infinity norm, RAdam's rectification and SparseAdam's eps placement change
    P, not the threshold; weight decay is ignored."""
    return theory.adam_threshold(_lr(group), float(group["betas"][0]))


def _adam_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta1, beta2 = (float(b) for b in group["betas"])
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        return bc1 * ((v / bc2).sqrt() + float(group["eps"]))
    return after_first_step(optimizer, P)


def _nadam_threshold(group: dict, state: dict) -> float:
    """NAdam: x <- x - lr*((1-mu)*g + mu*m)/P with m an EMA of g (beta1), where torch's
    momentum cache mu_t = beta1*(1 - 0.5*0.96^(t*momentum_decay)) rises slowly from
    beta1/2 towards beta1 (about 0.8 at t = 10^4 with the default 4e-3). We freeze mu at
    the next step's value and use ``theory.nadam_threshold``; the NAdam bias-correction
    factors 1/(1 - prod mu), which tend to 1 within tens of steps, are ignored. As
    mu -> beta1 this tends to EMA Nesterov, 13.57/lr at beta1 = 0.9, the value Cohen
    et al. report for Nadam (Fig. 5, whose Nadam has no momentum-decay schedule).
    Using 13.57/lr for torch's NAdam would overstate its threshold by up to ~4x early on.
    """
    beta1 = float(group["betas"][0])
    t_next = steps_taken(state) + 1
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t_next * float(group["momentum_decay"])))
    return theory.nadam_threshold(_lr(group), beta1, mu)


def _nadam_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta2 = float(group["betas"][1])
        return (state["exp_avg_sq"] / (1.0 - beta2 ** t)).sqrt() + float(group["eps"])
    return after_first_step(optimizer, P)


def radam_rectification(beta2: float, t: int) -> float | None:
    """RAdam's r_t (Liu et al. 2020, as torch computes it), or None while the SMA length
    ρ_t ≤ 5 (torch then takes a plain momentum step)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2 ** t / (1.0 - beta2 ** t)
    if rho_t <= 5.0:
        return None
    return math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))


def _radam_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta1, beta2 = (float(b) for b in group["betas"])
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        r = radam_rectification(beta2, t)
        if r is None:
            return torch.full_like(state["exp_avg_sq"], bc1)
        return bc1 * (state["exp_avg_sq"].sqrt() + float(group["eps"])) / (r * math.sqrt(bc2))
    return after_first_step(optimizer, P)


def _sparse_adam_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        beta1, beta2 = (float(b) for b in group["betas"])
        return (1.0 - beta1 ** t) * (state["exp_avg_sq"].sqrt() + float(group["eps"])) / math.sqrt(1.0 - beta2 ** t)
    return after_first_step(optimizer, P)


def _adamax_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    return after_first_step(optimizer,
                            lambda state, group, t: (1.0 - float(group["betas"][0]) ** t) * state["exp_inf"])


# ---- RMSprop, Adagrad, Adadelta ---------------------------------------------------------


def _rmsprop_threshold(group: dict, state: dict) -> float:
    """RMSprop: preconditioned GD, 2/lr. With momentum mu, torch does
    buf <- mu*buf + g/P; x <- x - lr*buf: preconditioned StandardHB, (2 + 2*mu)/lr.
    ``centered`` changes P only."""
    lr, momentum = _lr(group), float(group["momentum"])
    if momentum == 0:
        return theory.rmsprop_threshold(lr)
    return theory.standard_hb_threshold(lr, momentum)


def _rmsprop_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        v = state["square_avg"]
        if group.get("centered"):
            v = v - state["grad_avg"].square()
        return v.sqrt() + float(group["eps"])
    return after_first_step(optimizer, P)


def _adagrad_threshold(group: dict, state: dict) -> float:
    """Adagrad: preconditioned GD, 2/lr (Cohen Fig. 5), at the next step's decayed
    learning rate lr/(1 + t*lr_decay) after t steps."""
    return theory.gd_threshold(_lr(group) / (1.0 + steps_taken(state) * float(group["lr_decay"])))


def _adagrad_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    return after_first_step(optimizer,
                            lambda state, group, t: state["sum"].sqrt() + float(group["eps"]))


def _adadelta_threshold(group: dict, state: dict) -> float:
    """Adadelta: x <- x - lr*g/P with P = sqrt(v + eps)/sqrt(u + eps) (u: the EMA of past
    squared updates): preconditioned GD with both accumulators frozen, 2/lr."""
    return theory.gd_threshold(_lr(group))


def _adadelta_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(state, group, t):
        eps = float(group["eps"])
        return (state["square_avg"] + eps).sqrt() / (state["acc_delta"] + eps).sqrt()
    return after_first_step(optimizer, P)


# ---- Adafactor --------------------------------------------------------------------------


def adafactor_relative_step(group: dict, steps_taken: int) -> float:
    """rho_t = min(lr, 1/sqrt(t)) of torch's Adafactor for the step after ``steps_taken``."""
    return min(_lr(group), 1.0 / math.sqrt(steps_taken + 1))


def _adafactor_threshold(group: dict, state: dict) -> float:
    """torch's Adafactor has no momentum: x <- x - rho_t*g/P (P per element, see
    ``probes.preconditioner``; the parameter-scale factor is in P), preconditioned GD
    at lr rho_t = min(lr, 1/sqrt(t)): 2/rho_t for the next step t. (Cohen et al.'s Adafactor
    had momentum 0.9; torch's has none.) Update clipping (d) only shortens steps."""
    return theory.gd_threshold(adafactor_relative_step(group, steps_taken(state)))


def adafactor_second_moment(p: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
    """Adafactor's per-element estimate V̂ of E[g²] from its state: R·C/mean(R) over the
    last two dims of a matrix (R, C the row and column EMAs of g²), the EMA itself for a
    vector — as torch's step builds it (the mean of R clamped at ε₁)."""
    if state.get("row_var") is not None and p.dim() > 1:
        eps1 = _adafactor_eps1(p, group)
        row = state["row_var"]
        return (row @ state["col_var"]) / row.mean(dim=-2, keepdim=True).clamp(min=eps1)
    return state["variance"]


def _adafactor_eps1(p: torch.Tensor, group: dict) -> float:
    eps1 = group["eps"][0]
    return torch.finfo(p.dtype).eps if eps1 is None else float(eps1)


def _adafactor_preconditioner(optimizer: Optimizer) -> list[torch.Tensor] | None:
    def P(p, state, group, t):
        eps1, eps2 = _adafactor_eps1(p, group), float(group["eps"][1])
        scale = max(eps2, float(p.norm(2)) / math.sqrt(p.numel()))
        return adafactor_second_moment(p, state, group).clamp(min=eps1 * eps1).sqrt() / scale
    return after_first_step(optimizer, P, with_param=True)


# ---- ASGD -------------------------------------------------------------------------------


def _asgd_threshold(group: dict, state: dict) -> float:
    """ASGD steps x <- (1 - lambd*eta)*x - eta*g (the average it keeps does not feed back):
    on a*x^2/2, x <- (1 - eta*(a + lambd))*x, stable while a < 2/eta - lambd; eta is the
    next step's (``state['eta']``; lr before the first step)."""
    eta = float(state["eta"]) if "eta" in state else _lr(group)
    return theory.gd_threshold(eta) - float(group["lambd"])


# ---- the records ------------------------------------------------------------------------

_ADAM_V = ("exp_avg_sq",)

RECORDS.add(
    OptimizerRecord(optim_class("SGD"), threshold=_sgd_threshold, preconditioner=IDENTITY),
    OptimizerRecord(optim_class("ASGD"), threshold=_asgd_threshold, preconditioner=IDENTITY),
    OptimizerRecord(optim_class("Adam"), threshold=_ema_heavy_ball_threshold,
                    preconditioner=_adam_preconditioner, second_moment=_ADAM_V),
    OptimizerRecord(optim_class("AdamW"), threshold=_ema_heavy_ball_threshold,
                    preconditioner=_adam_preconditioner, second_moment=_ADAM_V),
    OptimizerRecord(optim_class("NAdam"), threshold=_nadam_threshold,
                    preconditioner=_nadam_preconditioner, second_moment=_ADAM_V),
    OptimizerRecord(optim_class("RAdam"), threshold=_ema_heavy_ball_threshold,
                    preconditioner=_radam_preconditioner, second_moment=_ADAM_V),
    OptimizerRecord(optim_class("SparseAdam"), threshold=_ema_heavy_ball_threshold,
                    preconditioner=_sparse_adam_preconditioner, second_moment=_ADAM_V),
    OptimizerRecord(optim_class("Adamax"), threshold=_ema_heavy_ball_threshold,
                    preconditioner=_adamax_preconditioner),
    OptimizerRecord(optim_class("RMSprop"), threshold=_rmsprop_threshold,
                    preconditioner=_rmsprop_preconditioner, second_moment=("square_avg",)),
    OptimizerRecord(optim_class("Adagrad"), threshold=_adagrad_threshold,
                    preconditioner=_adagrad_preconditioner),
    OptimizerRecord(optim_class("Adadelta"), threshold=_adadelta_threshold,
                    preconditioner=_adadelta_preconditioner, second_moment=("square_avg",)),
    OptimizerRecord(optim_class("Adafactor"), threshold=_adafactor_threshold,
                    preconditioner=_adafactor_preconditioner, second_moment=("row_var", "col_var", "variance")),
    OptimizerRecord(
        optim_class("LBFGS"), contract=frozenset({"closure"}),
        threshold=Unknown("a quasi-Newton method: each step is a line search along -H_k g with H_k built "
                          "from the last history_size curvature pairs (closure), not x <- x - lr*P^-1*m "
                          "with a frozen P; Cohen et al. give no threshold for it"),
        preconditioner=Unknown("its P is the inverse of a low-rank quasi-Newton Hessian model rebuilt "
                               "from the last history_size steps, applied with a line search: not a "
                               "diagonal, and not kept in a form the probes can read")),
    OptimizerRecord(
        optim_class("Rprop"),
        threshold=Unknown("the step depends on the sign of g only (per-element step sizes grow or shrink "
                          "with sign changes), so on a quadratic it is not a linear recurrence and no "
                          "eigenvalue threshold exists"),
        preconditioner=Unknown("the step is sign(g) times per-element step sizes: it does not scale with "
                               "g, so no P turns it into x ← x − lr·P⁻¹g")),
    OptimizerRecord(
        optim_class("Muon"),
        threshold=Unknown("the step is the orthogonalised momentum (Newton-Schulz polar factor), whose "
                          "size does not depend on the gradient's: not a linear recurrence on a "
                          "quadratic, so no eigenvalue threshold"),
        preconditioner=Unknown("the step is the orthogonalised momentum (Newton–Schulz polar factor): a "
                               "nonlinear map of m, not P⁻¹m for any fixed P")),
    # The reference optimizers give their threshold and P through their own hooks.
    OptimizerRecord(reference.Adam, second_moment=_ADAM_V),
    OptimizerRecord(reference.RMSprop, second_moment=_ADAM_V),
)
