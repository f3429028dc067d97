"""Reference parity, in the spirit of PyTorch's own optimizer tests, and the harness's
``parity`` expectation.

Part 1 — torch.optim against plain reference implementations, step for step, float64,
on random problems (hypothesis-drawn parameter shapes and hyperparameters, 25 steps),
parameters *and* optimizer state compared. tests/test_reference_optimizers.py already
checks the parameters of SGD (plain, momentum, nesterov), RMSprop and Adam against the
package's reference classes; here:
- the state of those same pairs (momentum buffer, square_avg / exp_avg_sq, exp_avg, step);
- SGD with dampening, which is StandardHB at lr*(1 - d) after its undamped first step;
- AdamW, NAdam and Adagrad, which have no reference class: each is written below as a
  plain function, one formula per line from its paper (Loshchilov & Hutter 2019; Dozat
  2016; Duchi et al. 2011), in the style of optax's reference implementations.

How torch.optim.SGD maps onto Table 1: torch keeps buf <- momentum*buf + (1 - dampening)*g
(buf = g on the first step) and steps x <- x - lr*buf, or x <- x - lr*(g + momentum*buf)
with nesterov=True. With dampening 0 that is StandardHB(lr, beta1=momentum) /
StandardNesterov(lr, beta1=momentum) exactly, m = buf. With dampening d it is StandardHB
at lr*(1 - d) with m = buf/(1 - d), whose first step starts from m_1 = g/(1 - d) instead
of g. (EMAHB(lr, beta1) is *not* SGD(dampening=beta1): the first step differs, and the
thresholds module treats it as StandardHB at lr*(1 - beta1), Cohen Lemma 2.)

Tolerances (float64; rtol = atol): 1e-12 where the two sides compute the same expression
in a different order (SGD, Adagrad); 1e-10 for the Adam family, which divides by
sqrt(nu) + eps, so a coordinate with a tiny gradient amplifies rounding by up to
lr/sqrt(nu) (the analysis of tests/test_reference_optimizers.py). Measured over 200-300
random problems per optimizer, as |difference|/(|value| + 1): <= 5e-16 for SGD, RMSprop
and Adagrad, <= 1e-11 for Adam, AdamW and NAdam. A formula error (a missing bias
correction, eps inside the square root, decay applied after the step, mu_t for mu_{t+1})
moves the parameters far more: even a learning rate 0.1% off fails the comparison
(``test_plain_reference_catches_a_formula_error``).

Part 2 — the ``parity`` expectation, on tiny cases.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import textwrap
from typing import Callable

import numpy as np
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from casefiles import line_of
from stability_bench.optimizers import reference as ref

F64 = dict(rtol=1e-12, atol=1e-12)
F64_ADAM = dict(rtol=1e-10, atol=1e-10)
STEPS = 25


# ---- problems: hypothesis-drawn parameter shapes, a non-quadratic coupled loss ----------------


@dataclasses.dataclass
class Problem:
    """f(params) = Σ_p [½ Σ d_p (p - t_p)² + Σ log cosh(s_p p)] + tanh(Σ_p w_p·p)·c:
    curvature O(1) everywhere (log cosh'' <= 1), coupled across parameters by the tanh."""

    params0: list[torch.Tensor]
    d: list[torch.Tensor]
    t: list[torch.Tensor]
    s: list[torch.Tensor]
    w: list[torch.Tensor]

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        total = sum(0.5 * (d * (p - t) ** 2).sum() + torch.log(torch.cosh(s * p)).sum()
                    for p, d, t, s in zip(params, self.d, self.t, self.s))
        return total + torch.tanh(sum((w * p).sum() for p, w in zip(params, self.w)))

    def leaves(self) -> list[torch.Tensor]:
        return [p.clone().requires_grad_(True) for p in self.params0]


def make_problem(shapes: list[tuple[int, ...]], seed: int) -> Problem:
    gen = torch.Generator().manual_seed(seed)

    def draw(shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)

    return Problem(params0=[draw(s, -2, 2) for s in shapes], d=[draw(s, 0.1, 2) for s in shapes],
                   t=[draw(s) for s in shapes], s=[draw(s, 0.1, 1.5) for s in shapes],
                   w=[draw(s, -0.5, 0.5) for s in shapes])


shapes = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3)
problems = st.builds(make_problem, shapes=shapes, seed=st.integers(0, 2**31 - 1))


def grads_at(problem: Problem, params: list[torch.Tensor]) -> list[torch.Tensor]:
    x = [p.detach().clone().requires_grad_(True) for p in params]
    return list(torch.autograd.grad(problem.loss(x), x))


@contextlib.contextmanager
def scalar_dtype_float64():
    """torch keeps scalar state (NAdam's mu_product, every ``step``) in the default dtype,
    float32 unless changed: NAdam's bias correction 1/(1 - mu_product) is then rounded to
    float32 even for float64 parameters (a 1e-9 relative error per step). For a float64
    comparison of the formulas, set the default dtype while stepping."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def run_torch(opt: torch.optim.Optimizer, params: list[torch.Tensor], problem: Problem, steps: int):
    """Parameters and state after every step (scalar state in float64)."""
    out = []
    for _ in range(steps):
        opt.zero_grad()
        problem.loss(params).backward()
        with scalar_dtype_float64():
            opt.step()
        out.append(([p.detach().clone() for p in params],
                    [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()} for p in params]))
    return out


