"""Expectations: a case's ``expect:`` bounds checked against a run's metrics.

A bound is a number, a theory reference (``threshold``: the optimizer's stability
threshold; ``predicted_diverged``: whether theory says the run must diverge), or a scaled
reference ``{of: threshold, times: 0.8}``. Comparators live in a registry.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

from stability_bench.registry import Registry

if TYPE_CHECKING:  # imported for annotations only: the schema imports this module
    from stability_bench.results import RunResult
    from stability_bench.schema import Case, Expectation

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


def check(expectation: "Expectation", result: "RunResult", case: "Case") -> Outcome:
    value = result.metrics.get(expectation.metric)
    resolved = resolve_bound(expectation.bound, result.theory)
    passed = bool(COMPARATORS.get(expectation.comparator)(value, resolved))
    return Outcome(expectation.optimizer, expectation.metric, expectation.comparator,
                   expectation.bound, resolved, value, passed, case.where(expectation.path))


def check_run(case: "Case", result: "RunResult") -> list[Outcome]:
    """Every expectation of ``case`` that applies to ``result``'s optimizer."""
    return [check(e, result, case) for e in case.expectations if e.optimizer == result.optimizer]
