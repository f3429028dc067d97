"""How much does the harness cost on top of the training it watches?

Times, side by side, for one run of a case (default: ``cases/bai_li_perceptron.yaml``, its
first optimizer, seed 0, cpu; its probes switched off unless ``--with-probes``):

(a) harness — ``stability_bench.runner.execute(spec)`` for the RunSpec ``plan_runs`` gives;
(b) bare    — a hand-written torch loop doing the same training steps: zero_grad, forward,
    loss, backward, step, and nothing else (no ``.item()``, no records, no checks);
(c) floor   — the bare loop plus the data movement that recording the loss, gradient norm
    and update norm of an arbitrary (in-place) optimizer needs per step: keep the detached
    loss, and copy the gradients and the parameters in one fused call — into one fixed
    buffer that stays in cache, with no norms and no history. ``floor/bare`` bounds from
    below what such recording can cost on this model and machine.

Fairness. ``execute`` builds its data, model, loss, batches and optimizer inside the call,
and after the loop turns the record into a history and computes metrics. So the bare timing
*includes an equivalent build*: the same components, made through the same registries with
the same seeds, in the same order as the runner (so the two runs do bit-identical work on
the CPU; the script checks that the bare loop's last loss equals the harness's). Building
Bai Li's case takes a few milliseconds, so this hardly matters; the loop alone is reported
too (``bare loop``), and the ratio uses build+loop, the like-for-like number. The harness's
post-processing (history, metrics) is counted as harness cost: it is work the harness adds.
Batches come from the same :class:`Batches` iterator in both (for a full-batch case it
yields the same tensors every step).

The three are interleaved (one warm-up of each, then ``--repeats`` rounds, each in a
rotated order) so drift on a shared machine hits them alike; the table shows median and
minimum seconds, and the ratios to bare three ways: of the medians, of the minima, and the
median over rounds of each round's own ratio (``paired``: the most robust to drift).
``torch.get_num_threads()`` is left at its default for all three and recorded. On CUDA each
timing synchronises before the clock stops.

    python benchmarks/overhead.py                      # Bai Li, adam, seed 0, cpu, 7 rounds
    python benchmarks/overhead.py --optimizer sgd --repeats 5 --json overhead.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from stability_bench.plan import plan_runs
from stability_bench.runner import BLOCK, execute, start
from stability_bench.schema import load_cases

DEFAULT_CASE = Path(__file__).resolve().parent.parent / "cases" / "bai_li_perceptron.yaml"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure_bare(spec, floor: bool = False) -> tuple[float, float, torch.Tensor]:
    """(build+loop seconds, loop-only seconds, last loss tensor); with ``floor``, the loop
    also keeps each detached loss and copies the gradients and parameters before each step."""
    _sync(spec.device)
    t0 = time.perf_counter()
    session = start(spec)  # the runner's own build: same registries, seeds and order
    model, loss_fn, batches, optimizer = session.model, session.loss_fn, session.batches, session.optimizer
    params = session.params
    flat = [p.detach().view(-1) for p in params]
    kept, copies = [], [torch.empty_like(p) for p in params] + [torch.empty_like(f) for f in flat]
    _sync(spec.device)
    t1 = time.perf_counter()
    batch_iter = iter(batches)
    loss = None
    for _ in range(spec.case.steps):
        x, y = next(batch_iter)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if floor:
            kept.append(loss.detach())
            torch._foreach_copy_(copies, [*[p.grad for p in params], *flat])
            if len(kept) == BLOCK:  # the recorder, too, keeps a block's losses
                kept.clear()
        optimizer.step()
    _sync(spec.device)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1, loss


def measure_harness(spec):
    _sync(spec.device)
    t0 = time.perf_counter()
    result = execute(spec)
    _sync(spec.device)
    return time.perf_counter() - t0, result


def find_spec(case_file: str, optimizer: str | None, device: str, seed: int, probes: bool = False):
    cases = load_cases(case_file)
    case = cases[0]  # the base case, not a variant
    if not probes:  # the overhead target is for training without probes (benchmarks/hvp.py times those)
        case = dataclasses.replace(case, probes={})
    key = optimizer or next(iter(case.optimizers))
    if key not in case.optimizers:
        sys.exit(f"{case_file}: no optimizer {key!r}; it has {', '.join(case.optimizers)}")
    return plan_runs(case, devices=[device], seeds=[seed], optimizers=[key])[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default=str(DEFAULT_CASE), help="case file (default: %(default)s)")
    ap.add_argument("--optimizer", help="optimizer entry (default: the case's first)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=7,
                    help="timed rounds, each timing all three (default: %(default)s)")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    ap.add_argument("--with-probes", action="store_true",
                    help="keep the case's probes (default: off; the overhead target is without them)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("CUDA is not available on this machine")

    spec = find_spec(args.case, args.optimizer, args.device, args.seed, args.with_probes)
    threads = torch.get_num_threads()
    print(f"{spec.run_id}: {spec.case.steps} steps, dtype {spec.case.dtype}, "
          f"torch {torch.__version__}, {threads} threads, BLOCK {BLOCK}, "
          f"probes {'on' if spec.case.probes else 'off'}", flush=True)

    # warm-up (allocator, lazy imports, first-call dispatch), and the same-work check
    _, warm = measure_harness(spec)
    _, _, last = measure_bare(spec)
    if not warm.diverged:
        same = float(last.detach().cpu()) == warm.history["loss"][-1]
        if not same and spec.device == "cpu":
            print("warning: the bare loop's last loss differs from the harness's "
                  f"({float(last):.17g} vs {warm.history['loss'][-1]:.17g})", file=sys.stderr)

    times = {"harness": [], "bare": [], "bare_loop": [], "floor": []}
    order = ["harness", "bare", "floor"]
    for i in range(args.repeats):
        for which in order[i % 3:] + order[:i % 3]:
            if which == "harness":
                times["harness"].append(measure_harness(spec)[0])
            else:
                total, loop, _ = measure_bare(spec, floor=which == "floor")
                times[which].append(total)
                if which == "bare":
                    times["bare_loop"].append(loop)

    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    paired = {k: statistics.median(a / b for a, b in zip(times[k], times["bare"]))
              for k in ("harness", "floor")}
    ratio_median = med["harness"] / med["bare"]
    ratio_min = low["harness"] / low["bare"]
    steps = spec.case.steps

    print(f"\n{'':24}{'median s':>10}{'min s':>10}{'us/step':>10}")
    for label, key in (("harness (execute)", "harness"), ("bare (build + loop)", "bare"),
                       ("bare loop only", "bare_loop"), ("floor (bare + minimum)", "floor")):
        print(f"{label:24}{med[key]:10.3f}{low[key]:10.3f}{1e6 * med[key] / steps:10.1f}")
    print(f"\n{'ratio to bare':24}{'medians':>10}{'minima':>10}{'paired':>10}")
    for key in ("harness", "floor"):
        print(f"{key:24}{med[key] / med['bare']:10.3f}{low[key] / low['bare']:10.3f}{paired[key]:10.3f}")
    print(f"overhead per step (medians): harness {1e6 * (med['harness'] - med['bare']) / steps:.1f} us, "
          f"floor {1e6 * (med['floor'] - med['bare']) / steps:.1f} us; {args.repeats} interleaved rounds")

    if args.json:
        payload = {"run_id": spec.run_id, "case": args.case, "optimizer": spec.optimizer.key,
                   "device": args.device, "seed": args.seed, "steps": steps, "dtype": spec.case.dtype,
                   "repeats": args.repeats, "num_threads": threads, "torch": torch.__version__,
                   "python": platform.python_version(), "machine": platform.machine(),
                   "block": BLOCK, "times_s": times, "median_s": med, "min_s": low,
                   "ratio_median": ratio_median, "ratio_min": ratio_min, "ratio_paired": paired["harness"],
                   "floor_ratio_paired": paired["floor"]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
