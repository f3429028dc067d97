"""Cross-version check: the shipped cases under another torch, against the same baselines.

``python benchmarks/cross_version.py --python OTHER/bin/python [--jobs N] [--out DIR]``
``python benchmarks/cross_version.py --torch 2.5.1 --venv DIR [--no-triton]``  (sets the venv up)

It runs ``python -m stability_bench.cli run CASES --baseline --json FILE`` (default CASES:
``cases/``, non-slow) with this checkout's code twice, one environment after the other:
under the other interpreter (a virtual environment with another torch), then under this
one (or reads ``--current-results`` / ``--other-results`` instead of running). The CIFAR
cases find their data as the CLI does (``$STABILITY_BENCH_DATA``, else ``data/`` or
``../shared/data`` beside the working directory, which is the repository root here).

Then, per run (and per critical-lr search):

* **trajectory**: bit-identical, or the first step at which any per-step ``history``
  column (loss, grad_norm, update_norm, ...) differs, with the columns and the first step
  at which the loss itself differs; curvature ``probes`` are compared the same way (a run
  can train identically and still probe differently); a search compares its lr probes;
* **alarms** raised in the other environment: every baseline finding that is not merely
  informational (any status but ``uninformative``/``inside``/``ok``, so a new kind of
  finding counts until it is listed here), every failed expectation and every run that
  did not finish. Each alarm is classified:

  - ``documented``: a real change of torch, listed in ``benchmarks/cross_version_changes.json``
    (``--changes FILE``): run-id pattern, figure, the other torch's versions, reason;
  - ``also-current``: this environment raises the same alarm (not a version difference);
  - ``unexplained``: anything else — a band or expectation too tight for a rounding
    change (a defect of the case or its baseline), or a change nobody has documented.

It prints a table, writes ``report.json`` (and both results files) under ``--out``, and
exits 1 when an alarm is unexplained, 2 when an environment could not run the cases.
The changes file also documents trajectory differences (``"figure": "trajectory"``);
an undocumented one is reported but does not fail the check (the bands exist to absorb
rounding changes); only alarms do.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parent.parent
CHANGES = Path(__file__).resolve().parent / "cross_version_changes.json"
# Baseline finding statuses that only inform; any other status is an alarm.
INFORMATIONAL = {"uninformative", "inside", "ok", "passed"}
EXIT_OK, EXIT_UNEXPLAINED, EXIT_SETUP = 0, 1, 2


# ------------------------------------------------------------------- environments
def _interpreter_info(python: str) -> dict:
    """torch, numpy and python versions of an interpreter (imports torch: proves it runs)."""
    code = ("import json, platform, sys, numpy, torch, yaml; print(json.dumps({'python': platform.python_version(), "
            "'torch': torch.__version__, 'numpy': numpy.__version__, 'pyyaml': yaml.__version__, "
            "'executable': sys.executable, 'cpu_capability': getattr(torch.backends.cpu, 'get_cpu_capability', "
            "lambda: None)()}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        raise SystemExit(f"cross_version: {python} cannot import torch, numpy and yaml:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env() -> dict:
    """The environment of every child: this checkout first on the path, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def setup_venv(venv: Path, torch_version: str, no_triton: bool, numpy_spec: str | None) -> Path:
    """Create ``venv`` if needed and install torch==``torch_version``, numpy, PyYAML,
    threadpoolctl and this project (editable, no dependencies). ``no_triton``: install torch
    without its dependencies, then every dependency but triton (the CUDA wheels of PyPI still
    need the nvidia-* libraries to import, even on a machine without a GPU; triton only
    serves torch.compile on GPUs). Returns the interpreter."""
    python = venv / "bin" / "python"
    if not python.exists():
        print("$", sys.executable, "-m venv", venv, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                               capture_output=True, text=True)
    if installed.returncode != 0 or installed.stdout.strip().split("+")[0] != torch_version:
        if no_triton:
            _pip(python, "--no-deps", f"torch=={torch_version}")
            code = ("import importlib.metadata as m; from pip._vendor.packaging.requirements import Requirement as R; "
                    "rs = [R(r) for r in m.requires('torch') or []]; "
                    "print('\\n'.join(str(r).split(';')[0] for r in rs if r.name != 'triton' and "
                    "(r.marker is None or r.marker.evaluate({'extra': ''}))))")
            needs = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.split()
            if needs:
                _pip(python, *needs)
        else:
            _pip(python, f"torch=={torch_version}")
    _pip(python, numpy_spec or "numpy", "pyyaml", "threadpoolctl")
    _pip(python, "--no-deps", "-e", str(REPO))
    return python


