"""Run a case: expand it into runs, train each one, record every step, compute metrics.

The training loop is the one a user would write; per step the harness keeps the loss and
adds one fused copy of the gradients and parameters into device buffers, and takes the
norms, copies to the host and checks for divergence once per block of steps — so it never
synchronises a GPU per step (see :class:`StepRecorder`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from stability_bench.components import BuildContext
from stability_bench.components.data import DATA, Batches, TensorData
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.metrics import RunView, compute_metrics
from stability_bench.optimizers.thresholds import stability_threshold
from stability_bench.probes.registry import ProbePlan
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
    perturb: int = 0  # nudge every parameter by this many ulps after init (baseline noise)

    @property
    def run_id(self) -> str:
        label = self.optimizer.label(self.params)
        point = f"[{label}]" if label else ""
        nudged = f"-perturb{self.perturb}" if self.perturb else ""
        return f"{self.case.name}::{self.optimizer.key}{point}-seed{self.seed}-{self.device}{nudged}"


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


class MissingDataError(RunSetupError, FileNotFoundError):
    """A case's data set is not on this machine (the message says where it looked); test
    items skip on it, the CLI reports it as bad input."""


def _located(case: Case, path: tuple, build: Callable):
    """Call ``build``; re-raise what it rejects with the case location of ``path``."""
    try:
        return build()
    except FileNotFoundError as exc:
        raise MissingDataError(f"{case.where(path)}: {'.'.join(map(str, path))}: {exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise RunSetupError(f"{case.where(path)}: {'.'.join(map(str, path))}: {exc}") from exc


@dataclass
class Session:
    """The live objects of one run, built from its case and seed."""

    spec: RunSpec
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    loss_fn: Callable
    data: TensorData          # the whole training set, on the run's device
    batches: Batches
    optimizer: torch.optim.Optimizer

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.spec.case.dtype)


def start(spec: RunSpec) -> Session:
    """Build a run's data, model, loss, batches and optimizer; errors name the case key."""
    case = spec.case
    if spec.device.startswith("cuda") and not torch.cuda.is_available():
        raise RunSetupError(f"{case.where(('devices',))}: devices: {spec.run_id}: "
                            "CUDA is not available on this machine")
    dtype = getattr(torch, case.dtype)
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
    params = params_of(model)
    if spec.perturb:  # a rounding-level change of the same run: each parameter moved |perturb| ulps
        toward = torch.tensor(float("inf") if spec.perturb > 0 else float("-inf"), dtype=dtype)
        with torch.no_grad():
            for p in params:
                for _ in range(abs(spec.perturb)):
                    p.copy_(torch.nextafter(p, toward.to(p.device)))
    optimizer = _located(case, ("optimizers", spec.optimizer.key),
                         lambda: spec.optimizer.cls(params, **spec.params))
    return Session(spec, model, params, loss_fn, data, batches, optimizer)


def replay(spec: RunSpec, steps: int) -> Session:
    """The run's live state just before step ``steps`` (deterministic on CPU: the same
    trajectory :func:`execute` records), e.g. to save the optimizer state at a spike."""
    session = start(spec)
    batch_iter = iter(session.batches)
    model, loss_fn, optimizer = session.model, session.loss_fn, session.optimizer
    for _ in range(steps):
        x, y = next(batch_iter)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    return session


def params_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _theory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches) -> dict:
    """The numbers expectations may compare with (see expectations.THEORY_REFERENCES)."""
    threshold = stability_threshold(optimizer)
    sharpness = model.known_sharpness() if hasattr(model, "known_sharpness") else None
    predicted = None if threshold is None or sharpness is None else bool(sharpness > threshold)
    return {"threshold": threshold, "sharpness": sharpness, "predicted_diverged": predicted,
            "batches_per_epoch": batches.per_epoch}


CHUNK_BYTES = 512 * 2**10  # float64 rows the CPU norms work through at a time (stays in cache)


