"""Stability metrics computed from one run's per-step history.

A metric is a function ``metric(view: RunView) -> float | int | bool | None`` registered in
:data:`METRICS` under its name; :func:`compute_metrics` evaluates registered metrics and
returns a JSON-safe dict (no ``inf``/``nan``: a metric that is undefined for a run is
``None``). The spike metrics share one documented, scale-free detector, :func:`detect_spikes`,
configured by :class:`SpikeConfig` (a case may override its fields).

Pure numpy: this module does not import torch.

Conventions used by every built-in metric:

* ``loss[i]`` is the loss recorded at optimizer step ``steps[i]``. Metrics that report a *step*
  report a value taken from ``steps`` (not an array position); the spike detector works on
  array positions.
* Non-finite entries (``inf``/``nan``, normally only the last, diverged step) are ignored by the
  loss statistics and the spike detector. Divergence itself is reported only by ``diverged`` and
  ``divergence_step``, which pass the runner's verdict through.
* Ratios (``late_instability``, the spike threshold) assume a non-negative loss.

Every built-in metric, the ``eval_*`` metrics of the periodic ``eval:`` loss included, is
defined and registered in this module; a user's metric registers in the user's module with
the same decorator (loaded by an entry point or an import of the user's own). No module
has to be imported for a side effect to see the built-in ones.

Adding a metric::

    from stability_bench.metrics import METRICS

    @METRICS.register("max_grad_norm")
    def max_grad_norm(view):
        g = view.extra["grad_norm"]
        return float(g.max()) if len(g) else None
"""
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterable

import numpy as np

from .registry import Registry
from .types import SpikeConfig

__all__ = [
    "LOSS_FLOOR",
    "METRICS",
    "probe_columns",
    "reads_probes",
    "MetricFn",
    "RunView",
    "SpikeConfig",
    "compute_metrics",
    "detect_spikes",
    "spike_period_from_onsets",
]

LOSS_FLOOR: float = float(np.finfo(np.float64).tiny)
"""Smallest positive normal float64 (2.2250738585072014e-308): the floor applied to a pre-spike
level of exactly 0 in the spike heights so that the ratio stays finite (``late_instability``
measures an exact-0 minimum differently: see its docstring)."""


# ---------------------------------------------------------------------------------------------
# Configuration and the view metrics read
# ---------------------------------------------------------------------------------------------




@dataclass
class RunView:
    """What metric functions read: one run's recorded history.

    ``loss`` is coerced to a float64 array and ``steps`` to an int64 array; they must have the same
    length. ``loss`` may contain inf/nan (normally only at the last, diverged step).
    """

    loss: np.ndarray
    """float64, one entry per recorded step."""
    steps: np.ndarray
    """int, the 0-based optimizer step index of each entry."""
    diverged: bool
    divergence_step: int | None
    total_steps: int
    """Steps the case asked for (the run may have stopped earlier)."""
    extra: dict = field(default_factory=dict)
    """Other history columns (grad_norm, update_norm, probe columns, ...) as arrays."""
    spike_config: SpikeConfig = field(default_factory=SpikeConfig)

    def __post_init__(self) -> None:
        self.loss = np.asarray(self.loss, dtype=np.float64).reshape(-1)
        self.steps = np.asarray(self.steps, dtype=np.int64).reshape(-1)
        if self.loss.shape != self.steps.shape:
            raise ValueError(
                f"RunView: loss has {self.loss.size} entries but steps has {self.steps.size}"
            )

    @cached_property
    def spike_onsets(self) -> np.ndarray:
        """``detect_spikes(loss, spike_config)``, found once for all the spike metrics."""
        return detect_spikes(self.loss, self.spike_config)


MetricFn = Callable[[RunView], "float | int | bool | None"]

METRICS: Registry[MetricFn] = Registry("metric")
"""name -> ``function(view: RunView) -> float | int | bool | None``."""


# ---------------------------------------------------------------------------------------------
# Spike detection
# ---------------------------------------------------------------------------------------------

_MEDIAN_CHUNK = 1 << 15  # rows per sliding-window median batch (bounds temporary memory)