def assert_trajectories_match(actual, expected, state_keys: dict[str, str], tol: dict, name: str):
    """``state_keys`` maps the reference's state names to torch's."""
    for t, ((params, states), (tparams, tstates)) in enumerate(zip(actual, expected), 1):
        torch.testing.assert_close(params, tparams, **tol, msg=lambda m: f"{name}, step {t}, params: {m}")
        for i, (state, tstate) in enumerate(zip(states, tstates)):
            for ours, theirs in state_keys.items():
                if theirs == "step":
                    assert float(tstate["step"]) == float(state[ours]) == t, f"{name}, step {t}: step count"
                    continue
                torch.testing.assert_close(torch.as_tensor(state[ours], dtype=torch.float64),
                                           torch.as_tensor(tstate[theirs], dtype=torch.float64), **tol,
                                           msg=lambda m: f"{name}, step {t}, param {i}, state {ours}/{theirs}: {m}")


# ---- the package's reference classes: state, and SGD's dampening ------------------------------


@dataclasses.dataclass(frozen=True)
class StatePair:
    name: str
    torch_make: Callable
    ref_make: Callable
    keys: dict            # reference state name -> torch state name
    tol: dict


STATE_PAIRS = [
    StatePair("SGD(momentum)~StandardHB", lambda p, h: torch.optim.SGD(p, lr=h["lr"], momentum=h["beta1"]),
              lambda p, h: ref.StandardHB(p, lr=h["lr"], beta1=h["beta1"]),
              {"momentum_buffer": "momentum_buffer"}, F64),
    StatePair("SGD(nesterov)~StandardNesterov",
              lambda p, h: torch.optim.SGD(p, lr=h["lr"], momentum=h["beta1"], nesterov=True),
              lambda p, h: ref.StandardNesterov(p, lr=h["lr"], beta1=h["beta1"]),
              {"momentum_buffer": "momentum_buffer"}, F64),
    StatePair("RMSprop~RMSprop", lambda p, h: torch.optim.RMSprop(p, lr=h["lr"], alpha=h["beta2"], eps=h["eps"]),
              lambda p, h: ref.RMSprop(p, lr=h["lr"], beta2=h["beta2"], eps=h["eps"]),
              {"exp_avg_sq": "square_avg"}, F64),
    StatePair("Adam~Adam", lambda p, h: torch.optim.Adam(p, lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"]),
              lambda p, h: ref.Adam(p, lr=h["lr"], beta1=h["beta1"], beta2=h["beta2"], eps=h["eps"]),
              {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}, F64_ADAM),
]

hypers = st.fixed_dictionaries(dict(
    lr=st.floats(1e-3, 0.1), beta1=st.floats(0.05, 0.95), beta2=st.floats(0.5, 0.999),
    eps=st.sampled_from([1e-8, 1e-5, 1e-3, 0.1])))


@pytest.mark.parametrize("pair", STATE_PAIRS, ids=lambda p: p.name)
@settings(max_examples=15)
@given(problem=problems, h=hypers)
def test_reference_state_matches_torch(pair: StatePair, problem: Problem, h: dict):
    """Parameters and state, every step (the parameters alone are in test_reference_optimizers)."""
    tp, rp = problem.leaves(), problem.leaves()
    expected = run_torch(pair.torch_make(tp, h), tp, problem, STEPS)
    actual = run_torch(pair.ref_make(rp, h), rp, problem, STEPS)
    assert_trajectories_match(actual, expected, pair.keys, pair.tol, pair.name)


@settings(max_examples=15)
@given(problem=problems, lr=st.floats(1e-3, 0.1), beta1=st.floats(0.05, 0.95), dampening=st.floats(0.05, 0.95))
def test_sgd_dampening_is_standard_hb_at_scaled_lr_after_step_one(problem, lr, beta1, dampening):
    """torch SGD(lr, momentum=beta1, dampening=d): its first step is undamped (buf = g);
    from then on it is StandardHB(lr*(1 - d), beta1) with m = buf/(1 - d)."""
    tp, rp = problem.leaves(), problem.leaves()
    sgd = torch.optim.SGD(tp, lr=lr, momentum=beta1, dampening=dampening)
    run_torch(sgd, tp, problem, 1)
    hb = ref.StandardHB(rp, lr=lr * (1 - dampening), beta1=beta1)
    with torch.no_grad():
        for r, t in zip(rp, tp):
            r.copy_(t)
            hb.state[r]["momentum_buffer"] = sgd.state[t]["momentum_buffer"] / (1 - dampening)
    expected = run_torch(sgd, tp, problem, STEPS - 1)
    actual = run_torch(hb, rp, problem, STEPS - 1)
    for (params, states), (tparams, tstates) in zip(actual, expected):
        torch.testing.assert_close(params, tparams, **F64)
        for s, ts in zip(states, tstates):
            torch.testing.assert_close(s["momentum_buffer"] * (1 - dampening), ts["momentum_buffer"], **F64)


# ---- AdamW, NAdam, Adagrad: plain reference implementations -----------------------------------
# Functional, one formula per line; t is the 1-based step; state is a dict per parameter.


def adamw_reference(p, g, state, t, *, lr, beta1, beta2, eps, weight_decay, amsgrad):
    """Loshchilov & Hutter's decoupled weight decay (as torch scales it, by lr), then Adam
    (Kingma & Ba) with bias correction; amsgrad keeps the running max of nu."""
    p = p * (1 - lr * weight_decay)
    m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
    nu = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
    new = {"exp_avg": m, "exp_avg_sq": nu, "step": t}
    if amsgrad:
        nu = new["max_exp_avg_sq"] = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(p)), nu)
    m_hat = m / (1 - beta1**t)
    nu_hat = nu / (1 - beta2**t)
    return p - lr * m_hat / (nu_hat.sqrt() + eps), new


