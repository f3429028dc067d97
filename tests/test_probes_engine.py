"""The curvature-probe engine: HVPs against explicit Hessians, chunking, Lanczos against
numpy's eigensolvers, optimizers' diagonal preconditioners against their update rules, the
derived quantities, and the guarantee that probing never changes training."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from stability_bench.components import BuildContext
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.optimizers import reference
from stability_bench.probes import (
    PRECONDITIONERS,
    LossHessian,
    ProbeSideEffect,
    additive_for,
    diagonal_preconditioner,
    directional_curvature,
    flatten,
    grad_alignment,
    grad_alignment_parts,
    is_preconditioned,
    precond_sharpness,
    precond_status,
    preconditioning,
    second_moment,
    second_moment_ratio,
    sharpness,
    top_eigenpairs,
    unflatten,
    untouched,
)

F64 = torch.float64
MODES = ["double_backward", "forward_over_reverse"]

# torch's forward-mode AD scripts a few decompositions the first time it runs
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These problems are tiny: on a shared CPU, OpenMP workers waiting for each other
    would cost more than the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ctx(seed: int = 0) -> BuildContext:
    return BuildContext(seed=seed, dtype=F64, generator=torch.Generator().manual_seed(seed))


def small_mlp(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 14), nn.Tanh(), nn.Linear(14, 8), nn.Tanh(), nn.Linear(8, out)).to(F64)


def explicit_hessian(model, params, loss_fn, x, y) -> torch.Tensor:
    """torch.func.hessian of the loss on all the data as a function of the flat parameters."""
    names = {id(p): n for n, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]
    flat0 = flatten([p.detach() for p in params])

    def loss(flat):
        return loss_fn(torch.func.functional_call(model, dict(zip(keys, unflatten(flat, params))), (x,)), y)

    return torch.func.hessian(loss)(flat0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---- HVPs -------------------------------------------------------------------------------


LOSS_CASES = [("mse", "mean"), ("mse", "half_example_mean"), ("mse", "sum"),
              ("cross_entropy", "mean"), ("cross_entropy", "sum")]


@pytest.fixture(scope="module")
def regression_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 6, generator=g, dtype=F64)
    return x, torch.randn(23, 3, generator=g, dtype=F64), torch.randint(0, 3, (23,), generator=g)


@pytest.mark.parametrize("kind,reduction", LOSS_CASES)
def test_hvp_matches_explicit_hessian_of_mlp(kind, reduction, regression_data):
    x, y_reg, y_cls = regression_data
    y = y_cls if kind == "cross_entropy" else y_reg
    model = small_mlp()
    params = list(model.parameters())
    loss_fn = LOSSES.get(kind)(ctx(), reduction=reduction)
    hess = explicit_hessian(model, params, loss_fn, x, y)
    assert hess.shape == (245, 245)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    for mode in MODES:
        H = LossHessian(model, params, loss_fn, x, y, chunk_size=5, mode=mode,
                        additive=additive_for(kind, reduction))
        assert H.dim == 245
        assert rel(H.hvp(v), hess @ v) < 1e-12
        with torch.no_grad():
            assert abs(H.loss() - float(loss_fn(model(x), y))) < 1e-12 * max(1.0, abs(H.loss()))
        g = torch.autograd.grad(loss_fn(model(x), y), params)
        assert rel(H.gradient(), flatten(g)) < 1e-12
        assert H.n_hvp == 1 and H.n_grad == 0  # the HVP pass computed the gradient too


def test_hvp_matches_closed_form_of_linear_regression():
    """Linear model without bias, weight W (C×d), flattened row-major: the Hessian of
    Σ‖Wx − y‖² is I_C ⊗ 2XᵀX; of torch's mean it is that /(N·C); of half_example_mean,
    I_C ⊗ XᵀX/N."""
    g = torch.Generator().manual_seed(5)
    n, d, c = 19, 4, 2
    x, y = torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, c, generator=g, dtype=F64)
    model = MODELS.get("linear")(ctx(), in_features=d, out_features=c, bias=False).to(F64)
    xtx = x.T @ x
    expected = {"sum": torch.kron(torch.eye(c, dtype=F64), 2 * xtx),
                "mean": torch.kron(torch.eye(c, dtype=F64), 2 * xtx / (n * c)),
                "half_example_mean": torch.kron(torch.eye(c, dtype=F64), xtx / n)}
    basis = torch.eye(d * c, dtype=F64)
    for reduction, hess in expected.items():
        loss_fn = LOSSES.get("mse")(ctx(), reduction=reduction)
        for mode in MODES:
            H = LossHessian(model, list(model.parameters()), loss_fn, x, y, chunk_size=4, mode=mode,
                            additive=additive_for("mse", reduction))
            columns = torch.stack([H.hvp(e) for e in basis], dim=1)
            torch.testing.assert_close(columns, hess, rtol=1e-12, atol=1e-12)


def test_hvp_of_quadratic_is_A():
    model = MODELS.get("quadratic")(ctx(2), eigenvalues=[5.0, 3.0, -1.0, 0.5, 2.0], x0=[1, -2, 0.5, 3, 1],
                                    basis="random").to(F64)
    loss_fn = LOSSES.get("quadratic")(ctx())
    x, y = torch.zeros(1, 0, dtype=F64), torch.zeros(1, 0, dtype=F64)
    for mode in MODES:
        H = LossHessian(model, [model.x], loss_fn, x, y, mode=mode, additive=additive_for("quadratic"))
        columns = torch.stack([H.hvp(e) for e in torch.eye(5, dtype=F64)], dim=1)
        torch.testing.assert_close(columns, model.A, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(H.gradient(), model.A @ model.x.detach(), rtol=1e-13, atol=1e-13)
    assert sharpness(H, k=2).values.tolist() == pytest.approx([5.0, 3.0], rel=1e-10)


@pytest.mark.parametrize("kind,reduction,divide", [("mse", "half_example_mean", False), ("mse", "sum", False),
                                                   ("cross_entropy", "mean", False),
                                                   ("mse", "mean", True), ("mse", "sum", True)])
def test_chunk_size_does_not_change_anything(kind, reduction, divide, regression_data):
    x, y_reg, y_cls = (t[:15] for t in regression_data)
    y = y_cls if kind == "cross_entropy" else y_reg
    model = small_mlp(1)
    params = list(model.parameters())
    loss_fn = LOSSES.get(kind)(ctx(), reduction=reduction, divide_by_batch_size=divide)
    additive = additive_for(kind, reduction, divide)
    gen = torch.Generator().manual_seed(2)
    u, v = torch.randn(245, generator=gen, dtype=F64), torch.randn(245, generator=gen, dtype=F64)
    whole = LossHessian(model, params, loss_fn, x, y, additive=additive)
    ref_hv, ref_g, ref_loss = whole.hvp(v), whole.gradient(), whole.loss()
    assert ref_loss == pytest.approx(float(loss_fn(model(x), y).detach()), rel=1e-13)
    for mode in MODES:
        for chunk in (1, 3, 7, None):
            H = LossHessian(model, params, loss_fn, x, y, chunk_size=chunk, mode=mode, additive=additive)
            assert rel(H.hvp(v), ref_hv) < 1e-12
            assert rel(H.gradient(), ref_g) < 1e-12
            assert H.loss() == pytest.approx(ref_loss, rel=1e-12)
            if chunk == 3:
                uHv, vHu = float(u @ H.hvp(v)), float(v @ H.hvp(u))
                assert abs(uHv - vHu) < 1e-12 * abs(uHv)


def _mlp_problem(seed: int):
    """small_mlp(seed), its parameters, the mse loss and a fixed direction v."""
    model = small_mlp(seed)
    v = torch.randn(245, generator=torch.Generator().manual_seed(4), dtype=F64)
    return model, list(model.parameters()), LOSSES.get("mse")(ctx()), v


def test_graph_cache_gives_the_same_products_and_respects_its_budget(regression_data):
    x, y, _ = regression_data
    model, params, loss_fn, v = _mlp_problem(2)
    kept = LossHessian(model, params, loss_fn, x, y, chunk_size=5)
    none = LossHessian(model, params, loss_fn, x, y, chunk_size=5, cache_bytes=0)
    first = kept.hvp(v)
    assert len(kept._graphs) == len(kept.chunks) == 5 and kept.cached_bytes > 0
    assert torch.equal(kept.hvp(v), first) and torch.equal(none.hvp(v), first)
    assert none.cached_bytes == 0 and not none._graphs
    some = LossHessian(model, params, loss_fn, x, y, chunk_size=5, cache_bytes=kept.cached_bytes // 2)
    assert torch.equal(some.hvp(v), first) and torch.equal(some.hvp(v), first)
    assert 0 < len(some._graphs) < 5 and some.cached_bytes <= kept.cached_bytes // 2


def test_snapshot_is_unaffected_by_later_training(regression_data):
    x, y, _ = regression_data
    model, params, loss_fn, v = _mlp_problem(3)
    H = LossHessian(model, params, loss_fn, x, y)
    before = H.hvp(v)
    opt = torch.optim.SGD(params, lr=0.1)
    loss_fn(model(x), y).backward()
    opt.step()
    assert torch.equal(H.hvp(v), before)
    assert rel(LossHessian(model, params, loss_fn, x, y).hvp(v), before) > 1e-6


def test_additive_for_loss_specs():
    assert additive_for("mse", "half_example_mean") == "mean"
    assert additive_for("mse", "mean") == "mean" and additive_for("cross_entropy", "mean") == "mean"
    assert additive_for("mse", "sum") == "sum" and additive_for("quadratic") == "sum"
    assert additive_for("mse", "mean", divide_by_batch_size=True) == "mean_over_batch"
    assert additive_for("mse", "sum", divide_by_batch_size=True) == "mean"


def test_bad_arguments():
    model = small_mlp()
    x, y = torch.zeros(4, 6, dtype=F64), torch.zeros(4, 3, dtype=F64)
    loss_fn = LOSSES.get("mse")(ctx())
    with pytest.raises(ValueError, match="not parameters"):
        LossHessian(model, [nn.Parameter(torch.zeros(2))], loss_fn, x, y)
    with pytest.raises(ValueError, match="cannot be chunked"):
        LossHessian(model, list(model.parameters()), loss_fn, x, y, chunk_size=2, additive="whole")
    H = LossHessian(model, list(model.parameters()), loss_fn, x, y)
    with pytest.raises(ValueError, match="flat vector"):
        H.hvp(torch.zeros(5, dtype=F64))


# ---- Lanczos ----------------------------------------------------------------------------


def symmetric(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    n = eigenvalues.numel()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (q * eigenvalues) @ q.T


def realistic_spectrum(n: int = 400, seed: int = 0) -> torch.Tensor:
    """A few outliers, a power-law bulk and some negative eigenvalues (a trained net's)."""
    g = torch.Generator().manual_seed(seed)
    bulk = 25.0 * torch.arange(1, n - 12 + 1, dtype=F64) ** -1.2
    negative = -3.0 * torch.rand(8, generator=g, dtype=F64)
    return torch.cat([torch.tensor([120.0, 70.0, 52.0, 40.0], dtype=F64), bulk, negative])


def test_lanczos_top_k_matches_eigvalsh_on_a_realistic_spectrum():
    A = symmetric(realistic_spectrum())
    ref = np.sort(np.linalg.eigvalsh(A.numpy()))[::-1]
    for k in (1, 2, 4):
        res = top_eigenpairs(lambda v: A @ v, 400, k, tol=1e-3)
        assert res.converged and res.n_matvec <= 30
        np.testing.assert_allclose(res.values.numpy(), ref[:k], rtol=1e-3)
        assert (res.residuals < 1e-3).all()
        true = torch.linalg.vector_norm(A @ res.vectors - res.vectors * res.values, dim=0) / res.values.abs()
        torch.testing.assert_close(res.residuals, true, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(res.residual_estimates, true, rtol=1e-6, atol=1e-10)
        torch.testing.assert_close(res.vectors.T @ res.vectors, torch.eye(k, dtype=F64), rtol=0, atol=1e-10)


def test_lanczos_clustered_top_and_negative_eigenvalues():
    lam = torch.cat([torch.tensor([10.0, 9.99, 9.98], dtype=F64), torch.linspace(-12.0, 6.0, 197, dtype=F64)])
    A = symmetric(lam, seed=1)
    res = top_eigenpairs(lambda v: A @ v, 200, 3, tol=1e-8, max_iter=200)
    assert res.converged
    np.testing.assert_allclose(res.values.numpy(), [10.0, 9.99, 9.98], rtol=1e-10)
    assert (res.residuals < 1e-8).all()
    # largest *algebraic*: -12 has the largest magnitude but is not wanted
    neg = symmetric(torch.tensor([-50.0, -20.0, 1.0, 2.0, 3.0], dtype=F64), seed=2)
    res = top_eigenpairs(lambda v: neg @ v, 5, 2)
    np.testing.assert_allclose(res.values.numpy(), [3.0, 2.0], rtol=1e-12)


def test_lanczos_exhausts_small_spaces_and_repeated_eigenvalues():
    A = symmetric(torch.tensor([4.0, 4.0, 4.0, 1.0, -2.0, 0.5], dtype=F64), seed=3)
    res = top_eigenpairs(lambda v: A @ v, 6, 4, max_iter=50, tol=1e-10)
    np.testing.assert_allclose(res.values.numpy(), [4.0, 4.0, 4.0, 1.0], rtol=1e-10)
    assert res.iterations <= 6
    one = top_eigenpairs(lambda v: 7.0 * v, 1, 1)
    assert one.top == pytest.approx(7.0) and one.converged


def test_lanczos_on_a_low_rank_hessian_and_a_diverged_operator():
    """H = 2XᵀX of a linear model with fewer examples than features has rank N: the
    Krylov space runs out, one look beyond it confirms nothing larger is left."""
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(6), dtype=F64)
    A = 2 * x.T @ x
    res = top_eigenpairs(lambda v: A @ v, 40, 3, tol=1e-8)
    assert res.converged and res.iterations <= 7
    np.testing.assert_allclose(res.values.numpy(), np.linalg.eigvalsh(A.numpy())[::-1][:3], rtol=1e-10)
    second = torch.linalg.eigh(A).eigenvectors[:, -2]  # a start orthogonal to the top eigenvector
    res = top_eigenpairs(lambda v: A @ v, 40, 1, v0=second, tol=1e-8)
    assert res.top == pytest.approx(float(torch.linalg.eigvalsh(A)[-1]), rel=1e-10)
    bad = top_eigenpairs(lambda v: v * float("nan"), 10, 2)
    assert not bad.converged and torch.isnan(bad.values).all()


def test_lanczos_warm_start_needs_fewer_matvecs():
    lam = realistic_spectrum(seed=1)
    A = symmetric(lam, seed=4)
    E = torch.randn(400, 400, generator=torch.Generator().manual_seed(9), dtype=F64)
    B = A + 0.02 * (E + E.T)  # the matrix a few steps later
    previous = top_eigenpairs(lambda v: A @ v, 400, 1, tol=1e-3)
    cold = top_eigenpairs(lambda v: B @ v, 400, 1, tol=1e-3)
    warm = top_eigenpairs(lambda v: B @ v, 400, 1, tol=1e-3, v0=previous.vectors[:, 0])
    assert warm.converged and cold.converged
    assert warm.n_matvec < cold.n_matvec
    lam_b = float(np.linalg.eigvalsh(B.numpy())[-1])
    assert warm.top == pytest.approx(lam_b, rel=1e-3) and cold.top == pytest.approx(lam_b, rel=1e-3)
    several = top_eigenpairs(lambda v: B @ v, 400, 2, tol=1e-3, v0=top_eigenpairs(lambda v: A @ v, 400, 2).vectors)
    assert several.converged


def test_lanczos_is_deterministic_and_leaves_the_global_rng_alone():
    A = symmetric(realistic_spectrum(seed=2), seed=5)
    state = torch.get_rng_state()
    a = top_eigenpairs(lambda v: A @ v, 400, 2)
    torch.manual_seed(12345)  # a different global state changes nothing
    b = top_eigenpairs(lambda v: A @ v, 400, 2)
    torch.set_rng_state(state)
    c = top_eigenpairs(lambda v: A @ v, 400, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.values, b.values) and torch.equal(a.vectors, b.vectors) and torch.equal(a.vectors, c.vectors)


@pytest.mark.parametrize("spectrum", ["realistic", "graded", "clustered", "rank 3"])
def test_lanczos_basis_stays_orthogonal_to_rounding_through_convergence(spectrum):
    """One Gram–Schmidt pass after the three-term recurrence, a second only where the first
    cancelled much (DGKS): the basis must stay orthonormal to rounding long past
    convergence (residual 0 or 120 steps), where plain Lanczos loses orthogonality (Paige) — graded
    eigenvalues down to 1e-12, a cluster at the top, and a rank-3 matrix that breaks down
    and restarts. The basis is read back from the ``workspace`` it was built in."""
    n = 400
    lam = {"realistic": realistic_spectrum(n),
           "graded": torch.logspace(0, -12, n, dtype=F64),
           "clustered": torch.cat([torch.tensor([1.0, 0.999, 0.998], dtype=F64), torch.linspace(-0.5, 0.9, n - 3, dtype=F64)]),
           "rank 3": torch.cat([torch.tensor([3.0, 2.0, 1.0], dtype=F64), torch.zeros(n - 3, dtype=F64)])}[spectrum]
    A = symmetric(lam, seed=7)
    workspace = {}
    res = top_eigenpairs(lambda v: A @ v, n, 2, max_iter=120, tol=0, eig_tol=0, workspace=workspace)
    Q = workspace["basis"][: res.iterations]
    assert res.iterations >= 30   # until the residual estimate underflows to 0 (or 120 steps)
    assert float((Q @ Q.T - torch.eye(res.iterations, dtype=F64)).abs().max()) < 1e-13
    np.testing.assert_allclose(res.values.numpy(), np.sort(lam.numpy())[::-1][:2], rtol=1e-12, atol=1e-14)


def test_lanczos_workspace_is_reused_and_changes_no_result():
    """A run's probes keep one basis buffer: the same solve with and without it is bit for
    bit the same, a smaller solve reuses the buffer, a larger one replaces it."""
    A = symmetric(realistic_spectrum(seed=3), seed=8)
    workspace = {}
    plain = top_eigenpairs(lambda v: A @ v, 400, 2)
    kept = top_eigenpairs(lambda v: A @ v, 400, 2, workspace=workspace)
    assert torch.equal(plain.values, kept.values) and torch.equal(plain.vectors, kept.vectors)
    buffer = workspace["basis"]
    top_eigenpairs(lambda v: A @ v, 400, 1, max_iter=10, workspace=workspace)
    assert workspace["basis"] is buffer
    top_eigenpairs(lambda v: A @ v, 400, 1, max_iter=60, tol=0, eig_tol=0, workspace=workspace)
    assert workspace["basis"].shape == (60, 400)


# ---- preconditioned quantities ----------------------------------------------------------


def quadratic_hessian(eigenvalues, seed=0):
    model = MODELS.get("quadratic")(ctx(seed), eigenvalues=eigenvalues, basis="random",
                                    x0=list(np.linspace(-1, 1, len(eigenvalues)))).to(F64)
    H = LossHessian(model, [model.x], LOSSES.get("quadratic")(ctx()), torch.zeros(1, 0, dtype=F64),
                    torch.zeros(1, 0, dtype=F64), additive="sum")
    return model, H


def test_precond_sharpness_matches_eigvals_of_P_inverse_H():
    model, H = quadratic_hessian([30.0, 12.0, 5.0, 1.0, -0.5, 0.1, 3.0, 7.0], seed=1)
    P = torch.linspace(0.2, 5.0, 8, dtype=F64)
    ref = np.sort(np.linalg.eigvals(np.diag(1 / P.numpy()) @ model.A.numpy()).real)[::-1]
    res = precond_sharpness(H, [P], k=3, tol=1e-10, max_iter=8)
    np.testing.assert_allclose(res.values.numpy(), ref[:3], rtol=1e-8)
    # eigenvectors u of P^-1/2 H P^-1/2 map to eigenvectors P^-1/2 u of P^-1 H
    w = res.vectors[:, 0] / P.sqrt()
    torch.testing.assert_close((model.A @ w) / P, res.values[0] * w, rtol=1e-7, atol=1e-7)
    plain = sharpness(H, k=1, tol=1e-10, max_iter=8)
    assert plain.top == pytest.approx(float(np.linalg.eigvalsh(model.A.numpy())[-1]), rel=1e-10)


def test_directional_curvature():
    model, H = quadratic_hessian([9.0, 4.0, 1.0, 0.25], seed=2)
    A, x = model.A, model.x.detach()
    g = A @ x
    P = torch.tensor([1.0, 2.0, 4.0, 0.5], dtype=F64)
    raw, pre = directional_curvature(H, P=[P])
    assert raw == pytest.approx(float(g @ A @ g / (g @ g)), rel=1e-12)
    M = A / P.sqrt()[:, None] / P.sqrt()[None, :]
    u = g / P.sqrt()
    assert pre == pytest.approx(float(u @ M @ u / (u @ u)), rel=1e-12)
    assert directional_curvature(H).preconditioned is None


def test_second_moment_ratio():
    g = [torch.tensor([1.0, 2.0, 0.0]), torch.tensor([[3.0, 1.0], [0.5, 4.0]])]
    v = [torch.tensor([1.0, 1.0, 2.0]), torch.tensor([[0.0, 4.0], [1.0, 2.0]])]
    stats = second_moment_ratio(g, v, bound=1.0)
    r = np.array([1.0, 4.0, 0.0, 0.25, 0.25, 8.0])  # v == 0 skipped
    assert stats["n"] == 6 and stats["skipped"] == 1
    assert stats["median"] == pytest.approx(np.median(r))
    assert stats["p10"] == pytest.approx(np.percentile(r, 10)) and stats["p90"] == pytest.approx(np.percentile(r, 90))
    assert stats["frac_below"] == pytest.approx(3 / 6)


def test_grad_alignment_projects_the_inverse_semi_preconditioned_gradient():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    V = q[:, :2]
    P = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25, 3.0], dtype=F64)
    g = P.sqrt() * (3.0 * V[:, 0] - 1.0 * V[:, 1])  # P^{-1/2} g lies in span(V)
    assert grad_alignment(g, [P], V) == pytest.approx(1.0, rel=1e-12)
    parts = grad_alignment_parts(g, [P], V)
    assert parts["per_vector"] == pytest.approx([0.9, 0.1], rel=1e-12)
    assert parts["total_sq"] == pytest.approx(10.0) and parts["remainder_sq"] == pytest.approx(0.0, abs=1e-12)
    g2 = P.sqrt() * q[:, 3]  # orthogonal to span(V) after P^{-1/2}
    assert grad_alignment(g2, [P], V) == pytest.approx(0.0, abs=1e-12)
    assert grad_alignment(q[:, 0], None, V) == pytest.approx(1.0)


