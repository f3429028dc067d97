"""One class per change: each subclasses its original (``originals``) and overrides one
method, the way an optimizer-library commit would change one line. Regressions change
the algorithm; equivalents rewrite it without changing it (only rounding moves)."""
from __future__ import annotations

import torch

from .originals import SGD, Adafactor, Adagrad, Adam, AdamW, NAdam, RAdam, RMSprop


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
    """The step counter incremented after its use: the corrections see t + 1.

    PyTorch, pytorch/torchtitan#4382: ``init_optim_state()`` materialised Adam's state
    with a zero-lr step that still advanced ``state['step']`` from 0 to 1, so the first
    real update used step 2's bias corrections. Here every step's corrections see t + 1."""

    def _step_count(self, state):
        state["step"] += 1.0
        return state["step"] + 1.0


class AdamBeta2Default(Adam):
    """A default changed: β₂ = 0.99 instead of 0.999."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, amsgrad=False, **flags):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **flags)


class AdamEpsDefault(Adam):
    """A default changed: ε = 1e-7 (Keras' value) instead of 1e-8."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-7, weight_decay=0.0, amsgrad=False, **flags):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **flags)


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
    """AdamW's decay coupled into the gradient (L2, as in Adam) instead of decoupled.

    bitsandbytes, bitsandbytes-foundation/bitsandbytes#1992: the 32-bit Lion kernels folded
    ``weight_decay * p`` into the gradient where Lion (like AdamW) needs the decoupled
    ``p *= 1 - lr*wd``. Here AdamW's decoupled flag is off, so its decay goes through the
    gradient as Adam's L2 does."""

    decoupled = False


class AdamWDecayNotScaledByLr(AdamW):
    """Decoupled decay without the learning rate: p ← p·(1 − wd) instead of (1 − lr·wd)."""

    def _decay(self, p, grad, group):
        p.mul_(1 - group["weight_decay"])
        return grad


class AdamWDecayDefault(AdamW):
    """A default changed: weight_decay 0 instead of 1e-2 (AdamW silently becomes Adam).

    transformers, huggingface/transformers#18946: ``adamw_bnb_8bit`` built bitsandbytes'
    ``Adam8bit`` without the weight decay, so TrainingArguments' ``weight_decay`` was not
    respected. Here the decay an entry does not set is 0 instead of AdamW's 1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, **flags):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, **flags)


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

    def __init__(self, params, lr=1e-3, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, **flags):
        super().__init__(params, lr, momentum, dampening, weight_decay, nesterov, **flags)


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

    def __init__(self, params, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, **flags):
        super().__init__(params, lr, alpha, eps, weight_decay, momentum, centered, **flags)


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


# ------------------------------------------------------- modelled on reported bugs
# Each docstring: the first line says what the change does; then the project and the
# issue or pull request, what the bug was there, and how this one-method change models it.

class AMSGradMaxNotStored(Adam):
    """AMSGrad's running maximum never stored: the denominator uses max(v̂max₀, v) = v, so
    AMSGrad silently is Adam.

    PyTorch, pytorch/pytorch#78807 (fixed by #82523): ``_multi_tensor_adam`` computed
    ``torch._foreach_maximum(max_exp_avg_sqs, exp_avg_sqs)`` into a new list and never
    wrote it back, so ``max_exp_avg_sqs`` stayed zero while the single-tensor path updated
    it in place. Here the maximum is computed but not written to the state (the zeros
    stay), as the foreach path did."""

    def _max_second_moment(self, state, exp_avg_sq, bias_correction2):
        return torch.maximum(state["max_exp_avg_sq"], exp_avg_sq)


class AMSGradMaxOfCorrectedV(Adam):
    """AMSGrad's maximum taken over the bias-corrected v̂ = v/(1−β₂ᵗ) instead of over v
    (the early, over-corrected estimates then dominate the maximum).

    optax, google-deepmind/optax#1389: ``scale_by_amsgrad`` kept max(ν̂max, ν̂ₜ) of the
    corrected ν̂ while PyTorch and TensorFlow keep the maximum of ν and correct it after;
    reported as poorer results than PyTorch's (optax#1423 adds the flag). Here the state
    holds the maximum of the corrected values, rescaled by (1−β₂ᵗ) so that the unchanged
    denominator divides it out again."""

    def _max_second_moment(self, state, exp_avg_sq, bias_correction2):
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq / bias_correction2, out=state["max_exp_avg_sq"])
        return state["max_exp_avg_sq"] * bias_correction2


class AdamEpsInsideAndOutsideSqrt(Adam):
    """ε added both inside the square root and after it: √(v + ε)/√(1−β₂ᵗ) + ε.

    pytorch-optimizer, kozistr/pytorch_optimizer#397 (fixed by #398): the shared
    ``apply_ams_bound`` of its Adam variants computed ``exp_avg_sq.add(eps).sqrt_().add_(eps)``,
    so for gradients below √ε the denominator floors at √ε instead of ε. Here the same
    expression replaces ``exp_avg_sq.sqrt()`` in Adam's denominator."""

    def _denominator(self, exp_avg_sq, bias_correction2, eps):
        return (exp_avg_sq.add(eps).sqrt() / bias_correction2 ** 0.5).add_(eps)


class AdamStepCounterBf16(Adam):
    """The step counter kept in bfloat16: it stops at 256 (bf16 cannot hold 257), so the
    bias correction 1−β₂ᵗ freezes at 0.23 and every later step is 2.1× too small.

    PyTorch, pytorch/ao#4915: torchao's ``_AdamBase`` created ``state['step']`` as
    ``torch.tensor(0.0)`` in the default dtype; under ``set_default_dtype(bfloat16)`` the
    counter saturated at 256 with no warning. Here the incremented count is rounded
    through bfloat16 each step."""

    def _step_count(self, state):
        state["step"] = float(torch.tensor(state["step"] + 1.0, dtype=torch.bfloat16))
        return state["step"]


class AdamWNoBiasCorrection(AdamW):
    """AdamW without either bias correction (BERT's "AdamWeightDecay"): the first steps
    are lr·m/(√v + ε) with m and v still near zero.

    transformers, huggingface/transformers#420: ``BertAdam`` (pytorch-pretrained-bert),
    ported from google-research/bert (its #153: "mostly an oversight"), did not correct
    the moments' bias; transformers' AdamW later added ``correct_bias=True`` as the default.
    Here both corrections are 1."""

    def _corrections(self, step, beta1, beta2):
        return 1.0, 1.0


class NAdamMuProductExtraMu(NAdam):
    """NAdam's next momentum product includes μₜ twice: Π·μₜ·μₜ₊₁ instead of Π·μₜ₊₁.

    PyTorch, pytorch/pytorch#92699: the differentiable/capturable branch of
    ``_single_tensor_nadam`` computed ``mu_product_next = mu_product * mu * mu_next``
    although ``mu_product`` already included μₜ; the foreach path did not, and the fix made
    both agree. Here the plain path takes the buggy product."""

    def _mu_product_next(self, mu_product, mu, mu_next):
        return mu_product * mu * mu_next


class RAdamEpsDropped(RAdam):
    """RAdam's rectified step without ε: √(1−β₂ᵗ)/√v, which is infinite (0/0: NaN) where a
    parameter's gradient has been exactly zero.

    PyTorch, pytorch/pytorch#92551 (also noted in #70230): "eps was not being used at all
    in the mta/foreach impl" of RAdam. Here the single-tensor path drops it the same way."""

    def _adaptive_lr(self, exp_avg_sq, bias_correction2, eps):
        return (bias_correction2 ** 0.5) / exp_avg_sq.sqrt()


class AdagradSumSqrtInPlace(Adagrad):
    """Adagrad's denominator computed with an in-place square root: the accumulator G is
    replaced by √G every step, so it no longer sums g².

    torchopt, metaopt/torchopt#80 (review of ``scale_by_rss``, its Adagrad): the update
    used ``t.sqrt_().add(eps)`` on the sum of squares; the reviewer asked for
    ``t.sqrt().add_(eps)`` ("t will be modified by calling t.sqrt_"). torchopt is outside
    the trackers the issue lists (a PyTorch port of optax's transforms); the same pattern.
    Here ``sqrt_`` replaces ``sqrt`` on the state."""

    def _std(self, state_sum, eps):
        return state_sum.sqrt_().add(eps)


class RMSpropEpsAddedInPlace(RMSprop):
    """RMSprop adds ε to the square average in place: v gains ε every step (ε/(1−α) at
    steady state, 100·ε for α = 0.99) and the root is √(v + ε) with that v.

    torchopt, metaopt/torchopt#8 (review of its RMSProp): the update was
    ``g.mul_(torch.rsqrt_(n.add_(eps)))``, which writes ε (and the reciprocal root) into
    the second-moment state ν; the fix used ``rsqrt(n.add(eps))``. Outside the listed
    trackers, like #80 above. Here the first half of it: ``add_`` on the state, then the
    root."""

    def _denominator(self, state, square_avg, grad, group):
        return square_avg.add_(group["eps"]).sqrt()


class AdafactorLrWrittenBack(Adafactor):
    """Adafactor writes its parameter-scaled step size back into ``group['lr']``: every
    parameter's α = RMS(θ)·ρ becomes the next one's lr, so the step size compounds the
    parameters' RMS and collapses.

    transformers, huggingface/transformers#9751: with ``relative_step=False`` and
    ``scale_parameter=True`` Adafactor did ``group["lr"] = self._get_lr(group, state)``, so
    each call scaled the previous one's result (and a scheduler's lr) by the next
    parameter's RMS. Here torch's α is stored into the group after it is computed."""

    def _alpha(self, p, group, rho_t):
        group["lr"] = super()._alpha(p, group, rho_t)
        return group["lr"]


class AdafactorRowFactorDropped(Adafactor):
    """Adafactor's factored estimate normalised per row instead of by the rows' mean: the
    row factor cancels and the update is g/√(column statistic) only.

    timm, huggingface/pytorch-image-models#2749: ``AdafactorBigVision`` took the mean of
    the row accumulator over the wrong (kept, size-1) dimension for tall matrices, so
    "row_factor == 1" and the update depended on the weight's orientation. Here the mean is
    taken over the last (size-1) dimension of ``row_var`` instead of over the rows."""

    def _row_normaliser(self, row_var, eps1):
        return row_var.mean(dim=-1, keepdim=True).clamp_(min=eps1)


class AdafactorClipInverted(Adafactor):
    """Adafactor's update clipping inverted: it divides by min(1, RMS(u)·d) instead of
    max(1, RMS(u)/d), so large updates are never shrunk and small ones are scaled up to RMS 1/d.

    timm, huggingface/pytorch-image-models#2790: ``AdafactorBigVision`` computed the
    divisor as ``(update.norm(2) / (update.numel() ** 0.5 / clipping_threshold)).clamp_(max=1.0)``.
    Here torch's clipping divisor is replaced by that expression."""

    def _clip_divisor(self, update, d):
        return min(1.0, update.norm(2).item() / (update.numel() ** 0.5 / d))


class SGDMomentumBufferReset(SGD):
    """SGD's momentum buffer re-initialised every step: buf = g each step, so momentum
    has no effect (heavy ball is plain SGD, Nesterov is SGD at (1+β)·lr).

    pytorch-optimizer, kozistr/pytorch_optimizer#516: ``SignSGD.init_group()`` assigned
    ``state['momentum_buffer'] = torch.zeros_like(p)`` on every step, so the buffer never
    carried over and Signum was plain SignSGD. Here the buffer is dropped before torch's
    update, which then initialises it from the gradient."""

    def _buffer(self, state, grad, momentum, dampening):
        state.pop("momentum_buffer", None)
        return super()._buffer(state, grad, momentum, dampening)


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
                self._init_state(p, state, group)
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            if group["maximize"]:
                grads = torch._foreach_neg(grads)
            if group["weight_decay"] != 0:
                if group["decoupled_weight_decay"]:
                    torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
                else:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            m = [s["exp_avg"] for s in states]
            v = [s["exp_avg_sq"] for s in states]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
            if group["amsgrad"]:
                v_max = [s["max_exp_avg_sq"] for s in states]
                torch._foreach_maximum_(v_max, v)
                v = v_max
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
            state["step"] = 0.0
            state["square_avg"] = self._zeros(p)
        self._step_count(state)
        square_avg = self._square_avg(state, grad, group["alpha"])
        p.sub_(grad.div(square_avg.sqrt().add_(group["eps"])).mul_(group["lr"]))


# ---------------------------------------------------------- equivalents, per family
# Rewrites that torch itself uses on other paths (its capturable/differentiable branches,
# its foreach path) or that only reassociate: the same numbers in exact arithmetic.

class AdamCapturableForm(Adam):
    """Adam's (and AMSGrad's) step written as torch's capturable branch writes it: the step
    size folded into the denominator, (√v / (√(1−β₂ᵗ)·(−s)) + ε/(−s)), then ``addcdiv``
    without a scalar — the same quotient m·s/(√v̂ + ε), rounded differently."""

    def _update(self, p, grad, state, group):
        self._init_state(p, state, group)
        beta1, beta2 = group["betas"]
        step = self._step_count(state)
        grad = self._decay(p, grad, group)
        exp_avg, exp_avg_sq = self._moments(state, grad, beta1, beta2)
        bias_correction1, bias_correction2 = self._corrections(step, beta1, beta2)
        step_size_neg = -(group["lr"] / bias_correction1)
        if group["amsgrad"]:
            exp_avg_sq = self._max_second_moment(state, exp_avg_sq, bias_correction2)
        denom = (exp_avg_sq.sqrt() / (bias_correction2 ** 0.5 * step_size_neg)).add_(group["eps"] / step_size_neg)
        p.addcdiv_(exp_avg, denom)


class AdamSquareAverageLerp(Adam):
    """v ← v + (g² − v)(1−β₂) by ``lerp`` instead of β₂·v + (1−β₂)·g² by ``mul``/``addcmul``
    (torch's differentiable path does this, with the same identity in its comment)."""

    def _moments(self, state, grad, beta1, beta2):
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].lerp_(grad * grad, 1 - beta2)
        return state["exp_avg"], state["exp_avg_sq"]


