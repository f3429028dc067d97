"""Reference optimizers, written from the update rules of Cohen et al. 2022
("Adaptive Gradient Methods at the Edge of Stability", Table 1 and §2).

They are deliberately plain (a loop over parameters, one formula per line) so that
they can be read against the paper and used as ground truth for faster optimizers.
Notation: g is the gradient, m the first moment, nu the second moment, P the
diagonal preconditioner, and every update is x <- x - lr * P^-1 * (direction).

Besides ``step`` each class has the two hooks the harness reads:
``stability_threshold()`` (from ``theory``, for the first param group's current
hyperparameters, so it follows lr schedules) and ``preconditioner()`` (the diagonal
of P, or None for methods without one).
"""
from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch.optim import Optimizer

from stability_bench.registry import Registry

from . import theory
from .lookup import no_preconditioner

__all__ = [
    "REFERENCE_OPTIMIZERS",
    "ReferenceOptimizer",
    "GD",
    "StandardHB",
    "EMAHB",
    "StandardNesterov",
    "EMANesterov",
    "RMSprop",
    "Adam",
    "FrozenAdam",
    "Padam",
]

REFERENCE_OPTIMIZERS: Registry[type[Optimizer]] = Registry("reference optimizer")


def _check_lr(lr: float) -> None:
    if not lr > 0:  # also rejects NaN
        raise ValueError(f"invalid learning rate {lr!r}: must be > 0")


def _check_beta(name: str, beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"invalid {name} {beta!r}: must be in [0, 1)")


def _check_eps(eps: float) -> None:
    if not eps >= 0.0:
        raise ValueError(f"invalid eps {eps!r}: must be >= 0")


class ReferenceOptimizer(Optimizer):
    """Shared ``step`` loop: closure handling, then ``_update`` on each parameter."""

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                self._update(p, p.grad, self.state[p], group)
        return loss

    def stability_threshold(self) -> float:
        raise NotImplementedError

    preconditioner = no_preconditioner  # P = I unless a method says otherwise

    def _first(self, key: str) -> float:
        return float(self.param_groups[0][key])


# ---- non-preconditioned methods (Table 1) -------------------------------------------


@REFERENCE_OPTIMIZERS.register("GD")
class GD(ReferenceOptimizer):
    """Gradient descent: x <- x - lr*g."""

    def __init__(self, params, lr: float):
        _check_lr(lr)
        super().__init__(params, dict(lr=lr))

    def _update(self, p, g, state, group):
        p.sub_(group["lr"] * g)

    preconditioner = no_preconditioner  # stated here: this class's own _update has P = I

    def stability_threshold(self) -> float:
        return theory.gd_threshold(self._first("lr"))


class _Momentum(ReferenceOptimizer):
    """m <- beta1*m + c*g with c = 1 (standard) or 1 - beta1 (EMA); then either
    x <- x - lr*m (heavy ball) or x <- x - lr*(beta1*m + c*g) (Nesterov)."""

    ema: bool
    nesterov: bool

    def __init__(self, params, lr: float, beta1: float = 0.9):
        _check_lr(lr)
        _check_beta("beta1", beta1)
        super().__init__(params, dict(lr=lr, beta1=beta1))

    def _update(self, p, g, state, group):
        beta1 = group["beta1"]
        c = 1.0 - beta1 if self.ema else 1.0
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        m = state["momentum_buffer"]
        m.mul_(beta1).add_(g, alpha=c)
        direction = beta1 * m + c * g if self.nesterov else m
        p.sub_(group["lr"] * direction)

    preconditioner = no_preconditioner  # stated here: this class's own _update has P = I


@REFERENCE_OPTIMIZERS.register("StandardHB")
class StandardHB(_Momentum):
    """Heavy ball: m <- beta1*m + g; x <- x - lr*m. (torch SGD, momentum, dampening 0.)"""

    ema, nesterov = False, False

    def stability_threshold(self) -> float:
        return theory.standard_hb_threshold(self._first("lr"), self._first("beta1"))