def _trailing_medians(f: np.ndarray, window: int, min_history: int) -> np.ndarray:
    """``out[k]`` = median of ``f[max(0, k - window):k]`` when ``k >= min_history``, else nan."""
    n = f.size
    out = np.full(n, np.nan)
    # Warm-up: fewer than `window` previous values (at most `window` medians, each O(window)).
    for k in range(min_history, min(window, n)):
        out[k] = np.median(f[:k])
    if n > window:
        # Full windows: out[k] = median(f[k-window:k]) for k = window .. n-1.
        views = np.lib.stride_tricks.sliding_window_view(f[:-1], window)  # row j -> k = j + window
        for start in range(0, views.shape[0], _MEDIAN_CHUNK):
            block = views[start:start + _MEDIAN_CHUNK]
            out[window + start:window + start + block.shape[0]] = np.median(block, axis=1)
    return out


def _excursion_end(loss: np.ndarray, start: int, level: float) -> int:
    """First position >= ``start`` holding a finite loss <= ``level``; ``loss.size`` if none."""
    n = loss.size
    size = 32
    while start < n:
        seg = loss[start:start + size]
        hit = np.flatnonzero((seg <= level) & np.isfinite(seg))
        if hit.size:
            return start + int(hit[0])
        start += size
        size *= 2
    return n


def detect_spikes(loss: np.ndarray, config: SpikeConfig | None = None) -> np.ndarray:
    """Positions (array indices into ``loss``, int64, increasing) of loss-spike onsets.

    Rule. Let the *baseline* at position t be the median of the ``window`` (W) finite losses
    recorded before t (non-finite entries are skipped, so the window reaches further back past
    them); while fewer than W exist it is the median of all of them, and no detection happens until
    at least ``min_history`` (default ``max(1, W // 2)``) exist. Position t is a spike *onset* when

    1. ``loss[t]`` is finite (a non-finite loss is divergence, never a spike),
    2. the baseline is > 0 and ``loss[t] > factor * baseline``, and
    3. t is not inside the excursion of the previous onset s: the excursion lasts from s until the
       first later position e holding a finite loss ``<= factor * baseline(s)`` (the threshold at
       its onset, so a slowly decaying spike or a jump to a higher plateau counts once; non-finite
       entries neither start nor end an excursion), and a new onset needs
       ``t >= max(e, s + min_gap)``.

    Every test is a ratio of losses, so the result is unchanged when ``loss`` is multiplied by any
    positive constant; it depends on positions only, so it is unchanged when the run's step
    numbers are shifted. Losses whose baseline is <= 0 (exactly-zero or negative losses) are never
    spikes. Cost: O(n * W) for the medians (vectorised) plus O(n) for the scan.

    Prior art. Lightning's ``SpikeDetection`` callback (``lightning.fabric.utilities.spike``)
    compares each loss to a running *mean* of the last 10 finite losses and flags
    ``loss - mean >= rtol * mean`` (default ``rtol=2.0``, i.e. loss >= 3x mean) after a warm-up,
    skipping losses lower than the previous one, and by default treats non-finite losses as spikes.
    OLMo-core's ``StabilityMonitorCallback`` flags every step whose value exceeds the mean + 6
    standard deviations of the last 128 values (once that window is full). We keep Lightning's
    relative, scale-free threshold (``factor=3`` equals its ``rtol=2``), take a *median* so a
    previous spike in the window does not raise the baseline, avoid a standard-deviation rule
    because on smooth (e.g. full-batch) curves the deviation collapses and tiny wiggles would be
    flagged, count *onsets* of excursions rather than every elevated step (OLMo-core counts a
    10-step excursion 10 times; ``spike_period`` needs events), and leave non-finite losses to the
    divergence metrics.
    """
    cfg = config if config is not None else SpikeConfig()
    x = np.asarray(loss, dtype=np.float64).reshape(-1)
    finite_pos = np.flatnonzero(np.isfinite(x))
    if finite_pos.size == 0:
        return np.zeros(0, dtype=np.int64)
    f = x[finite_pos]
    base = _trailing_medians(f, int(cfg.window), cfg.effective_min_history)
    with np.errstate(invalid="ignore"):
        is_candidate = (base > 0) & (f > cfg.factor * base)  # nan baseline -> False
    cand_pos = finite_pos[is_candidate]
    cand_base = base[is_candidate]

    onsets: list[int] = []
    i = 0
    while i < cand_pos.size:
        t = int(cand_pos[i])
        onsets.append(t)
        end = _excursion_end(x, t + 1, cfg.factor * float(cand_base[i]))
        next_allowed = max(end, t + int(cfg.min_gap))
        i = int(np.searchsorted(cand_pos, next_allowed, side="left"))
    return np.asarray(onsets, dtype=np.int64)


