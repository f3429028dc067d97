"""The one path from cases to checked runs: plan → execute → check (→ triage).

The CLI, the pytest plugin and the Python API (:func:`stability_bench.run_case`) all go
through here and only render what comes back.

* :func:`make_plan` lists every run once — the runs asked for and the parity partners their
  expectations compare with — with each run's dependencies, the critical-lr searches the
  cases declare, and what cannot run here (slow cases without ``--run-slow``, CUDA without
  a GPU) with the reason.
* :func:`prepare_data`, before any run trains, makes sure each data set the plan reads is
  here — fetching it once on first use — and marks the runs whose data cannot be had.
* :class:`Executor` trains runs: in this process, in ``jobs`` worker processes, or on a
  Dask cluster. A run that raises is a :class:`RunFailure`, not an exception: the other
  runs go on. Each run gets its torch thread count from :mod:`stability_bench.threads`,
  never from the number of workers, so CPU results do not depend on ``jobs``. A search's
  probes are ordinary runs, trained round by round by the same executor.
* :func:`check` and :func:`check_search` turn finished results into reports — expectation
  outcomes and, with :class:`Baselines`, baseline findings. They are pure: never train.
* :func:`run_plan` does all three and yields reports as they are ready; :func:`run_case`,
  :func:`find_critical_lr` and :func:`record_baselines` are the API's entry points.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from stability_bench.settings import OFFLINE_ENV, STRICT_ENV, env_flag  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from stability_bench.critical_lr import CriticalLr
    from stability_bench.results import RunResult
    from stability_bench.runner import RunSpec
    from stability_bench.types import Case

CUDA_MISSING = "CUDA is not available on this machine"
SLOW = "slow: run it with --run-slow"
# The most runs one invocation plans (the CLI's --max-runs, pytest's --stability-max-runs,
# make_plan's max_runs). The shipped cases plan ~300; 10,000 runs is hours of CPU even for
# toy models and a results file of gigabytes (every step of every run is kept), and planning
# them takes ~0.1 s. Counted from the sweep sizes before anything is expanded.
MAX_RUNS = 10_000
MAX_RUNS_HOW = "--max-runs N on the command line, --stability-max-runs N for pytest, max_runs= in Python"


# ----------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Every run once, by run id, in a stable order; ``requested`` are the runs whose
    expectations are checked and reported, ``needs[run_id]`` the runs its checks read."""

    runs: dict[str, "RunSpec"] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # run or search id → why it cannot run here
    searches: dict[str, "SearchSpec"] = field(default_factory=dict)  # critical-lr searches, by id
    # run or search id → why its data is not here (set by prepare_data; one exception object
    # per data section, so a message can be said once for every run that shares it)
    missing_data: dict[str, BaseException] = field(default_factory=dict)
    prepared: bool = False
    _requested: set = field(default_factory=set, init=False, repr=False, compare=False)  # ``requested``, as a set

    def __post_init__(self) -> None:
        self._requested.update(self.requested)

    def add(self, spec: "RunSpec", requested: bool) -> str:
        """Add a run once (constant time: planning is linear in the number of runs)."""
        run_id = spec.run_id
        self.runs.setdefault(run_id, spec)
        if requested and run_id not in self._requested:
            self._requested.add(run_id)
            self.requested.append(run_id)
        return run_id

    def to_execute(self) -> list[str]:
        """Runs to train: the requested ones that can run here, and what they need."""
        wanted: dict[str, None] = {}
        for run_id in self.requested:
            if run_id in self.skipped or run_id in self.missing_data:
                continue
            for need in (*self.needs.get(run_id, ()), run_id):
                if need not in self.skipped and need not in self.missing_data:
                    wanted[need] = None
        return list(wanted)

    def data_failure(self, key: str) -> "RunFailure":
        """The failure of a run or search whose data :func:`prepare_data` could not find or
        fetch, located at the case's ``data:`` key as a run's own set-up error would be."""
        item = self.runs.get(key) or self.searches[key]
        return RunFailure(key, "missing_data", f"{item.case.where(('data',))}: data: {self.missing_data[key]}")


@dataclass(frozen=True)
class SearchSpec:
    """One critical-lr search: an optimizer's ``critical_lr:`` entry at one seed and device.
    Its probes are ordinary runs (:func:`probe_spec`), planned round by round."""

    case: "Case"
    optimizer: str
    seed: int
    device: str

    @property
    def search_id(self) -> str:
        return f"{self.case.name}::{self.optimizer}-critical_lr-seed{self.seed}-{self.device}"


