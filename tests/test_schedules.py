"""``schedule:``: the lr each step runs at, recorded as the ``lr`` column, and what follows it.

The SGD runs are on f = ½xᵀAx (tests/data/training/schedule_sgd.yaml), where step t's
update is exactly lr(t)·g_t: checking update_norm = lr(t)·grad_norm (rtol 1e-12: float64
norms of the same vector, one of them scaled) shows the optimizer stepped at the recorded
lr, not just that a column was written.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stability_bench.plan import plan_runs
from stability_bench.runner import execute
from stability_bench.schema import load_case

CASE = Path(__file__).parent / "data" / "training" / "schedule_sgd.yaml"
LR, STEPS = 0.5, 40


def run(variant=None):
    return execute(plan_runs(load_case(CASE, variant))[0])


def shorthand(t: int, warmup: int, then: str, m: float = 0.0, steps: int = STEPS) -> float:
    """The README's formula, written out independently of stability_bench.schedules."""
    if t < warmup:
        return LR * (t + 1) / warmup
    s, d = t - warmup, max(1, steps - warmup)
    factor = {"constant": 1.0, "linear": 1 - (1 - m) * s / d,
              "cosine": m + (1 - m) * (1 + math.cos(math.pi * s / d)) / 2}[then]
    return LR * factor


@pytest.mark.parametrize("variant, warmup, then, m", [
    (None, 10, "cosine", 0.1), ("linear", 5, "linear", 0.0), ("constant", 8, "constant", 0.0)])
def test_shorthand_lr_column_follows_the_formula(variant, warmup, then, m):
    result = run(variant)
    expected = [shorthand(t, warmup, then, m) for t in range(STEPS)]
    np.testing.assert_allclose(result.history["lr"], expected, rtol=1e-14, atol=0)


def test_cosine_class_follows_torchs_closed_form():
    """CosineAnnealingLR's documented closed form η_min + (η − η_min)(1 + cos(πt/T))/2."""
    lr = run("cosine_class").history["lr"]
    expected = [0.01 + (LR - 0.01) * (1 + math.cos(math.pi * t / STEPS)) / 2 for t in range(STEPS)]
    np.testing.assert_allclose(lr, expected, rtol=1e-12)


@pytest.mark.parametrize("variant", ["sequential", "chained"])
def test_compositions_match_the_same_schedulers_driven_by_hand(variant):
    """SequentialLR / ChainedScheduler built by the harness give the lrs the same torch
    schedulers give when stepped by hand after each optimizer step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR)
    S = torch.optim.lr_scheduler
    if variant == "sequential":
        sched = S.SequentialLR(opt, [S.LambdaLR(opt, lambda t: (t + 1) / 5 if t < 5 else 1.0),
                                     S.ExponentialLR(opt, gamma=0.9)], milestones=[5])
    else:
        sched = S.ChainedScheduler([S.ExponentialLR(opt, gamma=0.95),
                                    S.StepLR(opt, step_size=10, gamma=0.5)])
    by_hand = []
    for _ in range(STEPS):
        by_hand.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(run(variant).history["lr"], by_hand, rtol=1e-14)
    assert len(set(by_hand)) > 10  # the schedule does change the lr


@pytest.mark.parametrize("variant", [None, "sequential"])
def test_each_step_runs_at_its_recorded_lr(variant):
    h = run(variant).history
    np.testing.assert_allclose(h["update_norm"], np.multiply(h["lr"], h["grad_norm"]), rtol=1e-12)


def test_threshold_probe_follows_the_schedule():
    """SGD's threshold 2/η at the lr of the probed step (probes every 3 steps)."""
    result = run()
    steps = result.probes["step"]
    assert steps == list(range(0, STEPS, 3))
    expected = [2.0 / shorthand(t, 10, "cosine", 0.1) for t in steps]
    np.testing.assert_allclose(result.probes["threshold"], expected, rtol=1e-14)


def test_without_a_schedule_the_lr_column_is_constant():
    assert run("no_schedule").history["lr"] == [LR] * STEPS


def test_a_variant_replaces_the_schedule_whole():
    """The base's cosine keys do not leak into a variant's class schedule."""
    assert load_case(CASE, "cosine_class").schedule == {
        "class": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 40, "eta_min": 0.01}
    assert load_case(CASE, "no_schedule").schedule is None


def test_theory_threshold_is_at_the_first_steps_lr():
    assert run().theory["threshold"] == pytest.approx(2.0 / (LR / 10), rel=1e-14)