def spike_period_from_onsets(onset_steps: np.ndarray, tolerance: int = 1) -> int | None:
    """Dominant spacing between consecutive onsets (given as step numbers); see ``spike_period``."""
    s = np.asarray(onset_steps, dtype=np.int64).reshape(-1)
    if s.size < 3:
        return None
    gaps = np.diff(s)
    centres, exact = np.unique(gaps, return_counts=True)
    # Score of a centre g: number of gaps within g +- tolerance (sorted gaps -> two searchsorteds).
    sg = np.sort(gaps)
    grouped = np.searchsorted(sg, centres + tolerance, side="right") - np.searchsorted(
        sg, centres - tolerance, side="left"
    )
    best = grouped.max()
    # Among best-scoring centres: most exact matches, then the smallest gap.
    tied = np.flatnonzero(grouped == best)
    k = tied[np.lexsort((centres[tied], -exact[tied]))[0]]
    period = int(centres[k])
    if best < 2 or 2 * best < gaps.size:
        return None
    # A disjoint group (centre further than 2 * tolerance away) scoring as high: no dominant gap.
    if np.any(np.abs(centres[tied] - period) > 2 * tolerance):
        return None
    return period


def reads_probes(*columns: str) -> Callable[[MetricFn], MetricFn]:
    """Declare the probe columns a metric is computed from (``@reads_probes("sharpness")``
    under ``@METRICS.register``). This is the one statement of which figure needs which
    probe: validation reads it (an expectation on the metric in a case whose ``probes:``
    records none of these columns is an error naming the probe to add), and so does the
    unknown-theory warning (metrics read from the ``threshold`` column)."""
    def mark(fn: MetricFn) -> MetricFn:
        fn.probe_columns = tuple(columns)
        return fn
    return mark


def probe_columns(metric: str) -> tuple[str, ...]:
    """The probe columns ``metric`` is computed from (empty for one read from the history
    alone, or a user's metric that declares none)."""
    return tuple(getattr(METRICS.get(metric), "probe_columns", ()))


# ---------------------------------------------------------------------------------------------
# Built-in metrics
# ---------------------------------------------------------------------------------------------


def _finite(view: RunView) -> tuple[np.ndarray, np.ndarray]:
    """(positions, values) of the finite loss entries."""
    pos = np.flatnonzero(np.isfinite(view.loss))
    return pos, view.loss[pos]


@METRICS.register("final_loss")
def final_loss(view: RunView) -> float | None:
    """The last finite entry of the loss history (float): the loss at the last recorded step of a
    run that finished, or the last loss before blow-up for a diverged run. None when the history
    has no finite entry (empty, or every entry inf/nan)."""
    pos, _ = _finite(view)
    return float(view.loss[pos[-1]]) if pos.size else None


@METRICS.register("min_loss")
def min_loss(view: RunView) -> float | None:
    """The smallest finite entry of the loss history (float). None when the history has no finite
    entry."""
    _, vals = _finite(view)
    return float(vals.min()) if vals.size else None


@METRICS.register("min_loss_step")
def min_loss_step(view: RunView) -> int | None:
    """The optimizer step (read from ``steps``, not the array position) of the first entry equal to
    ``min_loss``; when the minimum is reached several times the earliest step is reported. None
    when the history has no finite entry."""
    pos, vals = _finite(view)
    return int(view.steps[pos[int(np.argmin(vals))]]) if vals.size else None


@METRICS.register("diverged")
def diverged(view: RunView) -> bool:
    """Whether the run diverged (bool), as decided by the runner and recorded in the history;
    passed through unchanged. Metrics never infer divergence themselves: other metrics simply
    ignore non-finite loss entries."""
    return bool(view.diverged)


@METRICS.register("divergence_step")
def divergence_step(view: RunView) -> int | None:
    """The optimizer step at which the runner declared divergence (int), passed through unchanged;
    None for a run that did not diverge."""
    return None if view.divergence_step is None else int(view.divergence_step)


