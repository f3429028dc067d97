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

Besides the closed forms, this module states each method as the linear recurrence it
runs along one eigenvector of a quadratic (``recurrence``), with its asymptotic growth
factor, the largest |root| of the characteristic polynomial (``growth_factor``; Cohen
App. C, Fig. 14). ``ALGORITHMS`` is the table of both, one entry per reference method,
that the README table and the property tests (tests/test_theory_properties.py) read.
The closed-form threshold is where the growth factor crosses 1
(``threshold_from_recurrence`` finds that crossing numerically, independently of the
closed forms). For a fixed preconditioner P the same holds along the eigenvalues of
P^-1/2 H P^-1/2 (Cohen App. A.2, Prop. 1): ``preconditioned_sharpness``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

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
    "Recurrence",
    "Algorithm",
    "ALGORITHMS",
    "recurrence",
    "nadam_recurrence",
    "growth_factor",
    "threshold",
    "threshold_from_recurrence",
    "preconditioned_sharpness",
    "top_preconditioned_direction",
    "frozen_adam_diverges",
    "markdown_table",
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


# ---- the linear recurrences behind the thresholds (Cohen App. A and C) ---------------------
#
# On f(x) = ½xᵀAx + bᵀx + c every method of Table 1 acts on each eigen-direction q of A
# (eigenvalue a) separately: x_t = qᵀx_t (minus its fixed point) obeys a linear recurrence
# x_{t+1} = c1*x_t + c2*x_{t-1}. Derivation, for the general momentum step
#     m_{t+1} = beta1*m_t + d*g_t,   x_{t+1} = x_t - lr*(mu*m_{t+1} + c*g_t),   g_t = a*x_t:
# lr*mu*m_t = -(x_t - x_{t-1}) - lr*c*a*x_{t-1} from the previous step, so
#     x_{t+1} = (1 + beta1 - lr*a*(c + mu*d))*x_t - beta1*(1 - lr*c*a)*x_{t-1}.
# Heavy ball is mu = 1, c = 0; Nesterov mu = beta1, c = d; standard d = 1, EMA d = 1 - beta1.
# GD has no momentum: first order, x_{t+1} = (1 - lr*a)*x_t.
# Cohen's Lemma 1 prints EMA Nesterov's recurrence as (1+beta1)(I - lr*A)x_t - ...; the
# factor (1 - beta1) on lr is missing there (it is in the sentence after: "with
# (1 - beta1)*lr in place of lr"), and the display before it drops a beta1 on the
# grad f(x_{t-1}) term. The forms below are the derived ones; tests/test_theory_properties.py
# checks them against the reference optimizers iterate for iterate.


@dataclass(frozen=True)
class Recurrence:
    """x_{t+1} = c1*x_t + c2*x_{t-1} along one eigenvalue; ``order`` 1 means c2 = 0 and the
    characteristic polynomial is z - c1, otherwise z^2 - c1*z - c2."""

    c1: float
    c2: float = 0.0
    order: int = 2

    @property
    def characteristic(self) -> np.ndarray:
        """Coefficients of the characteristic polynomial, highest power first (numpy.roots)."""
        return np.array([1.0, -self.c1] if self.order == 1 else [1.0, -self.c1, -self.c2])

    def roots(self) -> np.ndarray:
        return np.roots(self.characteristic)

    @property
    def growth_factor(self) -> float:
        """The largest |root|: asymptotically |x_t| is multiplied by this per step (Cohen
        App. C). Closed form: real roots (c1 ± sqrt(c1² + 4c2))/2, else |z| = sqrt(-c2)."""
        if self.order == 1:
            return abs(self.c1)
        disc = self.c1 * self.c1 + 4.0 * self.c2
        if disc >= 0.0:
            return 0.5 * (abs(self.c1) + math.sqrt(disc))
        return math.sqrt(-self.c2)

    def companion(self) -> np.ndarray:
        """M with (x_{t+1}, x_t) = M (x_t, x_{t-1}) (order 2), or [[c1]] (order 1)."""
        if self.order == 1:
            return np.array([[self.c1]])
        return np.array([[self.c1, self.c2], [1.0, 0.0]])

    def run(self, x_prev: float, x: float, steps: int) -> np.ndarray:
        """x_t, x_{t+1}, ..., x_{t+steps} from (x_{t-1}, x_t) (x_prev unused for order 1)."""
        out = np.empty(steps + 1)
        out[0] = x
        for t in range(steps):
            x, x_prev = self.c1 * x + (self.c2 * x_prev if self.order == 2 else 0.0), x
            out[t + 1] = x
        return out


def _gd_recurrence(a: float, lr: float, beta1: float = 0.0) -> Recurrence:
    return Recurrence(1.0 - lr * a, 0.0, order=1)


