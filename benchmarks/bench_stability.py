"""Stability figures of the shipped cases as asv ``track_*`` benchmarks.

Each figure is computed by the same runner pytest uses (``stability_bench.runner.plan_runs``
and ``execute``) and the same metrics; nothing here re-implements training or a metric.
asv treats a lower value as better for every benchmark type, so each figure is chosen to
be non-negative with lower = more stable:

* ``StabilityTracks.track_spike_frequency``: the ``spike_frequency`` metric, in
  spikes/1000 steps;
* ``StabilityTracks.track_late_instability``: the ``late_instability`` metric, in decades;
* ``StabilityTracks.track_divergence``: steps lost to divergence, ``steps −
  divergence_step`` if the run diverged, else 0, in steps;
* ``PrecondSharpness.track_ratio_distance``: abs(``precond_sharpness_ratio`` − 1), the
  distance of λ₁(P⁻¹H)/threshold from 1, in |ratio − 1|.

The parameter ``run`` is a run of a case without its seed and device,
``case::optimizer[sweep point]`` (e.g. ``quadratic_half_x2::gd[lr=2.1]``): one value per
case, optimizer entry and sweep point.
"""
from __future__ import annotations

import importlib
import math

from . import SEED, run_label, shipped_cases, single_thread_on_cpu, with_data_dir

# Cases whose runs the loss-based tracks leave out, and why (the docstring of
# StabilityTracks repeats this). They are still timed in bench_speed.
LOSS_TRACKS_SKIP = {
    "cifar_fc": "300 full-batch steps on 1000 CIFAR images with curvature probes take about "
                "a minute per run on one core, and its loss figures are 0 by design (no "
                "spike, no rise, no divergence); the case is about curvature: its first run "
                "is tracked by PrecondSharpness",
}


def _track_specs():
    """(label, RunSpec) of every run the loss-based tracks follow: seed 0, CPU."""
    from stability_bench.plan import plan_runs

    return [(run_label(spec), spec) for case in shipped_cases() if case.name.split("/")[0] not in LOSS_TRACKS_SKIP
            for spec in plan_runs(case, devices=["cpu"], seeds=[SEED])]


def _precond_specs():
    """The first run (first optimizer entry, first sweep point; seed 0, CPU) of each case
    declaring both the ``precond_sharpness`` and ``threshold`` probes."""
    from stability_bench.plan import plan_runs

    return [(run_label(spec), spec) for case in shipped_cases()
            if {"precond_sharpness", "threshold"} <= set(case.probes)
            for spec in plan_runs(with_data_dir(case), devices=["cpu"], seeds=[SEED])[:1]]


def _figures(result) -> dict:
    m = result.metrics
    nan = float("nan")
    lost = result.steps - result.divergence_step if result.diverged else 0
    ratio = m.get("precond_sharpness_ratio")
    return {"spike_frequency": nan if m.get("spike_frequency") is None else float(m["spike_frequency"]),
            "late_instability": nan if m.get("late_instability") is None else float(m["late_instability"]),
            "divergence": float(lost),
            "precond_ratio_distance": nan if ratio is None else abs(float(ratio) - 1.0)}


def _execute_all(specs) -> dict:
    """label → figures, or label → the reason the run could not be built."""
    from stability_bench.components.cifar10 import DataNotFoundError
    from stability_bench.runner import RunSetupError, execute

    out = {}
    for label, spec in specs:
        try:
            out[label] = _figures(execute(spec))
        except (RunSetupError, DataNotFoundError) as exc:
            out[label] = f"cannot build {spec.run_id}: {exc}"
    return out


def setup_cache():
    """Every run both classes follow, executed once per environment and commit (seed 0,
    CPU, one intra-op thread), as label → figures; shared by StabilityTracks and
    PrecondSharpness (neither defines its own ``setup_cache``), so a run in both is
    trained once. One thread: on a shared 2-core machine two OpenMP threads waiting for
    a busy core made runs up to 20× slower; the figures of the shipped CPU runs came out
    bit-identical with one thread, except cifar_fc's in the last digits."""
    single_thread_on_cpu("cpu")
    specs = dict(_track_specs())
    specs.update(_precond_specs())
    return _execute_all(specs.items())


setup_cache.timeout = 1800  # ~1.5 min of training on 2 idle cores today; generous for loaded CI


def _lookup(cache: dict, run: str, figure: str) -> float:
    entry = cache.get(run)
    if entry is None:
        raise NotImplementedError(f"no run {run!r} in this checkout's cases")
    if isinstance(entry, str):
        raise NotImplementedError(entry)
    value = entry[figure]
    if math.isnan(value):
        raise NotImplementedError(f"{figure} is undefined for {run}")
    return value


