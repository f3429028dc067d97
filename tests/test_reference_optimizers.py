"""Reference optimizers against torch.optim, against each other, and against Cohen et al.

Tolerances (all runs float64). Two computations of the same update differ only in
operation order (e.g. lr*m/P against (lr/bc1)*m/denom, or EMA momentum against
standard momentum at a scaled lr), so each step adds a few ulps (~1e-16 relative) that
the dynamics carry forward. Measured over hundreds of random problems and 25 steps:
SGD/RMSprop parity, EMA-vs-standard momentum and one Prop. 1 step all stay below
1e-14; Adam parity reaches ~1e-12, because Adam divides by sqrt(nu) and coordinates
with tiny gradients amplify rounding by up to lr/sqrt(nu). Hence rtol=atol=1e-12, and
1e-10 for Adam. A formula error (a missing factor, eps inside the square root, an
off-by-one bias correction) moves the iterates by 1e-6 or more.

The problems keep their sharpness O(1-10) and the learning rates below the stability
thresholds: on an unstable trajectory rounding grows exponentially and no fixed
tolerance holds.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stability_bench.optimizers import reference as ref
from stability_bench.optimizers.theory import ema_hb_threshold

FAST = settings(max_examples=20, deadline=None)
# See the module docstring for where these come from.
F64 = dict(rtol=1e-12, atol=1e-12)  # equal in exact arithmetic, rounded differently
F64_ADAM = dict(rtol=1e-10, atol=1e-10)  # the same; division by sqrt(nu) amplifies rounding


# ---- problems ---------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    """A one-hidden-layer tanh regression: a non-quadratic loss with three parameters."""

    X: torch.Tensor
    Y: torch.Tensor
    params0: list[torch.Tensor]

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        W1, b1, W2 = params
        return 0.5 * ((torch.tanh(self.X @ W1 + b1) @ W2 - self.Y) ** 2).mean()

    def leaves(self, dtype=torch.float64, device="cpu") -> list[torch.Tensor]:
        return [p.to(dtype=dtype, device=device).clone().requires_grad_(True) for p in self.params0]


def make_problem(n: int, d_in: int, hidden: int, d_out: int, seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    return Problem(
        X=randn(n, d_in, scale=d_in**-0.5),  # rows of about unit norm: sharpness stays O(1-10)
        Y=randn(n, d_out),
        params0=[randn(d_in, hidden, scale=d_in**-0.5), randn(hidden, scale=0.1), randn(hidden, d_out, scale=hidden**-0.5)],
    )


problems = st.builds(
    make_problem,
    n=st.integers(2, 12),
    d_in=st.integers(1, 5),
    hidden=st.integers(1, 6),
    d_out=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)


def run(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem, steps: int):
    """Step with a closure; return the parameters after each step and the returned losses."""
    trajectory, losses = [], []
    for _ in range(steps):
        def closure():
            optimizer.zero_grad()
            loss = problem.loss(params)
            loss.backward()
            return loss

        losses.append(optimizer.step(closure).detach())
        trajectory.append([p.detach().clone() for p in params])
    return trajectory, losses


# ---- parity with torch.optim --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hyper:
    lr: float
    beta1: float
    beta2: float
    eps: float


@dataclasses.dataclass(frozen=True)
class Parity:
    name: str
    torch_cls: type
    torch_kwargs: Callable[[Hyper], dict]
    ref_cls: type
    ref_kwargs: Callable[[Hyper], dict]
    tol: dict = dataclasses.field(default_factory=lambda: F64)


PARITY = [
    Parity("SGD~GD", torch.optim.SGD, lambda h: dict(lr=h.lr),
           ref.GD, lambda h: dict(lr=h.lr)),
    Parity("SGD(momentum)~StandardHB", torch.optim.SGD, lambda h: dict(lr=h.lr, momentum=h.beta1, dampening=0.0),
           ref.StandardHB, lambda h: dict(lr=h.lr, beta1=h.beta1)),
    Parity("SGD(nesterov)~StandardNesterov", torch.optim.SGD, lambda h: dict(lr=h.lr, momentum=h.beta1, nesterov=True),
           ref.StandardNesterov, lambda h: dict(lr=h.lr, beta1=h.beta1)),
    Parity("Adam~Adam", torch.optim.Adam, lambda h: dict(lr=h.lr, betas=(h.beta1, h.beta2), eps=h.eps),
           ref.Adam, lambda h: dict(lr=h.lr, beta1=h.beta1, beta2=h.beta2, eps=h.eps, bias_correction=True),
           tol=F64_ADAM),
    # torch adds eps outside the square root, as Cohen Eq. 1; torch starts nu at 0.
    Parity("RMSprop~RMSprop", torch.optim.RMSprop, lambda h: dict(lr=h.lr, alpha=h.beta2, eps=h.eps),
           ref.RMSprop, lambda h: dict(lr=h.lr, beta2=h.beta2, eps=h.eps, v0=0.0)),
]

hypers = st.builds(
    Hyper,
    lr=st.floats(1e-3, 0.1),
    beta1=st.floats(0.05, 0.95),  # > 0: torch's nesterov requires momentum
    beta2=st.floats(0.5, 0.999),
    eps=st.sampled_from([1e-8, 1e-5, 1e-3, 0.1]),
)


@pytest.mark.parametrize("case", PARITY, ids=lambda c: c.name)
@FAST
@given(problem=problems, h=hypers)
def test_matches_torch_step_for_step(case: Parity, problem: Problem, h: Hyper):
    torch_params, ref_params = problem.leaves(), problem.leaves()
    expected, expected_losses = run(case.torch_cls(torch_params, **case.torch_kwargs(h)), torch_params, problem, 25)
    actual, losses = run(case.ref_cls(ref_params, **case.ref_kwargs(h)), ref_params, problem, 25)
    torch.testing.assert_close(losses, expected_losses, **case.tol)
    for step, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, **case.tol, msg=lambda m: f"{case.name}, step {step + 1}: {m}")


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", PARITY, ids=lambda c: c.name)
def test_float32_on_device(case: Parity, device: str):
    """Same parity in float32 (tolerance at float32 resolution); state stays on the param's dtype/device."""
    problem = make_problem(8, 3, 4, 2, seed=0)
    problem.X, problem.Y = problem.X.float().to(device), problem.Y.float().to(device)
    h = Hyper(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-6)
    torch_params, ref_params = problem.leaves(torch.float32, device), problem.leaves(torch.float32, device)
    expected, _ = run(case.torch_cls(torch_params, **case.torch_kwargs(h)), torch_params, problem, 10)
    opt = case.ref_cls(ref_params, **case.ref_kwargs(h))
    actual, _ = run(opt, ref_params, problem, 10)
    torch.testing.assert_close(actual[-1], expected[-1], rtol=1e-5, atol=1e-6)
    for p in ref_params:
        assert p.dtype == torch.float32 and p.device.type == device
        for value in opt.state[p].values():
            if torch.is_tensor(value):
                assert value.dtype == torch.float32 and value.device.type == device


