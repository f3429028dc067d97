"""How many torch intra-op threads a run gets, chosen by the harness.

On small shared machines two OpenMP threads wait for each other on every small op (a
14→100→40→4 MLP ran 118 s with torch's default two threads and 9.8 s with one). Most
stability cases are small, so the harness picks the count per run instead of leaving it
to torch:

* an explicit count wins: ``--threads N`` / ``run_case(threads=N)``, else the environment
  variable ``STABILITY_BENCH_THREADS``;
* otherwise ``auto``: one thread per ~2 GFLOP of work per step (``6 × parameters ×
  examples per step``), at most half the machine's cores, at least one. Every shipped CI
  case gets one thread on a 2-core machine.

The count depends on the run and the machine, never on the number of parallel workers:
intra-op threads change the order of floating-point sums (cifar_fc's trajectory differs
from step 0 between one and two threads), and a result must not depend on ``--jobs``.

The count holds for every pool a run computes with: torch's intra-op threads and the BLAS
that numpy links (the recorder's norms, a user's metric). numpy's OpenBLAS starts one
thread per core, and its idle workers spin after each call: with two runs on two cores, a
cohen_fig5 run took 10.0 s instead of 7.0 s, its recorder's norms 2.3 s instead of 0.24 s
(side by side, one process each, 2026-12-03). It also made the recorded norms depend on the
machine: OpenBLAS splits a dot product of over ~10 k numbers across its threads, so a
gradient norm differed in the last bits between one and two BLAS threads (1 in 1e14 at
33 k parameters). ``threadpoolctl`` (a dependency) sets the BLAS count; where a checkout
runs uninstalled without it (``benchmarks/gpu_check.sh`` on a machine with no network), only
torch's count is set: CPU runs there go as fast, and their large models' norms round, as
BLAS's default count makes them.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

ENV = "STABILITY_BENCH_THREADS"
FLOP_PER_THREAD = 2e9


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def explicit_threads(threads: int | None = None) -> int | None:
    """The user's count: the argument, else ``$STABILITY_BENCH_THREADS``; None for auto."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return threads
    text = os.environ.get(ENV, "").strip()
    if not text or text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${ENV} must be a positive integer or 'auto', got {text!r}")
    return int(text)


def auto_threads(flop_per_step: float, cores: int | None = None) -> int:
    """One thread per :data:`FLOP_PER_THREAD` of work per step, within [1, cores // 2]."""
    cores = available_cores() if cores is None else cores
    return int(max(1, min(max(1, cores // 2), flop_per_step // FLOP_PER_THREAD)))


def _blas_limits(count: int) -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:   # an uninstalled checkout (module docstring)
        return contextlib.nullcontext()
    return threadpool_limits(limits=count, user_api="blas")


@contextlib.contextmanager
def thread_limits(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads and ``count`` BLAS threads (every
    BLAS library loaded, numpy's included), then restore both settings."""
    import torch

    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        with _blas_limits(count):
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
