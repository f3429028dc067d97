"""Plain re-implementations of torch.optim's Adam (with AMSGrad), AdamW, SGD, RMSprop,
NAdam, RAdam, Adagrad and Adafactor: torch's single-tensor path (the one it takes on the
CPU), formula for formula and in the same order, so that each change in this package is a
subclass overriding one small method. ``tests/test_regressions.py`` checks that these
originals reproduce torch.optim's trajectories bit for bit (float32 and float64, every
branch a case can select: amsgrad, maximize, nesterov, dampening, centered, momentum,
coupled and decoupled decay, lr_decay, initial accumulator, Adafactor's factored and
unfactored statistics).

Each step is split into the pieces an optimizer-library commit touches (the step count,
the bias corrections, the denominator, the state's dtype, the decay, AMSGrad's running
maximum, NAdam's momentum product, RAdam's rectification, Adafactor's factors and update
clipping); the hooks are the seams, not a new API.

Every constructor takes torch's arguments, with torch's defaults, so a change can stand in
for the torch class in any case entry. ``foreach``, ``fused``, ``capturable`` and
``differentiable`` are accepted and kept in the param groups, but the single-tensor path
runs whatever they say. On the CPU ``foreach=True`` rounds exactly as the single-tensor path
for Adam, AdamW, SGD, RMSprop and Adagrad, and differs by rounding for NAdam, RAdam and
Adafactor; ``fused=True`` differs by rounding (measured over 100 float32 steps of a small
MLP: 1e-8 to 1e-6 of the parameters).

The step counter is a Python float, as torch's float32 ``state['step']`` read with
``.item()`` (equal up to 2**24 steps); NAdam's momentum product is a float32 tensor, as
torch's, because its rounding reaches the step size.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.optimizer import _get_scalar_dtype


class _Plain(Optimizer):
    """Shared ``step``: closure, then ``_update`` per parameter with a gradient (negated
    first under ``maximize``, as torch does)."""

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
                    grad = -p.grad if group.get("maximize") else p.grad
                    self._update(p, grad, self.state[p], group)
        return loss

    def _update(self, p, grad, state, group):  # pragma: no cover - abstract
        raise NotImplementedError

    def _step_count(self, state) -> float:
        state["step"] += 1.0
        return state["step"]


def _flags(foreach=None, maximize=False, capturable=False, differentiable=False, fused=None) -> dict:
    return dict(foreach=foreach, maximize=maximize, capturable=capturable, differentiable=differentiable,
                fused=fused)


# ------------------------------------------------------------------------------ Adam
class Adam(_Plain):
    """torch.optim.Adam: coupled L2 decay (or decoupled), EMA moments, bias-corrected step;
    AMSGrad keeps the running maximum of v and corrects it like v."""

    decoupled = False   # AdamW: True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      decoupled_weight_decay=decoupled_weight_decay or self.decoupled,
                                      **_flags(foreach, maximize, capturable, differentiable, fused)))

    def _decay(self, p, grad, group):
        wd, lr = group["weight_decay"], group["lr"]
        if wd == 0:
            return grad
        if group["decoupled_weight_decay"]:
            p.mul_(1 - lr * wd)
            return grad
        return grad.add(p, alpha=wd)

    def _moments(self, state, grad, beta1, beta2):
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return state["exp_avg"], state["exp_avg_sq"]

    def _max_second_moment(self, state, exp_avg_sq, bias_correction2):
        """AMSGrad: the running maximum of v (uncorrected), kept in the state."""
        return torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])

    def _corrections(self, step, beta1, beta2) -> tuple[float, float]:
        return 1 - beta1 ** step, 1 - beta2 ** step

    def _step_size(self, lr, bias_correction1, bias_correction2) -> float:
        return lr / bias_correction1

    def _denominator(self, exp_avg_sq, bias_correction2, eps):
        return (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)

    def _init_state(self, p, state, group) -> None:
        if not state:
            state["step"] = 0.0
            state["exp_avg"], state["exp_avg_sq"] = self._zeros(p), self._zeros(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = self._zeros(p)

    def _update(self, p, grad, state, group):
        self._init_state(p, state, group)
        beta1, beta2 = group["betas"]
        step = self._step_count(state)
        grad = self._decay(p, grad, group)
        exp_avg, exp_avg_sq = self._moments(state, grad, beta1, beta2)
        bias_correction1, bias_correction2 = self._corrections(step, beta1, beta2)
        step_size = self._step_size(group["lr"], bias_correction1, bias_correction2)
        if group["amsgrad"]:
            exp_avg_sq = self._max_second_moment(state, exp_avg_sq, bias_correction2)
        denom = self._denominator(exp_avg_sq, bias_correction2, group["eps"])
        p.addcdiv_(exp_avg.to(p.dtype), denom.to(p.dtype), value=-step_size)


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, default 1e-2."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused)


# ------------------------------------------------------------------------------- SGD
class SGD(_Plain):
    """torch.optim.SGD: coupled decay, momentum buffer (the first gradient, then
    β·buf + (1−d)·g), optional Nesterov."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, foreach=None, differentiable=False, fused=None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

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


