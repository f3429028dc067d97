"""A corpus of realistic changes to Adam, AdamW, SGD and RMSprop, for the detection-rate
benchmark (``python benchmarks/detection.py``; docs/regressions.md).

``CHANGES`` lists each change with the torch.optim class it stands in for: a
*regression* changes the algorithm and must be caught; an *equivalent* rewrites it
without changing it and must not alarm. The plain re-implementations they modify are in
``originals`` (checked against torch.optim by tests/test_regressions.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import changes as c
from . import originals

REGRESSION, EQUIVALENT = "regression", "equivalent"


@dataclass(frozen=True)
class Change:
    name: str
    replaces: str        # the case's class string it is substituted for
    cls: type
    kind: str            # REGRESSION or EQUIVALENT

    @property
    def what(self) -> str:
        return (self.cls.__doc__ or "").strip().splitlines()[0]


ORIGINALS = {"torch.optim.Adam": originals.Adam, "torch.optim.AdamW": originals.AdamW,
             "torch.optim.SGD": originals.SGD, "torch.optim.RMSprop": originals.RMSprop}

_R = [
    ("adam_eps_inside_sqrt", "torch.optim.Adam", c.AdamEpsInsideSqrt),
    ("adam_no_bias_correction2", "torch.optim.Adam", c.AdamNoBiasCorrection2),
    ("adam_no_bias_correction1", "torch.optim.Adam", c.AdamNoBiasCorrection1),
    ("adam_bias_corrections_swapped", "torch.optim.Adam", c.AdamBiasCorrectionSwapped),
    ("adam_step_off_by_one", "torch.optim.Adam", c.AdamStepOffByOne),
    ("adam_beta2_default_0.99", "torch.optim.Adam", c.AdamBeta2Default),
    ("adam_eps_default_1e-7", "torch.optim.Adam", c.AdamEpsDefault),
    ("adam_state_bf16", "torch.optim.Adam", c.AdamStateBf16),
    ("adam_stale_momentum", "torch.optim.Adam", c.AdamStaleMomentum),
    ("adamw_coupled_decay", "torch.optim.AdamW", c.AdamWCoupledDecay),
    ("adamw_decay_not_scaled_by_lr", "torch.optim.AdamW", c.AdamWDecayNotScaledByLr),
    ("adamw_decay_default_0", "torch.optim.AdamW", c.AdamWDecayDefault),
    ("sgd_dampening_is_momentum", "torch.optim.SGD", c.SGDDampeningIsMomentum),
    ("sgd_stale_momentum", "torch.optim.SGD", c.SGDStaleMomentum),
    ("sgd_nesterov_ignored", "torch.optim.SGD", c.SGDNesterovIgnored),
    ("sgd_momentum_default_0.9", "torch.optim.SGD", c.SGDMomentumDefault),
    ("sgd_buffer_fp16", "torch.optim.SGD", c.SGDBufferFp16),
    ("rmsprop_eps_inside_sqrt", "torch.optim.RMSprop", c.RMSpropEpsInsideSqrt),
    ("rmsprop_alpha_default_0.9", "torch.optim.RMSprop", c.RMSpropAlphaDefault),
    ("rmsprop_stale_square_avg", "torch.optim.RMSprop", c.RMSpropStaleSquareAvg),
    ("rmsprop_state_bf16", "torch.optim.RMSprop", c.RMSpropStateBf16),
]
_E = [
    ("adam_foreach", "torch.optim.Adam", c.AdamForeach),
    ("adam_eps_hat", "torch.optim.Adam", c.AdamEpsHat),
    ("sgd_velocity_form", "torch.optim.SGD", c.SGDVelocityForm),
    ("rmsprop_divide_then_scale", "torch.optim.RMSprop", c.RMSpropDivideThenScale),
]
CHANGES: list[Change] = ([Change(n, r, cls, REGRESSION) for n, r, cls in _R]
                         + [Change(n, r, cls, EQUIVALENT) for n, r, cls in _E])
