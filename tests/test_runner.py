"""The runner: determinism, divergence as a result, sweeps, recorded columns, components."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import stability_bench
from stability_bench.components import BuildContext
from stability_bench.components.data import Batches, TensorData
from stability_bench.components.losses import LOSSES
from stability_bench.plan import plan_runs
from stability_bench.runner import StepRecorder


def quadratic_case(**overrides) -> dict:
    case = {
        "name": "tiny_quadratic",
        "dtype": "float64",
        "model": {"kind": "quadratic", "eigenvalues": [1.0, 0.25], "x0": 1.0},
        "loss": {"kind": "quadratic"},
        "steps": 60,
        "optimizers": {"gd": {"class": "reference.GD", "lr": 0.5}},
    }
    case.update(overrides)
    return case


def perceptron_case(**overrides) -> dict:
    case = {
        "name": "tiny_perceptron",
        "seeds": [0, 1],
        "model": {"kind": "linear", "in_features": 50, "out_features": 1},
        "data": {"kind": "gaussian", "n": 16, "in_features": 50},
        "loss": {"kind": "mse", "reduction": "sum"},
        "steps": 200,
        "optimizers": {"adam": {"class": "torch.optim.Adam", "lr": 1.0e-2}},
    }
    case.update(overrides)
    return case


def test_same_case_and_seed_give_bit_identical_cpu_trajectories():
    first = stability_bench.run_case(perceptron_case(), seeds=[3])
    second = stability_bench.run_case(perceptron_case(), seeds=[3])
    assert first[0].history == second[0].history  # exact equality: bit-identical floats


def test_minibatch_shuffling_is_deterministic_and_seeded():
    case = perceptron_case(batch={"size": 5, "shuffle": True})
    a, b = (stability_bench.run_case(case, seeds=[0])[0] for _ in range(2))
    other = stability_bench.run_case(case, seeds=[1])[0]
    assert a.history["loss"] == b.history["loss"]
    assert a.history["loss"] != other.history["loss"]


@pytest.mark.parametrize("block", [128, 7, 1])  # one block; blocks ending mid-run; a flush every step
def test_gd_on_a_quadratic_matches_the_closed_form_iterates(block, monkeypatch):
    # x_t = (1 - ηλ)^t x_0 along each eigenvector, so f_t = ½ Σ λ (1-ηλ)^{2t}.
    monkeypatch.setattr(StepRecorder, "MAX_BLOCK", block)
    result = stability_bench.run_case(quadratic_case())[0]
    expected = [0.5 * sum(lam * (1 - 0.5 * lam) ** (2 * t) for lam in (1.0, 0.25)) for t in range(60)]
    np.testing.assert_allclose(result.history["loss"], expected, rtol=1e-12)
    # ‖g_t‖ = sqrt(Σ (λ x_t)²) and the update is η g_t for GD.
    grad = [math.sqrt(sum((lam * (1 - 0.5 * lam) ** t) ** 2 for lam in (1.0, 0.25))) for t in range(60)]
    np.testing.assert_allclose(result.history["grad_norm"], grad, rtol=1e-12)
    np.testing.assert_allclose(result.history["update_norm"], 0.5 * np.array(grad), rtol=1e-12)


def test_divergence_ends_the_run_as_a_result_not_a_crash():
    # GD with η = 2.2 on λ = 1: |1 − ηλ| = 1.2 > 1, loss grows like 1.44^t, never overflows
    # float64 in 2000 steps; the default cap (1e10 × initial loss) must catch it.
    case = quadratic_case(model={"kind": "quadratic", "eigenvalues": [1.0]}, steps=2000,
                          optimizers={"gd": {"class": "reference.GD", "lr": 2.2}})
    result = stability_bench.run_case(case)[0]
    first_above_cap = next(t for t in range(2000) if 0.5 * 1.44 ** t > 1e10 * 0.5)
    assert result.diverged and result.divergence_step == first_above_cap
    assert result.metrics["diverged"] is True
    assert len(result.history["loss"]) == first_above_cap + 1
    assert result.theory["predicted_diverged"] is True


def test_a_case_can_set_its_own_divergence_cap():
    case = quadratic_case(model={"kind": "quadratic", "eigenvalues": [1.0]}, steps=200,
                          optimizers={"gd": {"class": "reference.GD", "lr": 2.2}},
                          divergence={"max_loss": 100.0})
    result = stability_bench.run_case(case)[0]
    first_above = next(t for t in range(200) if 0.5 * 1.44 ** t > 100.0)
    assert result.divergence_step == first_above


def test_non_finite_loss_is_divergence():
    case = quadratic_case(model={"kind": "quadratic", "eigenvalues": [1.0]}, steps=50,
                          optimizers={"gd": {"class": "reference.GD", "lr": 1e200}},
                          divergence={"factor": 1e308})
    result = stability_bench.run_case(case)[0]
    assert result.diverged and not math.isfinite(result.history["loss"][-1])


def test_sweeps_expand_into_named_runs_and_theory_follows_each_point():
    case = quadratic_case(model={"kind": "quadratic", "eigenvalues": [1.0]}, steps=300,
                          optimizers={"ema": {"class": "reference.EMAHB", "beta1": 0.9,
                                              "lr": {"sweep": [37.9, 38.1]}}})
    loaded = stability_bench.load_case(case)
    assert [s.run_id for s in plan_runs(loaded)] == [
        "tiny_quadratic::ema[lr=37.9]-seed0-cpu", "tiny_quadratic::ema[lr=38.1]-seed0-cpu"]
    stable, unstable = stability_bench.run_case(loaded)
    assert stable.params["lr"] == 37.9 and unstable.params["lr"] == 38.1
    assert stable.theory["threshold"] == pytest.approx(38 / 37.9)
    assert (stable.diverged, unstable.diverged) == (False, True)


def test_run_result_round_trips_through_json(tmp_path):
    from stability_bench.results import read_results, results_payload, write_json_atomic

    results = stability_bench.run_case(quadratic_case())
    path = tmp_path / "out.json"
    write_json_atomic(path, results_payload([(r, []) for r in results]))
    again = read_results(path)
    assert again[0].history == results[0].history and again[0].metrics == results[0].metrics
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize("reduction,scale", [("sum", 1.0), ("mean", 1 / (8 * 3)), ("half_example_mean", 0.5 / 8)])
def test_mse_reductions(reduction, scale):
    ctx = BuildContext(0, torch.float64, torch.Generator())
    pred, target = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    loss = LOSSES.get("mse")(ctx, reduction=reduction)(pred, target)
    assert loss.item() == pytest.approx(scale * ((pred - target) ** 2).sum().item(), rel=1e-12)


def test_mse_takes_integer_labels_as_one_hot_and_divides_by_batch_size_on_request():
    ctx = BuildContext(0, torch.float64, torch.Generator())
    pred = torch.zeros(4, 10, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 3])
    assert LOSSES.get("mse")(ctx, reduction="half_example_mean")(pred, labels).item() == 0.5
    doubled = LOSSES.get("mse")(ctx, reduction="mean", divide_by_batch_size=True)(pred, labels)
    assert doubled.item() == pytest.approx(0.1 / 4)


@pytest.mark.parametrize("n,size,drop_last,sizes", [
    (10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (8, 4, False, [4, 4]), (5, 10, False, [5])])
def test_batches_per_epoch_and_the_short_last_batch(n, size, drop_last, sizes):
    data = TensorData(torch.arange(n, dtype=torch.float64)[:, None], torch.zeros(n, 1))
    batches = Batches(data, size, shuffle=True, drop_last=drop_last, generator=torch.Generator().manual_seed(0))
    assert batches.per_epoch == len(sizes)
    stream = iter(batches)
    epochs = [[next(stream)[0] for _ in sizes] for _ in range(2)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == sizes
        seen = torch.cat(epoch).flatten()
        assert len(set(seen.tolist())) == len(seen)  # no example twice in an epoch
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1])) or n <= size


def test_mlp_fan_in_init_has_variance_one_over_fan_in_and_zero_biases():
    from stability_bench.components.models import MODELS

    ctx = BuildContext(0, torch.float64, torch.Generator().manual_seed(0))
    model = MODELS.get("mlp")(ctx, widths=[400, 300, 10], activation="tanh", init="fan_in")
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linear:
        # the sample variance of 120k (or 3k) N(0, 1/fan_in) draws is within 5 % w.p. ≈ 1
        assert layer.weight.var().item() == pytest.approx(1 / layer.in_features, rel=0.05)
        assert torch.count_nonzero(layer.bias) == 0
    assert isinstance(model[2], torch.nn.Tanh)


def test_teacher_data_has_the_requested_outliers():
    from stability_bench.components.data import DATA

    ctx = BuildContext(0, torch.float64, torch.Generator().manual_seed(0))
    clean = DATA.get("teacher")(ctx, n=200, widths=[14, 8, 4])
    ctx = BuildContext(0, torch.float64, torch.Generator().manual_seed(0))
    dirty = DATA.get("teacher")(ctx, n=200, widths=[14, 8, 4], outliers=0.05, outlier_scale=10.0)
    changed = (clean.y != dirty.y).any(dim=1)
    assert changed.sum().item() == 10 and changed[:10].all()
    assert torch.equal(clean.x, dirty.x)


# --- the recorder: which gradient it reads, and when --------------------------------------


class HalvingGD(torch.optim.Optimizer):
    """GD that halves p.grad in place before using it, as clipping inside step() would."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.mul_(0.5)
                p.add_(p.grad, alpha=-group["lr"])


