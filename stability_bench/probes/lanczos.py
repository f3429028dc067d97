"""Top eigenpairs of a symmetric linear operator by Lanczos with full reorthogonalisation.

Only matrix-vector products are needed (an HVP for a Hessian). Arithmetic is float64;
the operator may compute in lower precision (a float32 model's HVP), which bounds the
attainable accuracy at about its rounding error, far below the 1e-3 a probe needs.

Algorithm. Starting from q₁ = v0/‖v0‖, step j computes w = A q_j, α_j = q_jᵀw, takes off
the three-term recurrence's α_j q_j + β_{j-1} q_{j-1} (the bulk of w), removes what is left
of w's components along all of q₁..q_j (one pass of classical Gram–Schmidt, and a second
where the first cancelled more than ~30 % of the norm: the DGKS criterion, as ARPACK; so
the basis stays orthogonal to rounding as with two passes always, at about half the memory
traffic, which at 777k parameters costs more than the rest of a step but the HVP), and
sets β_j = ‖w‖, q_{j+1} = w/β_j. The Ritz values θ_i (eigenvalues of the j×j tridiagonal
T_j) approximate the extreme eigenvalues; the Ritz vector y_i = Q_j s_i has residual
‖A y_i − θ_i y_i‖ = β_j·|s_i[j]| (the last component of s_i): this is the recurrence's
estimate, exact up to rounding as long as the basis is kept orthogonal, which full
reorthogonalisation does. Iteration stops when each of the k wanted Ritz pairs (largest *algebraic* θ, which='LA')
meets one of two tolerances, whichever comes first:

* ``tol``, on the residual: relative residual β_j|s_i[j]|/|θ_i| < ``tol`` (the eigenvector
  and the eigenvalue are both good; |λ − θ| ≤ ‖r‖ for some eigenvalue λ);
* ``eig_tol``, on the eigenvalue: the *gap-based Ritz-value error bound*
  e_i = min(‖r_i‖, ‖r_i‖²/gap_i), relative e_i/|θ_i| < ``eig_tol``. For a Ritz value θ
  whose interval [θ − ‖r‖, θ + ‖r‖] holds a single eigenvalue λ, with every other eigenvalue
  at least ``gap`` away, |λ − θ| ≤ ‖r‖²/gap (Kato–Temple; Parlett, *The Symmetric
  Eigenvalue Problem*, §11.7). The gap is *estimated* from the other Ritz values and their
  residuals: gap_i = min_{l≠i} (|θ_i − θ_l| − ‖r_l‖), all Ritz values of T_j included; where
  it is ≤ 0 (a cluster not yet resolved) e_i = ‖r_i‖, the residual bound, which holds
  always. The estimate is what ARPACK-style codes use: the lower Ritz values still lie below
  their eigenvalues early on, so the estimated gap can exceed the true one and e_i is an
  estimate, not a guarantee. It is therefore *confirmed by the change between iterations*:
  the eigenvalue rule also requires |θ_i^(j) − θ_i^(j−1)| < ``eig_tol``·|θ_i| (never met at
  j = 1). Each check alone can be fooled while Lanczos stagnates before the top eigenvalue
  emerges (measured on the Transformer of cases/transformer_spikes.yaml at init: at step 7
  the bound read 7.5e-3 with a true error of 5.3e-2; at step 10 the change read 8e-4 with
  4.8e-2); no measured case fooled both at once. The change must be below ``eig_tol``
  itself: a weaker confirmation that merely lets the last bound stand (rise since the last
  step ≤ that bound), which stops a step sooner, let warm-started probes stop on fooled
  bounds (cifar_fc's precond_sharpness_ratio fell 0.94 → 0.87; docs/benchmarking.md).
  What neither can see is *misconvergence*: a start with little weight on the top
  eigenvector converges to λ₂ first and both checks pass there
  (tests/test_lanczos_eig_tol.py: small MLPs with λ₂/λ₁ ≈ 0.9–0.95, random starts:
  eig_tol 1e-3 missed λ₁ in 1 of 160 solves, as often as the residual rule at 1e-2; the
  residual rule at 1e-3, which iterates longer, in none). The probes' warm start
  (the previous top eigenvector) makes such a start unlikely except where λ₁ and λ₂ trade
  places between probes. There it happens: on cases/transformer_spikes.yaml's β₂ = 0.95
  control (seed 0, 51 probes, against 60-step solves from the same starts), λ₁ of
  P^{-1/2}HP^{-1/2} came out 1.0e-2 and 1.5e-2 low at two probes (λ₂/λ₁ ≈ 0.985–0.993).
  Both lie under the 0.02 floor of precond_sharpness_ratio's baseline band, and the ratio
  is a median. Starting from the previous top three Ritz vectors put every probe within
  6.4e-4, but cost 1.75× the HVPs on the Transformer's Adam runs and 4.5× on
  xiong_adam_spike (with weight 0.1 on the two below the top: 1.2× and 3.1×), so it is
  not done.

The residual of a converged eigenvalue is roughly its square root (for relative gap g,
‖r‖/|θ| ≈ √(eig_tol·g)), so an eigenvalue-only request stops several steps earlier than the
residual rule: a 1e-3 relative residual typically means a 1e-6 eigenvalue. Pass
``eig_tol=None`` for the residual rule alone, ``tol=0`` for the eigenvalue rule alone.
``EigResult.value_errors`` holds the e_i/|θ_i| at the stop.

Verification. With ``verify=True`` (default) the residuals reported are *true* residuals,
‖A y_i − θ_i y_i‖/|θ_i|, computed with one extra matvec per wanted pair (k in all; counted
in ``n_matvec``); ``residual_estimates`` keeps the recurrence's numbers. With
``verify=False`` ``residuals`` are the estimates and no extra matvec is taken.

Invariant subspaces. If β_j falls to rounding level the Krylov space is exhausted and the
Ritz pairs found are exact, but the invariant subspace need not hold every wanted
eigenvector (a repeated eigenvalue contributes one copy; a start vector orthogonal to the
top eigenvector never sees it). The iteration then continues from a fresh random vector
orthogonal to the basis (β_j = 0 in T: a new, decoupled block), and after such a restart
it stops only once the current block's top Ritz pair has converged *below* the k-th wanted
value, or the whole space is spanned. So repeated eigenvalues, exactly low-rank
Hessians (one extra matvec) and matrices smaller than ``max_iter`` are handled.
``max_iter`` is capped at the dimension.

Warm start. ``v0`` is a starting vector — typically the previous probe's top eigenvector,
which makes the next solve much shorter when the matrix changed a little. A (dim, m)
``v0`` (several previous eigenvectors) starts from the sum of its normalised columns.
With ``v0=None`` the start is N(0, I) from a private ``torch.Generator`` seeded with
``seed``: deterministic, and the global RNG is never touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

__all__ = ["EigResult", "top_eigenpairs", "EIG_TOL", "ritz_error_bounds"]

# Default ``eig_tol``: relative error of λ₁ the probes need (see the docstring of
# ``top_eigenpairs`` and docs/benchmarking.md: the narrowest band on a sharpness figure is
# ±0.02 on λ₁(P⁻¹H)/threshold ≈ 0.73–1.1, i.e. ≥ 1.8 % of λ₁).
EIG_TOL = 1e-3

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EigResult:
    """values: (k,) float64 on the CPU, largest first; vectors: (dim, k) float64 on the
    operator's device, orthonormal; residuals: (k,) relative residuals ‖Av − θv‖/|θ|
    (true ones when verified, else the estimates); residual_estimates: (k,) the Lanczos
    estimates β_j|s_i[j]|/|θ_i|; n_matvec: products taken, verification included;
    iterations: Lanczos steps; converged: every wanted pair met ``tol`` or ``eig_tol`` (by
    the estimates); value_errors: (k,) the gap-based relative error bounds e_i/|θ_i| of the
    Ritz values at the stop (from the estimates; see the module docstring);
    ritz_history: the wanted Ritz values after each step (for convergence studies)."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    residual_estimates: torch.Tensor
    n_matvec: int
    iterations: int
    converged: bool
    ritz_history: list[list[float]] = field(default_factory=list)
    value_errors: torch.Tensor | None = None

    @property
    def top(self) -> float:
        """The largest eigenvalue found."""
        return float(self.values[0])

    @property
    def n_hvp(self) -> int:
        return self.n_matvec


