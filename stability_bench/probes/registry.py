"""Probes a case declares under ``probes:``, and the plan that runs them during training.

```yaml
probes:
  every: 10                 # default schedule (steps); each probe may set its own `every`
  subset: 1000              # probe the loss on the first N training examples (default: all)
  chunk_size: 500           # examples per HVP chunk (memory bound; results do not depend on it)
  tol: 1.0e-3               # Lanczos: relative residual, or λ's error bound below min(tol, 1e-3)
  max_iter: 30              # Lanczos iterations (HVPs) per eigenvalue estimate
  late_window: 0.5          # precond_sharpness_ratio: median over the last half of the probes
  lead_window: 50           # a threshold crossing within this many steps before a spike "leads" it
  sharpness: {k: 1}
  precond_sharpness: {}
  threshold: {}
  directional_curvature: {}
  second_moment_ratio: {bound: 1.0e-3}
  grad_alignment: {k: 4}
```

and, per probe, which optimizer entries' runs take it:

```yaml
  directional_curvature: {optimizers: [adam]}                         # adam's runs only
  precond_sharpness: {optimizers: {adam: {}, control: {every: 20}}}   # control: its own options
```

``optimizers:`` under a probe names the optimizer entries whose runs take it, as a list, or
as a mapping from entry to that entry's overrides of the probe's options (``every``, or the
probe's own); the entries not named do not take it, and the figures that read its columns
are None for them (validation refuses an expectation on such a figure). Without it every
entry takes the probe. A control whose claims read fewer columns than the run it controls
skips the probes it does not need (cases/transformer_spikes.yaml).

A probe is a function ``probe(ctx: ProbeContext, **options) -> dict[column, value]`` (no
option named ``every`` or ``optimizers``: those keys are the plan's) registered in
:data:`PROBES`, declaring there the columns it records (:func:`records`), what it needs of
the optimizer (P, v, the threshold) and how many HVPs one evaluation costs
(:func:`declares`): validation's warnings (:mod:`stability_bench.unknown_theory`) and the
cost estimate that orders the work queue read these declarations. Probes run at step t after
the backward pass and before the optimizer's update, at the parameters x_t, with the
optimizer's preconditioner as its last step left it (so P is the one used for step t−1, see
:mod:`.preconditioner`). They never change training: everything runs inside
:func:`~.hvp.untouched`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from stability_bench.optimizers.thresholds import threshold_status
from stability_bench.probes.hvp import additive_for
from stability_bench.probes.preconditioner import precond_status, second_moment_status
from stability_bench.registry import Registry

PROBES: Registry = Registry("probe")
REASON_SUFFIX = "_unknown_reason"  # a probe's key for why its figures are NaN (a string, or None)

# Options of the ``probes:`` section itself (everything else names a probe).
PLAN_OPTIONS: dict[str, Any] = {"every": int, "subset": int | None, "chunk_size": int | None,
                                "tol": float, "max_iter": int, "late_window": float,
                                "lead_window": int, "hvp": str}
#: keys under a probe that the plan takes (:meth:`ProbePlan.from_case`, :func:`probes_for`):
#: never passed to the probe function, so validation refuses a function with such an option
RESERVED_PROBE_OPTIONS = {"every": "the probe's schedule", "optimizers": "which optimizer entries take the probe"}
PLAN_DEFAULTS: dict[str, Any] = {"every": 10, "subset": None, "chunk_size": None, "tol": 1e-3,
                                 "max_iter": 30, "late_window": 0.5, "lead_window": 50,
                                 "hvp": "double_backward"}


class ProbeContext:
    """What probes of one step share: the Hessian operator, P, the full-batch gradient and
    eigenpairs, computed at most once per step and warm-started from the previous probe."""

    def __init__(self, session, plan: "ProbePlan", step: int):
        self.session, self.plan, self.step = session, plan, step
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def hessian(self):
        from stability_bench.probes.hvp import LossHessian

        def build():
            s = self.session
            x, y = self.plan.probe_data(s)
            return LossHessian(s.model, s.params, s.loss_fn, x, y, chunk_size=self.plan.options["chunk_size"],
                               mode=self.plan.options["hvp"], additive=self.plan.additive)
        return self.cached("hessian", build)

    @property
    def preconditioning(self):
        """What is known of P now (:class:`~.preconditioner.Preconditioning`): identity,
        diagonal, operator, or unknown with the reason — never I for an optimizer the
        harness does not know."""
        from stability_bench.probes.preconditioner import preconditioning

        s = self.session
        return self.cached("P", lambda: preconditioning(s.optimizer, s.params))

    @property
    def preconditioner(self):
        """P as the quantity functions take it: the diagonal, the operator, or None for
        P = I (and while unknown: check :attr:`has_preconditioner`)."""
        return self.preconditioning.P

    @property
    def has_preconditioner(self) -> bool:
        """Whether P is known (I included); False while an adaptive optimizer has not
        stepped yet and for optimizers whose P the harness does not know."""
        return self.preconditioning.known

    @property
    def precond_unknown_reason(self) -> str | None:
        return self.preconditioning.reason

    @property
    def full_gradient(self) -> torch.Tensor:
        return self.cached("gradient", lambda: self.hessian.gradient())

    def eigen(self, preconditioned: bool, k: int):
        """Top-k eigenpairs of H or of P^{-1/2} H P^{-1/2}, warm-started from the last probe;
        None when P is not known yet."""
        from stability_bench.probes.quantities import precond_sharpness, sharpness

        if preconditioned and not self.has_preconditioner:
            return None
        P = self.preconditioner if preconditioned else None
        key = f"eig:{preconditioned and P is not None}:{k}"

        def build():
            lanczos = {"max_iter": self.plan.options["max_iter"], "tol": self.plan.options["tol"],
                       "v0": self.plan.warm.get(key), "workspace": self.plan.workspace}
            result = sharpness(self.hessian, k, **lanczos) if P is None else \
                precond_sharpness(self.hessian, P, k, **lanczos)
            self.plan.warm[key] = result.vectors.clone()
            return result
        return self.cached(key, build)


@dataclass
class ProbeSpec:
    name: str
    every: int
    options: dict


@dataclass
class ProbePlan:
    """The probes of one run: which, when, and the state carried between probe steps."""

    probes: list[ProbeSpec]
    options: dict
    additive: str
    columns: dict[str, list] = field(default_factory=lambda: {"step": []})
    # Why a figure is NaN: key (e.g. "precond_unknown_reason") -> {reason: first probed step}.
    # Kept out of ``columns``, which hold numbers only.
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    warm: dict[str, torch.Tensor] = field(default_factory=dict)
    workspace: dict = field(default_factory=dict)   # Lanczos' basis buffer, reused by every solve of the run
    _data: tuple | None = None

    @classmethod
    def from_case(cls, case, optimizer: str | None = None) -> "ProbePlan | None":
        """The probe plan of a run of ``case``'s optimizer entry ``optimizer`` (None: every
        probe, each with its own options); None where that run takes no probe."""
        section = case.probes
        taken = probes_for(section, optimizer) if section else {}
        if not taken:
            return None
        options = plan_options(section)
        specs = [ProbeSpec(name, int(opts.pop("every", options["every"])), opts) for name, opts in taken.items()]
        loss = case.loss
        additive = additive_for(loss["kind"], loss.get("reduction", "mean"), loss.get("divide_by_batch_size", False))
        return cls(specs, options, additive=additive)

    def due(self, step: int) -> list[ProbeSpec]:
        return [p for p in self.probes if step % p.every == 0]

    def probe_data(self, session):
        if self._data is None:
            x, y = session.data.x, session.data.y
            n = self.options["subset"]
            self._data = (x[:n], y[:n]) if n else (x, y)
        return self._data

    def run(self, session, step: int) -> None:
        """Take the probes due at ``step`` and append one row to :attr:`columns`."""
        due = self.due(step)
        if not due:
            return
        from stability_bench.probes.hvp import untouched

        ctx = ProbeContext(session, self, step)
        row: dict[str, Any] = {}
        with untouched(session.model, session.optimizer, session.params):
            for spec in due:
                row.update(PROBES.get(spec.name)(ctx, **spec.options))
        for key in [k for k in row if k.endswith(REASON_SUFFIX)]:
            reason = row.pop(key)
            if reason is not None:
                self.reasons.setdefault(key, {}).setdefault(reason, step)
        n = len(self.columns["step"])
        self.columns["step"].append(step)
        for key, value in row.items():
            column = self.columns.setdefault(key, [math.nan] * n)
            column.append(_plain(value))
        for column in self.columns.values():  # probes not due this step leave a gap
            if len(column) < n + 1:
                column.append(math.nan)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


# ------------------------------------------------------------------------------ probes
def records(*columns: str) -> Callable[[Callable], Callable]:
    """Declare the columns a probe records (``@records("threshold")`` under
    ``@PROBES.register``; reasons, ``*_unknown_reason``, are not columns). With
    :func:`stability_bench.metrics.reads_probes` this says, once, which probe a figure needs
    (:func:`probes_recording`)."""
    def mark(fn: Callable) -> Callable:
        fn.columns = tuple(columns)
        return fn
    return mark


def probes_recording(column: str) -> list[str]:
    """The registered probes that record ``column``."""
    return [name for name in PROBES.names() if column in getattr(PROBES.get(name), "columns", ())]


# What a probe can need of theory, by name: what a warning calls it, and the class-level
# status (None: known once the optimizer has stepped; else why not), read at validation from
# the optimizer class and a sweep point. The probe itself records NaN with the reason.
NEEDS: dict[str, tuple[str, Callable[[type, dict], str | None]]] = {
    "preconditioner": ("the preconditioner P", precond_status),
    "second_moment": ("the second-moment estimate v", lambda cls, point: second_moment_status(cls)),
    "threshold": ("the stability threshold", threshold_status),
}

Hvps = int | float | Callable[[dict, dict], float]  # HVPs per evaluation, or f(plan options, probe options)


def lanczos_hvps(plan_options: dict, options: dict) -> int:
    """A Lanczos eigenvalue estimate: up to ``max_iter`` HVPs (the ``probes:`` option)."""
    return plan_options["max_iter"]


def declares(needs: Iterable[str] = (), hvps: Hvps = 0, partly: str | None = None) -> Callable[[Callable], Callable]:
    """Declare what a probe needs and what it costs (``@declares(...)`` under
    ``@PROBES.register``):

    - ``needs``: names in :data:`NEEDS` (``"preconditioner"``, ``"second_moment"``,
      ``"threshold"``) the probe reads from the optimizer; validation warns, with the
      reason, for an optimizer of the case that lacks one (:mod:`stability_bench.unknown_theory`),
      and the probe records NaN with that reason. ``partly`` qualifies the need when only
      some of its columns have it (e.g. ``"for its preconditioned column"``).
    - ``hvps``: Hessian-vector products per evaluation, a number or a function
      ``(plan_options, probe_options) -> number`` (e.g. :func:`lanczos_hvps`); the cost
      estimate that orders the work queue reads it (:func:`probe_hvps_per_step`).

    A probe that declares nothing needs nothing and costs no HVP."""
    needs = frozenset(needs)
    unknown = sorted(needs - NEEDS.keys())
    if unknown:
        raise ValueError(f"unknown need {', '.join(map(repr, unknown))}; a probe can need: {', '.join(NEEDS)}")

    def mark(fn: Callable) -> Callable:
        fn.needs, fn.needs_partly, fn.hvps = needs, partly, hvps
        return fn
    return mark


def probe_needs(name: str) -> list[tuple[str, Callable[[type, dict], str | None]]]:
    """(what the probe ``name`` needs, in words, and its class-level status function), one
    per declared need, in :data:`NEEDS` order."""
    fn = PROBES.get(name)
    needs, partly = getattr(fn, "needs", frozenset()), getattr(fn, "needs_partly", None)
    return [(f"{what} ({partly})" if partly else what, status)
            for need, (what, status) in NEEDS.items() if need in needs]


def plan_options(section: dict) -> dict[str, Any]:
    """The options of a ``probes:`` section itself (:data:`PLAN_OPTIONS`), defaults filled in."""
    return {**PLAN_DEFAULTS, **{k: v for k, v in section.items() if k in PLAN_OPTIONS}}


def probes_for(section: dict, optimizer: str | None = None) -> dict[str, dict]:
    """The probes of a ``probes:`` section that a run of the optimizer entry ``optimizer``
    takes, each with its options: the entry's overrides under the probe's ``optimizers:``
    merged in, that key itself dropped. ``optimizer=None``: every probe, its own options."""
    taken = {}
    for name, opts in section.items():
        if name in PLAN_OPTIONS:
            continue
        opts = dict(opts or {})
        chosen = opts.pop("optimizers", None)
        if chosen is not None and optimizer is not None:
            if optimizer not in chosen:
                continue
            if isinstance(chosen, dict):
                opts.update(chosen[optimizer] or {})
        taken[name] = opts
    return taken


def probe_hvps_per_step(section: dict, optimizer: str | None = None) -> float:
    """HVPs per training step of the probes a run of ``optimizer`` takes: each probe's
    declared cost (:func:`declares`, at the section's options) over its own ``every``."""
    options = plan_options(section)
    total = 0.0
    for name, opts in probes_for(section, optimizer).items():
        hvps = getattr(PROBES.get(name), "hvps", 0)
        total += (hvps(options, opts) if callable(hvps) else hvps) / max(1, int(opts.get("every", options["every"])))
    return total


def _nan_with_reason(columns: tuple[str, ...], reason_key: str, reason: str) -> dict:
    return {**{c: math.nan for c in columns}, reason_key: reason}


@PROBES.register("threshold")
@records("threshold")
@declares(needs={"threshold"})
def threshold(ctx: ProbeContext) -> dict:
    """The optimizer's stability threshold now (it follows lr schedules); NaN with
    ``threshold_unknown_reason`` where theory gives none."""
    from stability_bench.optimizers.thresholds import threshold_and_reason

    value, reason = threshold_and_reason(ctx.session.optimizer)
    return {"threshold": math.nan if value is None else value, "threshold_unknown_reason": reason}


@PROBES.register("sharpness")
@records("sharpness", "sharpness_residual", "sharpness_hvps", "sharpness_top")
@declares(hvps=lanczos_hvps)
def sharpness(ctx: ProbeContext, k: int = 1) -> dict:
    """λ₁(H) (and the top k) of the probe loss, by Lanczos; with its relative residual."""
    result = ctx.eigen(preconditioned=False, k=k)
    out = {"sharpness": float(result.values[0]), "sharpness_residual": float(result.residuals[0]),
           "sharpness_hvps": result.n_matvec}
    if k > 1:
        out["sharpness_top"] = [float(v) for v in result.values]
    return out


@PROBES.register("precond_sharpness")
@records("precond_sharpness", "precond_sharpness_residual", "precond_sharpness_hvps",
         "precond_sharpness_top")
@declares(needs={"preconditioner"}, hvps=lanczos_hvps)
def precond_sharpness(ctx: ProbeContext, k: int = 1) -> dict:
    """λ₁(P⁻¹H) = λ₁(P^{-1/2} H P^{-1/2}) with P the optimizer's current preconditioner
    (diagonal or operator); NaN with ``precond_unknown_reason`` where P is unknown."""
    result = ctx.eigen(preconditioned=True, k=k)
    if result is None:
        return _nan_with_reason(("precond_sharpness",), "precond_unknown_reason", ctx.precond_unknown_reason)
    out = {"precond_sharpness": float(result.values[0]),
           "precond_sharpness_residual": float(result.residuals[0]),
           "precond_sharpness_hvps": result.n_matvec}
    if k > 1:
        out["precond_sharpness_top"] = [float(v) for v in result.values]
    return out


@PROBES.register("directional_curvature")
@records("directional_curvature", "precond_directional_curvature")
@declares(needs={"preconditioner"}, partly="for its preconditioned column", hvps=2)
def directional_curvature(ctx: ProbeContext) -> dict:
    """gᵀHg/gᵀg and its preconditioned form, g the full-batch (probe) gradient — the curvature
    along which the next step moves; Xiong et al.'s spike trigger when it passes the threshold.
    The preconditioned one is NaN with ``precond_unknown_reason`` where P is unknown."""
    from stability_bench.probes.quantities import directional_curvature as curvature

    if not ctx.has_preconditioner:
        raw, _ = curvature(ctx.hessian, ctx.full_gradient)
        return {"directional_curvature": raw, "precond_directional_curvature": math.nan,
                "precond_unknown_reason": ctx.precond_unknown_reason}
    raw, pre = curvature(ctx.hessian, ctx.full_gradient, ctx.preconditioner)
    return {"directional_curvature": raw, "precond_directional_curvature": raw if pre is None else pre}


@PROBES.register("second_moment_ratio")
@records("g2_over_v_median", "g2_over_v_p10", "g2_over_v_frac_below")
@declares(needs={"second_moment"})
def second_moment_ratio(ctx: ProbeContext, bound: float = 1e-3) -> dict:
    """g²/v over all parameters (g this step's minibatch gradient, v the optimizer's
    bias-corrected second moment before this step): median, 10th percentile and the fraction
    below ``bound``; NaN with ``second_moment_unknown_reason`` where there is no v."""
    from stability_bench.probes.preconditioner import NO_STEP_YET, second_moment, second_moment_status
    from stability_bench.probes.quantities import second_moment_ratio as ratio

    s = ctx.session
    v = second_moment(s.optimizer, s.params)
    if v is None:
        reason = second_moment_status(type(s.optimizer)) or NO_STEP_YET
        return _nan_with_reason(("g2_over_v_median", "g2_over_v_p10", "g2_over_v_frac_below"),
                                "second_moment_unknown_reason", reason)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in s.params]
    stats = ratio(grads, v, bound=bound)
    return {"g2_over_v_median": stats["median"], "g2_over_v_p10": stats["p10"],
            "g2_over_v_frac_below": stats["frac_below"]}


