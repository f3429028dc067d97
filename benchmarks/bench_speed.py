"""Speed and memory: a training step of each case, and the curvature probes' building
blocks on the CIFAR FC net (an HVP, a gradient, a λ₁ estimate, a probe's peak memory).

Every benchmark has a ``device`` parameter, ``cpu`` or ``cuda``; the ``cuda`` ones skip
(NotImplementedError in setup, which asv reports as skipped) on a machine without a GPU,
and on a GPU each timed call ends with ``torch.cuda.synchronize`` so that the time covers
the work, not only its launch. Run CUDA benchmarks with asv's ``spawn`` launch method
(``--launch-method spawn``, as .github/workflows/gpu.yml does): each benchmark gets a
fresh process, never a fork of one that has initialised CUDA (the suite itself never
initialises CUDA at import, so the config's default ``forkserver`` is safe too). CPU
timings use one intra-op thread (``single_thread_on_cpu``). Everything is built by the
runner (``plan_runs`` + ``start``) at seed 0.

The probe benchmarks skip while ``stability_bench.probes`` is not importable or lacks
what they need (``LossHessian``, ``top_eigenpairs``), and where the CIFAR-10 data is
missing (set ``$STABILITY_BENCH_DATA``, or keep it in ``data/`` or ``../shared/data``).
"""
from __future__ import annotations

import statistics
import time

from . import DEVICES, SEED, shipped_cases, single_thread_on_cpu, start_session, sync

CURVATURE_CASE = "cifar_fc"      # the 5×200 tanh net of Cohen et al. on 1000 CIFAR images
LAMBDA1 = {"k": 1, "max_iter": 30, "tol": 1e-3}   # the probes' defaults (probes: max_iter, tol)


def _cases_by_name() -> dict:
    return {case.name: case for case in shipped_cases()}


def setup_cache():
    """The shipped cases by name, parsed and validated once per environment and commit;
    shared by every benchmark of this module (none defines its own setup_cache)."""
    return _cases_by_name()


setup_cache.timeout = 120


def _probe_api():
    """(LossHessian, top_eigenpairs), or NotImplementedError (asv: skip) naming what is missing."""
    try:
        from stability_bench.probes.hvp import LossHessian
        from stability_bench.probes.lanczos import top_eigenpairs
    except ImportError as exc:
        raise NotImplementedError(f"stability_bench.probes is not available yet: {exc}") from exc
    return LossHessian, top_eigenpairs


def _curvature_session(cache: dict, device: str):
    if CURVATURE_CASE not in cache:
        raise NotImplementedError(f"no case {CURVATURE_CASE!r} in this checkout")
    return start_session(cache[CURVATURE_CASE], device)


def _hessian(session, LossHessian):
    """H of the full-batch training loss at the session's parameters (double backward,
    one chunk: the probes' defaults)."""
    return LossHessian(session.model, session.params, session.loss_fn, session.data.x, session.data.y,
                       chunk_size=None, mode="double_backward")


class TimeStep:
    """Time per training step of each shipped case (its first optimizer entry and sweep
    point, seed 0), as ``runner.execute`` trains it without probes: next batch, then
    ``runner.train_step`` (forward, backward, the step recorder's copies, clipping,
    ``optimizer.step()`` — with a closure for LBFGS — and the schedule's step), and the
    recorder's flush (norms, host copy) at the end of each block.

    One timed call is one recorder block — ``StepRecorder.size`` steps (128, fewer for
    a large model: 10 for cifar_fc), the last of which flushes — on a run built afresh by
    ``runner.start`` and warmed up by two steps; the benchmark's ``timer`` divides the
    clock by the block length, so asv reports seconds per step with the flush amortised
    as in a real run. (A single timed step of ~100 µs was dominated by noise.) The case
    files are parsed once per environment, in the module's ``setup_cache``.
    """

    params = [[case.name for case in shipped_cases()], list(DEVICES)]
    param_names = ["case", "device"]
    timeout = 300

    def setup(self, cases, case, device):
        from stability_bench.runner import StepRecorder, train_step

        if case not in cases:
            raise NotImplementedError(f"no case {case!r} in this checkout")
        single_thread_on_cpu(device)
        self.device = device
        self.session = s = start_session(cases[case], device)
        self.recorder = StepRecorder(s.params, s.dtype, device)
        self.batches = iter(s.batches)
        self.train_step = train_step
        for _ in range(2):  # optimizer state allocated, caches warm
            self._step()
        self.recorder.flush()  # a partial block: the timed call starts an empty one
        sync(device)
        steps = self.recorder.size
        self.timer = lambda: time.perf_counter() / steps  # asv reports time per step

    def _step(self):
        x, y = next(self.batches)
        self.train_step(self.session, x, y, observe=self.recorder.before_step)

    def time_step(self, cases, case, device):
        for _ in range(self.recorder.size):
            self._step()
        self.recorder.flush()  # the block is full: execute() flushes here
        sync(self.device)


