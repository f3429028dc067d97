"""Stability thresholds: the formulas (theory), and stability_threshold(optimizer) (thresholds).

Expected values come from the paper (Cohen et al. 2022, Table 1 and Fig. 5), from
arithmetic done by hand here, from the eigenvalues of each update rule written out
again below, and from running the real torch optimizers on f(x) = a*x^2/2.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stability_bench.optimizers import reference as ref
from stability_bench.optimizers import theory
from stability_bench.optimizers.thresholds import (
    TORCH_THRESHOLDS,
    stability_threshold,
    threshold_and_reason,
    threshold_status,
)

FAST = settings(max_examples=20, deadline=None)


# ---- the paper's numbers -----------------------------------------------------------------


@pytest.mark.parametrize("lr", [1e-4, 2e-5, 0.1, 3.0])
def test_paper_numbers_at_beta1_0_9(lr):
    assert theory.gd_threshold(lr) * lr == pytest.approx(2.0)
    assert theory.standard_hb_threshold(lr, 0.9) * lr == pytest.approx(3.8)
    assert theory.ema_hb_threshold(lr, 0.9) * lr == pytest.approx(38.0)  # "38/eta", Fig. 1-5
    assert theory.standard_nesterov_threshold(lr, 0.9) * lr == pytest.approx(3.8 / 2.8)
    assert theory.ema_nesterov_threshold(lr, 0.9) * lr == pytest.approx(3.8 / (0.1 * 2.8))
    assert round(theory.ema_nesterov_threshold(lr, 0.9) * lr, 2) == 13.57  # Nadam in Fig. 5
    assert theory.rmsprop_threshold(lr) * lr == pytest.approx(2.0)
    assert theory.adam_threshold(lr, 0.9) * lr == pytest.approx(38.0)
    assert theory.frozen_adam_threshold(lr, 0.9) * lr == pytest.approx(38.0)


def test_nadam_threshold_limits():
    assert theory.nadam_threshold(0.1, 0.9, 0.9) == pytest.approx(3.8 / (0.1 * 0.1 * 2.8))  # mu = beta1: EMA Nesterov
    assert theory.nadam_threshold(0.1, 0.9, 0.0) == pytest.approx(20.0)  # mu = 0: gradient descent
    assert theory.nadam_threshold(0.1, 0.9, 0.45) == pytest.approx(3.8 / (0.1 * 1.09))


# ---- every threshold is where the update rule's linear recurrence turns unstable -------------
# One step of each rule of Table 1 on f(x) = a*x^2/2, state (x, m), written out again here.


def _gd(x, m, a, lr, b):
    return x - lr * a * x, 0.0  # no momentum state


def _standard_hb(x, m, a, lr, b):
    m = b * m + a * x
    return x - lr * m, m


def _ema_hb(x, m, a, lr, b):
    m = b * m + (1 - b) * a * x
    return x - lr * m, m


def _standard_nesterov(x, m, a, lr, b):
    g = a * x
    m = b * m + g
    return x - lr * (b * m + g), m


def _ema_nesterov(x, m, a, lr, b):
    g = a * x
    m = b * m + (1 - b) * g
    return x - lr * (b * m + (1 - b) * g), m


def _nadam(mu):
    def step(x, m, a, lr, b):  # torch NAdam without its bias-correction factors, mu frozen
        g = a * x
        m = b * m + (1 - b) * g
        return x - lr * ((1 - mu) * g + mu * m), m
    return step


def spectral_radius(step, a, lr, b) -> float:
    columns = [step(1.0, 0.0, a, lr, b), step(0.0, 1.0, a, lr, b)]  # images of the basis vectors
    return max(abs(np.linalg.eigvals(np.array(columns).T)))


RULES = [
    ("GD", _gd, lambda lr, b, mu: theory.gd_threshold(lr)),
    ("StandardHB", _standard_hb, lambda lr, b, mu: theory.standard_hb_threshold(lr, b)),
    ("EMAHB", _ema_hb, lambda lr, b, mu: theory.ema_hb_threshold(lr, b)),
    ("StandardNesterov", _standard_nesterov, lambda lr, b, mu: theory.standard_nesterov_threshold(lr, b)),
    ("EMANesterov", _ema_nesterov, lambda lr, b, mu: theory.ema_nesterov_threshold(lr, b)),
    ("NAdam", None, lambda lr, b, mu: theory.nadam_threshold(lr, b, mu)),
]


@pytest.mark.parametrize("name, step, threshold", RULES, ids=[r[0] for r in RULES])
@FAST
@given(lr=st.floats(1e-4, 10.0), beta1=st.floats(0.0, 0.99), mu=st.floats(0.0, 0.99))
def test_threshold_is_where_the_recurrence_turns_unstable(name, step, threshold, lr, beta1, mu):
    step = step or _nadam(mu)
    T = threshold(lr, beta1, mu)
    assert spectral_radius(step, 0.999 * T, lr, beta1) < 1.0
    assert spectral_radius(step, 1.001 * T, lr, beta1) > 1.0


@pytest.mark.parametrize("fn, args", [
    (theory.gd_threshold, (0.0,)),
    (theory.gd_threshold, (-0.1,)),
    (theory.gd_threshold, (float("nan"),)),
    (theory.standard_hb_threshold, (0.1, 1.0)),
    (theory.ema_hb_threshold, (0.1, -0.1)),
    (theory.standard_nesterov_threshold, (0.0, 0.9)),
    (theory.ema_nesterov_threshold, (0.1, 1.5)),
    (theory.nadam_threshold, (0.1, 0.9, 1.0)),
    (theory.nadam_threshold, (0.1, 0.9, -0.5)),
    (theory.adam_threshold, (-1.0, 0.9)),
])
def test_bad_hyperparameters_raise(fn, args):
    with pytest.raises(ValueError):
        fn(*args)


# ---- stability_threshold(optimizer) for torch.optim ------------------------------------------


def _mu(t: int, beta1=0.9, momentum_decay=4e-3) -> float:
    """torch NAdam's momentum cache at step t (torch/optim/nadam.py)."""
    return beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))


