"""The stability threshold of a live optimizer, read from its current hyperparameters.

``stability_threshold(opt)`` gives the largest (preconditioned) sharpness the optimizer
tolerates on a quadratic, for ``opt.param_groups[0]`` as it is now (so it follows lr
schedules). Adaptive methods are treated with their preconditioner frozen, as in
Cohen et al. 2022: the threshold applies to lambda_1(P^-1 H), P as in
``probes.preconditioner``. Where theory gives none, the answer is None and
``threshold_and_reason(opt)`` says why; ``threshold_status(cls, hyperparams)`` says it at
validation time, without an instance.

Lookup order:
1. an optimizer with a ``stability_threshold()`` method (the reference optimizers, and
   the documented hook for users' own optimizers) answers for itself — if the class that
   defines the method is the one whose step runs (see ``optimizers.lookup``);
2. otherwise ``TORCH_THRESHOLDS``, a table keyed by class and followed along the MRO with
   the same rule: a user's subclass of torch's AdamW gets AdamW's threshold, unless it
   overrides AdamW's ``step`` (or ``_init_group``); then it is unknown, with the reason.
   Every torch.optim class is in it, as a rule or as explicitly unknown with the reason
   (LBFGS, Rprop, Muon); users may register more: ``TORCH_THRESHOLDS.register(cls, rule)``
   with ``rule(group, state) -> float`` (``state``: the first parameter's, {} before a
   step) raising ``UnknownTheory(reason)`` where there is none;
3. otherwise unknown.

Weight decay is ignored throughout: thresholds are for the Hessian of the loss alone.
(Coupled L2 decay adds weight_decay * I to it; AdamW's decoupled decay shrinks x by
1 - lr*wd each step, a small contraction that the threshold does not include.)
``maximize=True`` ascends the loss: no threshold.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

from torch.optim import Optimizer

from . import theory
from .lookup import ClassTable, UnknownTheory, class_label, optim_class, trusted_hook

__all__ = ["TORCH_THRESHOLDS", "UnknownTheory", "stability_threshold", "threshold_and_reason",
           "threshold_status"]

Rule = Callable[[dict, dict], float]
TORCH_THRESHOLDS: ClassTable[Rule] = ClassTable("stability threshold", "stability_threshold")


def _first_state(optimizer: Optimizer) -> dict:
    """The state of the first parameter of the first group that has one ({} before a step)."""
    for p in optimizer.param_groups[0]["params"]:
        state = optimizer.state.get(p)
        if state:
            return state
    return {}


def _by_table(cls: type, group: dict, state: dict) -> tuple[float | None, str | None]:
    rule, reason = TORCH_THRESHOLDS.lookup(cls)
    if rule is None:
        return None, reason
    if group.get("maximize"):
        return None, "maximize=True ascends the loss: there is no stability threshold to descend under"
    try:
        return float(rule(group, state)), None
    except UnknownTheory as exc:
        return None, f"{class_label(cls)}: {exc}"


def threshold_and_reason(optimizer: Optimizer) -> tuple[float | None, str | None]:
    """(threshold, None), or (None, why it is unknown)."""
    cls = type(optimizer)
    hook, refused = trusted_hook(cls, "stability_threshold", "stability threshold")
    if hook is not None:
        value = hook(optimizer)
        return (None, f"{class_label(cls)}.stability_threshold() returned None") if value is None \
            else (float(value), None)
    if refused:
        return None, refused
    return _by_table(cls, optimizer.param_groups[0], _first_state(optimizer))


def stability_threshold(optimizer: Optimizer) -> float | None:
    """The theoretical stability threshold of ``optimizer``, or None if unknown."""
    return threshold_and_reason(optimizer)[0]


def _signature_defaults(cls: type) -> dict[str, Any]:
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not p.empty}


def threshold_status(cls: type, hyperparams: dict | None = None) -> str | None:
    """None if ``cls`` at ``hyperparams`` has a known threshold, else the reason — at
    class level (validation), before any step: the hyperparameters fill in the
    signature defaults of the class (and of its registered ancestors) as its first param
    group would hold them. A user's hook counts as known."""
    hook, refused = trusted_hook(cls, "stability_threshold", "stability threshold")
    if hook is not None:
        return None
    if refused:
        return refused
    group: dict[str, Any] = {}
    for k in reversed(cls.__mro__):
        if isinstance(k, type) and issubclass(k, Optimizer) and k is not Optimizer:
            group.update(_signature_defaults(k))
    group.update(hyperparams or {})
    try:
        return _by_table(cls, group, {})[1]
    except (KeyError, TypeError):  # a subclass whose __init__ fills the group differently: the run says
        return None
    except ValueError as exc:       # hyperparameters theory rejects (lr <= 0, beta1 >= 1)
        return str(exc)


def _steps(state: dict) -> int:
    """Steps taken, from a parameter's state (0 before the first step)."""
    return int(float(state["step"])) if "step" in state else 0


def _lr(group: dict) -> float:
    return float(group["lr"])