# --------------------------------------------------------------------------- RMSprop
class RMSprop(_Plain):
    """torch.optim.RMSprop: v ← αv + (1−α)g², denominator √v + ε (centered: √(v − ḡ²) + ε),
    optional momentum buffer."""

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 capturable=False, foreach=None, maximize=False, differentiable=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, capturable=capturable, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable))

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
            state["step"] = 0.0
            state["square_avg"] = self._zeros(p)
            if group["momentum"] > 0:
                state["momentum_buffer"] = self._zeros(p)
            if group["centered"]:
                state["grad_avg"] = self._zeros(p)
        self._step_count(state)
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


# ----------------------------------------------------------------------------- NAdam
class NAdam(_Plain):
    """torch.optim.NAdam: Adam's moments with Dozat's Nesterov momentum; the momentum
    schedule μ_t = β₁(1 − ½·0.96^(t·ψ)) and its running product Π μ correct the step."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      foreach=foreach, maximize=maximize, capturable=capturable,
                                      differentiable=differentiable))

    def _momentum_cache(self, step, beta1, momentum_decay) -> tuple[float, float]:
        """μ_t and μ_{t+1}."""
        mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay)))
        mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * momentum_decay)))
        return mu, mu_next

    def _mu_product_next(self, mu_product: float, mu: float, mu_next: float) -> float:
        """Π_{i≤t+1} μ_i, from Π_{i≤t} μ_i (already including μ_t)."""
        return mu_product * mu_next

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0.0
            state["mu_product"] = torch.ones((), dtype=_get_scalar_dtype())
            state["exp_avg"], state["exp_avg_sq"] = self._zeros(p), self._zeros(p)
        lr, eps, (beta1, beta2) = group["lr"], group["eps"], group["betas"]
        step = self._step_count(state)
        bias_correction2 = 1 - beta2 ** step
        if group["weight_decay"] != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            else:
                grad = grad.add(p, alpha=group["weight_decay"])
        mu, mu_next = self._momentum_cache(step, beta1, group["momentum_decay"])
        state["mu_product"] *= mu
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.div(bias_correction2).sqrt()
        mu_product = state["mu_product"].item()
        mu_product_next = self._mu_product_next(mu_product, mu, mu_next)
        denom.add_(eps)
        self._apply(p, grad, exp_avg, denom, -lr * (1.0 - mu) / (1.0 - mu_product),
                    (-lr * mu_next) / (1.0 - mu_product_next))

    def _apply(self, p, grad, exp_avg, denom, grad_scale: float, avg_scale: float):
        """p ← p + grad_scale·g/denom + avg_scale·m/denom, as torch's two ``addcdiv_``."""
        p.addcdiv_(grad, denom, value=grad_scale)
        p.addcdiv_(exp_avg, denom, value=avg_scale)