# ---- EMA momentum is standard momentum at lr*(1 - beta1) (Cohen, Lemmas 1 and 2) -------------


@pytest.mark.parametrize("ema_cls, standard_cls", [(ref.EMAHB, ref.StandardHB), (ref.EMANesterov, ref.StandardNesterov)])
@FAST
@given(problem=problems, lr=st.floats(1e-3, 0.1), beta1=st.floats(0.0, 0.95))
def test_ema_equals_standard_at_scaled_lr(ema_cls, standard_cls, problem, lr, beta1):
    ema_params, std_params = problem.leaves(), problem.leaves()
    ema, _ = run(ema_cls(ema_params, lr=lr, beta1=beta1), ema_params, problem, 25)
    std, _ = run(standard_cls(std_params, lr=lr * (1 - beta1), beta1=beta1), std_params, problem, 25)
    for a, e in zip(ema, std):
        torch.testing.assert_close(a, e, **F64)


# ---- Cohen Fig. 2: EMA heavy ball on f = x^2/2 is stable iff sharpness 1 < 38/lr --------------


@pytest.mark.parametrize("lr, diverges", [(1.0, False), (37.0, False), (37.9, False), (38.1, True), (39.0, True)])
def test_emahb_on_half_x_squared(lr: float, diverges: bool):
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = ref.EMAHB([x], lr=lr, beta1=0.9)
    peak = 1.0
    for _ in range(2000):
        x.grad = x.detach().clone()  # gradient of x^2/2
        opt.step()
        peak = max(peak, abs(x.item()))
        if peak > 1e6:
            break
    assert (peak > 1e6) is diverges
    assert (1.0 > ema_hb_threshold(lr, 0.9)) is diverges  # sharpness 1 against 38/lr
    if not diverges:
        assert abs(x.item()) < 1e-6  # |eigenvalue| = sqrt(0.9) per step: converged by step 2000


