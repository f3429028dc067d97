"""Command line: ``stability-bench run | validate | list | report``.

Exit codes: 0 all expectations held, 1 an expectation failed, 2 bad input (a malformed
case, an unknown optimizer, missing data) — reported as one paragraph, never a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _case_files(paths: Sequence[str]) -> list[Path]:
    """Case files named directly, or every *.yaml below a folder (default ``cases/``)."""
    files: list[Path] = []
    for raw in paths or ["cases"]:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")))
        else:
            files.append(path)
    return files


def _load(paths: Sequence[str], variant: str | None = None):
    from stability_bench.schema import load_cases

    cases = []
    for file in _case_files(paths):
        found = load_cases(file)
        if variant is not None:
            found = [c for c in found if c.name.rsplit("/", 1)[-1] == variant or c.name == variant]
        cases.extend(found)
    return cases


class ProgressLine:
    """One updating status line on a terminal; silent when stderr is not a terminal."""

    def __init__(self, stream=None):
        stream = sys.stderr if stream is None else stream  # at call time: stderr may be redirected
        self.stream, self.enabled = stream, stream.isatty()
        self.label, self.start = "", time.perf_counter()

    def begin(self, label: str) -> None:
        self.label, self.start = label, time.perf_counter()

    def __call__(self, done: int, total: int, loss: float) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        width = 24
        bar = "#" * int(width * done / total)
        self.stream.write(f"\r{self.label} [{bar:<{width}}] {done}/{total} loss {loss:.3e} "
                          f"ETA {eta:4.0f}s\x1b[K")
        self.stream.flush()

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _num(value, spec: str) -> str:
    """A metric for the summary line; metrics may be None (no finite loss, a negative minimum)."""
    return "n/a" if value is None else format(value, spec)


def cmd_run(args: argparse.Namespace) -> int:
    from stability_bench.expectations import check_run
    from stability_bench.results import results_payload, write_json_atomic
    import torch

    from stability_bench.runner import execute, plan_runs

    if args.report:  # before the runs: a missing extra should not cost a long run
        from stability_bench.reports import require_matplotlib

        require_matplotlib()
    cases = _load(args.cases, args.variant)
    for case in [c for c in cases if c.slow and not args.slow]:
        print(f"skip {case.name}: slow (run it with --slow)")
    cases = [c for c in cases if args.slow or not c.slow]
    specs = [spec for case in cases for spec in plan_runs(
        case, devices=args.device or None, seeds=args.seed or None,
        optimizers=args.optimizer or None)]
    progress = ProgressLine()
    collected, failures, skipped = [], 0, 0
    runs: dict = {}  # run id -> result: parity expectations compare with these
    for i, spec in enumerate(specs, 1):
        if spec.device.startswith("cuda") and not torch.cuda.is_available():  # as pytest does
            print(f"skip {spec.run_id}: CUDA is not available on this machine")
            skipped += 1
            continue
        progress.begin(f"[{i}/{len(specs)}] {spec.run_id}")
        result = runs.get(spec.run_id) or execute(spec, progress)  # a parity partner may have run already
        runs[spec.run_id] = result
        progress.end()
        outcomes = check_run(spec.case, result, runs)
        collected.append((result, outcomes))
        failed = [o for o in outcomes if not o.passed]
        failures += bool(failed)
        status = "diverged at step %d" % result.divergence_step if result.diverged else "ok"
        m = result.metrics
        print(f"{'FAIL' if failed else 'pass'} {result.run_id}: {status}; min_loss {_num(m['min_loss'], '.3g')} "
              f"at step {m['min_loss_step']}, late_instability {_num(m['late_instability'], '.2f')}, "
              f"spikes {m['spike_count']}, {result.meta['wall_time_s']:.2f}s")
        for outcome in failed if not args.verbose else outcomes:
            print(f"    {outcome.describe()}")
        if failed and not args.no_triage:
            from stability_bench.reports.triage import triage_or_reason

            print(f"    triage bundle: {triage_or_reason(spec, result, outcomes, args.triage_dir)}")
        if args.json:  # rewritten after every run: an interrupted run keeps what finished
            write_json_atomic(args.json, results_payload(collected))
    print(f"{len(specs) - failures - skipped} passed, {failures} failed"
          + (f", {skipped} skipped" if skipped else ""))
    if args.report and collected:
        from stability_bench.reports.collect import report_runs
        from stability_bench.reports.html import write_report

        report = write_report(report_runs(collected, {c.name: c for c in cases}), args.report)
        print(f"report: {report.html} ({len(report.figures)} figures)")
    return EXIT_FAILED if failures else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from stability_bench.reports import require_matplotlib
    from stability_bench.reports.html import report_from_files

    require_matplotlib()
    try:
        report = report_from_files(args.results, args.out, tuple(args.format or ("png", "svg")))
    except ValueError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"report: {report.html} ({len(report.figures)} figures)")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    """Old vs new figures of two results files; exit 1 if a figure worsens past the threshold."""
    from stability_bench.compare import CompareInputError, run_compare

    figures = [name.strip() for item in args.metrics or [] for name in item.split(",") if name.strip()]
    try:
        status, table = run_compare(args.old, args.new, args.threshold, args.atol, figures or None, args.changed)
    except CompareInputError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(table)
    return status


def cmd_validate(args: argparse.Namespace) -> int:
    from stability_bench.runner import plan_runs

    cases = _load(args.cases)
    for case in cases:
        print(f"ok {case.where()}: {case.name} — {len(plan_runs(case))} runs, "
              f"{len(case.expectations)} expectations")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from stability_bench.runner import plan_runs

    for case in _load(args.cases):
        flags = " (slow)" if case.slow else ""
        print(f"{case.name}{flags}: {case.description.splitlines()[0] if case.description else ''}")
        if args.runs:
            for spec in plan_runs(case):
                print(f"    {spec.run_id}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stability-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run cases and check their expectations")
    run.add_argument("cases", nargs="*", help="case files or folders (default: cases/)")
    run.add_argument("--json", metavar="FILE", help="write every run's results to FILE (atomically)")
    run.add_argument("--device", action="append", help="only this device (repeatable)")
    run.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    run.add_argument("--optimizer", action="append", help="only this optimizer entry (repeatable)")
    run.add_argument("--variant", help="only this variant of each case")
    run.add_argument("--slow", action="store_true", help="also run cases marked slow (paper scale)")
    run.add_argument("-v", "--verbose", action="store_true", help="print every expectation")
    run.add_argument("--report", metavar="DIR", help="also write figures and an HTML report to DIR")
    run.add_argument("--triage-dir", metavar="DIR", help="where failed runs' triage bundles go "
                     "(default: $STABILITY_BENCH_TRIAGE, else ./triage)")
    run.add_argument("--no-triage", action="store_true", help="write no triage bundles")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="figures and an HTML page from results files")
    report.add_argument("results", nargs="+", help="results files (stability-bench run --json FILE)")
    report.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and the figures")
    report.add_argument("--format", action="append", choices=["png", "svg", "pdf"],
                        help="figure file format (repeatable; default png and svg)")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="compare two results files figure by figure "
                             "(exit 1 if one worsens past the threshold)")
    compare.add_argument("old", metavar="OLD.json", help="results file of the baseline (run --json)")
    compare.add_argument("new", metavar="NEW.json", help="results file to check against it")
    compare.add_argument("--threshold", type=float, default=1.1,
                         help="a figure is worse when new > old x THRESHOLD (default 1.1)")
    compare.add_argument("--atol", type=float, default=0.0,
                         help="... and new - old > ATOL (default 0: from 0, any increase)")
    compare.add_argument("--metrics", action="append", metavar="NAME[,NAME...]",
                         help="figures to compare (repeatable; default: late_instability, spike_count, "
                              "spike_frequency, final_loss, min_loss, divergence, diverged)")
    compare.add_argument("--changed", action="store_true", help="show only rows whose value changed")
    compare.set_defaults(func=cmd_compare)
    validate = sub.add_parser("validate", help="check case files without running them")
    validate.add_argument("cases", nargs="*")
    validate.set_defaults(func=cmd_validate)
    listing = sub.add_parser("list", help="list cases (and with --runs, their runs)")
    listing.add_argument("cases", nargs="*")
    listing.add_argument("--runs", action="store_true")
    listing.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from stability_bench.components.cifar10 import CIFAR10FormatError, DataNotFoundError
    from stability_bench.runner import RunSetupError
    from stability_bench.schema import CaseError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CaseError, RunSetupError, DataNotFoundError, CIFAR10FormatError) as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("stability-bench: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # an optional extra (reports: matplotlib) is missing
        from stability_bench.reports import ReportDependencyError

        if not isinstance(exc, ReportDependencyError):
            raise
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
