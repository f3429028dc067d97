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
2. otherwise ``TORCH_THRESHOLDS``, the ``threshold`` of the optimizer records
   (``optimizers.records``, where the rules are), keyed by class and followed along the MRO
   with the same rule: a user's subclass of torch's AdamW gets AdamW's threshold, unless it
   overrides AdamW's ``step`` (or ``_init_group``); then it is unknown, with the reason.
   Every torch.optim class has one, as a rule or as explicitly unknown with the reason
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
from typing import Any

from torch.optim import Optimizer

from .lookup import ClassTable, UnknownTheory, class_label, trusted_hook
from .records import RECORDS, Rule, adafactor_relative_step
from .state import first_state
from ..typecheck import arguments

__all__ = ["TORCH_THRESHOLDS", "UnknownTheory", "stability_threshold", "threshold_and_reason",
           "threshold_status", "adafactor_relative_step"]

TORCH_THRESHOLDS: ClassTable[Rule] = ClassTable("stability threshold", "stability_threshold", RECORDS, "threshold")


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
    return _by_table(cls, optimizer.param_groups[0], first_state(optimizer))


def stability_threshold(optimizer: Optimizer) -> float | None:
    """The theoretical stability threshold of ``optimizer``, or None if unknown."""
    return threshold_and_reason(optimizer)[0]


def _signature_defaults(cls: type) -> dict[str, Any]:
    try:
        defaults = arguments(cls.__init__).defaults
    except (TypeError, ValueError):
        return {}
    return {name: default for name, default in defaults.items() if default is not inspect.Parameter.empty}


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
