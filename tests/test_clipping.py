"""Gradient clipping: the raw gradient norm stays in ``grad_norm``, the clipped one is the
new ``clipped_grad_norm`` column, and the optimizer steps with the clipped gradient.

On f = ½xᵀAx (tests/data/training/clipping.yaml) plain SGD's update is lr·g_clipped, so
update_norm = lr·clipped_grad_norm checks that the step used the clipped gradient. The
clipped norm is computed in the parameters' dtype (float64 here): rtol 1e-12.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start
from stability_bench.schema import load_case

CASE = Path(__file__).parent / "data" / "training" / "clipping.yaml"


def run(variant=None):
    return execute(plan_runs(load_case(CASE, variant))[0])


def test_norm_clipping_caps_the_gradient_norm_and_keeps_the_raw_one():
    h = run().history
    raw, clipped = np.array(h["grad_norm"]), np.array(h["clipped_grad_norm"])
    assert raw[0] > 3 and raw[-1] < 1  # both regimes occur
    # torch scales by max_norm/(‖g‖ + 1e-6) when that is < 1
    np.testing.assert_allclose(clipped, raw * np.minimum(1.0, 1.0 / (raw + 1e-6)), rtol=1e-12)
    np.testing.assert_allclose(h["update_norm"], 0.2 * clipped, rtol=1e-12)


def test_value_clipping_matches_a_hand_loop():
    """Reference: the same quadratic and SGD, clip_grad_value_ by hand, in float64."""
    h = run("by_value").history
    session = start(plan_runs(load_case(CASE, "by_value"))[0])
    x = session.params[0].detach().clone()
    A = session.model.A
    raw, clipped = [], []
    for _ in range(30):
        g = A @ x
        c = g.clamp(-0.5, 0.5)
        raw.append(float(torch.linalg.vector_norm(g)))
        clipped.append(float(torch.linalg.vector_norm(c)))
        x = x - 0.2 * c
    np.testing.assert_allclose(h["grad_norm"], raw, rtol=1e-12)
    np.testing.assert_allclose(h["clipped_grad_norm"], clipped, rtol=1e-12)
    assert clipped[0] < raw[0]


def test_no_clipping_no_column_and_the_unclipped_trajectory():
    h = run("none").history
    assert "clipped_grad_norm" not in h
    np.testing.assert_allclose(h["update_norm"], 0.2 * np.array(h["grad_norm"]), rtol=1e-12)
