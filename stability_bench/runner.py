"""Run a case: expand it into runs, train each one, record every step, compute metrics.

The training loop is the one a user would write; per step the harness keeps the loss and
adds one fused copy of the gradients and parameters into device buffers, and takes the
norms, copies to the host and checks for divergence once per block of steps — so it never
synchronises a GPU per step (see :class:`StepRecorder`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from stability_bench.components import BuildContext
from stability_bench.components.building import build_component
from stability_bench.components.data import DATA, Batches, TensorData
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.contracts import step_contract
from stability_bench.metrics import RunView, compute_metrics
from stability_bench.optimizers.thresholds import threshold_and_reason
from stability_bench.probes.registry import ProbePlan
from stability_bench.registry import describe_exception
from stability_bench.plan import RunSpec
from stability_bench.results import RunResult
from stability_bench.schedules import build_schedule
from stability_bench.types import Case

BLOCK = 128  # steps recorded on the device between host copies / divergence checks
Progress = Callable[[int, int, float], None]  # (steps done, steps total, last loss)


class RunSetupError(RuntimeError):
    """A case that validated but cannot be built (missing data, a hyperparameter the
    optimizer rejects); the message names the file, line and key."""


class RunTimeout(RuntimeError):
    """A run that went past its case's ``timeout:`` (seconds); the message says where."""


class MissingDataError(RunSetupError, FileNotFoundError):
    """A case's data set is not on this machine (the message says where it looked); test
    items skip on it, the CLI reports it as bad input."""


def _located(case: Case, path: tuple, build: Callable):
    """Call ``build`` (a component's or the optimizer's construction); whatever it raises,
    of any type, is a :class:`RunSetupError` at the case location of ``path`` naming the
    exception (a missing file: :class:`MissingDataError`). One rule for user code: failing
    to build is "could not be set up" (exit 2), failing while training is a crash (exit 3)."""
    try:
        return build()
    except RunSetupError:
        raise
    except FileNotFoundError as exc:
        raise MissingDataError(f"{case.where(path)}: {'.'.join(map(str, path))}: {exc}") from exc
    except Exception as exc:
        raise RunSetupError(f"{case.where(path)}: {'.'.join(map(str, path))}: raised while being built: "
                            f"{describe_exception(exc)}") from exc


@dataclass
class Session:
    """The live objects of one run, built from its case and seed."""

    spec: RunSpec
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    loss_fn: Callable
    data: TensorData          # the training set (without a held-out split), on the run's device
    batches: Batches
    optimizer: torch.optim.Optimizer
    scheduler: Any = None     # the case's ``schedule:``, stepped after every optimizer step
    contract: frozenset = frozenset()   # the optimizer's step contract (stability_bench.contracts)
    heldout: TensorData | None = None   # ``eval: {split: heldout}``: the examples training never sees
    negate: bool = False                # ``loss: {negate: true}``: the optimizer is handed −loss
    data_digest: str = ""               # :meth:`TensorData.digest` of all the examples (baselines compare it)

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
        return _located(case, (key,), lambda: build_component(registry, getattr(case, key), ctx))

    torch.manual_seed(spec.seed)  # a user's data factory without ``ctx`` draws from the global RNG
    data = make(DATA, "data")
    data_digest = data.digest()   # on the CPU copy: the same examples hash alike on any device
    data = data.to(spec.device)
    data, heldout = _split(case, data)
    torch.manual_seed(spec.seed)  # torch's default initialisers use the global generator
    model = make(MODELS, "model").to(device=spec.device, dtype=dtype)
    loss_fn = make(LOSSES, "loss")
    batches = _located(case, ("batch",), lambda: Batches(
        data, case.batch["size"], case.batch["shuffle"], case.batch["drop_last"],
        torch.Generator().manual_seed(spec.seed + 1)))
    check_one_batch(case, model, loss_fn, data)
    params = params_of(model)
    if spec.perturb:  # a rounding-level change of the same run: each parameter moved |perturb| ulps
        toward = torch.tensor(float("inf") if spec.perturb > 0 else float("-inf"), dtype=dtype)
        with torch.no_grad():
            for p in params:
                for _ in range(abs(spec.perturb)):
                    p.copy_(torch.nextafter(p, toward.to(p.device)))
    optimizer = _located(case, ("optimizers", spec.optimizer.key),
                         lambda: spec.optimizer.cls(params, **spec.params))
    contract = step_contract(spec.optimizer.cls)
    if "train_eval" in contract:
        optimizer.train()
    scheduler = None if case.schedule is None else _located(
        case, ("schedule",), lambda: build_schedule(case.schedule, optimizer, case.steps))
    return Session(spec, model, params, loss_fn, data, batches, optimizer, scheduler, contract, heldout,
                   negate=bool(case.loss.get("negate", False)), data_digest=data_digest)


