"""The stability threshold of a live optimizer, read from its current hyperparameters.

``stability_threshold(opt)`` gives the largest (preconditioned) sharpness the optimizer
tolerates on a quadratic, for ``opt.param_groups[0]`` as it is now (so it follows lr
schedules). Adaptive methods are treated with their preconditioner frozen, as in
Cohen et al. 2022: the threshold applies to lambda_1(P^-1 H).

Lookup order:
1. an optimizer with a ``stability_threshold()`` method (the reference optimizers, and
   the documented hook for users' own optimizers) answers for itself;
2. otherwise ``TORCH_THRESHOLDS``, keyed by class name, holds a function
   ``optimizer -> float | None`` for the torch.optim classes below (users may register
   more);
3. otherwise None.

Weight decay is ignored throughout: thresholds are for the Hessian of the loss alone.
(Coupled L2 decay adds weight_decay * I to it; AdamW's decoupled decay shrinks x by
1 - lr*wd each step, a small contraction that the threshold does not include.)
"""
from __future__ import annotations

from typing import Callable

from torch.optim import Optimizer

from stability_bench.registry import Registry

from . import theory

__all__ = ["TORCH_THRESHOLDS", "stability_threshold"]

TORCH_THRESHOLDS: Registry[Callable[[Optimizer], float | None]] = Registry("torch optimizer threshold")


def stability_threshold(optimizer: Optimizer) -> float | None:
    """The theoretical stability threshold of ``optimizer``, or None if unknown."""
    hook = getattr(optimizer, "stability_threshold", None)
    if callable(hook):
        value = hook()
        return None if value is None else float(value)
    name = type(optimizer).__name__
    if name in TORCH_THRESHOLDS:
        return TORCH_THRESHOLDS.get(name)(optimizer)
    return None


def _steps_taken(optimizer: Optimizer) -> int:
    """Steps taken by the first parameter of the first group that has state (0 if none)."""
    for p in optimizer.param_groups[0]["params"]:
        state = optimizer.state.get(p)
        if state and "step" in state:
            return int(float(state["step"]))
    return 0


@TORCH_THRESHOLDS.register("SGD")
def _sgd(opt: Optimizer) -> float | None:
    """Plain SGD: 2/lr. With momentum beta and dampening d, torch keeps
    buf <- beta*buf + (1-d)*g and steps x <- x - lr*buf; with m = buf/(1-d) this is
    m <- beta*m + g, x <- x - lr*(1-d)*m: StandardHB at learning rate lr*(1-d), so
    (2 + 2*beta)/((1-d)*lr). (torch sets buf = g, undamped, on the first step only;
    that changes the initial condition, not the recurrence.) nesterov=True (torch
    requires d = 0) is StandardNesterov at lr. d >= 1 leaves no gradient feedback: None.
    """
    group = opt.param_groups[0]
    lr, beta = float(group["lr"]), float(group["momentum"])
    if beta == 0:
        return theory.gd_threshold(lr)
    if group["nesterov"]:
        return theory.standard_nesterov_threshold(lr, beta)
    effective_lr = lr * (1.0 - float(group["dampening"]))
    return theory.standard_hb_threshold(effective_lr, beta) if effective_lr > 0 else None


@TORCH_THRESHOLDS.register("Adam")
@TORCH_THRESHOLDS.register("AdamW")
def _adam(opt: Optimizer) -> float:
    """Adam and AdamW: EMA heavy ball on P^-1 H, (2 + 2*beta1)/((1 - beta1)*lr) = 38/lr
    at beta1 = 0.9 (Cohen §4, Fig. 5, which finds the same for AdamW and AMSGrad).
    Bias correction and amsgrad change P, not the threshold; weight decay is ignored."""
    group = opt.param_groups[0]
    return theory.adam_threshold(float(group["lr"]), float(group["betas"][0]))


@TORCH_THRESHOLDS.register("NAdam")
def _nadam(opt: Optimizer) -> float:
    """NAdam: x <- x - lr*((1-mu)*g + mu*m)/P with m an EMA of g (beta1), where torch's
    momentum cache mu_t = beta1*(1 - 0.5*0.96^(t*momentum_decay)) rises slowly from
    beta1/2 towards beta1 (about 0.8 at t = 10^4 with the default 4e-3). We freeze mu at
    the next step's value and use ``theory.nadam_threshold``; the NAdam bias-correction
    factors 1/(1 - prod mu), which tend to 1 within tens of steps, are ignored. As
    mu -> beta1 this tends to EMA Nesterov, 13.57/lr at beta1 = 0.9, the value Cohen
    et al. report for Nadam (Fig. 5, whose Nadam has no momentum-decay schedule).
    Using 13.57/lr for torch's NAdam would overstate its threshold by up to ~4x early on.
    """
    group = opt.param_groups[0]
    beta1 = float(group["betas"][0])
    t_next = _steps_taken(opt) + 1
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t_next * float(group["momentum_decay"])))
    return theory.nadam_threshold(float(group["lr"]), beta1, mu)


@TORCH_THRESHOLDS.register("RMSprop")
def _rmsprop(opt: Optimizer) -> float:
    """RMSprop: preconditioned GD, 2/lr. With momentum mu, torch does
    buf <- mu*buf + g/P; x <- x - lr*buf: preconditioned StandardHB, (2 + 2*mu)/lr.
    ``centered`` changes P only."""
    group = opt.param_groups[0]
    lr, momentum = float(group["lr"]), float(group["momentum"])
    if momentum == 0:
        return theory.rmsprop_threshold(lr)
    return theory.standard_hb_threshold(lr, momentum)


@TORCH_THRESHOLDS.register("Adagrad")
def _adagrad(opt: Optimizer) -> float:
    """Adagrad: preconditioned GD, 2/lr (Cohen Fig. 5), at the next step's decayed
    learning rate lr/(1 + t*lr_decay) after t steps."""
    group = opt.param_groups[0]
    lr = float(group["lr"]) / (1.0 + _steps_taken(opt) * float(group["lr_decay"]))
    return theory.gd_threshold(lr)
