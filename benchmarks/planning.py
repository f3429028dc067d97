"""How planning grows with the number of runs, and what validating a huge sweep costs.

    python benchmarks/planning.py plan [--points 10000 100000] [--repeats 3]
    python benchmarks/planning.py validate [--repeats 3]

``plan`` times :func:`stability_bench.plan.make_plan` (no limit, no torch, no CUDA
query) on a case of ``N`` sweep points — a 100-value lr sweep times an eps sweep of N/100
values, one seed, one device — alone and with a parity partner (each run planned with its
partner's run: 2N runs). It prints seconds (best of ``--repeats``), µs per run and the
ratio of each time to the first row's: linear planning keeps µs per run flat (10× the
points, 10× the time). (Before
Plan.add checked membership in a set, and partners were found by lookup, the time grew
with the square of the runs.)

``validate`` times ``stability-bench validate`` of tests/data/hostile/sweep_over_limit.yaml
(four sweeps of 100 values: 100,000,000 runs in 5 KB) at the default limit and with
``--max-runs 0`` (no limit: the runs are counted from the sweep sizes, never expanded), next
to ``validate cases/``, with each child's CPU time and peak memory.

The helpers are named ``measure_*`` so that asv collects nothing from this file.
"""
from __future__ import annotations

import argparse
import inspect
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "stability_bench.cli"]


def sweep_case(points: int, parity: bool) -> list:
    """A quadratic case whose Adam entry sweeps ``points`` points (lr: 100 values × eps:
    points / 100 values); with ``parity``, a reference partner sweeping the same."""
    from stability_bench.schema import load_cases

    lrs = [round(1e-4 * (1 + i), 6) for i in range(100)]
    epss = [1e-9 * (1 + i) for i in range(max(1, points // 100))]
    adam = {"class": "torch.optim.Adam", "lr": {"sweep": lrs}, "eps": {"sweep": epss}}
    case = {"name": f"plan_{points}", "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0]},
            "loss": {"kind": "quadratic"}, "steps": 10, "optimizers": {"adam": adam}}
    if parity:
        case["optimizers"]["ref"] = {**adam, "class": "reference.Adam"}
        case["expect"] = {"adam": {"parity": {"with": "ref"}}}
    return load_cases(case)


def measure_plan(cases: list, repeats: int) -> tuple[float, int]:
    """Best of ``repeats`` seconds of make_plan(cases) with no limit; and its number of runs."""
    from stability_bench.plan import make_plan

    limit = {"max_runs": None} if "max_runs" in inspect.signature(make_plan).parameters else {}
    best, runs = float("inf"), 0
    for _ in range(repeats):
        started = time.perf_counter()
        plan = make_plan(cases, cuda_available=False, searches=False, **limit)
        best = min(best, time.perf_counter() - started)
        runs = len(plan.runs)
        del plan
    return best, runs


PEAK = ("import resource, runpy, sys\n"
        "sys.argv = ['stability-bench', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('stability_bench.cli', run_name='__main__')\n"
        "finally:\n    use = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    print('peak-kb', use.ru_maxrss, use.ru_utime + use.ru_stime, file=sys.stderr)\n")


def measure_validate(args: list[str], repeats: int) -> tuple[float, float, float, int, str]:
    """(best wall seconds, best CPU seconds, peak RSS in MB, exit code, its last line of
    output) of ``stability-bench validate ARGS``, each time in a fresh process. CPU seconds
    (user + system) move less than wall time on a shared machine."""
    wall, cpu, peak, code, last = float("inf"), float("inf"), 0.0, 0, ""
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PEAK, "validate", *args], cwd=REPO, capture_output=True,
                              text=True)
        wall = min(wall, time.perf_counter() - started)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        _, kb, seconds = next(line for line in lines if line.startswith("peak-kb")).split()
        peak, cpu = max(peak, int(kb) / 1024), min(cpu, float(seconds))
        code = proc.returncode
        last = [line for line in lines if not line.startswith("peak-kb")][-1][:110]
    return wall, cpu, peak, code, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    plan = sub.add_parser("plan")
    plan.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000])
    plan.add_argument("--repeats", type=int, default=3)
    validate = sub.add_parser("validate")
    validate.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.what == "plan":
        print("| sweep points | parity partner | runs planned | make_plan s (best) | µs per run | time / first row |")
        print("|---|---|---|---|---|---|")
        first = None
        for parity in (False, True):
            for points in args.points:
                seconds, runs = measure_plan(sweep_case(points, parity), args.repeats)
                first = first or seconds
                print(f"| {points:,} | {'yes' if parity else 'no'} | {runs:,} | {seconds:.3f} | "
                      f"{1e6 * seconds / runs:.2f} | {seconds / first:.1f} |", flush=True)
    else:
        huge = "tests/data/hostile/sweep_over_limit.yaml"
        print("| command | exit | wall s (best) | CPU s (best) | peak MB | last line |")
        print("|---|---|---|---|---|---|")
        for label, cli_args in (("validate cases/", ["cases/"]), (f"validate {huge}", [huge]),
                                (f"validate {huge} --max-runs 0", [huge, "--max-runs", "0"])):
            wall, cpu, peak, code, last = measure_validate(cli_args, args.repeats)
            print(f"| `{label}` | {code} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | {last.replace('|', '/')} |",
                  flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