class AdamWDecayAsSubtraction(AdamW):
    """AdamW's decoupled decay as p − (lr·wd)·p instead of p·(1 − lr·wd)."""

    def _decay(self, p, grad, group):
        wd, lr = group["weight_decay"], group["lr"]
        if wd != 0 and group["decoupled_weight_decay"]:
            p.sub_(p, alpha=lr * wd)
            return grad
        return super()._decay(p, grad, group)


class NAdamSingleAddcdiv(NAdam):
    """NAdam's two ``addcdiv`` terms, (1−μₜ)/(1−Π)·g and μₜ₊₁/(1−Π·μₜ₊₁)·m over the same
    denominator, summed first and divided once (one ``addcdiv`` of their sum)."""

    def _apply(self, p, grad, exp_avg, denom, grad_scale: float, avg_scale: float):
        numerator = grad.mul(grad_scale)
        numerator.add_(exp_avg, alpha=avg_scale)
        p.addcdiv_(numerator, denom)


class RAdamCapturableForm(RAdam):
    """RAdam's rectified step as torch's capturable branch writes it: r·adaptive_lr formed
    first, then m̂·lr·(that), instead of ((m̂·lr)·adaptive_lr)·r."""

    @staticmethod
    def _rectified(exp_avg_hat, lr: float, adaptive_lr, rect: float):
        return exp_avg_hat * lr * adaptive_lr.mul_(rect)


