"""The critical learning rate: the largest learning rate at which a run does not diverge.

A case declares, per optimizer, a bracket and a relative precision::

    critical_lr:
      sgd: {bracket: [1.0e-4, 1.0e-2], rtol: 0.02}          # param: lr by default
      adam: {bracket: [1.0e-2, 10.0], steps: 300, divergence: {factor: 100.0},
             expect: {between: [1.0, 5.0]}}

The search (:class:`CriticalLrSearch`) trains nothing itself: it asks for batches of
learning rates and is told which diverged, so every probe is an ordinary run and a round
of k probes can run in parallel (k-section on a log scale). It first checks both edges
of the bracket (lo must be stable, hi must diverge), then narrows [stable, diverged]
until hi/lo <= 1 + rtol; the result is the stable end, within rtol of the true edge.
Where divergence is not monotone in the learning rate, the interval follows the lowest
diverged probe (the conservative edge). The orchestrator turns the
learning rates into runs: :func:`stability_bench.orchestrate.run_searches` drives every
search of a plan together, each round's probes trained like any other runs.

This module imports no torch at load time: the schema calls its validator.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from stability_bench.expectations import COMPARATORS, Outcome
from stability_bench.registry import nearest
from stability_bench.typecheck import arguments, type_problem, unknown_message
from stability_bench.types import DEFAULT_RTOL, Case, CriticalLrSpec, OptimizerSpec
from stability_bench.yamlsource import Problem


SECTION = "critical_lr"
# key → (type check, what it must be), for the validator's messages.
KEYS = {
    "bracket": "[lo, hi]: two learning rates, 0 < lo < hi",
    "rtol": "the relative precision of the result, a number in (0, 1) (default 0.02)",
    "param": "the hyperparameter searched (default lr)",
    "steps": "steps of each probe run (default: the case's steps), an integer >= 1",
    "divergence": "what counts as diverged for the search: {factor: F} or {max_loss: L} "
                  "(default: the case's divergence)",
    "expect": "{comparator: bound} on the critical learning rate, e.g. {between: [5.0e-4, 8.0e-4]}",
}




def specs(case: Case) -> dict[str, CriticalLrSpec]:
    """The case's validated ``critical_lr:`` entries, by optimizer key."""
    return case.critical_lr


