"""GPU check (issue 19, point 3): one prepared run on a machine with an NVIDIA GPU.

Run it through ``benchmarks/gpu_check.sh`` (which sets PYTHONPATH, finds the CIFAR-10
subset, wraps this in ``timeout`` and saves the log); ``--device cpu --quick`` runs the
same code paths here, on small inputs, in about 15 s (tests/test_gpu_check.py does).

Parts, each with its own time budget inside ``--budget`` seconds (default 520, so the
whole call fits the device tool's 600 s with the start-up and the transfers):

1. ``environment``  Python, torch, CUDA, the GPU, where ``stability_bench`` was imported from.
2. ``optimizers``   foreach and fused variants of ``torch.optim.Adam`` / ``AdamW`` (plain,
   amsgrad, weight decay) against the for-loop implementation (``foreach=False``) on the
   device, on a small tanh MLP, float32, full batch:
   * *same gradients*: every step the for-loop model's gradient is fed to all three, so
     only the optimizer's arithmetic differs. Measured: max over steps and tensors of
     ‖p_variant − p_for-loop‖∞ / ‖p_for-loop‖∞. Tolerance: ``ULPS_PER_STEP`` (4) float32
     ulps (ε = 2⁻²³ ≈ 1.19e-7) per step, × steps. Why: the three compute one formula in a
     different order (multi-tensor kernels; one fused kernel with FMA contraction and the
     bias corrections in float32 rather than Python floats), so each step's update may
     round differently by a few ulps of the update, and p + u by one ulp of p; with the
     same gradients nothing amplifies that, so the difference grows at most linearly.
   * *own gradients*: each model trains on its own gradients (a discrepancy feeds back
     through the loss). Measured: max over steps of |L_variant − L_for-loop| / |L_for-loop|.
     Tolerance: 1e-4, the parity rtol that cases/torch_optim_guards_adam.yaml states for
     ``adam_foreach``/``adam_fused``/``adamw_foreach``/``adamw_fused``.
3. ``probes``       times of a full-batch gradient, an HVP (first at a point, and cached), and
   λ₁ by the package's Lanczos probe (``top_eigenpairs``, tol 1e-3, the probes' default)
   on ``cifar_fc`` (when its data is here) and ``transformer_spikes`` at initialisation,
   on the device and (``--cpu-reference``) on the CPU of the same machine, with the λ₁
   relative difference between the two.
4. ``cases``        every item of the shipped cases on the device (``stability-bench run
   cases/ --device cuda --baseline``; slow cases excluded), with the case files split over
   ``--procs`` concurrent processes on the one GPU. CPU/CUDA agreement: no case states a
   CPU/CUDA tolerance of its own (there is no such key; ``parity`` compares optimizers on
   one device), so the tolerance used is the one every shipped case states through its
   baseline file: each figure's band (3 × the rounding noise of a one-ulp nudge + the
   figure's floor, cases/*.baseline.json, recorded on the CPU). The CUDA runs are checked
   against the CPU baseline's bands (the baseline's ``-cpu`` keys copied to ``-cuda`` in a
   temporary copy of the case folder). With ``--cpu-reference`` the CPU items run at the
   same time on the same machine (same torch) against the same baseline, so a figure that
   leaves its band on CUDA alone is a CPU/CUDA disagreement (a failure), while one that
   leaves it on both is the torch version or machine (reported, not a CUDA failure).
   Expectations (including ``parity`` between foreach/fused and for-loop entries, on
   CUDA) are checked by the harness on every CUDA run. The time of one run per case
   (its first run) and of each case file are reported.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default ``$OUT``), rewritten
after each part, so a run stopped by its time limit still leaves what it measured.
Exit code: 0 every check passed and every part ran; 1 a check failed; 3 no check failed but
a part did not finish inside its budget (or could not run).
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/gpu_check.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks import interleaved_times, sync  # noqa: E402

EPS32 = float(torch.finfo(torch.float32).eps)
ULPS_PER_STEP = 4
OWN_GRADIENT_RTOL = 1e-4      # cases/torch_optim_guards_adam.yaml: adam_fused parity rtol
QUICK_CASE_FILES = ["quadratic_half_x2.yaml"]


# ---- time budget ------------------------------------------------------------------------

class Budget:
    """Seconds left of the whole check; each part asks for its share."""

    def __init__(self, total: float):
        self.start, self.total = time.monotonic(), float(total)

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def share(self, wanted: float, reserve: float = 0.0) -> float:
        return max(0.0, min(wanted, self.left() - reserve))


# ---- 1. environment ---------------------------------------------------------------------

def environment(device: str) -> dict:
    import numpy
    import yaml

    import stability_bench

    cuda = torch.cuda.is_available()
    env = {"python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": cuda,
           "gpu": torch.cuda.get_device_name(0) if cuda else None, "numpy": numpy.__version__,
           "pyyaml": getattr(yaml, "__version__", None), "cpu_count": os.cpu_count(),
           "stability_bench_from": str(Path(stability_bench.__file__).resolve().parent),
           "install": "not installed: PYTHONPATH points at the checkout (nothing is pip-installed; "
                      "torch, numpy and pyyaml are the machine's own)",
           "device": device, "data": os.environ.get("STABILITY_BENCH_DATA")}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, cudnn_tf32=torch.backends.cudnn.allow_tf32)
    return env


# ---- 2. foreach / fused against the for-loop --------------------------------------------

def default_variants() -> list[dict]:
    """(label, class, the for-loop's kwargs, each variant's kwargs)."""
    rows = []
    for cls, extra in ((torch.optim.Adam, {}), (torch.optim.Adam, {"amsgrad": True}),
                       (torch.optim.AdamW, {"weight_decay": 1e-2}), (torch.optim.AdamW, {"amsgrad": True})):
        base = {"lr": 1e-3, **extra}
        label = cls.__name__ + "".join(f" {k}={v}" for k, v in extra.items())
        rows.append({"label": label, "cls": cls, "reference": {**base, "foreach": False},
                     "variants": {"foreach": {**base, "foreach": True}, "fused": {**base, "fused": True}}})
    return rows


def _mlp(device: str, width: int = 256, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                                torch.nn.Tanh(), torch.nn.Linear(width, 10))
    return model.to(device=device, dtype=torch.float32)


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)) for x, y in zip(a, b))


def optimizer_agreement(device: str, steps: int = 200, variants: list[dict] | None = None,
                        ulps_per_step: float = ULPS_PER_STEP, own_rtol: float = OWN_GRADIENT_RTOL,
                        width: int = 256, examples: int = 512) -> dict:
    """foreach/fused vs for-loop on ``device`` (see the module's docstring). ``variants``
    lets a test pass a deliberately mismatching optimizer, which must fail."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(examples, 32, generator=gen).to(device)
    y = torch.randn(examples, 10, generator=gen).to(device)
    loss_fn = torch.nn.MSELoss()
    same_tol = ulps_per_step * EPS32 * steps
    rows = []
    for spec in variants or default_variants():
        for name, kwargs in spec["variants"].items():
            row = {"optimizer": spec["label"], "variant": name, "steps": steps, "same_gradients_tolerance": same_tol,
                   "own_gradients_tolerance": own_rtol}
            try:
                ref_model, var_model = _mlp(device, width), _mlp(device, width)
                ref_opt = spec["cls"](ref_model.parameters(), **spec["reference"])
                var_opt = spec["cls"](var_model.parameters(), **kwargs)
            except (RuntimeError, ValueError, TypeError) as exc:  # e.g. fused unsupported on this device
                rows.append({**row, "status": "unsupported", "passed": None, "reason": str(exc)})
                continue
            ref_p, var_p = list(ref_model.parameters()), list(var_model.parameters())
            worst_same = 0.0
            for _ in range(steps):  # same gradients: the for-loop model's, fed to both
                ref_opt.zero_grad(set_to_none=True)
                loss_fn(ref_model(x), y).backward()
                for p, q in zip(ref_p, var_p):
                    q.grad = p.grad.clone()
                ref_opt.step()
                var_opt.step()
                worst_same = max(worst_same, _rel([q.detach() for q in var_p], [p.detach() for p in ref_p]))
            models = [_mlp(device, width), _mlp(device, width)]
            opts = [spec["cls"](models[0].parameters(), **spec["reference"]),
                    spec["cls"](models[1].parameters(), **kwargs)]
            worst_own, final = 0.0, None
            for _ in range(steps):  # own gradients
                losses = []
                for m, o in zip(models, opts):
                    o.zero_grad(set_to_none=True)
                    loss = loss_fn(m(x), y)
                    loss.backward()
                    o.step()
                    losses.append(loss.detach())
                a, b = float(losses[0]), float(losses[1])
                worst_own = max(worst_own, abs(b - a) / max(abs(a), 1e-30))
                final = a
            passed = worst_same <= same_tol and worst_own <= own_rtol
            rows.append({**row, "status": "passed" if passed else "FAILED", "passed": passed,
                         "same_gradients_max_rel": worst_same,
                         "same_gradients_ulps_per_step": worst_same / (EPS32 * steps),
                         "own_gradients_max_rel_loss": worst_own, "final_loss": final})
    failed = [r for r in rows if r["passed"] is False]
    return {"device": device, "model": f"MLP 32-{width}-{width}-10 tanh, float32, {examples} examples, full batch, MSE",
            "eps32": EPS32, "ulps_per_step": ulps_per_step, "rows": rows, "passed": not failed,
            "failed": [f"{r['optimizer']} {r['variant']}" for r in failed]}


# ---- 3. HVP and λ₁ timings --------------------------------------------------------------

def probe_timings(case_name: str, device: str, repeats: int = 5, tol: float = 1e-3, max_iter: int = 60,
                  threads: int | None = None) -> dict:
    """Gradient, HVP (first / cached) and λ₁ (Lanczos, ``tol``) on ``case_name``'s first run
    at initialisation, built as the runner builds it."""
    from benchmarks import start_session
    from stability_bench.probes import LossHessian, additive_for, top_eigenpairs, untouched
    from stability_bench.schema import load_case

    case = load_case(REPO / "cases" / f"{case_name}.yaml")
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    try:
        session = start_session(case, device)
    except NotImplementedError as exc:  # its data is not here
        return {"case": case_name, "device": device, "skipped": str(exc)}
    loss = case.loss
    additive = additive_for(loss["kind"], loss.get("reduction", "mean"), loss.get("divide_by_batch_size", False))
    model, params, loss_fn = session.model, session.params, session.loss_fn
    x, y = session.data.x, session.data.y
    with untouched(model, session.optimizer):
        cached = LossHessian(model, params, loss_fn, x, y, additive=additive)
        first = LossHessian(model, params, loss_fn, x, y, additive=additive, cache_bytes=0)
        v = torch.randn(cached.dim, generator=torch.Generator().manual_seed(0)).to(device=device,
                                                                                     dtype=params[0].dtype)
        times = interleaved_times({"grad": lambda: torch.autograd.grad(loss_fn(model(x), y), params),
                        "hvp_first": lambda: first.hvp(v), "hvp_cached": lambda: cached.hvp(v)}, device, repeats)
        grad, hvp_first, hvp_cached = times["grad"], times["hvp_first"], times["hvp_cached"]
        op = lambda u: cached.hvp(u).double()  # noqa: E731
        sync(device)
        t0 = time.perf_counter()
        res = top_eigenpairs(op, cached.dim, 1, tol=tol, max_iter=max_iter)
        sync(device)
        lanczos_s = time.perf_counter() - t0
    med = statistics.median
    return {"case": case_name, "device": device, "params": cached.dim, "examples": int(x.shape[0]),
            "dtype": case.dtype, "threads": torch.get_num_threads() if device == "cpu" else None,
            "grad_ms": 1e3 * med(grad), "hvp_first_ms": 1e3 * med(hvp_first), "hvp_cached_ms": 1e3 * med(hvp_cached),
            "hvp_first_over_grad": med(hvp_first) / med(grad), "lambda_1": res.top, "lanczos_tol": tol,
            "lanczos_hvps": res.n_matvec, "lanczos_converged": bool(res.converged), "lanczos_s": lanczos_s,
            "repeats": repeats}


def probes_part(device: str, quick: bool, cpu_reference: bool, budget: Budget, seconds: float) -> dict:
    names = ["mlp_14_100_40_4"] if quick else ["cifar_fc", "transformer_spikes"]
    devices = [device] + (["cpu"] if cpu_reference and device != "cpu" else [])
    part = Budget(budget.share(seconds))
    rows, skipped = [], []
    for name in names:
        for dev in devices:
            if part.left() <= 0:
                skipped.append(f"{name} on {dev}: no time left")
                continue
            try:
                rows.append(probe_timings(name, dev, repeats=3 if quick else 7,
                                          threads=None if quick else min(os.cpu_count() or 1, 8)))
            except Exception as exc:  # a broken probe is a finding, not a crash of the whole check
                rows.append({"case": name, "device": dev, "error": f"{type(exc).__name__}: {exc}"})
    agree = []
    for name in names:
        by = {r["device"]: r for r in rows if r["case"] == name and "lambda_1" in r}
        if device in by and "cpu" in by and device != "cpu":
            a, b = by[device]["lambda_1"], by["cpu"]["lambda_1"]
            agree.append({"case": name, "lambda_1_device": a, "lambda_1_cpu": b, "rel_diff": abs(a - b) / abs(b)})
    errors = [f"{r['case']} on {r['device']}: {r['error']}" for r in rows if "error" in r]
    return {"rows": rows, "lambda_1_cpu_vs_device": agree, "skipped": skipped, "errors": errors,
            "passed": not errors, "complete": not skipped}


# ---- 4. the shipped cases ---------------------------------------------------------------

def rekey_baseline(data: dict, device: str) -> dict:
    """A baseline whose ``-cpu`` entries are also filed under ``-<device>``: the CPU's bands
    become the CUDA runs' tolerance."""
    out = copy.deepcopy(data)
    if device == "cpu":
        return out
    for section in ("runs", "critical_lr"):
        entries = out.get(section) or {}
        for key in list(entries):
            if key.endswith("-cpu"):
                entries.setdefault(key[: -len("cpu")] + device, copy.deepcopy(entries[key]))
    return out


def copy_cases(files: list[Path], device: str, dest: Path) -> list[Path]:
    """Case files (and baselines, rekeyed for ``device``) copied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        shutil.copy2(f, dest / f.name)
        base = f.with_name(f.name[: -len(f.suffix)] + ".baseline.json")
        if base.exists():
            (dest / base.name).write_text(json.dumps(rekey_baseline(json.loads(base.read_text()), device),
                                                     indent=1, sort_keys=True))
        out.append(dest / f.name)
    return out


def _cost(path: Path, device: str) -> float:
    """Steps a file trains (runs + critical-lr probes): GPU work on small models is launch-bound,
    so steps rather than flop. Falls back to the file's size."""
    try:
        from stability_bench.critical_lr import probe_count, specs
        from stability_bench.plan import make_plan
        from stability_bench.schema import load_cases

        plan = make_plan(load_cases(path), devices=[device], run_slow=False, cuda_available=True)
        steps = sum(spec.case.steps for spec in plan.runs.values())
        for search in plan.searches.values():
            e = specs(search.case)[search.optimizer]
            steps += probe_count(e.lo, e.hi, e.rtol) * (e.steps or search.case.steps)
        return float(steps)
    except Exception:
        return float(path.stat().st_size)


def split(files: list[Path], procs: int, device: str) -> list[list[Path]]:
    """Greedy: the costliest file first, each to the lightest group."""
    groups: list[list] = [[0.0, []] for _ in range(max(1, min(procs, len(files))))]
    for f in sorted(files, key=lambda p: -_cost(p, device)):
        g = min(groups, key=lambda g: g[0])
        g[0] += _cost(f, device)
        g[1].append(f)
    return [g[1] for g in groups if g[1]]


def _cli(files: list[Path], device: str, json_path: Path, log_path: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stability_bench.cli", "run", *map(str, files), "--device", device,
           "--baseline", "--json", str(json_path), "--no-triage", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO))


