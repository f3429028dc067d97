"""What reports read: runs with their checked expectations and baseline findings, the
critical-lr searches and the runs that did not finish, grouped for plotting.

A :class:`ReportRun` is one :class:`~stability_bench.results.RunResult` with the outcomes of
its expectations and its baseline findings (as the dicts a results file holds), the spike
detector settings of its case and the case file's source (git commit, dirty flag) recorded
when it ran. :func:`report_data` builds a :class:`ReportData` from results-file entries, so
``stability-bench run --report`` and ``stability-bench report FILE`` show the same thing.
Reports only render: nothing here trains or checks.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from stability_bench.baseline import FAILED_STATUSES
from stability_bench.metrics import SpikeConfig
from stability_bench.results import FORMAT, RunResult


FAILED_FINDINGS = FAILED_STATUSES   # baseline.Finding.failed, for findings read back as dicts


def _verdict(outcomes: list[dict], findings: list[dict]) -> str | None:
    """"failed" if an expectation or a baseline figure failed, "stale" if the baseline was
    recorded for another case definition (and nothing failed), "passed" if something was
    checked and held, None if nothing was checked (as ``checks.Report.status``)."""
    if any(not o.get("passed") for o in outcomes) or any(f.get("status") in FAILED_FINDINGS for f in findings):
        return "failed"
    if any(f.get("status") == "stale" for f in findings):
        return "stale"
    return "passed" if outcomes or findings else None


@dataclass
class ReportRun:
    result: RunResult
    outcomes: list[dict] = field(default_factory=list)   # Outcome.to_dict() form
    spike_config: SpikeConfig = field(default_factory=SpikeConfig)
    description: str = ""                                  # the case's, when known
    findings: list[dict] = field(default_factory=list)   # baseline Finding.to_dict() form
    source: dict | None = None                            # results.case_source, recorded at run time

    @property
    def verdict(self) -> str | None:
        """passed | failed | stale, None for a run with nothing checked."""
        return _verdict(self.outcomes, self.findings)

    @property
    def passed(self) -> bool | None:
        """Whether every expectation and every baseline figure held; None when nothing was
        checked. A stale baseline is not a pass (see :attr:`verdict`)."""
        verdict = self.verdict
        return None if verdict is None else verdict == "passed"

    @property
    def failed(self) -> list[dict]:
        return [o for o in self.outcomes if not o.get("passed")]

    @property
    def failed_findings(self) -> list[dict]:
        return [f for f in self.findings if f.get("status") in FAILED_FINDINGS]


@dataclass
class ReportSearch:
    """One critical-lr search of a results file (the ``search`` entry written by
    ``checks.report_entry``): the edge interval, its probes, expectations and baseline."""

    search_id: str
    case: str
    optimizer: str
    seed: int
    device: str
    found: dict                                        # CriticalLr.to_dict(): value, lower, upper, probes
    outcomes: list[dict] = field(default_factory=list)
    findings: list[dict] = field(default_factory=list)
    source: dict | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ReportSearch":
        return cls(raw["search_id"], raw["case"], raw["optimizer"], int(raw["seed"]), raw["device"],
                   dict(raw.get("critical_lr") or {}), list(raw.get("expectations") or []),
                   list(raw.get("baseline") or []), raw.get("source"))

    @property
    def verdict(self) -> str | None:
        return _verdict(self.outcomes, self.findings)


@dataclass
class ReportData:
    """What a report shows: the environment the runs ran in, the runs, the critical-lr
    searches and the runs that did not finish (crash, timeout, set-up, missing data)."""

    environment: dict = field(default_factory=dict)
    runs: list[ReportRun] = field(default_factory=list)
    searches: list[ReportSearch] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def extend(self, other: "ReportData") -> None:
        self.environment = self.environment or other.environment
        self.runs += other.runs
        self.searches += other.searches
        self.failures += other.failures

    @property
    def sources(self) -> list[dict]:
        """The distinct case-file sources the runs and searches recorded."""
        seen: dict[str, dict] = {}
        for item in [*self.runs, *self.searches]:
            if item.source:
                seen.setdefault(json.dumps(item.source, sort_keys=True), item.source)
        return list(seen.values())


def _outcome_dict(outcome: Any) -> dict:
    return outcome.to_dict() if hasattr(outcome, "to_dict") else dict(outcome)


def report_runs(pairs: Iterable[tuple[RunResult, Iterable[Any]]],
                cases: Mapping[str, Any] | None = None) -> list[ReportRun]:
    """ReportRuns from (result, outcomes) pairs; ``cases`` (name → Case) supplies each
    case's spike detector settings and description."""
    runs = []
    for result, outcomes in pairs:
        case = (cases or {}).get(result.case)
        runs.append(ReportRun(result, [_outcome_dict(o) for o in outcomes],
                              case.spikes if case is not None else SpikeConfig(),
                              case.description if case is not None else ""))
    return runs


def _spike_config(raw: Mapping[str, Any], case: Any) -> SpikeConfig:
    if case is not None:
        return case.spikes
    spikes = (raw.get("meta") or {}).get("spikes")  # used if a runner ever records it
    try:
        return SpikeConfig(**spikes) if isinstance(spikes, dict) else SpikeConfig()
    except (TypeError, ValueError):
        return SpikeConfig()


