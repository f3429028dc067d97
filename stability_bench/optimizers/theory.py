"""Closed-form stability thresholds of first-order optimizers on quadratics.

Each function returns the largest eigenvalue of the Hessian (for preconditioned
methods: of the preconditioned Hessian P^-1 H) that the method tolerates at the given
hyperparameters; above it, the iterates diverge on a quadratic. Formulas and names
follow Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability",
Table 1; at beta1 = 0.9 the EMA heavy-ball threshold is 38/lr and the EMA Nesterov
one 13.57/lr.

Every method here is a linear recurrence on a quadratic; a threshold is where one
eigenvalue of that recurrence crosses -1. The EMA variants are the standard ones run
with learning rate (1 - beta1) * lr (Cohen, Lemmas 1 and 2), so their thresholds are
the standard ones divided by (1 - beta1).
"""
from __future__ import annotations

__all__ = [
    "gd_threshold",
    "standard_hb_threshold",
    "ema_hb_threshold",
    "standard_nesterov_threshold",
    "ema_nesterov_threshold",
    "nadam_threshold",
    "rmsprop_threshold",
    "adam_threshold",
    "frozen_adam_threshold",
]


def _check(lr: float, beta1: float | None = None) -> None:
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr!r}")
    if beta1 is not None and not 0.0 <= beta1 < 1.0:
        raise ValueError(f"beta1 must be in [0, 1), got {beta1!r}")


def gd_threshold(lr: float) -> float:
    """Gradient descent x <- x - lr*g: 2/lr."""
    _check(lr)
    return 2.0 / lr


def standard_hb_threshold(lr: float, beta1: float) -> float:
    """Heavy ball m <- beta1*m + g; x <- x - lr*m: (2 + 2*beta1)/lr."""
    _check(lr, beta1)
    return (2.0 + 2.0 * beta1) / lr


def ema_hb_threshold(lr: float, beta1: float) -> float:
    """EMA heavy ball m <- beta1*m + (1-beta1)*g: (2 + 2*beta1)/((1 - beta1)*lr)."""
    _check(lr, beta1)
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def standard_nesterov_threshold(lr: float, beta1: float) -> float:
    """Nesterov m <- beta1*m + g; x <- x - lr*(beta1*m + g): (2 + 2*beta1)/((1 + 2*beta1)*lr)."""
    _check(lr, beta1)
    return (2.0 + 2.0 * beta1) / ((1.0 + 2.0 * beta1) * lr)


def ema_nesterov_threshold(lr: float, beta1: float) -> float:
    """EMA Nesterov: (2 + 2*beta1)/((1 - beta1)*(1 + 2*beta1)*lr); 13.57/lr at beta1 = 0.9."""
    _check(lr, beta1)
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * (1.0 + 2.0 * beta1) * lr)


def nadam_threshold(lr: float, beta1: float, mu: float) -> float:
    """Nesterov with separate look-ahead weight ``mu`` (NAdam's momentum cache):
    m <- beta1*m + (1-beta1)*g; x <- x - lr*((1-mu)*g + mu*m).

    With the recurrence frozen at one ``mu``, its eigenvalue crosses -1 at
    (2 + 2*beta1)/((1 + beta1 - 2*mu*beta1)*lr). ``mu = beta1`` gives EMA Nesterov,
    ``mu = 0`` gives gradient descent (the momentum buffer then does not feed back).
    """
    _check(lr, beta1)
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"mu must be in [0, 1), got {mu!r}")
    return (2.0 + 2.0 * beta1) / ((1.0 + beta1 - 2.0 * mu * beta1) * lr)


def rmsprop_threshold(lr: float) -> float:
    """RMSprop without momentum is preconditioned gradient descent: 2/lr on P^-1 H."""
    return gd_threshold(lr)


def adam_threshold(lr: float, beta1: float) -> float:
    """Adam is preconditioned EMA heavy ball (Cohen §4): the EMA HB threshold on P^-1 H."""
    return ema_hb_threshold(lr, beta1)


def frozen_adam_threshold(lr: float, beta1: float) -> float:
    """Frozen Adam is exactly preconditioned EMA heavy ball (Cohen Prop. 1)."""
    return ema_hb_threshold(lr, beta1)