# ---- frozen Adam is Adam, then preconditioned EMA heavy ball (Cohen §4, Prop. 1) ------------------


def gradients(problem: Problem, x: list[torch.Tensor]) -> list[torch.Tensor]:
    x = [xi.detach().clone().requires_grad_(True) for xi in x]
    return list(torch.autograd.grad(problem.loss(x), x))


def reparameterized_emahb_step(problem: Problem, x, m, P, lr: float, beta1: float) -> list[torch.Tensor]:
    """One EMAHB step on f~(y) = f(P^-1/2 y) from y = P^1/2 x, m~ = P^-1/2 m, mapped back to
    x' = P^-1/2 y'. By Cohen's Prop. 1 this is one step of EMA heavy ball preconditioned by P."""
    root = [Pi.sqrt() for Pi in P]
    y = [(r * xi).detach().clone().requires_grad_(True) for r, xi in zip(root, x)]
    opt = ref.EMAHB(y, lr=lr, beta1=beta1)
    for yi, mi, r in zip(y, m, root):
        opt.state[yi]["momentum_buffer"] = (mi / r).clone()
    problem.loss([yi / r for yi, r in zip(y, root)]).backward()
    opt.step()
    return [(yi / r).detach() for yi, r in zip(y, root)]


def assert_preconditioned_emahb(opt, params, problem: Problem, m, P, lr: float, beta1: float, steps: int):
    """Each of ``steps`` steps of ``opt`` is the Prop. 1 step from its own current (x_t, m_t).

    Step by step rather than along a whole trajectory: frozen Adam may well be unstable
    (that is Cohen's point), and an unstable trajectory amplifies rounding exponentially.
    m_t is tracked here as the EMA of the gradients at opt's own iterates."""
    for t in range(steps):
        x = [p.detach().clone() for p in params]
        expected = reparameterized_emahb_step(problem, x, m, P, lr, beta1)
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, gradients(problem, x))]
        run(opt, params, problem, 1)
        torch.testing.assert_close([p.detach() for p in params], expected, **F64,
                                   msg=lambda msg: f"step {t + 1} after the freeze: {msg}")
        assert all(torch.equal(p, q) for p, q in zip(opt.preconditioner(), P))


@FAST
@given(problem=problems, freeze_step=st.integers(1, 8), lr=st.floats(1e-3, 0.05),
       beta1=st.floats(0.0, 0.95), beta2=st.floats(0.5, 0.999))
def test_frozen_adam_is_adam_then_preconditioned_emahb(problem, freeze_step, lr, beta1, beta2):
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, eps=1e-8)
    frozen_params, adam_params, torch_params = problem.leaves(), problem.leaves(), problem.leaves()
    frozen = ref.FrozenAdam(frozen_params, freeze_step=freeze_step, **kw)
    adam = ref.Adam(adam_params, **kw)
    torch_adam = torch.optim.Adam(torch_params, lr=lr, betas=(beta1, beta2), eps=1e-8)
    for _ in range(freeze_step):
        run(frozen, frozen_params, problem, 1)
        run(adam, adam_params, problem, 1)
        run(torch_adam, torch_params, problem, 1)
        assert all(torch.equal(f, a) for f, a in zip(frozen_params, adam_params))
    P = frozen.preconditioner()
    assert all(torch.equal(p, q) for p, q in zip(P, adam.preconditioner()))

    # Continue from x_k with the momentum m_k (read from torch's Adam, which matches).
    m = [torch_adam.state[p]["exp_avg"].clone() for p in torch_params]
    assert_preconditioned_emahb(frozen, frozen_params, problem, m, P, lr, beta1, steps=15)
    run(adam, adam_params, problem, 15)
    assert not all(torch.equal(f, a) for f, a in zip(frozen_params, adam_params))  # the freeze mattered


