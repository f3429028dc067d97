"""λ₁ of the loss Hessian: our Lanczos probe against PyHessian's power iteration, side by side.

On the run of a case, built as the runner builds it (``runner.start``), at initialisation:
``cases/cifar_fc.yaml`` (3072→200×5→10 tanh, 1000 CIFAR-10 images, 777k parameters) and
``cases/transformer_spikes.yaml`` (one-block decoder Transformer, 169 sequences, 115k
parameters), float32, one process, one thread (``torch.set_num_threads(1)``) unless
``--threads`` says otherwise:

reference   λ₁ "exact": our Lanczos on a float64 copy of the model and data, stopped at a
            Ritz-value error bound of 1e-11 relative (``eig_tol=1e-11``, no residual rule).
ours        ``stability_bench.probes.sharpness`` at the probes' defaults (``max_iter`` 30,
            ``tol`` 1e-3 relative residual, ``eig_tol`` = ``EIG_TOL`` 1e-3 on the Ritz-value
            error bound, confirmed by the change between steps; no verification matvec), on a
            fresh ``LossHessian`` each time (the first HVP builds the graph); and "ours, residual only"
            (``eig_tol=None``: the stopping rule before the eigenvalue tolerance existed).
pyhessian   ``pyhessian.hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(
            maxIter=100, tol=t)``, construction included, for t in ``--pyhessian-tols``
            (PyHessian's own relative change between two power iterations). It is compared
            at *equal achieved accuracy*: the loosest t whose achieved error against the
            reference is ≤ the error ours achieved at its defaults ("as accurate as ours");
            and, for each target in ``--targets`` (default 1e-3, the probes' ``EIG_TOL``, and
            1e-4), the loosest t whose achieved error is ≤ the target (ours at its defaults
            must reach the same target). Forwards of both run under ``math_attention()`` (the fused
            attention kernels have no double backward).
first HVP   median time of the first HVP at a new point (``LossHessian(...).hvp(v)``:
            forward + backward with create_graph + the second backward) over one
            full-batch gradient as training takes it (``torch.autograd.grad(loss, params)``),
            interleaved; target ≤ 2.0. Also over the gradient with the forward under
            ``math_attention()`` (what the HVP's forward must use; differs only with attention).
            Beside the times, the same ratio in matmul-class FLOPs (``torch.utils.flop_counter``:
            mm, bmm, attention, convolution), for the first HVP and for one through the kept
            graph: what the work itself costs, whatever the implementation's overhead. The
            first HVP computes a forward, a backward and a second backward through the
            backward's graph; on an MLP the second backward alone is ~1.3 gradients.

probe runs  with ``--runs``: whole runs of the cases' probing optimizers (``runner.execute``),
            each twice in this process — with the probes' defaults and with the residual rule
            alone (``quantities.EIG_TOL`` set to 0, the stopping rule before ``eig_tol``) —
            and the HVPs the λ₁ probes took (columns ``*sharpness_hvps``), their wall time, and
            the figures λ₁ feeds (``precond_sharpness_ratio``, ``threshold_crossings``,
            ``spike_lead_time``, ``sharpness_rise``) side by side.

Timings are interleaved (ours, PyHessian at each t, ours, ...) ``--repeats`` times after one
warm-up round, so drift on a shared machine hits all alike; medians are reported and the
time ratio is median(ours) / median(pyhessian at the matching t); target ≤ 1/3.

PyHessian is a benchmark-only dependency: ``pip install '.[lambda-bench]'`` (the extra
``lambda-bench``) or ``pip install pyhessian`` into a separate venv with this project on
``PYTHONPATH``; it is not in the default install.

    PYTHONPATH=. python benchmarks/lambda_max.py                    # both cases, 3 repeats
    PYTHONPATH=. python benchmarks/lambda_max.py --case cases/cifar_fc.yaml --json out.json
    PYTHONPATH=. python benchmarks/lambda_max.py --runs cifar_fc:adam xiong_adam_spike:adam   # HVPs per run
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from stability_bench.probes import LossHessian, additive_for, sharpness, top_eigenpairs
from stability_bench.probes.hvp import math_attention
from stability_bench.probes.lanczos import EIG_TOL
from stability_bench.plan import plan_runs
from stability_bench.runner import start
from stability_bench.schema import load_case

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CASES = [ROOT / "cases" / "cifar_fc.yaml", ROOT / "cases" / "transformer_spikes.yaml"]
PROBE_DEFAULTS = {"max_iter": 30, "tol": 1e-3}  # the probes' plan defaults (probes: max_iter, tol)


def _session(case):
    spec = [s for s in plan_runs(case, devices=["cpu"], optimizers=[next(iter(case.optimizers))])][0]
    return start(spec)


def _additive(case) -> str:
    loss = case.loss
    return additive_for(loss["kind"], loss.get("reduction", "mean"), loss.get("divide_by_batch_size", False))


def reference_lambda(session, additive: str) -> tuple[float, dict]:
    """λ₁ of the float64 copy of the model at the same parameters, to ~1e-11 relative."""
    model64 = copy.deepcopy(session.model).to(torch.float64)
    params64 = [p for p in model64.parameters() if p.requires_grad]
    x, y = session.data.x, session.data.y
    x64 = x.to(torch.float64) if x.is_floating_point() else x
    y64 = y.to(torch.float64) if y.is_floating_point() else y
    H = LossHessian(model64, params64, session.loss_fn, x64, y64, additive=additive)
    res = top_eigenpairs(lambda v: H.hvp(v), H.dim, 1, tol=0, eig_tol=1e-11, max_iter=300, verify=False)
    return res.top, {"converged": res.converged, "hvps": res.n_matvec, "bound": float(res.value_errors[0])}


class _Criterion:
    """PyHessian's ``criterion(outputs, targets)``: the case's loss."""

    def __init__(self, loss_fn):
        self.loss_fn = loss_fn

    def __call__(self, out, y):
        return self.loss_fn(out, y)


def pyhessian_lambda(session, tol: float, max_iter: int = 100, counter: list[int] | None = None) -> tuple:
    """(λ₁, seconds, HVPs, None): PyHessian's power iteration from torch.manual_seed(0)."""
    from pyhessian import hessian

    counter = counter if counter is not None else [0]
    before = counter[0]
    model = copy.deepcopy(session.model)  # PyHessian writes .grad (with graph) and sets eval()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with math_attention():
        h = hessian(model, _Criterion(session.loss_fn), data=(session.data.x, session.data.y), cuda=False)
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
    return float(values[0]), time.perf_counter() - t0, counter[0] - before, None


