"""Hessian-vector products of the full-batch training loss, and a guard that keeps probes
from changing training.

:class:`LossHessian` is the Hessian H of the training loss L(θ) at one point θ, with
respect to a list of parameters, as a linear operator on flat vectors (concatenated in
the order of ``params``, each parameter flattened row-major, as ``torch.cat([p.reshape(-1)
for p in params])``). It works in the parameters' dtype and device; callers that want
float64 arithmetic (Lanczos) cast around it.

The point is a *snapshot*: the parameters are copied when the object is built, so later
optimizer steps do not change (or break) it; build a new one per probe step.

Loss over chunks. The data ``(x, y)`` is split into chunks of ``chunk_size`` examples to
bound memory; the per-chunk losses are combined according to ``additive``:

=================  ==================================  ====================================
additive           total loss                          losses (``components.losses``)
=================  ==================================  ====================================
"mean"             Σ_c (n_c/N) · loss_c                mse ``mean`` (torch's mean over all
                                                       elements), mse ``half_example_mean``
                                                       (½·Σ over outputs / n), cross_entropy
                                                       ``mean``; any ``sum`` reduction with
                                                       ``divide_by_batch_size``
"sum"              Σ_c loss_c                          mse ``sum``, cross_entropy ``sum``,
                                                       ``quadratic`` (one example: either)
"mean_over_batch"  Σ_c (n_c/N)² · loss_c               a mean-type reduction with
                                                       ``divide_by_batch_size: true`` (loss =
                                                       mean/n, so the full-data loss is
                                                       mean_all/N)
"whole"            loss_fn(all data); no chunking      anything not additive over examples,
                                                       e.g. BatchNorm in train mode
=================  ==================================  ====================================

(loss_c = loss_fn(chunk c). mse ``mean`` divides by n_c·C, so weight n_c/N makes the total
the mean over all N·C elements.) :func:`additive_for` maps a loss spec to this. Each
chunk's contribution is summed unscaled (times n_c for "mean", n_c² for
"mean_over_batch") and the sum is scaled once (1/N, 1/N²), so in exact
arithmetic the result does not depend on ``chunk_size``; in float64 it agrees to ~1e-15.

Two ways to take an HVP:

``"double_backward"`` (default): g = ∂L/∂θ with ``create_graph=True``, then
Hv = ∂(g·v)/∂θ via ``torch.autograd.grad(g, θ, grad_outputs=v)``. The first-order graph of
each chunk (forward activations and the backward graph) can be *kept* between HVPs at the
same point, so that an HVP is one pass through that graph instead of forward + backward +
the pass; chunks are kept while the tensors the graphs save fit in ``cache_bytes``
(counted with saved-tensor hooks on the first pass; 0 disables). On the CIFAR FC net of
``cases/cifar_fc.yaml`` this makes an HVP ~2x cheaper (``benchmarks/hvp.py``).

``"forward_over_reverse"``: ``torch.func.jvp(torch.func.grad(f), (θ,), (v,))`` with
``torch.func.functional_call``; nothing is kept between calls. It does not support modules
that update buffers in the forward (BatchNorm in train mode): use double_backward there.

Attention. Every forward runs under :func:`math_attention` (``SDPBackend.MATH``): the fused
attention kernels have no double backward (``aten::_scaled_dot_product_flash_attention_for_
cpu_backward``) nor forward-mode AD, so both modes work through ``torch.nn.TransformerEncoder``
and ``F.scaled_dot_product_attention``. The probe loss therefore uses the math kernel even
where training uses a fused one: equal up to rounding, not bit for bit.

Side effects. The forward runs through ``torch.func.functional_call`` on the snapshot
parameters and on *copies* of the module's buffers, so BatchNorm running statistics are
never touched; gradients come from ``torch.autograd.grad``, so no ``.grad`` is written;
the module's train/eval mode is left as it is (the loss is the training loss in the
model's current mode); each forward runs inside ``torch.random.fork_rng`` from the
current RNG state, so stochastic layers (dropout) draw the *same* masks in every HVP —
H is one fixed matrix — and the global RNG is not advanced. :func:`untouched` wraps a
whole probe step and checks all this.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LossHessian", "additive_for", "untouched", "ProbeSideEffect", "flatten", "unflatten", "math_attention"]

Additive = Literal["mean", "sum", "mean_over_batch", "whole"]
Mode = Literal["double_backward", "forward_over_reverse"]


def math_attention() -> contextlib.AbstractContextManager:
    """Scaled-dot-product attention on its math kernel (composite, differentiable ops). The
    fused kernels torch picks by default (flash attention on CPU, flash/memory-efficient on
    CUDA) have no double backward and no forward-mode AD, so HVPs through
    ``torch.nn.MultiheadAttention`` / ``TransformerEncoder`` / ``F.scaled_dot_product_attention``
    would fail; the math kernel computes the same attention (up to rounding), more slowly.
    A no-op on a torch without ``torch.nn.attention`` (< 2.3)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def flatten(tensors: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """One flat vector, tensors concatenated in order (each flattened row-major)."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    return flat if dtype is None else flat.to(dtype)


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped like ``like`` (inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"expected a flat vector of {sum(sizes)} entries, got shape {tuple(flat.shape)}")
    return [part.view(t.shape) for part, t in zip(torch.split(flat, sizes), like)]


def additive_for(kind: str, reduction: str = "mean", divide_by_batch_size: bool = False) -> Additive:
    """``additive`` for a loss spec of ``components.losses`` (``kind``, ``reduction``,
    ``divide_by_batch_size``): "sum" for sum reductions and the quadratic objective,
    "mean" for mean and half_example_mean; divided by the batch size, a sum becomes
    "mean" and a mean "mean_over_batch"."""
    if kind == "quadratic":
        return "sum"
    if reduction == "sum":
        return "mean" if divide_by_batch_size else "sum"
    if reduction in ("mean", "half_example_mean"):
        return "mean_over_batch" if divide_by_batch_size else "mean"
    raise ValueError(f"no additivity known for loss {kind!r} with reduction {reduction!r}")


def _param_names(model: nn.Module, params: Sequence[torch.Tensor]) -> list[str]:
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), name)
    missing = [i for i, p in enumerate(params) if id(p) not in by_id]
    if missing:
        raise ValueError(f"params {missing} are not parameters of the model")
    if len({id(p) for p in params}) != len(params):
        raise ValueError("params lists a tensor twice")
    return [by_id[id(p)] for p in params]


class _SavedBytes:
    """Counts the bytes of the distinct storages autograd saves while active."""

    def __init__(self):
        self.bytes, self._seen = 0, set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), t.device)
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            self.bytes += t.numel() * t.element_size()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


class _FlatSum:
    """Sum of flattened tensor lists; the first one's concatenation is the accumulator
    (no zero-filled buffers: on a busy CPU every extra pass over memory costs)."""

    def __init__(self):
        self.value: torch.Tensor | None = None

    def add(self, tensors: Sequence[torch.Tensor]) -> None:
        flat = flatten(tensors)
        if self.value is None:
            self.value = flat
        else:
            self.value.add_(flat)


class _Totals:
    def __init__(self):
        self.loss: torch.Tensor | None = None  # kept on the device: one sync at the end
        self.grad = _FlatSum()


class LossHessian:
    """H = ∇²L(θ) of the training loss at the current parameters, as flat-vector products.

    ``model``, ``params`` (the tensors to differentiate, in flattening order, all of one
    dtype), ``loss_fn``
    (``loss_fn(model(x), y) -> scalar``) and the data ``x``, ``y`` (a fixed subset or the
    full training set, on the model's device) are those of the run; see the module
    docstring for ``chunk_size``, ``mode``, ``additive`` and ``cache_bytes``.

    ``gradient()``, ``loss()`` and ``hvp(v)`` are all at the snapshot point; gradient and
    loss are computed once (an HVP pass computes them for free) and then returned from
    memory. Counters: ``n_hvp`` (full-data HVPs taken), ``n_grad`` (full-data gradient
    passes run only for ``gradient()``/``loss()``).
    """

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss_fn: Callable,
                 x: torch.Tensor, y: torch.Tensor, *, chunk_size: int | None = None,
                 mode: Mode = "double_backward", additive: Additive = "mean",
                 cache_bytes: int = 1 << 30):
        if mode not in ("double_backward", "forward_over_reverse"):
            raise ValueError(f"mode must be 'double_backward' or 'forward_over_reverse', got {mode!r}")
        if additive not in ("mean", "sum", "mean_over_batch", "whole"):
            raise ValueError(f"additive must be 'mean', 'sum', 'mean_over_batch' or 'whole', got {additive!r}")
        params = list(params)
        if not params:
            raise ValueError("no parameters to differentiate")
        self.model, self.loss_fn, self.mode, self.additive = model, loss_fn, mode, additive
        self.names = _param_names(model, params)
        self.shapes = [p.shape for p in params]
        self.dtype, self.device = params[0].dtype, params[0].device
        with torch.no_grad():
            self.point = [p.detach().clone().requires_grad_(True) for p in params]
            self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        self.dim = sum(p.numel() for p in params)
        self.x, self.y = x, y
        self.n = n = int(x.shape[0])
        if n == 0:
            raise ValueError("no examples")
        size = n if chunk_size is None else int(chunk_size)
        if size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        if additive == "whole" and size < n:
            raise ValueError("additive='whole': this loss is not a sum over examples, so it cannot be chunked")
        self.chunks = [(s, min(s + size, n)) for s in range(0, n, size)]
        self.cache_bytes = int(cache_bytes)
        self.cached_bytes = 0
        self._graphs: dict[int, tuple[torch.Tensor, tuple]] = {}  # chunk -> (loss, grads w/ graph)
        self._cache_full = False
        self._grad: torch.Tensor | None = None
        self._loss: float | None = None
        self.n_hvp = 0
        self.n_grad = 0
        cuda = self.device.type == "cuda"
        self._rng_devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if cuda else []

    # ---- pieces -------------------------------------------------------------------------

    def _weight(self, start: int, stop: int) -> float:
        """Unscaled weight of a chunk's loss; the sum of weighted chunks is multiplied by
        ``_scale`` once."""
        if self.additive == "mean":
            return float(stop - start)
        if self.additive == "mean_over_batch":
            return float(stop - start) ** 2
        return 1.0

    @property
    def _scale(self) -> float:
        if self.additive == "mean":
            return 1.0 / self.n
        if self.additive == "mean_over_batch":
            return 1.0 / self.n ** 2
        return 1.0

    def _chunk_loss(self, tensors: Sequence[torch.Tensor], start: int, stop: int) -> torch.Tensor:
        """weight × loss of one chunk, as a function of ``tensors`` (one per param)."""
        mapping = dict(self.buffers)
        mapping.update(zip(self.names, tensors))
        x, y = self.x[start:stop], self.y[start:stop]
        with torch.random.fork_rng(devices=self._rng_devices), math_attention():
            out = torch.func.functional_call(self.model, mapping, (x,))
        return self.loss_fn(out, y) * self._weight(start, stop)

    def _first_order(self, i: int, count: _SavedBytes | None = None) -> tuple[torch.Tensor, tuple]:
        """(weighted loss, weighted grads with graph) of chunk i."""
        start, stop = self.chunks[i]
        with torch.enable_grad(), (count.hooks() if count is not None else contextlib.nullcontext()):
            loss = self._chunk_loss(self.point, start, stop)
            grads = torch.autograd.grad(loss, self.point, create_graph=True, allow_unused=True,
                                        materialize_grads=True)
        return loss, grads

    def _record_first_order(self, loss: torch.Tensor, grads: Sequence[torch.Tensor],
                            totals: "_Totals | None") -> None:
        if totals is not None:
            totals.loss = loss.detach() if totals.loss is None else totals.loss + loss.detach()
            totals.grad.add([g.detach() for g in grads])

    def _finish_first_order(self, totals: "_Totals | None") -> None:
        if totals is not None:
            self._loss = float(totals.loss) * self._scale
            self._grad = totals.grad.value.mul_(self._scale)

    def _new_totals(self) -> "_Totals | None":
        return None if self._grad is not None else _Totals()

    # ---- public ----------------------------------------------------------------------

    @property
    def params(self) -> list[torch.Tensor]:
        """The snapshot parameters (detached copies) at which H is taken."""
        return [p.detach() for p in self.point]

    def gradient(self) -> torch.Tensor:
        """∇L at the snapshot, flat, in the parameters' dtype (a copy)."""
        if self._grad is None:
            totals = self._new_totals()
            for i, (start, stop) in enumerate(self.chunks):
                if i in self._graphs:
                    loss, grads = self._graphs[i]
                else:
                    with torch.enable_grad():
                        loss = self._chunk_loss(self.point, start, stop)
                        grads = torch.autograd.grad(loss, self.point, allow_unused=True, materialize_grads=True)
                self._record_first_order(loss, grads, totals)
            self._finish_first_order(totals)
            self.n_grad += 1
        return self._grad.clone()

    def loss(self) -> float:
        """L at the snapshot."""
        if self._loss is None:
            self.gradient()
        return self._loss

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat ``v`` (any float dtype; used in the parameters' dtype); returns a
        flat vector in the parameters' dtype."""
        v = v.detach().to(device=self.device, dtype=self.dtype)
        vs = unflatten(v, self.point)
        out = _FlatSum()
        totals = self._new_totals()
        if self.mode == "double_backward":
            self._hvp_double_backward(vs, out, totals)
        else:
            self._hvp_forward_over_reverse(vs, out, totals)
        self._finish_first_order(totals)
        self.n_hvp += 1
        return out.value.mul_(self._scale)

    __call__ = hvp

    def _hvp_double_backward(self, vs, out, totals) -> None:
        for i in range(len(self.chunks)):
            cached = self._graphs.get(i)
            if cached is None:
                count = None if self._cache_full or self.cache_bytes <= 0 else _SavedBytes()
                loss, grads = self._first_order(i, count)
                if count is not None:
                    if self.cached_bytes + count.bytes <= self.cache_bytes:
                        self._graphs[i] = (loss, grads)
                        self.cached_bytes += count.bytes
                    else:
                        self._cache_full = True  # later chunks are no smaller: stop measuring
            else:
                loss, grads = cached
            self._record_first_order(loss, grads, totals)
            live = [k for k, g in enumerate(grads) if g.requires_grad]
            if not live:  # the loss is linear in every parameter: H = 0 here
                out.add([torch.zeros_like(p) for p in self.point])
                continue
            with torch.enable_grad():
                hv = torch.autograd.grad([grads[k] for k in live], self.point,
                                         grad_outputs=[vs[k] for k in live], retain_graph=i in self._graphs,
                                         allow_unused=True, materialize_grads=True)
            out.add(hv)

    def _hvp_forward_over_reverse(self, vs, out, totals) -> None:
        primals = tuple(p.detach() for p in self.point)
        for start, stop in self.chunks:
            def f(*tensors, start=start, stop=stop):
                loss = self._chunk_loss(tensors, start, stop)
                return loss, loss

            def grad_f(*tensors):
                grads, loss = torch.func.grad(f, argnums=tuple(range(len(tensors))), has_aux=True)(*tensors)
                return grads, loss

            try:
                (grads, loss), (hv, _) = torch.func.jvp(grad_f, primals, tuple(vs))
            except RuntimeError as exc:
                if "mutate a captured Tensor" in str(exc):
                    raise ValueError("mode='forward_over_reverse' cannot run a model that updates buffers in "
                                     "its forward (BatchNorm in train mode); use mode='double_backward'") from exc
                raise
            self._record_first_order(loss, grads, totals)
            out.add(hv)

    def clear_cache(self) -> None:
        """Drop the kept first-order graphs (frees their memory)."""
        self._graphs.clear()
        self.cached_bytes = 0
        self._cache_full = False

    def __repr__(self) -> str:
        return (f"LossHessian(dim={self.dim}, n={self.n}, chunks={len(self.chunks)}, mode={self.mode!r}, "
                f"additive={self.additive!r}, cached_chunks={len(self._graphs)}, n_hvp={self.n_hvp})")


# ---- the guard ---------------------------------------------------------------------------


class ProbeSideEffect(AssertionError):
    """A probe changed something training depends on that :func:`untouched` cannot restore."""


def _optimizer_tensors(optimizer) -> Iterator[tuple[str, torch.Tensor]]:
    for i, (p, state) in enumerate(optimizer.state.items()):
        for key, value in state.items():
            if torch.is_tensor(value):
                yield f"state[{i}][{key!r}]", value


def _scalars(optimizer) -> tuple:
    groups = tuple(tuple(sorted((k, repr(v)) for k, v in g.items() if k != "params")) for g in optimizer.param_groups)
    states = tuple(tuple(sorted((k, repr(v)) for k, v in s.items() if not torch.is_tensor(v)))
                   for s in optimizer.state.values())
    return groups, states, len(optimizer.state)


@contextlib.contextmanager
def untouched(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
              params: Sequence[torch.Tensor] | None = None):
    """Run a probe step without changing training.

    Restores on exit: the torch RNG states (CPU, and CUDA where CUDA is initialised), the
    numpy and ``random`` global states, every module's ``training`` flag, and every buffer
    (object and values; values are copied back only where the buffer was written).
    Asserts on exit (raises :class:`ProbeSideEffect`): that no parameter (``params``, or
    all of the model's and the optimizer's) was written or replaced, that every ``.grad``
    is the same object, unwritten (or still None), that the optimizer's state tensors were
    not written and its hyperparameters and scalar state are unchanged. The checks use
    autograd's version counters, so they cost no copies (and catch what in-place ops
    record there: every optimizer update and ``.grad`` accumulation does; kernels that
    write an argument behind autograd's back, like batch_norm's running statistics, do
    not — which is why buffers are restored by copying, always). On an exception inside, the
    restores still happen and the exception propagates unchanged.
    """
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    cpu_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    modes = [(m, m.training) for m in model.modules()]
    buffers = []
    with torch.no_grad():
        for m in model.modules():
            for name, b in m._buffers.items():
                if b is not None:
                    buffers.append((m, name, b, b._version, b.detach().clone()))
    if params is None:
        params = list(model.parameters())
        if optimizer is not None:
            seen = {id(p) for p in params}
            params += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in seen]
    params = list(params)
    param_versions = [p._version for p in params]
    module_params = [(m, name, p) for m in model.modules() for name, p in m._parameters.items()]
    grads = [(p.grad, None if p.grad is None else p.grad._version) for p in params]
    opt_tensors = opt_scalars = None
    if optimizer is not None:
        opt_tensors = [(name, t, t._version) for name, t in _optimizer_tensors(optimizer)]
        opt_scalars = _scalars(optimizer)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif torch.cuda.is_available() and torch.cuda.is_initialized():
            pass  # CUDA was first initialised inside: its fresh state is what training would see
        np.random.set_state(np_state)
        random.setstate(py_state)
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for m, name, b, version, copy in buffers:
                m._buffers[name] = b
                b.copy_(copy)  # always: batch_norm writes running stats without bumping _version
    problems = []
    for i, (p, version) in enumerate(zip(params, param_versions)):
        if p._version != version:
            problems.append(f"parameter {i} was written")
    for m, name, p in module_params:
        if m._parameters.get(name) is not p:
            problems.append(f"parameter {name!r} of {type(m).__name__} was replaced")
    for i, (p, (g, version)) in enumerate(zip(params, grads)):
        if p.grad is not g:
            problems.append(f".grad of parameter {i} was {'set' if g is None else 'replaced'}")
        elif g is not None and g._version != version:
            problems.append(f".grad of parameter {i} was written")
    if optimizer is not None:
        for name, t, version in opt_tensors:
            if t._version != version:
                problems.append(f"optimizer {name} was written")
        if _scalars(optimizer) != opt_scalars:
            problems.append("optimizer hyperparameters or scalar state changed")
    if problems:
        raise ProbeSideEffect("probe changed training: " + "; ".join(problems))