def probe_spec(search: SearchSpec, lr: float) -> "RunSpec":
    """The run of one probe: the searched hyperparameter set to ``lr`` (shown in the run id
    as a one-point sweep), with the entry's steps and divergence rule."""
    import dataclasses

    from stability_bench.critical_lr import specs
    from stability_bench.runner import RunSpec

    entry, optimizer = specs(search.case)[search.optimizer], search.case.optimizers[search.optimizer]
    fixed = {k: v for k, v in optimizer.fixed.items() if k != entry.param}
    probe_optimizer = dataclasses.replace(optimizer, fixed=fixed, sweeps={entry.param: [lr]})
    changes: dict[str, Any] = {}
    if entry.steps is not None:
        changes["steps"] = entry.steps
    if entry.divergence is not None:
        changes["divergence"] = {"factor": 1e10, "max_loss": None, **entry.divergence}
    case = dataclasses.replace(search.case, **changes) if changes else search.case
    return RunSpec(case, probe_optimizer, {**fixed, entry.param: lr}, search.seed, search.device)


def partner_spec(spec: "RunSpec", partner: str) -> "RunSpec":
    """The partner's run that ``spec``'s parity expectation compares with: same case, seed
    and device, the matching sweep point."""
    from stability_bench.expectations import partner_point
    from stability_bench.runner import RunSpec

    point = partner_point(spec.case, spec.params, partner)
    return RunSpec(spec.case, spec.case.optimizers[partner], point, spec.seed, spec.device, spec.perturb)


class PlanTooLarge(ValueError):
    """More runs than one invocation may plan (:data:`MAX_RUNS`); the message names the case
    file and line, and the product of the sweep sizes that makes the number."""


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _optimizer_keys(case: "Case", optimizers: list[str] | None) -> list[str]:
    """The optimizer entries of ``case`` a plan runs: those asked for (all by default) that
    the case has, and the parity partners they compare with."""
    from stability_bench.expectations import PARITY

    chosen = list(case.optimizers) if optimizers is None else [k for k in optimizers if k in case.optimizers]
    partners = [e.bound["with"] for e in case.expectations if e.metric == PARITY and e.optimizer in chosen]
    return list(dict.fromkeys([*chosen, *partners]))


def run_count(case: "Case", devices: list[str] | None = None, seeds: list[int] | None = None,
              optimizers: list[str] | None = None) -> int:
    """How many runs the plan of ``case`` lists (an upper bound where a filter leaves out a
    parity partner), computed from the sweep sizes: nothing is expanded."""
    n_seeds = len(case.seeds if seeds is None else seeds)
    n_devices = len(case.devices if devices is None else devices)
    return sum(case.optimizers[k].count() for k in _optimizer_keys(case, optimizers)) * n_seeds * n_devices


def _over_limit(case: "Case", runs: int, max_runs: int, devices, seeds, optimizers) -> str:
    """``file:line: optimizers.KEY: ...``: the case's runs as the product that makes them."""
    keys = _optimizer_keys(case, optimizers)
    key = max(keys, key=lambda k: case.optimizers[k].count())
    spec = case.optimizers[key]
    sweeps = " × ".join(f"{name} ({len(values):,})" for name, values in spec.sweeps.items())
    n_seeds = len(case.seeds if seeds is None else seeds)
    n_devices = len(case.devices if devices is None else devices)
    product = (f"sweeps {sweeps} = {_plural(spec.count(), 'point')}" if spec.sweeps else "1 point (no sweep)")
    others = runs - spec.count() * n_seeds * n_devices
    return (f"{case.where(('optimizers', key))}: optimizers.{key}: the case plans {_plural(runs, 'run')}, over "
            f"the limit of {max_runs:,} runs per invocation: {key} {product} × {_plural(n_seeds, 'seed')} × "
            f"{_plural(n_devices, 'device')}" + (f", and its other optimizers add {others:,}" if others else "")
            + f"; narrow the sweeps, or raise the limit ({MAX_RUNS_HOW})")


def check_run_limit(cases: Iterable["Case"], max_runs: int | None = MAX_RUNS, devices=None, seeds=None,
                    optimizers=None, already: int = 0) -> int:
    """The number of runs the plan of ``cases`` lists (plus ``already``, runs planned
    before in the same invocation), counted from the sweep sizes; :class:`PlanTooLarge` if
    it is over ``max_runs`` (None: no limit) — one case over it named at its largest
    optimizer with the product of its sweep sizes, else the total with each case's share."""
    devices, seeds, optimizers = (None if x is None else list(x) for x in (devices, seeds, optimizers))
    counts = [(case, run_count(case, devices, seeds, optimizers)) for case in cases]
    total = already + sum(n for _, n in counts)
    if max_runs is None or total <= max_runs:
        return total
    for case, n in counts:
        if n > max_runs:
            raise PlanTooLarge(_over_limit(case, n, max_runs, devices, seeds, optimizers))
    shares = ", ".join(f"{case.where()} {case.name}: {n:,}" for case, n in sorted(counts, key=lambda c: -c[1])[:5])
    more = f", and {len(counts) - 5} more cases" if len(counts) > 5 else ""
    before = f" (after {already:,} planned before)" if already else ""
    raise PlanTooLarge(f"{total:,} runs planned{before}, over the limit of {max_runs:,} runs per invocation "
                       f"({shares}{more}); run fewer case files at a time, or raise the limit ({MAX_RUNS_HOW})")