# ------------------------------------------------------------------------------ search
@dataclass
class CriticalLr:
    """The outcome of a search. ``value`` is the largest learning rate found stable, within
    ``rtol`` of the edge (the edge lies in [lower, upper]); None with a ``reason`` when the
    bracket does not hold the edge. ``probes``: (lr, diverged) in the order reported."""

    value: float | None
    lower: float | None
    upper: float | None
    rtol: float
    reason: str | None = None
    probes: list[tuple[float, bool]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def probe_count(lo: float, hi: float, rtol: float = DEFAULT_RTOL, parallel: int = 1) -> int:
    """Probes a :class:`CriticalLrSearch` of [lo, hi] trains when the edge lies inside: the
    two edges, then ``parallel`` per round, each round dividing the bracket's log-width by
    ``parallel + 1``, until hi/lo ≤ 1 + rtol. (Schedulers use it to weigh a search.)"""
    if hi / lo <= 1 + rtol:
        return 2
    rounds = math.ceil(math.log(math.log(hi / lo) / math.log1p(rtol)) / math.log(parallel + 1) - 1e-12)
    return 2 + parallel * rounds


class CriticalLrSearch:
    """Log-scale k-section for the edge between stable and diverged learning rates.

    ``pending()`` lists the learning rates to run next (the two edges first, then ``parallel``
    interior points per round); ``report(lr, diverged)`` records each outcome; once a round
    is complete the next one is planned. ``done`` and ``result`` say when and what.
    """

    def __init__(self, lo: float, hi: float, rtol: float = DEFAULT_RTOL, parallel: int = 1):
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"the bracket must satisfy 0 < lo < hi, got [{lo!r}, {hi!r}]")
        if not 0 < rtol < 1:
            raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
        if parallel < 1:
            raise ValueError(f"parallel must be at least 1, got {parallel!r}")
        self.lo, self.hi, self.rtol, self.parallel = float(lo), float(hi), float(rtol), int(parallel)
        self._round: dict[float, bool | None] = {self.lo: None, self.hi: None}
        self._edges_checked = False
        self.probes: list[tuple[float, bool]] = []
        self.result: CriticalLr | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def pending(self) -> list[float]:
        """Learning rates asked for and not yet reported (all of one round: run them together)."""
        return [lr for lr, outcome in self._round.items() if outcome is None]

    def report(self, lr: float, diverged: bool) -> None:
        if lr not in self._round or self._round[lr] is not None:
            raise ValueError(f"learning rate {lr!r} was not asked for (pending: {self.pending()})")
        self._round[lr] = bool(diverged)
        self.probes.append((lr, bool(diverged)))
        if not self.pending():
            self._next_round()

    def _finish(self, value: float | None, reason: str | None = None) -> None:
        self._round = {}
        lower, upper = (self.lo, self.hi) if value is not None else (None, None)
        self.result = CriticalLr(value, lower, upper, self.rtol, reason, list(self.probes))

    def _next_round(self) -> None:
        outcomes = sorted(self._round.items())
        if not self._edges_checked:
            self._edges_checked = True
            if outcomes[0][1]:
                return self._finish(None, f"critical lr below the bracket: lr={self.lo:g} (lo) diverged")
            if not outcomes[-1][1]:
                return self._finish(None, f"critical lr above the bracket: lr={self.hi:g} (hi) did not diverge")
        else:
            first = next(i for i, (_, diverged) in enumerate(outcomes) if diverged)
            self.lo, self.hi = outcomes[first - 1][0], outcomes[first][0]
        if self.hi / self.lo <= 1 + self.rtol:
            return self._finish(self.lo)
        a, b = math.log(self.lo), math.log(self.hi)
        k = self.parallel
        inner = [math.exp(a + (b - a) * i / (k + 1)) for i in range(1, k + 1)]
        self._round = {self.lo: False, **{lr: None for lr in inner}, self.hi: True}


def check_critical_lr(case: "Case", optimizer_key: str, found: CriticalLr) -> list[Outcome]:
    """The ``expect:`` bounds of ``optimizer_key``'s critical_lr entry against ``found``;
    an unknown value (edge outside the bracket) fails with the reason in the message."""
    spec = specs(case)[optimizer_key]
    out = []
    for comparator, bound in spec.expect.items():
        where = case.where((SECTION, optimizer_key, "expect", comparator))
        passed = found.value is not None and bool(COMPARATORS.get(comparator)(found.value, bound))
        out.append(Outcome(optimizer_key, SECTION, comparator, bound, bound,
                           found.value if found.value is not None else found.reason, passed, where))
    return out


# ---------------------------------------------------------------------------- validator
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_section(raw: dict, got: dict, problems: list[Problem]) -> dict[str, CriticalLrSpec] | None:
    """The case's ``critical_lr:`` section (its validator in :data:`stability_bench.schema.SECTIONS`):
    each entry as a :class:`CriticalLrSpec`, defaults filled in; None with problems."""
    found = section_problems(raw.get(SECTION), got["optimizers"])
    problems += found
    if found:
        return None
    return {key: CriticalLrSpec(key, float(entry["bracket"][0]), float(entry["bracket"][1]),
                                float(entry.get("rtol", DEFAULT_RTOL)), entry.get("param", "lr"),
                                entry.get("steps"), entry.get("divergence"), dict(entry.get("expect") or {}))
            for key, entry in (raw.get(SECTION) or {}).items()}


