"""What the Cohen et al. cases (cases/cohen_*.yaml) assert, checked where it could go wrong:
the thresholds they compare against are the paper's formulas, and their expectations fail
on runs that do not show the effect (synthetic probe columns, so no training here)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stability_bench.metrics import RunView, SpikeConfig, compute_metrics
from stability_bench.optimizers.thresholds import stability_threshold
from stability_bench.schema import load_case

CASES = Path(__file__).resolve().parents[1] / "cases"


def _view(probes: dict, steps: int, late_window: float) -> RunView:
    loss = np.ones(steps)
    return RunView(loss=loss, steps=np.arange(steps), diverged=False, divergence_step=None,
                   total_steps=steps, spike_config=SpikeConfig(),
                   extra={"probes": {k: np.asarray(v, dtype=float) for k, v in probes.items()},
                          "probe_options": {"late_window": late_window}})


def _ratio_bounds(case_name: str, optimizer: str = "adam") -> tuple[float, float]:
    """The case's own ``precond_sharpness_ratio: {between: [lo, hi]}`` for ``optimizer``."""
    case = load_case(CASES / f"{case_name}.yaml")
    [bound] = [e.bound for e in case.expectations
               if e.optimizer == optimizer and e.metric == "precond_sharpness_ratio"]
    return float(bound[0]), float(bound[1])


def test_fig7_ratio_fails_when_the_sharpness_does_not_follow_the_warmup():
    """cohen_fig7_warmup's schedule: η(t) = η(t+1)/300, probes every 20. λ₁(P⁻¹H) equal to
    38/η(t) passes; λ₁ held where it met the threshold (step 100), or a threshold frozen
    at step 0's lr, fails the case's band."""
    lo, hi = _ratio_bounds("cohen_fig7_warmup")
    steps = np.arange(0, 300, 20)
    threshold = 38.0 / (1e-3 * (steps + 1) / 300)
    tracking = _view({"step": steps, "precond_sharpness": threshold, "threshold": threshold}, 300, 0.5)
    assert lo <= compute_metrics(tracking)["precond_sharpness_ratio"] <= hi
    held = np.where(steps >= 100, threshold[5], threshold)
    stuck = _view({"step": steps, "precond_sharpness": held, "threshold": threshold}, 300, 0.5)
    assert compute_metrics(stuck)["precond_sharpness_ratio"] > hi       # 221/101 = 2.19
    frozen = _view({"step": steps, "precond_sharpness": threshold,
                    "threshold": np.full(steps.size, threshold[0])}, 300, 0.5)
    assert compute_metrics(frozen)["precond_sharpness_ratio"] < lo


@pytest.mark.parametrize("beta1", [0.64, 0.814, 0.903, 0.95])
@pytest.mark.parametrize("beta2", [0.9, 0.99, 0.999])
def test_fig1_threshold_is_cohens_formula(beta1, beta2):
    """The threshold the probes divide by, for torch's Adam at the case's grid, is Cohen et
    al.'s (2 + 2β₁)/((1 − β₁)η) (Fig. 1's dashed lines), independent of β₂."""
    lr = 3e-4
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=lr, betas=(beta1, beta2))
    p.grad = torch.ones(3)
    opt.step()
    assert math.isclose(stability_threshold(opt), (2 + 2 * beta1) / ((1 - beta1) * lr), rel_tol=1e-12)
