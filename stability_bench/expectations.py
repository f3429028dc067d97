"""Expectations: a case's ``expect:`` bounds checked against a run's metrics.

A bound is a number, a theory reference (``threshold``: the optimizer's stability
threshold; ``predicted_diverged``: whether theory says the run must diverge), or a scaled
reference ``{of: threshold, times: 0.8}``. Comparators live in a registry.

One expectation is not a metric: ``parity: {with: <optimizer>, rtol, atol}`` says that
this run tracks the run of another optimizer of the case (same seed, device and matching
sweep point) step for step; see ``check_parity``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from stability_bench.registry import Registry

from stability_bench.results import RunResult
from stability_bench.types import Case, Expectation

COMPARATORS: Registry = Registry("comparator")

# What a bound may refer to, and what each means (keys of RunResult.theory).
THEORY_REFERENCES = {
    "threshold": "the optimizer's stability threshold on a quadratic at this run's hyperparameters",
    "sharpness": "the model's known λ₁(H) (quadratic models)",
    "predicted_diverged": "theory's verdict: sharpness > threshold",
    "batches_per_epoch": "optimizer steps per pass over the data (the small-last-batch spike period)",
}


def _ordered(name: str, test: Callable[[float, float], bool]) -> None:
    def compare(value: Any, bound: Any) -> bool:
        return value is not None and bound is not None and test(float(value), float(bound))

    COMPARATORS.register(name, compare)


_ordered("below", lambda v, b: v < b)
_ordered("above", lambda v, b: v > b)
_ordered("at_most", lambda v, b: v <= b)
_ordered("at_least", lambda v, b: v >= b)


@COMPARATORS.register("between")
def _between(value: Any, bound: Any) -> bool:
    low, high = bound
    return value is not None and None not in (low, high) and float(low) <= float(value) <= float(high)


@COMPARATORS.register("equals")
def _equals(value: Any, bound: Any) -> bool:
    if isinstance(bound, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.isclose(value, bound, rel_tol=1e-9, abs_tol=0.0)
    return value == bound


@dataclass
class Outcome:
    """One expectation checked against one run: what was measured and whether it held."""

    optimizer: str
    metric: str
    comparator: str
    bound: Any            # as written
    resolved_bound: Any   # with theory references replaced by numbers
    value: Any
    passed: bool
    where: str            # file:line of the expectation

    def describe(self) -> str:
        bound = self.bound if self.bound == self.resolved_bound else f"{self.bound} = {self.resolved_bound}"
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.where}: expect {self.optimizer}.{self.metric} {self.comparator} {bound}: "
                f"measured {_fmt(self.value)} — {verdict}")

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def resolve_bound(bound: Any, theory: dict) -> Any:
    """Replace theory references in a bound by this run's numbers (None if unknown)."""
    if isinstance(bound, str):
        return theory.get(bound)
    if isinstance(bound, dict):
        base = theory.get(bound["of"])
        return None if base is None else float(bound["times"]) * base
    if isinstance(bound, list):
        return [resolve_bound(b, theory) for b in bound]
    return bound


def check(expectation: "Expectation", result: "RunResult", case: "Case",
          runs: Mapping[str, "RunResult"] | None = None, missing: Mapping[str, str] | None = None) -> Outcome:
    if expectation.metric == PARITY:
        return check_parity(expectation, result, case, runs or {}, missing or {})
    value = result.metrics.get(expectation.metric)
    resolved = resolve_bound(expectation.bound, result.theory)
    passed = bool(COMPARATORS.get(expectation.comparator)(value, resolved))
    return Outcome(expectation.optimizer, expectation.metric, expectation.comparator,
                   expectation.bound, resolved, value, passed, case.where(expectation.path))


def check_run(case: "Case", result: "RunResult", runs: Mapping[str, "RunResult"] | None = None,
              missing: Mapping[str, str] | None = None) -> list[Outcome]:
    """Every expectation of ``case`` that applies to ``result``'s optimizer. Pure: it never
    trains. A ``parity`` expectation reads its partner's run from ``runs`` (run id →
    result; the orchestrator plans partners as dependencies); ``missing`` says why a
    partner has no result."""
    return [check(e, result, case, runs, missing) for e in case.expectations if e.optimizer == result.optimizer]


# ---- parity: this run tracks another optimizer's run step for step ---------------------------

PARITY = "parity"
PARITY_KEYS = {"with": "the optimizer (a key of the case's optimizers) whose run this one must track",
               "rtol": "relative tolerance per step and column (default 1e-6)",
               "atol": "absolute tolerance per step and column (default 0)"}