# ---- preconditioners of live optimizers -------------------------------------------------


def train(make_opt, steps=4, seed=0):
    """A few full-batch steps of a small regression in float64; returns (params, opt,
    grads of the last step, params before the last step)."""
    model = small_mlp(seed, out=2)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(12, 6, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64)
    params = list(model.parameters())
    opt = make_opt(params)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        before = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]
        opt.step()
    return params, opt, grads, before


def test_torch_adam_preconditioner_equals_reference_adam():
    lr, betas, eps = 1e-2, (0.9, 0.99), 1e-6
    _, torch_opt, _, _ = train(lambda ps: torch.optim.Adam(ps, lr=lr, betas=betas, eps=eps), steps=5)
    _, ref_opt, _, _ = train(lambda ps: reference.Adam(ps, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps), steps=5)
    ours, theirs = diagonal_preconditioner(torch_opt), diagonal_preconditioner(ref_opt)
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    for a, b in zip(theirs, ref_opt.preconditioner()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=1e-6),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, eps=1e-6, weight_decay=0.0),
    lambda ps: torch.optim.Adam(ps, lr=1e-2, eps=1e-6, amsgrad=True),
    lambda ps: torch.optim.Adamax(ps, lr=1e-2),
], ids=["adam", "adamw", "amsgrad", "adamax"])
def test_adam_family_update_is_lr_m_over_P(make_opt):
    params, opt, _, before = train(make_opt, steps=6)
    P = diagonal_preconditioner(opt)
    for p, b, P_, in zip(params, before, P):
        m = opt.state[p]["exp_avg"]
        torch.testing.assert_close(b - p.detach(), 1e-2 * m / P_, rtol=1e-10, atol=1e-15)