@REFERENCE_OPTIMIZERS.register("EMAHB")
class EMAHB(_Momentum):
    """EMA heavy ball: m <- beta1*m + (1-beta1)*g; x <- x - lr*m."""

    ema, nesterov = True, False

    def stability_threshold(self) -> float:
        return theory.ema_hb_threshold(self._first("lr"), self._first("beta1"))


@REFERENCE_OPTIMIZERS.register("StandardNesterov")
class StandardNesterov(_Momentum):
    """Nesterov: m <- beta1*m + g; x <- x - lr*(beta1*m + g). (torch SGD nesterov=True.)"""

    ema, nesterov = False, True

    def stability_threshold(self) -> float:
        return theory.standard_nesterov_threshold(self._first("lr"), self._first("beta1"))


@REFERENCE_OPTIMIZERS.register("EMANesterov")
class EMANesterov(_Momentum):
    """EMA Nesterov: m <- beta1*m + (1-beta1)*g; x <- x - lr*(beta1*m + (1-beta1)*g)."""

    ema, nesterov = True, True

    def stability_threshold(self) -> float:
        return theory.ema_nesterov_threshold(self._first("lr"), self._first("beta1"))


# ---- adaptive methods (§2, Eq. 1 and 2) -------------------------------------------


@REFERENCE_OPTIMIZERS.register("RMSprop")
class RMSprop(ReferenceOptimizer):
    """RMSprop (Cohen Eq. 1): nu <- beta2*nu + (1-beta2)*g^2; P = sqrt(nu) + eps;
    x <- x - lr*g/P. ``v0`` is the initial nu (Cohen App. B uses 1; torch uses 0).
    eps is added outside the square root, as in torch.optim.RMSprop."""

    def __init__(self, params, lr: float, beta2: float = 0.99, eps: float = 1e-8, v0: float = 0.0):
        _check_lr(lr)
        _check_beta("beta2", beta2)
        _check_eps(eps)
        if not v0 >= 0.0:
            raise ValueError(f"invalid v0 {v0!r}: must be >= 0")
        super().__init__(params, dict(lr=lr, beta2=beta2, eps=eps, v0=v0))

    def _update(self, p, g, state, group):
        beta2 = group["beta2"]
        if "exp_avg_sq" not in state:
            state["exp_avg_sq"] = torch.full_like(p, float(group["v0"]))
        nu = state["exp_avg_sq"]
        nu.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        P = nu.sqrt() + group["eps"]
        p.sub_(group["lr"] * g / P)

    def stability_threshold(self) -> float:
        return theory.rmsprop_threshold(self._first("lr"))

    def preconditioner(self) -> list[torch.Tensor]:
        """sqrt(nu_t) + eps from the current nu_t: the P applied at the last step t (before
        any step, the P of nu_0 = v0). The next step's P also folds in the next gradient."""
        Ps = []
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    nu = self.state.get(p, {}).get("exp_avg_sq", torch.full_like(p, float(group["v0"])))
                    Ps.append(nu.sqrt() + group["eps"])
        return Ps


def _adam_defaults(lr, beta1, beta2, eps, bias_correction, **extra) -> dict:
    _check_lr(lr)
    _check_beta("beta1", beta1)
    _check_beta("beta2", beta2)
    _check_eps(eps)
    return dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, bias_correction=bool(bias_correction), **extra)