def nadam_reference(p, g, state, t, *, lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay):
    """Dozat's NAdam with torch's momentum schedule mu_t = beta1*(1 - ½·0.96^(t·psi)):
    m_hat = mu_{t+1} m_t/(1 - Π_{i<=t+1} mu_i) + (1 - mu_t) g_t/(1 - Π_{i<=t} mu_i),
    nu_hat = nu_t/(1 - beta2^t), x <- x - lr m_hat/(sqrt(nu_hat) + eps). Weight decay is
    L2 (added to g) or, if decoupled, x <- x(1 - lr·wd) first."""
    if weight_decay and decoupled_weight_decay:
        p = p * (1 - lr * weight_decay)
    elif weight_decay:
        g = g + weight_decay * p
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    mu_product = state.get("mu_product", 1.0) * mu
    m = beta1 * state.get("exp_avg", torch.zeros_like(p)) + (1 - beta1) * g
    nu = beta2 * state.get("exp_avg_sq", torch.zeros_like(p)) + (1 - beta2) * g * g
    m_hat = mu_next * m / (1 - mu_product * mu_next) + (1 - mu) * g / (1 - mu_product)
    nu_hat = nu / (1 - beta2**t)
    new = {"exp_avg": m, "exp_avg_sq": nu, "mu_product": mu_product, "step": t}
    return p - lr * m_hat / (nu_hat.sqrt() + eps), new


