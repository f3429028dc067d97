"""Minibatch loss figures: the raw loss faint under a running median over one epoch; eval
losses drawn. The median is checked against values worked out by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stability_bench.reports.collect import ReportRun
from stability_bench.reports.figures import running_median, smoothing_window, training_figure
from stability_bench.plan import plan_runs
from stability_bench.runner import execute
from stability_bench.schema import load_case

pytest.importorskip("matplotlib")
CASE = Path(__file__).parent / "data" / "training" / "eval_minibatch.yaml"


def test_running_median_by_hand():
    values = np.array([1.0, 2.0, 100.0, 3.0, 4.0, np.nan, 5.0])
    # window 3, centred, non-finite ignored, ends shrink: medians of
    # {1,2}, {1,2,100}, {2,100,3}, {100,3,4}, {3,4}, {4,5}, {5}
    np.testing.assert_array_equal(running_median(values, 3), [1.5, 2.0, 3.0, 4.0, 3.5, 4.5, 5.0])


def test_a_single_spike_leaves_the_trend_line():
    trend = np.geomspace(1.0, 1e-2, 200)
    spiky = trend.copy()
    spiky[120] *= 50
    np.testing.assert_allclose(running_median(spiky, 9)[10:-10], running_median(trend, 9)[10:-10], rtol=0.03)


def test_minibatch_figure_draws_raw_faint_median_and_eval():
    result = execute(plan_runs(load_case(CASE))[0])
    run = ReportRun(result)
    assert smoothing_window(run) == 7  # 50 examples in batches of 8: 7 per epoch
    fig = training_figure([run])
    lines = fig.axes[0].get_lines()
    raw, median, evals = lines[0], lines[1], lines[2]
    assert raw.get_alpha() <= 0.3 < median.get_alpha()
    np.testing.assert_allclose(median.get_ydata(), running_median(np.array(result.history["loss"]), 7))
    np.testing.assert_allclose(evals.get_ydata(), result.evals["eval_loss"])
    assert "eval loss" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
