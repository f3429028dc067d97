"""The one path from cases to checked runs: plan → execute → check, each stage a module.

* :mod:`stability_bench.plan` — what runs (runs, parity partners, searches) and what
  cannot run here;
* :mod:`stability_bench.costs` — what each run costs (threads, work);
* :mod:`stability_bench.execute` — how runs are trained (in process, worker processes,
  Dask);
* :mod:`stability_bench.checks` — what is concluded (expectations, baselines), pure.

This module drives them — a plan's runs and its critical-lr searches on one executor — and
is the API the CLI, the pytest plugin and Python callers use: :func:`run_plan`,
:func:`report_one`, :func:`run_case`, :func:`find_critical_lr`, :func:`record_baselines`.
The front ends only render what comes back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from stability_bench.baseline import (NUDGES, TRAJECTORY_STEPS, baseline_path, fragile_expectations,
                                      informative_count, merge_baselines, record_baseline, unperturbed,
                                      write_baseline)
from stability_bench.checks import Baselines, Report, RunReport, SearchReport, check, check_search, with_sources
from stability_bench.critical_lr import CriticalLr, CriticalLrSearch, specs
from stability_bench.execute import Executor, execute_plan, run_one
from stability_bench.plan import Plan, RunSpec, SearchSpec, make_plan, prepare_data, probe_spec
from stability_bench.results import RunFailure, RunResult, environment
from stability_bench.runner import MissingDataError, RunSetupError
from stability_bench.schema import load_case
from stability_bench.types import Case

__all__ = ["run_plan", "report_one", "run_searches", "run_case", "find_critical_lr", "record_baselines",
           "RunsFailed", "RecordedBaseline", "SearchDriver"]


class SearchDriver:
    """The plan's critical-lr searches as work for an :class:`Executor`: :meth:`start` gives
    every search's first probes, :meth:`record` takes each finished probe and gives the
    next round's once a search's round is complete. A round's outcomes are reported to the
    search in the order asked, so its record is the same for any ``jobs``. Finished searches
    come out as reports (:attr:`reports`), checked as :func:`check_search` does."""

    PREFIX = "critical_lr:"   # executor keys of probes: never a run id

    def __init__(self, plan: Plan, baselines: Baselines | None = None):
        self.plan, self.baselines = plan, baselines
        self.reports: list[SearchReport] = []
        self.live: dict[str, Any] = {}
        self.round: dict[str, dict[float, Any]] = {}     # search id → lr → outcome (None: running)
        for search_id, search in plan.searches.items():
            if search_id in plan.skipped:
                self.reports.append(SearchReport(search=search, skipped=plan.skipped[search_id]))
            elif search_id in plan.missing_data:
                self.reports.append(SearchReport(search=search, failure=plan.data_failure(search_id)))
            else:
                entry = specs(search.case)[search.optimizer]
                self.live[search_id] = CriticalLrSearch(entry.lo, entry.hi, entry.rtol)

    def start(self) -> dict[str, RunSpec]:
        return {key: spec for search_id in list(self.live) for key, spec in self._next(search_id).items()}

    def _next(self, search_id: str) -> dict[str, RunSpec]:
        lrs = self.live[search_id].pending()
        self.round[search_id] = dict.fromkeys(lrs)
        return {f"{self.PREFIX}{search_id}@{lr!r}": probe_spec(self.plan.searches[search_id], lr) for lr in lrs}

    @classmethod
    def owns(cls, key: str) -> bool:
        """Whether an executor key is a search's probe (the executor's ``urgent``: the
        search's next round waits for it)."""
        return key.startswith(cls.PREFIX)

    def record(self, key: str, outcome: RunResult | RunFailure) -> dict[str, RunSpec]:
        """Take a finished run (an :class:`Executor`'s ``more``): a probe of a search is
        recorded, anything else ignored; returns the probes to train next."""
        if not self.owns(key):
            return {}
        search_id, _, lr = key[len(self.PREFIX):].rpartition("@")
        if search_id not in self.live:  # an earlier probe of its round failed
            return {}
        search = self.plan.searches[search_id]
        if isinstance(outcome, RunFailure):
            del self.live[search_id]
            self.reports.append(SearchReport(search=search, failure=outcome))
            return {}
        outcomes = self.round[search_id]
        outcomes[float(lr)] = outcome
        if any(v is None for v in outcomes.values()):
            return {}
        state = self.live[search_id]
        for probe_lr, result in outcomes.items():
            state.report(probe_lr, result.diverged)
        if not state.done:
            return self._next(search_id)
        del self.live[search_id]
        self.reports.append(check_search(search, state.result, self.baselines))
        return {}