def section_problems(section: Any, optimizers: dict[str, "OptimizerSpec"],
                     path: tuple = (SECTION,)) -> list[Problem]:
    """Problems of a case's ``critical_lr:`` section (None: no section), located by key path."""
    if section is None:
        return []
    if not isinstance(section, dict):
        return [Problem(path, f"critical_lr maps optimizer names to {{bracket: [lo, hi], rtol: ...}}, "
                              f"got {section!r}")]
    problems: list[Problem] = []
    for key, entry in section.items():
        at = path + (key,)
        if key not in optimizers:
            problems.append(Problem(at, unknown_message("optimizer", key, list(optimizers))))
            continue
        if not isinstance(entry, dict):
            problems.append(Problem(at, f"expected {{bracket: [lo, hi], rtol: ...}}, got {entry!r}"))
            continue
        for name in entry:
            if name not in KEYS:
                problems.append(Problem(at + (name,), unknown_message("critical_lr key", name, list(KEYS))))
        bracket = entry.get("bracket")
        if bracket is None:
            problems.append(Problem(at, f"critical_lr.{key} needs a bracket: {KEYS['bracket']}"))
        elif not (isinstance(bracket, list) and len(bracket) == 2 and all(map(_number, bracket))):
            typed = [p for i, b in enumerate(bracket if isinstance(bracket, list) else [])
                     if (p := type_problem(b, float, at + ("bracket", i)))]
            problems.extend(typed or [Problem(at + ("bracket",), f"expected {KEYS['bracket']}, got {bracket!r}")])
        elif not 0 < bracket[0] < bracket[1]:
            problems.append(Problem(at + ("bracket",), f"expected {KEYS['bracket']}, got {bracket!r}"))
        rtol = entry.get("rtol", DEFAULT_RTOL)
        if not (_number(rtol) and 0 < rtol < 1):
            problems.append(type_problem(rtol, float, at + ("rtol",))
                            or Problem(at + ("rtol",), f"rtol must be in (0, 1), got {rtol!r}"))
        steps = entry.get("steps")
        if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            problems.append(Problem(at + ("steps",), f"expected {KEYS['steps']}, got {steps!r}"))
        problems += _divergence_problems(entry.get("divergence"), at + ("divergence",))
        problems += _expect_problems(entry.get("expect"), at + ("expect",))
        problems += _param_problems(entry.get("param", "lr"), optimizers[key], at)
    return problems


def _divergence_problems(divergence: Any, at: tuple) -> list[Problem]:
    if divergence is None:
        return []
    if not (isinstance(divergence, dict) and len(divergence) == 1
            and set(divergence) <= {"factor", "max_loss"} and all(map(_number, divergence.values()))
            and all(v > 0 for v in divergence.values())):
        return [Problem(at, f"expected {KEYS['divergence']} with a positive number, got {divergence!r}")]
    return []


def _expect_problems(expect: Any, at: tuple) -> list[Problem]:
    if expect is None:
        return []
    if not isinstance(expect, dict) or not expect:
        return [Problem(at, f"expected {KEYS['expect']}, got {expect!r}")]
    problems = []
    for comparator, bound in expect.items():
        if comparator not in COMPARATORS or comparator == "equals":
            known = [c for c in COMPARATORS.names() if c != "equals"]
            problems.append(Problem(at + (comparator,), unknown_message("comparator", comparator, known)))
        elif comparator == "between":
            if not (isinstance(bound, list) and len(bound) == 2 and all(map(_number, bound)) and bound[0] <= bound[1]):
                problems.append(Problem(at + (comparator,), f"'between' takes [low, high], got {bound!r}"))
        elif not _number(bound):
            problems.append(Problem(at + (comparator,), f"expected a number, got {bound!r}"))
    return problems


def _param_problems(param: Any, optimizer: "OptimizerSpec", at: tuple) -> list[Problem]:
    """The searched hyperparameter exists; no other one is swept (one critical lr per entry)."""
    if optimizer.cls is None:   # not in this torch (``min_torch``): the search is skipped
        return []
    accepted = list(arguments(optimizer.cls.__init__, skip=2).defaults)   # past self, params
    if param not in accepted and param not in optimizer.fixed:
        guess = nearest(str(param), accepted)
        return [Problem(at + ("param",), f"{optimizer.class_name} has no hyperparameter {param!r}"
                        + (f"; did you mean {guess!r}?" if guess else ""))]
    swept = [n for n in optimizer.sweeps if n != param]
    if swept:
        return [Problem(at, f"the critical lr is searched with the other hyperparameters fixed, but "
                            f"optimizer {optimizer.key!r} sweeps {', '.join(swept)}: give it one value, or "
                            f"declare critical_lr on an entry that fixes it")]
    return []