def test_nadam_P_is_the_common_denominator():
    lr = 1e-2
    params, opt, grads, before = train(lambda ps: torch.optim.NAdam(ps, lr=lr, eps=1e-6), steps=6)
    P = diagonal_preconditioner(opt)
    beta1, _ = opt.param_groups[0]["betas"]
    decay = opt.param_groups[0]["momentum_decay"]
    for p, b, g, P_ in zip(params, before, grads, P):
        state = opt.state[p]
        t = float(state["step"])
        mu = beta1 * (1 - 0.5 * 0.96 ** (t * decay))
        mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * decay))
        prod = float(state["mu_product"])
        step = lr * ((1 - mu) / (1 - prod) * g + mu_next / (1 - prod * mu_next) * state["exp_avg"]) / P_
        torch.testing.assert_close(b - p.detach(), step, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-6),
    lambda ps: torch.optim.RMSprop(ps, lr=1e-3, alpha=0.9, eps=1e-6, centered=True),
    lambda ps: torch.optim.Adagrad(ps, lr=1e-2, eps=1e-8),
    lambda ps: reference.RMSprop(ps, lr=1e-3, beta2=0.9, eps=1e-6),
], ids=["rmsprop", "rmsprop-centered", "adagrad", "reference-rmsprop"])
def test_rmsprop_adagrad_update_is_lr_g_over_P(make_opt):
    """torch's update is p -= lr·g/P: the actual parameter change gives P back."""
    params, opt, grads, before = train(make_opt, steps=5)
    lr = opt.param_groups[0]["lr"]
    P = diagonal_preconditioner(opt)
    for p, b, g, P_ in zip(params, before, grads, P):
        torch.testing.assert_close(b - p.detach(), lr * g / P_, rtol=1e-10, atol=1e-15)