@METRICS.register("late_instability")
def late_instability(view: RunView) -> float | None:
    """How far the loss climbs back after its best value, in decades:
    ``log10(max(L[i:]) / min_loss)``, where L is the sequence of finite losses, i the position
    of its first minimum and ``min_loss = L[i]``. It is 0 when the loss never rises above its
    minimum afterwards (a non-increasing curve, or a minimum at the last finite step), and e.g.
    9 for a loss that bottoms out at 1e-12 and later reaches 1e-3.

    A minimum of exactly 0 has no logarithm: it means the loss fell below what its dtype
    represents (a float32 loss underflows below ~1.4e-45) or fitted exactly, so how far it sat
    below the last representable value is not measurable. The rise is then measured from the
    smallest *positive* finite loss the run recorded: ``log10(max(L[i:]) / min(L[L > 0]))`` —
    a finite lower bound on the true rise, in the same units as for any other run (a float32
    loss that underflows to 0 from 1e-45 and comes back to 1e-3 scores 42, not the ~305 a
    float64 floor of 1e-308 would give, a number set by float64 and not by the run); 0 when no
    positive loss follows the zero, or the run recorded no positive loss at all.

    For a diverged run the non-finite tail is ignored, so the value describes the finite part
    of the run; divergence itself is reported by ``diverged``. None when there is no finite
    loss, or when the minimum is negative (a ratio of losses is then meaningless)."""
    _, vals = _finite(view)
    if vals.size == 0:
        return None
    i = int(np.argmin(vals))
    lo = float(vals[i])
    if lo < 0:
        return None
    hi = float(vals[i:].max())
    if lo == 0.0:
        positive = vals[vals > 0]
        if hi == 0.0 or positive.size == 0:
            return 0.0
        lo = float(positive.min())
    return max(0.0, math.log10(hi / lo))


@METRICS.register("spike_count")
def spike_count(view: RunView) -> int:
    """Number of loss-spike onsets in the recorded history, found by ``detect_spikes`` with the
    view's ``SpikeConfig`` (int; 0 for an empty history). A spike is a finite loss more than
    ``factor`` (3) times the median of the previous ``window`` (20) finite losses, after at least
    ``min_history`` (10) of them; an excursion above that threshold counts once however many steps
    it lasts, and a non-finite loss is never a spike (it is divergence)."""
    return int(view.spike_onsets.size)


@METRICS.register("spike_frequency")
def spike_frequency(view: RunView) -> float | None:
    """Spikes per 1000 recorded steps: ``1000 * spike_count / len(loss)`` (float), where
    ``len(loss)`` counts every recorded entry, including a non-finite last one. With a history
    logged every k optimizer steps this is per 1000 *records*, not per 1000 optimizer steps. None
    for an empty history."""
    n = view.loss.size
    if n == 0:
        return None
    return 1000.0 * int(view.spike_onsets.size) / n


def _spike_heights(view: RunView) -> list[float]:
    """Per spike, how far it climbs in decades: log10 of the highest finite loss of its
    excursion (from the onset until the loss is back at or below ``factor`` × its pre-spike
    level, or the next onset) over the pre-spike level — the detector's own baseline, the
    median of the ``window`` finite losses before the onset."""
    cfg, x = view.spike_config, view.loss
    onsets = [int(t) for t in view.spike_onsets]
    heights = []
    for i, t in enumerate(onsets):
        before = x[:t][np.isfinite(x[:t])][-int(cfg.window):]
        level = float(np.median(before))
        stop = min(_excursion_end(x, t + 1, cfg.factor * level), onsets[i + 1] if i + 1 < len(onsets) else x.size)
        segment = x[t:max(stop, t + 1)]
        peak = float(segment[np.isfinite(segment)].max())
        heights.append(math.log10(max(peak, LOSS_FLOOR) / max(level, LOSS_FLOOR)))
    return heights


@METRICS.register("spike_height_min")
def spike_height_min(view: RunView) -> float | None:
    """The smallest spike's height in decades over its pre-spike level (see
    :func:`_spike_heights`); None without spikes. A per-spike claim ("every spike climbs ≥ 3
    decades") that, unlike ``late_instability``, does not depend on where the run's lowest
    loss happens to fall."""
    heights = _spike_heights(view)
    return min(heights) if heights else None


@METRICS.register("spike_height_median")
def spike_height_median(view: RunView) -> float | None:
    """The median spike height in decades over its pre-spike level; None without spikes."""
    heights = _spike_heights(view)
    return float(np.median(heights)) if heights else None


