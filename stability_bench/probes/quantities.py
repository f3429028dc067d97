"""Curvature quantities, as pure functions of a :class:`~.hvp.LossHessian` H and a
preconditioner P: a diagonal (per-parameter list in H's parameter order, or flat), or — for
a genuinely non-diagonal P — an operator, a callable flat float64 u ↦ P^{-1/2}u (symmetric
positive definite; ``Preconditioning.inv_sqrt``).

Every eigen-solve is :func:`~.lanczos.top_eigenpairs` in float64; the HVPs are taken in the
model's dtype. Vectors passed in or returned are flat, in H's flattening order.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

from .hvp import LossHessian
from .lanczos import EIG_TOL, EigResult, top_eigenpairs
from .preconditioner import flat_diagonal, precond_sqrt_inv

__all__ = ["sharpness", "precond_sharpness", "directional_curvature", "Curvature", "second_moment_ratio",
           "grad_alignment", "grad_alignment_parts", "hessian_operator", "precond_operator", "inv_sqrt_operator"]

Diagonal = Sequence[torch.Tensor] | torch.Tensor
InvSqrt = Callable[[torch.Tensor], torch.Tensor]  # flat float64 u -> P^{-1/2} u
Precond = Diagonal | InvSqrt


def inv_sqrt_operator(P: Precond, device=None) -> InvSqrt:
    """u ↦ P^{-1/2}u for a diagonal P (elementwise) or an operator (as given)."""
    if callable(P):
        return P
    s = precond_sqrt_inv(P).to(device)
    return lambda u: s * u


def hessian_operator(H: LossHessian):
    """v (float64, flat) -> H v (float64)."""
    return lambda v: H.hvp(v).to(torch.float64)


def precond_operator(H: LossHessian, P: Precond):
    """u -> P^{-1/2} H P^{-1/2} u, all float64 outside the HVP."""
    S = inv_sqrt_operator(P, H.device)
    return lambda u: S(H.hvp(S(u)).to(torch.float64))


def _probe_tolerances(lanczos: dict) -> dict:
    """The probes' stopping rule: ``tol`` (relative residual, default 1e-3) or the Ritz-value
    error bound below ``eig_tol`` — by default ``EIG_TOL`` (1e-3), or ``tol`` where that is
    smaller (a residual under ``tol`` bounds the eigenvalue error by ``tol``, so a smaller
    ``tol`` asks at least that accuracy of λ). ``eig_tol=None`` gives the residual rule alone.

    And no verification product (``verify=False``): the residuals a probe records are the
    recurrence's estimates, which with full reorthogonalisation in float64 match the true
    residuals to ~1e-10 relative (tests/test_lanczos_eig_tol.py) — an extra HVP per probe
    (1 in 6–10 of a warm-started probe's products) would buy nothing a figure reads."""
    if "eig_tol" not in lanczos:
        tol = lanczos.get("tol", 1e-3)
        lanczos = dict(lanczos, eig_tol=EIG_TOL if not tol else min(EIG_TOL, float(tol)))
    return {"verify": False, **lanczos}


def sharpness(H: LossHessian, k: int = 1, v0: torch.Tensor | None = None, **lanczos) -> EigResult:
    """Top-k eigenvalues of H (largest algebraic), eigenvectors, residuals, ``n_hvp``.
    ``v0``: a warm start (e.g. the previous probe's ``vectors``). Extra keywords go to
    ``top_eigenpairs`` (``max_iter``, ``tol``, ``eig_tol``, ``verify``, ``seed``); ``eig_tol``
    defaults to ``EIG_TOL`` or ``tol`` where smaller (:func:`_probe_tolerances`)."""
    return top_eigenpairs(hessian_operator(H), H.dim, k, v0=v0, device=H.device, **_probe_tolerances(lanczos))


def precond_sharpness(H: LossHessian, P: Precond, k: int = 1, v0: torch.Tensor | None = None,
                      **lanczos) -> EigResult:
    """Top-k eigenvalues of P^{-1/2} H P^{-1/2} (the same as those of P⁻¹H; Cohen et al.'s
    preconditioned sharpness λ₁(P⁻¹H)). The eigenvectors are those of the symmetric
    P^{-1/2}HP^{-1/2} (orthonormal); u ↦ P^{-1/2}u maps them to eigenvectors of P⁻¹H.
    Stopping rule as :func:`sharpness`."""
    return top_eigenpairs(precond_operator(H, P), H.dim, k, v0=v0, device=H.device, **_probe_tolerances(lanczos))


class Curvature(NamedTuple):
    raw: float
    preconditioned: float | None


def directional_curvature(H: LossHessian, g: torch.Tensor | None = None, P: Precond | None = None) -> Curvature:
    """Curvature along the gradient (Xiong et al. 2025: a spike follows when the
    preconditioned value exceeds the threshold, e.g. 2/η for RMSprop-like steps).

    Returns ``(raw, preconditioned)``: raw = gᵀHg / gᵀg; preconditioned (None without P)
    = ũᵀ(P^{-1/2}HP^{-1/2})ũ/‖ũ‖² for ũ = P^{-1/2}g, computed as wᵀHw / gᵀw with
    w = P⁻¹g. ``g`` defaults to H's gradient. One HVP each; a zero gradient gives NaN."""
    g = (H.gradient() if g is None else g).detach().to(device=H.device, dtype=torch.float64).reshape(-1)
    raw = _rayleigh(H, g, g)
    if P is None:
        return Curvature(raw, None)
    S = inv_sqrt_operator(P, H.device)
    w = S(S(g))  # P⁻¹g
    return Curvature(raw, _rayleigh(H, w, g))


def _rayleigh(H: LossHessian, w: torch.Tensor, g: torch.Tensor) -> float:
    denom = float(torch.dot(g, w))
    if denom == 0.0 or not torch.isfinite(w).all():
        return float("nan")
    return float(torch.dot(w, H.hvp(w).to(torch.float64))) / denom


def _quantile(sorted_values: torch.Tensor, q: float) -> float:
    """numpy's default ('linear') quantile of an ascending vector."""
    n = sorted_values.numel()
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo] * (1.0 - frac) + sorted_values[hi] * frac)


