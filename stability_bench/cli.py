"""Command line: ``stability-bench run | baseline | validate | list | report | compare | init | data``.

Exit codes of ``run`` (each reported as a paragraph, never a traceback):

* 0 — every run finished and every expectation held;
* 1 — an expectation failed;
* 2 — bad input: a malformed case, an unknown optimizer, hyperparameters its constructor
  refuses, more runs than ``--max-runs``, a run that could not be set up (its model, data
  or optimizer raised while being built, whatever the exception), filters that leave
  nothing to run, an unusable option or ``--json`` path;
* 3 — a run crashed (the optimizer or model raised while training, from the first step
  on) or went past its case's ``timeout:``; the other runs still ran and are in ``--json``;
* 4 — (``--baseline``) a baseline is stale: its case changed since it was recorded (the
  message names the keys and the command that re-records); nothing else failed;
* 5 — runs could not run here: their data is not on this machine and could not be fetched
  (one line names the case files and how to get the data; the reason is said once); with
  ``--strict`` (or ``$STABILITY_BENCH_STRICT=1``) also CUDA runs skipped on a machine that
  has a GPU torch cannot use; the other runs still ran;
* 130, 143, 129 — interrupted by SIGINT (Ctrl-C), SIGTERM (a CI timeout, ``docker stop``)
  or SIGHUP: 128 + the signal's number; ``--json`` holds the runs that finished.

When several of 1–5 apply, the first in the order 2, 3, 1, 5, 4 wins; a stop signal wins
over all. ``baseline`` exits 1 when an expectation is fragile under a one-ulp nudge (that
file's baseline is not written), 3 when a run did not finish, 5 when its data is missing.
``data fetch | verify | where`` exit 0 when the data is there (and intact), 5 when it is
not (or cannot be fetched), 1 when ``verify`` finds it damaged.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CRASHED, EXIT_STALE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_NO_DATA = 5


class UsageError(ValueError):
    """A bad option value (exit 2)."""


def _case_files(paths: Sequence[str]) -> list[Path]:
    """Case files named directly, or every *.yaml below a folder (default ``cases/``) that
    carries the ``stability-bench: 1`` marker — the files the pytest plugin collects. The
    other YAML files of a folder are listed on stderr, once each, saying how to mark them."""
    from stability_bench.yamlsource import has_case_marker, unmarked_reason

    files: list[Path] = []
    unmarked: dict[Path, Path] = {}   # resolved → as found: a folder given twice warns once
    for raw in paths or ["cases"]:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml")):
                if has_case_marker(found):
                    files.append(found)
                else:
                    unmarked.setdefault(found.resolve(), found)
        else:
            files.append(path)
    for found in unmarked.values():
        line, reason = unmarked_reason(found)
        print(f"stability-bench: warning: {found}{'' if line is None else f':{line}'}: {reason}", file=sys.stderr)
    return files


def _load(paths: Sequence[str], variant: str | None = None, errors: list | None = None):
    """The cases of ``paths``; their warnings (figures that will be unknown, and why) go
    to stderr. Every file is read: the malformed ones are appended to ``errors`` or, without
    it, raised together once all were read (a UsageError naming each)."""
    from stability_bench.schema import CaseError, load_cases
    from stability_bench.unknown_theory import case_warnings

    cases, bad = [], [] if errors is None else errors
    files = _case_files(paths)
    if not files:
        raise UsageError(f"no case files in {', '.join(paths or ['cases'])} (a case file is a *.yaml "
                         f"carrying the line 'stability-bench: 1')")
    variants: list[str] = []
    for file in files:
        try:
            found = load_cases(file)
        except CaseError as exc:
            bad.append(exc)
            continue
        if variant is not None:
            variants += [c.name.rsplit("/", 1)[-1] for c in found[1:]]
            found = [c for c in found if c.name.rsplit("/", 1)[-1] == variant or c.name == variant]
        cases.extend(found)
    if variant is not None and not cases and not bad:
        raise UsageError(f"--variant {variant}: no case has a variant of that name; their variants: "
                         + (", ".join(dict.fromkeys(variants)) if variants else "none"))
    for warning in dict.fromkeys(w for case in cases for w in case_warnings(case)):
        print(f"stability-bench: warning: {warning}", file=sys.stderr)
    if bad and errors is None:
        raise UsageError("\n".join(map(str, bad)))
    return cases


class ProgressLine:
    """One updating status line over the runs (done/total, and the current run's steps
    when runs train in this process); silent when stderr is not a terminal."""

    def __init__(self, total: int, stream=None):
        stream = sys.stderr if stream is None else stream  # at call time: stderr may be redirected
        self.stream, self.enabled = stream, stream.isatty()
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def _show(self, text: str) -> None:
        if self.enabled:
            self.stream.write(f"\r[{self.done}/{self.total} runs, {time.perf_counter() - self.start:.0f}s] "
                              f"{text}\x1b[K")
            self.stream.flush()

    def __call__(self, run_id: str, done: int, total: int, loss: float) -> None:
        width = 24
        self._show(f"{run_id} [{'#' * int(width * done / total):<{width}}] {done}/{total} loss {loss:.3e}")

    def finished(self, run_id: str) -> None:
        self.done += 1
        self._show(f"last: {run_id}")

    def end(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _num(value, spec: str) -> str:
    """A metric for the summary line; metrics may be None (no finite loss, a negative minimum)."""
    return "n/a" if value is None else format(value, spec)


def _summary(report) -> str:
    """One line per requested run or critical-lr search."""
    if report.skipped is not None:
        return f"skip {report.run_id}: {report.skipped}"
    if report.failure is not None:  # the paragraph saying why goes to stderr
        label = {"crash": "CRASH", "timeout": "TIMEOUT"}.get(report.failure.kind, "ERROR")
        return f"{label} {report.run_id}"
    verdict = {"failed": "FAIL", "stale": "STALE"}.get(report.status, "pass")
    if report.result is None:  # a critical-lr search
        found = report.found
        value = f"{found.value:.4g} (edge in [{found.lower:.4g}, {found.upper:.4g}])" if found.value is not None \
            else f"unknown: {found.reason}"
        return f"{verdict} {report.run_id}: critical lr {value}, {len(found.probes)} probe runs"
    result, m = report.result, report.result.metrics
    status = "diverged at step %d" % result.divergence_step if result.diverged else "ok"
    return (f"{verdict} {result.run_id}: {status}; min_loss "
            f"{_num(m['min_loss'], '.3g')} at step {m['min_loss_step']}, late_instability "
            f"{_num(m['late_instability'], '.2f')}, spikes {m['spike_count']}, {result.meta['wall_time_s']:.2f}s")


def _exit_code(statuses: list[str]) -> int:
    """Bad input (a run that could not be set up) over a crash over a failed expectation."""
    for status, code in (("setup", EXIT_BAD_INPUT), ("crash", EXIT_CRASHED), ("timeout", EXIT_CRASHED),
                         ("failed", EXIT_FAILED), ("missing_data", EXIT_NO_DATA), ("unavailable", EXIT_NO_DATA),
                         ("stale", EXIT_STALE)):
        if status in statuses:
            return code
    return EXIT_OK


def _client(address: str | None):
    if address is None:
        return None
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--dask needs dask.distributed: pip install 'stability-bench[dask]'") from None
    try:
        return Client(address, timeout="10s")
    except OSError as exc:
        raise UsageError(f"--dask {address}: no Dask scheduler answers there ({exc})") from None


def _strict(args: argparse.Namespace) -> bool:
    """``--strict`` or ``$STABILITY_BENCH_STRICT=1`` (a malformed value: exit 2, naming it)."""
    from stability_bench.settings import strict_mode

    try:
        return strict_mode(getattr(args, "strict", False))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _case_file(report) -> str:
    case = (report.spec if hasattr(report, "spec") else report.search).case
    return str(case.source.file) if case.source.file is not None else case.name


def _could_not_run(what: str, by_file: dict[str, list[str]], how: str) -> str:
    """The one line naming the case files whose runs could not run here, and what to do."""
    runs = sum(map(len, by_file.values()))
    return (f"could not run here ({what}): {', '.join(by_file)} ({runs} run{'s' * (runs != 1)}) — {how}")


def cmd_run(args: argparse.Namespace) -> int:
    from stability_bench.checks import Baselines
    from stability_bench.orchestrate import run_plan
    from stability_bench.plan import make_plan
    from stability_bench.checks import report_entry
    from stability_bench.plan import CUDA_MISSING, cuda_skip_problem, prepare_data
    from stability_bench.results import ResultsJournal
    from stability_bench.signals import StopSignals

    if args.report:  # before the runs: a missing extra should not cost a long run
        from stability_bench.reports import require_matplotlib

        require_matplotlib()
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    strict = _strict(args)
    signals = args.signals if getattr(args, "signals", None) is not None else StopSignals()
    cases = _load(args.cases, args.variant)
    _check_optimizer_filter(cases, args.optimizer)
    plan = make_plan(cases, devices=args.device or None, seeds=args.seed or None,
                     optimizers=args.optimizer or None, run_slow=args.run_slow,
                     searches=not args.no_critical_lr, max_runs=_max_runs(args))
    if not plan.requested and not plan.searches:
        raise UsageError("nothing to run: the cases and filters given leave no run")
    baselines = Baselines(cases) if args.baseline else None  # a missing baseline fails before training
    client = _client(args.dask)
    try:
        journal = ResultsJournal(args.json) if args.json else None  # so does a bad --json path
    except BaseException:
        if client is not None:
            client.close()
        raise
    reports = None
    progress = ProgressLine(total=len(plan.requested) + len(plan.searches))  # one tick per report
    collected, statuses = [], []
    no_data: dict[str, dict[str, list[str]]] = {}   # hint → case file → runs (said in one line each)
    hidden_gpu: dict[str, list[str]] = {}
    try:  # from the journal's opening on, FILE is written whatever ends the invocation
        # Data first, once for the whole invocation (fetched on first use), before any run:
        # why it is missing is said once here, not once per run.
        missing = prepare_data(plan)
        for message in dict.fromkeys(str(exc) for exc in missing.values()):
            print(f"stability-bench: error: {message}", file=sys.stderr, flush=True)
        gpu_problem = (cuda_skip_problem(CUDA_MISSING)
                       if strict and CUDA_MISSING in plan.skipped.values() else None)
        reports = run_plan(plan, jobs=args.jobs, client=client, threads=args.threads, baselines=baselines,
                           progress=progress if args.jobs == 1 and client is None else None)
        for report in reports:
            progress.end()
            status = report.status
            if gpu_problem is not None and report.skipped == CUDA_MISSING:  # strict: not a skip
                status = "unavailable"
                hidden_gpu.setdefault(_case_file(report), []).append(report.run_id)
            statuses.append(status)
            if report.run_id in missing:  # said once, above and in the summary line
                hint = getattr(missing[report.run_id], "hint", None) or "see the error above"
                no_data.setdefault(hint, {}).setdefault(_case_file(report), []).append(report.run_id)
                if journal is not None:
                    with signals.held():
                        journal.append(report_entry(report))
                progress.finished(report.run_id)
                signals.check()
                continue
            print(_summary(report), flush=True)
            for outcome in report.outcomes if args.verbose else report.failed_outcomes:
                print(f"    {outcome.describe()}")
            for finding in report.findings if args.verbose else report.failed_findings + report.stale_findings:
                print(f"    baseline: {finding.message}")
            if report.failure is not None:
                print(f"stability-bench: error: {report.failure.describe()}", file=sys.stderr)
                if args.verbose and report.failure.traceback:
                    print(report.failure.traceback.rstrip(), file=sys.stderr)
                if report.failure.kind in ("crash", "timeout") and hasattr(report, "spec") and not args.no_triage:
                    from stability_bench.reports.triage import crash_triage_or_reason

                    print(f"    triage bundle: {crash_triage_or_reason(report.spec, report.failure, args.triage_dir)}")
            if report.status == "failed" and report.result is not None and not args.no_triage:
                from stability_bench.reports.triage import triage_or_reason

                print(f"    triage bundle: {triage_or_reason(report.spec, report.result, report.outcomes, args.triage_dir)}")
            entry = report_entry(report) if report.skipped is None else None
            if args.report and entry is not None:
                collected.append(entry)
            if journal is not None and entry is not None:
                with signals.held():  # a journal line is written whole
                    journal.append(entry)
            progress.finished(report.run_id)
            signals.check()  # a stop signal whose exception was lost where it landed ends the run here
    finally:
        with signals.held():  # also on a stop signal: the file holds every run that finished
            progress.end()
            if reports is not None:
                reports.close()  # the runs in flight are abandoned (worker processes stopped)
            if journal is not None:
                journal.close([*plan.requested, *plan.searches])
            if client is not None:
                client.close()
    counts = {s: statuses.count(s) for s in ("passed", "failed", "stale", "crash", "timeout", "setup",
                                            "missing_data", "unavailable", "skipped")}
    not_here = counts["missing_data"] + counts["unavailable"]
    print(f"{counts['passed']} passed, {counts['failed']} failed"
          + (f", {counts['stale']} stale (baseline recorded for another case definition)" if counts["stale"] else "")
          + (f", {counts['crash']} crashed" if counts["crash"] else "")
          + (f", {counts['timeout']} timed out" if counts["timeout"] else "")
          + (f", {counts['setup']} could not start" if counts["setup"] else "")
          + (f", {not_here} could not run here" if not_here else "")
          + (f", {counts['skipped']} skipped" if counts["skipped"] else ""))
    for hint, by_file in no_data.items():
        print(_could_not_run("no data", by_file, hint))
    if hidden_gpu:
        print(_could_not_run("strict", hidden_gpu, gpu_problem))
    if args.report and collected:
        from stability_bench.reports.collect import report_data
        from stability_bench.reports.html import write_report
        from stability_bench.results import environment

        data = report_data([e for e in collected if "run_id" in e], [e["failure"] for e in collected if "failure" in e],
                           [e["search"] for e in collected if "search" in e], environment(),
                           {c.name: c for c in cases})
        report = write_report(data, args.report)
        print(f"report: {report.html} ({len(report.figures)} figures)")
    return _exit_code(statuses)


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
        status, table = run_compare(args.old, args.new, args.threshold, args.atol, figures or None, args.changed,
                                    baseline=args.baseline)
    except CompareInputError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(table)
    return status


def cmd_baseline(args: argparse.Namespace) -> int:
    """Record (or re-record) the baseline beside each case file."""
    from stability_bench.orchestrate import record_baselines

    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    if args.trajectory_steps is not None and args.trajectory_steps < 0:
        raise UsageError(f"--trajectory-steps must be at least 0, got {args.trajectory_steps}")
    cases = _load(args.cases)
    client = _client(args.dask)
    try:
        recorded = record_baselines(cases, jobs=args.jobs, client=client, threads=args.threads,
                                    run_slow=args.run_slow, write=not args.check,
                                    trajectory_steps=args.trajectory_steps)
    finally:
        if client is not None:
            client.close()
    for entry in recorded:
        informative, figures = entry.informative
        state = "written" if entry.written else ("checked, not written" if args.check else "NOT WRITTEN")
        print(f"baseline: {entry.path} ({state}): {informative} of {figures} figures informative")
        for fragile in entry.fragile:
            print(f"    fragile: {fragile.message}")
    if any(entry.fragile for entry in recorded):
        print("stability-bench: error: an expectation that a one-ulp nudge flips is not a claim: widen it to "
              "what the nudged runs show, or state a figure that holds (run more seeds)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Every file read, every problem reported; what ``run`` would refuse before training
    (a malformed case, hyperparameters the optimizer's constructor refuses, more runs than
    the limit) is refused here. Runs are counted from the sweep sizes, never expanded."""
    from stability_bench.plan import PlanTooLarge, check_run_limit, run_count

    errors: list = []
    cases = _load(args.cases, errors=errors)
    fine = []
    for case in cases:
        try:
            check_run_limit([case], _max_runs(args))
        except PlanTooLarge as exc:
            errors.append(exc)
            continue
        fine.append(case)
        print(f"ok {case.where()}: {case.name} — {run_count(case):,} runs, "
              f"{len(case.expectations)} expectations")
        for key, entry in case.optimizers.items():
            if entry.unavailable is not None:
                print(f"   {case.where(('optimizers', key))}: optimizers.{key} skipped here: {entry.unavailable}")
    if len(fine) == len(cases):  # each is within the limit: are they together (as `run` would plan them)?
        try:
            check_run_limit(cases, _max_runs(args))
        except PlanTooLarge as exc:
            errors.append(exc)
    for error in errors:
        print(f"stability-bench: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT if errors else EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from stability_bench.plan import check_run_limit
    from stability_bench.plan import plan_runs

    cases = _load(args.cases)
    if args.runs:
        check_run_limit(cases, _max_runs(args))
    for case in cases:
        flags = " (slow)" if case.slow else ""
        print(f"{case.name}{flags}: {case.description.splitlines()[0] if case.description else ''}")
        if args.runs:
            for spec in plan_runs(case):
                print(f"    {spec.run_id}")
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    """Scaffold a project folder to guard the user's optimizer (:mod:`stability_bench.scaffold`)."""
    from stability_bench.scaffold import InitError, init_project

    try:
        done = init_project(args.directory, args.optimizer)
    except InitError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in done.written:
        print(f"wrote {path}")
    for path in done.kept:
        print(f"kept {path} (an earlier init wrote it; it covers every case in {done.case.parent})")
    if done.kept_config is not None:
        print(f"kept {done.kept_config} (pytest's configuration here): add --stability-baseline to its addopts "
              f"to check the baselines, and cases to its testpaths if it sets testpaths")
    # the new case only: a baseline re-recorded for the whole folder would take in any change
    # made since to the optimizers it already guards
    print(f"next: stability-bench validate {done.case} && stability-bench baseline {done.case} && python -m pytest")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """``data fetch``: download and verify CIFAR-10 (nothing if an intact copy is there);
    ``data verify``: check the copy a run would load; ``data where``: where it is, every
    place searched, and where a fetch would go."""
    from stability_bench.components import cifar10
    from stability_bench.components.download import DownloadError

    try:
        if args.data_command == "where":
            found, lines = cifar10.where_report()
            print("\n".join(lines))
            return EXIT_OK if found is not None else EXIT_NO_DATA
        if args.data_command == "fetch":
            target = Path(args.dir).expanduser().resolve() if args.dir else cifar10.fetch_target()
            print(f"CIFAR-10: fetching {cifar10.archive_url()} into {target} (if not there already)", flush=True)
            folder = cifar10.fetch_cifar10(target)
            for line in cifar10.verify_cifar10(folder):
                print(f"    {line}")
            print(f"CIFAR-10: {folder}")
            try:
                used = cifar10.find_cifar10()
            except cifar10.DataNotFoundError:
                used = None
            if used != folder:
                print(f"note: runs load {used if used is not None else 'nothing found by the default search'} "
                      f"(see `stability-bench data where`); pass data_dir, or set {cifar10.ENV_VAR}={target}, "
                      f"to use this copy")
            return EXIT_OK
        path = cifar10.find_cifar10(args.path)  # verify
        print(f"CIFAR-10: {path}")
        for line in cifar10.verify_cifar10(path):
            print(f"    {line}")
        return EXIT_OK
    except cifar10.DataNotFoundError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_NO_DATA
    except DownloadError as exc:
        print(f"stability-bench: error: {exc}\n{cifar10.offline_options()}", file=sys.stderr)
        return EXIT_NO_DATA
    except cifar10.CIFAR10FormatError as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _max_runs(args: argparse.Namespace) -> int | None:
    """``--max-runs N`` (0: no limit), else the default limit."""
    from stability_bench.plan import MAX_RUNS

    value = getattr(args, "max_runs", None)
    if value is None:
        return MAX_RUNS
    if value < 0:
        raise UsageError(f"--max-runs must be at least 0 (0: no limit), got {value}")
    return value or None


def _check_optimizer_filter(cases: list, names: list[str] | None) -> None:
    """``--optimizer NAME`` that no case has is a typo, not an empty selection."""
    from stability_bench.registry import nearest

    known = list(dict.fromkeys(k for case in cases for k in case.optimizers))
    unknown = [name for name in dict.fromkeys(names or []) if name not in known]
    if unknown:
        raise UsageError("\n".join(
            f"--optimizer {name}: no case given has an optimizer entry of that name"
            + (f"; did you mean {guess!r}?" if (guess := nearest(name, known)) else ".")
            + f" Their optimizers: {', '.join(known)}." for name in unknown))


def _exit_codes_help() -> str:
    """``run --help``'s epilog: the exit codes as this module's docstring states them."""
    doc = __doc__ or ""   # python -OO drops docstrings
    head = "Exit codes of ``run`` (each reported as a paragraph, never a traceback):\n"
    if head not in doc:
        return ""
    codes = doc.split(head, 1)[1].split("\nWhen several", 1)[0].replace("``", "")
    return f"exit codes:{codes}\nWhen several apply, the first of 2, 3, 1, 5, 4 wins; a stop signal wins over all."


def build_parser() -> argparse.ArgumentParser:
    from stability_bench.plan import MAX_RUNS

    MAX_RUNS_HELP = (f"the most runs one invocation plans (default {MAX_RUNS:,}; 0: no limit), counted from "
                     f"the sweep sizes before any run is expanded")
    parser = argparse.ArgumentParser(prog="stability-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run cases and check their expectations",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=_exit_codes_help())
    run.add_argument("cases", nargs="*", help="case files or folders (default: cases/)")
    run.add_argument("--json", metavar="FILE", help="write every run's results to FILE (atomically)")
    run.add_argument("--device", action="append", help="only this device (repeatable)")
    run.add_argument("--seed", action="append", type=int, help="only this seed (repeatable)")
    run.add_argument("--optimizer", action="append", help="only this optimizer entry (repeatable)")
    run.add_argument("--variant", help="only this variant of each case")
    run.add_argument("--run-slow", "--slow", dest="run_slow", action="store_true",
                     help="also run cases marked slow (paper scale); the same flag as pytest's")
    run.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                     help="train runs in N worker processes (default 1; CPU results are identical)")
    run.add_argument("--dask", metavar="ADDRESS", help="train runs on the Dask cluster whose scheduler "
                     "is at ADDRESS (tcp://HOST:PORT); needs the dask extra")
    run.add_argument("--threads", type=int, metavar="N", help="torch threads per run (default: "
                     "$STABILITY_BENCH_THREADS, else the harness's choice: 1 for small models)")
    run.add_argument("--baseline", action="store_true", help="also compare every run with the baseline "
                     "beside its case file (stability-bench baseline records it)")
    run.add_argument("--no-critical-lr", action="store_true", help="skip the cases' critical-lr searches")
    run.add_argument("--max-runs", type=int, metavar="N", help=MAX_RUNS_HELP)
    run.add_argument("-v", "--verbose", action="store_true", help="print every expectation")
    run.add_argument("--report", metavar="DIR", help="also write figures and an HTML report to DIR")
    run.add_argument("--triage-dir", metavar="DIR", help="where failed runs' triage bundles go "
                     "(default: $STABILITY_BENCH_TRIAGE, else ./triage)")
    run.add_argument("--no-triage", action="store_true", help="write no triage bundles")
    run.add_argument("--strict", action="store_true", help="CUDA runs skipped on a machine that has a GPU "
                     "torch cannot use fail too (exit 5), as runs without their data always do; also "
                     "$STABILITY_BENCH_STRICT=1")
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="figures and an HTML page from results files")
    report.add_argument("results", nargs="+", help="results files (stability-bench run --json FILE)")
    report.add_argument("--out", required=True, metavar="DIR", help="folder for index.html and the figures")
    report.add_argument("--format", action="append", choices=["png", "svg", "pdf"],
                        help="figure file format (repeatable; default png and svg)")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser("compare", help="compare two results files figure by figure "
                             "(exit 1 if one worsens past its noise band)")
    compare.add_argument("old", metavar="OLD.json", help="results file of the baseline (run --json)")
    compare.add_argument("new", metavar="NEW.json", help="results file to check against it")
    compare.add_argument("--threshold", type=float, default=None,
                         help="judge figures without a noise band by ratio: worse when new > old x THRESHOLD "
                              "(default: no verdict without a noise estimate)")
    compare.add_argument("--atol", type=float, default=0.0,
                         help="... and new - old > ATOL (default 0: from 0, any increase)")
    compare.add_argument("--metrics", action="append", metavar="NAME[,NAME...]",
                         help="figures to compare (repeatable; default: late_instability, spike_count, "
                              "spike_frequency, final_loss, min_loss, divergence, diverged)")
    compare.add_argument("--changed", action="store_true", help="show only rows whose value changed")
    compare.set_defaults(func=cmd_compare)
    compare.add_argument("--baseline", metavar="FILE", help="judge figures by this baseline's noise bands")
    baseline = sub.add_parser("baseline", help="record the stability baseline beside each case file "
                              "(every seed, a one-ulp nudge of each, the critical lr)")
    baseline.add_argument("cases", nargs="*", help="case files or folders (default: cases/)")
    baseline.add_argument("-j", "--jobs", type=int, default=1, metavar="N", help="worker processes")
    baseline.add_argument("--dask", metavar="ADDRESS", help="record on this Dask cluster")
    baseline.add_argument("--threads", type=int, metavar="N", help="torch threads per run")
    baseline.add_argument("--run-slow", action="store_true", help="also record slow cases")
    baseline.add_argument("--check", action="store_true", help="run and evaluate every expectation on the "
                          "nudged runs, print informative figures and fragile expectations; write nothing")
    baseline.add_argument("--trajectory-steps", type=int, metavar="K", help="early-trajectory steps "
                          "recorded per run (default 20)")
    baseline.set_defaults(func=cmd_baseline)
    validate = sub.add_parser("validate", help="check case files without running them")
    validate.add_argument("cases", nargs="*")
    validate.add_argument("--max-runs", type=int, metavar="N", help=MAX_RUNS_HELP)
    validate.set_defaults(func=cmd_validate)
    listing = sub.add_parser("list", help="list cases (and with --runs, their runs)")
    listing.add_argument("cases", nargs="*")
    listing.add_argument("--runs", action="store_true")
    listing.add_argument("--max-runs", type=int, metavar="N", help=MAX_RUNS_HELP)
    listing.set_defaults(func=cmd_list)
    init = sub.add_parser("init", help="scaffold a project to guard your optimizer: an example case in cases/, "
                          "pytest.ini and a GitHub workflow (never overwrites a file)")
    init.add_argument("directory", nargs="?", default=".", metavar="DIR", help="the project folder (default: .)")
    init.add_argument("--optimizer", required=True, metavar="CLASS", help="the optimizer to guard, by import "
                      "path: package.module:ClassName (or package.module.ClassName; torch.optim.NAME works too)")
    init.set_defaults(func=cmd_init)
    data = sub.add_parser("data", help="CIFAR-10 on this machine: fetch it, verify it, say where it is "
                          "(exit 0: there; 5: not there or not fetched; 1: damaged)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download the official release (MD5-checked, atomic, once "
                                "under a lock) into $STABILITY_BENCH_DATA if set, else the cache folder "
                                "($STABILITY_BENCH_CACHE, else ~/.cache/stability-bench)")
    fetch.add_argument("--dir", metavar="DIR", help="fetch into DIR instead")
    verify = data_sub.add_parser("verify", help="check the copy runs would load (by hash where one is "
                                 "recorded, and by reading every file)")
    verify.add_argument("path", nargs="?", help="a data folder or .npz file (default: the one runs find)")
    data_sub.add_parser("where", help="where the data is, every place searched, and where a fetch goes")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None, *, process: bool = False) -> int:
    """Run one command; its exit code. SIGINT, SIGTERM and SIGHUP end any command alike
    (:mod:`stability_bench.signals`): ``run`` writes its ``--json`` file from the runs that
    finished, and the exit code is 128 + the signal's number (130, 143, 129). ``process``:
    this is the process's own command (:func:`entry`), which exits right after; the stop
    signals stay ignored once the code is decided instead of being restored."""
    from stability_bench.signals import StopSignals, exit_code, signal_name

    with StopSignals() as signals:  # first: a signal while torch imports is handled too
        try:
            try:
                code: int | None = _main(argv, signals)
            finally:
                signals.hold_from_now()  # the command has ended: a late signal only counts
        except KeyboardInterrupt:  # in the command, or (Python < 3.11) as the hold began
            code = None
        if code is None or signals.signum is not None:
            signum = signals.signum or signal.SIGINT
            print(f"stability-bench: interrupted ({signal_name(signum)})", file=sys.stderr)
            code = exit_code(signum)
        if process:
            signals.ignore_from_now()
        return code