def run_cases(python: str, cases: list[str], out: Path, jobs: int, passthrough: list[str]) -> dict:
    """``stability-bench run CASES --baseline --json OUT`` under ``python``; its wall time,
    exit code and output file (exit 1 — an alarm — is a result, not an error)."""
    cmd = [python, "-m", "stability_bench.cli", "run", *cases, "--baseline", "--json", str(out),
           "--jobs", str(jobs), "--no-triage", *passthrough]
    print("$", " ".join(cmd), flush=True)
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        rc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=handle, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    print(f"  exit {rc}, {wall:.0f} s wall, log {log}", flush=True)
    if not out.exists():
        raise SystemExit(f"cross_version: {python} wrote no results (exit {rc}); see {log}")
    return {"exit_code": rc, "wall_s": round(wall, 1), "results": str(out), "log": str(log)}


# ---------------------------------------------------------------------- results
def load_results(path: str | Path) -> dict:
    """A results file as {environment, runs: id → entry, searches: id → entry, failures: id → entry}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != "stability-bench-results":
        raise SystemExit(f"cross_version: {path}: not a stability-bench results file")
    return {"environment": data.get("environment", {}),
            "runs": {r["run_id"]: r for r in data.get("runs", [])},
            "searches": {s["search_id"]: s for s in data.get("critical_lr", [])},
            "failures": {f["run_id"]: f for f in data.get("failures", [])}}


def first_difference(a: dict | None, b: dict | None) -> dict | None:
    """Where two column tables (column → per-step list; "step" names the steps) first
    differ: None if bit-identical, else {index, step, columns}. Values are compared
    exactly (JSON keeps every bit of a float; a non-finite value is null in both)."""
    a, b = a or {}, b or {}
    first, columns = None, []
    for col in sorted(set(a) | set(b)):
        x, y = a.get(col), b.get(col)
        if x is None or y is None:
            i = 0
        elif x == y:
            continue
        else:
            i = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        if first is None or i < first:
            first, columns = i, [col]
        elif i == first:
            columns.append(col)
    if first is None:
        return None
    steps = a.get("step") or b.get("step") or []
    return {"index": first, "step": steps[first] if first < len(steps) else first, "columns": columns}


def compare_run(current: dict | None, other: dict | None) -> dict:
    """Trajectory (history), probes and, for a search, its probes and value, side by side."""
    if current is None or other is None:
        return {"trajectory": "missing in " + ("current" if current is None else "other")}
    if "search_id" in current:
        same = current.get("critical_lr") == other.get("critical_lr")
        return {"trajectory": "identical" if same else "differs",
                "critical_lr": [current.get("critical_lr", {}).get("value"), other.get("critical_lr", {}).get("value")]}
    diff = first_difference(current.get("history"), other.get("history"))
    out: dict[str, Any] = {"trajectory": "identical" if diff is None else "differs"}
    if diff is not None:
        out["first_step"], out["columns"] = diff["step"], diff["columns"]
        loss = first_difference({"step": current["history"].get("step"), "loss": current["history"].get("loss")},
                                {"step": other["history"].get("step"), "loss": other["history"].get("loss")})
        out["first_loss_step"] = None if loss is None else loss["step"]
    probes = first_difference(current.get("probes"), other.get("probes"))
    if probes is not None:
        out["probes_first_step"], out["probe_columns"] = probes["step"], probes["columns"]
        out["probes_largest_change"] = largest_change(current.get("probes"), other.get("probes"))
    return out


def largest_change(a: dict, b: dict) -> dict | None:
    """The largest relative difference over the numeric probe columns, leaving out the
    solver's diagnostics (``*_residual``, ``*_hvps``): how far probe arithmetic moved."""
    best = None
    for col in sorted(set(a) & set(b)):
        if col == "step" or col.endswith(("_residual", "_hvps")):
            continue
        for x, y in zip(a[col], b[col]):
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) and x != y:
                rel = abs(x - y) / max(abs(x), abs(y))
                if best is None or rel > best["relative"]:
                    best = {"column": col, "relative": rel}
    return best