def _split(case: Case, data: TensorData) -> tuple[TensorData, TensorData | None]:
    """``eval: {split: heldout}``: the last round(fraction·n) examples are held out."""
    if case.eval is None or case.eval["split"] != "heldout":
        return data, None
    n = len(data)
    k = int(round(case.eval["heldout_fraction"] * n))
    if not 1 <= k < n:
        raise RunSetupError(f"{case.where(('eval', 'heldout_fraction'))}: eval.heldout_fraction: "
                            f"{case.eval['heldout_fraction']} of {n} examples leaves {k} held out and "
                            f"{n - k} to train on; both need at least one")
    return TensorData(data.x[:n - k], data.y[:n - k]), TensorData(data.x[n - k:], data.y[n - k:])


def train_step(session: Session, x: torch.Tensor, y: torch.Tensor,
               observe: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
    """One optimizer step as the case defines it: forward, backward (``create_graph`` if
    the optimizer's contract asks), ``observe(loss)`` (probes, recorder: this step's raw
    gradient at x_t), clipping, the optimizer step (``step(closure)`` for closure
    optimizers: the closure repeats the above and only its first evaluation is observed),
    then the schedule's step. Returns the Euclidean norm of the clipped gradient of the
    (first) evaluation, or None without clipping.

    With ``loss: {negate: true}`` the optimizer is handed −loss: backward runs on it (the
    gradient is exactly −∇loss) and a closure returns it, while ``observe`` — the history,
    metrics, probes — still gets the loss itself. An optimizer run with ``maximize=True``
    ascends what it is handed, so it then descends the loss."""
    model, loss_fn, optimizer = session.model, session.loss_fn, session.optimizer
    create_graph = "create_graph" in session.contract
    clip = session.spec.case.clip
    negate = session.negate
    if "closure" not in session.contract:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        _backward(-loss if negate else loss, create_graph)
        if observe is not None:
            observe(loss)
        clipped = _clip(session.params, clip) if clip is not None else None
        optimizer.step()
    else:
        first: list = []

        def closure():
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            objective = -loss if negate else loss
            _backward(objective, create_graph)
            if not first and observe is not None:
                observe(loss)
            norm = _clip(session.params, clip) if clip is not None else None
            if not first:
                first.append(norm)
            return objective

        optimizer.step(closure)
        clipped = first[0] if first else None
    if session.scheduler is not None:
        session.scheduler.step()
    return clipped


def _backward(loss: torch.Tensor, create_graph: bool) -> None:
    """``loss.backward``; with ``create_graph`` without torch's warning about the
    parameter ↔ gradient reference cycle, which zero_grad (set_to_none) breaks every step."""
    if not create_graph:
        loss.backward()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        loss.backward(create_graph=True)


def _clip(params: list[torch.Tensor], clip: dict) -> torch.Tensor:
    """Clip the gradients in place (torch.nn.utils); their Euclidean norm after clipping,
    in the parameters' dtype, left on the device (no synchronisation)."""
    arguments = {k: v for k, v in clip.items() if k != "kind"}
    if clip["kind"] == "norm":
        torch.nn.utils.clip_grad_norm_(params, **arguments)
    else:
        torch.nn.utils.clip_grad_value_(params, **arguments)
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@contextmanager
def evaluation_mode(session: Session):
    """Inside: the parameters at which the optimizer evaluates (schedule-free methods:
    ``optimizer.eval()``'s x, not the training point y); on exit ``optimizer.train()`` and
    the training parameters restored bit for bit (a train()/eval() round trip in floating
    point need not be exact). Nothing to do for other optimizers."""
    if "train_eval" not in session.contract:
        yield
        return
    saved = [p.detach().clone() for p in session.params]
    session.optimizer.eval()
    try:
        yield
    finally:
        session.optimizer.train()
        with torch.no_grad():
            torch._foreach_copy_([p.detach() for p in session.params], saved)


def eval_loss(session: Session) -> torch.Tensor:
    """The case's loss on the whole training set, or on the held-out split, at the
    current (evaluation-mode) parameters, with the model in eval mode; training untouched."""
    from stability_bench.probes.hvp import untouched

    data = session.heldout if session.heldout is not None else session.data
    with evaluation_mode(session), untouched(session.model, session.optimizer, session.params), torch.no_grad():
        session.model.eval()
        return session.loss_fn(session.model(data.x), data.y).detach()


def check_one_batch(case: Case, model: torch.nn.Module, loss_fn: Callable, data: TensorData) -> None:
    """The loss of the first two examples, untracked, so a model that does not fit its
    data (or a loss that does not fit its targets) is a setup error naming model, data and
    shapes, not a RuntimeError from inside the first training step."""
    x, y, out = data.x[:2], data.y[:2], None
    try:
        with torch.no_grad():
            out = model(x)
            loss = loss_fn(out, y)
        if loss.numel() != 1:
            raise ValueError(f"the loss has shape {tuple(loss.shape)}, not a single number")
    except Exception as exc:
        if not isinstance(exc, (RuntimeError, ValueError, TypeError, IndexError)):  # the model's own failure
            raise RunSetupError(f"{case.where(('model',))}: model: model {case.model['kind']!r} raised on its "
                                f"first two examples: {describe_exception(exc)}") from exc
        shapes = (f"inputs {tuple(x.shape[1:])} and targets {tuple(y.shape[1:])} ({y.dtype}) per example"
                  + (f", model output {tuple(out.shape[1:])}" if isinstance(out, torch.Tensor) else ""))
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunSetupError(f"{case.where(('model',))}: model: model {case.model['kind']!r} does not fit "
                            f"data {case.data['kind']!r} with loss {case.loss['kind']!r}: {shapes}: "
                            f"{reason}") from exc


def replay(spec: RunSpec, steps: int) -> Session:
    """The run's live state just before step ``steps`` (deterministic on CPU: the same
    trajectory :func:`execute` records), e.g. to save the optimizer state at a spike."""
    session = start(spec)
    batch_iter = iter(session.batches)
    for _ in range(steps):
        train_step(session, *next(batch_iter))
    return session


def params_of(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _theory(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches) -> dict:
    """The numbers expectations may compare with (see expectations.THEORY_REFERENCES)."""
    threshold, unknown = threshold_and_reason(optimizer)
    sharpness = model.known_sharpness() if hasattr(model, "known_sharpness") else None
    predicted = None if threshold is None or sharpness is None else bool(sharpness > threshold)
    return {"threshold": threshold, "sharpness": sharpness, "predicted_diverged": predicted,
            "batches_per_epoch": batches.per_epoch, "threshold_unknown_reason": unknown}


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
                 budget_bytes: int = 64 * 2**20, extra: tuple[str, ...] = ()):
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
        # optional per-step scalars (e.g. the clipped gradient norm), kept on the device like the loss
        self.extra: dict[str, list[torch.Tensor]] = {name: [] for name in extra}

    def note(self, name: str, value: torch.Tensor) -> None:
        """Record this step's value of the extra column ``name`` (a scalar tensor)."""
        self.extra[name].append(value.detach())

    def before_step(self, loss: torch.Tensor) -> None:
        """Record this step's loss, gradients and parameters, before the optimizer changes them."""
        row = self._rows[len(self.losses)]
        self.losses.append(loss.detach())
        try:
            torch._foreach_copy_(row, [*[p.grad for p in self.params], *self.flat_params])
        except (TypeError, RuntimeError):
            # a parameter without a gradient this step (p.grad is None: TypeError), or a sparse
            # gradient (nn.Embedding(sparse=True), for SparseAdam: no dense copy_, RuntimeError)
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.to_dense() if p.grad.is_sparse
                     else p.grad for p in self.params]
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
        if self.extra:  # one more column per extra, in the order given
            columns = [torch.stack(values).double().cpu().numpy() for values in self.extra.values()]
            block = np.column_stack([block, *columns])
            for values in self.extra.values():
                values.clear()
        self.blocks.append(block)
        self.losses.clear()
        return block

    @property
    def record(self) -> np.ndarray:
        """Rows of (loss, grad norm, update norm, *extra columns), one per recorded step."""
        return np.concatenate(self.blocks) if self.blocks else np.empty((0, 3 + len(self.extra)))


