"""The speed targets of the README's commands, before and after a change, in one run.

    python benchmarks/speed_targets.py --before 275d2af [--repeat 1] [--what main tests cases]

Times, on this machine and its defaults, the README's main job
(``stability-bench run cases/ --jobs 2``), the test suite (``python -m pytest``) and the
shipped cases as test items (``python -m pytest cases/``), for a checkout of ``--before``
(a temporary git worktree) and for this checkout, alternating the two so that both see
the same machine: with ``--repeat N`` the pairs run before-after, after-before, … (on this
VM the second command of a pair ran slower, systematically, in one session), and the
median ratio of the N pairs is printed last. Each command runs with the checkout's own code first on ``PYTHONPATH``.
Absolute times drift on a shared machine: quote the ratio, measured side by side.
Targets (issue 19, idle 2-core machine): main ≤ 180 s, tests ≤ 150 s, cases ≤ 240 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "main": [sys.executable, "-m", "stability_bench.cli", "run", "cases/", "--jobs", "2"],
    "tests": [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"],
    "cases": [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "cases/"],
}
TARGETS = {"main": 180, "tests": 150, "cases": 240}


def timed(command: list[str], checkout: Path) -> tuple[float, int, str]:
    """(seconds, exit code, last line of output) of ``command`` run in ``checkout``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()   # the summary line (warnings go to stderr)
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    return (time.perf_counter() - started, done.returncode,
            "; ".join([*failed, lines[-1]]) if lines else done.stderr.strip()[-300:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare with")
    parser.add_argument("--what", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        before = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        shared = ROOT.parent / "shared"
        if shared.exists() and not (before.parent / "shared").exists():   # the CIFAR subset, where cases look
            (before.parent / "shared").symlink_to(shared)
        try:
            print(f"{'command':6s} {'before':>9s} {'after':>9s} {'ratio':>6s} {'target':>7s}  (before = {args.before})")
            for what in args.what:
                ratios = []
                for pair in range(args.repeat):
                    order = (before, ROOT) if pair % 2 == 0 else (ROOT, before)
                    measured = {checkout: timed(COMMANDS[what], checkout) for checkout in order}
                    (t_before, rc_before, last_before), (t_after, rc_after, last) = measured[before], measured[ROOT]
                    ratios.append(t_after / t_before)
                    print(f"{what:6s} {t_before:8.1f}s {t_after:8.1f}s {ratios[-1]:6.2f} {TARGETS[what]:6d}s"
                          f"  {'before first' if order[0] == before else 'after first'}; exit {rc_before}/{rc_after};"
                          f" before: {last_before} | after: {last}", flush=True)
                if len(ratios) > 1:
                    print(f"{what:6s} median ratio of {len(ratios)} pairs: {statistics.median(ratios):.2f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    main()
