"""How runs are trained: in this process, in worker processes, or on a Dask cluster — one
:class:`Executor` interface, which knows nothing of plans or searches: it trains the
specs it is given, in the order of their priority, and asks ``more`` after each for
further work. A run that raises is a :class:`~stability_bench.results.RunFailure`, not an
exception: the other runs go on.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator, Mapping

from stability_bench.costs import sizing, threads_for
from stability_bench.plan import Plan, RunSpec, prepare_data
from stability_bench.results import RunFailure, RunResult
from stability_bench.runner import MissingDataError, RunSetupError, RunTimeout, execute
from stability_bench.signals import ignore_terminal_signals, start_resource_tracker
from stability_bench.threads import thread_limits

__all__ = ["Executor", "run_one", "execute_plan"]


def run_one(spec: RunSpec, threads: int | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> RunResult | RunFailure:
    """Train one run at its thread count; any exception becomes a :class:`RunFailure`.

    Module-level and picklable, so worker processes and Dask workers call it as it is."""
    try:
        with thread_limits(threads_for(spec, threads)):
            return execute(spec, progress)
    except RunTimeout as exc:
        return RunFailure(spec.run_id, "timeout", str(exc), getattr(exc, "step", None))
    except MissingDataError as exc:
        return RunFailure(spec.run_id, "missing_data", str(exc))
    except RunSetupError as exc:  # the user's code raised while being built: its traceback for -v
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else None
        return RunFailure(spec.run_id, "setup", str(exc),
                          traceback="".join(traceback.format_exception(cause)) if cause is not None else "")
    except Exception as exc:  # a user's optimizer or model raised: report it, go on
        return RunFailure(spec.run_id, "crash", f"{type(exc).__name__}: {exc}",
                          getattr(exc, "step", None), traceback.format_exc())


More = Callable[[str, RunResult | RunFailure], Mapping[str, RunSpec]]


#: what the fork server imports before it forks a worker (and nothing else: it runs no torch op)
PRELOAD = ("torch", "torch._dynamo", "stability_bench.execute")


def _pool_context():
    """Workers are forked from multiprocessing's fork server: a fresh interpreter that has
    imported :data:`PRELOAD` and run nothing, so a worker starts in a fraction of a second
    instead of ~2.5 s of imports. Forking this process instead could hang the child once
    its OpenMP pool is initialised; the server never initialises one. Where there is no
    fork server (Windows), ``spawn``."""
    start_resource_tracker()
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def _start_worker(path: list[str], environ: dict[str, str]) -> None:
    """A worker's initializer: this process's ``sys.path`` and environment as they are now
    (the fork server keeps those of its own start, which may be long ago: user modules a
    case names are imported through ``sys.path``, and settings are read from the
    environment), and the terminal's signals ignored (:func:`ignore_terminal_signals`)."""
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    ignore_terminal_signals()


def _gpu(spec: RunSpec) -> str | None:
    """The GPU a run holds while it trains (``cuda`` is ``cuda:0``), None on the CPU."""
    if not spec.device.startswith("cuda"):
        return None
    return spec.device if ":" in spec.device else "cuda:0"


def _outcome(run_id: str, future) -> RunResult | RunFailure:
    """The worker's answer; a worker that died (killed, out of memory) is a crash too."""
    try:
        return future.result()
    except Exception as exc:
        return RunFailure(run_id, "crash", f"{type(exc).__name__}: {exc}", None,
                          "".join(traceback.format_exception(exc)))