def test_preconditioner_edge_cases():
    model = small_mlp()
    params = list(model.parameters())
    assert diagonal_preconditioner(torch.optim.Adam(params)) is None  # no step yet
    assert diagonal_preconditioner(torch.optim.Adagrad(params)) is None
    assert diagonal_preconditioner(torch.optim.SGD(params, lr=0.1)) is None
    assert is_preconditioned(torch.optim.Adam(params)) and is_preconditioned(reference.Adam(params, lr=1.0))
    assert not is_preconditioned(torch.optim.SGD(params, lr=0.1))
    assert not is_preconditioned(reference.GD(params, lr=0.1))
    assert {"Adam", "AdamW", "NAdam", "RMSprop", "Adagrad"} <= set(PRECONDITIONERS.names())
    # reordering to another parameter order
    ps, opt, _, _ = train(lambda ps: torch.optim.Adam(ps, lr=1e-2), steps=2)
    P = diagonal_preconditioner(opt)
    P_rev = diagonal_preconditioner(opt, list(reversed(ps)))
    assert all(torch.equal(a, b) for a, b in zip(P_rev, reversed(P)))
    v = second_moment(opt)
    state = opt.state[ps[0]]
    torch.testing.assert_close(v[0], state["exp_avg_sq"] / (1 - 0.999 ** 2))