def _standard_hb_recurrence(a: float, lr: float, beta1: float) -> Recurrence:
    return Recurrence(1.0 + beta1 - lr * a, -beta1)


def _ema_hb_recurrence(a: float, lr: float, beta1: float) -> Recurrence:
    return Recurrence(1.0 + beta1 - (1.0 - beta1) * lr * a, -beta1)


def _standard_nesterov_recurrence(a: float, lr: float, beta1: float) -> Recurrence:
    u = 1.0 - lr * a
    return Recurrence((1.0 + beta1) * u, -beta1 * u)


def _ema_nesterov_recurrence(a: float, lr: float, beta1: float) -> Recurrence:
    u = 1.0 - (1.0 - beta1) * lr * a
    return Recurrence((1.0 + beta1) * u, -beta1 * u)


def nadam_recurrence(a: float, lr: float, beta1: float, mu: float) -> Recurrence:
    """Nesterov with look-ahead weight ``mu`` frozen (see ``nadam_threshold``):
    x_{t+1} = (1 + beta1 - lr*a*(1 - mu*beta1))*x_t - beta1*(1 - (1 - mu)*lr*a)*x_{t-1}."""
    return Recurrence(1.0 + beta1 - lr * a * (1.0 - mu * beta1), -beta1 * (1.0 - (1.0 - mu) * lr * a))


@dataclass(frozen=True)
class Algorithm:
    """One row of the theory table: a reference optimizer, its update rule on a quadratic,
    its closed-form threshold and the recurrence that threshold comes from."""

    name: str            # the reference optimizer's name (reference.REFERENCE_OPTIMIZERS)
    update: str          # update rule, Table 1 notation, g_{t+1} = grad f(x_t)
    threshold_formula: str
    recurrence_formula: str
    threshold: Callable[[float, float], float]              # (lr, beta1) -> threshold
    recurrence: Callable[[float, float, float], Recurrence]  # (a, lr, beta1) -> recurrence
    source: str          # where the threshold is derived
    momentum: bool       # whether beta1 is a hyperparameter (False: it is ignored)
    preconditioned: bool = False  # a is an eigenvalue of P^-1/2 H P^-1/2, not of H


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in [
    Algorithm("GD", "x ← x − ηg", "2/η", "x_{t+1} = (1 − ηa) x_t",
              lambda lr, beta1=0.0: gd_threshold(lr), _gd_recurrence,
              "Table 1; Cohen et al. 2021 App. A", momentum=False),
    Algorithm("StandardHB", "m ← β₁m + g; x ← x − ηm", "(2 + 2β₁)/η",
              "x_{t+1} = (1 + β₁ − ηa) x_t − β₁ x_{t−1}",
              standard_hb_threshold, _standard_hb_recurrence,
              "Table 1; Cohen et al. 2021 Thm. 2; App. C", momentum=True),
    Algorithm("EMAHB", "m ← β₁m + (1−β₁)g; x ← x − ηm", "(2 + 2β₁)/((1 − β₁)η)",
              "x_{t+1} = (1 + β₁ − (1−β₁)ηa) x_t − β₁ x_{t−1}",
              ema_hb_threshold, _ema_hb_recurrence, "Table 1; Lemma 2", momentum=True),
    Algorithm("StandardNesterov", "m ← β₁m + g; x ← x − η(β₁m + g)", "(2 + 2β₁)/((1 + 2β₁)η)",
              "x_{t+1} = (1 + β₁)(1 − ηa) x_t − β₁(1 − ηa) x_{t−1}",
              standard_nesterov_threshold, _standard_nesterov_recurrence,
              "Table 1; Cohen et al. 2021 Thm. 1; App. C", momentum=True),
    Algorithm("EMANesterov", "m ← β₁m + (1−β₁)g; x ← x − η(β₁m + (1−β₁)g)",
              "(2 + 2β₁)/((1 − β₁)(1 + 2β₁)η)",
              "x_{t+1} = (1 + β₁)(1 − (1−β₁)ηa) x_t − β₁(1 − (1−β₁)ηa) x_{t−1}",
              ema_nesterov_threshold, _ema_nesterov_recurrence, "Table 1; Lemma 1 (corrected)",
              momentum=True),
    Algorithm("FrozenAdam",
              "m ← β₁m + (1−β₁)g; x ← x − ηP⁻¹m, P fixed "
              "(β₁ = 0: frozen RMSprop, preconditioned GD)",
              "(2 + 2β₁)/((1 − β₁)η) on λ₁(P^{-1/2}HP^{-1/2})",
              "EMAHB's, along each eigenvalue a of P^{-1/2}HP^{-1/2}",
              frozen_adam_threshold, _ema_hb_recurrence, "App. A.2, Prop. 1", momentum=True,
              preconditioned=True),
]}


