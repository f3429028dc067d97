"""What reports read: runs with their checked expectations, grouped for plotting.

A :class:`ReportRun` is one :class:`~stability_bench.results.RunResult` with the outcomes of
its expectations (as the dicts a results file holds) and the spike detector settings of its
case. Results files written by ``stability-bench run --json`` are read here keeping the
expectations (``results.read_results`` returns the runs alone).
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from stability_bench.metrics import SpikeConfig
from stability_bench.results import FORMAT, RunResult


@dataclass
class ReportRun:
    result: RunResult
    outcomes: list[dict] = field(default_factory=list)   # Outcome.to_dict() form
    spike_config: SpikeConfig = field(default_factory=SpikeConfig)
    description: str = ""                                  # the case's, when known

    @property
    def passed(self) -> bool | None:
        """Whether every expectation held; None for a run without expectations."""
        return all(o.get("passed") for o in self.outcomes) if self.outcomes else None

    @property
    def failed(self) -> list[dict]:
        return [o for o in self.outcomes if not o.get("passed")]


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


def read_results_file(path: str | Path) -> tuple[dict, list[ReportRun]]:
    """(environment, runs with their expectations) of a ``stability-bench run --json`` file.

    Spike markers use the detector settings in a run's ``meta["spikes"]`` if recorded, else
    the defaults: a results file does not record a case's ``spikes:`` section today."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read a results file: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a stability-bench results file "
                         f"(written by `stability-bench run --json FILE`)")
    runs = []
    for raw in data.get("runs", []):
        spikes = (raw.get("meta") or {}).get("spikes")  # used if a runner ever records it
        try:
            config = SpikeConfig(**spikes) if isinstance(spikes, dict) else SpikeConfig()
        except (TypeError, ValueError):
            config = SpikeConfig()
        runs.append(ReportRun(RunResult.from_dict(raw), list(raw.get("expectations", [])), config))
    return dict(data.get("environment") or {}), runs


# ------------------------------------------------------------------------ environment
def git_commit(where: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository at ``where`` (default: the working
    directory), with ``-dirty`` when tracked files changed; None without git or a repository."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        commit = head.stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if status.returncode == 0 and status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment_with_commit(environment: Mapping[str, Any] | None = None) -> dict:
    """The results file's environment (or this machine's) plus the commit: the one recorded
    if any, else the working directory's (the project under test), else this package's."""
    if environment:
        env = dict(environment)
    else:
        from stability_bench.results import environment as this_machine

        env = this_machine()
    if not env.get("commit"):
        env["commit"] = git_commit() or git_commit(Path(__file__).resolve().parent) or "unknown"
    return env


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