# ---- probes never change training -------------------------------------------------------


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 2)).to(F64)


def test_probes_leave_training_untouched():
    model = bn_model()
    model.train()
    model[4].eval()  # a mixed mode must survive too
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=gen, dtype=F64), torch.randn(16, 2, generator=gen, dtype=F64)
    loss_fn = LOSSES.get("mse")(ctx())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    loss_fn(model(x), y).backward()  # the probe runs between backward and step
    grads = [p.grad.clone() for p in params]
    grad_objects = [p.grad for p in params]
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    modes = [m.training for m in model.modules()]
    rng, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()

    # LossHessian alone touches nothing: buffers are copied, RNG forked, no .grad written
    H = LossHessian(model, params, loss_fn, x, y, additive="whole")
    P = diagonal_preconditioner(opt, params)
    top = precond_sharpness(H, P, k=2, max_iter=20)
    sharpness(H, max_iter=10)
    directional_curvature(H, P=P)
    grad_alignment(H.gradient(), P, top.vectors)
    second_moment_ratio([p.grad for p in params], second_moment(opt, params))
    assert torch.equal(torch.get_rng_state(), rng)
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k])
    for p, g, obj in zip(params, grads, grad_objects):
        assert p.grad is obj and torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == modes

    # untouched restores what a careless probe changes
    with untouched(model, opt):
        model(x)                  # updates BatchNorm's running stats, draws dropout masks
        model.eval()
        torch.randn(3)
        np.random.rand()
        random.random()
        model[1].running_mean = torch.zeros(8, dtype=F64)  # even replacing a buffer object
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist() and random.getstate() == py_state
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k])
    assert [m.training for m in model.modules()] == modes
    for p, g, obj in zip(params, grads, grad_objects):
        assert p.grad is obj and torch.equal(p.grad, g)