def make_plan(cases: Iterable["Case"], devices: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, optimizers: Iterable[str] | None = None,
              run_slow: bool = True, cuda_available: bool | None = None, searches: bool = True,
              max_runs: int | None = MAX_RUNS) -> Plan:
    """The plan of ``cases`` (optionally narrowed to some devices, seeds or optimizers; an
    optimizer a case does not have is no run of it): their runs, parity partners as
    dependencies, and (``searches``) a critical-lr search per declared ``critical_lr:``
    entry, seed and device.

    More than ``max_runs`` runs (None: no limit) is a :class:`PlanTooLarge`, found from the
    sweep sizes before anything is expanded; planning is linear in the runs.
    ``cuda_available`` None asks torch (importing it); pass a bool to keep planning
    torch-free."""
    cases = list(cases)
    devices, seeds, optimizers = (None if x is None else list(x) for x in (devices, seeds, optimizers))
    check_run_limit(cases, max_runs, devices, seeds, optimizers)
    with _no_cyclic_gc():
        plan = _expand(cases, devices, seeds, optimizers, searches)
    for key, item in [*plan.runs.items(), *plan.searches.items()]:
        entry = item.case.optimizers[item.optimizer if isinstance(item.optimizer, str) else item.optimizer.key]
        if item.case.slow and not run_slow:
            plan.skipped[key] = SLOW
        elif entry.unavailable is not None:
            plan.skipped[key] = entry.unavailable
        elif item.device.startswith("cuda"):
            if cuda_available is None:
                import torch

                cuda_available = torch.cuda.is_available()
            if not cuda_available:
                plan.skipped[key] = CUDA_MISSING
    return plan


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """The cyclic garbage collector paused: expanding a plan allocates a few objects per
    run and frees none, and no cycles, so the collector's full passes over a growing heap
    only cost time (30–40 % of planning 100,000 runs)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _expand(cases: list["Case"], devices, seeds, optimizers, searches: bool) -> Plan:
    """The runs, partners and searches of :func:`make_plan` (nothing skipped yet)."""
    from stability_bench.critical_lr import specs
    from stability_bench.expectations import PARITY
    from stability_bench.runner import plan_runs

    plan = Plan()
    for case in cases:
        chosen = None if optimizers is None else [k for k in optimizers if k in case.optimizers]
        partners: dict[str, list[str]] = {}
        for e in case.expectations:
            if e.metric == PARITY:
                partners.setdefault(e.optimizer, []).append(e.bound["with"])
        for spec in plan_runs(case, devices, seeds, chosen):
            run_id = plan.add(spec, requested=True)
            plan.needs[run_id] = tuple(plan.add(partner_spec(spec, p), requested=False)
                                       for p in partners.get(spec.optimizer.key, ()))
        if searches:
            for key in specs(case):
                if optimizers is None or key in optimizers:
                    for seed in (case.seeds if seeds is None else seeds):
                        for device in (case.devices if devices is None else devices):
                            search = SearchSpec(case, key, seed, device)
                            plan.searches[search.search_id] = search
    return plan


def strict_mode(flag: bool = False) -> bool:
    """``--strict`` / ``--stability-strict``, or ``$STABILITY_BENCH_STRICT=1``: a case that
    cannot run here (its data missing; CUDA items skipped on a machine that has a GPU) is a
    failure, not a skip. A malformed variable is a ValueError naming it — this one, or
    ``$STABILITY_BENCH_OFFLINE`` (checked here too, so that a typo is one usage error
    before anything runs rather than an error in the middle of preparing the data)."""
    env_flag(OFFLINE_ENV)
    return flag or env_flag(STRICT_ENV)


def hidden_gpu() -> str | None:
    """What shows that this machine has an NVIDIA GPU although torch sees no CUDA (a CPU
    build of torch, a missing driver library), or None. Only asked under strict mode, where
    CUDA items skipped on such a machine fail instead of passing CI unchecked. GPUs hidden
    on purpose (``CUDA_VISIBLE_DEVICES`` set to "" or -1) count as none."""
    import glob
    import os
    import shutil
    import subprocess

    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return None
    found = sorted(glob.glob("/proc/driver/nvidia/gpus/*")) or sorted(glob.glob("/dev/nvidia[0-9]*"))
    if found:
        return f"{found[0]} exists"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        gpus = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
        if out.returncode == 0 and gpus:
            return f"nvidia-smi lists {gpus[0].strip()}"
    return None


def cuda_skip_problem(reason: str | None) -> str | None:
    """Under strict mode, why a run skipped for ``reason`` must fail: CUDA was missing to
    torch, yet the machine has a GPU. None when the skip is fine."""
    if reason != CUDA_MISSING:
        return None
    evidence = hidden_gpu()
    if evidence is None:
        return None
    import torch

    return (f"{CUDA_MISSING} to torch {torch.__version__}, yet this machine has a GPU ({evidence}): "
            f"install a CUDA build of torch, or leave strict mode off ({STRICT_ENV}, --strict)")


def prepare_data(plan: Plan) -> dict[str, BaseException]:
    """Before any run trains (once per plan; again is a no-op): call each data section's
    ``prepare`` hook — for ``cifar10``, find the data or fetch it on first use — once per
    distinct section, and mark every run and search whose data cannot be had in
    ``plan.missing_data``. Returns that mapping. Runs in the hot path never fetch."""
    import json

    from stability_bench.components.data import DATA

    if plan.prepared:
        return plan.missing_data
    plan.prepared = True
    sections: dict[str, list[str]] = {}
    for key, item in [*plan.runs.items(), *plan.searches.items()]:
        if key not in plan.skipped and isinstance(item.case.data, Mapping):
            sections.setdefault(json.dumps(item.case.data, sort_keys=True, default=str), []).append(key)
    for text, keys in sections.items():
        section = json.loads(text)
        try:
            factory = DATA.get(section.get("kind"))
        except Exception:  # an import-path kind that fails: the run's set-up reports it, located
            continue
        prepare = getattr(factory, "prepare", None)
        if prepare is None:
            continue
        try:
            prepare({k: v for k, v in section.items() if k != "kind"})
        except FileNotFoundError as exc:
            for key in keys:
                plan.missing_data[key] = exc
    return plan.missing_data


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
    import json

    case = spec.case
    rows = case.batch["size"] or case.data.get("n") or case.data.get("subset") or 1
    return 6.0 * _parameter_count(json.dumps(case.model, sort_keys=True, default=str)) * rows


@functools.lru_cache(maxsize=256)
def _parameter_count(model: str) -> int:
    """Parameters of the model a case's ``model:`` section (as JSON) builds: built once per
    distinct section, since every run of a case (and every probe of a search) shares it."""
    import json

    import torch

    from stability_bench.components import BuildContext
    from stability_bench.components.models import MODELS

    section = json.loads(model)
    params = {k: v for k, v in section.items() if k != "kind"}
    ctx = BuildContext(seed=0, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    return sum(p.numel() for p in MODELS.get(section["kind"])(ctx, **params).parameters())


STEP_OVERHEAD_FLOP = 1e7  # a step's dispatch cost (~0.2 ms at 50 GFLOP/s): what a tiny model's step costs


def _step_equivalents(spec: "RunSpec") -> float:
    """A run's cost in training steps: its steps plus its probes' HVPs, as each probe declares
    them (an HVP costs about two steps). Only orders the work queue, so rough is enough."""
    from stability_bench.probes.registry import PLAN_DEFAULTS, probe_step_hvps

    case, probes = spec.case, spec.case.probes
    options = {**PLAN_DEFAULTS, **{k: v for k, v in probes.items() if k in PLAN_DEFAULTS}}
    return case.steps + case.steps / max(1, options["every"]) * probe_step_hvps(probes) * 2


def _sizing(spec: "RunSpec", threads: int | None = None) -> tuple[int, float]:
    """(intra-op threads, estimated work in flop) of a run, from one model build."""
    from stability_bench.threads import auto_threads, explicit_threads

    chosen = explicit_threads(threads)
    try:
        flop = _flop_per_step(spec)
    except Exception:  # an unusual model: the set-up itself will say what is wrong
        return chosen or 1, 0.0
    return chosen or auto_threads(flop), (flop + STEP_OVERHEAD_FLOP) * _step_equivalents(spec)


def estimated_work(plan: Plan, name: str) -> float:
    """Rough flop of what checking ``name`` trains: a run and its partners, or a critical-lr
    search (its expected number of probes). Orders work only (the pytest plugin puts the
    heaviest case files first, so a long file never starts last)."""
    from stability_bench.critical_lr import probe_count, specs

    if name in plan.searches:
        search = plan.searches[name]
        entry = specs(search.case)[search.optimizer]
        return _sizing(probe_spec(search, entry.lo))[1] * probe_count(entry.lo, entry.hi, entry.rtol)
    return sum(_sizing(plan.runs[n])[1] for n in (*plan.needs.get(name, ()), name) if n not in plan.skipped)


def threads_for(spec: "RunSpec", threads: int | None = None) -> int:
    """The run's intra-op thread count (see :mod:`stability_bench.threads`)."""
    from stability_bench.threads import explicit_threads

    chosen = explicit_threads(threads)
    return chosen if chosen is not None else _sizing(spec)[0]


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
    except RunSetupError as exc:  # the user's code raised while being built: its traceback for -v
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else None
        return RunFailure(spec.run_id, "setup", str(exc),
                          traceback="".join(traceback.format_exception(cause)) if cause is not None else "")
    except Exception as exc:  # a user's optimizer or model raised: report it, go on
        return RunFailure(spec.run_id, "crash", f"{type(exc).__name__}: {exc}",
                          getattr(exc, "step", None), traceback.format_exc())