def ours_lambda(session, additive: str, **options) -> tuple[float, float, int, bool]:
    t0 = time.perf_counter()
    H = LossHessian(session.model, session.params, session.loss_fn, session.data.x, session.data.y,
                    additive=additive)
    res = sharpness(H, 1, **PROBE_DEFAULTS, **options)
    return res.top, time.perf_counter() - t0, res.n_matvec, res.converged


def matmul_flops(fn) -> int:
    """Matmul-class FLOPs of ``fn()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them
    (mm, addmm, bmm, attention, convolution; elementwise ops are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def first_hvp_ratio(session, additive: str, repeats: int) -> dict:
    model, params, loss_fn = session.model, session.params, session.loss_fn
    x, y = session.data.x, session.data.y
    dim = sum(p.numel() for p in params)
    v = torch.randn(dim, generator=torch.Generator().manual_seed(0)).to(params[0].dtype)

    def grad():
        return torch.autograd.grad(loss_fn(model(x), y), params)

    def grad_math():
        with math_attention():
            return torch.autograd.grad(loss_fn(model(x), y), params)

    def hvp():
        return LossHessian(model, params, loss_fn, x, y, additive=additive).hvp(v)

    times = {"grad": [], "grad_math": [], "hvp": []}
    for rep in range(repeats + 1):
        for name, op in (("grad", grad), ("grad_math", grad_math), ("hvp", hvp)):
            t0 = time.perf_counter()
            op()
            if rep:
                times[name].append(time.perf_counter() - t0)
    g, gm, h = (statistics.median(times[k]) for k in ("grad", "grad_math", "hvp"))
    kept = LossHessian(model, params, loss_fn, x, y, additive=additive)
    flops = {"grad": matmul_flops(grad), "hvp_first": matmul_flops(lambda: kept.hvp(v)),
             "hvp_kept": matmul_flops(lambda: kept.hvp(v))}
    flops.update(ratio=flops["hvp_first"] / flops["grad"], kept_ratio=flops["hvp_kept"] / flops["grad"])
    return {"grad_s": g, "grad_math_s": gm, "hvp_first_s": h, "ratio": h / g, "ratio_math": h / gm, "times_s": times,
            "flops": flops}


def bench_case(path: Path, repeats: int, targets: list[float], tols: list[float], counter: list[int]) -> dict:
    case = load_case(str(path))
    additive = _additive(case)
    session = _session(case)
    ref, ref_info = reference_lambda(session, additive)

    def err(value: float) -> float:
        return abs(value - ref) / abs(ref)

    runs = {"ours": lambda: ours_lambda(session, additive),
            "ours, residual only": lambda: ours_lambda(session, additive, eig_tol=None)}
    for t in tols:
        runs[f"pyhessian tol {t:g}"] = (lambda t=t: pyhessian_lambda(session, t, counter=counter))
    rows: dict[str, dict] = {name: {"times_s": []} for name in runs}
    for rep in range(repeats + 1):  # round 0 is the warm-up
        for name, fn in runs.items():
            out = fn()
            row = rows[name]
            row["value"], row["rel_error"] = out[0], err(out[0])
            if len(out) > 2:
                row["hvps"], row["converged"] = out[2], out[3]
            if rep:
                row["times_s"].append(out[1])
    for row in rows.values():
        row["median_s"] = statistics.median(row["times_s"])
    ours = rows["ours"]
    matches = []
    for target in [ours["rel_error"], *targets]:
        match = next((name for name in rows if name.startswith("pyhessian") and rows[name]["rel_error"] <= target),
                     None)
        matches.append({"target": target, "pyhessian": match, "ours_meets_target": ours["rel_error"] <= target,
                        "time_ratio": ours["median_s"] / rows[match]["median_s"] if match else None})
    return {"case": case.name, "params": sum(p.numel() for p in session.params),
            "examples": int(session.data.x.shape[0]), "reference": ref, "reference_info": ref_info,
            "runs": rows, "matches": matches, "first_hvp": first_hvp_ratio(session, additive, max(repeats, 5))}


def _count_pyhessian_hvps():
    """Wrap PyHessian's ``hessian_vector_product`` with a counter (returned: a one-item list)."""
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports the class)

    count = [0]
    original = getattr(ph.hessian_vector_product, "__wrapped__", ph.hessian_vector_product)

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    counted.__wrapped__ = original
    ph.hessian_vector_product = counted
    return count


