"""asv benchmark suite (``asv.conf.json`` at the top level; see docs/benchmarking.md).

Modules named ``bench_*.py`` hold the asv benchmarks; ``overhead.py`` and ``hvp.py`` are
standalone scripts (``python benchmarks/overhead.py``) whose names asv does not collect.

Helpers shared by the bench modules live here too. Importing this package has no side
effects: no training, no data loading,
no CUDA initialisation (the launch method may be ``forkserver``, which must not fork a
process that has touched CUDA).
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES_DIR = REPO / "cases"
SEED = 0                    # every benchmark run is seeded: runs use seed 0 of their case


def _devices() -> tuple:
    """``cpu``, and ``cuda`` where torch is a CUDA build. Decided without initialising CUDA
    (``torch.version.cuda``, not ``torch.cuda.is_available()``), so that a forkserver may
    import this suite and fork benchmark processes that then use the GPU. A CUDA build on a
    machine without a GPU gets ``cuda`` parameters that skip cleanly (``require_device``);
    a CPU-only build has none, and spends no benchmark process on them."""
    import torch

    return ("cpu", "cuda") if torch.version.cuda else ("cpu",)


DEVICES = _devices()


@functools.lru_cache(maxsize=None)
def shipped_cases() -> tuple:
    """Every case (variants included) in ``cases/``, except ``slow`` ones, by name.

    Case files are parsed and validated here (milliseconds: no run, no data), because
    asv needs the parameter lists when it imports a module."""
    from stability_bench.schema import load_cases

    cases = [case for path in sorted(CASES_DIR.glob("*.yaml")) for case in load_cases(path)]
    return tuple(case for case in cases if not case.slow)


def run_label(spec) -> str:
    """A run's id without its seed and device: ``case::optimizer[sweep point]``."""
    return spec.run_id.rsplit("-seed", 1)[0]


def require_device(device: str) -> None:
    """Skip (asv: NotImplementedError in setup) a CUDA parameter on a machine without one."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise NotImplementedError("CUDA is not available on this machine")


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timing covers the work and not only its launch."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def interleaved_times(ops: dict, device: str, repeats: int) -> dict[str, list[float]]:
    """Each op's times, interleaved (one warm-up round, then A B C … ``repeats`` times), so
    that drift on a shared machine hits all alike; each timing synchronises the GPU."""
    import time

    out: dict[str, list[float]] = {name: [] for name in ops}
    for rep in range(repeats + 1):
        for name, fn in ops.items():
            sync(device)
            started = time.perf_counter()
            fn()
            sync(device)
            if rep:  # the first round is the warm-up
                out[name].append(time.perf_counter() - started)
    return out


def with_data_dir(case):
    """``case`` with its CIFAR-10 ``data_dir`` pointed at this checkout's data when
    ``$STABILITY_BENCH_DATA`` is unset: asv runs benchmarks in a temporary directory, and
    an installed (non-editable) package has no project root to search from. The shipped
    case file is not changed; a missing dataset makes the benchmark skip (setup raises
    NotImplementedError with the loader's message)."""
    import dataclasses

    if case.data.get("kind") != "cifar10" or case.data.get("data_dir") or os.environ.get("STABILITY_BENCH_DATA"):
        return case
    from stability_bench.components.cifar10 import DataNotFoundError, find_cifar10

    for base in (REPO / "data", REPO.parent / "shared" / "data"):
        try:
            find_cifar10(base)
        except (DataNotFoundError, FileNotFoundError):
            continue
        return dataclasses.replace(case, data={**case.data, "data_dir": str(base)})
    return case


def single_thread_on_cpu(device: str) -> None:
    """CPU timings use one intra-op thread, and one BLAS thread for numpy (as the harness
    gives a shipped case's run: stability_bench.threads). On a shared 2-core machine two
    OpenMP threads spin-wait for a core someone else holds, and per-step times of the small
    cases then varied 50× between samples; one thread measures the code, not the scheduler.
    Each benchmark runs in its own process (a fork or a fresh interpreter), so this setting
    stays there. threadpoolctl is imported where present: an older commit's environment
    may lack it."""
    if device == "cpu":
        import torch

        torch.set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(limits=1, user_api="blas")


def start_session(case, device: str, optimizer: str | None = None):
    """The live objects of ``case``'s first run (or its ``optimizer``'s) at seed 0 on
    ``device``, built by the runner (``plan_runs`` + ``start``) as ``execute`` builds them.
    Missing data or device: NotImplementedError, which asv reports as a skip."""
    from stability_bench.components.cifar10 import DataNotFoundError
    from stability_bench.plan import plan_runs
    from stability_bench.runner import RunSetupError, start

    require_device(device)
    specs = plan_runs(with_data_dir(case), devices=[device], seeds=[SEED],
                      optimizers=[optimizer] if optimizer else None)
    try:
        return start(specs[0])
    except (RunSetupError, DataNotFoundError) as exc:
        raise NotImplementedError(f"cannot build {specs[0].run_id}: {exc}") from exc
