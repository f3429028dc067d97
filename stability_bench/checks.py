"""What is concluded: finished results checked against their expectations and, with
:class:`Baselines`, against the recorded baselines — pure functions of results that never
train — and the reports the front ends render and the results file keeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from stability_bench.baseline import (baseline_path, check_against_baseline, check_critical_lr_against_baseline,
                                      read_baseline)
from stability_bench.critical_lr import CriticalLr, check_critical_lr
from stability_bench.expectations import check_run
from stability_bench.plan import Plan, RunSpec, SearchSpec
from stability_bench.results import RunFailure, RunResult, case_source, environment, run_entry
from stability_bench.types import Case

__all__ = ["Baselines", "Report", "RunReport", "SearchReport", "check", "check_search", "report_entry",
           "with_sources"]

Finished = Mapping[str, RunResult | RunFailure]


class Baselines:
    """The baseline files of a plan's case files (``cases/x.yaml`` → ``cases/x.baseline.json``),
    read once each. A case file without one is an error (:class:`BaselineError`) when the
    baselines are opened, before any run trains."""

    def __init__(self, cases: Iterable[Case]):
        files = {c.source.file for c in cases}
        if None in files:
            raise ValueError("baselines live beside case files; a case given as a dict has none")
        self.data = {file: read_baseline(baseline_path(file)) for file in sorted(files)}

    def of(self, case: Case) -> dict:
        return self.data[case.source.file]


# ----------------------------------------------------------------------- checks
@dataclass(kw_only=True)
class Report:
    """What became of a requested run or critical-lr search: its checked expectations and
    baseline findings, or why it has none (skipped here, or a run that failed)."""

    result: RunResult | None = None               # a run's result (a search has none)
    failure: RunFailure | None = None
    outcomes: list = field(default_factory=list)
    findings: list = field(default_factory=list)   # baseline.Finding: outside, missing, uninformative
    skipped: str | None = None
    source: dict | None = None   # results.case_source of its case file, read when the plan started

    @property
    def status(self) -> str:
        """passed | failed | stale | skipped | crash | timeout | setup | missing_data. A stale
        baseline (the case changed since it was recorded) is its own outcome, never a
        regression; a failed expectation still fails."""
        if self.skipped is not None:
            return "skipped"
        if self.failure is not None:
            return self.failure.kind
        if self.failed_outcomes or self.failed_findings:
            return "failed"
        return "stale" if self.stale_findings else "passed"

    @property
    def stale_findings(self) -> list:
        return [f for f in self.findings if f.stale]

    @property
    def failed_outcomes(self) -> list:
        return [o for o in self.outcomes if not o.passed]

    @property
    def failed_findings(self) -> list:
        return [f for f in self.findings if f.failed]


@dataclass(kw_only=True)
class RunReport(Report):
    spec: RunSpec

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass(kw_only=True)
class SearchReport(Report):
    search: SearchSpec
    found: CriticalLr | None = None

    @property
    def run_id(self) -> str:
        return self.search.search_id


def check(plan: Plan, run_id: str, finished: Finished, baselines: Baselines | None = None) -> RunReport:
    """Check a requested run against its expectations (and its baseline), reading its
    partners' results from ``finished``. Pure: never trains."""
    spec = plan.runs[run_id]
    if run_id in plan.skipped:
        return RunReport(spec=spec, skipped=plan.skipped[run_id])
    if run_id in plan.missing_data:
        return RunReport(spec=spec, failure=plan.data_failure(run_id))
    got = finished[run_id]
    if isinstance(got, RunFailure):
        return RunReport(spec=spec, failure=got)
    partners = {need: finished.get(need) for need in plan.needs.get(run_id, ())}
    runs = {k: v for k, v in partners.items() if isinstance(v, RunResult)}
    missing = {k: (plan.skipped.get(k) or (v.describe() if isinstance(v, RunFailure) else "not run"))
               for k, v in partners.items() if not isinstance(v, RunResult)}
    findings = check_against_baseline(spec.case, got, baselines.of(spec.case), environment()) if baselines else []
    return RunReport(spec=spec, result=got, outcomes=check_run(spec.case, got, runs, missing), findings=findings)


def check_search(search: SearchSpec, found: CriticalLr, baselines: Baselines | None = None) -> SearchReport:
    """A finished search against its entry's ``expect:`` (and its baseline). Pure."""
    findings = (check_critical_lr_against_baseline(search.case, search.optimizer, search.seed, search.device,
                                                   found, baselines.of(search.case), environment())
                if baselines else [])
    return SearchReport(search=search, found=found, findings=findings,
                        outcomes=check_critical_lr(search.case, search.optimizer, found))


def with_sources(plan: Plan) -> Callable[[Report], Report]:
    """Stamps each report with its case file's git commit and dirty flag
    (:func:`~stability_bench.results.case_source`), read once per file as the plan starts:
    the commit the runs ran from, whatever the repository does while they train."""
    cases = [*(s.case for s in plan.runs.values()), *(s.case for s in plan.searches.values())]
    sources = {f: case_source(f) for f in dict.fromkeys(c.source.file for c in cases)}

    def stamp(report: Report) -> Report:
        case = report.spec.case if isinstance(report, RunReport) else report.search.case
        report.source = sources[case.source.file]
        return report

    return stamp


def report_entry(report: Report) -> dict:
    """A finished report as a results-file entry: a run (its result, expectations and
    baseline findings), a failure, or a critical-lr search."""
    if report.failure is not None:
        return {"failure": report.failure.to_dict()}
    findings = [f.to_dict() for f in report.findings]
    if isinstance(report, SearchReport):
        s = report.search
        return {"search": {"search_id": s.search_id, "case": s.case.name, "optimizer": s.optimizer, "seed": s.seed,
                           "device": s.device, "critical_lr": report.found.to_dict(),
                           "expectations": [o.to_dict() for o in report.outcomes], "baseline": findings,
                           "source": report.source}}
    return {**run_entry(report.result, report.outcomes, report.source), "baseline": findings}
