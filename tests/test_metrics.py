"""Tests for stability_bench.metrics: hand-made loss curves whose answers are derived by hand."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stability_bench.metrics import (
    LOSS_FLOOR,
    METRICS,
    RunView,
    SpikeConfig,
    compute_metrics,
    detect_spikes,
    spike_period_from_onsets,
)
from stability_bench.registry import UnknownNameError

BUILTIN = {
    "final_loss",
    "min_loss",
    "min_loss_step",
    "diverged",
    "divergence_step",
    "late_instability",
    "spike_count",
    "spike_frequency",
    "spike_period",
}


def view(loss, steps=None, diverged=False, divergence_step=None, total_steps=None, config=None):
    loss = np.asarray(loss, dtype=np.float64)
    steps = np.arange(loss.size) if steps is None else steps
    return RunView(
        loss=loss,
        steps=np.asarray(steps),
        diverged=diverged,
        divergence_step=divergence_step,
        total_steps=loss.size if total_steps is None else total_steps,
        extra={},
        spike_config=config or SpikeConfig(),
    )


def noisy_decreasing(n: int, seed: int = 0) -> np.ndarray:
    """10*exp(-t/1500) + 0.5, times seeded uniform noise in [0.9, 1.1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (10.0 * np.exp(-t / 1500.0) + 0.5) * rng.uniform(0.9, 1.1, n)


def with_spikes(loss: np.ndarray, positions, height: float = 10.0) -> np.ndarray:
    out = loss.copy()
    out[list(positions)] *= height
    return out


def assert_json_safe(metrics: dict) -> None:
    json.dumps(metrics, allow_nan=False)
    for v in metrics.values():
        assert v is None or type(v) in (bool, int, float)


# ------------------------------------------------------------------------------------------
# Basic curves
# ------------------------------------------------------------------------------------------


def test_builtin_names_registered():
    assert BUILTIN <= set(METRICS.names())
    assert BUILTIN <= set(compute_metrics(view([1.0, 0.5])))


def test_monotone_decreasing():
    n = 1000
    loss = 1.0 / (1.0 + np.arange(n))  # 1, 1/2, ..., 1/1000
    m = compute_metrics(view(loss))
    assert m["late_instability"] == 0.0
    assert m["spike_count"] == 0
    assert m["spike_frequency"] == 0.0
    assert m["spike_period"] is None
    assert m["min_loss_step"] == n - 1
    assert m["min_loss"] == pytest.approx(1.0 / n)
    assert m["final_loss"] == pytest.approx(1.0 / n)
    assert m["diverged"] is False and m["divergence_step"] is None
    assert_json_safe(m)


def test_late_instability_nine_decades():
    # 1 -> 1e-12 geometrically over steps 0..300, then 1e-12 -> 1e-3 geometrically by step 5000.
    t = np.arange(5001)
    log_loss = np.where(t <= 300, -12.0 * t / 300.0, -12.0 + 9.0 * (t - 300) / 4700.0)
    loss = 10.0 ** log_loss
    m = compute_metrics(view(loss))
    assert m["min_loss_step"] == 300
    assert m["min_loss"] == pytest.approx(1e-12)
    assert m["late_instability"] == pytest.approx(9.0, abs=1e-9)
    assert m["final_loss"] == pytest.approx(1e-3)
    assert m["spike_count"] == 0  # a smooth geometric rise (x1.0044 per step) is not a spike


def test_min_loss_step_reads_steps_and_first_minimum():
    loss = [3.0, 1.0, 2.0, 1.0, 4.0]
    m = compute_metrics(view(loss, steps=[0, 10, 20, 30, 40]))
    assert m["min_loss_step"] == 10  # first of the two minima, as a step number
    assert m["late_instability"] == pytest.approx(math.log10(4.0))


def test_late_instability_zero_minimum_counts_from_the_smallest_positive_loss():
    # 1 -> 0 -> 1: the smallest positive loss is 1, so no measurable rise (not log10(1/1e-308));
    # more cases, and a float32 underflow, in tests/test_unprobed_figures.py
    assert compute_metrics(view([1.0, 0.0, 1.0]))["late_instability"] == 0.0
    assert compute_metrics(view([1.0, 0.5, 0.0, 5.0]))["late_instability"] == pytest.approx(1.0)


def test_late_instability_negative_minimum_is_undefined():
    m = compute_metrics(view([1.0, -2.0, 0.5]))
    assert m["late_instability"] is None
    assert m["min_loss"] == -2.0
    assert_json_safe(m)


# ------------------------------------------------------------------------------------------
# Spike detection
# ------------------------------------------------------------------------------------------


def test_periodic_spikes_every_32_steps():
    n = 2000
    positions = list(range(40, n, 32))  # 40 + 32k for k = 0..61 (1992 < 2000): 62 spikes
    assert len(positions) == 62
    loss = with_spikes(noisy_decreasing(n, seed=1), positions)
    assert detect_spikes(loss, SpikeConfig()).tolist() == positions
    m = compute_metrics(view(loss))
    assert m["spike_count"] == 62
    assert m["spike_period"] == 32
    assert m["spike_frequency"] == pytest.approx(31.0)  # 1000 * 62 / 2000
    assert_json_safe(m)


@pytest.mark.parametrize("odd_gap", [31, 33])
def test_periodic_spikes_with_one_off_by_one_gap(odd_gap):
    n = 2000
    # 30 spikes 32 apart, then one gap of `odd_gap`, then 32 apart again.
    first = list(range(40, 40 + 32 * 30, 32))
    rest = list(range(first[-1] + odd_gap, n, 32))
    positions = first + rest
    gaps = np.diff(positions)
    assert sorted(set(gaps.tolist())) == sorted({32, odd_gap}) and (gaps == odd_gap).sum() == 1
    loss = with_spikes(noisy_decreasing(n, seed=2), positions)
    m = compute_metrics(view(loss))
    assert m["spike_count"] == len(positions)
    assert m["spike_period"] == 32


def test_spike_period_is_in_optimizer_steps():
    # History recorded every 10 optimizer steps, a spike every 4 records -> period 40 steps.
    n = 400
    positions = list(range(20, n, 4))
    loss = with_spikes(noisy_decreasing(n, seed=3), positions)
    m = compute_metrics(view(loss, steps=10 * np.arange(n)))
    assert m["spike_count"] == len(positions)
    assert m["spike_period"] == 40


def test_irregular_spikes_have_no_period():
    positions = [40, 65, 125, 166, 256, 289]  # gaps 25, 60, 41, 90, 33: no two within 1 step
    loss = with_spikes(noisy_decreasing(400, seed=4), positions)
    m = compute_metrics(view(loss))
    assert m["spike_count"] == 6
    assert m["spike_period"] is None


def test_fewer_than_three_spikes_have_no_period():
    loss = with_spikes(noisy_decreasing(400, seed=5), [100, 132])
    m = compute_metrics(view(loss))
    assert m["spike_count"] == 2
    assert m["spike_period"] is None


def test_spike_period_rules():
    assert spike_period_from_onsets([0, 32, 64]) == 32  # 2 equal gaps
    assert spike_period_from_onsets([0, 10, 60]) is None  # 2 different gaps
    assert spike_period_from_onsets([0, 32]) is None  # 1 gap
    assert spike_period_from_onsets([0, 32, 64, 95, 127, 160]) == 32  # 32, 32, 31, 32, 33
    assert spike_period_from_onsets([0, 32, 64, 70, 150]) == 32  # 32, 32 of 32, 32, 6, 80: half
    assert spike_period_from_onsets([0, 32, 38, 120, 210]) is None  # 32, 6, 82, 90: no repeat
    assert spike_period_from_onsets([0, 10, 20, 70, 120]) is None  # 10, 10, 50, 50: two periods
    assert spike_period_from_onsets([0, 10, 20, 30, 80, 130]) == 10  # 10 x3 beats 50 x2
    assert spike_period_from_onsets([0, 10, 21], tolerance=0) is None  # 10, 11 not grouped


def test_spike_lasting_several_steps_counts_once():
    loss = np.ones(120)
    loss[60:68] = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.5]  # all > 3 x baseline 1
    assert detect_spikes(loss, SpikeConfig()).tolist() == [60]
    assert compute_metrics(view(loss))["spike_count"] == 1