More = Callable[[str, "RunResult | RunFailure"], Mapping[str, "RunSpec"]]


def _pool_context():
    """``spawn``: forking a parent whose OpenMP pool is initialised can hang the child."""
    import multiprocessing

    return multiprocessing.get_context("spawn")


def _gpu(spec: "RunSpec") -> str | None:
    """The GPU a run holds while it trains (``cuda`` is ``cuda:0``), None on the CPU."""
    if not spec.device.startswith("cuda"):
        return None
    return spec.device if ":" in spec.device else "cuda:0"


def _outcome(run_id: str, future) -> "RunResult | RunFailure":
    """The worker's answer; a worker that died (killed, out of memory) is a crash too."""
    try:
        return future.result()
    except Exception as exc:
        return RunFailure(run_id, "crash", f"{type(exc).__name__}: {exc}", None,
                          "".join(traceback.format_exception(exc)))


class Executor:
    """Trains runs: in this process (``jobs`` 1), in ``jobs`` spawned worker processes, or
    on a Dask cluster (``client``: a ``dask.distributed.Client`` or its address). One
    executor serves a whole plan — its runs, then each round of its critical-lr searches —
    so worker processes start once.

    Workers never run more busy threads than ``jobs``: a run the harness gives t threads
    takes min(t, jobs) of them; and never two runs on one GPU at once (runs on ``cuda:0 …
    cuda:k`` spread over the workers, each with its GPU to itself). Users' optimizers and
    components must be importable in the workers (spawned processes inherit ``sys.path``;
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

    def run(self, specs: Mapping[str, "RunSpec"], more: More | None = None,
            ) -> Iterator[tuple[str, "RunResult | RunFailure"]]:
        """Train ``specs`` (key → spec); yield ``(key, result or failure)`` as each finishes.
        ``more(key, outcome)``, called as each finishes, may return further specs to train
        (a critical-lr search's next round), so new work fills the workers at once."""
        more = more or (lambda key, outcome: {})
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
            yield from self._processes(specs, more)

    def _processes(self, specs: Mapping[str, "RunSpec"], more: More):
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=_pool_context())
        specs = dict(specs)
        threads, work, cost = {}, {}, {}
        queue, running, free, gpus = [], {}, self.jobs, set()

        def enqueue(key: str, spec: "RunSpec") -> None:
            """Queue a run, its thread count chosen once, here. Order: critical-lr probes
            first (a search's next round waits for them), then the longest runs first, so
            the last runs to finish are short ones (no core idles through a long tail)."""
            specs[key] = spec
            threads[key], work[key] = _sizing(spec, self.threads)
            cost[key] = min(self.jobs, threads[key])
            queue.append(key)
            queue.sort(key=lambda k: (not k.startswith(SearchDriver.PREFIX), -work[k]))

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

    def _dask(self, specs: Mapping[str, "RunSpec"], more: More):
        from distributed import as_completed

        def submit(key: str, spec: "RunSpec"):
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
                 ) -> Iterator[tuple[str, "RunResult | RunFailure"]]:
    """Train the plan's runs (not its searches); yield ``(run_id, result or failure)`` as
    each finishes (see :class:`Executor` for ``jobs``, ``client`` and ``threads``). Runs
    whose data :func:`prepare_data` could not have come first, as failures."""
    prepare_data(plan)
    for run_id in plan.requested:
        if run_id in plan.missing_data and run_id not in plan.skipped:
            yield run_id, plan.data_failure(run_id)
    with Executor(jobs, client, threads, progress) as executor:
        yield from executor.run({run_id: plan.runs[run_id] for run_id in plan.to_execute()})