@METRICS.register("spike_period")
def spike_period(view: RunView) -> int | None:
    """The dominant spacing between consecutive spike onsets, in optimizer steps (differences of
    ``steps`` at the onsets), or None when there is no dominant spacing. Needs at least 3 spikes
    (2 gaps). Each distinct gap g is scored by how many gaps lie within g +- ``period_tolerance``
    (1 step by default); the best-scoring g (ties: the one occurring exactly most often, then the
    smallest) is the period provided its group holds at least half of all gaps and at least 2 of
    them, and no other equally scoring g lies more than 2 x tolerance away (two separate equally
    common spacings are not a period). So gaps 32, 32, 31, 32, 33 give 32; gaps 32, 32 give 32;
    gaps 10, 50 or fewer than 3 spikes give None."""
    onsets = view.spike_onsets
    return spike_period_from_onsets(view.steps[onsets], int(view.spike_config.period_tolerance))


# ---------------------------------------------------------------------------------------------
# Curvature metrics (from probe columns; None when the case declares no such probes)
# ---------------------------------------------------------------------------------------------


def _probe_columns(view: RunView, *names: str) -> tuple[np.ndarray, ...] | None:
    probes = view.extra.get("probes") or {}
    if "step" not in probes or any(n not in probes for n in names):
        return None
    return (np.asarray(probes["step"], dtype=float),) + tuple(np.asarray(probes[n], dtype=float) for n in names)


def _late_rows(view: RunView, steps: np.ndarray) -> np.ndarray:
    """Probe rows in the late window: steps ≥ (1 − late_window) × the last recorded step."""
    fraction = float((view.extra.get("probe_options") or {}).get("late_window", 0.5))
    last = float(view.steps[-1]) if len(view.steps) else 0.0
    return steps >= (1.0 - fraction) * last


def _precond_ratio(view: RunView, column: str = "precond_sharpness") -> tuple[np.ndarray, np.ndarray] | None:
    """(probe steps, ``column`` / threshold); None without the columns."""
    cols = _probe_columns(view, column, "threshold")
    if cols is None:
        return None
    steps, value, threshold = cols
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, value / threshold


@METRICS.register("precond_sharpness_ratio")
@reads_probes("precond_sharpness", "threshold")
def precond_sharpness_ratio(view: RunView) -> float | None:
    """The median of λ₁(P⁻¹H) / threshold over the probes in the late window (the last
    ``late_window`` fraction of the run, default half): 1 at the Adaptive Edge of Stability
    (Cohen et al. 2022). None without ``precond_sharpness`` and ``threshold`` probes there."""
    found = _precond_ratio(view)
    if found is None:
        return None
    steps, ratio = found
    late = ratio[_late_rows(view, steps) & np.isfinite(ratio)]
    return float(np.median(late)) if late.size else None


