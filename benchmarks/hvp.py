"""What does a curvature probe cost? HVP vs gradient, and HVPs per λ₁ estimate.

On the run of a case (default ``cases/cifar_fc.yaml``: 3072→200×5→10 tanh, half_example_mean
MSE, the first 1000 CIFAR-10 images, float32, 777k parameters), built exactly as the runner
builds it (``runner.start``), this measures on the CPU (and on CUDA when available):

(a) timings, interleaved (one warm-up of each, then ABCD... ``--repeats`` times) so that
    drift on a shared machine hits all alike; median and minimum; on CUDA each timing
    synchronises before the clock stops:

    grad            one full-batch gradient as training takes it:
                    ``torch.autograd.grad(loss_fn(model(x), y), params)`` — the unit;
    grad (probe)    ``LossHessian(...).gradient()`` on a fresh snapshot;
    hvp db first    double-backward HVP at a new point: forward + backward with
                    create_graph + the second backward (``cache_bytes=0``);
    hvp db cached   double-backward HVP again at the same point, the first-order graph kept
                    (what every Lanczos step after the first costs);
    hvp fwd-rev     forward-over-reverse HVP (``torch.func.jvp`` of ``torch.func.grad``).

    and the ratio of each to ``grad`` (of the medians, and of the minima).

(b) Lanczos: HVPs for λ₁ of H and of P^{-1/2}HP^{-1/2} (P: torch Adam's, bias-corrected)
    after ``--steps`` full-batch Adam steps of the case's optimizer: from the fixed-seed
    random start, and warm-started from the top eigenvector computed ``--warm-gap`` (10)
    Adam steps earlier. ``hvps (tol)`` is the count with the probes' stopping rule
    (relative residual < 1e-3, verification matvec included); ``hvps to 1e-3`` is the first
    step at which the Ritz value is within 1e-3 of λ₁ (taken from a tol=1e-8 solve);
    ``solve s`` the wall time of the tol solve.

Threads. ``torch.get_num_threads()`` is left at its default unless ``--threads`` is given,
and is recorded. On a CPU shared with other busy processes the OpenMP workers of a
multi-threaded run wait for each other (~10 ms per parallel op), which can make everything
many times slower; ``--threads 1`` then gives the like-for-like compute ratios.

    python benchmarks/hvp.py                         # cifar_fc, cpu (+cuda), 7 repeats
    python benchmarks/hvp.py --threads 1 --json hvp.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/hvp.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))

from benchmarks import interleaved_times, sync  # noqa: E402
from stability_bench.probes import (
    LossHessian,
    diagonal_preconditioner,
    precond_operator,
    top_eigenpairs,
    untouched,
)
from stability_bench.plan import plan_runs
from stability_bench.runner import start
from stability_bench.schema import load_case

DEFAULT_CASE = Path(__file__).resolve().parent.parent / "cases" / "cifar_fc.yaml"


def _session(case, device: str, optimizer: str | None):
    key = optimizer or next(iter(case.optimizers))
    spec = [s for s in plan_runs(case, devices=[device], optimizers=[key])][0]
    return start(spec)


def measure_ops(session, device: str, repeats: int, additive: str) -> dict:
    model, params, loss_fn = session.model, session.params, session.loss_fn
    x, y = session.data.x, session.data.y
    gen = torch.Generator().manual_seed(0)
    dim = sum(p.numel() for p in params)
    v = torch.randn(dim, generator=gen).to(device=device, dtype=params[0].dtype)
    cached = LossHessian(model, params, loss_fn, x, y, additive=additive)
    first = LossHessian(model, params, loss_fn, x, y, additive=additive, cache_bytes=0)
    fwdrev = LossHessian(model, params, loss_fn, x, y, additive=additive, mode="forward_over_reverse")

    def grad():
        return torch.autograd.grad(loss_fn(model(x), y), params)

    def probe_grad():
        return LossHessian(model, params, loss_fn, x, y, additive=additive).gradient()

    ops = {"grad": grad, "grad (probe)": probe_grad, "hvp db first": lambda: first.hvp(v),
           "hvp db cached": lambda: cached.hvp(v), "hvp fwd-rev": lambda: fwdrev.hvp(v)}
    with untouched(model, session.optimizer):
        times = interleaved_times(ops, device, repeats)
    # the three HVPs must agree
    a, b, c = cached.hvp(v).double(), first.hvp(v).double(), fwdrev.hvp(v).double()
    scale = float(a.norm())
    agree = max(float((a - b).norm()) / scale, float((a - c).norm()) / scale)
    base = statistics.median(times["grad"])
    base_min = min(times["grad"])
    rows = {name: {"median_s": statistics.median(ts), "min_s": min(ts),
                   "ratio_to_grad": statistics.median(ts) / base, "min_ratio_to_grad": min(ts) / base_min,
                   "times_s": ts}
            for name, ts in times.items()}
    return {"ops": rows, "hvp_relative_disagreement": agree, "cached_graph_bytes": cached.cached_bytes,
            "params": dim, "examples": int(x.shape[0])}


def _hvps_to(history: list[list[float]], target: float, rel: float) -> int | None:
    for j, thetas in enumerate(history):
        if abs(thetas[0] - target) <= rel * abs(target):
            return j + 1
    return None


def lanczos_counts(session, steps: int, gap: int, tol: float, max_iter: int, additive: str) -> dict:
    model, params, loss_fn, opt = session.model, session.params, session.loss_fn, session.optimizer
    x, y = session.data.x, session.data.y
    batch_iter = iter(session.batches)
    warm: dict[str, torch.Tensor] = {}
    out: dict = {}
    for step in range(steps + 1):
        if step in (steps - gap, steps):
            with untouched(model, opt):
                H = LossHessian(model, params, loss_fn, x, y, additive=additive)
                P = diagonal_preconditioner(opt, params)
                operators = {"H": lambda u: H.hvp(u).double()}
                if P is not None:
                    operators["P^-1/2 H P^-1/2"] = precond_operator(H, P)
                for name, op in operators.items():
                    if step == steps - gap:
                        warm[name] = top_eigenpairs(op, H.dim, 1, tol=tol, max_iter=max_iter).vectors[:, 0]
                        continue
                    ref = top_eigenpairs(op, H.dim, 1, tol=1e-8, max_iter=120, verify=False)
                    row = {"lambda_1": ref.top, "reference_converged": ref.converged}
                    starts = {"random": None, "warm": warm.get(name)}
                    for label, v0 in starts.items():
                        if label == "warm" and v0 is None:
                            continue
                        sync(H.device.type)
                        t0 = time.perf_counter()
                        res = top_eigenpairs(op, H.dim, 1, tol=tol, max_iter=max_iter, v0=v0)
                        sync(H.device.type)
                        seconds = time.perf_counter() - t0
                        longer = top_eigenpairs(op, H.dim, 1, tol=1e-12, max_iter=max_iter, v0=v0, verify=False)
                        row[label] = {"hvps_tol": res.n_matvec, "converged": res.converged, "seconds": seconds,
                                      "value": res.top, "rel_error": abs(res.top - ref.top) / abs(ref.top),
                                      "residual": float(res.residuals[0]),
                                      "hvps_to_1e-3": _hvps_to(longer.ritz_history, ref.top, 1e-3)}
                    out[name] = row
        if step == steps:
            break
        xb, yb = next(batch_iter)
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
    return out


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:9.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default=str(DEFAULT_CASE))
    ap.add_argument("--optimizer", default=None, help="optimizer key of the case (default: its first)")
    ap.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, and cuda if available)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps before the Lanczos measurements")
    ap.add_argument("--warm-gap", type=int, default=10, help="steps between the warm start and the solve")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--max-iter", type=int, default=30)
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    case = load_case(args.case)
    from stability_bench.probes import additive_for

    loss = case.loss
    additive = additive_for(loss["kind"], loss.get("reduction", "mean"), loss.get("divide_by_batch_size", False))
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    report = {"case": case.name, "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "dtype": case.dtype, "additive": additive,
              "repeats": args.repeats, "devices": {}}
    for device in devices:
        session = _session(case, device, args.optimizer)
        timing = measure_ops(session, device, args.repeats, additive)
        session = _session(case, device, args.optimizer)  # a fresh run for the Lanczos study
        eig = lanczos_counts(session, args.steps, args.warm_gap, args.tol, args.max_iter, additive)
        report["devices"][device] = {"timing": timing, "lanczos": eig}

        print(f"\n{case.name} on {device}: {timing['params']} parameters, {timing['examples']} examples, "
              f"{case.dtype}, threads={report['threads']}, {args.repeats} interleaved repeats")
        print(f"{'op':<16}{'median ms':>10}{'min ms':>10}{'÷ grad (median)':>17}{'÷ grad (min)':>14}")
        for name, row in timing["ops"].items():
            print(f"{name:<16}{_fmt_ms(row['median_s'])} {_fmt_ms(row['min_s'])}{row['ratio_to_grad']:17.2f}"
                  f"{row['min_ratio_to_grad']:14.2f}")
        print(f"(HVPs agree to {timing['hvp_relative_disagreement']:.1e} relative; "
              f"kept graph {timing['cached_graph_bytes'] / 2**20:.1f} MiB)")
        print(f"\nLanczos after {args.steps} Adam steps (tol {args.tol:g}, max_iter {args.max_iter}; "
              f"warm = top eigenvector from {args.warm_gap} steps earlier)")
        print(f"{'operator':<18}{'λ₁':>12}{'start':>8}{'hvps (tol)':>11}{'hvps to 1e-3':>13}{'rel err':>10}"
              f"{'residual':>10}{'solve s':>9}")
        for name, row in eig.items():
            for label in ("random", "warm"):
                if label not in row:
                    continue
                r = row[label]
                to = "-" if r["hvps_to_1e-3"] is None else str(r["hvps_to_1e-3"])
                print(f"{name:<18}{row['lambda_1']:12.5g}{label:>8}{r['hvps_tol']:>11}{to:>13}"
                      f"{r['rel_error']:10.1e}{r['residual']:10.1e}{r['seconds']:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
