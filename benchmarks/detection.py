"""Detection rate: does the shipped suite catch realistic optimizer regressions?

``python benchmarks/detection.py [--jobs N] [--all] [--only NAME ...]``

For each change of ``benchmarks.regressions.CHANGES`` (21 regressions, 4 equivalents) it
runs every shipped case with the change in place of its original class — every optimizer
entry whose ``class:`` is, say, ``torch.optim.Adam`` gets the changed class, as a PyTorch
developer's patched ``torch.optim.Adam`` would — on seed 0, CPU, and checks:

* the case's own ``expect:`` bounds;
* the case file's baseline (``cases/x.baseline.json``, recorded with the originals);
* the critical learning rate of each changed entry with a ``critical_lr:`` section,
  against its baseline band and its own ``expect``.

It prints one row per change (caught by expectations / baseline / critical lr, missed,
or for an equivalent a false alarm) and the totals. Left out unless ``--all``: cases whose
runs carry curvature probes (cifar_fc: needs the CIFAR data, about a minute per run;
xiong_adam_spike: probes every 2 steps), which would multiply the time for Adam changes
that Bai Li's and the MLP's cases already test. Results are deterministic on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.regressions import CHANGES, EQUIVALENT, REGRESSION, Change  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
COSTLY = {"cifar_fc", "xiong_adam_spike"}


def _cases(include_costly: bool):
    """(case file, case) of every non-slow shipped case."""
    from stability_bench.schema import load_cases

    return [(path, case) for path in sorted(CASES.glob("*.yaml")) for case in load_cases(path)
            if not case.slow and (include_costly or case.name.split("/")[0] not in COSTLY)]


def substitute(case, change: Change):
    """``case`` with ``change.cls`` in place of every entry of class ``change.replaces``;
    None when no entry has that class."""
    swapped = {k: dataclasses.replace(v, cls=change.cls) if v.class_name == change.replaces else v
               for k, v in case.optimizers.items()}
    if all(swapped[k] is case.optimizers[k] for k in swapped):
        return None
    return dataclasses.replace(case, optimizers=swapped)


def evaluate(change: Change, include_costly: bool = False) -> dict:
    """What catches ``change``: lists of messages per channel, and the cases it ran. The
    cases run through the orchestrator, as `stability-bench run --baseline` runs them."""
    from stability_bench.orchestrate import Baselines, SearchReport, make_plan, run_plan

    started = time.perf_counter()
    caught = {"expectations": [], "baseline": [], "critical_lr": []}
    ran = []
    for _, case in _cases(include_costly):
        changed = substitute(case, change)
        if changed is None:
            continue
        ran.append(case.name)
        keys = [k for k, v in changed.optimizers.items() if v.cls is change.cls]
        plan = make_plan([changed], devices=["cpu"], seeds=[0], optimizers=keys)
        for report in run_plan(plan, baselines=Baselines([changed])):
            failed = [o.describe() for o in report.failed_outcomes] + [f.message for f in report.failed_findings]
            if report.failure is not None:
                failed.append(report.failure.describe())
            if isinstance(report, SearchReport):
                caught["critical_lr"] += failed
            else:
                caught["expectations"] += [o.describe() for o in report.failed_outcomes]
                caught["baseline"] += [f.message for f in report.failed_findings]
                if report.failure is not None:
                    caught["expectations"].append(report.failure.describe())
    return {"change": change.name, "kind": change.kind, "what": change.what, "cases": ran,
            "caught": caught, "seconds": time.perf_counter() - started}


def _row(outcome: dict) -> str:
    c = outcome["caught"]
    mark = {k: "yes" if v else "-" for k, v in c.items()}
    hit = any(c.values())
    if outcome["kind"] == REGRESSION:
        verdict = "caught" if hit else ("MISSED" if outcome["cases"] else "MISSED (no case uses it)")
    else:
        verdict = "FALSE ALARM" if hit else "quiet (right)"
    return (f"| `{outcome['change']}` | {outcome['kind']} | {mark['expectations']} | {mark['baseline']} "
            f"| {mark['critical_lr']} | {verdict} | {outcome['seconds']:.0f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="changes evaluated in parallel (processes)")
    parser.add_argument("--all", action="store_true", help="include the probed cases (cifar_fc, xiong_adam_spike)")
    parser.add_argument("--only", nargs="*", help="change names to evaluate")
    parser.add_argument("--verbose", action="store_true", help="print what caught each change")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    changes = [c for c in CHANGES if not args.only or c.name in args.only]
    started = time.perf_counter()
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(evaluate, changes, [args.all] * len(changes)))
    else:
        outcomes = [evaluate(c, args.all) for c in changes]
    print("| change | kind | expectations | baseline | critical lr | verdict | s |")
    print("|---|---|---|---|---|---|---|")
    for outcome in outcomes:
        print(_row(outcome))
        if args.verbose:
            for channel, messages in outcome["caught"].items():
                for message in messages[:3]:
                    print(f"    {channel}: {message}")
    regressions = [o for o in outcomes if o["kind"] == REGRESSION]
    equivalents = [o for o in outcomes if o["kind"] == EQUIVALENT]
    caught = sum(any(o["caught"].values()) for o in regressions)
    alarms = sum(any(o["caught"].values()) for o in equivalents)
    by = {k: sum(bool(o["caught"][k]) for o in regressions) for k in ("expectations", "baseline", "critical_lr")}
    print(f"\n{caught}/{len(regressions)} regressions caught ({100 * caught / max(1, len(regressions)):.0f} %): "
          f"by expectations {by['expectations']}, by baseline {by['baseline']}, by critical lr "
          f"{by['critical_lr']}; {alarms}/{len(equivalents)} false alarms; "
          f"{time.perf_counter() - started:.0f} s with --jobs {args.jobs}")
    return 0 if caught >= 0.9 * len(regressions) and alarms == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