def run_searches(plan: Plan, executor: Executor, baselines: Baselines | None = None) -> Iterator[SearchReport]:
    """Drive the plan's critical-lr searches (and only them) with ``executor``."""
    driver = SearchDriver(plan, baselines)
    yield from _drain(driver.reports)
    for _ in executor.run(driver.start(), driver.record, driver.owns):
        yield from _drain(driver.reports)


def _drain(reports: list) -> Iterator:
    while reports:
        yield reports.pop(0)


def run_plan(plan: Plan, jobs: int = 1, client: Any = None, threads: int | None = None,
             progress: Callable[[str, int, int, float], None] | None = None,
             baselines: Baselines | None = None) -> Iterator[RunReport | SearchReport]:
    """Execute and check: yield each requested run's report as soon as it and its partners
    have finished (skipped ones first), and each critical-lr search's report when it ends.
    Runs and search probes share the executor: a search's next round is queued as soon as
    its last probe finishes, beside the runs still waiting. Data is prepared first
    (:func:`prepare_data`); runs without it are reported at once, as failures."""
    sourced = with_sources(plan)   # the commit as the runs start, before any data is fetched
    prepare_data(plan)
    finished: dict[str, Any] = {}
    waiting = [r for r in plan.requested if r not in plan.skipped and r not in plan.missing_data]
    for run_id in plan.requested:
        if run_id in plan.skipped or run_id in plan.missing_data:
            yield sourced(check(plan, run_id, finished))
    driver = SearchDriver(plan, baselines)
    yield from map(sourced, _drain(driver.reports))
    with Executor(jobs, client, threads, progress) as executor:
        work = {**{r: plan.runs[r] for r in plan.to_execute()}, **driver.start()}
        for key, outcome in executor.run(work, driver.record, driver.owns):
            if not driver.owns(key):
                finished[key] = outcome
                ready = [r for r in waiting if r in finished and all(n in finished or n in plan.skipped
                                                                       for n in plan.needs.get(r, ()))]
                for r in ready:
                    waiting.remove(r)
                    yield sourced(check(plan, r, finished, baselines))
            yield from map(sourced, _drain(driver.reports))


def report_one(plan: Plan, name: str, finished: dict, baselines: Baselines | None = None) -> Report:
    """The report of one requested run or search of ``plan`` — what a test item checks:
    data prepared first (once per plan), then the run and its partners trained in this
    process unless ``finished`` (run id → outcome, shared across calls) already holds them,
    or the search driven to its end; then checked."""
    prepare_data(plan)
    if name in plan.searches:
        if name in plan.missing_data:
            return SearchReport(search=plan.searches[name], failure=plan.data_failure(name))
        with Executor() as executor:
            (report,) = run_searches(Plan(searches={name: plan.searches[name]}), executor, baselines)
        return report
    for need in (*plan.needs.get(name, ()), name):
        if need not in finished and need not in plan.skipped:
            finished[need] = run_one(plan.runs[need])
    return check(plan, name, finished, baselines)


class RunsFailed(RuntimeError):
    """Runs of :func:`run_case` that did not finish; ``failures`` says which and why
    (the other runs' results are in ``results``)."""

    def __init__(self, failures: list[RunFailure], results: list[RunResult]):
        self.failures, self.results = failures, results
        super().__init__("\n".join(f.describe() for f in failures))

    def __reduce__(self):  # rebuilt from its fields in another process
        return type(self), (self.failures, self.results)


def run_case(case: Case | str | Mapping, devices: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, progress: Callable[[int, int, float], None] | None = None,
             jobs: int = 1, client: Any = None, threads: int | None = None) -> list[RunResult]:
    """Run every (optimizer, sweep point, seed, device) of ``case`` (a Case, a case file's
    path, or a dict with the case structure); results in plan order.

    ``jobs``: worker processes; ``client``: a ``dask.distributed.Client`` or its address;
    ``threads``: torch threads per run (default: the harness's choice). A run that fails to
    set up or crashes does not stop the others; :class:`RunsFailed` (or, for one bad set-up,
    the runner's own error) is raised once all have finished."""
    if not isinstance(case, Case):
        case = load_case(case)
    plan = make_plan([case], devices, seeds)
    step_progress = None if progress is None else (lambda _id, done, total, loss: progress(done, total, loss))
    finished = dict(execute_plan(plan, jobs, client, threads, step_progress))
    results = [finished[r] for r in plan.requested if not isinstance(finished.get(r), (RunFailure, type(None)))]
    failures = [finished[r] for r in dict.fromkeys([*plan.requested, *plan.to_execute()])
                if isinstance(finished.get(r), RunFailure)]
    kinds = {f.kind for f in failures}
    if kinds in ({"setup"}, {"missing_data"}):  # the case itself is at fault: say so as the runner does
        raise (MissingDataError if kinds == {"missing_data"} else RunSetupError)(failures[0].error)
    if failures:
        raise RunsFailed(failures, results)
    return results


