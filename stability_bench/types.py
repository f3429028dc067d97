"""The validated case's types: what :mod:`stability_bench.schema` yields and every later
stage (plan, runs, checks, reports) reads.

The ground floor of the package: it imports nothing of stability_bench above the YAML
reader (:mod:`stability_bench.yamlsource`), so any module may import it without a cycle.
No ``from __future__ import annotations``: the schema checks ``spikes:`` against
SpikeConfig's real field types.
"""
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from stability_bench.yamlsource import KeyPath, Problem, Source
from stability_bench.yamlsource import dotted as _dotted

__all__ = ["CaseError", "Case", "OptimizerSpec", "Expectation", "SpikeConfig", "CriticalLrSpec", "MAX_PROBLEMS"]

MAX_PROBLEMS = 20       # problems shown per file; a garbage file would otherwise print thousands
DEFAULT_RTOL = 0.02     # a critical-lr search's relative precision unless the case says


class CaseError(ValueError):
    """A malformed case: one paragraph per problem, each naming file, line and key path."""

    def __init__(self, source: Source, problems: list[Problem]):
        self.source, self.problems = source, problems
        super().__init__(str(self))

    def __reduce__(self):  # rebuilt from its fields in another process (worker pools pickle it)
        return type(self), (self.source, self.problems)

    def __str__(self) -> str:
        shown = [f"{self._where(p)}: {_dotted(p.path) or '(case)'}: {p.message}" for p in self.problems[:MAX_PROBLEMS]]
        if len(self.problems) > MAX_PROBLEMS:
            shown.append(f"… and {len(self.problems) - MAX_PROBLEMS} more problems")
        return "\n".join(shown)

    def _where(self, problem: Problem) -> str:
        if problem.line is not None and self.source.file is not None:
            return f"{self.source.file}:{problem.line}"
        return self.source.where(problem.path)



