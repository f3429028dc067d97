"""Plain re-implementations of torch.optim's Adam, AdamW, SGD and RMSprop (the
single-tensor CPU path, formula for formula), so that each change in this package is a
subclass overriding one small method. ``tests/test_regressions.py`` checks that these
originals follow torch.optim's trajectories to rounding.

Each step is split into the pieces an optimizer-library commit touches (the step count,
the bias corrections, the denominator, the state's dtype, the decay); the hooks are the
seams, not a new API.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


class _Plain(Optimizer):
    """Shared ``step``: closure, then ``_update`` per parameter with a gradient."""

    state_dtype: torch.dtype | None = None   # None: the parameter's dtype

    def _zeros(self, p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p, dtype=self.state_dtype or p.dtype, memory_format=torch.preserve_format)

    @staticmethod
    def _evaluate(closure):
        """The closure's loss (None without one), with gradients on inside ``step``."""
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._evaluate(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, self.state[p], group)
        return loss

    def _update(self, p, grad, state, group):  # pragma: no cover - abstract
        raise NotImplementedError


class Adam(_Plain):
    """torch.optim.Adam (no amsgrad): coupled L2 decay, EMA moments, bias-corrected step."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        if amsgrad:
            raise ValueError("amsgrad is not re-implemented here")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _step_count(self, state) -> float:
        state["step"] += 1.0
        return state["step"]

    def _decay(self, p, grad, group):
        wd, lr = group["weight_decay"], group["lr"]
        if wd == 0:
            return grad
        if self.decoupled:
            p.mul_(1 - lr * wd)
            return grad
        return grad.add(p, alpha=wd)

    def _moments(self, state, grad, beta1, beta2):
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return state["exp_avg"], state["exp_avg_sq"]

    def _corrections(self, step, beta1, beta2) -> tuple[float, float]:
        return 1 - beta1 ** step, 1 - beta2 ** step

    def _step_size(self, lr, bias_correction1, bias_correction2) -> float:
        return lr / bias_correction1

    def _denominator(self, exp_avg_sq, bias_correction2, eps):
        return (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)

    def _init_state(self, p, state) -> None:
        if not state:
            state["step"] = 0.0
            state["exp_avg"], state["exp_avg_sq"] = self._zeros(p), self._zeros(p)

    def _update(self, p, grad, state, group):
        self._init_state(p, state)
        beta1, beta2 = group["betas"]
        step = self._step_count(state)
        grad = self._decay(p, grad, group)
        exp_avg, exp_avg_sq = self._moments(state, grad, beta1, beta2)
        bias_correction1, bias_correction2 = self._corrections(step, beta1, beta2)
        step_size = self._step_size(group["lr"], bias_correction1, bias_correction2)
        denom = self._denominator(exp_avg_sq, bias_correction2, group["eps"])
        p.addcdiv_(exp_avg.to(p.dtype), denom.to(p.dtype), value=-step_size)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, default 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


class SGD(_Plain):
    """torch.optim.SGD: coupled decay, momentum buffer (the first gradient, then
    β·buf + (1−d)·g), optional Nesterov."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _buffer(self, state, grad, momentum, dampening):
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = torch.clone(grad).detach().to(self.state_dtype or grad.dtype)
        else:
            buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        return buf

    def _direction(self, state, grad, group):
        momentum = group["momentum"]
        if momentum == 0:
            return grad
        buf = self._buffer(state, grad, momentum, group["dampening"]).to(grad.dtype)
        return grad.add(buf, alpha=momentum) if group["nesterov"] else buf

    def _update(self, p, grad, state, group):
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        p.add_(self._direction(state, grad, group), alpha=-group["lr"])


class RMSprop(_Plain):
    """torch.optim.RMSprop: v ← αv + (1−α)g², denominator √v + ε (centered: √(v − ḡ²) + ε),
    optional momentum buffer."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _square_avg(self, state, grad, alpha):
        state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        return state["square_avg"]

    def _denominator(self, state, square_avg, grad, group):
        if group["centered"]:
            state["grad_avg"].lerp_(grad, 1 - group["alpha"])
            avg = square_avg.addcmul(state["grad_avg"], state["grad_avg"], value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        return avg.add_(group["eps"])

    def _update(self, p, grad, state, group):
        if not state:
            state["square_avg"] = self._zeros(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = self._zeros(p)
            if group["centered"]:
                state["grad_avg"] = self._zeros(p)
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        square_avg = self._square_avg(state, grad, group["alpha"])
        avg = self._denominator(state, square_avg, grad, group).to(p.dtype)
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf.mul_(group["momentum"]).addcdiv_(grad, avg)
            p.add_(buf, alpha=-group["lr"])
        else:
            p.addcdiv_(grad, avg, value=-group["lr"])
