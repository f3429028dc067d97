"""Optimizers for stability testing: reference implementations of the update rules in
Cohen et al. 2022, their closed-form stability thresholds (``theory``), and
``stability_threshold(opt)`` for any live optimizer (``thresholds``)."""
from . import theory
from .reference import (
    EMAHB,
    GD,
    REFERENCE_OPTIMIZERS,
    Adam,
    EMANesterov,
    FrozenAdam,
    Padam,
    ReferenceOptimizer,
    RMSprop,
    StandardHB,
    StandardNesterov,
)
from .theory import (
    adam_threshold,
    ema_hb_threshold,
    ema_nesterov_threshold,
    frozen_adam_threshold,
    gd_threshold,
    nadam_threshold,
    rmsprop_threshold,
    standard_hb_threshold,
    standard_nesterov_threshold,
)
from .thresholds import TORCH_THRESHOLDS, stability_threshold, threshold_and_reason, threshold_status

__all__ = [
    "theory",
    "REFERENCE_OPTIMIZERS",
    "ReferenceOptimizer",
    "GD",
    "StandardHB",
    "EMAHB",
    "StandardNesterov",
    "EMANesterov",
    "RMSprop",
    "Adam",
    "FrozenAdam",
    "Padam",
    "gd_threshold",
    "standard_hb_threshold",
    "ema_hb_threshold",
    "standard_nesterov_threshold",
    "ema_nesterov_threshold",
    "nadam_threshold",
    "rmsprop_threshold",
    "adam_threshold",
    "frozen_adam_threshold",
    "TORCH_THRESHOLDS",
    "stability_threshold",
    "threshold_and_reason",
    "threshold_status",
]
