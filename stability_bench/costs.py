"""What a run costs: its intra-op thread count and its work in flop, from one model build
per distinct ``model:`` section. The work only orders the queue, so rough is enough; the
thread count is chosen from the run alone, never from the number of workers, so a run's
CPU trajectory does not depend on ``jobs`` (see :mod:`stability_bench.threads`).
"""
from __future__ import annotations

import functools
import json

from stability_bench.critical_lr import probe_count, specs
from stability_bench.plan import Plan, RunSpec, probe_spec
from stability_bench.probes.registry import probe_hvps_per_step
from stability_bench.threads import auto_threads, explicit_threads

__all__ = ["sizing", "estimated_work", "threads_for", "STEP_OVERHEAD_FLOP"]


def _flop_per_step(spec: RunSpec) -> float:
    """6 × parameters × examples per step: the dense-network cost of one step."""
    case = spec.case
    rows = case.batch["size"] or case.data.get("n") or case.data.get("subset") \
        or _examples(json.dumps(case.data, sort_keys=True, default=str))
    return 6.0 * _parameter_count(json.dumps(case.model, sort_keys=True, default=str)) * rows


@functools.lru_cache(maxsize=256)
def _examples(data: str) -> int:
    """What one full-batch step feeds the network, for a ``data:`` section (as JSON) that
    states no count (``n:``, ``subset:``): its examples, times the tokens of each where the
    inputs are token ids (every token passes through the dense layers). The data is built
    once per distinct section (here, in the planning process): a full-batch Transformer
    case counted as one example was queued behind runs a tenth of its length, last."""
    from stability_bench.components.data import DATA

    x = _build(DATA, data).x
    tokens = x[0].numel() if not x.is_floating_point() and x.dim() > 1 else 1
    return max(1, len(x) * tokens)


@functools.lru_cache(maxsize=256)
def _parameter_count(model: str) -> int:
    """Parameters of the model a case's ``model:`` section (as JSON) builds: built once per
    distinct section, since every run of a case (and every probe of a search) shares it."""
    from stability_bench.components.models import MODELS

    return sum(p.numel() for p in _build(MODELS, model).parameters())


def _build(registry, section: str):
    """The component a case section (as JSON) names, built as the runner builds it (seed 0,
    float32): what sizing measures."""
    import torch   # here: only a run's sizing builds components

    from stability_bench.components import BuildContext
    from stability_bench.components.building import build_component

    ctx = BuildContext(seed=0, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    return build_component(registry, json.loads(section), ctx)


STEP_OVERHEAD_FLOP = 1e7  # a step's dispatch cost (~0.2 ms at 50 GFLOP/s): what a tiny model's step costs


def _step_equivalents(spec: RunSpec) -> float:
    """A run's cost in training steps: its steps plus the HVPs of the probes it takes, as each
    probe declares them, at each probe's own ``every`` (an HVP costs about two steps). Only
    orders the work queue, so rough is enough."""
    case = spec.case
    return case.steps + case.steps * probe_hvps_per_step(case.probes, spec.optimizer.key) * 2


def sizing(spec: RunSpec, threads: int | None = None) -> tuple[int, float]:
    """(intra-op threads, estimated work in flop) of a run, from one model build."""
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
    if name in plan.searches:
        search = plan.searches[name]
        entry = specs(search.case)[search.optimizer]
        return sizing(probe_spec(search, entry.lo))[1] * probe_count(entry.lo, entry.hi, entry.rtol)
    return sum(sizing(plan.runs[n])[1] for n in (*plan.needs.get(name, ()), name) if n not in plan.skipped)


def threads_for(spec: RunSpec, threads: int | None = None) -> int:
    """The run's intra-op thread count (see :mod:`stability_bench.threads`)."""
    chosen = explicit_threads(threads)
    return chosen if chosen is not None else sizing(spec)[0]
