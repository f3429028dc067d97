"""Probes inside runs: they never change training, and they measure what theory says."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import stability_bench
from stability_bench.schema import CaseError

ALL_PROBES = {"sharpness": {"k": 2}, "precond_sharpness": {}, "threshold": {},
              "directional_curvature": {}, "second_moment_ratio": {}, "grad_alignment": {"k": 2}}


def mlp_case(probes=None, **overrides) -> dict:
    case = {
        "name": "probed_mlp",
        "model": {"kind": "mlp", "widths": [6, 16, 3], "activation": "tanh"},
        "data": {"kind": "teacher", "n": 40, "widths": [6, 8, 3]},
        "loss": {"kind": "mse", "reduction": "half_example_mean"},
        "batch": {"size": 16, "shuffle": True},
        "steps": 30,
        "optimizers": {"adam": {"class": "torch.optim.Adam", "lr": 1.0e-2}},
    }
    if probes is not None:
        case["probes"] = probes
    case.update(overrides)
    return case


def test_probes_on_and_off_give_bit_identical_trajectories():
    off = stability_bench.run_case(mlp_case())[0]
    on = stability_bench.run_case(mlp_case({"every": 3, "subset": 24, "chunk_size": 7, **ALL_PROBES}))[0]
    assert on.history == off.history
    assert on.probes["step"] == list(range(0, 30, 3))
    assert off.probes == {}


def test_probe_columns_are_aligned_and_the_first_adam_step_has_no_preconditioner():
    result = stability_bench.run_case(mlp_case({"every": 10, **ALL_PROBES}))[0]
    columns = result.probes
    assert all(len(v) == len(columns["step"]) for v in columns.values())
    assert math.isnan(columns["precond_sharpness"][0])  # Adam has no state before its first step
    assert all(math.isfinite(x) for x in columns["precond_sharpness"][1:])
    assert columns["threshold"] == [pytest.approx(38 / 1e-2)] * 3
    # Each probe met its stopping rule: a relative residual < tol (1e-3) or λ₁ known to
    # EIG_TOL (1e-3), whose residual is then about √(1e-3·gap/λ₁) (measured 1.2–2.5e-3);
    # none ran out of iterations (max_iter 30, +1 verification matvec).
    assert all(r < 3e-2 for r in columns["sharpness_residual"])
    assert all(n < 31 for n in columns["sharpness_hvps"])


def test_sharpness_of_a_quadratic_is_its_top_eigenvalue_and_gd_is_unpreconditioned():
    case = {"name": "q", "dtype": "float64", "steps": 3,
            "model": {"kind": "quadratic", "eigenvalues": [0.5, 2.0, 7.0, 3.0], "basis": "random"},
            "loss": {"kind": "quadratic"},
            "optimizers": {"gd": {"class": "reference.GD", "lr": 0.1}},
            "probes": {"every": 1, "sharpness": {}, "precond_sharpness": {}, "threshold": {}}}
    result = stability_bench.run_case(case)[0]
    assert result.probes["sharpness"] == [pytest.approx(7.0, rel=1e-9)] * 3
    assert result.probes["precond_sharpness"] == result.probes["sharpness"]  # P = I
    assert result.probes["threshold"] == [pytest.approx(20.0)] * 3


def test_frozen_adam_precond_sharpness_matches_an_explicit_eigensolve():
    """λ₁(P⁻¹A) from the probe equals numpy's on the explicit matrices (P from the optimizer)."""
    from stability_bench.plan import plan_runs
    from stability_bench.runner import replay

    case = stability_bench.load_case({
        "name": "frozen", "dtype": "float64", "steps": 8,
        "model": {"kind": "quadratic", "eigenvalues": [0.3, 1.0, 4.0], "basis": "random"},
        "loss": {"kind": "quadratic"},
        "optimizers": {"frozen": {"class": "reference.FrozenAdam", "lr": 1.0e-3, "freeze_step": 3}},
        "probes": {"every": 1, "precond_sharpness": {}}})
    result = stability_bench.run_case(case)[0]
    spec = plan_runs(case)[0]
    for step in (5, 7):
        session = replay(spec, step)
        A = session.model.A.numpy()
        P = session.optimizer.preconditioner()[0].numpy()
        expected = max(np.linalg.eigvals(np.diag(1 / P) @ A).real)
        assert result.probes["precond_sharpness"][step] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("probes,fragment", [
    ({"sharpnes": {}}, "did you mean 'sharpness'"),
    ({"every": 0, "sharpness": {}}, "every must be at least 1"),
    ({"sharpness": {"kk": 2}}, "unknown key 'kk'"),
    ({"tol": "small", "sharpness": {}}, "expected a number, got 'small'"),
    ({"tol": "1e-3", "sharpness": {}}, "the number 1e-3, without quotes"),
])
def test_malformed_probe_sections_name_the_key(probes, fragment):
    with pytest.raises(CaseError) as info:
        stability_bench.load_case(mlp_case(probes))
    assert "probes." in str(info.value) and fragment in str(info.value)