@dataclass
class OptimizerSpec:
    """One entry of ``optimizers:``; sweeps expand into :meth:`points`."""

    key: str
    class_name: str
    cls: type | None   # None when ``unavailable``
    fixed: dict[str, Any]
    sweeps: dict[str, list[Any]]
    unavailable: str | None = None   # why this torch cannot run it (``min_torch``); its runs are skipped

    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see sweep_value

    def count(self) -> int:
        """The number of sweep points: the product of the sweep sizes (nothing expanded)."""
        return math.prod(len(values) for values in self.sweeps.values())

    def iter_points(self) -> Iterator[dict[str, Any]]:
        """Every hyperparameter combination (the Cartesian product of the sweeps), lazily."""
        names = list(self.sweeps)
        for combo in itertools.product(*(self.sweeps[n] for n in names)):
            yield {**self.fixed, **dict(zip(names, combo))}

    def points(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination (the Cartesian product of the sweeps)."""
        return list(self.iter_points())

    def each_value(self) -> Iterator[tuple[tuple, dict[str, Any]]]:
        """Every swept value once, the others fixed: first ``((), point)`` with each sweep at
        its first value, then ``((name, i), point)`` for each other value ``i`` of each sweep
        — the sum of the sweep sizes, not their product."""
        first = {**self.fixed, **{name: values[0] for name, values in self.sweeps.items()}}
        yield (), first
        for name, values in self.sweeps.items():
            for i, value in enumerate(values[1:], start=1):
                yield (name, i), {**first, name: value}

    def points_to_check(self, exhaustive: int = 4096) -> Iterator[dict[str, Any]]:
        """The points a validation check visits: all of them up to ``exhaustive``, else each
        swept value once (:meth:`each_value`), so a huge sweep is never expanded."""
        if self.count() <= exhaustive:
            return self.iter_points()
        return (point for _, point in self.each_value())

    def sweep_value(self, name: str, value: Any) -> Any:
        """The value of sweep ``name`` equal to ``value`` (YAML lists and tuples compare
        equal), found by hashing (so matching every run with its parity partner is linear);
        ``KeyError`` if the sweep has none."""
        def key(v: Any) -> Any:
            return tuple(v) if isinstance(v, (list, tuple)) else v

        if name not in self._index:
            try:
                self._index[name] = {key(v): v for v in reversed(self.sweeps[name])}  # the first of equal ones
            except TypeError:  # unhashable values: compare one by one
                self._index[name] = None
        index = self._index[name]
        if index is None:
            return next(v for v in self.sweeps[name] if key(v) == key(value))
        return index[key(value)]

    def label(self, point: Mapping[str, Any]) -> str:
        """``lr=38.1`` — the swept values of a point, used in run ids."""
        return ",".join(f"{k}={point[k]:g}" if isinstance(point[k], float) else f"{k}={point[k]}"
                        for k in self.sweeps)


@dataclass(frozen=True)
class Expectation:
    """``expect.<optimizer>.<metric>.<comparator>: <bound>`` at ``path`` in the case file."""

    optimizer: str
    metric: str
    comparator: str
    bound: Any
    path: KeyPath


@dataclass(frozen=True)
class SpikeConfig:
    """Settings of the spike detector (:func:`detect_spikes`) and of ``spike_period``.

    All thresholds are ratios, so the detector is scale-free: multiplying the loss by any positive
    constant changes nothing. Defaults and why:

    * ``window = 20``: the baseline is the median of the previous 20 finite losses. Between
      Lightning's ``SpikeDetection`` (running mean of 10) and OLMo-core's
      ``StabilityMonitorCallback`` (128): long enough that a median ignores a previous spike or a
      short excursion (up to 9 elevated values in the window), short enough to follow a loss that
      falls by orders of magnitude during a run.
    * ``factor = 3.0``: a spike is a loss more than 3x its recent median, the same rule as
      Lightning's default ``rtol=2.0`` (``loss - mean >= 2 * mean``). Step-to-step noise of
      +-10 % (a ratio of at most 1.1/0.9 = 1.22) is far below it.
    * ``min_gap = 1``: no extra refractory time beyond the excursion itself; raise it to merge
      bursts of close onsets into one spike.
    * ``min_history = None``: at least ``max(1, window // 2)`` (10) previous finite losses are
      required before any step can be a spike, so the first steps of a run never are.
    * ``period_tolerance = 1``: gaps between spike onsets that differ by at most 1 optimizer step
      are grouped together when ``spike_period`` looks for the dominant spacing.
    """

    window: int = 20
    """W: how many previous finite losses the baseline (their median) is taken over."""
    factor: float = 3.0
    """A step is a spike onset if ``loss > factor * baseline``; must be > 1."""
    min_gap: int = 1
    """Entries after an onset during which no new onset counts (on top of the excursion)."""
    min_history: int | None = None
    """Finite losses needed before detection starts; None means ``max(1, window // 2)``."""
    period_tolerance: int = 1
    """Gaps within +- this many optimizer steps are grouped by ``spike_period``."""

    def __post_init__(self) -> None:
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"SpikeConfig.window must be an integer >= 1, got {self.window!r}")
        if not (math.isfinite(self.factor) and self.factor > 1.0):
            raise ValueError(f"SpikeConfig.factor must be a finite number > 1, got {self.factor!r}")
        if int(self.min_gap) != self.min_gap or self.min_gap < 1:
            raise ValueError(f"SpikeConfig.min_gap must be an integer >= 1, got {self.min_gap!r}")
        if self.min_history is not None and (
            int(self.min_history) != self.min_history or not 1 <= self.min_history <= self.window
        ):
            raise ValueError(
                f"SpikeConfig.min_history must be None or an integer in [1, window={self.window}], "
                f"got {self.min_history!r}"
            )
        if int(self.period_tolerance) != self.period_tolerance or self.period_tolerance < 0:
            raise ValueError(
                f"SpikeConfig.period_tolerance must be an integer >= 0, got {self.period_tolerance!r}"
            )

    @property
    def effective_min_history(self) -> int:
        """``min_history``, or ``max(1, window // 2)`` when it is None."""
        return int(self.min_history) if self.min_history is not None else max(1, int(self.window) // 2)


@dataclass(frozen=True)
class CriticalLrSpec:
    """One optimizer's ``critical_lr:`` entry, defaults filled in."""

    optimizer: str
    lo: float
    hi: float
    rtol: float = DEFAULT_RTOL
    param: str = "lr"
    steps: int | None = None
    divergence: dict | None = None
    expect: dict = field(default_factory=dict)


@dataclass
class Case:
    """A validated case: what to train, how, for how long, and what must hold."""

    name: str
    description: str
    seeds: list[int]
    devices: list[str]
    dtype: str
    model: dict
    data: dict
    loss: dict
    batch: dict                      # {size: int | None, shuffle, drop_last}; size None = full
    steps: int
    optimizers: dict[str, OptimizerSpec]
    expectations: list[Expectation]
    divergence: dict
    spikes: SpikeConfig
    slow: bool
    source: Source = field(repr=False)
    raw: dict = field(repr=False)    # the case as written (variant merged), for reports/triage
    probes: dict = field(default_factory=dict)  # the ``probes:`` section as written (validated)
    timeout: float | None = None     # seconds per run, enforced by the runner; None: no limit
    schedule: dict | None = None     # ``schedule:`` as written (validated), see schedules.py
    clip: dict | None = None         # {"kind": "norm" | "value", **torch.nn.utils clip arguments}
    eval: dict | None = None         # {"every", "split", "heldout_fraction"} with defaults filled in
    critical_lr: dict = field(default_factory=dict)  # optimizer key → CriticalLrSpec (``critical_lr:``)

    def where(self, path: KeyPath = ()) -> str:
        return self.source.where(path)