# ----------------------------------------------------------------------------- RAdam
class RAdam(_Plain):
    """torch.optim.RAdam: Adam whose adaptive step is rectified by r_t once the SMA length
    ρ_t exceeds 5, and an un-adapted (SGD with momentum) step before."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, foreach=foreach,
                                      maximize=maximize, capturable=capturable, differentiable=differentiable))

    def _adaptive_lr(self, exp_avg_sq, bias_correction2, eps):
        return (bias_correction2 ** 0.5) / exp_avg_sq.sqrt().add_(eps)

    @staticmethod
    def _rect(rho_t, rho_inf) -> float:
        return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

    @staticmethod
    def _rectified(exp_avg_hat, lr: float, adaptive_lr, rect: float):
        """The rectified step m̂·lr·adaptive_lr·r, in torch's single-tensor order."""
        return exp_avg_hat * lr * adaptive_lr * rect

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0.0
            state["exp_avg"], state["exp_avg_sq"] = self._zeros(p), self._zeros(p)
        lr, (beta1, beta2) = group["lr"], group["betas"]
        step = self._step_count(state)
        if group["weight_decay"] != 0:
            if group["decoupled_weight_decay"]:
                p.mul_(1 - lr * group["weight_decay"])
            else:
                grad = grad.add(p, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
        bias_corrected_exp_avg = exp_avg / bias_correction1
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
        if rho_t > 5.0:
            p.add_(self._rectified(bias_corrected_exp_avg, lr,
                                   self._adaptive_lr(exp_avg_sq, bias_correction2, group["eps"]),
                                   self._rect(rho_t, rho_inf)), alpha=-1.0)
        else:
            p.add_(bias_corrected_exp_avg * lr, alpha=-1.0)


# --------------------------------------------------------------------------- Adagrad
class Adagrad(_Plain):
    """torch.optim.Adagrad: G ← G + g² from the initial accumulator value, step
    lr/(1 + (t−1)·lr_decay) · g/(√G + ε)."""

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 foreach=None, *, maximize=False, differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                                      maximize=maximize, differentiable=differentiable, fused=fused))

    def _std(self, state_sum, eps):
        return state_sum.sqrt().add_(eps)

    def _clr(self, lr, lr_decay, step) -> float:
        return lr / (1 + (step - 1) * lr_decay)

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0.0
            state["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)
        step = self._step_count(state)
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        clr = self._clr(group["lr"], group["lr_decay"], step)
        state["sum"].addcmul_(grad, grad, value=1)
        self._apply(p, grad, self._std(state["sum"], group["eps"]), clr)

    def _apply(self, p, grad, std, clr: float):
        """p ← p − clr·g/std, as torch's one ``addcdiv_``."""
        p.addcdiv_(grad, std, value=-clr)


# ------------------------------------------------------------------------- Adafactor
class Adafactor(_Plain):
    """torch.optim.Adafactor (no first moment): second moment factored into row and column
    statistics for matrices, β̂₂ = 1 − t^decay, relative step ρ_t = min(lr, 1/√t) scaled
    by max(ε₂, RMS(θ)), update clipped to RMS d."""

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, *,
                 foreach=None, maximize=False):
        super().__init__(params, dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay,
                                      foreach=foreach, maximize=maximize))

    def _row_normaliser(self, row_var, eps1):
        """The mean of the row statistics (over rows), which the outer product divides by."""
        return row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1)

    def _clip_divisor(self, update, d) -> float:
        """max(1, RMS(update)/d)."""
        return max(1.0, update.norm(2).item() / ((update.numel() ** 0.5) * d))

    def _alpha(self, p, group, rho_t) -> float:
        return max(group["eps"][1], p.norm(2).item() / (p.numel() ** 0.5)) * rho_t

    @staticmethod
    def _row_col_means(grad):
        """(g²).mean over the last dimension and over the one before, without materialising g²."""
        return (torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1)),
                torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2)))

    def _update(self, p, grad, state, group):
        if not state:
            state["step"] = 0.0
            if grad.dim() > 1:
                row_shape, col_shape = list(grad.shape), list(grad.shape)
                row_shape[-1], col_shape[-2] = 1, 1
                state["row_var"], state["col_var"] = grad.new_zeros(row_shape), grad.new_zeros(col_shape)
            else:
                state["variance"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        eps1 = group["eps"][0]
        if eps1 is None:
            eps1 = torch.finfo(p.dtype).eps
        step = self._step_count(state)
        lr = group["lr"]
        one_minus_beta2_t = step ** group["beta2_decay"]
        rho_t = min(lr, 1 / (step ** 0.5))
        alpha = self._alpha(p, group, rho_t)
        if group["weight_decay"] != 0:
            p.mul_(1 - lr * group["weight_decay"])
        if grad.dim() > 1:
            row_mean, col_mean = self._row_col_means(grad)
            state["row_var"].lerp_(row_mean, one_minus_beta2_t)
            state["col_var"].lerp_(col_mean, one_minus_beta2_t)
            var_estimate = state["row_var"] @ state["col_var"]
            var_estimate.div_(self._row_normaliser(state["row_var"], eps1))
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2_t)
            var_estimate = state["variance"].clone()
        update = var_estimate.clamp_(min=eps1 * eps1).rsqrt_()
        update.mul_(grad)
        p.add_(update, alpha=-alpha / self._clip_divisor(update, group["d"]))
