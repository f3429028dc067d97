"""Optimizers with other step contracts run as they would in a user's own loop.

Each run of tests/data/training/contracts.yaml is compared with a hand-written loop that
drives the same optimizer class on the same start point (float64; rtol 1e-12 for norms
the harness takes in numpy and the loop in torch, losses bit-identical where the same
torch ops produce them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stability_bench.contracts import step_contract
from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start
from stability_bench.schema import load_case
from training_components import CauchyStep, ScheduleFreeSGD

CASE = Path(__file__).parent / "data" / "training" / "contracts.yaml"


def spec(optimizer: str, variant: str | None = None):
    return plan_runs(load_case(CASE, variant), optimizers=[optimizer])[0]


def quadratic(optimizer: str):
    """The run's start point and Hessian A (f = ½xᵀAx), from the harness's own build."""
    session = start(spec(optimizer))
    return session.params[0].detach().clone(), session.model.A


def f(A, x):
    return float(0.5 * x @ (A @ x))


def test_contracts_are_read_from_the_class():
    assert step_contract(torch.optim.LBFGS) == {"closure"}
    assert step_contract(CauchyStep) == {"create_graph"}
    assert step_contract(ScheduleFreeSGD) == {"train_eval"}
    assert step_contract(torch.optim.Adam) == frozenset()


def test_lbfgs_records_the_closures_first_evaluation():
    """loss and grad_norm at x_t (the closure's first evaluation of step t); update_norm
    ‖x_{t+1} − x_t‖ over all of the step's inner iterations."""
    x0, A = quadratic("lbfgs")
    p = torch.nn.Parameter(x0.clone())
    opt = torch.optim.LBFGS([p], lr=0.5, max_iter=4, history_size=3)
    losses, grads, updates, evaluations = [], [], [], 0
    for _ in range(12):
        before, first = p.detach().clone(), []

        def closure():
            nonlocal evaluations
            evaluations += 1
            opt.zero_grad()
            loss = 0.5 * p @ (A @ p)
            loss.backward()
            if not first:
                first.append((loss.item(), float(torch.linalg.vector_norm(p.grad))))
            return loss

        opt.step(closure)
        losses.append(first[0][0])
        grads.append(first[0][1])
        updates.append(float(torch.linalg.vector_norm(p.detach() - before)))
    assert evaluations > 12  # several evaluations per step: the closure matters
    h = execute(spec("lbfgs", None)).history
    assert h["loss"] == losses
    np.testing.assert_allclose(h["grad_norm"], grads, rtol=1e-12)
    np.testing.assert_allclose(h["update_norm"], updates, rtol=1e-12)


def test_create_graph_optimizer_takes_the_exact_line_search_step():
    """Reference: x ← x − 0.9·(gᵀg/gᵀAg)·g in plain torch algebra."""
    x, A = quadratic("cauchy")
    losses = []
    for _ in range(12):
        losses.append(f(A, x))
        g = A @ x
        x = x - 0.9 * (g @ g) / (g @ (A @ g)) * g
    h = execute(spec("cauchy", None)).history
    np.testing.assert_allclose(h["loss"], losses, rtol=1e-12)
    assert h["loss"][-1] < 1e-2 * h["loss"][0]  # it does descend (measured 1.4e-3)


def test_create_graph_is_needed():
    """Without the declared contract the same optimizer cannot differentiate p.grad."""
    x0, A = quadratic("cauchy")
    p = torch.nn.Parameter(x0.clone())
    (0.5 * p @ (A @ p)).backward()
    with pytest.raises(RuntimeError):
        CauchyStep([p]).step()


def schedule_free_by_hand(x0, A, steps=12, lr=0.2, beta=0.9):
    """Defazio et al.'s recursions on the quadratic: training losses at y_t, eval losses at x_t."""
    x, z = x0.clone(), x0.clone()
    train, evals = [], {}
    for t in range(1, steps + 1):
        y = (1 - beta) * z + beta * x
        if (t - 1) % 4 == 0:
            evals[t - 1] = f(A, x)
        train.append(f(A, y))
        z = z - lr * (A @ y)
        x = (1 - 1 / t) * x + (1 / t) * z
    evals[steps] = f(A, x)
    return train, evals


def test_schedule_free_trains_at_y_and_evaluates_at_x():
    x0, A = quadratic("schedule_free")
    train, evals = schedule_free_by_hand(x0, A)
    result = execute(spec("schedule_free", "observed"))
    np.testing.assert_allclose(result.history["loss"], train, rtol=1e-12)
    assert result.evals["step"] == list(evals)
    np.testing.assert_allclose(result.evals["eval_loss"], list(evals.values()), rtol=1e-12)
    assert evals[12] != pytest.approx(train[-1], rel=1e-3)  # x and y do differ


def test_eval_mode_probes_and_evals_leave_training_bit_identical():
    """optimizer.eval()/train() around probes and evals: the parameters are restored exactly."""
    with_probes = execute(spec("schedule_free", "observed"))
    plain = execute(spec("schedule_free", None))
    assert with_probes.history["loss"] == plain.history["loss"]
    assert with_probes.history["update_norm"] == plain.history["update_norm"]
    assert with_probes.probes["step"] == [0, 4, 8]
    assert np.isfinite(with_probes.probes["sharpness"]).all()


def test_lbfgs_with_probes_and_eval_keeps_its_trajectory():
    with_probes = execute(spec("lbfgs", "observed"))
    plain = execute(spec("lbfgs", None))
    assert with_probes.history["loss"] == plain.history["loss"]
    # the probe at step 0 sees the quadratic's true top eigenvalue (3.0; Lanczos tol 1e-3)
    assert with_probes.probes["sharpness"][0] == pytest.approx(3.0, rel=1e-3)