PARITY_DEFAULTS = {"rtol": 1e-6, "atol": 0.0}
PARITY_COLUMNS = ("loss", "grad_norm", "update_norm")


@dataclass
class ParityOutcome(Outcome):
    """A parity expectation checked: ``value`` is the first history step where a column
    departs beyond tolerance (None: the runs agree at every step); ``detail`` says how."""

    detail: str = ""

    def describe(self) -> str:
        b = self.resolved_bound
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.where}: expect {self.optimizer} to track {b['with']} (rtol {b['rtol']:g}, "
                f"atol {b['atol']:g}): {self.detail} — {verdict}")


def partner_point(case: "Case", params: dict, partner: str) -> dict:
    """The sweep point of ``partner`` that a run with hyperparameters ``params`` compares
    with: the one whose swept values equal this run's values of those hyperparameters (the
    schema has checked that there is one)."""
    spec = case.optimizers[partner]
    try:  # the partner's own value of each hyperparameter it sweeps, by lookup: no scan of its points
        return {**spec.fixed, **{name: spec.sweep_value(name, params[name]) for name in spec.sweeps}}
    except (KeyError, StopIteration):
        pass
    raise ValueError(f"{case.where()}: no run of {partner!r} matches hyperparameters {params} "
                     f"(its sweeps: {spec.sweeps})")


def partner_run_id(case: "Case", result: "RunResult", partner: str) -> str:
    """The run id of ``result``'s parity partner (same seed and device)."""
    from stability_bench.results import format_run_id

    spec = case.optimizers[partner]
    point = partner_point(case, result.params, partner)
    return format_run_id(case.name, partner, spec.label(point), result.seed, result.device)


def compare_histories(history: dict, partner: dict, rtol: float, atol: float) -> tuple[int | None, str]:
    """(first departing step or None, a sentence): column by column, step by step,
    |value - partner| <= atol + rtol*|partner| (numpy.isclose; NaN equals NaN). Histories of
    different lengths (one run diverged earlier) depart where the shorter one ends."""
    import numpy as np

    n = min(len(history["loss"]), len(partner["loss"]))
    steps = history.get("step", list(range(n)))
    first, worst = None, (0.0, None, None)
    for column in PARITY_COLUMNS:
        a = np.asarray(history[column][:n], dtype=float)
        b = np.asarray(partner[column][:n], dtype=float)
        close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        bad = np.flatnonzero(~close)
        if bad.size and (first is None or bad[0] < first[0]):
            first = (int(bad[0]), [])
        if first is not None and bad.size and bad[0] == first[0]:
            first[1].append(f"{column} {a[bad[0]]:.9g} vs {b[bad[0]]:.9g}")
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(close & np.isfinite(a) & np.isfinite(b) & (b != 0), np.abs(a - b) / np.abs(b), 0.0)
        if rel.size and rel.max() > worst[0]:
            worst = (float(rel.max()), column, int(np.argmax(rel)))
    if first is not None:
        step = int(steps[first[0]])
        return step, f"departs first at step {step}: " + ", ".join(first[1])
    if len(history["loss"]) != len(partner["loss"]):
        return n, (f"agrees up to step {n - 1}, then the partner's run has {len(partner['loss'])} steps "
                   f"and this one {len(history['loss'])} (one diverged earlier)")
    largest = (f"largest relative difference {worst[0]:.2g} ({worst[1]}, step {int(steps[worst[2]])})"
               if worst[1] else "identical")
    return None, f"agrees at all {n} steps; {largest}"


def check_parity(expectation: "Expectation", result: "RunResult", case: "Case",
                 runs: Mapping[str, "RunResult"], missing: Mapping[str, str]) -> ParityOutcome:
    """Compare the histories of ``result`` and its partner's run, looked up in ``runs``; a
    partner that did not run (``missing``: run id → why) fails the expectation, saying why."""
    bound = {**PARITY_DEFAULTS, **expectation.bound}
    partner_id = partner_run_id(case, result, bound["with"])
    if partner_id in runs:
        step, detail = compare_histories(result.history, runs[partner_id].history,
                                         float(bound["rtol"]), float(bound["atol"]))
        passed = step is None
    else:
        step, passed = None, False
        detail = f"no result to compare with: {missing.get(partner_id, 'the partner run was not planned')}"
    return ParityOutcome(expectation.optimizer, expectation.metric, expectation.comparator,
                         expectation.bound, bound, step, passed, case.where(expectation.path),
                         detail=f"{detail} (against {partner_id})")