@FAST
@given(problem=problems, lr=st.floats(1e-3, 0.3), beta1=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_frozen_adam_with_given_preconditioner(problem, lr, beta1, seed):
    gen = torch.Generator().manual_seed(seed)
    P = [0.2 + torch.rand(p.shape, generator=gen, dtype=torch.float64) for p in problem.params0]
    params = problem.leaves()
    opt = ref.FrozenAdam(params, lr=lr, beta1=beta1, freeze_step=10**9, preconditioner=P)
    assert all(torch.equal(p, q) for p, q in zip(opt.preconditioner(), P))
    assert_preconditioned_emahb(opt, params, problem, [torch.zeros_like(p) for p in params], P, lr, beta1, steps=20)


# ---- preconditioner() ------------------------------------------------------------------------


@FAST
@given(problem=problems, h=hypers, steps=st.integers(1, 10))
def test_adam_preconditioner_is_the_last_applied_P(problem, h, steps):
    """P_t recomputed from torch.optim.Adam's state by Kingma & Ba's update
    x <- x - (lr/(1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps), and checked to be the
    P of the step just taken: x_t - x_{t-1} = -lr * m_t / P_t."""
    torch_params, ref_params = problem.leaves(), problem.leaves()
    torch_adam = torch.optim.Adam(torch_params, lr=h.lr, betas=(h.beta1, h.beta2), eps=h.eps)
    adam = ref.Adam(ref_params, lr=h.lr, beta1=h.beta1, beta2=h.beta2, eps=h.eps)
    assert adam.preconditioner() is None  # no P before the first step
    run(torch_adam, torch_params, problem, steps - 1)
    before = [p.detach().clone() for p in torch_params]
    run(torch_adam, torch_params, problem, 1)
    run(adam, ref_params, problem, steps)
    P = adam.preconditioner()
    for p, x0, Pi in zip(torch_params, before, P):
        state = torch_adam.state[p]
        t = float(state["step"])
        step_size = h.lr / (1 - h.beta1**t)
        denom = state["exp_avg_sq"].sqrt() / math.sqrt(1 - h.beta2**t) + h.eps
        torch.testing.assert_close(Pi, h.lr * denom / step_size, **F64_ADAM)
        torch.testing.assert_close(p.detach() - x0, -h.lr * state["exp_avg"] / Pi, rtol=1e-9, atol=1e-15)


def test_adam_without_bias_correction_one_step():
    """nu_1 = (1-beta2) g^2 and m_1 = (1-beta1) g, so x_1 = x_0 - lr*(1-beta1)*g/(sqrt(1-beta2)*|g| + eps)."""
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([3.0, -0.25, 0.0], dtype=torch.float64)
    opt = ref.Adam([x], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-3, bias_correction=False)
    x.grad = g.clone()
    opt.step()
    P = math.sqrt(0.01) * g.abs() + 1e-3
    torch.testing.assert_close(opt.preconditioner()[0], P, **F64)
    torch.testing.assert_close(x.detach(), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) - 0.1 * 0.1 * g / P, **F64)


@FAST
@given(problem=problems, h=hypers, steps=st.integers(1, 10))
def test_rmsprop_preconditioner_matches_torch_state(problem, h, steps):
    torch_params, ref_params = problem.leaves(), problem.leaves()
    torch_opt = torch.optim.RMSprop(torch_params, lr=h.lr, alpha=h.beta2, eps=h.eps)
    opt = ref.RMSprop(ref_params, lr=h.lr, beta2=h.beta2, eps=h.eps)
    run(torch_opt, torch_params, problem, steps)
    run(opt, ref_params, problem, steps)
    expected = [torch_opt.state[p]["square_avg"].sqrt() + h.eps for p in torch_params]
    torch.testing.assert_close(opt.preconditioner(), expected, **F64)


def test_rmsprop_initial_preconditioner_from_v0():
    """Cohen App. B starts RMSprop at nu_0 = 1: before any step P = 1 + eps."""
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = ref.RMSprop([x], lr=0.1, eps=1e-3, v0=1.0)
    torch.testing.assert_close(opt.preconditioner()[0], torch.full((4,), 1.001, dtype=torch.float64))
    assert not opt.state[x]  # asking did not create state


@pytest.mark.parametrize("cls", [ref.GD, ref.StandardHB, ref.EMAHB, ref.StandardNesterov, ref.EMANesterov])
def test_non_preconditioned_methods_report_none(cls):
    x = torch.ones(2, requires_grad=True)
    opt = cls([x], lr=0.1)
    x.grad = torch.ones(2)
    assert opt.step() is None  # no closure, no loss
    assert opt.preconditioner() is None


# ---- registry and validation ---------------------------------------------------------------


def test_registry_holds_every_class_under_its_name():
    names = ["GD", "StandardHB", "EMAHB", "StandardNesterov", "EMANesterov", "RMSprop", "Adam", "FrozenAdam",
             "Padam"]
    assert ref.REFERENCE_OPTIMIZERS.names() == sorted(names)
    for name in names:
        cls = ref.REFERENCE_OPTIMIZERS.get(name)
        assert cls.__name__ == name and issubclass(cls, torch.optim.Optimizer)