def adagrad_reference(p, g, state, t, *, lr, lr_decay, weight_decay, initial_accumulator_value, eps):
    """Duchi et al.: s <- s + g², x <- x - lr_t g/(sqrt(s) + eps), with torch's
    lr_t = lr/(1 + (t - 1)·lr_decay) and L2 weight decay added to g."""
    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    s = state.get("sum", torch.full_like(p, initial_accumulator_value)) + g * g
    return p - clr * g / (s.sqrt() + eps), {"sum": s, "step": t}


def run_reference(step_fn, problem: Problem, steps: int, **hyper):
    params = [p.clone() for p in problem.params0]
    states = [{} for _ in params]
    out = []
    for t in range(1, steps + 1):
        grads = grads_at(problem, params)
        updated = [step_fn(p, g, s, t, **hyper) for p, g, s in zip(params, grads, states)]
        params, states = [u[0] for u in updated], [u[1] for u in updated]
        out.append(([p.clone() for p in params], states))
    return out


@dataclasses.dataclass(frozen=True)
class Plain:
    name: str
    torch_cls: type
    step_fn: Callable
    hyper: st.SearchStrategy          # the reference's keyword arguments
    to_torch: Callable[[dict], dict]  # ... as torch's
    keys: dict
    tol: dict
    example: dict                     # fixed hyperparameters for the negative control


lr_ = st.floats(1e-3, 0.1)
beta1_, beta2_ = st.floats(0.0, 0.95), st.floats(0.5, 0.999)
eps_ = st.sampled_from([1e-8, 1e-5, 1e-3, 0.1])
PLAIN = [
    Plain("AdamW", torch.optim.AdamW, adamw_reference,
          st.fixed_dictionaries(dict(lr=lr_, beta1=beta1_, beta2=beta2_, eps=eps_,
                                     weight_decay=st.floats(0.0, 1.0), amsgrad=st.booleans())),
          lambda h: dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                         weight_decay=h["weight_decay"], amsgrad=h["amsgrad"]),
          {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}, F64_ADAM,
          dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, amsgrad=True)),
    Plain("NAdam", torch.optim.NAdam, nadam_reference,
          st.fixed_dictionaries(dict(lr=lr_, beta1=beta1_, beta2=beta2_, eps=eps_,
                                     weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
                                     momentum_decay=st.sampled_from([0.0, 4e-3, 0.1, 1.0]),
                                     decoupled_weight_decay=st.booleans())),
          lambda h: dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"], weight_decay=h["weight_decay"],
                         momentum_decay=h["momentum_decay"], decoupled_weight_decay=h["decoupled_weight_decay"]),
          {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "mu_product": "mu_product", "step": "step"}, F64_ADAM,
          dict(lr=0.05, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, momentum_decay=4e-3,
               decoupled_weight_decay=False)),
    Plain("Adagrad", torch.optim.Adagrad, adagrad_reference,
          st.fixed_dictionaries(dict(lr=st.floats(1e-3, 0.5), lr_decay=st.sampled_from([0.0, 0.01, 0.5]),
                                     weight_decay=st.sampled_from([0.0, 0.01, 0.3]),
                                     initial_accumulator_value=st.sampled_from([0.0, 0.1, 1.0]),
                                     eps=st.sampled_from([1e-10, 1e-6, 1e-3]))),
          lambda h: dict(h), {"sum": "sum", "step": "step"}, F64,
          dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-10)),
]


