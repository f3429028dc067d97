"""Curvature metrics on hand-made probe columns with known answers (Xiong et al.'s per-spike
figures: tests/test_xiong_metrics.py)."""
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
                 "spike_lead_time", "sharpness_rise", "min_g2_over_v", "v_decay_rate"):
        assert m[name] is None


def test_sharpness_rise_is_last_over_first_in_the_late_window():
    steps = np.arange(0, 100, 10)
    sharp = np.linspace(10, 100, 10)  # late rows: steps 50..90 → 60 … 100
    m = compute_metrics(view(np.ones(100), {"step": steps, "sharpness": sharp}))
    assert math.isclose(m["sharpness_rise"], 100 / 60)
