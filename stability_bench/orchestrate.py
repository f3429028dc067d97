"""The one path from cases to checked runs: plan → execute → check (→ triage).

The CLI, the pytest plugin and the Python API (:func:`stability_bench.run_case`) all go
through here and only render what comes back.

* :func:`make_plan` lists every run once — the runs asked for and the parity partners their
  expectations compare with — with each run's dependencies, and the runs that cannot run
  here (slow cases without ``--run-slow``, CUDA without a GPU) with the reason.
* :func:`execute_plan` trains the runs: in this process, in ``jobs`` worker processes, or
  on a Dask cluster. A run that raises is a :class:`RunFailure`, not an exception: the
  other runs go on. Each run gets its torch thread count from :mod:`stability_bench.threads`,
  never from the number of workers, so CPU results do not depend on ``jobs``.
* :func:`check` turns a run and its partners' results into a :class:`RunReport`. It is
  pure: it never trains.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

if TYPE_CHECKING:
    from stability_bench.results import RunResult
    from stability_bench.runner import RunSpec
    from stability_bench.schema import Case

CUDA_MISSING = "CUDA is not available on this machine"
SLOW = "slow: run it with --run-slow"


# ----------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Every run once, by run id, in a stable order; ``requested`` are the runs whose
    expectations are checked and reported, ``needs[run_id]`` the runs its checks read."""

    runs: dict[str, "RunSpec"] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # run id → why it cannot run here

    def add(self, spec: "RunSpec", requested: bool) -> str:
        run_id = spec.run_id
        self.runs.setdefault(run_id, spec)
        if requested and run_id not in self.requested:
            self.requested.append(run_id)
        return run_id

    def to_execute(self) -> list[str]:
        """Runs to train: the requested ones that can run here, and what they need."""
        wanted: dict[str, None] = {}
        for run_id in self.requested:
            if run_id in self.skipped:
                continue
            for need in (*self.needs.get(run_id, ()), run_id):
                if need not in self.skipped:
                    wanted[need] = None
        return list(wanted)


def partner_spec(spec: "RunSpec", partner: str) -> "RunSpec":
    """The partner's run that ``spec``'s parity expectation compares with: same case, seed
    and device, the matching sweep point."""
    from stability_bench.expectations import partner_point
    from stability_bench.runner import RunSpec

    point = partner_point(spec.case, spec.params, partner)
    return RunSpec(spec.case, spec.case.optimizers[partner], point, spec.seed, spec.device, spec.perturb)


def make_plan(cases: Iterable["Case"], devices: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, optimizers: Iterable[str] | None = None,
              run_slow: bool = True, cuda_available: bool | None = None) -> Plan:
    """The plan of ``cases`` (optionally narrowed to some devices, seeds or optimizers).

    ``cuda_available`` None asks torch (importing it); pass a bool to keep planning
    torch-free."""
    from stability_bench.expectations import PARITY
    from stability_bench.runner import plan_runs

    plan = Plan()
    for case in cases:
        for spec in plan_runs(case, devices, seeds, optimizers):
            run_id = plan.add(spec, requested=True)
            partners = [e.bound["with"] for e in case.expectations
                        if e.metric == PARITY and e.optimizer == spec.optimizer.key]
            plan.needs[run_id] = tuple(plan.add(partner_spec(spec, p), requested=False) for p in partners)
    for run_id, spec in plan.runs.items():
        if spec.case.slow and not run_slow:
            plan.skipped[run_id] = SLOW
        elif spec.device.startswith("cuda"):
            if cuda_available is None:
                import torch

                cuda_available = torch.cuda.is_available()
            if not cuda_available:
                plan.skipped[run_id] = CUDA_MISSING
    return plan


# ------------------------------------------------------------------------ execution
@dataclass
class RunFailure:
    """A run that did not finish: bad set-up (``setup``), its data missing here
    (``missing_data``), an exception while training (``crash``) or past the case's
    ``timeout:`` (``timeout``)."""

    run_id: str
    kind: str                 # setup | missing_data | crash | timeout
    error: str                # "ExceptionType: message"
    step: int | None = None   # the training step that raised, when known
    traceback: str = ""

    def describe(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        what = {"crash": "crashed", "timeout": "timed out", "setup": "could not be set up",
                "missing_data": "has no data here"}[self.kind]
        return f"{self.run_id}: {what}{at}: {self.error}"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "kind": self.kind, "error": self.error, "step": self.step,
                "traceback": self.traceback}


Finished = Mapping[str, "RunResult | RunFailure"]