# -------------------------------------------------------------------- baselines
class Baselines:
    """The baseline files of a plan's case files (``cases/x.yaml`` → ``cases/x.baseline.json``),
    read once each. A case file without one is an error (:class:`BaselineError`) when the
    baselines are opened, before any run trains."""

    def __init__(self, cases: Iterable["Case"]):
        from stability_bench.baseline import baseline_path, read_baseline

        files = {c.source.file for c in cases}
        if None in files:
            raise ValueError("baselines live beside case files; a case given as a dict has none")
        self.data = {file: read_baseline(baseline_path(file)) for file in sorted(files)}

    def of(self, case: "Case") -> dict:
        return self.data[case.source.file]


# ----------------------------------------------------------------------- checks
@dataclass(kw_only=True)
class Report:
    """What became of a requested run or critical-lr search: its checked expectations and
    baseline findings, or why it has none (skipped here, or a run that failed)."""

    result: "RunResult | None" = None               # a run's result (a search has none)
    failure: RunFailure | None = None
    outcomes: list = field(default_factory=list)
    findings: list = field(default_factory=list)   # baseline.Finding: outside, missing, uninformative
    skipped: str | None = None
    source: dict | None = None   # results.case_source of its case file, read when the plan started

    @property
    def status(self) -> str:
        """passed | failed | stale | skipped | crash | timeout | setup | missing_data. A stale
        baseline (the case changed since it was recorded) is its own outcome, never a
        regression; a failed expectation still fails."""
        if self.skipped is not None:
            return "skipped"
        if self.failure is not None:
            return self.failure.kind
        if self.failed_outcomes or self.failed_findings:
            return "failed"
        return "stale" if self.stale_findings else "passed"

    @property
    def stale_findings(self) -> list:
        return [f for f in self.findings if f.stale]

    @property
    def failed_outcomes(self) -> list:
        return [o for o in self.outcomes if not o.passed]

    @property
    def failed_findings(self) -> list:
        return [f for f in self.findings if f.failed]


