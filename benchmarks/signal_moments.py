"""Where can a Ctrl-C land, and what does ``stability-bench run`` return for each moment?

``python benchmarks/signal_moments.py [--trials N] [--jobs J] [--signal SIGINT]``

Starts ``python -m stability_bench.cli run CASE --json FILE`` (a small case: 4 runs of
150 steps) ``N`` times and sends the signal after a delay drawn evenly between 0 and the
duration of an uninterrupted run, so it lands anywhere: interpreter start-up, importing
and loading, planning, worker start-up (``--jobs 2``), training, a journal line being
written, the results file being compacted, the exit. Just before sending, the state of
the invocation is read from outside (no journal yet / journal with k finished runs /
results file written / already exited); after it ends, its exit code, whether its
``--json`` file is complete JSON, and how many runs it holds.

Printed: one line per trial, then per state the exit codes seen. What the harness promises
(``stability_bench.signals``, ``cli.main`` / ``cli.entry``): 128 + the signal's number
wherever it lands from the moment ``cli.main`` installs its handler until the exit code is
decided, the file holding exactly the runs that finished; after that (the interpreter's
teardown) the code decided. Before the handler exists (the first ~0.1 s: the interpreter
and ``import stability_bench.cli``) Python's own default applies: SIGINT gives a
KeyboardInterrupt traceback and exit 1 inside ``python -m``'s import, else death by SIGINT
(``-2`` here, 130 in a shell).

Found with it (30 trials, ``--jobs 1``, before ``cli.entry``): 8 signals that landed after
the results file was written killed the process (``-2``): Python resets its handlers to the
default during the interpreter's teardown, which takes about a second with torch loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "orchestrate" / "sweep.yaml"


def start(out: Path, jobs: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # A child keeps an ignored SIGINT across exec (a background job ignores it): reset to default.
    return subprocess.Popen([sys.executable, "-m", "stability_bench.cli", "run", str(CASE), "--json", str(out),
                             "--optimizer", "adam", "--no-critical-lr", "--no-triage", "--jobs", str(jobs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def state(proc: subprocess.Popen, out: Path) -> str:
    journal = out.parent / f".{out.name}.journal"
    if proc.poll() is not None:
        return "already exited"
    if out.exists():
        return "results file written"
    if journal.exists():
        return f"journal, {journal.read_text().count(chr(10))} runs finished"
    return "no journal yet (start-up, loading, planning)"


def trial(delay: float, jobs: int, signum: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        proc = start(out, jobs)
        time.sleep(delay)
        moment = state(proc, out)
        if proc.poll() is None:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=600)
        try:
            runs = len(json.loads(out.read_text())["runs"]) if out.exists() else None
            file = "complete" if runs is not None else "none"
        except (json.JSONDecodeError, KeyError):
            runs, file = None, "CORRUPT"
        traceback = "Traceback" in err
        return {"delay": round(delay, 3), "state": moment, "code": proc.returncode, "file": file, "runs": runs,
                "traceback": traceback}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--signal", default="SIGINT", choices=["SIGINT", "SIGTERM", "SIGHUP"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    signum = getattr(signal, args.signal)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proc = start(Path(tmp) / "r.json", args.jobs)
        proc.communicate()
    full = time.perf_counter() - t0
    print(f"an uninterrupted run takes {full:.1f} s (exit {proc.returncode}); {args.trials} trials, "
          f"--jobs {args.jobs}, {args.signal} after 0–{full * 1.1:.1f} s")
    rng = random.Random(args.seed)
    by_state: dict[str, Counter] = defaultdict(Counter)
    for i in range(args.trials):
        r = trial(rng.uniform(0.0, full * 1.1), args.jobs, signum)
        by_state[r["state"].split(",")[0] if r["state"].startswith("journal") else r["state"]][r["code"]] += 1
        held = "" if r["runs"] is None else f" ({r['runs']} runs)"
        print(f"  {i:3d}: after {r['delay']:6.3f} s, {r['state']:45s} -> exit {r['code']}, file {r['file']}"
              f"{held}{', traceback' if r['traceback'] else ''}")
    print("exit codes by the state the signal found:")
    for name, codes in by_state.items():
        print(f"  {name:45s} {dict(codes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