@pytest.mark.parametrize("cls, kwargs", [
    (ref.GD, dict(lr=0.0)),
    (ref.GD, dict(lr=-1.0)),
    (ref.GD, dict(lr=float("nan"))),
    (ref.StandardHB, dict(lr=0.1, beta1=1.0)),
    (ref.EMAHB, dict(lr=0.1, beta1=-0.1)),
    (ref.StandardNesterov, dict(lr=-0.1)),
    (ref.EMANesterov, dict(lr=0.1, beta1=1.5)),
    (ref.RMSprop, dict(lr=0.1, beta2=1.0)),
    (ref.RMSprop, dict(lr=0.1, eps=-1e-8)),
    (ref.RMSprop, dict(lr=0.1, v0=-1.0)),
    (ref.Adam, dict(lr=0.0)),
    (ref.Adam, dict(lr=0.1, beta1=1.0)),
    (ref.Adam, dict(lr=0.1, beta2=-0.5)),
    (ref.Adam, dict(lr=0.1, eps=-1.0)),
    (ref.FrozenAdam, dict(lr=0.1, freeze_step=0)),
    (ref.FrozenAdam, dict(lr=0.1, freeze_step=1.5)),
    (ref.FrozenAdam, dict(lr=0.1, beta1=1.0)),
    (ref.FrozenAdam, dict(lr=0.1, preconditioner=[])),
    (ref.FrozenAdam, dict(lr=0.1, preconditioner=[torch.ones(3)])),
    (ref.FrozenAdam, dict(lr=0.1, preconditioner=[torch.zeros(2)])),
    (ref.Padam, dict(lr=0.1, p=0.0)),
    (ref.Padam, dict(lr=0.1, p=0.75)),
    (ref.Padam, dict(lr=0.1, beta2=1.0)),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_bad_hyperparameters_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls([torch.zeros(2, requires_grad=True)], **kwargs)


def test_hyperparameters_live_in_param_groups():
    opt = ref.FrozenAdam([torch.zeros(2, requires_grad=True)], lr=0.1, beta1=0.8, beta2=0.9, eps=1e-6, freeze_step=3)
    group = opt.param_groups[0]
    assert (group["lr"], group["beta1"], group["beta2"], group["eps"], group["freeze_step"]) == (0.1, 0.8, 0.9, 1e-6, 3)
    assert ref.RMSprop([torch.zeros(1, requires_grad=True)], lr=0.1, v0=1.0).param_groups[0]["v0"] == 1.0


# ---- Padam (Cohen et al. Fig. 5) ------------------------------------------------------------


def _run(opt_factory, steps=12, seed=0):
    """Float64 steps on a fixed random quadratic-plus-quartic; returns (x, opt, trajectory)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    A = A @ A.T
    x = torch.randn(5, generator=gen, dtype=torch.float64).requires_grad_(True)
    opt = opt_factory([x])
    trajectory = []
    for _ in range(steps):
        x.grad = (A @ x.detach() + x.detach() ** 3).clone()
        opt.step()
        trajectory.append(x.detach().clone())
    return x, opt, trajectory


def test_padam_with_p_one_half_and_no_amsgrad_is_adam_without_bias_correction():
    _, _, padam = _run(lambda ps: ref.Padam(ps, lr=1e-2, p=0.5, amsgrad=False, eps=1e-7))
    _, _, adam = _run(lambda ps: ref.Adam(ps, lr=1e-2, eps=1e-7, bias_correction=False))
    for a, b in zip(padam, adam):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_padam_steps_by_its_preconditioner_and_keeps_amsgrads_maximum():
    x, opt, trajectory = _run(lambda ps: ref.Padam(ps, lr=1e-2, p=0.25), steps=8)
    before = trajectory[-2]
    state = opt.state[x]
    assert torch.all(state["max_exp_avg_sq"] >= state["exp_avg_sq"])
    [P] = opt.preconditioner()
    torch.testing.assert_close(P, state["max_exp_avg_sq"] ** 0.25 + 1e-8, rtol=1e-15, atol=0)
    torch.testing.assert_close(before - x.detach(), 1e-2 * state["exp_avg"] / P, rtol=1e-12, atol=0)
    assert opt.stability_threshold() == pytest.approx(38 / 1e-2)
    assert ref.Padam([torch.zeros(2, requires_grad=True)], lr=0.1).preconditioner() is None