def test_an_optimizer_that_rewrites_p_grad_has_its_gradient_read_before_the_step():
    # HalvingGD with η = 0.5 on f = ½x² (λ = 1): x_{t+1} = (1 - η/2) x_t = 0.75 x_t, and the
    # gradient backward gives is x_t; read after the step it would be x_t / 2.
    case = quadratic_case(model={"kind": "quadratic", "eigenvalues": [1.0], "x0": 1.0}, steps=20,
                          optimizers={"halving": {"class": f"{__name__}:HalvingGD", "lr": 0.5}})
    result = stability_bench.run_case(case)[0]
    x = 0.75 ** np.arange(20)
    np.testing.assert_allclose(result.history["grad_norm"], x, rtol=1e-12)
    np.testing.assert_allclose(result.history["update_norm"], 0.25 * x, rtol=1e-12)


def test_the_recorder_reads_a_missing_gradient_as_zero():
    used = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = torch.optim.SGD([used, unused], lr=0.1)
    recorder = StepRecorder([used, unused], torch.float64, "cpu")
    for _ in range(2):
        optimizer.zero_grad()
        loss = 0.5 * used.pow(2).sum()
        loss.backward()
        assert unused.grad is None
        recorder.before_step(loss)
        optimizer.step()
    block = recorder.flush()
    # step 0: g = (3, 4), |g| = 5, update 0.5; step 1: g = 0.9 g, update 0.45
    np.testing.assert_allclose(block, [[12.5, 5.0, 0.5], [12.5 * 0.81, 4.5, 0.45]], rtol=1e-12)