def _flop_per_step(spec: "RunSpec") -> float:
    """6 × parameters × examples per step: the dense-network cost of one step."""
    import torch

    from stability_bench.components import BuildContext
    from stability_bench.components.models import MODELS

    case = spec.case
    params = {k: v for k, v in case.model.items() if k != "kind"}
    ctx = BuildContext(seed=0, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    model = MODELS.get(case.model["kind"])(ctx, **params)
    count = sum(p.numel() for p in model.parameters())
    rows = case.batch["size"] or case.data.get("n") or case.data.get("subset") or 1
    return 6.0 * count * rows


def threads_for(spec: "RunSpec", threads: int | None = None) -> int:
    """The run's intra-op thread count (see :mod:`stability_bench.threads`)."""
    from stability_bench.threads import auto_threads, explicit_threads

    chosen = explicit_threads(threads)
    if chosen is not None:
        return chosen
    try:
        return auto_threads(_flop_per_step(spec))
    except Exception:  # an unusual model: the set-up itself will say what is wrong
        return 1


def run_one(spec: "RunSpec", threads: int | None = None,
            progress: Callable[[int, int, float], None] | None = None) -> "RunResult | RunFailure":
    """Train one run at its thread count; any exception becomes a :class:`RunFailure`.

    Module-level and picklable, so worker processes and Dask workers call it as it is."""
    from stability_bench.runner import MissingDataError, RunSetupError, RunTimeout, execute
    from stability_bench.threads import torch_threads

    try:
        with torch_threads(threads_for(spec, threads)):
            return execute(spec, progress)
    except RunTimeout as exc:
        return RunFailure(spec.run_id, "timeout", str(exc), getattr(exc, "step", None))
    except MissingDataError as exc:
        return RunFailure(spec.run_id, "missing_data", str(exc))
    except RunSetupError as exc:
        return RunFailure(spec.run_id, "setup", str(exc))
    except Exception as exc:  # a user's optimizer or model raised: report it, go on
        return RunFailure(spec.run_id, "crash", f"{type(exc).__name__}: {exc}",
                          getattr(exc, "step", None), traceback.format_exc())


def _worker_init(cuda_ids: Any) -> None:
    """Each worker process: no inherited thread setting, and its own GPU if given."""
    import os

    if cuda_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(cuda_ids.get())


def _pool_context():
    """``spawn``: forking a parent whose OpenMP pool is initialised can hang the child."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _cuda_ids(plan: Plan, ids: Sequence[str], jobs: int):
    """With devices ``cuda:0 … cuda:k`` in the plan, a queue giving worker i GPU i mod (k+1)."""
    indices = sorted({int(plan.runs[i].device.split(":")[1]) for i in ids
                      if plan.runs[i].device.startswith("cuda:")})
    if len(indices) < 2:
        return None
    queue = _pool_context().Manager().Queue()
    for worker in range(jobs):
        queue.put(indices[worker % len(indices)])
    return queue


def _slots(spec: "RunSpec", jobs: int, threads: int | None) -> int:
    return min(jobs, threads_for(spec, threads))


def execute_plan(plan: Plan, jobs: int = 1, client: Any = None, threads: int | None = None,
                 progress: Callable[[str, int, int, float], None] | None = None,
                 ) -> Iterator[tuple[str, "RunResult | RunFailure"]]:
    """Train the plan's runs; yield ``(run_id, result or failure)`` as each finishes.

    ``jobs`` > 1: that many spawned worker processes, never more threads in flight than
    ``jobs`` (a run of t threads takes min(t, jobs) of them). ``client``: a
    ``dask.distributed.Client`` (or its address) — runs are submitted as tasks; users'
    optimizers and components must be importable on the workers."""
    ids = plan.to_execute()
    if client is not None:
        yield from _execute_dask(plan, ids, client, threads)
    elif jobs <= 1 or len(ids) <= 1:
        for run_id in ids:
            step_progress = None if progress is None else (
                lambda done, total, loss, _id=run_id: progress(_id, done, total, loss))
            yield run_id, run_one(plan.runs[run_id], threads, step_progress)
    else:
        yield from _execute_pool(plan, ids, jobs, threads)


def _execute_pool(plan: Plan, ids: list[str], jobs: int, threads: int | None):
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cost = {run_id: _slots(plan.runs[run_id], jobs, threads) for run_id in ids}
    queue, running, free = list(ids), {}, jobs
    with ProcessPoolExecutor(jobs, mp_context=_pool_context(), initializer=_worker_init,
                             initargs=(_cuda_ids(plan, ids, jobs),)) as pool:
        try:
            while queue or running:
                while queue and (cost[queue[0]] <= free or not running):
                    run_id = queue.pop(0)
                    free -= cost[run_id]
                    running[pool.submit(run_one, plan.runs[run_id], threads)] = run_id
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    run_id = running.pop(future)
                    free += cost[run_id]
                    yield run_id, _outcome(run_id, future)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _outcome(run_id: str, future) -> "RunResult | RunFailure":
    """The worker's answer; a worker that died (killed, out of memory) is a crash too."""
    try:
        return future.result()
    except Exception as exc:
        return RunFailure(run_id, "crash", f"{type(exc).__name__}: {exc}", None,
                          "".join(traceback.format_exception(exc)))


def _execute_dask(plan: Plan, ids: list[str], client: Any, threads: int | None):
    from distributed import Client, as_completed

    if isinstance(client, str):
        client = Client(client)
    futures = {client.submit(run_one, plan.runs[run_id], threads, pure=False,
                             key=f"stability-bench-{run_id}-{time.time_ns()}"): run_id for run_id in ids}
    for future in as_completed(futures):
        yield futures[future], _outcome(futures[future], future)


# --------------------------------------------------------------------------- checks
@dataclass
class RunReport:
    """A requested run with its checked expectations (or why it has none)."""

    spec: "RunSpec"
    result: "RunResult | None" = None
    failure: RunFailure | None = None
    outcomes: list = field(default_factory=list)
    skipped: str | None = None

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def status(self) -> str:
        """passed | failed | skipped | crash | timeout | setup | missing_data."""
        if self.skipped is not None:
            return "skipped"
        if self.failure is not None:
            return self.failure.kind
        return "passed" if all(o.passed for o in self.outcomes) else "failed"

    @property
    def failed_outcomes(self) -> list:
        return [o for o in self.outcomes if not o.passed]


def check(plan: Plan, run_id: str, finished: Finished) -> RunReport:
    """Check a requested run against its expectations, reading its partners' results
    from ``finished``. Pure: never trains."""
    from stability_bench.expectations import check_run
    from stability_bench.results import RunResult

    spec = plan.runs[run_id]
    if run_id in plan.skipped:
        return RunReport(spec, skipped=plan.skipped[run_id])
    got = finished[run_id]
    if isinstance(got, RunFailure):
        return RunReport(spec, failure=got)
    partners = {need: finished.get(need) for need in plan.needs.get(run_id, ())}
    runs = {k: v for k, v in partners.items() if isinstance(v, RunResult)}
    missing = {k: (plan.skipped.get(k) or (v.describe() if isinstance(v, RunFailure) else "not run"))
               for k, v in partners.items() if not isinstance(v, RunResult)}
    return RunReport(spec, result=got, outcomes=check_run(spec.case, got, runs, missing))


def run_plan(plan: Plan, jobs: int = 1, client: Any = None, threads: int | None = None,
             progress: Callable[[str, int, int, float], None] | None = None) -> Iterator[RunReport]:
    """Execute and check: yield each requested run's report as soon as it and its
    partners have finished (skipped runs first)."""
    finished: dict[str, Any] = {}
    waiting = [r for r in plan.requested if r not in plan.skipped]
    for run_id in plan.requested:
        if run_id in plan.skipped:
            yield check(plan, run_id, finished)
    for run_id, outcome in execute_plan(plan, jobs, client, threads, progress):
        finished[run_id] = outcome
        ready = [r for r in waiting if r in finished and all(n in finished or n in plan.skipped
                                                               for n in plan.needs.get(r, ()))]
        for r in ready:
            waiting.remove(r)
            yield check(plan, r, finished)


# ------------------------------------------------------------------------------- API
class RunsFailed(RuntimeError):
    """Runs of :func:`run_case` that did not finish; ``failures`` says which and why
    (the other runs' results are in ``results``)."""

    def __init__(self, failures: list[RunFailure], results: list["RunResult"]):
        self.failures, self.results = failures, results
        super().__init__("\n".join(f.describe() for f in failures))


def run_case(case: "Case | str | Mapping", devices: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, progress: Callable[[int, int, float], None] | None = None,
             jobs: int = 1, client: Any = None, threads: int | None = None) -> list["RunResult"]:
    """Run every (optimizer, sweep point, seed, device) of ``case`` (a Case, a case file's
    path, or a dict with the case structure); results in plan order.

    ``jobs``: worker processes; ``client``: a ``dask.distributed.Client`` or its address;
    ``threads``: torch threads per run (default: the harness's choice). A run that fails to
    set up or crashes does not stop the others; :class:`RunsFailed` (or, for one bad set-up,
    the runner's own error) is raised once all have finished."""
    from stability_bench.runner import MissingDataError, RunSetupError
    from stability_bench.schema import Case, load_case

    if not isinstance(case, Case):
        case = load_case(case)
    plan = make_plan([case], devices, seeds)
    step_progress = None if progress is None else (lambda _id, done, total, loss: progress(done, total, loss))
    finished = dict(execute_plan(plan, jobs, client, threads, step_progress))
    results = [finished[r] for r in plan.requested if not isinstance(finished.get(r), (RunFailure, type(None)))]
    failures = [finished[r] for r in plan.to_execute() if isinstance(finished.get(r), RunFailure)]
    kinds = {f.kind for f in failures}
    if kinds in ({"setup"}, {"missing_data"}):  # the case itself is at fault: say so as the runner does
        raise (MissingDataError if kinds == {"missing_data"} else RunSetupError)(failures[0].error)
    if failures:
        raise RunsFailed(failures, results)
    return results