def _start_vector(dim: int, v0, generator: torch.Generator, device) -> torch.Tensor:
    if v0 is not None:
        v = torch.as_tensor(v0).detach().to(device=device, dtype=torch.float64)
        if v.dim() == 2:
            norms = torch.linalg.vector_norm(v, dim=0).clamp_min(torch.finfo(torch.float64).tiny)
            v = (v / norms).sum(dim=1)
        if v.shape != (dim,):
            raise ValueError(f"v0 has shape {tuple(v.shape)}, expected ({dim},) or ({dim}, m)")
        norm = torch.linalg.vector_norm(v)
        if torch.isfinite(norm) and norm > 0:
            return v / norm
    v = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
    return v / torch.linalg.vector_norm(v)


def ritz_error_bounds(theta: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Gap-based error bounds of Ritz values ``theta`` with absolute residual norms
    ``residual`` (both (m,)): e_i = min(r_i, r_i²/gap_i), gap_i = min_{l≠i}(|θ_i − θ_l| − r_l)
    (e_i = r_i where that gap is ≤ 0, or where there is no other Ritz value)."""
    m = theta.numel()
    if m < 2:
        return residual.clone()
    dist = (theta[:, None] - theta[None, :]).abs() - residual[None, :]
    dist.fill_diagonal_(float("inf"))
    gap = dist.min(dim=1).values
    quad = torch.where(gap > 0, residual.square() / gap.clamp_min(torch.finfo(theta.dtype).tiny), residual)
    return torch.minimum(residual, quad)


def _basis_buffer(rows: int, dim: int, device: torch.device, workspace: dict | None) -> torch.Tensor:
    """A (rows, dim) float64 buffer for the basis: the one kept in ``workspace`` where it is
    large enough and on ``device``, else a new one (kept there for the next solve)."""
    held = None if workspace is None else workspace.get("basis")
    if held is None or held.device != device or held.shape[1] != dim or held.shape[0] < rows:
        held = torch.empty(rows, dim, dtype=torch.float64, device=device)
        if workspace is not None:
            workspace["basis"] = held
    return held[:rows]


# DGKS (Daniel, Gragg, Kaufman & Stewart 1976; ARPACK's dsaitr uses 0.717): a pass of
# Gram–Schmidt that removed more than ~30 % of a vector's norm may have left rounding
# errors of the removed part's size along the basis, so it is repeated.
DGKS = 0.717


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w less its components along the orthonormal rows of ``basis``, its norm): one pass of
    classical Gram–Schmidt, w − Bᵀ(Bw) fused, and a second where the first cancelled much of
    w (:data:`DGKS`; "twice is enough"). The Lanczos step has already taken off the three-term
    recurrence's α q_j + β q_{j−1}, the bulk of A q_j, so one pass usually suffices."""
    before = torch.linalg.vector_norm(w)
    for _ in range(2):
        w = torch.addmv(w, basis.T, basis @ w, alpha=-1)
        after = torch.linalg.vector_norm(w)
        if after >= DGKS * before:
            break
        before = after
    return w, after


def top_eigenpairs(matvec: Matvec, dim: int, k: int = 1, *, max_iter: int = 30, tol: float | None = 1e-3,
                   eig_tol: float | None = None, v0: torch.Tensor | None = None, dtype: torch.dtype = torch.float64,
                   device: torch.device | str = "cpu", verify: bool = True, seed: int = 0,
                   workspace: dict | None = None) -> EigResult:
    """The k largest (algebraic) eigenvalues of the symmetric operator ``matvec`` on
    R^``dim`` and their eigenvectors; see the module docstring. ``matvec`` receives a flat
    float64 vector on ``device`` and may return any float dtype. ``dtype`` must be
    float64 (the argument exists to make that explicit).

    Stops when each wanted pair has relative residual < ``tol`` *or* gap-based relative
    Ritz-value error bound < ``eig_tol`` (module docstring); ``None`` (or 0) switches a rule
    off; here ``eig_tol`` defaults to None (the residual rule alone, as before). The probes
    (:func:`~.quantities.sharpness`, :func:`~.quantities.precond_sharpness`) pass
    ``EIG_TOL`` (or ``tol`` where smaller): the eigenvalue accuracy their users need, with a
    wide margin — see ``EIG_TOL``.

    ``workspace``: a dict the caller keeps between solves (a run's probes do), in which the
    basis buffer is kept and reused. A fresh (max_iter, dim) float64 buffer is mapped anew
    by the allocator on every call and its pages faulted in row by row: at 777k entries
    (cifar_fc's network) on the CPU, 15 steps took 186 ms with a fresh buffer and 158 ms
    with a kept one (an HVP-free operator; medians of 8, interleaved)."""
    tol = float(tol or 0.0)
    eig_tol = float(eig_tol or 0.0)
    if dtype != torch.float64:
        raise ValueError("Lanczos runs in float64")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    max_iter = min(max(int(max_iter), k), dim)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    f64 = torch.float64

    Q = _basis_buffer(max_iter, dim, device, workspace)  # rows: the orthonormal basis
    alpha = torch.zeros(max_iter, dtype=f64)
    beta = torch.zeros(max_iter, dtype=f64)  # beta[j]: coupling of q_j and q_{j+1}
    q = _start_vector(dim, v0, generator, device)
    n_matvec = 0
    scale = 0.0  # largest |θ| seen, for the breakdown test and tiny eigenvalues
    theta = S = est = bound = None
    converged = False
    history: list[list[float]] = []
    m = 0
    block_start = 0  # first basis vector of the current Krylov block (> 0 after a breakdown)
    for j in range(max_iter):
        Q[j] = q
        w = matvec(q).detach().to(device=device, dtype=f64).reshape(-1)
        n_matvec += 1
        if w.numel() != dim:
            raise ValueError(f"matvec returned {w.numel()} entries, expected {dim}")
        a = float(torch.dot(q, w))
        if not math.isfinite(a):  # e.g. a diverged model: report, do not raise. q·w is NaN or
            # infinite iff an entry of w is (0·inf is NaN), so no separate pass over w is needed
            nan = torch.full((k,), float("nan"), dtype=f64)
            return EigResult(values=nan, vectors=torch.full((dim, k), float("nan"), dtype=f64, device=device),
                             residuals=nan.clone(), residual_estimates=nan.clone(), value_errors=nan.clone(), n_matvec=n_matvec,
                             iterations=j, converged=False, ritz_history=history)
        basis = Q[: j + 1]
        w = w - a * q if j == 0 else w - a * q - beta[j - 1].item() * Q[j - 1]  # the three-term recurrence
        w, b = _orthogonalise(w, basis)
        alpha[j] = a
        m = j + 1
        T = torch.diag(alpha[:m]) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
        theta, S = torch.linalg.eigh(T)  # ascending
        theta, S = theta.flip(0), S.flip(1)
        scale = max(scale, float(theta.abs().max()))
        breakdown = float(b) <= 1e-12 * max(scale, torch.finfo(f64).tiny)
        wanted = min(k, m)
        history.append(theta[:wanted].tolist())
        denom = theta[:wanted].abs().clamp_min(1e-12 * scale if scale > 0 else torch.finfo(f64).tiny)
        r_all = (0.0 if breakdown else float(b)) * S[m - 1, :].abs()  # absolute residual estimates
        est = r_all[:wanted] / denom
        bound = ritz_error_bounds(theta, r_all)[:wanted] / denom
        if eig_tol > 0 and len(history) > 1 and len(history[-2]) >= wanted:
            change = (theta[:wanted] - torch.tensor(history[-2][:wanted], dtype=f64)).abs() / denom
            value_ok = (bound < eig_tol) & (change < eig_tol)
        else:
            value_ok = torch.zeros(wanted, dtype=torch.bool)
        done = wanted == k and bool(((est < tol) | (est == 0) | value_ok).all())
        if breakdown and block_start == 0 and m < dim:
            done = False  # the first block is invariant: look once beyond it (below)
        elif done and block_start > 0:
            # After a breakdown the wanted pairs may sit in blocks already closed while a
            # larger (or repeated) eigenvalue is only reachable from the current one: stop
            # only when the current block's top Ritz pair has converged below the k-th.
            tb, sb = torch.linalg.eigh(T[block_start:, block_start:])
            est_b = (0.0 if breakdown else float(b)) * float(sb[-1, -1].abs()) / max(abs(float(tb[-1])), 1e-300)
            done = (est_b < max(tol, eig_tol) or float(tb[-1]) == 0.0) and float(tb[-1]) < float(theta[k - 1])
        if done or (breakdown and m == dim):
            converged = True
            break
        if j + 1 == max_iter:
            break
        if breakdown:  # invariant subspace: continue from a fresh direction, decoupled
            beta[j] = 0.0
            for _ in range(3):
                w, norm = _orthogonalise(torch.randn(dim, generator=generator, dtype=f64).to(device), basis)
                if norm > 1e-8:
                    break
            q = w / norm
            block_start = j + 1
        else:
            beta[j] = b
            q = w / b

    wanted = min(k, m)
    values = theta[:wanted].clone()
    vectors = Q[:m].T @ S[:, :wanted].to(device)
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=0)
    residual_estimates = est.clone()
    residuals = residual_estimates
    if verify:
        true = []
        for i in range(wanted):
            av = matvec(vectors[:, i]).detach().to(device=device, dtype=f64).reshape(-1)
            n_matvec += 1
            r = torch.linalg.vector_norm(av - values[i] * vectors[:, i])
            true.append(float(r) / max(abs(float(values[i])), 1e-12 * scale, torch.finfo(f64).tiny))
        residuals = torch.tensor(true, dtype=f64)
    return EigResult(values=values, vectors=vectors, residuals=residuals,
                     residual_estimates=residual_estimates, n_matvec=n_matvec, iterations=m,
                     converged=converged, ritz_history=history, value_errors=bound.clone())