ROUNDING_MARGIN = 10  # a rewritten formula rounds at every step, a nudge once: ~√25 = 5, doubled


def rounding_tolerance(case: Plain, problem: Problem, hyper: dict, expected) -> dict:
    """``case.tol``, widened where the trajectory itself amplifies rounding: torch's own run
    from parameters nudged by one ulp departs from the unnudged one by ``drift`` (relative,
    worst over steps and entries); a reference that only rounds differently may depart by
    up to ROUNDING_MARGIN × drift. (NAdam with β₁ 0.17, ε 1e-5 amplifies a one-ulp nudge to
    1.1e-10 in 25 steps; a formula error moves parameters by ≥ 1e-4 relative.)"""
    nudged_params = [torch.nextafter(p, torch.full_like(p, math.inf)) for p in problem.params0]
    nudged = dataclasses.replace(problem, params0=nudged_params)
    tp = nudged.leaves()
    other = run_torch(case.torch_cls(tp, **case.to_torch(hyper)), tp, nudged, STEPS)
    drift = max(float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())
                for (pa, _), (pb, _) in zip(other, expected) for a, b in zip(pa, pb) if a.numel())
    scale = max((float(p.abs().max()) for ps, _ in expected for p in ps if p.numel()), default=1.0)
    return {"rtol": max(case.tol["rtol"], ROUNDING_MARGIN * drift),
            "atol": max(case.tol["atol"], ROUNDING_MARGIN * drift * scale)}


@pytest.mark.parametrize("case", PLAIN, ids=lambda c: c.name)
@settings(max_examples=15)
@given(problem=problems, data=st.data())
def test_torch_matches_plain_reference(case: Plain, problem: Problem, data):
    hyper = data.draw(case.hyper, label="hyperparameters")
    tp = problem.leaves()
    expected = run_torch(case.torch_cls(tp, **case.to_torch(hyper)), tp, problem, STEPS)
    actual = run_reference(case.step_fn, problem, STEPS, **hyper)
    keys = dict(case.keys)
    if hyper.get("amsgrad"):
        keys["max_exp_avg_sq"] = "max_exp_avg_sq"
    assert_trajectories_match(actual, expected, keys, rounding_tolerance(case, problem, hyper, expected), case.name)


@pytest.mark.parametrize("case", PLAIN, ids=lambda c: c.name)
def test_plain_reference_catches_a_formula_error(case: Plain):
    """The tolerance is tight enough: the same comparison fails for a reference with one
    factor wrong (lr 0.1% high: the smallest error the trajectories are meant to show)."""
    problem = make_problem([(3,), (2, 2)], seed=0)
    hyper = case.example
    tp = problem.leaves()
    expected = run_torch(case.torch_cls(tp, **case.to_torch(hyper)), tp, problem, STEPS)
    wrong = run_reference(case.step_fn, problem, STEPS, **{**hyper, "lr": hyper["lr"] * 1.001})
    right = run_reference(case.step_fn, problem, STEPS, **hyper)
    keys = {**case.keys, **({"max_exp_avg_sq": "max_exp_avg_sq"} if hyper.get("amsgrad") else {})}
    assert_trajectories_match(right, expected, keys, case.tol, case.name)
    with pytest.raises(AssertionError):
        assert_trajectories_match(wrong, expected, keys, case.tol, case.name)


