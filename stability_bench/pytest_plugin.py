"""pytest plugin (entry point ``pytest11``): every run of every case file is a test item.

Installed with the package, this plugin loads in every project's pytest, so it stays out
of their way: loading it imports neither torch nor the case schema, and it collects only
what is clearly a stability-bench case — a ``*.yaml``/``*.yml`` file below one of the
``stability_cases_dirs`` folders (relative to the rootdir; default ``cases``) that carries
the top-level marker ``stability-bench: 1``. Other YAML files below those folders are not
collected; each is listed once with a warning saying how to mark it, when the folder is
stability-bench's (named in ``stability_cases_dirs``, or holding a marked case) or the file
misspells the marker. From a subdirectory of the rootdir, such case folders a run from the
rootdir would collect are added to what pytest collects. YAML elsewhere is left alone.

Items — one per run, and one per critical-lr search — run through the library's
orchestrator (:mod:`stability_bench.orchestrate`): each run, parity partners included,
trains once per session (per xdist worker; ``--dist loadfile`` keeps a case file's items
together), and checking an item never trains. ``--stability-baseline`` also compares each
item with the baseline beside its case file; ``--stability-baseline-update`` re-records
those baselines after the session.
``slow`` cases run with ``--run-slow``; CUDA items skip without a GPU, saying so; items
whose data is not here (and cannot be fetched on first use, before the file's first run
trains) skip, saying where it was looked for and how to get it. ``--stability-strict`` (or
``$STABILITY_BENCH_STRICT=1``) makes both failures, so CI cannot go green unchecked: an
item without its data, and a CUDA item skipped on a machine that has a GPU torch cannot use.
"""
from __future__ import annotations