def report_data(runs: Iterable[Mapping[str, Any]], failures: Iterable[Mapping[str, Any]] = (),
                searches: Iterable[Mapping[str, Any]] = (), environment: Mapping[str, Any] | None = None,
                cases: Mapping[str, Any] | None = None) -> ReportData:
    """:class:`ReportData` from results-file entries (``checks.report_entry`` form: the
    ``runs``, ``failures`` and ``critical_lr`` lists of a results file, or the entries of a
    ``run`` in progress). ``cases`` (name → Case) supplies spike settings and descriptions;
    without it a run's recorded ``meta["spikes"]`` or the defaults are used."""
    out = ReportData(dict(environment or {}))
    for raw in runs:
        case = (cases or {}).get(raw.get("case"))
        out.runs.append(ReportRun(RunResult.from_dict(dict(raw)), list(raw.get("expectations") or []),
                                  _spike_config(raw, case), case.description if case is not None else "",
                                  list(raw.get("baseline") or []), raw.get("source")))
    out.searches = [ReportSearch.from_dict(s) for s in searches]
    out.failures = [dict(f) for f in failures]
    return out


def read_results_file(path: str | Path) -> ReportData:
    """Everything a ``stability-bench run --json`` file holds for a report: environment, runs
    with their expectations and baseline findings, critical-lr searches, failures."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a results file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a stability-bench results file "
                         f"(written by `stability-bench run --json FILE`)")
    return report_data(data.get("runs", []), data.get("failures", []), data.get("critical_lr", []),
                       data.get("environment"))


# --------------------------------------------------------------------------- grouping
def by_case(runs: Iterable[ReportRun]) -> dict[str, list[ReportRun]]:
    """Runs grouped by case name, in first-seen order."""
    out: dict[str, list[ReportRun]] = {}
    for run in runs:
        out.setdefault(run.result.case, []).append(run)
    return out


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt_value(v) for v in value) + ")"
    return str(value)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def varying_params(runs: Iterable[ReportRun]) -> dict[str, list[str]]:
    """optimizer key → the hyperparameters whose value differs between its runs (its sweeps)."""
    seen: dict[str, dict[str, set]] = {}
    for run in runs:
        per = seen.setdefault(run.result.optimizer, {})
        for name, value in run.result.params.items():
            per.setdefault(name, set()).add(_key(value))
    return {opt: [n for n, vals in per.items() if len(vals) > 1] for opt, per in seen.items()}


@dataclass
class Series:
    """Runs that differ only by seed (one colour in a figure)."""

    label: str
    runs: list[ReportRun]


def series_of(runs: list[ReportRun]) -> list[Series]:
    """One series per optimizer entry and sweep point (and device, when runs span several);
    seeds of a series share its colour."""
    swept = varying_params(runs)
    devices = {r.result.device for r in runs}
    groups: dict[tuple, Series] = {}
    for run in runs:
        r = run.result
        names = swept.get(r.optimizer, [])
        point = ",".join(f"{n}={_fmt_value(r.params.get(n))}" for n in names)
        label = r.optimizer + (f"[{point}]" if point else "")
        if len(devices) > 1:
            label += f" {r.device}"
        key = (r.optimizer, tuple(_key(r.params.get(n)) for n in names), r.device if len(devices) > 1 else "")
        groups.setdefault(key, Series(label, [])).runs.append(run)
    return list(groups.values())


def short_class(name: str) -> str:
    return re.split(r"[.:]", name)[-1]


def optimizer_summary(runs: list[ReportRun], limit: int = 90) -> str:
    """``adam: Adam(lr=0.001); sgd: SGD(lr=0.0005)`` — fixed hyperparameters of each entry."""
    swept = varying_params(runs)
    parts, seen = [], set()
    for run in runs:
        r = run.result
        if r.optimizer in seen:
            continue
        seen.add(r.optimizer)
        fixed = [f"{n}={_fmt_value(v)}" for n, v in r.params.items()
                 if n not in swept.get(r.optimizer, []) and n in ("lr", "beta1", "beta2", "betas", "momentum", "eps")]
        sweeps = [f"{n} swept" for n in swept.get(r.optimizer, [])]
        parts.append(f"{r.optimizer}: {short_class(r.optimizer_class)}({', '.join(fixed + sweeps) or 'defaults'})")
    text = "; ".join(parts)
    if len(text) > limit:
        classes = list(dict.fromkeys(short_class(run.result.optimizer_class) for run in runs))
        text = f"{len(runs)} runs: {', '.join(classes)}"
    return text


def safe_name(text: str, limit: int = 120) -> str:
    """A file or folder name for a case or run id: ``quadratic_half_x2::gd[lr=2.1]-seed0-cpu``
    → ``quadratic_half_x2__gd_lr=2.1_-seed0-cpu``."""
    name = re.sub(r"[^A-Za-z0-9._=+-]", "_", text).strip("._") or "run"
    return name[:limit]