# ---- the parity expectation ------------------------------------------------------------------
# A user's optimizer that departs from Adam on purpose: from its 11th step on its learning
# rate is 0.1% higher. In the run's history (step k: loss and gradient at the parameters
# after k updates, and the norm of update k+1) the first departure is update_norm at step 10.
LATE_ADAM = '''\
import torch


class LateAdam(torch.optim.Adam):
    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 11:
            for group in self.param_groups:
                group["lr"] *= 1.001
        return super().step(closure)
'''
DEPARTS_AT = 10

PARITY_CASE = Path(__file__).parent / "data" / "parity" / "adam_parity.yaml"
LATE_PARITY_LINE = line_of(PARITY_CASE, "parity: {with: ref, rtol: 1.0e-9}")


def tiny_case(dtype="float64", steps=30, **optimizers) -> dict:
    return {"name": "tiny", "dtype": dtype, "steps": steps,
            "model": {"kind": "mlp", "widths": [5, 8, 1], "activation": "tanh"},
            "data": {"kind": "gaussian", "n": 16, "in_features": 5, "out_features": 1},
            "loss": {"kind": "mse", "reduction": "mean"}, "optimizers": optimizers}


@pytest.fixture
def late_adam(tmp_path, monkeypatch):
    (tmp_path / "late_adam.py").write_text(LATE_ADAM)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "late_adam:LateAdam"
    import sys
    sys.modules.pop("late_adam", None)


def outcomes_of(case_dict: dict, key: str):
    from stability_bench.expectations import check_run
    from stability_bench.orchestrate import run_case
    from stability_bench.schema import load_case

    case = load_case(case_dict)
    results = run_case(case)
    runs = {r.run_id: r for r in results}
    return [o for r in results if r.optimizer == key for o in check_run(case, r, runs)]


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-5), ("float64", 1e-12)])
def test_torch_adam_tracks_reference_adam(dtype, rtol):
    """torch.optim.Adam and reference.Adam agree to ~1e-6 in float32 (measured 1.1e-6 at
    worst over 50 steps) and to ~1e-15 in float64: rtol 1e-5 and 1e-12."""
    case = tiny_case(dtype, steps=50, mine={"class": "torch.optim.Adam", "lr": 1.0e-2},
                     ref={"class": "reference.Adam", "lr": 1.0e-2})
    case["expect"] = {"mine": {"parity": {"with": "ref", "rtol": rtol}}}
    [outcome] = outcomes_of(case, "mine")
    assert outcome.passed and outcome.value is None, outcome.describe()
    assert "agrees at all 50 steps" in outcome.describe() and "ref-seed0-cpu" in outcome.describe()
    assert outcome.resolved_bound == {"with": "ref", "rtol": rtol, "atol": 0.0}


def test_altered_optimizer_fails_at_its_first_departing_step(late_adam):
    case = tiny_case(late={"class": late_adam, "lr": 1.0e-2}, ref={"class": "reference.Adam", "lr": 1.0e-2})
    case["expect"] = {"late": {"parity": {"with": "ref", "rtol": 1.0e-9}}}
    [outcome] = outcomes_of(case, "late")
    assert not outcome.passed and outcome.value == DEPARTS_AT
    text = outcome.describe()
    assert f"departs first at step {DEPARTS_AT}: update_norm" in text and "loss" not in text.split("update_norm")[0]
    assert text.endswith("FAILED")
    assert outcome.to_dict()["detail"].startswith(f"departs first at step {DEPARTS_AT}")


