"""Losses a case can name under ``loss: {kind: ...}``. Each factory returns
``loss(prediction, target) -> scalar``."""
from __future__ import annotations

from typing import Callable, Literal

import torch
from torch.nn import functional as F

from stability_bench.components import BuildContext, declares
from stability_bench.registry import Registry

LOSSES: Registry = Registry("loss")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batch_scaled(fn: LossFn, divide_by_batch_size: bool) -> LossFn:
    """Optionally divide by the batch size once more, as Keras did to a loss that already
    averaged (seed 003): the loss scale then depends on the batch size, so a small last
    batch of an epoch gives a larger gradient and a regular spike."""
    if not divide_by_batch_size:
        return fn
    return lambda pred, target: fn(pred, target) / pred.shape[0]


def _as_targets(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Integer class labels become one-hot rows, so MSE works on classification data."""
    if not target.is_floating_point():
        return F.one_hot(target, pred.shape[-1]).to(pred.dtype)
    return target


@LOSSES.register("mse")
def mse(ctx: BuildContext, *, reduction: Literal["sum", "mean", "half_example_mean"] = "mean",
        divide_by_batch_size: bool = False) -> LossFn:
    """Squared error. ``sum``: Σ over every element; ``mean``: torch's mean over every
    element; ``half_example_mean``: ½·Σ over outputs, averaged over examples (Cohen et al.
    2022) — for C outputs its curvature is C/2 times torch's ``mean``."""
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = pred - _as_targets(pred, target).reshape(pred.shape)
        squared = diff.square()
        if reduction == "sum":
            return squared.sum()
        if reduction == "mean":
            return squared.mean()
        return 0.5 * squared.sum() / pred.shape[0]

    return _batch_scaled(loss, divide_by_batch_size)


@LOSSES.register("cross_entropy")
@declares(needs_targets="labels")
def cross_entropy(ctx: BuildContext, *, reduction: Literal["sum", "mean"] = "mean",
                  divide_by_batch_size: bool = False) -> LossFn:
    """Softmax cross-entropy on integer labels (torch would read real-valued targets as
    class probabilities and report a meaningless, even negative, loss)."""
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point():
            raise ValueError(f"cross_entropy needs integer class labels, got real-valued targets "
                             f"({target.dtype}); use loss: {{kind: mse}} for regression data")
        return F.cross_entropy(pred, target, reduction=reduction)

    return _batch_scaled(loss, divide_by_batch_size)


@LOSSES.register("quadratic")
def quadratic(ctx: BuildContext) -> LossFn:
    """The quadratic model's own objective: its output already is the loss."""
    return lambda pred, target: pred
