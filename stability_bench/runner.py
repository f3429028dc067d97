"""Run a case: expand it into runs, train each one, record every step, compute metrics.

The training loop is the same one a user would write; the harness adds four fused
``torch._foreach`` calls per step (snapshot, update, norms, one row of the record) and keeps
the records on the run's device, copying them to the host in blocks — so it never
synchronises a GPU per step, and divergence is checked once per block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from stability_bench.components import BuildContext
from stability_bench.components.data import DATA, Batches
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.metrics import RunView, compute_metrics
from stability_bench.optimizers.thresholds import stability_threshold
from stability_bench.results import RunResult
from stability_bench.schema import Case, OptimizerSpec, load_case

BLOCK = 128  # steps recorded on the device between host copies / divergence checks
Progress = Callable[[int, int, float], None]  # (steps done, steps total, last loss)


@dataclass(frozen=True)
class RunSpec:
    """One run of a case: optimizer entry, sweep point, seed, device."""

    case: Case
    optimizer: OptimizerSpec
    params: dict
    seed: int
    device: str

    @property
    def run_id(self) -> str:
        label = self.optimizer.label(self.params)
        point = f"[{label}]" if label else ""
        return f"{self.case.name}::{self.optimizer.key}{point}-seed{self.seed}-{self.device}"


def plan_runs(case: Case, devices: Iterable[str] | None = None,
              seeds: Iterable[int] | None = None, optimizers: Iterable[str] | None = None) -> list[RunSpec]:
    """Every run of ``case`` (optionally narrowed to some devices, seeds or optimizers)."""
    devices = list(devices) if devices is not None else case.devices
    seeds = list(seeds) if seeds is not None else case.seeds
    chosen = list(optimizers) if optimizers is not None else list(case.optimizers)
    return [RunSpec(case, case.optimizers[key], point, seed, device)
            for key in chosen for point in case.optimizers[key].points()
            for seed in seeds for device in devices]


class RunSetupError(RuntimeError):
    """A case that validated but cannot be built (missing data, a hyperparameter the
    optimizer rejects); the message names the file, line and key."""


def _located(case: Case, path: tuple, build: Callable):
    """Call ``build``; re-raise what it rejects with the case location of ``path``."""
    try:
        return build()
    except (ValueError, TypeError, FileNotFoundError, KeyError) as exc:
        raise RunSetupError(f"{case.where(path)}: {'.'.join(map(str, path))}: {exc}") from exc


def _build(spec: RunSpec, dtype: torch.dtype):
    case = spec.case
    ctx = BuildContext(seed=spec.seed, dtype=dtype, generator=torch.Generator().manual_seed(spec.seed))

    def make(registry, key):
        section = getattr(case, key)
        params = {k: v for k, v in section.items() if k != "kind"}
        return _located(case, (key,), lambda: registry.get(section["kind"])(ctx, **params))

    data = make(DATA, "data").to(spec.device)
    torch.manual_seed(spec.seed)  # torch's default initialisers use the global generator
    model = make(MODELS, "model").to(device=spec.device, dtype=dtype)
    loss_fn = make(LOSSES, "loss")
    batches = _located(case, ("batch",), lambda: Batches(
        data, case.batch["size"], case.batch["shuffle"], case.batch["drop_last"],
        torch.Generator().manual_seed(spec.seed + 1)))
    return model, params_of(model), loss_fn, batches


def params_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _theory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches) -> dict:
    """The numbers expectations may compare with (see expectations.THEORY_REFERENCES)."""
    threshold = stability_threshold(optimizer)
    sharpness = model.known_sharpness() if hasattr(model, "known_sharpness") else None
    predicted = None if threshold is None or sharpness is None else bool(sharpness > threshold)
    return {"threshold": threshold, "sharpness": sharpness, "predicted_diverged": predicted,
            "batches_per_epoch": batches.per_epoch}


def execute(spec: RunSpec, progress: Progress | None = None) -> RunResult:
    """Train one run and return its result; divergence ends the run, it is not an error."""
    case = spec.case
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunSetupError(f"{case.where(('devices',))}: devices: {spec.run_id}: CUDA is not available on this machine")
    dtype = getattr(torch, case.dtype)
    model, params, loss_fn, batches = _build(spec, dtype)
    optimizer = _located(case, ("optimizers", spec.optimizer.key), lambda: spec.optimizer.cls(params, **spec.params))
    theory = _theory(model, optimizer, batches)

    n_params = len(params)
    width = 1 + 2 * n_params  # loss, per-parameter grad norms, per-parameter update norms
    block = torch.empty(BLOCK, width, dtype=dtype, device=spec.device)
    snapshot = [torch.empty_like(p) for p in params]
    rows: list[np.ndarray] = []
    cap = case.divergence["max_loss"]
    divergence_step = None
    batch_iter = iter(batches)
    start = time.perf_counter()

    for step in range(case.steps):
        x, y = next(batch_iter)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.no_grad():
            torch._foreach_copy_(snapshot, params)
            optimizer.step()
            torch._foreach_sub_(snapshot, params)  # now x_t − x_{t+1}: minus the update
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            norms = torch._foreach_norm(grads + snapshot)
            torch.stack([loss.detach(), *norms], out=block[step % BLOCK])
        if (step + 1) % BLOCK == 0 or step + 1 == case.steps:
            # copy=True: on a float64 CPU run .to() would otherwise return a view of `block`
            filled = block[: step % BLOCK + 1].to("cpu", torch.float64, copy=True).numpy()
            rows.append(filled)
            losses = filled[:, 0]
            if cap is None:
                cap = case.divergence["factor"] * abs(rows[0][0, 0])
            bad = np.flatnonzero(~np.isfinite(losses) | (losses > cap))
            if bad.size:
                divergence_step = step + 1 - len(filled) + int(bad[0])
                break
            if progress is not None:
                progress(step + 1, case.steps, float(losses[-1]))

    record = np.concatenate(rows) if rows else np.empty((0, width))
    if divergence_step is not None:
        record = record[: divergence_step + 1]
    history = _history(record, n_params)
    view = RunView(loss=np.asarray(history["loss"], dtype=float), steps=np.asarray(history["step"]),
                   diverged=divergence_step is not None, divergence_step=divergence_step,
                   total_steps=case.steps, extra={}, spike_config=case.spikes)
    return RunResult(
        case=case.name, run_id=spec.run_id, optimizer=spec.optimizer.key,
        optimizer_class=spec.optimizer.class_name, params=dict(spec.params), seed=spec.seed,
        device=spec.device, dtype=case.dtype, steps=case.steps,
        diverged=divergence_step is not None, divergence_step=divergence_step,
        metrics=compute_metrics(view), history=history, theory=theory,
        meta={"wall_time_s": time.perf_counter() - start, "torch": torch.__version__})


def _history(record: np.ndarray, n_params: int) -> dict[str, list]:
    """Per-step columns; total norms are the 2-norm of the per-parameter norms."""
    with np.errstate(over="ignore"):  # a diverged run's norms may overflow to inf: that is the value
        grad = np.sqrt(np.sum(record[:, 1:1 + n_params] ** 2, axis=1))
        update = np.sqrt(np.sum(record[:, 1 + n_params:] ** 2, axis=1))
    return {"step": list(range(len(record))), "loss": record[:, 0].tolist(),
            "grad_norm": grad.tolist(), "update_norm": update.tolist()}


def run_case(case: Case | str | Mapping, devices: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, progress: Progress | None = None) -> list[RunResult]:
    """Run every (optimizer, sweep point, seed, device) of ``case`` (a Case, a case file's
    path, or a dict with the case structure)."""
    if not isinstance(case, Case):
        case = load_case(case)
    return [execute(spec, progress) for spec in plan_runs(case, devices, seeds)]