@pytest.mark.parametrize("offence", ["grad", "param", "optimizer", "lr"])
def test_untouched_reports_what_it_cannot_restore(offence):
    model = bn_model()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    model(torch.randn(4, 5, dtype=F64)).sum().backward()
    opt.step()
    with pytest.raises(ProbeSideEffect):
        with untouched(model, opt):
            if offence == "grad":
                params[0].grad.zero_()
            elif offence == "param":
                with torch.no_grad():
                    params[1].add_(1.0)
            elif offence == "optimizer":
                opt.state[params[0]]["exp_avg"].mul_(2.0)
            else:
                opt.param_groups[0]["lr"] = 1.0


def test_forward_over_reverse_rejects_buffer_updates():
    model = bn_model()
    x, y = torch.randn(8, 5, dtype=F64), torch.randn(8, 2, dtype=F64)
    H = LossHessian(model, list(model.parameters()), LOSSES.get("mse")(ctx()), x, y, additive="whole",
                    mode="forward_over_reverse")
    with pytest.raises(ValueError, match="double_backward"):
        H.hvp(torch.zeros(H.dim, dtype=F64))


# ---- preconditioners added for issue 13: each against the step torch actually takes --------


def take_step(opt, params, grads):
    """One optimizer step with the given gradients; returns x_before − x_after per param."""
    before = [p.detach().clone() for p in params]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    return [b - p.detach() for b, p in zip(before, params)]


@pytest.mark.parametrize("steps", [4, 9], ids=["unrectified", "rectified"])
def test_radam_update_is_lr_m_over_P(steps):
    """RAdam takes plain momentum steps while its SMA length ρ_t ≤ 5 (t ≤ 5 at β₂ = 0.999),
    rectified adaptive ones after: P covers both."""
    lr = 1e-2
    params, opt, _, before = train(lambda ps: torch.optim.RAdam(ps, lr=lr, eps=1e-6), steps=steps)
    P = diagonal_preconditioner(opt)
    for p, b, P_ in zip(params, before, P):
        torch.testing.assert_close(b - p.detach(), lr * opt.state[p]["exp_avg"] / P_, rtol=1e-10, atol=1e-15)
    if steps == 4:  # unrectified: P = 1 − β₁ᵗ, the same for every entry
        assert all(torch.allclose(P_, torch.full_like(P_, 1 - 0.9 ** 4), rtol=1e-14) for P_ in P)


def test_sparse_adam_update_is_lr_m_over_P():
    lr = 1e-2
    model = small_mlp(0, out=2)
    params = list(model.parameters())
    opt = torch.optim.SparseAdam(params, lr=lr, eps=1e-6)
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(12, 6, generator=g, dtype=F64), torch.randn(12, 2, generator=g, dtype=F64)
    for _ in range(5):
        grads = torch.autograd.grad(((model(x) - y) ** 2).mean(), params)
        moved = take_step(opt, params, [gr.to_sparse() for gr in grads])
    P = diagonal_preconditioner(opt)
    for p, d, P_ in zip(params, moved, P):
        torch.testing.assert_close(d, lr * opt.state[p]["exp_avg"] / P_, rtol=1e-10, atol=1e-15)


def test_adadelta_P_is_the_next_step_with_frozen_statistics():
    """Adadelta's state no longer holds the u its last step used, so P is the next step's
    with the accumulators frozen: fed g = √v (which leaves v where it is), the step torch
    takes is exactly lr·g/P."""
    lr = 0.5
    params, opt, _, _ = train(lambda ps: torch.optim.Adadelta(ps, lr=lr, rho=0.9, eps=1e-6), steps=5)
    P = diagonal_preconditioner(opt)
    grads = [opt.state[p]["square_avg"].sqrt() * torch.sign(torch.randn_like(p)) for p in params]
    for d, g, P_ in zip(take_step(opt, params, grads), grads, P):
        torch.testing.assert_close(d, lr * g / P_, rtol=1e-10, atol=1e-15)


def frozen_adafactor_gradient(p, state):
    """A gradient that leaves Adafactor's statistics where they are: g² = V̂ entrywise
    (for a matrix g_ij² = R_i·C_j/mean(R); its row means are R_i·mean(C)/mean(R) = R_i
    because torch's lerps keep mean(R) = mean(C) = the mean of g², and its column means C_j)."""
    if p.dim() > 1:
        R, C = state["row_var"], state["col_var"]
        return (R @ C / R.mean()).sqrt()
    return state["variance"].sqrt()