def execute(spec: RunSpec, progress: Progress | None = None) -> RunResult:
    """Train one run and return its result; divergence ends the run, it is not an error."""
    case = spec.case
    try:  # set-up: anything raised before the first step is "could not be set up", whatever its type
        session = start(spec)
        theory = _theory(session.model, session.optimizer, session.batches)  # at step 0's lr
    except RunSetupError:
        raise
    except Exception as exc:
        raise RunSetupError(f"{case.where(('optimizers', spec.optimizer.key))}: optimizers.{spec.optimizer.key}: "
                            f"set-up failed before the first step: {describe_exception(exc)}") from exc
    model, params, optimizer = session.model, session.params, session.optimizer

    clipping = case.clip is not None
    recorder = StepRecorder(params, session.dtype, spec.device,
                            extra=("clipped_grad_norm",) if clipping else ())
    probes = ProbePlan.from_case(case, spec.optimizer.key)
    group = optimizer.param_groups[0]
    lrs: list[float] = []
    evals: dict[str, list] | None = {"step": [], "eval_loss": []} if case.eval is not None else None
    eval_every = case.eval["every"] if case.eval is not None else 0
    record_grads = torch.no_grad() if "create_graph" in session.contract else contextlib.nullcontext()
    step = 0

    def observe(loss: torch.Tensor) -> None:
        if probes is not None and probes.due(step):
            with evaluation_mode(session):
                probes.run(session, step)
        with record_grads:  # p.grad may carry a graph (create_graph): keep the copy out of it
            recorder.before_step(loss)
        lr = group["lr"]
        lrs.append(lr if type(lr) is float else float(lr))

    cap = case.divergence["max_loss"]
    divergence_step = None
    batch_iter = iter(session.batches)
    last = case.steps - 1
    started = time.perf_counter()

    deadline = None if case.timeout is None else started + case.timeout
    step = 0
    try:
        for step in range(case.steps):
            if evals is not None and step % eval_every == 0:
                evals["step"].append(step)
                evals["eval_loss"].append(eval_loss(session))
            x, y = next(batch_iter)
            clipped = train_step(session, x, y, observe)
            if clipping:
                recorder.note("clipped_grad_norm", clipped)
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
            if deadline is not None and time.perf_counter() > deadline:
                raise RunTimeout(f"{case.where(('timeout',))}: timeout: the run took more than "
                                 f"{case.timeout:g} s; stopped after step {step}")
        if "create_graph" in session.contract:
            optimizer.zero_grad(set_to_none=True)  # drop the last gradient's graph (a reference cycle)
        if evals is not None and divergence_step is None:  # the loss the training ended at
            evals["step"].append(case.steps)
            evals["eval_loss"].append(eval_loss(session))
    except Exception as exc:  # the user's optimizer, model or loss raised: say at which step
        exc.step = step
        raise

    record = recorder.record
    if divergence_step is not None:
        record = record[: divergence_step + 1]
    history = {"step": list(range(len(record))), "loss": record[:, 0].tolist(),
               "grad_norm": record[:, 1].tolist(), "update_norm": record[:, 2].tolist(),
               "lr": lrs[: len(record)]}
    if clipping:
        history["clipped_grad_norm"] = record[:, 3].tolist()
    probe_columns = _truncate(probes.columns, divergence_step) if probes is not None else {}
    eval_columns = {}
    if evals is not None:
        eval_columns = _truncate({"step": evals["step"],
                                  "eval_loss": [float(v) for v in evals["eval_loss"]]}, divergence_step)
    extra = {"grad_norm": record[:, 1], "update_norm": record[:, 2],
             "probes": {k: np.asarray(v, dtype=float) for k, v in probe_columns.items()
                        if not k.endswith("_top")},
             "probe_options": probes.options if probes is not None else {},
             "evals": {k: np.asarray(v, dtype=float) for k, v in eval_columns.items()}}
    view = RunView(loss=np.asarray(history["loss"], dtype=float), steps=np.asarray(history["step"]),
                   diverged=divergence_step is not None, divergence_step=divergence_step,
                   total_steps=case.steps, extra=extra, spike_config=case.spikes)
    return RunResult(
        case=case.name, run_id=spec.run_id, optimizer=spec.optimizer.key,
        optimizer_class=spec.optimizer.class_name, params=dict(spec.params), seed=spec.seed,
        device=spec.device, dtype=case.dtype, steps=case.steps,
        diverged=divergence_step is not None, divergence_step=divergence_step,
        metrics=compute_metrics(view), history=history, probes=probe_columns, theory=theory,
        evals=eval_columns,
        meta={"wall_time_s": time.perf_counter() - started, "torch": torch.__version__,
              "data": session.data_digest,
              "threads": torch.get_num_threads(),
              "spikes": dataclasses.asdict(case.spikes),
              # probe column → {why it is NaN: first probed step}: a figure theory lacks is said to be unknown
              "probe_unknown_reasons": probes.reasons if probes is not None else {}})


def _truncate(columns: dict[str, list], divergence_step: int | None) -> dict[str, list]:
    """Rows of a sparse table (probes, evals) up to the divergence step (the training that
    was recorded)."""
    if divergence_step is None:
        return columns
    keep = sum(1 for step in columns["step"] if step <= divergence_step)
    return {name: values[:keep] for name, values in columns.items()}