def second_moment_ratio(grads: Diagonal, v: Diagonal, bound: float = 1.0) -> dict:
    """Statistics of r = g²/v over every parameter entry where v > 0 (Xiong et al. 2025:
    when g² ≪ v the second moment decays like β₂ᵗ, P shrinks and the preconditioned
    sharpness rises).

    ``grads`` and ``v`` (per-parameter lists in the same order, or flat): the gradient of
    the step and the optimizer's second-moment estimate (``preconditioner.second_moment``).
    Returns ``median``, ``p10``, ``p90`` (numpy's linear quantiles), ``frac_below`` (the
    fraction of entries with r < ``bound``; with bound 1, the entries whose v is
    decreasing, since v ← β₂v + (1−β₂)g² shrinks exactly when g² < v), ``bound``, ``n``
    (entries used) and ``skipped`` (entries with v == 0). All NaN when n == 0."""
    g = flat_diagonal(grads)
    vv = flat_diagonal(v).to(g.device)
    if g.shape != vv.shape:
        raise ValueError(f"grads have {g.numel()} entries, v has {vv.numel()}")
    keep = vv != 0
    r = g[keep].square() / vv[keep]
    n = r.numel()
    stats = {"bound": float(bound), "n": int(n), "skipped": int(g.numel() - n)}
    if n == 0:
        nan = float("nan")
        return {**stats, "median": nan, "p10": nan, "p90": nan, "frac_below": nan}
    r = torch.sort(r).values
    return {**stats, "median": _quantile(r, 0.5), "p10": _quantile(r, 0.1), "p90": _quantile(r, 0.9),
            "frac_below": float((r < bound).sum()) / n}


def grad_alignment(g: torch.Tensor, P: Precond | None, eigvecs: torch.Tensor, power: float = -0.5) -> float:
    """The fraction of ‖P^{-1/2}g‖² along the columns of ``eigvecs`` (orthonormal top
    eigenvectors of P^{-1/2}HP^{-1/2}); NaN for a zero gradient. See
    :func:`grad_alignment_parts` for the choice of vector and the squared norms."""
    return grad_alignment_parts(g, P, eigvecs, power)["fraction"]


def grad_alignment_parts(g: torch.Tensor, P: Precond | None, eigvecs: torch.Tensor,
                         power: float = -0.5) -> dict:
    """How much of the semi-preconditioned gradient lies along the top eigenvectors of
    P^{-1/2}HP^{-1/2} (Cohen et al. 2022, App. E, Figure 18).

    Which vector. The eigenvectors v_i of P^{-1/2}HP^{-1/2} live in the coordinates
    x̃ = P^{1/2}x of Cohen's Proposition 1, where preconditioned momentum on f is plain
    momentum on f̃(x̃) = f(P^{-1/2}x̃). There the gradient is ∇f̃ = P^{-1/2}g and the Hessian
    is P^{-1/2}HP^{-1/2}; on the local quadratic ∇f̃ = (P^{-1/2}HP^{-1/2})(x̃ − x̃*), so
    when λ₁ passes the threshold it is the components of P^{-1/2}g along v₁.. that grow
    explosively. So we project ũ = P^{-1/2}g (``power=-0.5``, default). The extracted text
    of the Figure 18 caption reads "P^{1/2} g_t" (the minus sign of exponents is lost in
    places in that extraction, e.g. the figure labels "P 1 H t" for P⁻¹H_t); P^{1/2}g =
    P·ũ is not expressed in that eigenbasis unless P ∝ I, so we take P^{-1/2}g. ``power=0.5``
    gives the literal reading for comparison (diagonal P only); P=None projects g itself
    (eigenvectors of H).

    ``eigvecs``: (dim, k) orthonormal columns (e.g. ``precond_sharpness(...).vectors``).
    Returns ``total_sq`` = ‖ũ‖², ``aligned_sq`` = ‖Vᵀũ‖², ``remainder_sq`` = total −
    aligned, ``fraction`` = aligned/total (NaN for a zero gradient), ``per_vector``
    (fractions along each v_i)."""
    u = g.detach().reshape(-1).to(torch.float64)
    V = eigvecs.detach().to(device=u.device, dtype=torch.float64)
    if V.dim() == 1:
        V = V[:, None]
    if callable(P):
        if power != -0.5:
            raise ValueError("an operator P gives P^{-1/2} only: power must be -0.5")
        u = P(u)
    elif P is not None:
        u = u * flat_diagonal(P).to(u.device).pow(power)
    coeffs = V.T @ u
    total = float(torch.dot(u, u))
    aligned = float(torch.dot(coeffs, coeffs))
    frac = aligned / total if total > 0 else float("nan")
    per = (coeffs.square() / total).tolist() if total > 0 else [float("nan")] * coeffs.numel()
    return {"total_sq": total, "aligned_sq": aligned, "remainder_sq": max(total - aligned, 0.0),
            "fraction": frac, "per_vector": per}
