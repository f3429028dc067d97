"""An expectation on a figure computed from probe columns, in a case whose probes do not
record them, is refused at validation (CLI and pytest collection alike), at the metric's
key, naming the probe to add — not left to fail at run time with ``measured None``. Which
figure needs which probe is declared once (``reads_probes`` on the metric, ``records`` on
the probe); the last tests check those declarations against what the code really reads
and records."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from casefiles import line_of
import stability_bench
from prewarmed import run_module
from stability_bench.metrics import METRICS, RunView, SpikeConfig, probe_columns
from stability_bench.probes.registry import PROBES, probes_recording
from stability_bench.schema import CaseError, load_case

DATA = Path(__file__).parent / "data" / "unprobed"
ROOT = Path(__file__).resolve().parent.parent


def test_a_probe_figure_without_any_probes_is_an_error_naming_file_line_key_and_probes():
    path = DATA / "no_probes.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    [line] = str(info.value).splitlines()   # final_loss needs no probe
    assert line.startswith(f"{path}:{line_of(path, 'precond_sharpness_ratio')}: "
                           f"expect.adam.precond_sharpness_ratio: "), line
    assert "precond_sharpness: {}" in line and "threshold: {}" in line and "probes:" in line


def test_only_the_figures_whose_probes_are_missing_are_errors_each_naming_its_probe():
    path = DATA / "partial_probes.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines   # sharpness_rise: its sharpness probe is declared
    crossings, decay = lines
    assert crossings.startswith(f"{path}:{line_of(path, 'threshold_crossings:')}: expect.adam.threshold_crossings: ")
    assert "threshold: {}" in crossings and "precond_sharpness: {}" not in crossings   # that one is declared
    assert decay.startswith(f"{path}:{line_of(path, 'v_decay_rate:')}: expect.adam.v_decay_rate: ")
    assert "second_moment_mean: {}" in decay


def test_validate_and_pytest_refuse_it_before_training(tmp_path):
    """The CLI's validate (exit 2, one located line per problem, no traceback) and pytest's
    collection (an error of the file, located) — both in new processes, as a user runs them
    (forked from a pre-warmed interpreter: tests/prewarmed.py)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    path = DATA / "no_probes.yaml"
    done = run_module(["-m", "stability_bench.cli", "validate", str(path)], Path.cwd(), env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{path}:{line_of(path, 'precond_sharpness_ratio')}: expect.adam.precond_sharpness_ratio:" in done.stderr
    assert "Traceback" not in done.stderr
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / path.name).write_bytes(path.read_bytes())
    done = run_module(["-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-n0", "--rootdir", str(tmp_path),
                       "cases"], tmp_path, env, timeout=120)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout   # a collection error
    assert f"no_probes.yaml:{line_of(path, 'precond_sharpness_ratio')}: expect.adam.precond_sharpness_ratio:" \
        in done.stdout, done.stdout


def test_every_probe_figure_with_its_probes_validates_and_its_probes_record_what_they_declare():
    """All probe figures with their probes: valid; a short run records, per probe column,
    only columns some probe declares, and every column a figure reads."""
    case = load_case(DATA / "all_probed.yaml")
    assert {e.metric for e in case.expectations} == {m for m in METRICS.names() if probe_columns(m)}
    (result,) = stability_bench.run_case(case, devices=["cpu"], seeds=[0])
    recorded = set(result.probes) - {"step"}
    declared = {c for name in PROBES.names() for c in getattr(PROBES.get(name), "columns", ())}
    assert recorded <= declared, recorded - declared
    assert {c for m in METRICS.names() for c in probe_columns(m)} <= recorded


class Reads(dict):
    """Probe columns that remember which of them a metric looked at."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def test_each_metric_declares_exactly_the_probe_columns_it_reads():
    """On a history with a spike and every probe column, a metric looks at the columns it
    declares and no other (a metric that declares none reads none)."""
    loss = np.ones(200)
    loss[120] = 100.0   # one spike, so the per-spike figures read their columns
    steps = np.arange(0, 200, 5)
    every = {c for name in PROBES.names() for c in getattr(PROBES.get(name), "columns", ())}
    for name in METRICS.names():
        columns = Reads({c: np.linspace(1.0, 2.0, steps.size) for c in every} | {"step": steps})
        view = RunView(loss=loss, steps=np.arange(loss.size), diverged=False, divergence_step=None,
                       total_steps=loss.size, spike_config=SpikeConfig(), extra={"probes": columns})
        METRICS.get(name)(view)
        assert columns.read - {"step"} == set(probe_columns(name)), name
        assert all(probes_recording(c) for c in probe_columns(name)), name   # some probe records each


def test_late_instability_of_a_float32_loss_that_reaches_exactly_zero_is_measured_from_its_smallest_positive_loss():
    """float32 Adam-like history: falls geometrically through the subnormals to exactly 0,
    stays there, then climbs back to 1e-3. The rise is counted from the smallest positive
    loss recorded (a float32 subnormal), not from float64's 1e-308."""
    falling = (10.0 ** np.linspace(0.0, -50.0, 300)).astype(np.float32)   # underflows to 0 below ~1.4e-45
    rising = (10.0 ** np.linspace(-40.0, -3.0, 200)).astype(np.float32)
    loss = np.concatenate([falling, np.zeros(50, np.float32), rising]).astype(np.float64)
    assert loss.min() == 0.0
    smallest_positive = float(np.min(loss[loss > 0]))
    assert smallest_positive < np.finfo(np.float32).tiny   # a subnormal float32
    view = RunView(loss=loss, steps=np.arange(loss.size), diverged=False, divergence_step=None,
                   total_steps=loss.size)
    value = METRICS.get("late_instability")(view)
    assert math.isfinite(value)
    assert value == pytest.approx(math.log10(1e-3 / smallest_positive), rel=1e-6)
    assert 40 < value < 50   # not the ~305 decades of a float64 floor


@pytest.mark.parametrize("loss, expected", [
    ([1.0, 0.0, 0.0], 0.0),              # stays at 0: no rise
    ([0.0, 0.0], 0.0),                   # no positive loss at all
    ([1.0, 1e-6, 0.0, 1e-2], 4.0),       # from the smallest positive, 1e-6, up to 1e-2
    ([1.0, 0.0, 1e-5, 1e-2], 3.0),       # the smallest positive may come after the zero
    ([1.0, 1e-3, 1e-1], 2.0),            # no zero: the ratio to the minimum, as before
])
def test_late_instability_around_an_exact_zero(loss, expected):
    view = RunView(loss=np.asarray(loss), steps=np.arange(len(loss)), diverged=False, divergence_step=None,
                   total_steps=len(loss))
    assert METRICS.get("late_instability")(view) == pytest.approx(expected, abs=1e-12)