def alarms_of(entry: dict, failure: dict | None = None) -> list[dict]:
    """Every alarm of one run or search entry: baseline findings that are not merely
    informational, failed expectations; or the failure of a run that did not finish."""
    if failure is not None:
        return [{"kind": "failure", "figure": failure.get("kind", "failure"), "status": failure.get("kind"),
                 "message": f"{failure.get('run_id')}: {failure.get('kind')}: {failure.get('error')}"}]
    found = []
    for f in entry.get("baseline", []) or []:
        failed = f.get("failed")
        if failed is False or (failed is None and f.get("status") in INFORMATIONAL):
            continue
        found.append({"kind": "baseline", "figure": f.get("figure"), "status": f.get("status"),
                      "value": f.get("value"), "band": f.get("band"), "baseline": f.get("baseline"),
                      "message": f.get("message")})
    for o in entry.get("expectations", []) or []:
        if not o.get("passed", True):
            found.append({"kind": "expectation", "figure": o.get("metric"), "status": "failed",
                          "value": o.get("value"), "bound": {o.get("comparator"): o.get("resolved_bound")},
                          "message": f"{o.get('where')}: expect {o.get('optimizer')}.{o.get('metric')} "
                                     f"{o.get('comparator')} {o.get('resolved_bound')}: measured {o.get('value')}"})
    return found