RUN_FIGURES = ("precond_sharpness_ratio", "threshold_crossings", "spike_lead_time", "sharpness_rise",
               "spikes_led_by_crossing")


def probe_runs(which: list[str]) -> list[dict]:
    """Each ``case:optimizer`` (first sweep point, first seed, CPU) run with the probes'
    defaults and with the residual rule alone; HVPs of the λ₁ probes, time, figures."""
    from stability_bench.probes import quantities
    from stability_bench.runner import execute

    rows = []
    for item in which:
        name, _, key = item.partition(":")
        case = load_case(str(ROOT / "cases" / f"{name}.yaml"))
        spec = plan_runs(case, devices=["cpu"], optimizers=[key or next(iter(case.optimizers))])[0]
        row = {"run": spec.run_id}
        saved = quantities.EIG_TOL
        for label, eig in (("residual only", 0.0), ("defaults", saved)):
            quantities.EIG_TOL = eig
            try:
                t0 = time.perf_counter()
                result = execute(spec)
                seconds = time.perf_counter() - t0
            finally:
                quantities.EIG_TOL = saved
            hvps = {c: sum(int(v) for v in result.probes[c] if v is not None and v == v)
                    for c in result.probes if c.endswith("sharpness_hvps")}
            figures = {f: result.metrics[f] for f in RUN_FIGURES if f in result.metrics}
            row[label] = {"hvps": hvps, "seconds": seconds, "figures": figures}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", help="case file(s) (default: cifar_fc and transformer_spikes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", type=float, nargs="+", default=[EIG_TOL, 1e-4],
                    help="relative accuracies both must reach")
    ap.add_argument("--pyhessian-tols", type=float, nargs="+", default=[1e-3, 1e-4, 1e-5, 1e-6])
    ap.add_argument("--runs", nargs="*", default=None, metavar="CASE:OPTIMIZER",
                    help="instead of the λ₁ comparison: HVPs per probe run, defaults vs residual rule")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        print("PyHessian is not installed: pip install '.[lambda-bench]' (or pip install pyhessian)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.runs is not None:
        rows = probe_runs(args.runs or ["cifar_fc:adam", "xiong_adam_spike:adam", "transformer_spikes:adam"])
        for row in rows:
            print(f"\n{row['run']}")
            for label in ("residual only", "defaults"):
                r = row[label]
                print(f"  {label:<14} hvps {r['hvps']}  {r['seconds']:.1f} s  {r['figures']}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2, default=str))
        return 0
    pyhessian_hvps = _count_pyhessian_hvps()
    out = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "repeats": args.repeats, "cases": []}
    for path in args.case or DEFAULT_CASES:
        r = bench_case(Path(path), args.repeats, args.targets, args.pyhessian_tols, pyhessian_hvps)
        out["cases"].append(r)
        print(f"\n{r['case']}: {r['params']} parameters, {r['examples']} examples, threads={out['threads']}, "
              f"λ₁ = {r['reference']:.10g} (float64 reference, {r['reference_info']['hvps']} HVPs)")
        print(f"{'method':<24}{'hvps':>6}{'rel error':>11}{'median s':>10}")
        for name, row in r["runs"].items():
            print(f"{name:<24}{row.get('hvps', '-')!s:>6}{row['rel_error']:11.1e}{row['median_s']:10.3f}")
        for m in r["matches"]:
            ratio = "n/a (no PyHessian tol reached it)" if m["time_ratio"] is None else f"{m['time_ratio']:.2f}"
            print(f"accuracy {m['target']:.2g}: ours {'meets' if m['ours_meets_target'] else 'MISSES'} it; "
                  f"time ours / {m['pyhessian']} = {ratio} (target ≤ 0.33)")
        fh = r["first_hvp"]
        print(f"first HVP {fh['hvp_first_s'] * 1e3:.1f} ms / gradient {fh['grad_s'] * 1e3:.1f} ms = "
              f"{fh['ratio']:.2f} (target ≤ 2.0); / gradient under math attention "
              f"{fh['grad_math_s'] * 1e3:.1f} ms = {fh['ratio_math']:.2f}")
        fl = fh["flops"]
        print(f"matmul FLOPs: first HVP {fl['hvp_first']:.3g} / gradient {fl['grad']:.3g} = {fl['ratio']:.2f}; "
              f"an HVP through the kept graph {fl['kept_ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
