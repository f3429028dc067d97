"""One class per change: each subclasses its original (``originals``) and overrides one
method, the way an optimizer-library commit would change one line. Regressions change
the algorithm; equivalents rewrite it without changing it (only rounding moves)."""
from __future__ import annotations

import torch

from .originals import SGD, Adam, AdamW, RMSprop


# ------------------------------------------------------------------------------ Adam
class AdamEpsInsideSqrt(Adam):
    """ε moved inside the square root: √(v̂ + ε) instead of √v̂ + ε."""

    def _denominator(self, exp_avg_sq, bias_correction2, eps):
        return (exp_avg_sq / bias_correction2 + eps).sqrt()


class AdamNoBiasCorrection2(Adam):
    """The second-moment bias correction dropped: √v + ε."""

    def _corrections(self, step, beta1, beta2):
        return 1 - beta1 ** step, 1.0


class AdamNoBiasCorrection1(Adam):
    """The first-moment bias correction dropped: the step is lr·m/(√v̂ + ε)."""

    def _corrections(self, step, beta1, beta2):
        return 1.0, 1 - beta2 ** step


class AdamBiasCorrectionSwapped(Adam):
    """The two corrections swapped (β₂ for the first moment, β₁ for the second)."""

    def _corrections(self, step, beta1, beta2):
        return 1 - beta2 ** step, 1 - beta1 ** step


class AdamStepOffByOne(Adam):
    """The step counter incremented after its use: the corrections see t + 1."""

    def _step_count(self, state):
        state["step"] += 1.0
        return state["step"] + 1.0


class AdamBeta2Default(Adam):
    """A default changed: β₂ = 0.99 instead of 0.999."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class AdamEpsDefault(Adam):
    """A default changed: ε = 1e-7 (Keras' value) instead of 1e-8."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class AdamStateBf16(Adam):
    """Optimizer state (both moments) kept in bfloat16 to save memory."""

    state_dtype = torch.bfloat16

    def _moments(self, state, grad, beta1, beta2):
        return super()._moments(state, grad.to(torch.bfloat16), beta1, beta2)


class AdamStaleMomentum(Adam):
    """Momentum applied stale: the step uses m from before this step's gradient."""

    def _moments(self, state, grad, beta1, beta2):
        previous = state["exp_avg"].clone()
        _, exp_avg_sq = super()._moments(state, grad, beta1, beta2)
        return previous, exp_avg_sq


# ----------------------------------------------------------------------------- AdamW
class AdamWCoupledDecay(AdamW):
    """AdamW's decay coupled into the gradient (L2, as in Adam) instead of decoupled."""

    decoupled = False


class AdamWDecayNotScaledByLr(AdamW):
    """Decoupled decay without the learning rate: p ← p·(1 − wd) instead of (1 − lr·wd)."""

    def _decay(self, p, grad, group):
        p.mul_(1 - group["weight_decay"])
        return grad


class AdamWDecayDefault(AdamW):
    """A default changed: weight_decay 0 instead of 1e-2 (AdamW silently becomes Adam)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


# ------------------------------------------------------------------------------- SGD
class SGDDampeningIsMomentum(SGD):
    """Dampening tied to momentum (an EMA buffer): buf ← β·buf + (1−β)·g, so the effective
    learning rate falls by 1 − β."""

    def _buffer(self, state, grad, momentum, dampening):
        return super()._buffer(state, grad, momentum, momentum)


class SGDStaleMomentum(SGD):
    """Momentum applied stale: the step uses the buffer from before this gradient."""

    def _buffer(self, state, grad, momentum, dampening):
        previous = state.get("momentum_buffer")
        previous = torch.zeros_like(grad) if previous is None else previous.clone()
        super()._buffer(state, grad, momentum, dampening)
        return previous


class SGDNesterovIgnored(SGD):
    """The ``nesterov`` flag no longer read (a refactor dropped the branch): plain momentum."""

    def _direction(self, state, grad, group):
        return super()._direction(state, grad, {**group, "nesterov": False})


class SGDMomentumDefault(SGD):
    """A default changed: momentum 0.9 instead of 0 (plain SGD silently gains momentum)."""

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov)


class SGDBufferFp16(SGD):
    """The momentum buffer kept in float16 to save memory."""

    state_dtype = torch.float16


# --------------------------------------------------------------------------- RMSprop
class RMSpropEpsInsideSqrt(RMSprop):
    """ε moved inside the square root: √(v + ε)."""

    def _denominator(self, state, square_avg, grad, group):
        return square_avg.add(group["eps"]).sqrt_()


class RMSpropAlphaDefault(RMSprop):
    """A default changed: α = 0.9 (TensorFlow's ρ) instead of 0.99."""

    def __init__(self, params, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered)


class RMSpropStaleSquareAvg(RMSprop):
    """The denominator uses v from before this step's gradient (update and average swapped);
    ε keeps the first step finite."""

    def _square_avg(self, state, grad, alpha):
        previous = state["square_avg"].clone()
        super()._square_avg(state, grad, alpha)
        return previous


class RMSpropStateBf16(RMSprop):
    """The square average kept in bfloat16."""

    state_dtype = torch.bfloat16

    def _square_avg(self, state, grad, alpha):
        return super()._square_avg(state, grad.to(torch.bfloat16), alpha)


# ------------------------------------------------------------------------ equivalents
class AdamForeach(Adam):
    """The foreach path: every parameter of a group in one batch of ``torch._foreach_*``
    calls instead of a per-parameter loop (same formulas)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                self._init_state(p, state)
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            for s in states:
                s["step"] += 1.0
            step = states[0]["step"]
            bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, bias_correction2 ** 0.5)
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_addcdiv_(params, m, denom, -group["lr"] / bias_correction1)
        return loss


class AdamEpsHat(Adam):
    """Kingma & Ba's reordering (Alg. 1, last paragraph of §2): the corrections folded into
    the step size, ε scaled by √(1−β₂ᵗ): lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε·√(1−β₂ᵗ)) — the
    same number, rounded differently."""

    def _step_size(self, lr, bias_correction1, bias_correction2):
        return lr * bias_correction2 ** 0.5 / bias_correction1

    def _denominator(self, exp_avg_sq, bias_correction2, eps):
        return exp_avg_sq.sqrt().add_(eps * bias_correction2 ** 0.5)


class SGDVelocityForm(SGD):
    """Momentum in velocity form (Sutskever et al.): u ← β·u − lr·g; p ← p + u. For a
    constant learning rate u = −lr·buf exactly; only rounding differs."""

    def _update(self, p, grad, state, group):
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        momentum, lr = group["momentum"], group["lr"]
        if momentum == 0 or group["nesterov"] or group["dampening"] != 0:
            return super()._update(p, grad, state, group)
        u = state.get("velocity")
        if u is None:
            u = state["velocity"] = grad.mul(-lr)
        else:
            u.mul_(momentum).add_(grad, alpha=-lr)
        p.add_(u)


class RMSpropDivideThenScale(RMSprop):
    """g/(√v + ε) computed first, then scaled by the learning rate (two roundings)."""

    def _update(self, p, grad, state, group):
        if group["momentum"] > 0 or group["centered"] or group["weight_decay"] != 0:
            return super()._update(p, grad, state, group)
        if not state:
            state["square_avg"] = self._zeros(p)
        square_avg = self._square_avg(state, grad, group["alpha"])
        p.sub_(grad.div(square_avg.sqrt().add_(group["eps"])).mul_(group["lr"]))