def test_jump_to_higher_plateau_counts_once():
    loss = np.concatenate([np.ones(50), np.full(100, 10.0)])
    assert detect_spikes(loss, SpikeConfig()).tolist() == [50]


def test_min_gap_merges_close_onsets():
    loss = np.ones(100)
    loss[[50, 53]] = 10.0  # two one-step spikes with a return to baseline between them
    assert detect_spikes(loss, SpikeConfig()).tolist() == [50, 53]
    assert detect_spikes(loss, SpikeConfig(min_gap=5)).tolist() == [50]
    assert detect_spikes(loss, SpikeConfig(min_gap=3)).tolist() == [50, 53]


def test_min_history_before_detection():
    flat = np.ones(40)
    early = flat.copy()
    early[9] = 10.0  # only 9 previous losses < W//2 = 10
    assert detect_spikes(early, SpikeConfig()).size == 0
    at_ten = flat.copy()
    at_ten[10] = 10.0  # 10 previous losses: detection starts
    assert detect_spikes(at_ten, SpikeConfig()).tolist() == [10]
    assert detect_spikes(early, SpikeConfig(min_history=5)).tolist() == [9]


def test_non_finite_entries_are_skipped_by_baseline_and_never_spikes():
    loss = np.ones(60)
    loss[[3, 8, 20]] = np.nan
    loss[25] = np.inf
    loss[40] = 10.0
    assert detect_spikes(loss, SpikeConfig()).tolist() == [40]
    # a non-finite entry inside an excursion neither ends it nor starts a new one
    loss2 = np.ones(60)
    loss2[30:36] = [10.0, 10.0, np.nan, 10.0, np.inf, 10.0]
    assert detect_spikes(loss2, SpikeConfig()).tolist() == [30]


