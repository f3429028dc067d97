"""Curvature metrics on hand-made probe columns with known answers."""
from __future__ import annotations

import math

import numpy as np

from stability_bench.metrics import RunView, SpikeConfig, compute_metrics


def view(loss, probes, **options) -> RunView:
    loss = np.asarray(loss, dtype=float)
    return RunView(loss=loss, steps=np.arange(len(loss)), diverged=False, divergence_step=None,
                   total_steps=len(loss), spike_config=SpikeConfig(),
                   extra={"probes": {k: np.asarray(v, dtype=float) for k, v in probes.items()},
                          "probe_options": options})


def test_precond_ratio_is_the_late_median_and_crossings_count_upward_passes():
    steps = np.arange(0, 100, 10)  # 10 probes; late window 0.5 of step 99 → steps ≥ 49.5
    ratio = np.array([0.2, 0.5, 0.9, 1.1, 0.95, 1.05, 0.98, 1.02, 1.00, 0.99])
    m = compute_metrics(view(np.ones(100), {"step": steps, "precond_sharpness": 38 * ratio,
                                            "threshold": np.full(10, 38.0)}, late_window=0.5))
    assert math.isclose(m["precond_sharpness_ratio"], np.median([1.05, 0.98, 1.02, 1.00, 0.99]))
    assert m["threshold_crossings"] == 3  # 0.9→1.1, 0.95→1.05, 0.98→1.02


def test_curvature_metrics_are_none_without_probes():
    m = compute_metrics(view(np.ones(50), {}))
    for name in ("precond_sharpness_ratio", "threshold_crossings", "spikes_led_by_crossing",
                 "spike_lead_time", "sharpness_rise", "min_g2_over_v"):
        assert m[name] is None


def test_spikes_led_by_a_threshold_crossing_and_the_lead_time():
    loss = np.full(200, 1e-6)
    loss[100] = 1e-2   # spike 1: crossing at step 90 → lead 10
    loss[170] = 1e-2   # spike 2: no crossing in the 50 steps before it
    steps = np.arange(0, 200, 5)
    lam = np.full(len(steps), 30.0)
    lam[steps == 90] = 40.0
    lam[steps == 95] = 41.0
    m = compute_metrics(view(loss, {"step": steps, "precond_sharpness": lam,
                                    "threshold": np.full(len(steps), 38.0)}, lead_window=50))
    assert m["spike_count"] == 2
    assert m["spikes_led_by_crossing"] == 0.5
    assert m["spike_lead_time"] == 10.0


def test_directional_curvature_alone_can_lead_a_spike():
    loss = np.full(100, 1.0)
    loss[60] = 100.0
    steps = np.arange(0, 100, 2)
    curvature = np.zeros(len(steps))
    curvature[steps == 56] = 50.0
    m = compute_metrics(view(loss, {"step": steps, "precond_directional_curvature": curvature,
                                    "threshold": np.full(len(steps), 38.0)}))
    assert m["spikes_led_by_crossing"] == 1.0 and m["spike_lead_time"] == 4.0


def test_sharpness_rise_and_min_g2_over_v():
    steps = np.arange(0, 100, 10)
    sharp = np.linspace(10, 100, 10)  # late rows: steps 50..90 → 55 … 100
    g2v = np.array([1, 0.5, 0.1, 1e-3, 1e-5, 1e-2, 1, 1, 1, 1])
    m = compute_metrics(view(np.ones(100), {"step": steps, "sharpness": sharp, "g2_over_v_median": g2v}))
    assert math.isclose(m["sharpness_rise"], 100 / 60)
    assert m["min_g2_over_v"] == 1e-5