def _adam_P(nu: torch.Tensor, t: int, group: dict) -> torch.Tensor:
    """Adam's preconditioner at step t >= 1 (Cohen §2).

    No bias correction: P = sqrt(nu) + eps (Eq. 1). With it:
    P_t = (1 - beta1^t) * (sqrt(nu_t / (1 - beta2^t)) + eps), so that lr * P^-1 * m equals
    Adam's lr * m_hat / (sqrt(nu_hat) + eps) with m_hat = m/(1 - beta1^t) (Kingma & Ba,
    torch.optim.Adam). Cohen's Eq. 2 prints the first factor as 1/(1 - beta1^t), which
    would multiply the step by (1 - beta1^t)^2 instead; we follow the algorithm, and the
    parity test against torch.optim.Adam checks it.
    """
    if not group["bias_correction"]:
        return nu.sqrt() + group["eps"]
    bc1 = 1.0 - group["beta1"] ** t
    bc2 = 1.0 - group["beta2"] ** t
    return bc1 * ((nu / bc2).sqrt() + group["eps"])


@REFERENCE_OPTIMIZERS.register("Adam")
class Adam(ReferenceOptimizer):
    """Adam = preconditioned EMA heavy ball with an adapting P:
    m <- beta1*m + (1-beta1)*g; nu <- beta2*nu + (1-beta2)*g^2; x <- x - lr*m/P,
    P as in ``_adam_P``. With bias_correction=True this is torch.optim.Adam."""

    def __init__(self, params, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, bias_correction: bool = True):
        super().__init__(params, _adam_defaults(lr, beta1, beta2, eps, bias_correction))

    def _update(self, p, g, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        m, nu = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(group["beta1"]).add_(g, alpha=1.0 - group["beta1"])
        nu.mul_(group["beta2"]).addcmul_(g, g, value=1.0 - group["beta2"])
        p.sub_(group["lr"] * m / _adam_P(nu, state["step"], group))

    def stability_threshold(self) -> float:
        return theory.adam_threshold(self._first("lr"), self._first("beta1"))

    def _P(self, p: torch.Tensor, group: dict) -> torch.Tensor | None:
        state = self.state.get(p, {})  # not self.state[p]: a defaultdict read would add an entry
        if not state.get("step"):
            return None
        return _adam_P(state["exp_avg_sq"], state["step"], group)

    def preconditioner(self) -> list[torch.Tensor] | None:
        """P_t: the preconditioner applied at the last step t, built from the current nu_t
        with step t's bias correction; this is the P of Cohen's preconditioned sharpness
        lambda_1(P_t^-1 H_t). The next step's P is not known yet (it needs the next gradient).
        None until every parameter has taken a step (P_0 is undefined with bias correction)."""
        with torch.no_grad():
            Ps = [self._P(p, group) for group in self.param_groups for p in group["params"]]
        return None if any(P is None for P in Ps) else Ps


@REFERENCE_OPTIMIZERS.register("FrozenAdam")
class FrozenAdam(Adam):
    """Cohen's "frozen Adam": EMA heavy ball preconditioned by a fixed diagonal P.

    Runs as ``Adam`` for the first ``freeze_step`` steps, then keeps the P used at step
    ``freeze_step`` (bias-correction factors included) and continues with
    m <- beta1*m + (1-beta1)*g; x <- x - lr*m/P, m carried over. If ``preconditioner``
    (one tensor per parameter, in param-group order: the diagonal of P) is given, that P
    is used from the first step and ``freeze_step`` is ignored.
    """

    def __init__(self, params, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, bias_correction: bool = True, freeze_step: int = 1,
                 preconditioner: list[torch.Tensor] | None = None):
        if preconditioner is None and not (isinstance(freeze_step, numbers.Integral) and freeze_step >= 1):
            raise ValueError(f"invalid freeze_step {freeze_step!r}: must be an integer >= 1")
        defaults = _adam_defaults(lr, beta1, beta2, eps, bias_correction,
                                  freeze_step=None if preconditioner is not None else int(freeze_step))
        Optimizer.__init__(self, params, defaults)
        if preconditioner is not None:
            params = [p for g in self.param_groups for p in g["params"]]
            if len(preconditioner) != len(params):
                raise ValueError(f"preconditioner has {len(preconditioner)} tensors for {len(params)} parameters")
            for p, P in zip(params, preconditioner):
                P = torch.as_tensor(P)
                if P.shape != p.shape:
                    raise ValueError(f"preconditioner shape {tuple(P.shape)} != parameter shape {tuple(p.shape)}")
                if not bool(torch.all(P > 0)):
                    raise ValueError("preconditioner entries must be > 0")
                self.state[p]["frozen_P"] = P.detach().to(device=p.device, dtype=p.dtype).clone()

    def _update(self, p, g, state, group):
        if "frozen_P" not in state:
            super()._update(p, g, state, group)  # an Adam step
            if state["step"] == group["freeze_step"]:
                state["frozen_P"] = _adam_P(state["exp_avg_sq"], state["step"], group).clone()
                del state["exp_avg_sq"]  # nu is not used after the freeze
            return
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
        state["step"] += 1
        m = state["exp_avg"]
        m.mul_(group["beta1"]).add_(g, alpha=1.0 - group["beta1"])
        p.sub_(group["lr"] * m / state["frozen_P"])

    def stability_threshold(self) -> float:
        return theory.frozen_adam_threshold(self._first("lr"), self._first("beta1"))

    def _P(self, p: torch.Tensor, group: dict) -> torch.Tensor | None:
        state = self.state.get(p, {})
        return state["frozen_P"].clone() if "frozen_P" in state else super()._P(p, group)

    def preconditioner(self) -> list[torch.Tensor] | None:
        """The frozen P once frozen (or given): exactly the P the next step uses. Before the
        freeze, as ``Adam.preconditioner`` (the P of the last step), None before any step."""
        return super().preconditioner()


@REFERENCE_OPTIMIZERS.register("Padam")
class Padam(ReferenceOptimizer):
    """Padam (Chen et al. 2018, "partially adaptive"), as Cohen et al. ran it in Fig. 5 (no
    bias correction, exponent 0.25): m <- beta1*m + (1-beta1)*g; nu <- beta2*nu + (1-beta2)*g^2;
    nu_max <- max(nu_max, nu) (AMSGrad's running maximum; ``amsgrad=False`` uses nu);
    x <- x - lr*m/P with P = nu_max^p + eps. p = 1/2 without amsgrad is Adam without bias
    correction; p -> 0 tends to EMA heavy ball. Preconditioned EMA heavy ball: its threshold
    is (2 + 2*beta1)/((1 - beta1)*lr) on lambda_1(P^-1 H)."""

    def __init__(self, params, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 p: float = 0.25, amsgrad: bool = True):
        _check_lr(lr)
        _check_beta("beta1", beta1)
        _check_beta("beta2", beta2)
        _check_eps(eps)
        if not 0.0 < p <= 0.5:
            raise ValueError(f"invalid p {p!r}: must be in (0, 1/2]")
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, p=p, amsgrad=bool(amsgrad)))

    def _update(self, p, g, state, group):
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            state["max_exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        m, nu = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(group["beta1"]).add_(g, alpha=1.0 - group["beta1"])
        nu.mul_(group["beta2"]).addcmul_(g, g, value=1.0 - group["beta2"])
        torch.maximum(state["max_exp_avg_sq"], nu, out=state["max_exp_avg_sq"])
        p.sub_(group["lr"] * m / self._P_of(state, group))

    @staticmethod
    def _P_of(state: dict, group: dict) -> torch.Tensor:
        nu = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        return nu.pow(group["p"]) + group["eps"]

    def stability_threshold(self) -> float:
        return theory.ema_hb_threshold(self._first("lr"), self._first("beta1"))

    def preconditioner(self) -> list[torch.Tensor] | None:
        """P_t = nu_max^p + eps of the last step; None until every parameter has stepped."""
        with torch.no_grad():
            Ps = [self._P_of(self.state[q], group) if self.state.get(q, {}).get("step") else None
                  for group in self.param_groups for q in group["params"]]
        return None if any(P is None for P in Ps) else Ps