def entry() -> None:
    """The ``stability-bench`` command and ``python -m stability_bench.cli``: :func:`main`,
    then exit with its code; a stop signal after the code is decided (the interpreter's
    teardown) cannot turn it into a death by the signal."""
    sys.exit(main(process=True))


def _main(argv: Sequence[str] | None, signals) -> int:
    from stability_bench.components.cifar10 import CIFAR10FormatError, DataNotFoundError
    from stability_bench.baseline import BaselineError
    from stability_bench.orchestrate import RunsFailed
    from stability_bench.plan import PlanTooLarge
    from stability_bench.runner import RunSetupError
    from stability_bench.types import CaseError

    args = build_parser().parse_args(argv)
    args.signals = signals
    try:
        return args.func(args)
    except (CaseError, RunSetupError, DataNotFoundError, CIFAR10FormatError, UsageError, BaselineError,
            PlanTooLarge, OSError) as exc:
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunsFailed as exc:  # `baseline`: a run that did not finish leaves no baseline
        print(f"stability-bench: error: no baseline written:\n{exc}", file=sys.stderr)
        return EXIT_NO_DATA if all(f.kind == "missing_data" for f in exc.failures) else EXIT_CRASHED
    except ImportError as exc:  # an optional extra (reports: matplotlib) is missing
        from stability_bench.reports import ReportDependencyError

        if not isinstance(exc, ReportDependencyError):
            raise
        print(f"stability-bench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    entry()