class Executor:
    """Trains runs: in this process (``jobs`` 1), in ``jobs`` worker processes, or
    on a Dask cluster (``client``: a ``dask.distributed.Client`` or its address). One
    executor serves a whole plan — its runs, then each round of its critical-lr searches —
    so worker processes start once.

    Workers never run more busy threads than ``jobs``: a run the harness gives t threads
    takes min(t, jobs) of them; and never two runs on one GPU at once (runs on ``cuda:0 …
    cuda:k`` spread over the workers, each with its GPU to itself). Users' optimizers and
    components must be importable in the workers (they get this process's ``sys.path``;
    Dask workers need them installed)."""

    def __init__(self, jobs: int = 1, client: Any = None, threads: int | None = None,
                 progress: Callable[[str, int, int, float], None] | None = None):
        self.jobs, self.threads, self.progress = max(1, jobs), threads, progress
        self.client, self._pool, self._own_client = client, None, isinstance(client, str)

    def __enter__(self) -> "Executor":
        if self._own_client:  # an address: connect now, close on exit
            from distributed import Client

            self.client = Client(self.client)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            if exc[0] is not None:  # interrupted (a stop signal) or abandoned: the runs in flight are
                # dropped, not waited for (concurrent.futures would otherwise join them at exit)
                for process in list((getattr(self._pool, "_processes", None) or {}).values()):
                    process.terminate()
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._pool = None
        if self._own_client:
            self.client.close()

    def run(self, specs: Mapping[str, RunSpec], more: More | None = None,
            urgent: Callable[[str], bool] | None = None) -> Iterator[tuple[str, RunResult | RunFailure]]:
        """Train ``specs`` (key → spec); yield ``(key, result or failure)`` as each finishes.
        ``more(key, outcome)``, called as each finishes, may return further specs to train
        (a critical-lr search's next round), so new work fills the workers at once.
        ``urgent(key)``: work that goes ahead of the rest (other work waits on it); the rest
        goes longest first."""
        more = more or (lambda key, outcome: {})
        urgent = urgent or (lambda key: False)
        if self.client is not None:
            yield from self._dask(specs, more)
        elif self.jobs == 1:
            queue = dict(specs)
            while queue:
                key = next(iter(queue))
                step_progress = None if self.progress is None else (
                    lambda done, total, loss, _id=key: self.progress(_id, done, total, loss))
                outcome = run_one(queue.pop(key), self.threads, step_progress)
                queue.update(more(key, outcome))
                yield key, outcome
        else:
            yield from self._processes(specs, more, urgent)

    def _processes(self, specs: Mapping[str, RunSpec], more: More, urgent: Callable[[str], bool]):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=_pool_context(), initializer=_start_worker,
                                             initargs=(list(sys.path), dict(os.environ)))
        specs = dict(specs)
        threads, work, cost = {}, {}, {}
        queue, running, free, gpus = [], {}, self.jobs, set()

        def enqueue(key: str, spec: RunSpec) -> None:
            """Queue a run, its thread count chosen once, here. Order: urgent work first
            (a critical-lr search's next round waits for its probes), then the longest runs
            first, so the last runs to finish are short ones (no core idles through a long tail)."""
            specs[key] = spec
            threads[key], work[key] = sizing(spec, self.threads)
            cost[key] = min(self.jobs, threads[key])
            queue.append(key)
            queue.sort(key=lambda k: (not urgent(k), -work[k]))

        def fits(key: str) -> bool:
            gpu = _gpu(specs[key])
            return (cost[key] <= free or not running) and (gpu is None or gpu not in gpus)

        for key, spec in list(specs.items()):
            enqueue(key, spec)
        while queue or running:
            while (ready := next((k for k in queue if fits(k)), None)) is not None:
                queue.remove(ready)
                free -= cost[ready]
                gpus.add(_gpu(specs[ready]))  # None (the CPU) is never looked up
                running[self._pool.submit(run_one, specs[ready], threads[ready])] = ready
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                key = running.pop(future)
                free += cost[key]
                gpus.discard(_gpu(specs[key]))
                outcome = _outcome(key, future)
                for new_key, spec in more(key, outcome).items():
                    enqueue(new_key, spec)
                yield key, outcome

    def _dask(self, specs: Mapping[str, RunSpec], more: More):
        from distributed import as_completed

        def submit(key: str, spec: RunSpec):
            future = self.client.submit(run_one, spec, self.threads, pure=False,
                                        key=f"stability-bench-{key}-{time.time_ns()}")
            keys[future] = key
            return future

        keys: dict = {}
        pending = as_completed([submit(key, spec) for key, spec in specs.items()])
        for future in pending:
            outcome = _outcome(keys[future], future)
            for new_key, spec in more(keys[future], outcome).items():
                pending.add(submit(new_key, spec))
            yield keys[future], outcome


def execute_plan(plan: Plan, jobs: int = 1, client: Any = None, threads: int | None = None,
                 progress: Callable[[str, int, int, float], None] | None = None,
                 ) -> Iterator[tuple[str, RunResult | RunFailure]]:
    """Train the plan's runs (not its searches); yield ``(run_id, result or failure)`` as
    each finishes (see :class:`Executor` for ``jobs``, ``client`` and ``threads``). Runs
    whose data :func:`prepare_data` could not have come first, as failures."""
    prepare_data(plan)
    for run_id in plan.requested:
        if run_id in plan.missing_data and run_id not in plan.skipped:
            yield run_id, plan.data_failure(run_id)
    with Executor(jobs, client, threads, progress) as executor:
        yield from executor.run({run_id: plan.runs[run_id] for run_id in plan.to_execute()})
