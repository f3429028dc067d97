"""A probe declares what it needs and what it costs where it is registered (``declares`` in
stability_bench.probes.registry); validation and the cost estimate read that declaration."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from stability_bench.probes.registry import NEEDS, PROBES, declares, probe_hvps_per_step


def test_every_built_in_probe_declares_its_needs_from_the_known_ones():
    for name in PROBES.names():
        assert getattr(PROBES.get(name), "needs", frozenset()) <= NEEDS.keys(), name
    with pytest.raises(ValueError, match="unknown need 'precondtioner'"):
        declares(needs={"precondtioner"})


def test_a_runs_cost_reads_the_hvps_its_probes_declare():
    """Lanczos probes declare up to max_iter HVPs each, directional_curvature two, the others
    none; a run's cost in steps adds them (an HVP ~ two steps) at every probe step."""
    from stability_bench import costs

    section = {"every": 10, "max_iter": 7, "sharpness": {"k": 2}, "precond_sharpness": {}, "grad_alignment": {},
               "threshold": {}, "second_moment_ratio": {}, "second_moment_mean": {}}
    assert probe_hvps_per_step(section) == pytest.approx(21 / 10)
    assert probe_hvps_per_step({"directional_curvature": {}}) == pytest.approx(2 / 10)   # every's default
    assert probe_hvps_per_step({"sharpness": {}}) == pytest.approx(30 / 10)  # max_iter's default
    spec = SimpleNamespace(case=SimpleNamespace(steps=100, probes=section), optimizer=SimpleNamespace(key="adam"))
    assert costs._step_equivalents(spec) == pytest.approx(100 + 100 / 10 * 21 * 2)


def test_a_runs_cost_counts_the_probes_its_optimizer_takes_at_their_own_schedules():
    """``optimizers:`` under a probe: the entries named take it (a mapping: with their own
    options); each probe's HVPs count once per its own ``every``."""
    from stability_bench import costs

    section = {"every": 10, "sharpness": {"every": 50, "optimizers": ["adam"]},
               "precond_sharpness": {"optimizers": {"adam": {}, "control": {"every": 20}}},
               "directional_curvature": {}}
    assert probe_hvps_per_step(section, "other") == pytest.approx(2 / 10)
    assert probe_hvps_per_step(section, "adam") == pytest.approx(30 / 50 + 30 / 10 + 2 / 10)
    assert probe_hvps_per_step(section, "control") == pytest.approx(30 / 20 + 2 / 10)
    spec = SimpleNamespace(case=SimpleNamespace(steps=100, probes=section), optimizer=SimpleNamespace(key="control"))
    assert costs._step_equivalents(spec) == pytest.approx(100 + 100 * (30 / 20 + 2 / 10) * 2)