def _upward_crossings(view: RunView, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the probe ``column`` rises through the threshold: (step of the first probe above
    it, step of the probe before, at or below it), over the probes where both are finite.
    None without the columns."""
    found = _precond_ratio(view, column)
    if found is None:
        return None
    steps, ratio = found
    ok = np.isfinite(ratio)
    steps, ratio = steps[ok], ratio[ok]
    up = np.flatnonzero((ratio[:-1] <= 1.0) & (ratio[1:] > 1.0))
    return steps[up + 1], steps[up]


@METRICS.register("threshold_crossings")
@reads_probes("precond_sharpness", "threshold")
def threshold_crossings(view: RunView) -> int | None:
    """How many times λ₁(P⁻¹H) rises from at or below the threshold to above it between
    consecutive probes."""
    found = _upward_crossings(view, "precond_sharpness")
    return None if found is None else int(found[0].size)


# Xiong et al. 2025's sequence, figure by figure, per spike: g²/v collapses, v decays like β₂ᵗ,
# λ₁(P⁻¹H) crosses the threshold, then the loss spikes as the directional curvature crosses it.


def _spike_steps(view: RunView) -> list[tuple[float, float]]:
    """(previous onset or −inf, onset) in optimizer steps, for every spike onset."""
    onsets = [float(s) for s in view.steps[view.spike_onsets]]
    return list(zip([-math.inf] + onsets[:-1], onsets))


def _lead_window(view: RunView) -> float:
    return float((view.extra.get("probe_options") or {}).get("lead_window", 50))


def _lead_times(view: RunView) -> list[float] | None:
    """Per spike: steps from the last upward crossing of λ₁(P⁻¹H) after the previous spike
    (or the run start) and strictly before the onset, to the onset; NaN when no crossing
    precedes it. A crossing at the onset's own probe is not a lead: the loss there has
    already spiked. None without the probes."""
    found = _upward_crossings(view, "precond_sharpness")
    if found is None:
        return None
    crossed = found[0]
    leads = []
    for previous, onset in _spike_steps(view):
        inside = crossed[(crossed > previous) & (crossed < onset)]
        leads.append(onset - float(inside.max()) if inside.size else math.nan)
    return leads


def _curvature_crosses_at(view: RunView, onset: float) -> bool:
    """Whether the preconditioned directional curvature rises through the threshold at the
    spike: seen at a probe no earlier than ``spike_config.window`` steps before the onset
    (the detector compares the loss with its median over that many steps, so a rise that
    starts inside them is this spike's), and from a probe at or before the onset (so at the
    latest by the first probe after it: the probes sample every few steps, and the onset is
    where an already growing loss passes factor × its median). Measured on the shipped
    ``xiong_adam_spike``: 11 steps before to 2 after."""
    found = _upward_crossings(view, "precond_directional_curvature")
    if found is None:
        return False
    at, before = found
    tolerance = float(view.spike_config.window)
    return bool(np.any((at >= onset - tolerance) & (before <= onset)))


def _pre_spike_rows(view: RunView, steps: np.ndarray) -> list[np.ndarray]:
    """Per spike, the probe rows of its pre-spike window: the ``lead_window`` steps before
    the onset (the onset's own probe excluded), after the previous onset."""
    window = _lead_window(view)
    return [(steps >= onset - window) & (steps > previous) & (steps < onset)
            for previous, onset in _spike_steps(view)]


def _median_over_spikes(values: list[float]) -> float | None:
    finite = [x for x in values if math.isfinite(x)]
    return float(np.median(finite)) if finite else None


@METRICS.register("spikes_led_by_crossing")
@reads_probes("precond_sharpness", "threshold", "precond_directional_curvature")
def spikes_led_by_crossing(view: RunView) -> float | None:
    """The fraction of spikes that follow Xiong et al. 2025's sequence: λ₁(P⁻¹H) crossed the
    threshold (from at or below to above, between consecutive probes) at most ``lead_window``
    steps before the onset — its ``spike_lead_time`` — and the preconditioned directional
    curvature crosses it at the spike (from ``spike_config.window`` steps before the onset to
    the first probe after it; see :func:`_curvature_crosses_at`). Being above the threshold
    without a crossing does not count. None without spikes or without the probes."""
    leads = _lead_times(view)
    if not leads or "precond_directional_curvature" not in (view.extra.get("probes") or {}):
        return None
    window = _lead_window(view)
    led = [lead <= window and _curvature_crosses_at(view, onset)
           for lead, (_, onset) in zip(leads, _spike_steps(view))]  # NaN <= window is False
    return float(np.mean(led))


@METRICS.register("spike_lead_time")
@reads_probes("precond_sharpness", "threshold")
def spike_lead_time(view: RunView) -> float | None:
    """The median over spikes of the steps from the last upward crossing of λ₁(P⁻¹H) through
    the threshold before the spike (searching back to the previous spike or the run start)
    to the onset; not limited to ``lead_window``. Spikes without a crossing are left out
    (``spikes_led_by_crossing`` counts them); None when no spike has one."""
    return _median_over_spikes(_lead_times(view) or [])


@METRICS.register("sharpness_rise")
@reads_probes("sharpness")
def sharpness_rise(view: RunView) -> float | None:
    """λ₁(H) at the last probe over λ₁(H) at the first probe of the late window: above 1 when
    the raw sharpness keeps rising while λ₁(P⁻¹H) sits at the threshold (Cohen et al. Fig. 8)."""
    cols = _probe_columns(view, "sharpness")
    if cols is None:
        return None
    steps, lam = cols
    late = lam[_late_rows(view, steps) & np.isfinite(lam)]
    return float(late[-1] / late[0]) if late.size >= 2 and late[0] > 0 else None


@METRICS.register("min_g2_over_v")
@reads_probes("g2_over_v_median")
def min_g2_over_v(view: RunView) -> float | None:
    """Xiong et al.'s g²/v collapse before a spike: per spike, the smallest probed median of
    g²/v in its pre-spike window (the ``lead_window`` steps before the onset, after the
    previous one); the median over spikes. Not the whole-run minimum, which lands at the loss
    minimum. None without spikes, or without a probe in any window."""
    cols = _probe_columns(view, "g2_over_v_median")
    if cols is None:
        return None
    steps, ratio = cols
    minima = []
    for rows in _pre_spike_rows(view, steps):
        values = ratio[rows & np.isfinite(ratio)]
        minima.append(float(values.min()) if values.size else math.nan)
    return _median_over_spikes(minima)


@METRICS.register("v_decay_rate")
@reads_probes("v_mean")
def v_decay_rate(view: RunView) -> float | None:
    """Per-step ratio v_{t+1}/v_t of the optimizer's mean raw second moment (probe
    ``second_moment_mean``) before a spike: per spike, the median over consecutive probes in
    its pre-spike window of (v_b/v_a)^(1/(b−a)); the median over spikes. Once g² ≪ v,
    v_{t+1} = β₂v_t + (1−β₂)g_t² gives β₂ + (1−β₂)·mean g²/mean v ≈ β₂ (Xiong et al.: v
    decays like β₂ᵗ). None without spikes or the probe."""
    cols = _probe_columns(view, "v_mean")
    if cols is None:
        return None
    steps, v = cols
    rates = []
    for rows in _pre_spike_rows(view, steps):
        keep = rows & np.isfinite(v) & (v > 0)
        b_steps, b_v = steps[keep], v[keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_step = (b_v[1:] / b_v[:-1]) ** (1.0 / np.diff(b_steps))
        rates.append(float(np.median(per_step)) if per_step.size else math.nan)
    return _median_over_spikes(rates)


# ---------------------------------------------------------------------------------------------
# Metrics of the periodic ``eval:`` loss (full training set or held-out split)
# ---------------------------------------------------------------------------------------------
# The eval loss is sparse in time: ``view.extra["evals"]`` holds ``step`` (the steps it was
# taken at, before that step's update, plus ``steps`` — after the last update — for a run that
# did not diverge) and ``eval_loss``. Each metric is ``None`` for a case without ``eval:``.


def _finite_evals(view: RunView) -> tuple[np.ndarray, np.ndarray] | None:
    evals = view.extra.get("evals") or {}
    if len(evals.get("step", ())) == 0:
        return None
    steps, loss = np.asarray(evals["step"], dtype=float), np.asarray(evals["eval_loss"], dtype=float)
    keep = np.isfinite(loss)
    return steps[keep], loss[keep]


@METRICS.register("eval_final_loss")
def eval_final_loss(view: RunView) -> float | None:
    """The last finite eval loss (after the final update when the run did not diverge)."""
    found = _finite_evals(view)
    return float(found[1][-1]) if found is not None and found[1].size else None


@METRICS.register("eval_min_loss")
def eval_min_loss(view: RunView) -> float | None:
    """The smallest finite eval loss."""
    found = _finite_evals(view)
    return float(found[1].min()) if found is not None and found[1].size else None


@METRICS.register("eval_min_loss_step")
def eval_min_loss_step(view: RunView) -> int | None:
    """The step of the first smallest eval loss."""
    found = _finite_evals(view)
    return int(found[0][int(np.argmin(found[1]))]) if found is not None and found[1].size else None


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _json_safe(name: str, value: Any) -> bool | int | float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _json_safe(name, value.item())
    raise TypeError(
        f"metric {name!r} returned {type(value).__name__}; metrics must return float, int, bool or None"
    )


def compute_metrics(view: RunView, names: Iterable[str] | None = None) -> dict[str, bool | int | float | None]:
    """Evaluate metrics on ``view``: the given ``names`` in that order, or every metric registered
    in :data:`METRICS` (sorted by name) when ``names`` is None.

    Values are JSON-safe Python scalars: numpy scalars become ``bool``/``int``/``float``, and a
    non-finite float (inf/nan) becomes ``None``, which uniformly means "undefined for this run", so
    ``json.dumps(result, allow_nan=False)`` always works. An unknown name raises
    :class:`~stability_bench.registry.UnknownNameError`; a metric returning another type raises
    ``TypeError``.
    """
    selected = METRICS.names() if names is None else list(names)
    return {name: _json_safe(name, METRICS.get(name)(view)) for name in selected}