import glob
import warnings
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stability-bench")
    group.addoption("--run-slow", action="store_true", default=False,
                    help="also run cases and tests marked slow (paper-scale variants)")
    group.addoption("--triage-dir", default=None, metavar="DIR",
                    help="where a failed case's triage bundle goes (default: $STABILITY_BENCH_TRIAGE, "
                         "else ./triage)")
    group.addoption("--stability-baseline", action="store_true", default=False,
                    help="also compare every run and critical lr with the baseline beside its case file")
    group.addoption("--stability-baseline-update", action="store_true", default=False,
                    help="after the session, re-record the baseline of every case file whose items ran "
                         "(after an intended change; review the diff)")
    group.addoption("--stability-strict", action="store_true", default=False,
                    help="a case item that cannot run here fails instead of skipping: its data missing, "
                         "a CUDA item on a machine with a GPU torch cannot use (also $STABILITY_BENCH_STRICT=1)")
    group.addoption("--stability-max-runs", type=int, default=None, metavar="N",
                    help="the most runs the session's case files plan (default 10,000; 0: no limit), "
                         "counted from the sweep sizes before any item is made")
    parser.addini("stability_cases_dirs", type="paths", default=[],
                  help="folders (relative to the rootdir or the ini file) whose case files (marked "
                       "'stability-bench: 1') are collected; default: <rootdir>/cases")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; run with --run-slow")
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    _collect_cases_from_a_subdirectory(config)
    from stability_bench.settings import strict_mode   # torch-free

    try:
        config._stability_strict = strict_mode(config.getoption("--stability-strict"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _strict(config: pytest.Config) -> bool:
    return getattr(config, "_stability_strict", False)


def _case_dirs(config: pytest.Config) -> list[Path]:
    return [Path(p) for p in config.getini("stability_cases_dirs")] or [config.rootpath / "cases"]


def _ours(config: pytest.Config, folder: Path) -> bool:
    """Whether a case folder is stability-bench's: named by ``stability_cases_dirs``, or
    holding a marked case file. A project that merely has a ``cases/`` folder of its own
    YAML gets neither warnings nor extra collection from this plugin."""
    known = config.stash.setdefault(_OURS, {})
    if folder not in known:
        from stability_bench.yamlsource import has_case_marker

        known[folder] = bool(config.getini("stability_cases_dirs")) or any(
            has_case_marker(p) for p in folder.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    return known[folder]


_OURS = pytest.StashKey[dict]()


def _collect_cases_from_a_subdirectory(config: pytest.Config) -> None:
    """``python -m pytest`` without arguments collects the invocation folder; pytest reads
    ``testpaths`` only when that folder is the rootdir. So from a subdirectory of a project
    its case folders (which sit at the rootdir: ``<rootdir>/cases``) were never visited and
    pytest found nothing. From a subdirectory of the rootdir this adds the case folders a run
    from the rootdir would collect — all of them without ``testpaths``, else those inside a
    testpath (and the testpaths inside a case folder) — to the folders to collect. Explicit
    arguments are left alone, and so is a run from the rootdir. xdist workers decide the
    same from the same invocation folder."""
    if getattr(config, "args_source", None) is not pytest.Config.ArgsSource.INVOCATION_DIR:
        return
    here, root = Path(config.invocation_params.dir).resolve(), config.rootpath.resolve()
    if here == root or not here.is_relative_to(root):
        return
    folders = [f.resolve() for f in _case_dirs(config) if f.is_dir() and _ours(config, f)]
    testpaths = config.getini("testpaths")
    if testpaths:
        paths = [Path(p).resolve() for tp in testpaths for p in glob.glob(str(root / tp), recursive=True)]
        folders = ([f for f in folders if any(f.is_relative_to(p) for p in paths)]
                   + [p for p in paths if p.is_dir() and any(p.is_relative_to(f) for f in folders)])
    targets = [f for f in dict.fromkeys(folders) if not f.is_relative_to(here)]   # else collected anyway
    if not targets:
        return
    kept = [a for a in config.args if not any(Path(a).resolve().is_relative_to(t) for t in targets)]
    config.args[:] = kept + [str(t) for t in targets]


class NotACaseWarning(UserWarning):
    """A YAML file in a case folder without the ``stability-bench: 1`` marker: not collected."""


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    folder = next((f for f in _case_dirs(parent.config) if file_path.is_relative_to(f)), None)
    if folder is None:
        return None
    from stability_bench.yamlsource import has_case_marker, unmarked_reason

    if not has_case_marker(file_path):
        config = parent.config
        warned = config.stash.setdefault(_UNMARKED, set())
        worker = getattr(config, "workerinput", {}).get("workerid", "gw0")  # every xdist worker collects
        if file_path not in warned and worker == "gw0":  # once per file, however often it is reached
            warned.add(file_path)
            line, reason = unmarked_reason(file_path)   # a line: a key that looks like a misspelt marker
            if line is not None or _ours(config, folder):
                warnings.warn_explicit(NotACaseWarning(reason), NotACaseWarning, filename=str(file_path),
                                       lineno=line or 1)
        return None
    return CaseFile.from_parent(parent, path=file_path)


_UNMARKED = pytest.StashKey[set]()


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip slow items without ``--run-slow``; put case items first, the heaviest case file
    first (xdist hands out files in this order, so a long file never starts last while the
    other workers idle). Other tests keep their order."""
    run_slow = config.getoption("--run-slow")
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip)
    files = dict.fromkeys(item.parent for item in items if isinstance(item, CaseItem))
    work = {file: file.work(run_slow) for file in files}
    items.sort(key=lambda item: -work.get(item.parent, -1.0))


class CaseFile(pytest.File):
    """A case file: one item per requested run of its base case and variants."""

    def collect(self):
        from stability_bench.plan import make_plan
        from stability_bench.schema import load_cases
        from stability_bench.unknown_theory import case_warnings

        cases = load_cases(self.path)
        for warning in dict.fromkeys(w for case in cases for w in case_warnings(case)):
            self.warn(CaseWarning(warning))
        self.cases = cases
        self.plan = plan = make_plan(cases, cuda_available=True,  # CUDA is checked per item
                                     max_runs=_session_run_limit(self.session, cases))
        self.items = []
        items = [(run_id, plan.runs[run_id]) for run_id in plan.requested] + list(plan.searches.items())
        for name, what in items:
            item = CaseItem.from_parent(self, name=name, plan=plan)
            if what.case.slow:
                item.add_marker(pytest.mark.slow)
            if what.device.startswith("cuda"):
                item.add_marker(pytest.mark.cuda)
            self.items.append(item)
            yield item

    def work(self, run_slow: bool) -> float:
        """Estimated flop of this file's CPU items (slow ones only with ``--run-slow``)."""
        from stability_bench.costs import estimated_work

        names = [item.name for item in self.items if item.spec.device == "cpu"
                 and (run_slow or not item.spec.case.slow)]
        return sum(estimated_work(self.plan, name) for name in names)

    def baselines(self):
        """The baseline beside this file (``--stability-baseline``), read once."""
        if not hasattr(self, "_baselines"):
            from stability_bench.checks import Baselines

            self._baselines = Baselines(self.cases)
        return self._baselines

    def repr_failure(self, excinfo):
        from stability_bench.plan import PlanTooLarge
        from stability_bench.types import CaseError

        if isinstance(excinfo.value, CaseError):
            return f"malformed case file:\n{excinfo.value}"
        if isinstance(excinfo.value, PlanTooLarge):
            return f"too many runs:\n{excinfo.value}"
        return f"{self.path}: could not read the case file: {type(excinfo.value).__name__}: {excinfo.value}"


def _session_run_limit(session: pytest.Session, cases: list) -> None:
    """Count ``cases``' runs (from the sweep sizes) into the session's total and raise
    :class:`~stability_bench.plan.PlanTooLarge` past ``--stability-max-runs``; None,
    for make_plan: the limit is checked here, over every case file of the session."""
    from stability_bench.plan import MAX_RUNS, check_run_limit

    limit = session.config.getoption("--stability-max-runs")
    if limit is not None and limit < 0:
        raise pytest.UsageError(f"--stability-max-runs must be at least 0 (0: no limit), got {limit}")
    limit = MAX_RUNS if limit is None else (limit or None)
    before = getattr(session, "_stability_bench_planned", 0)
    session._stability_bench_planned = check_run_limit(cases, limit, already=before)
    return None


class CaseWarning(UserWarning):
    """A figure a case asks for that will be unknown for one of its optimizers, and why."""


class ExpectationFailed(Exception):
    def __init__(self, report, triage=None):
        self.report, self.triage = report, triage
        super().__init__(report.run_id)


class RunFailed(Exception):
    """A run that could not be set up or crashed while training."""


STALE = "stability_bench_stale"   # user property of an item whose baseline is stale
NO_DATA = "stability_bench_no_data"   # user property: why an item's data is not here (said once)


class StaleBaseline(Exception):
    """The baseline was recorded for another definition of the case: not compared. Reported
    as its own outcome (STALE), never as a regression."""

    def __init__(self, report):
        self.report = report
        super().__init__(report.run_id)


def pytest_report_teststatus(report, config):
    """Stale baselines show as their own outcome: ``S`` / ``STALE``, counted apart (the
    session still fails: nothing was compared)."""
    if report.when == "call" and report.failed and any(k == STALE for k, _ in report.user_properties):
        return "stale", "S", "STALE"
    return None


def pytest_terminal_summary(terminalreporter) -> None:
    """Say why each stale item is stale (pytest lists only failures' reasons), and, once for
    the session, why data was missing (each item's own reason is one line)."""
    reasons: dict[str, list[str]] = {}
    for outcome in ("skipped", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for key, value in getattr(report, "user_properties", ()):
                if key == NO_DATA:
                    reasons.setdefault(value, []).append(report.nodeid)
    for message, nodeids in reasons.items():
        files = list(dict.fromkeys(nodeid.split("::", 1)[0] for nodeid in nodeids))
        terminalreporter.section(f"data not available ({len(nodeids)} items of {', '.join(files)})", sep="=")
        terminalreporter.line(message)
    stale = terminalreporter.stats.get("stale", [])
    if stale:
        terminalreporter.section("stale baselines (not regressions: re-record them)", sep="=")
        for report in stale:
            terminalreporter.line(f"{report.nodeid}: {report.longreprtext}")


class SessionRuns:
    """The runs this session has trained (run id → result or failure), shared by items, and
    the case files whose items ran (for ``--stability-baseline-update``)."""

    KEY = "_stability_bench_runs"

    def __init__(self):
        self.finished: dict = {}
        self.files: dict = {}   # path → CaseFile

    @classmethod
    def of(cls, session: pytest.Session) -> "SessionRuns":
        if not hasattr(session, cls.KEY):
            setattr(session, cls.KEY, cls())
        return getattr(session, cls.KEY)

    def report(self, plan, name: str, baselines=None):
        """Train ``name`` (a run and its partners, once each in the session; or a
        critical-lr search), then check it: the orchestrator's :func:`report_one`."""
        from stability_bench.orchestrate import report_one

        return report_one(plan, name, self.finished, baselines)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """``--stability-baseline-update``: re-record the baselines of the case files that ran."""
    runs = getattr(session, SessionRuns.KEY, None)
    if runs is None or not runs.files or not session.config.getoption("--stability-baseline-update"):
        return
    from stability_bench.orchestrate import record_baselines

    cases = [case for node in runs.files.values() for case in node.cases]
    writer = session.config.get_terminal_writer()
    for entry in record_baselines(cases, run_slow=session.config.getoption("--run-slow")):
        informative, figures = entry.informative
        if entry.written:
            writer.line(f"stability-bench: baseline written: {entry.path} ({informative} of {figures} "
                        f"figures informative)")
        for fragile in entry.fragile:
            writer.line(f"stability-bench: baseline NOT written: {fragile.message}", red=True)
        if entry.fragile:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


class CaseItem(pytest.Item):
    """One run of a case file, or one of its critical-lr searches."""

    def __init__(self, *, plan, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        self.spec = plan.runs.get(self.name) or plan.searches[self.name]

    def setup(self) -> None:
        if self.spec.device.startswith("cuda"):
            import torch

            from stability_bench.plan import CUDA_MISSING, cuda_skip_problem

            if not torch.cuda.is_available():
                self.strict_problem = cuda_skip_problem(CUDA_MISSING) if _strict(self.config) else None
                if self.strict_problem is None:
                    pytest.skip(CUDA_MISSING)

    def runtest(self) -> None:
        if getattr(self, "strict_problem", None) is not None:  # a failed item, not a set-up error
            pytest.fail(f"strict (--stability-strict, $STABILITY_BENCH_STRICT): {self.strict_problem}", pytrace=False)
        runs = SessionRuns.of(self.session)
        runs.files[self.parent.path] = self.parent
        check_baseline = (self.config.getoption("--stability-baseline")
                          and not self.config.getoption("--stability-baseline-update"))
        report = runs.report(self.plan, self.name, self.parent.baselines() if check_baseline else None)
        if report.status == "missing_data":  # e.g. no CIFAR-10 here: skip, saying where it looked
            cause = self.plan.missing_data.get(self.name)
            if cause is None:  # missing at run time, not found by prepare_data: its own message
                reason = report.failure.error
            else:  # one line here; where it looked and how to get it, once in the summary
                self.user_properties.append((NO_DATA, str(cause)))
                first = str(cause).splitlines()[0].removesuffix(" Looked for:").rstrip(".")
                hint = getattr(cause, "hint", "")
                reason = (f"{self.spec.case.where(('data',))}: data: {first}"
                          + (f" — {hint}" if hint else "") + " (details: the 'data not available' section)")
            if _strict(self.config):
                pytest.fail(f"strict (--stability-strict, $STABILITY_BENCH_STRICT): data not available: {reason}",
                            pytrace=False)
            pytest.skip(f"data not available: {reason}")
        if report.failure is not None:
            bundle = None
            if report.failure.kind in ("crash", "timeout") and self.name in self.plan.runs:
                from stability_bench.reports.triage import crash_triage_or_reason

                bundle = crash_triage_or_reason(self.spec, report.failure,
                                                self.config.getoption("--triage-dir", default=None))
            raise RunFailed(report.failure, bundle)
        if report.result is not None:
            self.user_properties.append(("metrics", report.result.metrics))
        if report.status == "failed":
            triage = None
            if report.result is not None and report.failed_outcomes:
                from stability_bench.reports.triage import triage_or_reason

                root = self.config.getoption("--triage-dir", default=None)
                triage = triage_or_reason(self.spec, report.result, report.outcomes, root)
            raise ExpectationFailed(report, triage)
        if report.status == "stale":
            self.user_properties.append((STALE, [f.changed for f in report.stale_findings]))
            raise StaleBaseline(report)

    def repr_failure(self, excinfo, style=None):
        error = excinfo.value
        if isinstance(error, ExpectationFailed):
            report = error.report
            failed = report.failed_outcomes
            lines = [f"{report.run_id}: {len(failed)} expectation(s) failed, {len(report.outcomes) - len(failed)} held"
                     + (f"; {len(report.failed_findings)} figure(s) outside the baseline" if report.findings else "")]
            lines += [o.describe() for o in failed] + [f"baseline: {f.message}" for f in report.failed_findings
                                                       + report.stale_findings]
            if report.result is not None and report.result.diverged:
                lines.append(f"(the run diverged at step {report.result.divergence_step})")
            if error.triage:
                lines.append(f"triage bundle: {error.triage}")
            return "\n".join(lines)
        if isinstance(error, StaleBaseline):
            return "\n".join(["stale baseline (not a regression; no figure was compared):"]
                             + [f.message for f in error.report.stale_findings])
        from stability_bench.baseline import BaselineError

        if isinstance(error, BaselineError):
            return f"{error} (--stability-baseline)"
        if isinstance(error, RunFailed):
            failure, bundle = error.args
            return (failure.describe() + (f"\n{failure.traceback}" if failure.kind == "crash" else "")
                    + (f"\ntriage bundle: {bundle}" if bundle else ""))
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        key = ("critical_lr", self.spec.optimizer) if self.name in self.plan.searches else \
            ("optimizers", self.spec.optimizer.key)
        line = self.spec.case.source.line(key)
        return self.path, (line - 1 if line else None), self.name