def test_adafactor_P_is_the_next_step_with_frozen_statistics():
    """x ← x − ρ_t·g/P with ρ_t = min(lr, 1/√t) (the threshold's lr) and P per element from
    the factored statistics and the parameter scale; fed statistics-preserving gradients the
    step is exactly that (RMS(g/√V̂) = 1, so update clipping at d ≥ 1 — torch's floor —
    stays off)."""
    from stability_bench.optimizers.thresholds import adafactor_relative_step

    lr = 1e-2
    params, opt, _, _ = train(lambda ps: torch.optim.Adafactor(ps, lr=lr), steps=5)
    assert any(p.dim() > 1 for p in params) and any(p.dim() == 1 for p in params)
    P = diagonal_preconditioner(opt)
    rho = adafactor_relative_step(opt.param_groups[0], 5)
    assert rho == pytest.approx(lr)
    grads = [frozen_adafactor_gradient(p, opt.state[p]) * torch.sign(torch.randn_like(p)) for p in params]
    for moved, g, P_ in zip(take_step(opt, params, grads), grads, P):
        torch.testing.assert_close(moved, rho * g / P_, rtol=1e-10, atol=1e-15)


# ---- unknown P is reported, never taken to be I ----------------------------------------


class MyAdamW(torch.optim.AdamW):
    """A user's subclass that only changes defaults: runs AdamW's step."""

    def __init__(self, params, lr=1e-2, weight_decay=0.0):
        super().__init__(params, lr=lr, eps=1e-6, weight_decay=weight_decay)


class StepOverridingAdamW(torch.optim.AdamW):
    """Overrides step (here: halves every update): AdamW's P no longer describes it."""

    @torch.no_grad()
    def step(self, closure=None):
        before = [p.clone() for g in self.param_groups for p in g["params"]]
        super().step(closure)
        for p, b in zip([p for g in self.param_groups for p in g["params"]], before):
            p.copy_((p + b) / 2)


class InitGroupOverridingAdam(torch.optim.Adam):
    def _init_group(self, *args, **kwargs):
        return super()._init_group(*args, **kwargs)


class HalvedAdamWithHook(StepOverridingAdamW):
    """Overrides step and says what its P is: the hook answers."""

    def preconditioner(self):
        Ps = PRECONDITIONERS.lookup(torch.optim.AdamW)[0](self)
        return None if Ps is None else [2 * P for P in Ps]


class RefAdamVariant(reference.Adam):
    """Overrides the reference Adam's per-parameter update (a clipped gradient)."""

    def _update(self, p, g, state, group):
        super()._update(p, g.clamp(-1.0, 1.0), state, group)


class PlainUserOptimizer(torch.optim.Optimizer):
    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.sub_(group["lr"] * p.grad)


def test_a_subclass_that_only_changes_defaults_gets_the_readers_P():
    params, mine, _, _ = train(lambda ps: MyAdamW(ps), steps=3)
    _, theirs, _, _ = train(lambda ps: torch.optim.AdamW(ps, lr=1e-2, eps=1e-6, weight_decay=0.0), steps=3)
    for a, b in zip(diagonal_preconditioner(mine), diagonal_preconditioner(theirs)):
        assert torch.equal(a, b)
    assert precond_status(MyAdamW) is None


@pytest.mark.parametrize("cls, overridden", [(StepOverridingAdamW, "step"), (InitGroupOverridingAdam, "_init_group"),
                                             (RefAdamVariant, "_update")])
def test_a_subclass_that_overrides_the_update_does_not_inherit_P(cls, overridden):
    kwargs = {"lr": 1e-2}
    _, opt, _, _ = train(lambda ps: cls(ps, **kwargs), steps=2)
    info = preconditioning(opt)
    assert info.kind == "unknown" and info.P is None
    assert f"overrides {overridden}" in info.reason and cls.__name__ in info.reason
    assert precond_status(cls) == info.reason


def test_a_subclass_that_overrides_step_and_supplies_P_is_believed():
    """HalvedAdamWithHook halves AdamW's update, so its P is twice AdamW's: checked against
    its step."""
    params, opt, _, before = train(lambda ps: HalvedAdamWithHook(ps, lr=1e-2, eps=1e-6, weight_decay=0.0), steps=4)
    for p, b, P_ in zip(params, before, diagonal_preconditioner(opt)):
        torch.testing.assert_close(b - p.detach(), 1e-2 * opt.state[p]["exp_avg"] / P_, rtol=1e-10, atol=1e-15)


def test_unknown_and_identity_preconditioners_say_so():
    model = small_mlp()
    params = list(model.parameters())
    for opt in (torch.optim.LBFGS(params), torch.optim.Rprop(params), PlainUserOptimizer(params)):
        info = preconditioning(opt)
        assert info.kind == "unknown" and info.reason, type(opt)
    assert "sign" in preconditioning(torch.optim.Rprop(params)).reason
    assert "PlainUserOptimizer" in precond_status(PlainUserOptimizer)
    for opt in (torch.optim.SGD(params, lr=0.1), torch.optim.ASGD(params), reference.GD(params, lr=0.1),
                reference.EMAHB(params, lr=0.1)):
        assert preconditioning(opt).kind == "identity"
    fresh = preconditioning(torch.optim.Adam(params))
    assert fresh.kind == "unknown" and "no optimizer step yet" in fresh.reason


def test_every_torch_optimizer_is_known_or_listed_unknown_with_a_reason():
    """A new torch.optim class fails this test until it gets a reader (or a reason)."""
    from stability_bench.optimizers.thresholds import TORCH_THRESHOLDS

    classes = [c for c in vars(torch.optim).values()
               if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]
    assert len(classes) >= 14
    for table in (PRECONDITIONERS, TORCH_THRESHOLDS):
        missing = [c.__name__ for c in classes if c not in table]
        assert not missing, f"{table.what}: neither known nor listed unknown: {missing}"
        for cls, reason in table.unknown().items():
            assert len(reason) > 40, (cls, reason)
    for name in ("Adafactor", "RAdam", "Adadelta", "Adamax"):  # issue 13: P and threshold
        cls = getattr(torch.optim, name)
        assert cls in PRECONDITIONERS.known() and cls in TORCH_THRESHOLDS.known()