def _row_norms(rows: np.ndarray, chunk: np.ndarray, minus: np.ndarray | None = None) -> np.ndarray:
    """Euclidean norm of each row of ``rows`` (of ``rows - minus``), the difference and the
    squares in float64, a few rows at a time through ``chunk`` (a reused float64 buffer) so
    the work stays in cache whatever the row length. float64 keeps the squares of a late
    float32 update out of (slow, inexact) subnormals."""
    out = np.empty(len(rows))
    k = len(chunk)
    for i in range(0, len(rows), k):
        part = chunk[: min(k, len(rows) - i)]
        if minus is None:
            np.copyto(part, rows[i:i + k])
        else:
            np.subtract(rows[i:i + k], minus[i:i + k], out=part, dtype=np.float64)
        out[i:i + len(part)] = (part[:, None, :] @ part[:, :, None])[:, 0, 0]  # row dot products (BLAS)
    return np.sqrt(out)


class StepRecorder:
    """Loss, gradient norm and update norm of every step, for one fused copy per step.

    Before each optimizer step it keeps the detached loss, and a single
    ``torch._foreach_copy_`` writes the gradients and the parameters (through flat views
    made once: parameters change in place) into the next row of device buffers; the
    parameters after a block's last step are copied when it is flushed. Step k's update is
    then the difference of parameter rows k+1 and k, whatever the optimizer does to
    ``p.grad`` inside its step. The norms are taken once per block, and so are the host
    copy and the divergence check: a GPU is never synchronised per step. Differences and
    squares are taken in float64 (see :func:`_row_norms`). A block holds at most
    ``MAX_BLOCK`` steps and ``budget_bytes`` of rows, so a large model flushes more often
    instead of using memory.
    """

    MAX_BLOCK = BLOCK

    def __init__(self, params: list[torch.Tensor], dtype: torch.dtype, device: str,
                 budget_bytes: int = 64 * 2**20):
        numel = sum(p.numel() for p in params)
        row_bytes = 2 * numel * torch.empty((), dtype=dtype).element_size()
        self.size = int(max(1, min(self.MAX_BLOCK, budget_bytes // row_bytes - 1)))
        self.snapshots = torch.empty(self.size + 1, numel, dtype=dtype, device=device)
        self.grads = torch.empty(self.size, numel, dtype=dtype, device=device)
        self.params = params
        self.flat_params = [p.detach().view(-1) for p in params]  # parameters are updated in place
        sizes = [p.numel() for p in params]
        # row k: views of grads[k] shaped like the parameters, then flat views of snapshots[k]
        self._rows = [[v.view_as(p) for v, p in zip(torch.split(g, sizes), params)]
                      + list(torch.split(q, sizes)) for g, q in zip(self.grads, self.snapshots)]
        chunk_rows = max(1, min(self.size, CHUNK_BYTES // (8 * numel)))
        self._chunk = np.empty((chunk_rows, numel)) if device == "cpu" else None
        self.losses: list[torch.Tensor] = []
        self.blocks: list[np.ndarray] = []

    def before_step(self, loss: torch.Tensor) -> None:
        """Record this step's loss, gradients and parameters, before the optimizer changes them."""
        row = self._rows[len(self.losses)]
        self.losses.append(loss.detach())
        try:
            torch._foreach_copy_(row, [*[p.grad for p in self.params], *self.flat_params])
        except TypeError:  # a parameter without a gradient this step (p.grad is None)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            torch._foreach_copy_(row, grads + self.flat_params)

    @property
    def full(self) -> bool:
        return len(self.losses) == self.size

    def flush(self) -> np.ndarray:
        """After the block's last step: move the block to the host as rows (loss, grad norm,
        update norm); returns them."""
        n = len(self.losses)
        torch.cat(self.flat_params, out=self.snapshots[n])  # the parameters after the last step
        losses = torch.stack(self.losses)
        if self.snapshots.is_cuda:  # reduce on the device, copy three numbers per step
            rows = self.snapshots[: n + 1].double()
            block = torch.stack([losses.double(),
                                 torch.linalg.vector_norm(self.grads[:n].double(), dim=1),
                                 torch.linalg.vector_norm(rows[1:] - rows[:-1], dim=1)], dim=1).cpu().numpy()
        else:  # numpy: a torch reduction here would wake idle OpenMP workers, costing more than the math
            snaps = self.snapshots[: n + 1].numpy()
            with np.errstate(over="ignore", invalid="ignore"):  # a diverged block may hold inf/nan
                block = np.stack([losses.numpy().astype(np.float64),
                                  _row_norms(self.grads[:n].numpy(), self._chunk),
                                  _row_norms(snaps[1:], self._chunk, minus=snaps[:-1])], axis=1)
        self.blocks.append(block)
        self.losses.clear()
        return block

    @property
    def record(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.empty((0, 3))


def execute(spec: RunSpec, progress: Progress | None = None) -> RunResult:
    """Train one run and return its result; divergence ends the run, it is not an error."""
    case = spec.case
    session = start(spec)
    model, params, loss_fn, optimizer = session.model, session.params, session.loss_fn, session.optimizer
    theory = _theory(model, optimizer, session.batches)

    recorder = StepRecorder(params, session.dtype, spec.device)
    probes = ProbePlan.from_case(case)
    cap = case.divergence["max_loss"]
    divergence_step = None
    batch_iter = iter(session.batches)
    last = case.steps - 1
    started = time.perf_counter()

    for step in range(case.steps):
        x, y = next(batch_iter)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if probes is not None:
            probes.run(session, step)
        recorder.before_step(loss)
        optimizer.step()
        if recorder.full or step == last:
            losses = recorder.flush()[:, 0]
            if cap is None:
                cap = case.divergence["factor"] * abs(recorder.record[0, 0])
            bad = np.flatnonzero(~np.isfinite(losses) | (losses > cap))
            if bad.size:
                divergence_step = step + 1 - len(losses) + int(bad[0])
                break
            if progress is not None:
                progress(step + 1, case.steps, float(losses[-1]))

    record = recorder.record
    if divergence_step is not None:
        record = record[: divergence_step + 1]
    history = {"step": list(range(len(record))), "loss": record[:, 0].tolist(),
               "grad_norm": record[:, 1].tolist(), "update_norm": record[:, 2].tolist()}
    probe_columns = _truncate(probes.columns, divergence_step) if probes is not None else {}
    extra = {"grad_norm": record[:, 1], "update_norm": record[:, 2],
             "probes": {k: np.asarray(v, dtype=float) for k, v in probe_columns.items()
                        if not k.endswith("_top")},
             "probe_options": probes.options if probes is not None else {}}
    view = RunView(loss=np.asarray(history["loss"], dtype=float), steps=np.asarray(history["step"]),
                   diverged=divergence_step is not None, divergence_step=divergence_step,
                   total_steps=case.steps, extra=extra, spike_config=case.spikes)
    return RunResult(
        case=case.name, run_id=spec.run_id, optimizer=spec.optimizer.key,
        optimizer_class=spec.optimizer.class_name, params=dict(spec.params), seed=spec.seed,
        device=spec.device, dtype=case.dtype, steps=case.steps,
        diverged=divergence_step is not None, divergence_step=divergence_step,
        metrics=compute_metrics(view), history=history, probes=probe_columns, theory=theory,
        meta={"wall_time_s": time.perf_counter() - started, "torch": torch.__version__,
              "spikes": dataclasses.asdict(case.spikes)})


def _truncate(columns: dict[str, list], divergence_step: int | None) -> dict[str, list]:
    """Probe rows up to the divergence step (the training that was recorded)."""
    if divergence_step is None:
        return columns
    keep = sum(1 for step in columns["step"] if step <= divergence_step)
    return {name: values[:keep] for name, values in columns.items()}


def run_case(case: Case | str | Mapping, devices: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, progress: Progress | None = None) -> list[RunResult]:
    """Run every (optimizer, sweep point, seed, device) of ``case`` (a Case, a case file's
    path, or a dict with the case structure)."""
    if not isinstance(case, Case):
        case = load_case(case)
    return [execute(spec, progress) for spec in plan_runs(case, devices, seeds)]