def test_zero_baseline_is_never_a_spike():
    loss = np.concatenate([np.zeros(30), [1.0], np.zeros(10)])
    assert detect_spikes(loss, SpikeConfig()).size == 0


def test_factor_threshold_is_strict():
    loss = np.ones(40)
    loss[30] = 3.0  # exactly factor x baseline: not a spike
    assert detect_spikes(loss, SpikeConfig()).size == 0
    loss[30] = 3.0000001
    assert detect_spikes(loss, SpikeConfig()).tolist() == [30]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False),
)
def test_scale_invariance(seed, scale):
    rng = np.random.default_rng(seed)
    n = 600
    positions = np.sort(rng.choice(np.arange(30, n), size=8, replace=False))
    loss = with_spikes(noisy_decreasing(n, seed=seed), positions, height=rng.uniform(4.0, 50.0))
    base = detect_spikes(loss, SpikeConfig())
    assert base.size > 0
    assert detect_spikes(loss * scale, SpikeConfig()).tolist() == base.tolist()
    a, b = compute_metrics(view(loss)), compute_metrics(view(loss * scale))
    for k in ("spike_count", "spike_period", "spike_frequency", "min_loss_step"):
        assert a[k] == b[k]
    assert b["late_instability"] == pytest.approx(a["late_instability"], abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), offset=st.integers(0, 10**9))
def test_time_shift_invariance(seed, offset):
    n = 500
    positions = list(range(40, n, 32))
    loss = with_spikes(noisy_decreasing(n, seed=seed), positions)
    a = compute_metrics(view(loss))
    b = compute_metrics(view(loss, steps=np.arange(n) + offset))
    for k in ("spike_count", "spike_period", "spike_frequency", "late_instability", "final_loss"):
        assert a[k] == b[k]
    assert b["min_loss_step"] == a["min_loss_step"] + offset
    assert a["spike_count"] == len(positions) and a["spike_period"] == 32


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p=st.integers(10, 295))
def test_spike_found_wherever_it_is_placed(seed, p):
    rng = np.random.default_rng(seed)
    loss = rng.uniform(0.9, 1.1, 300)  # flat +-10 % noise
    loss[p] *= 10.0
    assert detect_spikes(loss, SpikeConfig()).tolist() == [p]


def test_detector_handles_50k_steps_quickly():
    n = 50_000
    loss = with_spikes(noisy_decreasing(n, seed=6), range(100, n, 7))
    detect_spikes(loss, SpikeConfig())  # warm-up
    start = time.perf_counter()
    onsets = detect_spikes(loss, SpikeConfig())
    elapsed = time.perf_counter() - start
    assert onsets.size == len(range(100, n, 7))
    assert elapsed < 1.0


# ------------------------------------------------------------------------------------------
# Divergence, degenerate histories, JSON
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_diverged_run(bad):
    # loss falls to 0.01 at step 50, climbs back to 1.0 at step 99, then blows up at step 100
    t = np.arange(101, dtype=float)
    loss = np.where(t <= 50, 10.0 ** (-2.0 * t / 50.0), 10.0 ** (-2.0 + 2.0 * (t - 50) / 49.0))
    loss[100] = bad
    m = compute_metrics(view(loss, diverged=True, divergence_step=100, total_steps=1000))
    assert m["diverged"] is True
    assert m["divergence_step"] == 100
    assert m["final_loss"] == pytest.approx(1.0)
    assert m["min_loss"] == pytest.approx(0.01)
    assert m["min_loss_step"] == 50
    assert m["late_instability"] == pytest.approx(2.0)  # over the finite part
    assert m["spike_count"] == 0  # the non-finite entry is divergence, not a spike
    assert m["spike_frequency"] == 0.0
    assert_json_safe(m)


