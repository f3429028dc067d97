"""Wall times of the orchestration: parallel runs, thread choice, the README's commands.

Every comparison is measured side by side in one invocation (absolute times drift on a
shared machine; quote the ratios). Subcommands, each printing a markdown table:

    python benchmarks/orchestration.py jobs       # `run cases/` --jobs 1 vs --jobs 2
    python benchmarks/orchestration.py sweep      # a 32-point lr sweep on Bai Li, jobs 1 vs 2
    python benchmarks/orchestration.py threads    # one case: torch default vs 1 thread vs harness choice,
                                                  #   idle and beside a competing 2-core load
    python benchmarks/orchestration.py readme     # the README's commands (run, tests, cases), default settings
    python benchmarks/orchestration.py startup    # `pytest --collect-only` of an empty project,
                                                  #   with and without the plugin

``--load`` runs any of them beside N busy processes (``python -c 'while 1: pass'``). The
helpers are named ``measure_*`` so that asv collects nothing from this file.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "stability_bench.cli"]


@contextlib.contextmanager
def competing_load(processes: int):
    """``processes`` busy Python loops for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(processes)]
    try:
        time.sleep(0.5 if procs else 0)
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure_command(command: list[str], cwd: Path = REPO, env: dict | None = None) -> float:
    """Seconds of one run of ``command`` (its output discarded; a failure is reported)."""
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        print(proc.stdout[-2000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}")
    return elapsed


def measure_interleaved(commands: dict[str, tuple], repeats: int) -> dict[str, list[float]]:
    """Each command ``repeats`` times, rounds in rotated order so drift hits all alike."""
    names = list(commands)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(measure_command(*commands[name]))
    return times


def table(times: dict[str, list[float]], base: str) -> str:
    rows = ["| setting | median s | min s | median / " + base + " |", "|---|---|---|---|"]
    ref = statistics.median(times[base])
    for name, values in times.items():
        med = statistics.median(values)
        rows.append(f"| {name} | {med:.1f} | {min(values):.1f} | {med / ref:.2f} |")
    return "\n".join(rows)


def contention(alone: Path, paired: Path) -> str:
    """How much slower the same runs trained two at a time (``--jobs 2``) than one at a
    time: Σ of the runs' own wall times (results files, last repeat). Two runs that share
    the memory bus cannot take less than half this factor's time: ``--jobs 2`` / ``--jobs 1``
    is bounded below by about factor / 2, whatever the scheduler does."""
    import json

    def total(path: Path) -> float:
        runs = json.loads(path.read_text())["runs"]
        return sum(r["meta"]["wall_time_s"] for r in runs if "meta" in r)

    one, two = total(alone), total(paired)
    return (f"runs' own wall time, summed: {one:.1f} s alone, {two:.1f} s two at a time: contention "
            f"×{two / one:.2f}, so --jobs 2 / --jobs 1 ≥ {two / one / 2:.2f} (plus start-up and critical-lr rounds)")


def sweep_case(folder: Path, points: int = 32) -> Path:
    """cases/bai_li_perceptron.yaml's Adam with its lr swept over ``points`` values."""
    import yaml

    raw = yaml.safe_load((REPO / "cases" / "bai_li_perceptron.yaml").read_text())
    raw.pop("variants", None)
    raw.pop("critical_lr", None)
    raw["name"] = "bai_li_lr_sweep"
    raw["seeds"], raw["devices"], raw["expect"] = [0], ["cpu"], {}
    lrs = [float(f"{1e-4 * 10 ** (2 * i / (points - 1)):.4g}") for i in range(points)]
    raw["optimizers"] = {"adam": {"class": "torch.optim.Adam", "lr": {"sweep": lrs}}}
    path = folder / "bai_li_lr_sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["jobs", "sweep", "threads", "readme", "startup"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--load", type=int, default=0, help="competing busy processes")
    parser.add_argument("--case", default="cases/mlp_14_100_40_4.yaml", help="case for `threads`")
    parser.add_argument("--old-plugin", metavar="DIR", help="`startup`: also time the plugin of the checkout "
                        "in DIR (e.g. a git worktree of an older commit), put first on PYTHONPATH")
    args = parser.parse_args(argv)
    plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "STABILITY_BENCH_THREADS")}
    os.environ.clear()
    os.environ.update(plain)  # default settings: no thread pinning from the caller's shell
    with tempfile.TemporaryDirectory() as tmp, competing_load(args.load):
        tmp = Path(tmp)
        if args.what in ("jobs", "sweep"):
            target = "cases/" if args.what == "jobs" else str(sweep_case(tmp))
            run = CLI + ["run", target, "--no-triage"]
            times = measure_interleaved({
                f"--jobs {n}": (run + ["--jobs", str(n), "--json", str(tmp / f"jobs{n}.json")], REPO)
                for n in (1, 2)}, args.repeats)
            print(table(times, "--jobs 1"))
            print(contention(tmp / "jobs1.json", tmp / "jobs2.json"))
        elif args.what == "threads":
            run = CLI + ["run", args.case, "--no-triage", "--device", "cpu", "--no-critical-lr"]
            import torch

            default = torch.get_num_threads()
            times = measure_interleaved({
                f"torch default ({default} threads)": (run + ["--threads", str(default)], REPO),
                "1 thread": (run + ["--threads", "1"], REPO),
                "harness choice": (run, REPO)}, args.repeats)
            print(table(times, f"torch default ({default} threads)"))
        elif args.what == "readme":
            times = measure_interleaved({
                "stability-bench run cases/ --jobs 2": (CLI + ["run", "cases/", "--jobs", "2", "--no-triage"], REPO),
                "python -m pytest": ([sys.executable, "-m", "pytest", "-q"], REPO),
                "python -m pytest cases/": ([sys.executable, "-m", "pytest", "-q", "cases/"], REPO)}, args.repeats)
            print(table(times, "stability-bench run cases/ --jobs 2"))
        else:
            empty = tmp / "project"
            (empty / "tests").mkdir(parents=True)
            (empty / "tests" / "test_nothing.py").write_text("def test_nothing():\n    assert True\n")
            (empty / "pytest.ini").write_text("[pytest]\n")
            collect = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:randomly",
                       "-p", "no:xdist", "-p", "no:cacheprovider"]
            settings = {"without the plugin": (collect + ["-p", "no:stability_bench"], empty),
                        "with the plugin": (collect, empty)}
            if args.old_plugin:
                settings[f"with the plugin of {args.old_plugin}"] = (collect, empty, {"PYTHONPATH": args.old_plugin})
            times = measure_interleaved(settings, max(args.repeats, 5))
            print(table(times, "without the plugin"))


if __name__ == "__main__":
    main()