def _finish(procs: list[subprocess.Popen], deadline: float) -> list[dict]:
    """Wait until ``deadline``; then SIGTERM (the CLI writes its finished runs and exits 143)."""
    out = []
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
            out.append({"rc": p.returncode, "stopped": False})
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            out.append({"rc": p.returncode, "stopped": True})
    return out


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"runs": [], "failures": [], "critical_lr": []}


def _run_key(run_id: str) -> str:
    """``case::opt[point]-seed0-cuda`` → ``case::opt[point]-seed0`` (device dropped)."""
    return run_id.rsplit("-", 1)[0]


def _figure_status(results: dict) -> dict:
    """(run key without device, figure) → baseline finding, for runs and critical-lr searches."""
    out = {}
    for r in results.get("runs", []):
        for f in r.get("baseline") or []:
            out[(_run_key(r["run_id"]), f["figure"])] = f
    for s in results.get("critical_lr", []):
        for f in s.get("baseline") or []:
            out[(_run_key(s["search_id"]), f["figure"])] = f
    return out


def summarize_cases(results: dict, reference: dict | None) -> dict:
    """Expectations, crashes and the baseline-band (CPU/CUDA agreement) verdicts of a run of
    the cases; ``reference``: the CPU run on the same machine, for attribution."""
    runs, searches = results.get("runs", []), results.get("critical_lr", [])
    expectation_failures = [f"{r['run_id']}: {e.get('where')}: {e.get('metric')} {e.get('comparator')} "
                            f"{e.get('bound')}: measured {e.get('value')}"
                            for r in [*runs, *searches] for e in r.get("expectations") or [] if not e.get("passed")]
    crashes = [f"{f.get('run_id') or f.get('search_id')}: {f.get('error')}" for f in results.get("failures", [])]
    ref = _figure_status(reference) if reference else {}
    counts: dict[str, int] = {}
    disagree, moved_both, trajectory, unreferenced = [], [], [], []
    for key, f in _figure_status(results).items():
        status = f["status"]
        counts[status] = counts.get(status, 0) + 1
        if status != "outside":
            continue
        other = ref.get(key)
        line = f["message"]
        if f["figure"] == "early_trajectory":
            trajectory.append(line)
        elif other is not None and other["status"] == "outside":
            moved_both.append(line + f"  [CPU here: {other['message'].split(': ', 2)[-1]}]")
        elif other is None and reference is not None:
            unreferenced.append(line)
        else:
            disagree.append(line)
    if reference is None:
        disagree += unreferenced
        unreferenced = []
    per_case: dict[str, dict] = {}
    for r in runs:
        c = per_case.setdefault(r["case"], {"runs": 0, "train_s": 0.0, "first_run": r["run_id"],
                                            "first_run_s": r["meta"]["wall_time_s"], "steps": r.get("steps")})
        c["runs"] += 1
        c["train_s"] += r["meta"]["wall_time_s"]
    passed = not expectation_failures and not crashes and not disagree
    return {"runs": len(runs), "searches": len(searches), "baseline_findings": counts,
            "expectation_failures": expectation_failures, "crashes": crashes,
            "outside_on_device_only": disagree, "outside_on_cpu_too": moved_both,
            "outside_no_cpu_reference": unreferenced, "early_trajectory_departures": trajectory,
            "per_case": per_case, "passed": passed}