@dataclass(kw_only=True)
class RunReport(Report):
    spec: "RunSpec"

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass(kw_only=True)
class SearchReport(Report):
    search: SearchSpec
    found: "CriticalLr | None" = None

    @property
    def run_id(self) -> str:
        return self.search.search_id


def check(plan: Plan, run_id: str, finished: Finished, baselines: Baselines | None = None) -> RunReport:
    """Check a requested run against its expectations (and its baseline), reading its
    partners' results from ``finished``. Pure: never trains."""
    from stability_bench.baseline import check_against_baseline
    from stability_bench.expectations import check_run
    from stability_bench.results import RunResult, environment

    spec = plan.runs[run_id]
    if run_id in plan.skipped:
        return RunReport(spec=spec, skipped=plan.skipped[run_id])
    if run_id in plan.missing_data:
        return RunReport(spec=spec, failure=plan.data_failure(run_id))
    got = finished[run_id]
    if isinstance(got, RunFailure):
        return RunReport(spec=spec, failure=got)
    partners = {need: finished.get(need) for need in plan.needs.get(run_id, ())}
    runs = {k: v for k, v in partners.items() if isinstance(v, RunResult)}
    missing = {k: (plan.skipped.get(k) or (v.describe() if isinstance(v, RunFailure) else "not run"))
               for k, v in partners.items() if not isinstance(v, RunResult)}
    findings = check_against_baseline(spec.case, got, baselines.of(spec.case), environment()) if baselines else []
    return RunReport(spec=spec, result=got, outcomes=check_run(spec.case, got, runs, missing), findings=findings)


def check_search(search: SearchSpec, found: "CriticalLr", baselines: Baselines | None = None) -> SearchReport:
    """A finished search against its entry's ``expect:`` (and its baseline). Pure."""
    from stability_bench.baseline import check_critical_lr_against_baseline
    from stability_bench.critical_lr import check_critical_lr
    from stability_bench.results import environment

    findings = (check_critical_lr_against_baseline(search.case, search.optimizer, search.seed, search.device,
                                                   found, baselines.of(search.case), environment())
                if baselines else [])
    return SearchReport(search=search, found=found, findings=findings,
                        outcomes=check_critical_lr(search.case, search.optimizer, found))


class SearchDriver:
    """The plan's critical-lr searches as work for an :class:`Executor`: :meth:`start` gives
    every search's first probes, :meth:`record` takes each finished probe and gives the
    next round's once a search's round is complete. A round's outcomes are reported to the
    search in the order asked, so its record is the same for any ``jobs``. Finished searches
    come out as reports (:attr:`reports`), checked as :func:`check_search` does."""

    PREFIX = "critical_lr:"   # executor keys of probes: never a run id

    def __init__(self, plan: Plan, baselines: Baselines | None = None):
        from stability_bench.critical_lr import CriticalLrSearch, specs

        self.plan, self.baselines = plan, baselines
        self.reports: list[SearchReport] = []
        self.live: dict[str, Any] = {}
        self.round: dict[str, dict[float, Any]] = {}     # search id → lr → outcome (None: running)
        for search_id, search in plan.searches.items():
            if search_id in plan.skipped:
                self.reports.append(SearchReport(search=search, skipped=plan.skipped[search_id]))
            elif search_id in plan.missing_data:
                self.reports.append(SearchReport(search=search, failure=plan.data_failure(search_id)))
            else:
                entry = specs(search.case)[search.optimizer]
                self.live[search_id] = CriticalLrSearch(entry.lo, entry.hi, entry.rtol)

    def start(self) -> dict[str, "RunSpec"]:
        return {key: spec for search_id in list(self.live) for key, spec in self._next(search_id).items()}

    def _next(self, search_id: str) -> dict[str, "RunSpec"]:
        lrs = self.live[search_id].pending()
        self.round[search_id] = dict.fromkeys(lrs)
        return {f"{self.PREFIX}{search_id}@{lr!r}": probe_spec(self.plan.searches[search_id], lr) for lr in lrs}

    def owns(self, key: str) -> bool:
        return key.startswith(self.PREFIX)

    def record(self, key: str, outcome: "RunResult | RunFailure") -> dict[str, "RunSpec"]:
        """Take a finished run (an :class:`Executor`'s ``more``): a probe of a search is
        recorded, anything else ignored; returns the probes to train next."""
        if not self.owns(key):
            return {}
        search_id, _, lr = key[len(self.PREFIX):].rpartition("@")
        if search_id not in self.live:  # an earlier probe of its round failed
            return {}
        search = self.plan.searches[search_id]
        if isinstance(outcome, RunFailure):
            del self.live[search_id]
            self.reports.append(SearchReport(search=search, failure=outcome))
            return {}
        outcomes = self.round[search_id]
        outcomes[float(lr)] = outcome
        if any(v is None for v in outcomes.values()):
            return {}
        state = self.live[search_id]
        for probe_lr, result in outcomes.items():
            state.report(probe_lr, result.diverged)
        if not state.done:
            return self._next(search_id)
        del self.live[search_id]
        self.reports.append(check_search(search, state.result, self.baselines))
        return {}