def test_compare_histories_semantics():
    from stability_bench.expectations import compare_histories

    ref = {"loss": [1.0, 0.5, 0.25], "grad_norm": [2.0, 1.0, 0.5], "update_norm": [0.1, 0.1, 0.1]}
    same = {k: list(v) for k, v in ref.items()}
    assert compare_histories(same, ref, 0.0, 0.0)[0] is None
    off = {**same, "grad_norm": [2.0, 1.0 + 1e-5, 0.6], "update_norm": [0.1, 0.2, 0.1]}
    step, text = compare_histories(off, ref, 1e-6, 0.0)
    assert step == 1 and "grad_norm" in text and "update_norm" in text  # every column departing there
    assert compare_histories(off, ref, 1e-6, 1e-6)[0] == 1          # atol: |diff| <= atol + rtol|ref|
    assert compare_histories({**same, "grad_norm": [2.0, 1.0 + 1e-7, 0.5]}, ref, 0.0, 2e-7)[0] is None
    # the bound itself: |a - b| <= atol + rtol*|b|, just inside passes, just outside departs
    nudged = lambda x: {**same, "loss": [1.0, 0.5 + x, 0.25]}  # noqa: E731
    assert compare_histories(nudged(0.9e-6), ref, 2e-6, 0.0)[0] is None
    assert compare_histories(nudged(1.1e-6), ref, 2e-6, 0.0)[0] == 1
    assert compare_histories(nudged(0.9e-6), ref, 0.0, 1e-6)[0] is None
    assert compare_histories(nudged(1.1e-6), ref, 0.0, 1e-6)[0] == 1
    nan = {k: [float("nan")] + v[1:] for k, v in ref.items()}
    assert compare_histories(nan, nan, 0.0, 0.0)[0] is None          # NaN matches NaN
    shorter = {k: v[:2] for k, v in ref.items()}                     # one run diverged earlier
    step, text = compare_histories(shorter, ref, 1e-6, 0.0)
    assert step == 2 and "diverged earlier" in text


def test_sweeps_are_matched_point_for_point():
    """Both swept: each point against the partner's point with the same values. Partner not
    swept: every point against its one run."""
    both = tiny_case(steps=10, mine={"class": "torch.optim.Adam", "lr": {"sweep": [1.0e-2, 3.0e-2]}},
                     ref={"class": "reference.Adam", "lr": {"sweep": [3.0e-2, 1.0e-2, 0.1]}})
    both["expect"] = {"mine": {"parity": {"with": "ref", "rtol": 1.0e-12}}}
    outcomes = outcomes_of(both, "mine")
    assert [o.passed for o in outcomes] == [True, True]
    assert "ref[lr=0.01]" in outcomes[0].describe() and "ref[lr=0.03]" in outcomes[1].describe()
    single = tiny_case(steps=10, mine={"class": "torch.optim.Adam", "lr": {"sweep": [1.0e-2, 3.0e-2]}},
                       ref={"class": "reference.Adam", "lr": 1.0e-2})
    single["expect"] = {"mine": {"parity": {"with": "ref", "rtol": 1.0e-12}}}
    outcomes = outcomes_of(single, "mine")
    assert [o.passed for o in outcomes] == [True, False] and outcomes[1].value == 0  # lr 0.03 vs 0.01


BAD_PARITY = [  # (expect.mine, key path of the problem, words in the message)
    ({"parity": {"with": "reff"}}, "expect.mine.parity.with", "unknown parity partner 'reff'; did you mean 'ref'?"),
    ({"parity": {"with": "mine"}}, "expect.mine.parity.with", "cannot be its own parity partner"),
    ({"parity": {"with": "ref", "rtol": -1.0e-6}}, "expect.mine.parity.rtol", "finite number >= 0"),
    ({"parity": {"with": "ref", "atol": "tiny"}}, "expect.mine.parity.atol", "expected a number, got 'tiny'"),
    ({"parity": {"with": "ref", "atol": "1.0e-6"}}, "expect.mine.parity.atol", "the number 1.0e-6, without quotes"),
    ({"parity": {"with": "ref", "rtoll": 1.0e-6}}, "expect.mine.parity.rtoll", "did you mean 'rtol'?"),
    ({"parity": {"rtol": 1.0e-6}}, "expect.mine.parity", "parity takes {with: <optimizer>"),
    ({"parity": "ref"}, "expect.mine.parity", "parity takes"),
]