# (class, kwargs, expected threshold), worked out by hand from the torch update rules.
TORCH_CASES = [
    (torch.optim.SGD, dict(lr=0.1), 20.0),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9), 38.0),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), 76.0),  # StandardHB at lr*(1-d)
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), 3.8 / 0.28),
    (torch.optim.Adam, dict(lr=1e-3), 38000.0),
    (torch.optim.Adam, dict(lr=1e-3, betas=(0.5, 0.999), amsgrad=True), 3.0 / 0.5e-3),
    (torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.1), 38000.0),
    (torch.optim.NAdam, dict(lr=1e-3), 3.8 / (1e-3 * (1.9 - 1.8 * _mu(1)))),
    (torch.optim.NAdam, dict(lr=1e-3, momentum_decay=0.0), 3.8 / (1e-3 * 1.09)),  # mu = 0.45 for good
    (torch.optim.RMSprop, dict(lr=0.01), 200.0),
    (torch.optim.RMSprop, dict(lr=0.01, centered=True), 200.0),
    (torch.optim.RMSprop, dict(lr=0.01, momentum=0.9), 380.0),
    (torch.optim.Adagrad, dict(lr=0.1), 20.0),
    (torch.optim.Adamax, dict(lr=2e-3), 19000.0),  # EMA heavy ball on P = (1-beta1^t)*u
    (torch.optim.RAdam, dict(lr=1e-3, betas=(0.8, 0.99)), 3.6 / 0.2e-3),
    (torch.optim.SparseAdam, dict(lr=1e-3), 38000.0),
    (torch.optim.Adadelta, dict(lr=1.0), 2.0),  # preconditioned GD
    (torch.optim.Adafactor, dict(lr=1e-2), 200.0),  # 2/rho_1, rho_1 = min(lr, 1/sqrt(1))
]
TORCH_IDS = [f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in kw.items())})" for cls, kw, _ in TORCH_CASES]