def find_critical_lr(case: Case, optimizer: str, seed: int = 0, device: str = "cpu", jobs: int = 1,
                     client: Any = None, threads: int | None = None) -> CriticalLr:
    """The critical learning rate of ``case``'s ``critical_lr:`` entry for ``optimizer``
    (every probe an ordinary run, trained as :class:`Executor` says); a probe that fails
    raises :class:`RunsFailed`."""
    if optimizer not in specs(case):
        raise KeyError(f"{case.where(('critical_lr',))}: critical_lr: the case declares no critical_lr "
                       f"for optimizer {optimizer!r}")
    search = SearchSpec(case, optimizer, seed, device)
    with Executor(jobs, client, threads) as executor:
        (report,) = run_searches(Plan(searches={search.search_id: search}), executor)
    if report.failure is not None:
        raise RunsFailed([report.failure], [])
    return report.found


@dataclass
class RecordedBaseline:
    """One case file's recorded baseline: where it goes, what it holds, and the expectations
    a one-ulp nudge flips (a file with any is not written)."""

    path: Any
    data: dict
    fragile: list
    written: bool = False

    @property
    def informative(self) -> tuple[int, int]:
        return informative_count(self.data)


def record_baselines(cases: Iterable[Case], jobs: int = 1, client: Any = None, threads: int | None = None,
                     run_slow: bool = False, write: bool = True,
                     trajectory_steps: int | None = None) -> list[RecordedBaseline]:
    """Record the baseline of each case file among ``cases``: every run at every seed, the
    same runs with their initial parameters nudged one ulp up and one down (the rounding
    noise, also the runs every expectation is re-evaluated on), and the critical-lr
    searches. A file is written beside its case file (``write``) unless one of its
    expectations is fragile under the nudges. Runs that cannot run here (CUDA without a
    GPU; slow cases unless ``run_slow``) are left out."""
    cases = list(cases)
    plan = make_plan(cases, run_slow=run_slow)
    missing = prepare_data(plan)
    if missing:  # no baseline from part of a case's runs
        raise RunsFailed([plan.data_failure(next(iter(missing)))], [])
    nudged = {}
    for run_id in plan.to_execute():
        for nudge in NUDGES:
            spec = dataclasses.replace(plan.runs[run_id], perturb=nudge)
            nudged[spec.run_id] = spec
    driver = SearchDriver(plan)
    with Executor(jobs, client, threads) as executor:
        work = {**{r: plan.runs[r] for r in plan.to_execute()}, **nudged, **driver.start()}
        finished = {k: v for k, v in executor.run(work, driver.record, driver.owns) if not driver.owns(k)}
    critical: dict[str, dict] = {}
    for report in driver.reports:
        if report.found is not None:
            s = report.search
            critical.setdefault(s.case.name, {})[(s.optimizer, s.seed, s.device)] = report.found
        elif report.failure is not None:
            raise RunsFailed([report.failure], [])
    failures = [v for v in finished.values() if isinstance(v, RunFailure)]
    if failures:
        raise RunsFailed(failures, [])
    by_file: dict[str, list] = {}
    fragile: dict[str, list] = {}
    for case in cases:
        if case.slow and not run_slow:
            continue
        mine = [r for r in finished.values() if r.case == case.name]
        results = [r for r in mine if r.run_id == unperturbed(r.run_id)]
        perturbed = [r for r in mine if r.run_id != unperturbed(r.run_id)]
        part = record_baseline(case, results, perturbed, critical.get(case.name),
                               trajectory_steps or TRAJECTORY_STEPS, environment())
        by_file.setdefault(case.source.file, []).append(part)
        fragile.setdefault(case.source.file, []).extend(fragile_expectations(case, part))
    recorded = []
    for file, parts in by_file.items():
        entry = RecordedBaseline(baseline_path(file), merge_baselines(parts), fragile[file])
        if write and not entry.fragile:
            write_baseline(entry.path, entry.data)
            entry.written = True
        recorded.append(entry)
    return recorded