def _algorithm(alg: str | Algorithm) -> Algorithm:
    if isinstance(alg, Algorithm):
        return alg
    try:
        return ALGORITHMS[alg]
    except KeyError:
        raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(ALGORITHMS)}") from None


def recurrence(alg: str | Algorithm, a: float, lr: float, beta1: float = 0.0) -> Recurrence:
    """The recurrence ``alg`` runs along an eigenvalue ``a`` (of P^-1/2 H P^-1/2 if preconditioned)."""
    spec = _algorithm(alg)
    _check(lr, beta1)
    return spec.recurrence(a, lr, beta1)


def growth_factor(alg: str | Algorithm, a: float, lr: float, beta1: float = 0.0) -> float:
    """Asymptotic growth factor of ``alg`` along eigenvalue ``a``: > 1 diverges, < 1 converges."""
    return recurrence(alg, a, lr, beta1).growth_factor


def threshold(alg: str | Algorithm, lr: float, beta1: float = 0.0) -> float:
    """The closed-form threshold of ``alg`` (the functions above)."""
    return _algorithm(alg).threshold(lr, beta1)


def threshold_from_recurrence(alg: str | Algorithm, lr: float, beta1: float = 0.0,
                              rtol: float = 1e-13) -> float:
    """The eigenvalue where the growth factor crosses 1, found by bisection on the
    recurrence alone (no closed form): it is 1 at a = 0, below 1 up to the threshold and
    above 1 beyond it."""
    spec = _algorithm(alg)
    _check(lr, beta1)

    def unstable(a: float) -> bool:
        return spec.recurrence(a, lr, beta1).growth_factor > 1.0

    hi = 1.0 / lr
    while not unstable(hi):
        hi *= 2.0
        if hi > 1e300:
            raise ValueError(f"{spec.name} does not turn unstable at lr={lr}, beta1={beta1}")
    lo = hi / 2.0
    while unstable(lo):
        lo /= 2.0
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if unstable(mid) else (mid, hi)
    return 0.5 * (lo + hi)


# ---- preconditioned methods (Cohen App. A.2, Prop. 1) ----------------------------------


def _inverse_sqrt(P: np.ndarray) -> np.ndarray:
    """P^-1/2 of a positive diagonal (given as a vector) or a symmetric positive definite matrix."""
    P = np.asarray(P, dtype=float)
    if P.ndim == 1:
        if not np.all(P > 0):
            raise ValueError("a diagonal preconditioner needs positive entries")
        return np.diag(1.0 / np.sqrt(P))
    w, V = np.linalg.eigh(P)
    if not np.all(w > 0):
        raise ValueError("the preconditioner must be positive definite")
    return (V / np.sqrt(w)) @ V.T


def preconditioned_sharpness(A: np.ndarray, P: np.ndarray) -> float:
    """λ₁(P^-1/2 A P^-1/2) (= λ₁(P⁻¹A)): with a fixed P this, not λ₁(A), is what a
    method's threshold applies to (Prop. 1). ``P`` is a positive vector (a diagonal
    preconditioner, as Adam's) or an SPD matrix."""
    S = _inverse_sqrt(P)
    M = S @ np.asarray(A, dtype=float) @ S
    return float(np.linalg.eigvalsh(0.5 * (M + M.T))[-1])


def top_preconditioned_direction(A: np.ndarray, P: np.ndarray) -> np.ndarray:
    """The unit direction along which a preconditioned method's iterates x_t diverge:
    P^-1/2 v₁, v₁ the top eigenvector of P^-1/2 A P^-1/2 (a right eigenvector of P⁻¹A).
    (Cohen App. A.2 states it for P^1/2 x_t, which aligns with v₁.)"""
    S = _inverse_sqrt(P)
    M = S @ np.asarray(A, dtype=float) @ S
    v = np.linalg.eigh(0.5 * (M + M.T))[1][:, -1]
    u = S @ v
    return u / np.linalg.norm(u)


def frozen_adam_diverges(A: np.ndarray, P: np.ndarray, lr: float, beta1: float) -> bool:
    """Whether Adam with its preconditioner frozen at P (preconditioned EMA heavy ball)
    diverges on ½xᵀAx: λ₁(P^-1/2 A P^-1/2) > (2 + 2beta1)/((1 - beta1)*lr)."""
    return preconditioned_sharpness(A, P) > frozen_adam_threshold(lr, beta1)


def markdown_table() -> str:
    """The theory table (README), rendered from ``ALGORITHMS``."""
    rows = ["| algorithm | update (g = ∇f(x)) | threshold | recurrence along eigenvalue a | source |",
            "|---|---|---|---|---|"]
    rows += [f"| `{a.name}` | {a.update} | {a.threshold_formula} | {a.recurrence_formula} | {a.source} |"
             for a in ALGORITHMS.values()]
    return "\n".join(rows)
