"""``eval:``: a periodic loss on the whole training set (or a held-out split) for minibatch
runs, the eval_* metrics, and that evaluating never changes training.

Reference for each eval loss: ``replay(spec, t)`` — the run's state just before step t,
which tests/test_runner.py checks is the recorded trajectory — and the case's loss on the
split computed here by hand (float64; rtol 1e-12 for the same sum taken the same way).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stability_bench.expectations import check_run
from stability_bench.plan import plan_runs
from stability_bench.runner import RunSetupError, execute, replay, start
from stability_bench.schema import load_case

CASE = Path(__file__).parent / "data" / "training" / "eval_minibatch.yaml"


def spec(variant=None):
    return plan_runs(load_case(CASE, variant))[0]


def loss_at(session, x, y) -> float:
    with torch.no_grad():
        return float(((session.model(x) - y) ** 2).mean())


def test_full_split_eval_is_the_full_batch_loss_before_the_step():
    result = execute(spec())
    assert result.evals["step"] == [0, 7, 14, 21, 28, 35, 42, 49, 56, 60]
    full = start(spec()).data
    expected = [loss_at(replay(spec(), t), full.x, full.y) for t in result.evals["step"]]
    np.testing.assert_allclose(result.evals["eval_loss"], expected, rtol=1e-12)


def test_heldout_split_trains_on_the_rest_and_evaluates_the_last_fifth():
    s = start(spec("heldout"))
    assert (len(s.data), len(s.heldout)) == (40, 10)
    everything = start(spec()).data
    assert torch.equal(s.heldout.x, everything.x[40:]) and torch.equal(s.data.x, everything.x[:40])
    result = execute(spec("heldout"))
    expected = [loss_at(replay(spec("heldout"), t), s.heldout.x, s.heldout.y) for t in result.evals["step"]]
    np.testing.assert_allclose(result.evals["eval_loss"], expected, rtol=1e-12)
    assert result.theory["batches_per_epoch"] == 5  # 40 training examples in batches of 8


def test_evaluating_does_not_change_training():
    assert execute(spec()).history == execute(spec("none")).history


def test_eval_metrics_read_the_eval_losses():
    result = execute(spec())
    losses = result.evals["eval_loss"]
    assert result.metrics["eval_final_loss"] == losses[-1]
    assert result.metrics["eval_min_loss"] == min(losses)
    assert result.metrics["eval_min_loss_step"] == result.evals["step"][int(np.argmin(losses))]
    assert losses[-1] < losses[0]  # SGD does learn the teacher
    outcome = check_run(load_case(CASE), result)
    assert [c.passed for c in outcome] == [True]


def test_without_eval_the_metrics_are_unknown():
    metrics = execute(spec("none")).metrics
    assert metrics["eval_final_loss"] is None and metrics["eval_min_loss"] is None


def test_a_split_that_leaves_nothing_to_train_on_is_a_located_setup_error():
    with pytest.raises(RunSetupError, match=r"eval_minibatch.yaml:\d+: eval.heldout_fraction: 0.999 of 50"):
        start(spec("too_much"))


def test_the_eval_metrics_are_registered_where_metrics_are_defined():
    """``stability_bench.metrics`` alone knows the eval_* metrics: no other module has to be
    imported for its side effect first (a fresh interpreter, nothing else imported)."""
    import subprocess
    import sys

    code = ("import sys; from stability_bench.metrics import METRICS, RunView, compute_metrics; "
            "assert not any(m in sys.modules for m in ('stability_bench.runner', 'stability_bench.schema')); "
            "view = RunView([1.0, 0.5], [0, 1], False, None, 2, extra={'evals': {'step': [0, 2], 'eval_loss': [2.0, 1.0]}}); "
            "m = compute_metrics(view, ['eval_final_loss', 'eval_min_loss', 'eval_min_loss_step']); "
            "assert m == {'eval_final_loss': 1.0, 'eval_min_loss': 1.0, 'eval_min_loss_step': 2}, m")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
