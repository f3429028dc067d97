"""Detection rate: does the shipped suite catch realistic optimizer regressions, and does it
stay quiet for rewrites that only round differently?

``python benchmarks/detection.py [--jobs N] [--only CHANGE ...] [--cases CASE ...] [--json FILE] [--verbose]``

For each change of ``benchmarks.regressions.CHANGES`` (regressions, many modelled on bugs
reported against optimizer libraries, and rounding-only equivalents) it runs every
non-slow shipped case (``cases/*.yaml``, base cases and non-slow variants; the CIFAR-10
cases only where the data is found, which the output states) with the change in place of
the class it replaces — every optimizer entry whose ``class:`` is, say,
``torch.optim.Adam`` gets the changed class, as a PyTorch developer's patched
``torch.optim.Adam`` would — on every seed the case declares, on the CPU, through the
orchestrator with the baseline check on (``run_plan(..., baselines=Baselines(...))``, as
``stability-bench run --baseline`` runs them), critical-lr searches included.

Only the entries the change can act on run: entries of other classes, and entries of its
class whose settings never reach the changed code (a change to AMSGrad's maximum on an
entry without ``amsgrad``; ``Change.acts_on``), execute exactly the code the baseline was
recorded with — the originals are bit-identical to torch's CPU path — so their runs are
unchanged bit for bit and skipping them is exact.

Channels, read from the reports ``run_plan`` yields:

* ``expectation`` — a run's failed ``expect:`` outcome, or a run that crashed or timed out;
* ``baseline figure`` — a run figure outside its baseline band (``report.failed_findings``
  other than the early trajectory);
* ``early trajectory`` — a finding of figure ``early_trajectory`` (the first steps' loss,
  gradient and update norms against their band from nudged runs);
* ``critical lr`` — a critical-lr search outside its baseline band or its own ``expect``,
  or one whose probe crashed.

A finding with status ``stale`` (a baseline recorded for another case definition), a run
with no baseline, a set-up failure or missing data is a benchmark ERROR, never a catch.

Output: one markdown row per change (channels, verdict, the cases that caught it,
seconds), a matrix change × case, and a summary; ``--json`` writes every message. Exit
status 1 when fewer than 95 % of the regressions are caught, any equivalent alarms on any
case and seed, or anything errs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.regressions import CHANGES, EQUIVALENT, REGRESSION, Change  # noqa: E402

CASES = Path(__file__).resolve().parent.parent / "cases"
TARGET = 0.95
CHANNELS = ("expectation", "baseline figure", "early trajectory", "critical lr")
SHORT = {"expectation": "E", "baseline figure": "B", "early trajectory": "T", "critical lr": "C"}
EARLY = "early_trajectory"
ERROR_FAILURES = ("setup", "missing_data")   # the benchmark's fault, not the change's


# -------------------------------------------------------------------------- cases
def cifar_data() -> str | None:
    """Where the CIFAR-10 data is (as the cases would find it), or None."""
    from stability_bench.components.cifar10 import find_cifar10

    try:
        return str(find_cifar10())
    except Exception:
        return None


def shipped_cases(only: list[str] | None = None) -> tuple[list, list[str]]:
    """(every non-slow shipped case to run, names of the cases left out and why). ``only``:
    case names (``mlp_14_100_40_4/full_batch``) or file stems (all of that file's cases)."""
    from stability_bench.schema import load_cases

    data = cifar_data()
    cases, left_out = [], []
    for path in sorted(CASES.glob("*.yaml")):
        for case in load_cases(path):
            if only and case.name not in only and path.stem not in only:
                continue
            if case.slow:
                continue
            if case.data.get("kind") == "cifar10" and data is None:
                left_out.append(f"{case.name} (no CIFAR-10 data found)")
                continue
            cases.append(case)
    return cases, left_out


def substitute(case, change: Change):
    """``case`` with ``change.cls`` in place of every entry of class ``change.replaces`` that
    the change can act on; None when there is none."""
    swapped = {k: dataclasses.replace(v, cls=change.cls) if change.acts_on(v) else v
               for k, v in case.optimizers.items()}
    if all(swapped[k] is case.optimizers[k] for k in swapped):
        return None
    return dataclasses.replace(case, optimizers=swapped)


# ----------------------------------------------------------------------- channels
def classify(report) -> list[tuple[str, str]]:
    """(channel or "error", message) for everything failed in one run's or search's report."""
    from stability_bench.checks import SearchReport

    search = isinstance(report, SearchReport)
    out: list[tuple[str, str]] = []
    if report.failure is not None:
        kind = "error" if report.failure.kind in ERROR_FAILURES else ("critical lr" if search else "expectation")
        out.append((kind, report.failure.describe()))
    for outcome in report.failed_outcomes:
        out.append(("critical lr" if search else "expectation", outcome.describe()))
    for finding in report.findings:
        if finding.status in ("stale", "missing"):
            out.append(("error", f"[{finding.status}] {finding.message}"))
        elif finding.failed:
            figure = "early trajectory" if finding.figure == EARLY else "baseline figure"
            channel = "critical lr" if search else figure
            out.append((channel, finding.message))
    return out


def evaluate(change: Change, case_names: list[str] | None = None) -> dict:
    """Run every case the change acts on; per case the channels that caught it (with
    every message), the runs and searches it made, errors and seconds."""
    import torch

    from stability_bench.checks import Baselines, SearchReport
    from stability_bench.orchestrate import run_plan
    from stability_bench.plan import make_plan

    torch.set_num_threads(1)   # the harness sets each run's threads itself; this only pins the parent
    started = time.perf_counter()
    per_case: dict[str, dict] = {}
    cases, _ = shipped_cases(case_names)
    for case in cases:
        changed = substitute(case, change)
        if changed is None:
            continue
        keys = [k for k in changed.optimizers if changed.optimizers[k] is not case.optimizers[k]]
        t0 = time.perf_counter()
        entry = {"entries": keys, "seeds": list(case.seeds), "runs": 0, "searches": 0,
                 "hits": [], "errors": []}
        try:
            plan = make_plan([changed], devices=["cpu"], optimizers=keys, cuda_available=False)
            for report in run_plan(plan, baselines=Baselines([changed])):
                entry["searches" if isinstance(report, SearchReport) else "runs"] += 1
                seed = report.search.seed if isinstance(report, SearchReport) else report.spec.seed
                for channel, message in classify(report):
                    item = {"channel": channel, "seed": seed, "run": report.run_id, "message": message}
                    (entry["errors"] if channel == "error" else entry["hits"]).append(item)
        except Exception as exc:  # a baseline file that cannot be read, a planning error
            entry["errors"].append({"channel": "error", "seed": None, "run": case.name,
                                    "message": f"{type(exc).__name__}: {exc}"})
        entry["channels"] = sorted({h["channel"] for h in entry["hits"]}, key=CHANNELS.index)
        entry["seconds"] = time.perf_counter() - t0
        per_case[case.name] = entry
    return {"change": change.name, "kind": change.kind, "replaces": change.replaces, "family": change.family,
            "cite": change.cite, "what": change.what, "cases": per_case,
            "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------ verdicts
def summarise(outcome: dict) -> dict:
    """Channels, verdict, and the cases that caught (or alarmed on) the change."""
    cases = outcome["cases"]
    channels = sorted({c for e in cases.values() for c in e["channels"]}, key=CHANNELS.index)
    caught_by = [name for name, e in cases.items() if e["hits"]]
    errors = sum(len(e["errors"]) for e in cases.values())
    hit = bool(caught_by)
    if outcome["kind"] == REGRESSION:
        verdict = "caught" if hit else ("MISSED" if cases else "MISSED (not exercised: no case entry it acts on)")
    else:
        verdict = "FALSE ALARM" if hit else ("quiet (right)" if cases else "not exercised")
    if errors:
        verdict += f" + {errors} ERROR{'S' if errors > 1 else ''}"
    alarms = sorted({(name, h["seed"]) for name, e in cases.items() for h in e["hits"]})
    return {"channels": channels, "verdict": verdict, "caught_by": caught_by, "errors": errors,
            "hit": hit, "exercised": bool(cases), "alarmed_case_seeds": [f"{n} seed {s}" for n, s in alarms]}


def table(outcomes: list[dict]) -> list[str]:
    lines = ["| change | kind | class | modelled on | channels | verdict | cases that caught it | s |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        s = o["summary"]
        lines.append(f"| `{o['change']}` | {o['kind']} | {o['replaces'].removeprefix('torch.optim.')} | "
                     f"{o['cite'] or '-'} | {', '.join(s['channels']) or '-'} | {s['verdict']} | "
                     f"{', '.join(s['caught_by']) or '-'} | {o['seconds']:.0f} |")
    return lines


def matrix(outcomes: list[dict], case_names: list[str]) -> list[str]:
    """change × case: the channels' letters, · ran quietly, blank not run, ! error."""
    short = [n for n in case_names]
    lines = ["| change | " + " | ".join(short) + " |", "|---|" + "---|" * len(short)]
    for o in outcomes:
        cells = []
        for name in case_names:
            e = o["cases"].get(name)
            if e is None:
                cells.append("")
                continue
            cell = "".join(SHORT[c] for c in e["channels"]) or "·"
            cells.append(cell + ("!" if e["errors"] else ""))
        lines.append(f"| `{o['change']}` | " + " | ".join(cells) + " |")
    return lines


def totals(outcomes: list[dict], wall: float, jobs: int) -> dict:
    regressions = [o for o in outcomes if o["kind"] == REGRESSION]
    equivalents = [o for o in outcomes if o["kind"] == EQUIVALENT]
    caught = sum(o["summary"]["hit"] for o in regressions)
    by = {c: sum(c in o["summary"]["channels"] for o in regressions) for c in CHANNELS}
    alone = {c: sum(o["summary"]["channels"] == [c] for o in regressions) for c in CHANNELS}
    alarms = [o["change"] for o in equivalents if o["summary"]["hit"]]
    case_seeds = sum(len(e["seeds"]) for o in equivalents for e in o["cases"].values())
    alarmed = sum(len(o["summary"]["alarmed_case_seeds"]) for o in equivalents)
    return {"regressions": len(regressions), "caught": caught,
            "rate": caught / len(regressions) if regressions else math.nan,
            "not_exercised": [o["change"] for o in regressions if not o["summary"]["exercised"]],
            "missed": [o["change"] for o in regressions if not o["summary"]["hit"]],
            "by_channel": by, "by_channel_alone": alone,
            "equivalents": len(equivalents), "false_alarms": alarms,
            "equivalent_case_seeds": case_seeds, "alarmed_case_seeds": alarmed,
            "errors": sum(o["summary"]["errors"] for o in outcomes), "wall_seconds": wall, "jobs": jobs}


def summary_line(t: dict) -> str:
    by = ", ".join(f"{c} {t['by_channel'][c]}" for c in CHANNELS)
    rate = f"{100 * t['rate']:.0f} %" if t["regressions"] else "n/a"
    extra = f"; not exercised: {', '.join(t['not_exercised'])}" if t["not_exercised"] else ""
    return (f"**{t['caught']}/{t['regressions']} regressions caught ({rate}; target {100 * TARGET:.0f} %): "
            f"by {by}{extra}; {len(t['false_alarms'])}/{t['equivalents']} equivalents alarmed "
            f"({t['alarmed_case_seeds']} of {t['equivalent_case_seeds']} case-seeds); {t['errors']} errors; "
            f"{t['wall_seconds']:.0f} s wall with --jobs {t['jobs']}**")


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="changes evaluated in parallel (processes)")
    parser.add_argument("--only", nargs="*", help="change names to evaluate (default: all)")
    parser.add_argument("--cases", nargs="*", help="case names or case-file stems to run (default: all non-slow)")
    parser.add_argument("--json", metavar="FILE", help="write every outcome and message as JSON")
    parser.add_argument("--verbose", action="store_true", help="print what caught each change")
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - {c.name for c in CHANGES}
    if unknown:
        parser.error(f"unknown change(s): {', '.join(sorted(unknown))}")
    changes = [c for c in CHANGES if not args.only or c.name in args.only]
    cases, left_out = shipped_cases(args.cases)
    if args.cases and not cases:
        parser.error(f"no non-slow case matches {args.cases}")
    case_names = [c.name for c in cases]
    data = cifar_data()

    import torch

    print(f"Detection benchmark: torch {torch.__version__}, CPU ({platform.machine()}), {len(changes)} changes, "
          f"{len(cases)} cases, every declared seed; CIFAR-10 data: "
          + (f"found ({data})" if data else "not found") + ".")
    if left_out:
        print("Left out: " + "; ".join(left_out) + ".")
    started = time.perf_counter()
    def done(o: dict) -> dict:
        hits = sorted({c for e in o["cases"].values() for c in e["channels"]}, key=CHANNELS.index)
        print(f"  {o['change']}: {', '.join(hits) or 'quiet'} ({o['seconds']:.0f} s)", file=sys.stderr, flush=True)
        return o

    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(evaluate, c, args.cases): c.name for c in changes}
            finished = {futures[f]: done(f.result()) for f in as_completed(futures)}
        outcomes = [finished[c.name] for c in changes]
    else:
        outcomes = [done(evaluate(c, args.cases)) for c in changes]
    wall = time.perf_counter() - started
    for o in outcomes:
        o["summary"] = summarise(o)
    print()
    print("\n".join(table(outcomes)))
    print("\nChannels per case (E expectation, B baseline figure, T early trajectory, C critical lr; "
          "· ran quietly; blank: no entry the change acts on; ! error):\n")
    print("\n".join(matrix(outcomes, case_names)))
    for o in outcomes:
        show_all = o["kind"] == EQUIVALENT or o["summary"]["errors"]
        if not (o["summary"]["hit"] or o["summary"]["errors"]) or not (args.verbose or show_all):
            continue
        print(f"\n{o['change']}:")
        for name, e in o["cases"].items():
            for item in (e["errors"] + e["hits"])[: None if show_all else 3]:
                print(f"    {name} [{item['channel']}] {item['message']}")
    t = totals(outcomes, wall, args.jobs)
    print("\n" + summary_line(t))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"torch": torch.__version__, "cifar_data": data, "cases": case_names, "left_out": left_out,
             "totals": t, "outcomes": outcomes}, indent=1, default=str), encoding="utf-8")
    ok = (t["regressions"] == 0 or t["rate"] >= TARGET) and not t["false_alarms"] and not t["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