class StabilityTracks:
    """Spike frequency, late-convergence instability and divergence of every run of the
    shipped cases — by ``runner.execute``, as pytest runs them.

    Shortened for speed, figures unchanged in meaning: **seed 0 only** (the cases ship
    three seeds for their pytest expectations; on the CPU a seeded run is bit-identical
    from run to run, so one seed is an exact regression signal, with no noise), **CPU
    only**, ``slow`` cases left out, and ``cifar_fc`` left out (see ``LOSS_TRACKS_SKIP``).
    Every run executes once per environment and commit, in the module's ``setup_cache``;
    the track methods only read its figures.
    """

    params = [[label for label, _ in _track_specs()]]
    param_names = ["run"]
    timeout = 60

    def setup(self, cache, run):
        _lookup(cache, run, "divergence")

    def track_spike_frequency(self, cache, run):
        """Loss spike onsets per 1000 recorded steps (the metrics' spike detector)."""
        return _lookup(cache, run, "spike_frequency")

    track_spike_frequency.unit = "spikes/1000 steps"

    def track_late_instability(self, cache, run):
        """log10(max loss after the minimum / minimum loss): decades climbed back."""
        return _lookup(cache, run, "late_instability")

    track_late_instability.unit = "decades"

    def track_divergence(self, cache, run):
        """Steps lost to divergence: steps − divergence_step if the run diverged, else 0."""
        return _lookup(cache, run, "divergence")

    track_divergence.unit = "steps lost"


class PrecondSharpness:
    """How far the preconditioned sharpness λ₁(P⁻¹H) sits from the optimizer's stability
    threshold late in training: abs(``precond_sharpness_ratio`` − 1), 0 at the Adaptive
    Edge of Stability (Cohen et al. 2022), with the case's own probe schedule.

    Shortened for speed: the **first run of each case** that declares the
    ``precond_sharpness`` and ``threshold`` probes (its first optimizer entry at its first
    sweep point; seed 0, CPU, full length): ``cifar_fc::adam[lr=0.0001]`` and
    ``xiong_adam_spike::adam`` today. A cifar_fc run with probes takes about a minute on
    one core, so its other two runs are left to pytest's expectations. Skips while
    ``stability_bench.probes`` is not importable, and reads ``(no case declares the
    probes)`` when no shipped case declares them.
    """

    params = [[label for label, _ in _precond_specs()] or ["(no case declares the probes)"]]
    param_names = ["run"]
    timeout = 60

    def setup(self, cache, run):
        try:
            importlib.import_module("stability_bench.probes.registry")
        except ImportError as exc:
            raise NotImplementedError(f"stability_bench.probes is not importable: {exc}") from exc
        _lookup(cache, run, "precond_ratio_distance")

    def track_ratio_distance(self, cache, run):
        """abs(median late λ₁(P⁻¹H)/threshold − 1)."""
        return _lookup(cache, run, "precond_ratio_distance")

    track_ratio_distance.unit = "|ratio - 1|"


def _critical_specs():
    """(label ``case::optimizer``, case, optimizer key) of every ``critical_lr:`` entry of the
    shipped cases."""
    from stability_bench.critical_lr import specs

    return [(f"{case.name}::{key}", case, key) for case in shipped_cases() for key in specs(case)]


class CriticalLr:
    """The critical learning rate of each ``critical_lr:`` entry of the shipped cases (seed 0,
    CPU), as the margin it leaves below its bracket's top: log10(hi / critical lr), in
    decades. asv counts a higher value as worse, and a lower critical lr (less stability
    margin) raises it; it is never negative. An edge outside the bracket is reported as a
    skip with the search's reason, not as a number.
    """

    params = [[label for label, _, _ in _critical_specs()] or ["(no case declares critical_lr)"]]
    param_names = ["entry"]
    timeout = 60

    def setup_cache(self):
        from stability_bench.critical_lr import specs
        from stability_bench.orchestrate import find_critical_lr

        single_thread_on_cpu("cpu")
        out = {}
        for label, case, key in _critical_specs():
            found = find_critical_lr(case, key, SEED, "cpu")
            out[label] = (math.log10(specs(case)[key].hi / found.value) if found.value is not None
                          else found.reason)
        return out

    setup_cache.timeout = 900

    def setup(self, cache, entry):
        if not isinstance(cache.get(entry), float):
            raise NotImplementedError(cache.get(entry) or f"no critical_lr entry {entry!r}")

    def track_margin_lost(self, cache, entry):
        """log10(bracket top / critical lr): decades of learning rate below the bracket's top."""
        return cache[entry]

    track_margin_lost.unit = "decades"