def cases_part(device: str, files: list[Path], budget: Budget, seconds: float, procs: int = 4,
               cpu_reference: bool = False, cpu_jobs: int = 8, extra: list[str] | None = None,
               keep: Path | None = None) -> dict:
    """Every item of ``files`` on ``device`` against the CPU baseline's bands (rekeyed copies);
    optionally the CPU items at the same time on the same machine, for attribution."""
    extra = list(extra or [])
    seconds = budget.share(seconds)
    if seconds < 5:
        return {"skipped": "no time left", "passed": None, "complete": False}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        copies = copy_cases(files, device, tmp / "cases")
        groups = split(copies, procs, device)
        t0 = time.monotonic()
        deadline = t0 + seconds
        started = [_cli(g, device, tmp / f"{device}-{i}.json", tmp / f"{device}-{i}.log", extra)
                   for i, g in enumerate(groups)]
        cpu = None
        if cpu_reference:  # main asks for it with a GPU; on the CPU (tests) it exercises the attribution
            cpu = _cli(files, "cpu", tmp / "cpu.json", tmp / "cpu.log", ["--jobs", str(cpu_jobs), *extra])
        ends = _finish(started, deadline)
        device_wall = time.monotonic() - t0
        cpu_end = _finish([cpu], deadline)[0] if cpu else None
        merged = {"runs": [], "failures": [], "critical_lr": []}
        logs = []
        for i, end in enumerate(ends):
            part = _load(tmp / f"{device}-{i}.json")
            for k in merged:
                merged[k] += part.get(k) or []
            logs.append({"files": [p.name for p in groups[i]], **end,
                         "log_tail": (tmp / f"{device}-{i}.log").read_text(errors="replace")[-1500:]})
        reference = _load(tmp / "cpu.json") if cpu else None
        summary = summarize_cases(merged, reference)
        if keep is not None:  # the raw results less the per-step histories (the tool brings back ≤ 16 MiB a file)
            for name, data in ((f"cases-{device}.json.gz", merged), ("cases-cpu.json.gz", reference)):
                if data is not None:
                    slim = {**data, "runs": [{k: v for k, v in r.items() if k != "history"} for r in data["runs"]]}
                    with gzip.open(keep / name, "wt") as fh:
                        json.dump(slim, fh)
    stopped = [", ".join(log["files"]) for log in logs if log["stopped"]]
    unexpected_rc = [f"{', '.join(log['files'])}: exit {log['rc']}" for log in logs
                     if not log["stopped"] and log["rc"] not in (0, 1)]
    # exit 1 is an expectation or baseline band outside: summarize_cases judges those itself
    summary["passed"] = summary["passed"] and not unexpected_rc
    return {"device": device, "files": [f.name for f in files], "processes": len(groups), "budget_s": seconds,
            "wall_s": device_wall, "stopped_at_budget": stopped, "unexpected_exit": unexpected_rc,
            "cpu_reference": None if cpu_end is None else {**cpu_end, "runs": len(reference.get("runs", []))},
            "processes_detail": logs, **summary, "complete": not stopped and (cpu_end is None or not cpu_end["stopped"])}