def test_a_block_holding_infinite_parameters_flushes_without_numpy_warnings():
    # A diverged block may hold +inf in consecutive parameter rows: inf - inf is nan, and numpy
    # would warn about it (and about squares overflowing) in the user's output.
    p = torch.nn.Parameter(torch.tensor([math.inf, 1e200], dtype=torch.float64))
    recorder = StepRecorder([p], torch.float64, "cpu")
    for _ in range(3):  # no optimizer: the parameters stay as they are
        p.grad = None
        loss = p.sum()
        loss.backward()
        recorder.before_step(loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block = recorder.flush()
    assert np.isinf(block[:, 0]).all() and np.isnan(block[:, 2]).all()


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 8])
def test_row_norms_are_float64_norms_of_the_float32_rows_in_any_chunking(chunk_rows):
    # float32 entries of 1e-30 square to 1e-60, below float32's range: the norm must still be
    # the float64 norm of the stored values (and of their exact differences).
    from stability_bench.runner import _row_norms

    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((5, 7)) * np.logspace(-30, 3, 5)[:, None]).astype(np.float32)
    minus = (rows * 0.5).astype(np.float32)
    chunk = np.empty((chunk_rows, 7))
    exact = rows.astype(np.float64)
    np.testing.assert_allclose(_row_norms(rows, chunk), np.linalg.norm(exact, axis=1), rtol=1e-15)
    np.testing.assert_allclose(_row_norms(rows, chunk, minus=minus),
                               np.linalg.norm(exact - minus.astype(np.float64), axis=1), rtol=1e-15)
    assert (_row_norms(rows, chunk) > 0).all()