@pytest.mark.parametrize("expect, key, words", BAD_PARITY, ids=[b[1] + ":" + b[2][:20] for b in BAD_PARITY])
def test_malformed_parity_is_located(tmp_path, expect, key, words):
    import yaml

    from stability_bench.schema import CaseError, load_case

    case = tiny_case(mine={"class": "torch.optim.Adam", "lr": 1.0e-2}, ref={"class": "reference.Adam", "lr": 1.0e-2})
    case["expect"] = {"mine": expect}
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    with pytest.raises(CaseError) as info:
        load_case(path)
    [problem] = str(info.value).splitlines()
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.strip().startswith(key.rsplit(".", 1)[-1] + ":")
                or (key.endswith("parity") and "parity" in text))
    assert problem.startswith(f"{path}:{line}: {key}: "), (problem, line)
    assert words in problem


@pytest.mark.parametrize("mine_lr, ref_lr, words", [
    ({"sweep": [1.0e-2, 2.0e-2]}, {"sweep": [1.0e-2, 3.0e-2]}, "sweeps don't line up: 'mine' runs lr=0.02"),
    (1.0e-2, {"sweep": [2.0e-2, 3.0e-2]}, "sweeps don't line up: 'mine' runs lr=0.01"),
    (None, {"sweep": [1.0e-2, 3.0e-2]}, "'ref' sweeps lr over [0.01, 0.03] but 'mine' sets no lr"),
])
def test_sweeps_that_do_not_line_up_are_rejected(mine_lr, ref_lr, words):
    from stability_bench.schema import CaseError, load_case

    mine = {"class": "torch.optim.Adam", **({"lr": mine_lr} if mine_lr is not None else {})}
    case = tiny_case(mine=mine, ref={"class": "reference.Adam", "lr": ref_lr})
    case["expect"] = {"mine": {"parity": {"with": "ref"}}}
    with pytest.raises(CaseError, match=r"expect\.mine\.parity\.with: ") as info:
        load_case(case)
    assert words in str(info.value)


def test_pytest_item_reports_the_first_departing_step(pytester):
    """Through the plugin: torch Adam passes, the altered optimizer fails at step 10, each
    message naming the expectation's file:line."""
    import stability_bench.pytest_plugin  # noqa: F401  (loaded before pytester's in-process run)

    (pytester.path / "late_adam.py").write_text(LATE_ADAM)
    pytester.syspathinsert()
    pytester.mkdir("cases")
    (pytester.path / "cases" / "adam_parity.yaml").write_text(PARITY_CASE.read_text())
    monkey = pytest.MonkeyPatch()
    monkey.setenv("STABILITY_BENCH_TRIAGE", str(pytester.path / "triage"))
    try:
        result = pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
    finally:
        monkey.undo()
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert f"adam_parity.yaml:{LATE_PARITY_LINE}: expect late to track ref (rtol 1e-09, atol 0): " \
           f"departs first at step {DEPARTS_AT}: update_norm" in out, out


def test_cli_reports_the_departure_and_runs_the_partner_once(tmp_path, monkeypatch, capsys, late_adam):
    import stability_bench.execute as executing
    from stability_bench.cli import main

    calls = []
    real = executing.execute   # the runner's training loop, as the executor calls it
    monkeypatch.setattr(executing, "execute", lambda spec, *a, **k: calls.append(spec.run_id) or real(spec, *a, **k))
    monkeypatch.setenv("STABILITY_BENCH_TRIAGE", str(tmp_path / "triage"))
    path = tmp_path / "cases" / "adam_parity.yaml"
    path.parent.mkdir()
    path.write_text(PARITY_CASE.read_text())
    assert main(["run", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}:{LATE_PARITY_LINE}: expect late to track ref" in out
    assert f"departs first at step {DEPARTS_AT}: update_norm" in out
    assert "2 passed, 1 failed" in out
    runs = [c for c in calls if "::ref-" in c]
    assert len(runs) == 1, calls  # the partner ran once, for both expectations and its own run