def test_all_non_finite_history():
    m = compute_metrics(view([np.inf], diverged=True, divergence_step=0))
    assert m["final_loss"] is None and m["min_loss"] is None and m["min_loss_step"] is None
    assert m["late_instability"] is None
    assert m["spike_count"] == 0 and m["spike_period"] is None
    assert m["diverged"] is True and m["divergence_step"] == 0
    assert_json_safe(m)


def test_empty_history():
    m = compute_metrics(view([]))
    assert {k: m[k] for k in BUILTIN} == {
        "diverged": False,
        "divergence_step": None,
        "final_loss": None,
        "late_instability": None,
        "min_loss": None,
        "min_loss_step": None,
        "spike_count": 0,
        "spike_frequency": None,
        "spike_period": None,
    }
    assert_json_safe(m)


def test_one_step_history():
    m = compute_metrics(view([2.5], steps=[7]))
    assert m["final_loss"] == 2.5 and m["min_loss"] == 2.5 and m["min_loss_step"] == 7
    assert m["late_instability"] == 0.0
    assert m["spike_count"] == 0 and m["spike_frequency"] == 0.0 and m["spike_period"] is None
    assert_json_safe(m)


def test_runview_validates_lengths_and_coerces():
    v = view([1, 2, 3])
    assert v.loss.dtype == np.float64 and v.steps.dtype == np.int64
    with pytest.raises(ValueError):
        RunView(np.ones(3), np.arange(2), False, None, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"factor": 1.0}, {"factor": float("nan")}, {"window": 0}, {"min_gap": 0},
     {"min_history": 0}, {"min_history": 21}, {"period_tolerance": -1}],
)
def test_spike_config_validation(kwargs):
    with pytest.raises(ValueError):
        SpikeConfig(**kwargs)


# ------------------------------------------------------------------------------------------
# Registry / compute_metrics
# ------------------------------------------------------------------------------------------


@pytest.fixture
def temp_metric():
    added = []

    def register(name, fn):
        METRICS.register(name)(fn)  # the decorator form users write
        added.append(name)
        return fn

    yield register
    for name in added:
        METRICS._entries.pop(name, None)


def test_user_metric_appears_in_compute_metrics(temp_metric):
    def loss_range(v: RunView):
        finite = v.loss[np.isfinite(v.loss)]
        return np.float64(finite.max() - finite.min())

    temp_metric("test_only_loss_range", loss_range)  # METRICS.register + clean-up afterwards
    assert "test_only_loss_range" in METRICS
    m = compute_metrics(view([4.0, 1.0, 2.0]))
    assert m["test_only_loss_range"] == 3.0 and type(m["test_only_loss_range"]) is float
    assert BUILTIN <= set(m)
    assert compute_metrics(view([4.0, 1.0]), ["test_only_loss_range", "min_loss"]) == {
        "test_only_loss_range": 3.0,
        "min_loss": 1.0,
    }


def test_non_finite_metric_value_becomes_none(temp_metric):
    temp_metric("test_only_inf", lambda v: np.float64(np.inf))
    temp_metric("test_only_npint", lambda v: np.int32(3))
    temp_metric("test_only_npbool", lambda v: np.bool_(True))
    m = compute_metrics(view([1.0]), ["test_only_inf", "test_only_npint", "test_only_npbool"])
    assert m == {"test_only_inf": None, "test_only_npint": 3, "test_only_npbool": True}
    assert type(m["test_only_npint"]) is int and type(m["test_only_npbool"]) is bool
    assert_json_safe(m)


def test_bad_metric_return_type_and_unknown_name(temp_metric):
    temp_metric("test_only_str", lambda v: "oops")
    with pytest.raises(TypeError, match="test_only_str"):
        compute_metrics(view([1.0]), ["test_only_str"])
    with pytest.raises(UnknownNameError, match="spike_count"):
        compute_metrics(view([1.0]), ["spike_cont"])


def test_spike_config_field_types_are_real_types():
    # The case schema checks a case's `spikes:` mapping against fields(SpikeConfig)' types.
    from dataclasses import fields

    assert all(not isinstance(f.type, str) for f in fields(SpikeConfig))
    assert SpikeConfig() == SpikeConfig(window=20, factor=3.0, min_gap=1, min_history=None,
                                        period_tolerance=1)
    assert SpikeConfig().effective_min_history == 10