@PROBES.register("second_moment_mean")
@records("v_mean")
@declares(needs={"second_moment"})
def second_moment_mean(ctx: ProbeContext) -> dict:
    """The mean over all parameters of the optimizer's raw second moment v (no bias
    correction: Xiong et al.'s v_{t+1} = β₂v_t + (1−β₂)g_t² decays like β₂ᵗ once g² ≪ v,
    which the metric ``v_decay_rate`` reads from consecutive probes). NaN with
    ``second_moment_unknown_reason`` where the optimizer keeps no v (or before its first step)."""
    from stability_bench.probes.preconditioner import NO_STEP_YET, second_moment, second_moment_status

    s = ctx.session
    v = second_moment(s.optimizer, s.params, bias_corrected=False)
    if v is None:
        reason = second_moment_status(type(s.optimizer)) or NO_STEP_YET
        return _nan_with_reason(("v_mean",), "second_moment_unknown_reason", reason)
    total = sum(float(t.double().sum()) for t in v)
    return {"v_mean": total / sum(t.numel() for t in v)}


@PROBES.register("grad_alignment")
@records("grad_alignment")
@declares(needs={"preconditioner"}, hvps=lanczos_hvps)
def grad_alignment(ctx: ProbeContext, k: int = 4) -> dict:
    """Fraction of ‖P^{-1/2}g‖² along the top-k eigenvectors of P^{-1/2} H P^{-1/2}
    (Cohen et al. App. E; see :func:`~.quantities.grad_alignment_parts` for the choice);
    NaN with ``precond_unknown_reason`` where P is unknown."""
    from stability_bench.probes.quantities import grad_alignment as alignment

    result = ctx.eigen(preconditioned=True, k=k)
    if result is None:
        return _nan_with_reason(("grad_alignment",), "precond_unknown_reason", ctx.precond_unknown_reason)
    return {"grad_alignment": alignment(ctx.full_gradient, ctx.preconditioner, result.vectors)}
