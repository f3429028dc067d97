"""The stability theory of Cohen et al. 2022 (App. A-C) against simulation, with hypothesis.

Each test is a statement from the paper. Two kinds of evidence, said at each test:
- *simulation*: the package's reference optimizers (torch Optimizers, float64) run on a
  quadratic; this is about the optimizers and the thresholds;
- *algebra*: the recurrences of ``theory`` alone; this is about the formulas.
The algorithms come from one table, ``theory.ALGORITHMS``.

Margin and step budget (computed, not guessed; ``test_margin_and_budget_are_enough``
recomputes them). Along an eigenvalue a = r * threshold the growth factor is
rho(r) = |1 - 2r| for GD, so at r = 1 + m it is exactly 1 + 2m. Momentum only steepens
it (Fig. 14: heavy ball at beta1 -> 1 has rho - 1 ~ 2m(1+beta1)/(1-beta1)), so over
every algorithm and beta1 in [0, 0.99], rho(1 + m) >= 1 + 2m. A run diverges when
|x| > BOUND = 1e6 |x0|: at rate 1 + 2m that takes ln(1e6)/ln(1 + 2m) steps times a
transient factor; from x0 with zero momentum the dominant mode's coefficient is >= ~1
(the grid gives <= 698 steps at m = 0.01, ln(1e6)/ln(1.02) = 697.7), so
``step_budget`` allows 1.25x that plus 50 steps: with MARGIN = 0.01, STEPS = 923 steps
(~20 ms of a reference optimizer) decide every drawn point. Below the threshold the
largest |x_t|/|x0| on the grid is 9.6 (heavy ball, beta1 near 0.99, near-repeated
roots): far below BOUND, so a stable run never reaches it. The paper's points (EMAHB at
lr 37.9/38.1, r = 0.9974/1.0026) lie inside the margin: they are explicit examples, run
with the same budget (their growth factors, 0.949 and 1.065, decide well within it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from stability_bench.optimizers import reference as ref
from stability_bench.optimizers import theory
from stability_bench.optimizers.theory import ALGORITHMS

MARGIN = 0.01   # |a/threshold - 1| >= MARGIN for drawn points (see the module docstring)
BOUND = 1e6     # divergence: |x_t| > BOUND * |x_0|
TRANSIENT = 10.0  # largest |x_t|/|x_0| of a stable run (9.6 on the grid)
BASE = [name for name, alg in ALGORITHMS.items() if not alg.preconditioned]


def step_budget(rho: float) -> int:
    """Steps within which growth at rate >= rho crosses BOUND (see the module docstring)."""
    return math.ceil(1.25 * math.log(BOUND) / math.log(rho)) + 50


STEPS = step_budget(1 + 2 * MARGIN)  # 923: the budget of the slowest point a draw can give


# ---- points: (lr, beta1) and a curvature a, given or as a multiple of the threshold -----------


@dataclass(frozen=True)
class Point:
    lr: float
    beta1: float
    ratio: float | None = None  # a = ratio * threshold (drawn points)
    a: float | None = None      # or a given curvature (the paper's points)

    def curvature(self, alg: str) -> float:
        return self.a if self.a is not None else self.ratio * theory.threshold(alg, self.lr, self.beta1)


def ratios(margin: float = MARGIN, far: float = 99.0):
    """r with |r - 1| log-uniform in [margin, far * margin], either side: most draws lie
    close to the threshold, where a wrong threshold would show."""
    return st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(0.0, math.log(far))).map(
        lambda s: 1.0 + s[0] * margin * math.exp(s[1]))


lrs = st.floats(-3.0, 3.0).map(lambda e: 10.0**e)
betas = st.floats(0.0, 0.99)
points = st.builds(Point, lr=lrs, beta1=betas, ratio=ratios())

# The paper's points on f = x²/2 (a = 1): EMAHB(lr, 0.9) is stable at lr = 37.9 and not at
# 38.1 (Fig. 2; threshold 38/lr); EMA Nesterov's threshold is 13.57/lr (13.4 / 13.8).
# For the other algorithms the same (lr, beta1, a) are points far from their thresholds.
PAPER = [Point(37.9, 0.9, a=1.0), Point(38.1, 0.9, a=1.0), Point(13.4, 0.9, a=1.0), Point(13.8, 0.9, a=1.0)]


def paper_examples(**others):
    """@example for each of the paper's points (``others``: the test's other arguments)."""
    def decorate(f):
        for p in reversed(PAPER):
            f = example(point=p, **others)(f)
        return f
    return decorate


# ---- simulation ---------------------------------------------------------------------------------


def make_optimizer(alg: str, params, lr: float, beta1: float, P=None) -> torch.optim.Optimizer:
    cls = ref.REFERENCE_OPTIMIZERS.get(alg)
    if alg == "GD":
        return cls(params, lr=lr)
    if alg == "FrozenAdam":
        return cls(params, lr=lr, beta1=beta1, preconditioner=[torch.as_tensor(P, dtype=torch.float64)])
    return cls(params, lr=lr, beta1=beta1)


def simulate(opt_factory, A: np.ndarray, x0: np.ndarray, steps: int, bound: float | None = BOUND) -> np.ndarray:
    """Iterates x_0, x_1, ... of a reference optimizer on ½xᵀAx in float64 (rows), stopping
    at the first with ‖x‖ > bound·‖x_0‖ (or not finite), if ``bound`` is given."""
    A = torch.as_tensor(np.atleast_2d(A), dtype=torch.float64)
    x = torch.tensor(np.atleast_1d(x0), dtype=torch.float64, requires_grad=True)
    opt = opt_factory([x])
    x.grad = g = torch.empty_like(x)
    traj = torch.empty(steps + 1, x.numel(), dtype=torch.float64)
    traj[0] = x.detach()
    limit = None if bound is None else bound * float(traj[0].norm())
    for t in range(1, steps + 1):
        torch.mv(A, x.detach(), out=g)
        opt.step()
        traj[t] = x.detach()
        if limit is not None and (t % 8 == 0 or t == steps):
            norms = traj[t - 7 if t >= 8 else 1: t + 1].norm(dim=1)
            over = torch.nonzero(~(norms <= limit))
            if len(over):
                return traj[: (t - len(norms) + 1) + int(over[0]) + 1].numpy()
    return traj.numpy()


def diverged(traj: np.ndarray) -> bool:
    return not np.linalg.norm(traj[-1]) <= BOUND * np.linalg.norm(traj[0])


def random_orthogonal(d: int, seed: int) -> np.ndarray:
    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def generic_coefficients(d: int, seed: int) -> np.ndarray:
    """Components along the eigenvectors, |c_i| in [0.5, 1.5], random signs: every mode is
    present (the top one in particular) and none dominates the start."""
    rng = np.random.default_rng(seed + 1)
    return rng.choice([-1.0, 1.0], d) * rng.uniform(0.5, 1.5, d)


# ---- algebra: the closed forms are where the recurrences' growth factor crosses 1 -----------


@pytest.mark.parametrize("alg", list(ALGORITHMS))
@given(lr=lrs, beta1=betas, r=ratios(margin=1e-6, far=0.99e6))
def test_threshold_is_where_the_growth_factor_crosses_one(alg, lr, beta1, r):
    """Algebra. App. C: "The stability threshold is the value of lambda for which the
    magnitude of the largest-magnitude root is exactly 1" — and below it all roots lie
    inside the unit circle, above it one lies outside. (tests/test_thresholds.py checks the
    same crossing on the (x, m) state map of update rules it writes out itself; this checks
    the module's own recurrences, to 1e-9, and the whole range 0 < a < ∞.)"""
    closed = theory.threshold(alg, lr, beta1)
    assert theory.threshold_from_recurrence(alg, lr, beta1) == pytest.approx(closed, rel=1e-9)
    assert theory.growth_factor(alg, closed, lr, beta1) == pytest.approx(1.0, abs=1e-9)
    rho = theory.growth_factor(alg, r * closed, lr, beta1)
    assert (rho > 1.0) if r > 1 else (rho < 1.0)


@pytest.mark.parametrize("alg", BASE)
@given(lr=lrs, beta1=betas, r=st.floats(0.0, 3.0))
def test_growth_factor_is_the_largest_root(alg, lr, beta1, r):
    """Algebra. The closed-form |root| equals numpy.roots of the characteristic polynomial,
    and momentum-free GD is first order (one root, 1 - lr*a)."""
    rec = theory.recurrence(alg, r * theory.threshold(alg, lr, beta1), lr, beta1)
    assert rec.growth_factor == pytest.approx(max(abs(rec.roots())), rel=1e-6, abs=1e-9)
    assert len(rec.roots()) == (1 if alg == "GD" else 2)


@given(lr=lrs, beta1=betas, mu=st.floats(0.0, 0.99))
def test_nadam_recurrence_crosses_one_at_nadam_threshold(lr, beta1, mu):
    """Algebra. NAdam with frozen look-ahead mu: ``nadam_recurrence`` turns unstable at
    ``nadam_threshold``; mu = beta1 is EMA Nesterov's recurrence."""
    closed = theory.nadam_threshold(lr, beta1, mu)
    assert theory.nadam_recurrence(closed, lr, beta1, mu).growth_factor == pytest.approx(1.0, abs=1e-9)
    assert theory.nadam_recurrence(0.999 * closed, lr, beta1, mu).growth_factor < 1.0
    assert theory.nadam_recurrence(1.001 * closed, lr, beta1, mu).growth_factor > 1.0
    nadam = theory.nadam_recurrence(closed, lr, beta1, beta1)
    ema_nesterov = theory.recurrence("EMANesterov", closed, lr, beta1)
    assert (nadam.c1, nadam.c2) == pytest.approx((ema_nesterov.c1, ema_nesterov.c2), rel=1e-12, abs=1e-12)


def _first_steps(alg: str, a: np.ndarray, beta1: np.ndarray) -> np.ndarray:
    """x_1 from x_0 = 1 and zero momentum: one reference-optimizer step per (a, beta1), on a
    diagonal quadratic (each coordinate its own ½a x² problem; one optimizer per beta1)."""
    out = np.empty_like(a)
    for b in np.unique(beta1):
        rows = beta1 == b
        x = torch.ones(int(rows.sum()), dtype=torch.float64, requires_grad=True)
        opt = make_optimizer(alg, [x], 1.0, float(b))
        x.grad = torch.as_tensor(a[rows]) * x.detach()
        opt.step()
        out[rows] = x.detach().numpy()
    return out


@pytest.mark.parametrize("alg", BASE)
def test_margin_and_budget_are_enough(alg):
    """Algebra (plus one optimizer step for the initial state). The numbers the
    simulation tests rest on, over a grid of beta1 in [0, 0.99] and |r - 1| in [m, 99m]:
    rho(1 + m) >= 1 + 2m; growth from x0 = 1 crosses BOUND within STEPS steps; below the
    threshold |x_t| stays <= TRANSIENT over STEPS steps (the length of a stable run)."""
    beta_grid = np.linspace(0.0, 0.99, 100) if ALGORITHMS[alg].momentum else np.array([0.0])
    for side, offsets in ((+1, [1.0, 1.5, 2.0, 4.0, 10.0, 30.0, 99.0]),
                          (-1, [1.0, 1.5, 2.0, 4.0, 10.0, 30.0, 60.0, 99.0])):
        r, beta1 = (g.ravel() for g in np.meshgrid(1 + side * MARGIN * np.array(offsets), beta_grid))
        a = r * np.array([theory.threshold(alg, 1.0, b) for b in beta1])
        recs = [theory.recurrence(alg, ai, 1.0, bi) for ai, bi in zip(a, beta1)]
        if side > 0:
            rho = np.array([rec.growth_factor for rec in recs])
            assert rho.min() >= 1 + 2 * MARGIN - 1e-12
        c1, c2 = np.array([rec.c1 for rec in recs]), np.array([rec.c2 for rec in recs])
        prev, x = np.ones(len(a)), _first_steps(alg, a, beta1)
        peak, first = np.abs(x), np.where(np.abs(x) > BOUND, 1, 0)
        with np.errstate(over="ignore", invalid="ignore"):
            for t in range(2, STEPS + 1):
                x, prev = c1 * x + c2 * prev, x
                peak = np.maximum(peak, np.abs(x))
                first = np.where((first == 0) & ~(np.abs(x) <= BOUND), t, first)
        if side > 0:
            assert (first > 0).all(), f"r, beta1 = {r[first == 0]}, {beta1[first == 0]}: no crossing in {STEPS} steps"
            assert first.max() <= math.log(BOUND) / math.log(1 + 2 * MARGIN) + 1  # 698 steps
        else:
            assert peak.max() <= TRANSIENT, f"transient {peak.max():.3g}"


# ---- simulation: diverges iff a > threshold ----------------------------------------------------


@pytest.mark.parametrize("alg", BASE)
@paper_examples()
@given(point=points)
def test_diverges_iff_curvature_above_threshold(alg, point):
    """Simulation (reference optimizers). Table 1 / Lemmas 1-2: on ½a x² the method
    diverges iff a > threshold. A point at least MARGIN from the threshold decides within
    STEPS steps (module docstring)."""
    a = point.curvature(alg)
    predicted = a > theory.threshold(alg, point.lr, point.beta1)
    traj = simulate(lambda p: make_optimizer(alg, p, point.lr, point.beta1), a, 1.0, STEPS)
    assert diverged(traj) is predicted, (
        f"{alg}(lr={point.lr:g}, beta1={point.beta1:g}) on a={a:g} (a/threshold = "
        f"{a / theory.threshold(alg, point.lr, point.beta1):.6f}): theory says "
        f"{'diverges' if predicted else 'stable'}, simulation {'diverged' if diverged(traj) else 'stayed bounded'}")


@pytest.mark.parametrize("alg", BASE)
@paper_examples(d=4, seed=0, spread=1.0)
@given(point=points, d=st.integers(2, 6), seed=st.integers(0, 2**32 - 1), spread=st.floats(0.01, 1.0))
def test_top_eigenvalue_decides_in_several_dimensions(alg, point, d, seed, spread):
    """Simulation. On ½xᵀAx with a random eigenbasis, A's top eigenvalue alone decides
    (Lemma 1/2: each eigen-direction runs its own recurrence), and the divergent iterate
    aligns with the top eigenvector. The other eigenvalues are below both the top one and
    (1 - MARGIN) * threshold: stable, so their components stay <= TRANSIENT * 1.5 while the
    top one passes BOUND; the iterate's sine to the top eigenvector is then
    <= 15 * sqrt(d - 1)/1e6 < 1e-4."""
    top = point.curvature(alg)
    thr = theory.threshold(alg, point.lr, point.beta1)
    rng = np.random.default_rng(seed)
    others = min(top, (1 - MARGIN) * thr) * rng.uniform(spread * 0.01, spread, d - 1)
    Q = random_orthogonal(d, seed)
    A = (Q * np.concatenate([[top], others])) @ Q.T
    x0 = Q @ generic_coefficients(d, seed)
    traj = simulate(lambda p: make_optimizer(alg, p, point.lr, point.beta1), A, x0, STEPS)
    assert diverged(traj) is (top > thr)
    if top > thr:
        x = traj[-1] / np.linalg.norm(traj[-1])
        sine = np.linalg.norm(x - (x @ Q[:, 0]) * Q[:, 0])
        assert sine < 1e-4


# ---- simulation: frozen Adam and Prop. 1 ---------------------------------------------------


@paper_examples(d=3, seed=0, p_range=2.0)
@example(point=Point(0.5, 0.0, ratio=1.02), d=3, seed=1, p_range=2.0)  # beta1 = 0: frozen RMSprop,
@example(point=Point(0.5, 0.0, ratio=0.98), d=3, seed=1, p_range=2.0)  # i.e. preconditioned GD
@given(point=points, d=st.integers(1, 5), seed=st.integers(0, 2**32 - 1), p_range=st.floats(0.0, 2.0))
def test_frozen_adam_diverges_iff_preconditioned_sharpness_above_threshold(point, d, seed, p_range):
    """Simulation (reference.FrozenAdam with a given diagonal P). App. A.2: with P fixed,
    lambda_1(P^-1 A) decides, against EMAHB's threshold (38/lr at beta1 = 0.9), not
    lambda_1(A); the divergent component of P^1/2 x_t aligns with the top eigenvector v1 of
    P^-1/2 A P^-1/2 (the other eigenvalues stable; sine bound as in the test above, in those
    coordinates, times sqrt(cond P) <= 10 for the start: < 1e-3), and x_t itself with
    P^-1/2 v1. Prop. 1: the iterates are P^-1/2 times
    those of EMAHB on f(P^-1/2 y) from y0 = P^1/2 x0 — over the whole run, stable or not
    (linear dynamics: rounding grows no faster than the iterates, so a relative tolerance
    of 1e-9 of the running maximum holds; measured <= 2e-13)."""
    rng = np.random.default_rng(seed)
    P = 10.0 ** rng.uniform(-p_range / 2, p_range / 2, d)     # positive diagonal, cond <= 100
    thr = theory.frozen_adam_threshold(point.lr, point.beta1)
    target = point.a if point.a is not None else point.ratio * thr
    # M = P^-1/2 A P^-1/2 with top eigenvalue `target` (eigenvector V[:, -1]), the others
    # stable as in the test above; A = P^1/2 M P^1/2.
    V = random_orthogonal(d, seed)
    others = np.sort(min(target, (1 - MARGIN) * thr) * rng.uniform(0.001, 1.0, d - 1))
    M = (V * np.concatenate([others, [target]])) @ V.T
    A = np.sqrt(P)[:, None] * M * np.sqrt(P)[None, :]
    S = np.diag(1 / np.sqrt(P))
    x0 = S @ V @ generic_coefficients(d, seed)                  # every preconditioned mode present
    assert theory.preconditioned_sharpness(A, P) == pytest.approx(target, rel=1e-9)

    traj = simulate(lambda p: make_optimizer("FrozenAdam", p, point.lr, point.beta1, P), A, x0, STEPS)
    assert diverged(traj) is theory.frozen_adam_diverges(A, P, point.lr, point.beta1) is (target > thr)
    if diverged(traj):
        y = np.sqrt(P) * traj[-1]
        y /= np.linalg.norm(y)
        assert np.linalg.norm(y - (y @ V[:, -1]) * V[:, -1]) < 1e-3
        u = theory.top_preconditioned_direction(A, P)
        x = traj[-1] / np.linalg.norm(traj[-1])
        assert abs(x @ u) > 1 - 1e-3

    # Prop. 1: EMAHB on the reparameterized f~(y) = f(P^-1/2 y), Hessian M, from P^1/2 x0.
    tilde = simulate(lambda p: ref.EMAHB(p, lr=point.lr, beta1=point.beta1), M, np.sqrt(P) * x0,
                     len(traj) - 1, bound=None)
    mapped = tilde / np.sqrt(P)
    scale = np.maximum.accumulate(np.linalg.norm(traj, axis=1))
    assert np.all(np.linalg.norm(traj - mapped, axis=1) <= 1e-9 * scale)


# ---- simulation: the optimizer runs exactly the recurrence, at its growth rate -------------------


@pytest.mark.parametrize("alg", BASE)
@paper_examples()
@given(point=points)
def test_optimizer_runs_the_recurrence(alg, point):
    """Simulation vs algebra. On ½a x² the reference optimizer's iterates are the
    recurrence's, x_{t+1} = c1 x_t + c2 x_{t-1}, from its own x_0 and x_1 (zero momentum),
    to 1e-9 of the running maximum |x| over 200 steps (linear: rounding grows no faster
    than the iterates; measured <= 2e-13)."""
    a = point.curvature(alg)
    traj = simulate(lambda p: make_optimizer(alg, p, point.lr, point.beta1), a, 1.0, 200, bound=1e250)[:, 0]
    expected = theory.recurrence(alg, a, point.lr, point.beta1).run(traj[0], traj[1], len(traj) - 2)
    scale = np.maximum.accumulate(np.abs(traj[1:]))
    assert np.all(np.abs(traj[1:] - expected) <= 1e-9 * scale)


def growth_tolerance(rec: theory.Recurrence, state: np.ndarray, window: int) -> float:
    """Bound on |log(measured rate) - log(rho)| over ``window`` steps from ``state``:
    s_t = V D^t c with c = V^-1 s_0, so ‖s_t‖/rho^t lies in [sigma_min(V) c_dom, sigma_max(V) ‖c‖]
    (c_dom the smallest coefficient on a root of modulus rho): the transient (the other
    root, and the beating of a complex pair) costs at most log(cond(V) ‖c‖/c_dom)/window."""
    roots, V = np.linalg.eig(rec.companion())
    c = np.linalg.solve(V, state.astype(complex))
    rho = max(abs(roots))
    dominant = abs(roots) >= rho * (1 - 1e-12)
    c_dom = min(abs(c[dominant]))
    if c_dom == 0:
        return math.inf
    return math.log(np.linalg.cond(V) * np.linalg.norm(c) / c_dom) / window


@pytest.mark.parametrize("alg", BASE)
@paper_examples()
@given(point=st.builds(Point, lr=lrs, beta1=betas, ratio=st.floats(0.05, 2.0)))
def test_measured_growth_rate_is_the_growth_factor(alg, point):
    """Simulation vs algebra (App. C, Fig. 14): the per-step growth rate of the simulated
    iterates, (‖s_T‖/‖s_1‖)^(1/(T-1)) with s_t = (x_t, x_{t-1}), is the largest |root|,
    within the transient bound of ``growth_tolerance`` (+1e-9)."""
    a = point.curvature(alg)
    rec = theory.recurrence(alg, a, point.lr, point.beta1)
    rho = rec.growth_factor
    assume(0.3 <= rho <= 3.0)                  # the window stays within float64's range
    window = 300
    traj = simulate(lambda p: make_optimizer(alg, p, point.lr, point.beta1), a, 1.0, window + 1, bound=None)[:, 0]
    if rec.order == 1:
        s0, s1 = np.array([traj[1]]), np.array([traj[-1]])
    else:
        s0, s1 = traj[[1, 0]], traj[[-1, -2]]
    tol = growth_tolerance(rec, s0, window)
    assume(tol < 0.05)                          # near-repeated roots: no informative bound
    measured = math.log(np.linalg.norm(s1) / np.linalg.norm(s0)) / window
    assert abs(measured - math.log(rho)) <= tol + 1e-9, (measured, math.log(rho), tol)


# ---- simulation: adaptive preconditioning halts divergence (App. B, Fig. 12) -------------------


RMSPROP_PAPER = [(lr, beta2) for lr in (2.1, 2.2, 2.3) for beta2 in (0.975, 0.99, 0.999)]


def _rmsprop_examples(f):
    for lr, beta2 in reversed(RMSPROP_PAPER):
        f = example(lr=lr, beta2=beta2)(f)
    return f


@_rmsprop_examples
@given(lr=st.floats(2.1, 2.3), beta2=st.floats(0.975, 0.999))
def test_rmsprop_grows_then_stays_bounded_because_nu_grows(lr, beta2):
    """Simulation (reference.RMSprop, nu_0 = 1, Cohen App. B). On ½x² at lr > 2 a frozen
    preconditioner P = sqrt(nu_0) diverges (2/lr < 1: shown with FrozenAdam at beta1 = 0).
    RMSprop's iterate grows past its start, then stays bounded, because nu grows:
    nu_{t+1} >= (1 - beta2) x_t², so once |x_t| >= lr/(2 sqrt(1 - beta2)) the step
    contracts, and |x_{t+1}| <= |x_t|(lr/P - 1) < lr/sqrt(1 - beta2) otherwise: every
    |x_t| <= max(|x_0|, lr/sqrt(1 - beta2)). The second half of the run never exceeds the
    first half's peak, and nu ends above nu_0."""
    steps = 1000
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = ref.RMSprop([x], lr=lr, beta2=beta2, v0=1.0)
    xs, nus = [1.0], [1.0]
    for _ in range(steps):
        x.grad = x.detach().clone()
        opt.step()
        xs.append(abs(x.item()))
        nus.append(opt.state[x]["exp_avg_sq"].item())
    xs, nus = np.array(xs), np.array(nus)

    P0 = [torch.ones(1, dtype=torch.float64)]  # sqrt(nu_0) + eps, eps ~ 0
    frozen = simulate(lambda p: ref.FrozenAdam(p, lr=lr, beta1=0.0, preconditioner=P0), 1.0, 1.0, STEPS)
    assert diverged(frozen) and 1.0 > theory.rmsprop_threshold(lr)
    assert xs.max() > 1.0                                   # grows past its start
    assert xs.max() <= max(1.0, lr / math.sqrt(1 - beta2))  # bounded, by nu's growth
    assert xs[steps // 2:].max() <= xs[: steps // 2].max()  # no renewed growth
    assert nus.max() > 1.0 and nus[-1] > 1.0                # nu grew


# ---- the theory module's own pieces ------------------------------------------------------------


@given(d=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_P_inverse_A(d, seed):
    """Algebra. lambda_1(P^-1/2 A P^-1/2) = lambda_1(P^-1 A) (similar matrices), = lambda_1(A)
    at P = I, scales as 1/c for P -> cP; a full SPD P gives the same as its diagonal
    when it is diagonal; top_preconditioned_direction is an eigenvector of P^-1 A."""
    rng = np.random.default_rng(seed)
    Q = random_orthogonal(d, seed)
    A = (Q * rng.uniform(0.01, 5.0, d)) @ Q.T
    P = rng.uniform(0.1, 10.0, d)
    s = theory.preconditioned_sharpness(A, P)
    assert s == pytest.approx(max(np.linalg.eigvals(A / P[:, None]).real), rel=1e-9)
    assert theory.preconditioned_sharpness(A, np.ones(d)) == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-12)
    assert theory.preconditioned_sharpness(A, 3.0 * P) == pytest.approx(s / 3.0, rel=1e-12)
    assert theory.preconditioned_sharpness(A, np.diag(P)) == pytest.approx(s, rel=1e-12)
    u = theory.top_preconditioned_direction(A, P)
    np.testing.assert_allclose((A @ u) / P, s * u, atol=1e-9 * s)


def test_table_covers_the_reference_optimizers():
    """One row per non-adaptive reference optimizer plus frozen Adam; each row's threshold is
    the one the optimizer reports for itself."""
    assert set(ALGORITHMS) <= set(ref.REFERENCE_OPTIMIZERS.names())
    for name in ALGORITHMS:
        opt = make_optimizer(name, [torch.zeros(1, dtype=torch.float64, requires_grad=True)], 0.1, 0.7, P=[1.0])
        assert opt.stability_threshold() == theory.threshold(name, 0.1, 0.7)
    table = theory.markdown_table()
    assert all(f"`{name}`" in table for name in ALGORITHMS)
    with pytest.raises(ValueError, match="unknown algorithm"):
        theory.threshold("Adamm", 0.1)


def test_readme_theory_table_is_the_generated_one():
    """The README's theory table is ``theory.markdown_table()`` (one source of truth); skipped
    until the README carries the table."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    header = theory.markdown_table().splitlines()[0]
    if header not in readme:
        pytest.skip("README.md has no theory table yet")
    assert theory.markdown_table() in readme, "README theory table differs: paste theory.markdown_table()"