# -------------------------------------------------------------------- versions
def _release(version: str) -> tuple[int, ...]:
    """'2.5.1+cu124' → (2, 5, 1); pre-release tags are dropped."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def version_matches(version: str, spec: str | None) -> bool:
    """``spec``: comma-separated comparisons on the release ('>=2.5,<2.13'); empty: any."""
    if not spec:
        return True
    v = _release(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        op, ref = re.match(r"(<=|>=|==|!=|<|>)?\s*(.+)", clause).groups()
        r = _release(ref)
        n = max(len(v), len(r))
        a, b = v + (0,) * (n - len(v)), r + (0,) * (n - len(r))
        if not {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "!=": a != b}.get(op or "==", a == b):
            return False
    return True


def load_changes(path: str | Path) -> list[dict]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data["changes"] if isinstance(data, dict) else data


def documented(changes: Iterable[dict], run_id: str, figure: str, torch_version: str) -> dict | None:
    """The entry of the changes table that covers ``figure`` of ``run_id`` under ``torch_version``."""
    for change in changes:
        if fnmatch.fnmatchcase(run_id, change["run"]) and fnmatch.fnmatchcase(str(figure), change["figure"]) \
                and version_matches(torch_version, change.get("torch")):
            return change
    return None


# ---------------------------------------------------------------------- compare
def cross_check(current: dict, other: dict, changes: list[dict]) -> dict:
    """Per run and search: trajectory comparison and the other environment's alarms, classified."""
    other_torch = other["environment"].get("torch", "?")
    rows = []
    ids = list(dict.fromkeys([*current["runs"], *current["failures"], *other["runs"], *other["failures"]]))
    ids += list(dict.fromkeys([*current["searches"], *other["searches"]]))
    for run_id in ids:
        is_search = run_id in current["searches"] or run_id in other["searches"]
        table = "searches" if is_search else "runs"
        cur, oth = current[table].get(run_id), other[table].get(run_id)
        row = {"run": run_id, **compare_run(cur, oth)}
        if row["trajectory"] == "differs":
            entry = documented(changes, run_id, "trajectory", other_torch)
            row["trajectory_reason"] = entry["reason"] if entry else None
        cur_alarms = alarms_of(cur or {}, current["failures"].get(run_id))
        seen_here = {(a["kind"], a["figure"]) for a in cur_alarms}
        row["alarms"] = []
        for alarm in alarms_of(oth or {}, other["failures"].get(run_id)):
            entry = documented(changes, run_id, alarm["figure"], other_torch)
            if entry is not None:
                alarm.update(classification="documented", reason=entry["reason"])
            elif (alarm["kind"], alarm["figure"]) in seen_here:
                alarm.update(classification="also-current",
                             reason="the current environment raises the same alarm: not a version difference")
            else:
                if row["trajectory"] == "identical":
                    why = "the trajectory is bit-identical: nondeterminism, or arithmetic outside training (probes)"
                elif row.get("trajectory_reason"):
                    why = ("the trajectory's change is documented, this figure's move is not: a band or expectation "
                           "too tight for rounding (check with nudged starts), or a real change to document")
                else:
                    why = "no documented change covers it"
                alarm.update(classification="unexplained", reason=why)
            row["alarms"].append(alarm)
        rows.append(row)
    counts = {k: sum(a["classification"] == k for r in rows for a in r["alarms"])
              for k in ("documented", "also-current", "unexplained")}
    return {"rows": rows, "alarms": counts,
            "runs_identical": sum(r["trajectory"] == "identical" for r in rows),
            "runs_compared": len(rows), "runs_differing": [r["run"] for r in rows if r["trajectory"] != "identical"],
            "undocumented_trajectory_differences": [r["run"] for r in rows
                                                    if r["trajectory"] == "differs" and not r.get("trajectory_reason")]}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def render(report: dict) -> str:
    cur, oth = report["current"]["torch"], report["other"]["torch"]
    lines = [f"torch {oth} (other) against torch {cur} (current), the same checkout and baselines", ""]
    width = max([len(r["run"]) for r in report["rows"]] + [20])
    lines.append(f"{'run':<{width}}  trajectory under {oth}")
    for r in report["rows"]:
        if r["trajectory"] == "identical":
            what = "bit-identical"
        elif r["trajectory"] == "differs" and "first_step" in r:
            what = (f"differs from step {r['first_step']} ({', '.join(r['columns'])}; "
                    f"loss from step {r['first_loss_step']})")
        elif "critical_lr" in r:
            what = f"differs: critical lr {_fmt(r['critical_lr'][0])} → {_fmt(r['critical_lr'][1])}"
        else:
            what = r["trajectory"]
        if "probes_first_step" in r:
            big = r.get("probes_largest_change")
            what += f"; probes differ from step {r['probes_first_step']}" + (
                f" (at most {big['relative']:.1e} relative, {big['column']})" if big else "")
        if r["trajectory"] == "differs":
            what += "; documented change" if r.get("trajectory_reason") else "; no documented change"
        if r["trajectory"] == "identical" and not r["alarms"] and "probes_first_step" not in r:
            continue  # the table lists what differs; the totals say how many are identical
        lines.append(f"{r['run']:<{width}}  {what}")
        for a in r["alarms"]:
            if a["kind"] == "baseline":
                detail = f"{a['figure']} {_fmt(a.get('value'))} outside {_fmt(a.get('band'))} (baseline {_fmt(a.get('baseline'))})" \
                    if a.get("status") == "outside" else f"{a['figure']}: {a.get('status')}"
            elif a["kind"] == "expectation":
                detail = f"expectation {a['figure']} {_fmt(a.get('bound'))}: measured {_fmt(a.get('value'))}"
            else:
                detail = a["message"]
            lines.append(f"{'':<{width}}    ALARM {detail} — {a['classification'].upper()}: {a['reason']}")
    if len(lines) == 3:
        lines.append("(no run differs and none alarms)")
    s = report["summary"]
    lines += ["", f"{s['runs_identical']} of {s['runs_compared']} runs and searches bit-identical; alarms under {oth}: "
                  f"{s['alarms']['documented']} documented, {s['alarms']['also-current']} also raised under {cur}, "
                  f"{s['alarms']['unexplained']} unexplained"]
    if s["undocumented_trajectory_differences"]:
        lines.append("trajectory differences without a documented reason (no alarm needs one): "
                     + ", ".join(s["undocumented_trajectory_differences"]))
    for name in ("other", "current"):
        env = report[name]
        if env.get("wall_s") is not None:
            lines.append(f"{name}: torch {env['torch']}, exit {env['exit_code']}, {env['wall_s']:.0f} s wall")
    return "\n".join(lines)


