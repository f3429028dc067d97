"""What a validated case asks of theory that theory cannot give its optimizers — said at
validation, before anything runs, from the optimizer classes alone (no instance).

- :func:`theory_problems` — errors: an expectation whose bound refers to ``threshold`` or
  ``predicted_diverged`` (also ``{of: threshold}``) for an optimizer (at some sweep point)
  whose stability threshold is unknown. Such a bound would resolve to None and the
  expectation could only fail; the schema raises these as a ``CaseError``.
- :func:`case_warnings` — warnings, ``file:line: key: message``: a probe that needs P, v or
  the threshold (as it declares where it is registered: ``declares`` in
  :mod:`stability_bench.probes.registry`) for an optimizer that lacks it, and an expectation
  on a metric computed from the threshold. The run still records NaN with the reason.
"""
from __future__ import annotations

from typing import Any, Callable

from stability_bench.metrics import METRICS, probe_columns
from stability_bench.optimizers.thresholds import threshold_status
from stability_bench.types import Case, OptimizerSpec
from stability_bench.yamlsource import Problem, dotted

__all__ = ["theory_problems", "case_warnings"]

THEORY_BOUNDS = ("threshold", "predicted_diverged")


def _refers_to_theory(bound: Any) -> str | None:
    """The theory reference in a bound (``threshold``, ``predicted_diverged``), if any."""
    if isinstance(bound, str) and bound in THEORY_BOUNDS:
        return bound
    if isinstance(bound, dict) and bound.get("of") in THEORY_BOUNDS:
        return bound["of"]
    if isinstance(bound, list):
        return next((r for r in map(_refers_to_theory, bound) if r), None)
    return None


def _unknown_at(spec: "OptimizerSpec", status: Callable[[type, dict], str | None]) -> str | None:
    """The first reason ``status`` gives over the optimizer's sweep points, naming the point
    when the optimizer sweeps (the reason may hold at some points only). A sweep of more
    than a few thousand points is not expanded: each swept value is checked once."""
    if spec.cls is None:   # not in this torch (``min_torch``): its runs are skipped, nothing to read
        return None
    for point in spec.points_to_check():
        reason = status(spec.cls, point)
        if reason:
            label = spec.label(point)
            return f"{reason} (at {label})" if label else reason
    return None


def theory_problems(case: "Case") -> list["Problem"]:
    """Errors: bounds that refer to a threshold the optimizer does not have."""
    problems = []
    for e in case.expectations:
        reference = _refers_to_theory(e.bound)
        spec = case.optimizers.get(e.optimizer)
        if reference is None or spec is None:
            continue
        reason = _unknown_at(spec, threshold_status)
        if reason:
            problems.append(Problem(e.path, f"the bound refers to {reference!r}, but the stability threshold of "
                                            f"{spec.class_name} is unknown: {reason}"))
    return problems


def case_warnings(case: "Case") -> list[str]:
    """Warnings, each ``file:line: key: message``: probes and metrics that will be NaN (or
    None) for some optimizer, with the reason."""
    out = []

    def warn(path: tuple, message: str) -> None:
        out.append(f"{case.where(path)}: {dotted(path)}: {message}")

    from stability_bench.probes.registry import PLAN_OPTIONS, probe_needs, probes_for

    taken = {key: probes_for(case.probes, key) for key in case.optimizers}   # a probe's ``optimizers:``
    for probe in case.probes:
        if probe in PLAN_OPTIONS:
            continue
        for needs, status in probe_needs(probe):  # what the probe declares (``declares``)
            for key, spec in case.optimizers.items():
                if probe not in taken[key]:
                    continue
                reason = _unknown_at(spec, status)
                if reason:
                    warn(("probes", probe), f"needs {needs}, unknown for optimizer {key!r} ({spec.class_name}): "
                                            f"{reason}; its runs record NaN with that reason")
    for e in case.expectations:
        spec = case.optimizers.get(e.optimizer)
        if spec is not None and e.metric in METRICS and "threshold" in probe_columns(e.metric):
            reason = _unknown_at(spec, threshold_status)
            if reason:
                warn(e.path, f"{e.metric} is computed from the stability threshold, unknown for "
                             f"{spec.class_name}: {reason}; it will be None")
    return out