# ---- report -----------------------------------------------------------------------------

def _md(report: dict) -> str:
    env = report.get("environment", {})
    lines = [f"# GPU check ({report['mode']})", "",
             f"{env.get('gpu') or 'no GPU'}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
             f"Python {env.get('python')}; {env.get('install')}.", "",
             f"Verdict: **{report.get('verdict', 'incomplete')}** after {report.get('elapsed_s', 0):.0f} s "
             f"(budget {report['budget_s']:.0f} s).", ""]
    opt = report.get("optimizers")
    if opt:
        lines += [f"## foreach / fused vs for-loop on {opt['device']}", "",
                  f"{opt['model']}; {ULPS_PER_STEP} float32 ulps (ε = {EPS32:.3g}) per step allowed with the same "
                  f"gradients fed; loss rtol {OWN_GRADIENT_RTOL:g} (the cases' parity rtol) with their own.", "",
                  "| optimizer | variant | steps | same grads: max rel | ulps/step | tol | own grads: max rel loss "
                  "| tol | status |", "|---|---|---|---|---|---|---|---|---|"]
        for r in opt["rows"]:
            if r["status"] == "unsupported":
                lines.append(f"| {r['optimizer']} | {r['variant']} | | | | | | | unsupported: {r['reason'][:80]} |")
                continue
            lines.append(f"| {r['optimizer']} | {r['variant']} | {r['steps']} | {r['same_gradients_max_rel']:.2e} "
                         f"| {r['same_gradients_ulps_per_step']:.3f} | {r['same_gradients_tolerance']:.2e} "
                         f"| {r['own_gradients_max_rel_loss']:.2e} | {r['own_gradients_tolerance']:.0e} "
                         f"| {r['status']} |")
        lines.append("")
    probes = report.get("probes")
    if probes:
        lines += ["## Probe timings (at initialisation)", "",
                  "| case | device | params | grad ms | HVP first ms | HVP cached ms | HVP/grad | λ₁ | HVPs | "
                  "Lanczos s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in probes["rows"]:
            if "lambda_1" not in r:
                lines.append(f"| {r['case']} | {r['device']} | {r.get('skipped') or r.get('error')} |")
                continue
            lines.append(f"| {r['case']} | {r['device']} | {r['params']:,} | {r['grad_ms']:.2f} | "
                         f"{r['hvp_first_ms']:.2f} | {r['hvp_cached_ms']:.2f} | {r['hvp_first_over_grad']:.2f} | "
                         f"{r['lambda_1']:.6g} | {r['lanczos_hvps']} | {r['lanczos_s']:.3f} |")
        for a in probes["lambda_1_cpu_vs_device"]:
            lines.append(f"\nλ₁ of {a['case']}: CPU {a['lambda_1_cpu']:.8g}, device {a['lambda_1_device']:.8g} "
                         f"(relative difference {a['rel_diff']:.2e}).")
        lines.append("")
    cases = report.get("cases")
    if cases and "runs" in cases:
        lines += [f"## Shipped cases on {cases['device']}", "",
                  f"{cases['runs']} runs and {cases['searches']} critical-lr searches in {cases['wall_s']:.0f} s "
                  f"({cases['processes']} processes on the device); baseline findings {cases['baseline_findings']}; "
                  f"CPU reference: {cases['cpu_reference']}.", ""]
        for title, key in (("Expectations failed", "expectation_failures"), ("Crashed", "crashes"),
                           ("Outside the CPU baseline band on the device only (CPU/device disagreement)",
                            "outside_on_device_only"),
                           ("Outside the band on the CPU here too (torch version / machine, not the device)",
                            "outside_on_cpu_too"),
                           ("Outside the band, no CPU reference finished", "outside_no_cpu_reference"),
                           ("Early trajectory departs from the 1-ulp band (reported, not a failure)",
                            "early_trajectory_departures"),
                           ("Stopped at the time budget", "stopped_at_budget"), ("Unexpected exit", "unexpected_exit")):
            if cases.get(key):
                lines += [f"**{title}** ({len(cases[key])}):", ""] + [f"- {x}" for x in cases[key][:40]] + [""]
        lines += ["| case | runs | first run | first run s | all runs s |", "|---|---|---|---|---|"]
        for name, c in sorted(cases["per_case"].items()):
            lines.append(f"| {name} | {c['runs']} | {c['first_run']} | {c['first_run_s']:.2f} | {c['train_s']:.1f} |")
        lines.append("")
    elif cases:
        lines += [f"## Shipped cases: {cases.get('skipped')}", ""]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(_md(report))


def main(argv: list[str] | None = None) -> int:
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:  # called in-process (tests): leave torch's thread count as it was
        torch.set_num_threads(threads)


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--quick", action="store_true", help="small inputs: one case file, 20 optimizer steps")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu_check_out"))
    ap.add_argument("--budget", type=float, default=520.0, help="seconds for everything (default 520)")
    ap.add_argument("--procs", type=int, default=4, help="concurrent case processes on the device (default 4)")
    ap.add_argument("--no-cpu-reference", dest="cpu_reference", action="store_false",
                    help="do not run the CPU items on this machine beside the device's")
    ap.add_argument("--cases", nargs="*", default=None, help="case files (default: cases/*.yaml; quick: one)")
    ap.add_argument("--parts", default="optimizers,probes,cases")
    args = ap.parse_args(argv)

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"CUDA is not available to torch {torch.__version__}: nothing to check (use --device cpu)")
        return 2
    parts = set(args.parts.split(","))
    if args.device == "cpu":
        torch.set_num_threads(1)  # a shared CPU: spinning OpenMP workers measure the scheduler
    budget, out = Budget(args.budget), Path(args.out)
    cpu_reference = args.cpu_reference and args.device != "cpu" and not args.quick
    files = ([Path(f).resolve() for f in args.cases] if args.cases is not None else
             [REPO / "cases" / f for f in QUICK_CASE_FILES] if args.quick else sorted((REPO / "cases").glob("*.yaml")))
    report: dict = {"mode": f"{args.device}{' quick' if args.quick else ''}", "budget_s": args.budget,
                    "environment": environment(args.device)}
    print(json.dumps(report["environment"], indent=1), flush=True)
    write(report, out)
    verdicts = []
    if "optimizers" in parts:
        t0 = time.monotonic()
        report["optimizers"] = optimizer_agreement(args.device, **({"steps": 20, "width": 64, "examples": 128}
                                                                   if args.quick else {"steps": 200}))
        report["optimizers"]["wall_s"] = time.monotonic() - t0
        verdicts.append((report["optimizers"]["passed"], True))
        write(report, out)
        print(f"optimizers: {'passed' if report['optimizers']['passed'] else 'FAILED'} "
              f"({report['optimizers']['wall_s']:.1f} s) {report['optimizers']['failed']}", flush=True)
    if "probes" in parts:
        t0 = time.monotonic()
        report["probes"] = probes_part(args.device, args.quick, cpu_reference, budget, 30 if args.quick else 90)
        report["probes"]["wall_s"] = time.monotonic() - t0
        verdicts.append((report["probes"]["passed"], report["probes"]["complete"]))
        write(report, out)
        print(f"probes: {len(report['probes']['rows'])} rows ({report['probes']['wall_s']:.1f} s) "
              f"errors {report['probes']['errors']}", flush=True)
    if "cases" in parts:
        report["cases"] = cases_part(args.device, files, budget, budget.left() - 10, procs=args.procs,
                                     cpu_reference=cpu_reference, cpu_jobs=max(1, (os.cpu_count() or 2) - args.procs - 2),
                                     extra=["--optimizer", "gd"] if args.quick and args.cases is None else None, keep=out)
        c = report["cases"]
        verdicts.append((c["passed"], c["complete"]))
        print(f"cases: {c.get('runs')} runs, {c.get('searches')} searches, passed={c['passed']} "
              f"complete={c['complete']}", flush=True)
    failed = any(p is False for p, _ in verdicts)
    incomplete = any(not done or p is None for p, done in verdicts)
    report["verdict"] = "FAILED" if failed else "incomplete" if incomplete else "passed"
    report["elapsed_s"] = budget.total - budget.left()
    write(report, out)
    print(_md(report))
    return 1 if failed else 3 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