# ---- a non-diagonal preconditioner supplied as an operator --------------------------------


class FullMatrixPreconditioned(torch.optim.Optimizer):
    """Preconditioned GD with a fixed dense SPD matrix P over all parameters (a stand-in for
    Shampoo-like methods): x ← x − lr·P⁻¹g. It supplies P^{-1/2} as an operator."""

    def __init__(self, params, P: torch.Tensor, lr: float = 0.1):
        super().__init__(params, dict(lr=lr))
        w, V = torch.linalg.eigh(P)
        self.P_inv = V @ torch.diag(1 / w) @ V.T
        self.P_inv_sqrt = V @ torch.diag(w.rsqrt()) @ V.T

    def _flat(self, tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def _split(self, flat):
        own = [p for g in self.param_groups for p in g["params"]]
        return [part.view_as(p) for part, p in zip(torch.split(flat, [p.numel() for p in own]), own)]

    @torch.no_grad()
    def step(self, closure=None):
        own = [p for g in self.param_groups for p in g["params"]]
        for p, d in zip(own, self._split(self.P_inv @ self._flat([p.grad for p in own]))):
            p.sub_(self.param_groups[0]["lr"] * d)

    def precond_inv_sqrt_apply(self, vectors):
        return self._split(self.P_inv_sqrt @ self._flat(vectors))


def test_operator_preconditioner_matches_explicit_matrices(regression_data):
    x, y, _ = regression_data
    model = small_mlp(1)
    params = list(model.parameters())
    loss_fn = LOSSES.get("mse")(ctx())
    hess = explicit_hessian(model, params, loss_fn, x, y)
    n = hess.shape[0]
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(n, n, generator=gen, dtype=F64)
    P = A @ A.T / n + 0.5 * torch.eye(n, dtype=F64)  # dense SPD, far from diagonal
    # the optimizer's parameter order differs from H's: the operator must be reordered
    opt = FullMatrixPreconditioned(list(reversed(params)), P)
    info = preconditioning(opt, params)
    assert info.kind == "operator"
    own = list(reversed(params))
    offsets = np.cumsum([0] + [p.numel() for p in params])
    where = {id(p): i for i, p in enumerate(params)}
    perm = torch.cat([torch.arange(int(offsets[where[id(p)]]), int(offsets[where[id(p)] + 1])) for p in own])
    P_h = torch.empty_like(P)
    P_h[perm[:, None], perm[None, :]] = P  # P in H's coordinates
    w, V = torch.linalg.eigh(P_h)
    S = V @ torch.diag(w.rsqrt()) @ V.T
    M = S @ hess @ S
    expected = torch.linalg.eigvalsh(M).flip(0)
    H = LossHessian(model, params, loss_fn, x, y, additive="mean")
    res = precond_sharpness(H, info.P, k=3, tol=1e-12, max_iter=n)
    np.testing.assert_allclose(res.values.numpy(), expected[:3].numpy(), rtol=1e-9)
    g = H.gradient()
    _, pre = directional_curvature(H, g, info.P)
    w_ = torch.linalg.solve(P_h, g)
    assert pre == pytest.approx(float(w_ @ hess @ w_ / (g @ w_)), rel=1e-12)
    u = S @ g
    Vk = res.vectors[:, :2]
    assert grad_alignment(g, info.P, Vk) == pytest.approx(float((Vk.T @ u).square().sum() / (u @ u)), rel=1e-10)
    with pytest.raises(ValueError, match="power"):
        grad_alignment_parts(g, info.P, Vk, power=0.5)
    # and P really is what the step divides by: x_before − x_after = lr·P⁻¹g
    grads = [torch.randn_like(p) for p in own]
    moved = take_step(opt, own, grads)
    flat = torch.cat([t.reshape(-1) for t in grads])
    torch.testing.assert_close(torch.cat([m.reshape(-1) for m in moved]), 0.1 * torch.linalg.solve(P, flat))


# ---- HVPs through standard PyTorch attention -------------------------------------------------


def test_hvp_through_transformer_encoder_matches_finite_differences_of_gradients():
    """The fused CPU attention kernel has no double backward and no forward-mode AD; HVPs run
    under the math kernel. Reference: central differences of gradients taken the ordinary
    way (default kernel, first order only), in float64 with h = 1e-5: error O(h²·∇³L) from
    truncation plus O(ε‖g‖/h) ≈ 1e-11 from rounding; measured 5e-9 relative for both modes.
    1e-7 leaves 20× margin without hiding a wrong product (a wrong chunk weight or kernel is
    off by O(1))."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(F64)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 4, 8, generator=gen, dtype=F64), torch.randn(5, 4, 8, generator=gen, dtype=F64)
    loss_fn = LOSSES.get("mse")(ctx())
    params = list(model.parameters())
    with pytest.raises(RuntimeError, match="scaled_dot_product"):  # what fails without the math kernel
        g = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
        torch.autograd.grad(g, params, grad_outputs=[torch.ones_like(p) for p in params])

    def gradient_at(flat):
        with torch.no_grad():
            for p, v in zip(params, unflatten(flat, params)):
                p.copy_(v)
        return flatten(torch.autograd.grad(loss_fn(model(x), y), params))

    theta = flatten([p.detach().clone() for p in params])
    h = 1e-5
    for seed in (0, 1):
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed), dtype=F64)
        expected = (gradient_at(theta + h * v) - gradient_at(theta - h * v)) / (2 * h)
        gradient_at(theta)  # back to the point
        for mode in MODES:
            H = LossHessian(model, params, loss_fn, x, y, chunk_size=2, mode=mode, additive="mean")
            assert rel(H.hvp(v), expected) < 1e-7, mode