def run_searches(plan: Plan, executor: Executor, baselines: Baselines | None = None) -> Iterator[SearchReport]:
    """Drive the plan's critical-lr searches (and only them) with ``executor``."""
    driver = SearchDriver(plan, baselines)
    yield from _drain(driver.reports)
    for _ in executor.run(driver.start(), driver.record):
        yield from _drain(driver.reports)


def _drain(reports: list) -> Iterator:
    while reports:
        yield reports.pop(0)


def run_plan(plan: Plan, jobs: int = 1, client: Any = None, threads: int | None = None,
             progress: Callable[[str, int, int, float], None] | None = None,
             baselines: Baselines | None = None) -> Iterator[RunReport | SearchReport]:
    """Execute and check: yield each requested run's report as soon as it and its partners
    have finished (skipped ones first), and each critical-lr search's report when it ends.
    Runs and search probes share the executor: a search's next round is queued as soon as
    its last probe finishes, beside the runs still waiting. Data is prepared first
    (:func:`prepare_data`); runs without it are reported at once, as failures."""
    sourced = _with_sources(plan)   # the commit as the runs start, before any data is fetched
    prepare_data(plan)
    finished: dict[str, Any] = {}
    waiting = [r for r in plan.requested if r not in plan.skipped and r not in plan.missing_data]
    for run_id in plan.requested:
        if run_id in plan.skipped or run_id in plan.missing_data:
            yield sourced(check(plan, run_id, finished))
    driver = SearchDriver(plan, baselines)
    yield from map(sourced, _drain(driver.reports))
    with Executor(jobs, client, threads, progress) as executor:
        work = {**{r: plan.runs[r] for r in plan.to_execute()}, **driver.start()}
        for key, outcome in executor.run(work, driver.record):
            if not driver.owns(key):
                finished[key] = outcome
                ready = [r for r in waiting if r in finished and all(n in finished or n in plan.skipped
                                                                       for n in plan.needs.get(r, ()))]
                for r in ready:
                    waiting.remove(r)
                    yield sourced(check(plan, r, finished, baselines))
            yield from map(sourced, _drain(driver.reports))


def _with_sources(plan: Plan) -> Callable[[Report], Report]:
    """Stamps each report with its case file's git commit and dirty flag
    (:func:`~stability_bench.results.case_source`), read once per file as the plan starts:
    the commit the runs ran from, whatever the repository does while they train."""
    from stability_bench.results import case_source

    cases = [*(s.case for s in plan.runs.values()), *(s.case for s in plan.searches.values())]
    sources = {f: case_source(f) for f in dict.fromkeys(c.source.file for c in cases)}

    def stamp(report: Report) -> Report:
        case = report.spec.case if isinstance(report, RunReport) else report.search.case
        report.source = sources[case.source.file]
        return report

    return stamp


def report_entry(report: Report) -> dict:
    """A finished report as a results-file entry: a run (its result, expectations and
    baseline findings), a failure, or a critical-lr search."""
    from stability_bench.results import run_entry

    if report.failure is not None:
        return {"failure": report.failure.to_dict()}
    findings = [f.to_dict() for f in report.findings]
    if isinstance(report, SearchReport):
        s = report.search
        return {"search": {"search_id": s.search_id, "case": s.case.name, "optimizer": s.optimizer, "seed": s.seed,
                           "device": s.device, "critical_lr": report.found.to_dict(),
                           "expectations": [o.to_dict() for o in report.outcomes], "baseline": findings,
                           "source": report.source}}
    return {**run_entry(report.result, report.outcomes, report.source), "baseline": findings}