# ------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    other = parser.add_mutually_exclusive_group(required=True)
    other.add_argument("--python", help="interpreter of the other environment (torch, numpy, pyyaml installed)")
    other.add_argument("--torch", help="torch version to set up in --venv (created if missing)")
    other.add_argument("--other-results", help="results file of the other environment: do not run it")
    parser.add_argument("--venv", type=Path, help="with --torch: the virtual environment's folder")
    parser.add_argument("--no-triton", action="store_true",
                        help="with --torch: install torch's dependencies except triton (CPU-only use)")
    parser.add_argument("--numpy", help="with --torch: numpy requirement (default: this environment's version)")
    parser.add_argument("--current-python", default=sys.executable, help="the current environment's interpreter")
    parser.add_argument("--current-results", help="results file of the current environment: do not run it")
    parser.add_argument("--cases", nargs="+", default=["cases/"], help="case files or folders (default: cases/)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--device", action="append", default=[], help="passed to run (repeatable)")
    parser.add_argument("--threads", type=int, help="passed to run")
    parser.add_argument("--changes", default=str(CHANGES), help="documented changes (JSON)")
    parser.add_argument("--out", type=Path, default=Path("cross-version"), help="folder for results and report.json")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    passthrough = [x for d in args.device for x in ("--device", d)] + (["--threads", str(args.threads)]
                                                                       if args.threads else [])
    changes = load_changes(args.changes)
    current_info = _interpreter_info(args.current_python) if not args.current_results else None
    if args.torch:
        if args.venv is None:
            parser.error("--torch needs --venv DIR")
        numpy_spec = args.numpy or (f"numpy=={current_info['numpy']}" if current_info else None)
        args.python = str(setup_venv(args.venv, args.torch, args.no_triton, numpy_spec))

    envs: dict[str, dict] = {}
    if args.other_results:
        envs["other"] = {"results": args.other_results}
    else:
        info = _interpreter_info(args.python)
        print(f"other: {info['executable']}: torch {info['torch']}, numpy {info['numpy']}, python {info['python']}")
        envs["other"] = {**info, **run_cases(args.python, args.cases, args.out / f"torch-{info['torch']}.json",
                                             args.jobs, passthrough)}
    if args.current_results:
        envs["current"] = {"results": args.current_results}
    else:
        info = current_info
        print(f"current: {info['executable']}: torch {info['torch']}, numpy {info['numpy']}, python {info['python']}")
        envs["current"] = {**info, **run_cases(args.current_python, args.cases,
                                               args.out / f"current-torch-{info['torch']}.json", args.jobs, passthrough)}
    results = {name: load_results(env["results"]) for name, env in envs.items()}
    for name, env in envs.items():
        env.setdefault("torch", results[name]["environment"].get("torch", "?"))
        env.setdefault("exit_code", None)
        env.setdefault("wall_s", None)
        if env["exit_code"] not in (None, 0, 1):
            print(f"cross_version: the {name} environment's run exited {env['exit_code']} (bad input or a crash); "
                  f"see {env.get('log')}", file=sys.stderr)
    checked = cross_check(results["current"], results["other"], changes)
    report = {"current": envs["current"], "other": envs["other"], "changes_file": str(args.changes),
              "rows": checked.pop("rows"), "summary": checked}
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print()
    print(render(report))
    print(f"\nreport: {args.out / 'report.json'}")
    if any(env["exit_code"] not in (None, 0, 1) for env in envs.values()):
        return EXIT_SETUP
    return EXIT_UNEXPLAINED if checked["alarms"]["unexplained"] else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