@TORCH_THRESHOLDS.register(optim_class("SGD"))
def _sgd(group: dict, state: dict) -> float:
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


def _ema_heavy_ball(group: dict, state: dict) -> float:
    """Adam and its relatives whose step is x <- x - lr*P^-1*m with m an EMA of g: EMA
    heavy ball on P^-1 H, (2 + 2*beta1)/((1 - beta1)*lr) = 38/lr at beta1 = 0.9 (Cohen
    §4, Fig. 5, which finds the same for AdamW and AMSGrad). Bias correction, amsgrad,
    Adamax's infinity norm, RAdam's rectification and SparseAdam's eps placement change
    P, not the threshold; weight decay is ignored."""
    return theory.adam_threshold(_lr(group), float(group["betas"][0]))


for _name in ("Adam", "AdamW", "Adamax", "RAdam", "SparseAdam"):
    TORCH_THRESHOLDS.register(optim_class(_name), _ema_heavy_ball)


@TORCH_THRESHOLDS.register(optim_class("NAdam"))
def _nadam(group: dict, state: dict) -> float:
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
    t_next = _steps(state) + 1
    mu = beta1 * (1.0 - 0.5 * 0.96 ** (t_next * float(group["momentum_decay"])))
    return theory.nadam_threshold(_lr(group), beta1, mu)


@TORCH_THRESHOLDS.register(optim_class("RMSprop"))
def _rmsprop(group: dict, state: dict) -> float:
    """RMSprop: preconditioned GD, 2/lr. With momentum mu, torch does
    buf <- mu*buf + g/P; x <- x - lr*buf: preconditioned StandardHB, (2 + 2*mu)/lr.
    ``centered`` changes P only."""
    lr, momentum = _lr(group), float(group["momentum"])
    if momentum == 0:
        return theory.rmsprop_threshold(lr)
    return theory.standard_hb_threshold(lr, momentum)


@TORCH_THRESHOLDS.register(optim_class("Adagrad"))
def _adagrad(group: dict, state: dict) -> float:
    """Adagrad: preconditioned GD, 2/lr (Cohen Fig. 5), at the next step's decayed
    learning rate lr/(1 + t*lr_decay) after t steps."""
    return theory.gd_threshold(_lr(group) / (1.0 + _steps(state) * float(group["lr_decay"])))


@TORCH_THRESHOLDS.register(optim_class("Adadelta"))
def _adadelta(group: dict, state: dict) -> float:
    """Adadelta: x <- x - lr*g/P with P = sqrt(v + eps)/sqrt(u + eps) (u: the EMA of past
    squared updates): preconditioned GD with both accumulators frozen, 2/lr."""
    return theory.gd_threshold(_lr(group))


def adafactor_relative_step(group: dict, steps_taken: int) -> float:
    """rho_t = min(lr, 1/sqrt(t)) of torch's Adafactor for the step after ``steps_taken``."""
    return min(_lr(group), 1.0 / math.sqrt(steps_taken + 1))


@TORCH_THRESHOLDS.register(optim_class("Adafactor"))
def _adafactor(group: dict, state: dict) -> float:
    """torch's Adafactor has no momentum: x <- x - rho_t*g/P (P per element, see
    ``probes.preconditioner``; the parameter-scale factor is in P), preconditioned GD
    at lr rho_t = min(lr, 1/sqrt(t)): 2/rho_t for the next step t. (Cohen et al.'s Adafactor
    had momentum 0.9; torch's has none.) Update clipping (d) only shortens steps."""
    return theory.gd_threshold(adafactor_relative_step(group, _steps(state)))


@TORCH_THRESHOLDS.register(optim_class("ASGD"))
def _asgd(group: dict, state: dict) -> float:
    """ASGD steps x <- (1 - lambd*eta)*x - eta*g (the average it keeps does not feed back):
    on a*x^2/2, x <- (1 - eta*(a + lambd))*x, stable while a < 2/eta - lambd; eta is the
    next step's (``state['eta']``; lr before the first step)."""
    eta = float(state["eta"]) if "eta" in state else _lr(group)
    return theory.gd_threshold(eta) - float(group["lambd"])


TORCH_THRESHOLDS.register_unknown(
    optim_class("LBFGS"), "a quasi-Newton method: each step is a line search along -H_k g with H_k built "
    "from the last history_size curvature pairs (closure), not x <- x - lr*P^-1*m with a frozen P; "
    "Cohen et al. give no threshold for it")
TORCH_THRESHOLDS.register_unknown(
    optim_class("Rprop"), "the step depends on the sign of g only (per-element step sizes grow or shrink "
    "with sign changes), so on a quadratic it is not a linear recurrence and no eigenvalue threshold exists")
TORCH_THRESHOLDS.register_unknown(
    optim_class("Muon"), "the step is the orthogonalised momentum (Newton-Schulz polar factor), whose size "
    "does not depend on the gradient's: not a linear recurrence on a quadratic, so no eigenvalue threshold")