def _optimizer(cls, **kwargs) -> torch.optim.Optimizer:
    return cls([torch.zeros(3, dtype=torch.float64, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("cls, kwargs, expected", TORCH_CASES, ids=TORCH_IDS)
def test_torch_optimizer_threshold_follows_lr(cls, kwargs, expected):
    opt = _optimizer(cls, **kwargs)
    assert stability_threshold(opt) == pytest.approx(expected, rel=1e-12)
    opt.param_groups[0]["lr"] /= 4  # as an lr scheduler would
    assert stability_threshold(opt) == pytest.approx(4 * expected, rel=1e-12)


def test_nadam_and_adagrad_follow_the_step_count():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    nadam = torch.optim.NAdam([x], lr=1e-3)
    adagrad = torch.optim.Adagrad([x], lr=0.1, lr_decay=0.5)
    assert stability_threshold(adagrad) == pytest.approx(20.0)
    for _ in range(2):
        x.grad = torch.ones(2, dtype=torch.float64)
        nadam.step()
        adagrad.step()
    assert stability_threshold(nadam) == pytest.approx(3.8 / (1e-3 * (1.9 - 1.8 * _mu(3))))
    assert stability_threshold(adagrad) == pytest.approx(2 / (0.1 / (1 + 2 * 0.5)))  # step 3 uses lr/2


def test_sgd_with_full_dampening_has_no_threshold():
    assert stability_threshold(_optimizer(torch.optim.SGD, lr=0.1, momentum=0.9, dampening=1.0)) is None


# Empirical check on the real optimizers: f(x) = a*x^2/2 from a tiny x0, so that the
# update is linear (|g| << eps: P is eps, frozen) until |x| reaches 1. Adaptive methods
# get eps = E and lr = 0.1*E, so the preconditioned sharpness is a/E and the threshold
# returned (in those units) times E is the critical a.
E = 1e4
EMPIRICAL = [
    (torch.optim.SGD, dict(lr=0.1), 1.0),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9), 1.0),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), 1.0),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True), 1.0),
    (torch.optim.RMSprop, dict(lr=0.1 * E, eps=E), E),
    (torch.optim.RMSprop, dict(lr=0.1 * E, eps=E, momentum=0.9), E),
    (torch.optim.Adam, dict(lr=0.1 * E, eps=E), E),
    (torch.optim.AdamW, dict(lr=0.1 * E, eps=E, weight_decay=0.0), E),
    (torch.optim.NAdam, dict(lr=0.1 * E, eps=E, momentum_decay=0.0), E),
    (torch.optim.NAdam, dict(lr=0.1 * E, eps=E, momentum_decay=0.0, betas=(0.5, 0.999)), E),
    (torch.optim.Adagrad, dict(lr=0.1 * E, eps=E), E),
    (torch.optim.Adamax, dict(lr=0.1 * E, eps=E), E),
    # SparseAdam's eps sits inside the bias correction, P = E/sqrt(1 - beta2^t): beta2 = 0.9
    # brings P to E within tens of steps (at 0.999 it would take thousands)
    (torch.optim.SparseAdam, dict(lr=0.1 * E, eps=E, betas=(0.9, 0.9)), E),
    # eps inside the square roots: P = sqrt(v + E)/sqrt(u + E) = 1 while v, u << E
    (torch.optim.Adadelta, dict(lr=0.1, eps=E), 1.0),
    # eps1 = 1 floors V^ (so P = 1/scale), eps2 = 1e-8 floors the parameter scale while
    # |x| < 1e-8: P = 1e8, x <- x - rho*1e-8*g; decided inside that regime (limit 1e-12)
    (torch.optim.Adafactor, dict(lr=1e-2, eps=(1.0, 1e-8)), 1e8),
    # alpha = 0 keeps eta = lr; lambd = 1 moves the threshold to 2/lr - 1 = 19
    (torch.optim.ASGD, dict(lr=0.1, lambd=1.0, alpha=0.0), 1.0),
]
# RAdam is left out: its first steps (SMA length <= 5) are plain momentum steps at lr with
# P = 1 - beta1^t, not P = E, which throw x up by ~10^28 before the adaptive regime begins,
# leaving too few decades to decide. Its P is checked against its step in test_probes_engine.
LIMITS = {torch.optim.Adafactor: dict(x0=1e-60, limit=1e-12)}


def diverges(cls, kwargs, a: float, x0=1e-30, steps=3000, limit=1.0) -> bool:
    """True if x grows from x0 past ``limit``; False once it has decayed below x0 * 1e-30.
    (x0 is tiny because Adam's bias correction makes its first steps GD-like and
    amplifies x ~1e14 before the asymptotic regime.)"""
    x = torch.full((1,), x0, dtype=torch.float64, requires_grad=True)
    opt = cls([x], **kwargs)
    for t in range(steps):
        x.grad = a * x.detach().clone()
        if cls is torch.optim.SparseAdam:
            x.grad = x.grad.to_sparse()
        opt.step()
        if abs(x.item()) > limit:
            return True
        if t > 100 and abs(x.item()) < x0 * 1e-30:
            return False
    raise AssertionError(f"neither diverged nor converged in {steps} steps (|x| = {abs(x.item())})")


@pytest.mark.parametrize("cls, kwargs, scale", EMPIRICAL, ids=[f"{c.__name__}{kw}" for c, kw, _ in EMPIRICAL])
def test_torch_optimizers_diverge_just_above_their_threshold(cls, kwargs, scale):
    critical = stability_threshold(_optimizer(cls, **kwargs)) * scale
    assert not diverges(cls, kwargs, 0.95 * critical, **LIMITS.get(cls, {}))
    assert diverges(cls, kwargs, 1.05 * critical, **LIMITS.get(cls, {}))


# ---- the hook, the reference optimizers, unknown optimizers ----------------------------------


REFERENCE_AT_0_1 = {  # lr = 0.1, beta1 = 0.9: 2/lr, 3.8/lr, 38/lr, (3.8/2.8)/lr, (3.8/0.28)/lr
    "GD": 20.0, "StandardHB": 38.0, "EMAHB": 380.0, "StandardNesterov": 3.8 / 0.28,
    "EMANesterov": 3.8 / 0.028, "RMSprop": 20.0, "Adam": 380.0, "FrozenAdam": 380.0,
}


