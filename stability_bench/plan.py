"""What runs: every run of some cases once, with the parity partners its checks read, the
critical-lr searches they declare, and what cannot run here (and why).

* :func:`make_plan` lists the runs (:class:`RunSpec`) — counted from the sweep sizes and
  refused past :data:`MAX_RUNS` before anything is expanded — and marks what is skipped
  here: slow cases without ``--run-slow``, CUDA without a GPU, optimizers this torch lacks.
* :func:`prepare_data`, before any run trains, makes sure each data set the plan reads is
  here — fetching it once on first use — and marks the runs whose data cannot be had.
* A critical-lr search's probes are ordinary runs (:func:`probe_spec`), planned round by
  round as the search narrows.

Planning trains nothing; it asks torch about CUDA only when not told (``cuda_available``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from stability_bench.components.data import DATA
from stability_bench.critical_lr import specs
from stability_bench.expectations import PARITY, partner_point
from stability_bench.results import RunFailure, format_run_id
from stability_bench.settings import STRICT_ENV
from stability_bench.types import Case, OptimizerSpec

__all__ = ["RunSpec", "Plan", "SearchSpec", "PlanTooLarge", "MAX_RUNS", "CUDA_MISSING", "SLOW", "plan_runs",
           "make_plan", "run_count", "check_run_limit", "probe_spec", "partner_spec", "prepare_data",
           "hidden_gpu", "cuda_skip_problem"]

CUDA_MISSING = "CUDA is not available on this machine"
SLOW = "slow: run it with --run-slow"
# The most runs one invocation plans (the CLI's --max-runs, pytest's --stability-max-runs,
# make_plan's max_runs). The shipped cases plan ~300; 10,000 runs is hours of CPU even for
# toy models and a results file of gigabytes (every step of every run is kept), and planning
# them takes ~0.1 s. Counted from the sweep sizes before anything is expanded.
MAX_RUNS = 10_000
MAX_RUNS_HOW = "--max-runs N on the command line, --stability-max-runs N for pytest, max_runs= in Python"


@dataclass(frozen=True)
class RunSpec:
    """One run of a case: optimizer entry, sweep point, seed, device."""

    case: Case
    optimizer: OptimizerSpec
    params: dict
    seed: int
    device: str
    perturb: int = 0  # nudge every parameter by this many ulps after init (baseline noise)

    @property
    def run_id(self) -> str:
        return format_run_id(self.case.name, self.optimizer.key, self.optimizer.label(self.params),
                             self.seed, self.device, self.perturb)


def plan_runs(case: Case, devices: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, optimizers: Iterable[str] | None = None) -> list[RunSpec]:
    """Every run of ``case`` (optionally narrowed to some devices, seeds or optimizers)."""
    devices = list(devices) if devices is not None else case.devices
    seeds = list(seeds) if seeds is not None else case.seeds
    chosen = list(optimizers) if optimizers is not None else list(case.optimizers)
    return [RunSpec(case, case.optimizers[key], point, seed, device)
            for key in chosen for point in case.optimizers[key].points()
            for seed in seeds for device in devices]


@dataclass
class Plan:
    """Every run once, by run id, in a stable order; ``requested`` are the runs whose
    expectations are checked and reported, ``needs[run_id]`` the runs its checks read."""

    runs: dict[str, RunSpec] = field(default_factory=dict)
    requested: list[str] = field(default_factory=list)
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)   # run or search id → why it cannot run here
    searches: dict[str, SearchSpec] = field(default_factory=dict)  # critical-lr searches, by id
    # run or search id → why its data is not here (set by prepare_data; one exception object
    # per data section, so a message can be said once for every run that shares it)
    missing_data: dict[str, BaseException] = field(default_factory=dict)
    prepared: bool = False
    _requested: set = field(default_factory=set, init=False, repr=False, compare=False)  # ``requested``, as a set

    def __post_init__(self) -> None:
        self._requested.update(self.requested)

    def add(self, spec: RunSpec, requested: bool) -> str:
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

    case: Case
    optimizer: str
    seed: int
    device: str

    @property
    def search_id(self) -> str:
        return f"{self.case.name}::{self.optimizer}-critical_lr-seed{self.seed}-{self.device}"


def probe_spec(search: SearchSpec, lr: float) -> RunSpec:
    """The run of one probe: the searched hyperparameter set to ``lr`` (shown in the run id
    as a one-point sweep), with the entry's steps and divergence rule. It takes none of the
    case's curvature probes: the search reads only whether the run diverged, and probes
    never change training (so the answer is the same, without their HVPs)."""
    entry, optimizer = specs(search.case)[search.optimizer], search.case.optimizers[search.optimizer]
    fixed = {k: v for k, v in optimizer.fixed.items() if k != entry.param}
    probe_optimizer = dataclasses.replace(optimizer, fixed=fixed, sweeps={entry.param: [lr]})
    changes: dict[str, Any] = {"probes": {}} if search.case.probes else {}
    if entry.steps is not None:
        changes["steps"] = entry.steps
    if entry.divergence is not None:
        changes["divergence"] = {"factor": 1e10, "max_loss": None, **entry.divergence}
    case = dataclasses.replace(search.case, **changes) if changes else search.case
    return RunSpec(case, probe_optimizer, {**fixed, entry.param: lr}, search.seed, search.device)


def partner_spec(spec: RunSpec, partner: str) -> RunSpec:
    """The partner's run that ``spec``'s parity expectation compares with: same case, seed
    and device, the matching sweep point."""
    point = partner_point(spec.case, spec.params, partner)
    return RunSpec(spec.case, spec.case.optimizers[partner], point, spec.seed, spec.device, spec.perturb)


class PlanTooLarge(ValueError):
    """More runs than one invocation may plan (:data:`MAX_RUNS`); the message names the case
    file and line, and the product of the sweep sizes that makes the number."""


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _optimizer_keys(case: Case, optimizers: list[str] | None) -> list[str]:
    """The optimizer entries of ``case`` a plan runs: those asked for (all by default) that
    the case has, and the parity partners they compare with."""
    chosen = list(case.optimizers) if optimizers is None else [k for k in optimizers if k in case.optimizers]
    partners = [e.bound["with"] for e in case.expectations if e.metric == PARITY and e.optimizer in chosen]
    return list(dict.fromkeys([*chosen, *partners]))


def run_count(case: Case, devices: list[str] | None = None, seeds: list[int] | None = None,
              optimizers: list[str] | None = None) -> int:
    """How many runs the plan of ``case`` lists (an upper bound where a filter leaves out a
    parity partner), computed from the sweep sizes: nothing is expanded."""
    n_seeds = len(case.seeds if seeds is None else seeds)
    n_devices = len(case.devices if devices is None else devices)
    return sum(case.optimizers[k].count() for k in _optimizer_keys(case, optimizers)) * n_seeds * n_devices


def _over_limit(case: Case, runs: int, max_runs: int, devices, seeds, optimizers) -> str:
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


def check_run_limit(cases: Iterable[Case], max_runs: int | None = MAX_RUNS, devices=None, seeds=None,
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


def make_plan(cases: Iterable[Case], devices: Iterable[str] | None = None,
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


def _expand(cases: list[Case], devices, seeds, optimizers, searches: bool) -> Plan:
    """The runs, partners and searches of :func:`make_plan` (nothing skipped yet)."""
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


def hidden_gpu() -> str | None:
    """What shows that this machine has an NVIDIA GPU although torch sees no CUDA (a CPU
    build of torch, a missing driver library), or None. Only asked under strict mode, where
    CUDA items skipped on such a machine fail instead of passing CI unchecked. GPUs hidden
    on purpose (``CUDA_VISIBLE_DEVICES`` set to "" or -1) count as none."""
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
