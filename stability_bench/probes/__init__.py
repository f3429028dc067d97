"""Curvature probes' engine: Hessian-vector products of the training loss
(:class:`LossHessian`), Lanczos (:func:`top_eigenpairs`), optimizers' diagonal
preconditioners (:func:`diagonal_preconditioner`), the quantities built from them
(sharpness, preconditioned sharpness, directional curvature, second-moment ratio,
gradient alignment), and :func:`untouched`, the guard that keeps a probe step from
changing training.

Typical probe step::

    with untouched(model, optimizer):
        H = LossHessian(model, params, loss_fn, x, y, additive=additive_for("mse", "half_example_mean"))
        P = diagonal_preconditioner(optimizer, params)
        top = precond_sharpness(H, P, k=1, v0=previous.vectors if previous else None)
"""
from .hvp import LossHessian, ProbeSideEffect, additive_for, flatten, unflatten, untouched
from .lanczos import EigResult, top_eigenpairs
from .preconditioner import (
    PRECONDITIONERS,
    diagonal_preconditioner,
    flat_diagonal,
    is_preconditioned,
    precond_sqrt_inv,
    precond_status,
    preconditioning,
    Preconditioning,
    second_moment,
    second_moment_status,
)
from .quantities import (
    Curvature,
    directional_curvature,
    grad_alignment,
    grad_alignment_parts,
    hessian_operator,
    precond_operator,
    precond_sharpness,
    second_moment_ratio,
    sharpness,
)

__all__ = [
    "LossHessian",
    "ProbeSideEffect",
    "additive_for",
    "flatten",
    "unflatten",
    "untouched",
    "EigResult",
    "top_eigenpairs",
    "PRECONDITIONERS",
    "diagonal_preconditioner",
    "is_preconditioned",
    "flat_diagonal",
    "precond_sqrt_inv",
    "second_moment",
    "second_moment_status",
    "precond_status",
    "preconditioning",
    "Preconditioning",
    "sharpness",
    "precond_sharpness",
    "directional_curvature",
    "second_moment_ratio",
    "grad_alignment",
    "grad_alignment_parts",
    "Curvature",
    "hessian_operator",
    "precond_operator",
]