@pytest.mark.parametrize("name, expected", REFERENCE_AT_0_1.items())
def test_reference_optimizers_answer_for_themselves(name, expected):
    opt = ref.REFERENCE_OPTIMIZERS.get(name)([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert opt.stability_threshold() == pytest.approx(expected)
    assert stability_threshold(opt) == pytest.approx(expected)
    opt.param_groups[0]["lr"] = 0.05
    assert stability_threshold(opt) == pytest.approx(2 * expected)


def test_hook_wins_and_unknown_is_none():
    class Custom(torch.optim.SGD):
        def stability_threshold(self):
            return 7

    class Unknown(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(lr=0.1))

    params = [torch.zeros(2, requires_grad=True)]
    assert stability_threshold(Custom(params, lr=0.1)) == 7.0
    assert stability_threshold(Unknown(params)) is None
    assert stability_threshold(torch.optim.LBFGS(params)) is None


def test_registry_covers_the_torch_classes():
    assert {"SGD", "Adam", "AdamW", "NAdam", "RMSprop", "Adagrad"} <= set(TORCH_THRESHOLDS.names())


def test_asgd_threshold_includes_its_decay_term_and_follows_eta():
    opt = _optimizer(torch.optim.ASGD, lr=0.1, lambd=1.0, alpha=0.0)
    assert stability_threshold(opt) == pytest.approx(19.0)
    decaying = _optimizer(torch.optim.ASGD, lr=0.1, lambd=0.5, alpha=1.0)
    decaying.param_groups[0]["params"][0].grad = torch.ones(3, dtype=torch.float64)
    decaying.step()  # eta_1 = lr/(1 + lambd*lr*1)
    assert stability_threshold(decaying) == pytest.approx(2 / (0.1 / 1.05) - 0.5)


def test_adafactor_threshold_follows_its_relative_step():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adafactor([x], lr=0.5)
    assert stability_threshold(opt) == pytest.approx(2 / 0.5)  # rho_1 = min(0.5, 1)
    for _ in range(8):
        x.grad = torch.ones(2, dtype=torch.float64)
        opt.step()
    assert stability_threshold(opt) == pytest.approx(2 * 3.0)  # rho_9 = min(0.5, 1/3)


# ---- unknown thresholds: with the reason, at run time and at class level ------------------


class DefaultsOnlyAdamW(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3):
        super().__init__(params, lr=lr, betas=(0.8, 0.999))


class OwnStepAdam(torch.optim.Adam):
    @torch.no_grad()
    def step(self, closure=None):
        return super().step(closure)


class OwnStepAdamWithHook(OwnStepAdam):
    def stability_threshold(self):
        return 1.5


@pytest.mark.parametrize("cls, hyper, fragment", [
    (torch.optim.LBFGS, {}, "quasi-Newton"),
    (torch.optim.Rprop, {}, "sign of g"),
    (torch.optim.Muon, {}, "orthogonalised"),
    (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 1.0}, "dampening"),
    (torch.optim.Adam, {"lr": 0.1, "maximize": True}, "maximize"),
    (OwnStepAdam, {"lr": 0.1}, "overrides step"),
    (ref.Adam, {"lr": 0.1}, None),  # its own hook
])
def test_threshold_status_says_why_at_class_level_and_the_run_agrees(cls, hyper, fragment):
    reason = threshold_status(cls, hyper)
    if fragment is None:
        assert reason is None
        return
    assert fragment in reason
    if cls is not torch.optim.Muon:  # Muon takes 2-D parameters only
        value, run_reason = threshold_and_reason(cls([torch.zeros(3, requires_grad=True)], **hyper))
        assert value is None and run_reason == reason


def test_subclasses_inherit_a_threshold_only_while_they_run_the_parents_step():
    params = [torch.zeros(2, requires_grad=True)]
    assert stability_threshold(DefaultsOnlyAdamW(params, lr=0.1)) == pytest.approx(3.6 / 0.02)
    assert threshold_status(DefaultsOnlyAdamW, {"lr": 0.1}) is None
    assert stability_threshold(OwnStepAdam(params, lr=0.1)) is None
    assert stability_threshold(OwnStepAdamWithHook(params, lr=0.1)) == 1.5
    assert threshold_status(OwnStepAdamWithHook, {}) is None

    class NamedAdam(torch.optim.Optimizer):  # a class *named* like torch's is not torch's
        def __init__(self, params, lr=0.1):
            super().__init__(params, dict(lr=lr, betas=(0.9, 0.999)))

        def step(self, closure=None):
            pass
    NamedAdam.__name__ = "Adam"
    assert stability_threshold(NamedAdam(params)) is None
    assert "not a class whose stability threshold is known" in threshold_and_reason(NamedAdam(params))[1]