class Curvature:
    """The probes' costs on the CIFAR FC net (``cases/cifar_fc.yaml``: 5×200 tanh, 1000
    images, ~0.7 M parameters) at its initial parameters, seed 0.

    ``time_hvp``: one Hessian-vector product with the first-order graph already kept (as
    in the second and later products of a Lanczos run). ``time_gradient``: one full-batch
    gradient by plain autograd — the unit the HVP is compared with. ``track_hvp_gradient_ratio``:
    their ratio, measured here as the median of 5 timings each. ``time_lambda1``: one λ₁
    estimate from scratch — a new ``LossHessian`` (snapshot, first-order pass) and
    ``top_eigenpairs`` with the probes' default ``max_iter`` 30 and ``tol`` 1e-3.
    """

    params = [list(DEVICES)]
    param_names = ["device"]
    timeout = 300

    def setup(self, cases, device):
        import torch

        self.LossHessian, self.top_eigenpairs = _probe_api()
        single_thread_on_cpu(device)
        self.device = device
        self.session = _curvature_session(cases, device)
        self.H = _hessian(self.session, self.LossHessian)
        generator = torch.Generator().manual_seed(SEED)
        self.v = torch.randn(self.H.dim, generator=generator, dtype=torch.float64).to(device)
        self.H.hvp(self.v)  # builds and keeps the first-order graph
        sync(device)

    def _gradient(self):
        import torch

        s = self.session
        return torch.autograd.grad(s.loss_fn(s.model(s.data.x), s.data.y), s.params)

    def time_hvp(self, cases, device):
        self.H.hvp(self.v)
        sync(self.device)

    def time_gradient(self, cases, device):
        self._gradient()
        sync(self.device)

    def track_hvp_gradient_ratio(self, cases, device):
        def median_time(fn, repeats=5):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                sync(self.device)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        self._gradient()  # warm
        return median_time(lambda: self.H.hvp(self.v)) / median_time(self._gradient)

    track_hvp_gradient_ratio.unit = "HVP time / gradient time"

    def time_lambda1(self, cases, device):
        H = _hessian(self.session, self.LossHessian)
        self.top_eigenpairs(H.hvp, H.dim, device=device, **LAMBDA1)
        sync(self.device)


class ProbeMemory:
    """Peak host memory of one λ₁ probe on the CIFAR FC net, on the CPU (a new
    ``LossHessian`` and ``top_eigenpairs``, as ``Curvature.time_lambda1``): asv's peakmem,
    the process's peak resident memory, which includes the interpreter, torch and the run's
    model and data — compare it across commits, not with the probe alone.
    """

    timeout = 300

    def setup(self, cases):
        self.LossHessian, self.top_eigenpairs = _probe_api()
        single_thread_on_cpu("cpu")
        self.session = _curvature_session(cases, "cpu")

    def peakmem_lambda1(self, cases):
        H = _hessian(self.session, self.LossHessian)
        self.top_eigenpairs(H.hvp, H.dim, **LAMBDA1)


class CudaProbeMemory:
    """Peak GPU memory of one λ₁ probe on the CIFAR FC net (``torch.cuda.max_memory_allocated``
    during the probe, above what was allocated before it); skips without a GPU."""

    timeout = 300

    def setup(self, cases):
        self.LossHessian, self.top_eigenpairs = _probe_api()
        self.session = _curvature_session(cases, "cuda")

    def track_lambda1_peak(self, cases):
        import torch

        sync("cuda")
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        H = _hessian(self.session, self.LossHessian)
        self.top_eigenpairs(H.hvp, H.dim, device="cuda", **LAMBDA1)
        sync("cuda")
        return torch.cuda.max_memory_allocated() - base

    track_lambda1_peak.unit = "bytes"