# ------------------------------------------------------------------------------- API
class RunsFailed(RuntimeError):
    """Runs of :func:`run_case` that did not finish; ``failures`` says which and why
    (the other runs' results are in ``results``)."""

    def __init__(self, failures: list[RunFailure], results: list["RunResult"]):
        self.failures, self.results = failures, results
        super().__init__("\n".join(f.describe() for f in failures))

    def __reduce__(self):  # rebuilt from its fields in another process
        return type(self), (self.failures, self.results)


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
    failures = [finished[r] for r in dict.fromkeys([*plan.requested, *plan.to_execute()])
                if isinstance(finished.get(r), RunFailure)]
    kinds = {f.kind for f in failures}
    if kinds in ({"setup"}, {"missing_data"}):  # the case itself is at fault: say so as the runner does
        raise (MissingDataError if kinds == {"missing_data"} else RunSetupError)(failures[0].error)
    if failures:
        raise RunsFailed(failures, results)
    return results


def find_critical_lr(case: "Case", optimizer: str, seed: int = 0, device: str = "cpu", jobs: int = 1,
                     client: Any = None, threads: int | None = None) -> "CriticalLr":
    """The critical learning rate of ``case``'s ``critical_lr:`` entry for ``optimizer``
    (every probe an ordinary run, trained as :class:`Executor` says); a probe that fails
    raises :class:`RunsFailed`."""
    from stability_bench.critical_lr import specs

    if optimizer not in specs(case):
        raise KeyError(f"{case.where(('critical_lr',))}: critical_lr: the case declares no critical_lr "
                       f"for optimizer {optimizer!r}")
    search = SearchSpec(case, optimizer, seed, device)
    with Executor(jobs, client, threads) as executor:
        (report,) = run_searches(Plan(searches={search.search_id: search}), executor)
    if report.failure is not None:
        raise RunsFailed([report.failure], [])
    return report.found


@dataclass
class RecordedBaseline:
    """One case file's recorded baseline: where it goes, what it holds, and the expectations
    a one-ulp nudge flips (a file with any is not written)."""

    path: Any
    data: dict
    fragile: list
    written: bool = False

    @property
    def informative(self) -> tuple[int, int]:
        from stability_bench.baseline import informative_count

        return informative_count(self.data)


def record_baselines(cases: Iterable["Case"], jobs: int = 1, client: Any = None, threads: int | None = None,
                     run_slow: bool = False, write: bool = True,
                     trajectory_steps: int | None = None) -> list[RecordedBaseline]:
    """Record the baseline of each case file among ``cases``: every run at every seed, the
    same runs with their initial parameters nudged one ulp up and one down (the rounding
    noise, also the runs every expectation is re-evaluated on), and the critical-lr
    searches. A file is written beside its case file (``write``) unless one of its
    expectations is fragile under the nudges. Runs that cannot run here (CUDA without a
    GPU; slow cases unless ``run_slow``) are left out."""
    import dataclasses

    from stability_bench.baseline import (NUDGES, TRAJECTORY_STEPS, baseline_path, fragile_expectations,
                                          merge_baselines, record_baseline, unperturbed, write_baseline)
    from stability_bench.results import environment

    cases = list(cases)
    plan = make_plan(cases, run_slow=run_slow)
    missing = prepare_data(plan)
    if missing:  # no baseline from part of a case's runs
        raise RunsFailed([plan.data_failure(next(iter(missing)))], [])
    nudged = {}
    for run_id in plan.to_execute():
        for nudge in NUDGES:
            spec = dataclasses.replace(plan.runs[run_id], perturb=nudge)
            nudged[spec.run_id] = spec
    driver = SearchDriver(plan)
    with Executor(jobs, client, threads) as executor:
        work = {**{r: plan.runs[r] for r in plan.to_execute()}, **nudged, **driver.start()}
        finished = {k: v for k, v in executor.run(work, driver.record) if not driver.owns(k)}
    critical: dict[str, dict] = {}
    for report in driver.reports:
        if report.found is not None:
            s = report.search
            critical.setdefault(s.case.name, {})[(s.optimizer, s.seed, s.device)] = report.found
        elif report.failure is not None:
            raise RunsFailed([report.failure], [])
    failures = [v for v in finished.values() if isinstance(v, RunFailure)]
    if failures:
        raise RunsFailed(failures, [])
    by_file: dict[str, list] = {}
    fragile: dict[str, list] = {}
    for case in cases:
        if case.slow and not run_slow:
            continue
        mine = [r for r in finished.values() if r.case == case.name]
        results = [r for r in mine if r.run_id == unperturbed(r.run_id)]
        perturbed = [r for r in mine if r.run_id != unperturbed(r.run_id)]
        part = record_baseline(case, results, perturbed, critical.get(case.name),
                               trajectory_steps or TRAJECTORY_STEPS, environment())
        by_file.setdefault(case.source.file, []).append(part)
        fragile.setdefault(case.source.file, []).extend(fragile_expectations(case, part))
    recorded = []
    for file, parts in by_file.items():
        entry = RecordedBaseline(baseline_path(file), merge_baselines(parts), fragile[file])
        if write and not entry.fragile:
            write_baseline(entry.path, entry.data)
            entry.written = True
        recorded.append(entry)
    return recorded