class AdagradDivideThenScale(Adagrad):
    """g/(√G + ε) formed first, then scaled by the decayed learning rate and subtracted
    (three roundings instead of one ``addcdiv``)."""

    def _apply(self, p, grad, std, clr: float):
        p.sub_(grad.div(std).mul_(clr))


class RMSpropSquareAverageLerp(RMSprop):
    """v ← v + (g² − v)(1−α) by ``lerp`` instead of α·v + (1−α)·g² by ``mul``/``addcmul``."""

    def _square_avg(self, state, grad, alpha):
        return state["square_avg"].lerp_(grad * grad, 1 - alpha)


class AdafactorMeanOfSquares(Adafactor):
    """Adafactor's row and column statistics as (g·g).mean over the dimension, the
    formula torch's comment says its norm²/n computes "w/o materializing" g²."""

    @staticmethod
    def _row_col_means(grad):
        square = grad * grad
        return square.mean(dim=-1, keepdim=True), square.mean(dim=-2, keepdim=True)


class SGDNesterovExpanded(SGD):
    """Nesterov's direction g + β·(β·buf + g) expanded to (1+β)·g + β²·buf, from the buffer
    before this step's update (heavy ball and dampened momentum unchanged)."""

    def _direction(self, state, grad, group):
        momentum, previous = group["momentum"], state.get("momentum_buffer")
        if not group["nesterov"] or previous is None or self.state_dtype is not None:
            return super()._direction(state, grad, group)
        direction = grad.mul(1 + momentum).add_(previous, alpha=momentum * momentum)
        self._buffer(state, grad, momentum, group["dampening"])
        return direction
