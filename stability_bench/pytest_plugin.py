"""pytest plugin (entry point ``pytest11``): every run of every case file is a test item.

Collects ``*.yaml`` files below a folder named ``cases`` (the ini option
``stability_cases_dirs`` changes the names). An item's id names case, optimizer, sweep
point, seed and device; a failed expectation reports its file:line, metric, bound and the
measured value. ``slow`` cases run with ``--run-slow``; ``cuda`` items skip without CUDA.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from stability_bench.schema import CaseError, load_cases


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stability-bench")
    group.addoption("--run-slow", action="store_true", default=False,
                    help="also run cases and tests marked slow (paper-scale variants)")
    group.addoption("--triage-dir", default=None, metavar="DIR",
                    help="where a failed case's triage bundle goes (default: $STABILITY_BENCH_TRIAGE, "
                         "else ./triage)")
    parser.addini("stability_cases_dirs", type="args", default=["cases"],
                  help="names of folders whose *.yaml files are stability-bench cases")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; run with --run-slow")
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix in (".yaml", ".yml"):
        folders = set(parent.config.getini("stability_cases_dirs"))
        if folders.intersection(file_path.parent.parts):
            return CaseFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class CaseFile(pytest.File):
    def collect(self):
        from stability_bench.runner import plan_runs

        for case in load_cases(self.path):
            for spec in plan_runs(case):
                item = CaseItem.from_parent(self, name=spec.run_id, spec=spec)
                if case.slow:
                    item.add_marker(pytest.mark.slow)
                if spec.device.startswith("cuda"):
                    item.add_marker(pytest.mark.cuda)
                yield item

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CaseError):
            return f"malformed case file:\n{excinfo.value}"
        return super().repr_failure(excinfo, style)


class ExpectationFailed(Exception):
    def __init__(self, result, outcomes, triage=None):
        self.result, self.outcomes, self.triage = result, outcomes, triage
        super().__init__(result.run_id)


class CaseItem(pytest.Item):
    def __init__(self, *, spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec

    def setup(self) -> None:
        if self.spec.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                pytest.skip("CUDA is not available on this machine")

    def runtest(self) -> None:
        from stability_bench.expectations import check_run
        from stability_bench.runner import MissingDataError, execute

        try:
            result = execute(self.spec)
        except MissingDataError as exc:  # e.g. no CIFAR-10 here: skip, saying where it looked
            pytest.skip(f"data not available: {exc}")
        # runs that parity expectations compare with, shared by this session's items
        runs = self.session.__dict__.setdefault("_stability_bench_parity_runs", {})
        key = self.spec.optimizer.key
        if any(e.metric == "parity" and e.bound["with"] == key for e in self.spec.case.expectations):
            runs.setdefault(result.run_id, result)
        outcomes = check_run(self.spec.case, result, runs)
        self.user_properties.append(("metrics", result.metrics))
        if not all(o.passed for o in outcomes):
            from stability_bench.reports.triage import triage_or_reason

            root = self.config.getoption("--triage-dir", default=None)
            raise ExpectationFailed(result, outcomes, triage_or_reason(self.spec, result, outcomes, root))

    def repr_failure(self, excinfo, style=None):
        error = excinfo.value
        if isinstance(error, ExpectationFailed):
            failed = [o for o in error.outcomes if not o.passed]
            held = len(error.outcomes) - len(failed)
            lines = [f"{error.result.run_id}: {len(failed)} expectation(s) failed, {held} held"]
            lines += [o.describe() for o in failed]
            if error.result.diverged:
                lines.append(f"(the run diverged at step {error.result.divergence_step})")
            if error.triage:
                lines.append(f"triage bundle: {error.triage}")
            return "\n".join(lines)
        from stability_bench.runner import RunSetupError

        if isinstance(error, RunSetupError):
            return str(error)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        line = self.spec.case.source.line(("optimizers", self.spec.optimizer.key))
        return self.path, (line - 1 if line else None), self.name
