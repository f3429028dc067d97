"""Figures of a case's runs (matplotlib, Agg; PNG and SVG).

Four kinds, each a function returning a matplotlib ``Figure`` (or None when it has nothing
to show) and saved by :func:`case_figures`:

``training`` — panels stacked over the step axis, one colour per optimizer entry and sweep
  point, seeds as thin lines of that colour. Always: the loss (log scale; spike onsets as
  triangles; divergence as an ✕ and a dotted vertical line) and the gradient norm. Then one
  panel for each probe group some run of the case recorded (:data:`PROBE_GROUPS`, in that
  order): λ₁(P⁻¹H), λ₁(H), directional curvature, median g²/v, fraction of g²/v below its
  cut-off, gradient alignment. The stability threshold is dashed in the curvature panels
  (Cohen et al. 2022, Fig. 1, 3, 8), whose axis is logarithmic when the values span more
  than a decade (``symlog`` when some are negative). Last, the learning rate when a run's
  changed during training (a ``schedule:``). Panels = 2 + the groups present (+ 1).
``spikes`` — a zoom on the largest spikes over all the case's runs, every seed and sweep
  point (Fig. 9 of Cohen et al. 2022; Xiong et al. 2025): one column per spike (at most
  ``max_spikes``), rows: loss, gradient norm, then the probe groups those runs recorded; the
  onset is a red vertical line. Only for a case with a spike. Panels = columns × rows.
``sweep`` — the final loss against each swept hyperparameter (Fig. 2: which η diverged):
  one panel per (optimizer class, numeric hyperparameter) that takes two or more values
  among runs whose other hyperparameters are equal; diverged runs are red ✕, runs theory
  says must diverge get a red ring, and the critical value where the threshold meets the
  known sharpness is a dashed line. Only for a case with a sweep.
``critical_lr`` — each critical-lr search of the case, per seed and device: its probes'
  learning rates (stable dots, diverged ✕), the edge interval and the critical lr, on a log
  axis. Only for a case with searches.

Every saved file records its panel count (``len(fig.axes)``): PNG text chunk
``stability-bench:panels``, SVG ``<dc:description>`` ``panels=N``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from stability_bench.metrics import detect_spikes
from stability_bench.reports import require_matplotlib
from stability_bench.reports.collect import (ReportRun, Series, _fmt_value, _key, optimizer_summary,
                                             safe_name, series_of, short_class)

FORMATS = ("png", "svg")
DPI = 110
PANELS_KEY = "stability-bench:panels"


@dataclass(frozen=True)
class ProbeGroup:
    """One probe panel: the columns it draws (the first is solid, the next dashed)."""

    name: str
    columns: tuple[str, ...]
    label: str
    threshold: str = "no"       # "yes" | "no" | "without_precond": draw the threshold line
    curvature: bool = False     # eigenvalues and curvatures: a log axis when they span > 1 decade


PROBE_GROUPS: tuple[ProbeGroup, ...] = (
    ProbeGroup("precond_sharpness", ("precond_sharpness",), r"$\lambda_1(P^{-1}H)$", "yes", True),
    ProbeGroup("sharpness", ("sharpness",), r"$\lambda_1(H)$", "without_precond", True),
    ProbeGroup("directional_curvature", ("precond_directional_curvature", "directional_curvature"),
               "directional\ncurvature", "yes", True),
    ProbeGroup("g2_over_v_median", ("g2_over_v_median",), r"median $g^2/v$"),
    ProbeGroup("g2_over_v_frac_below", ("g2_over_v_frac_below",), "fraction of\n" r"$g^2/v$ below cut-off"),
    ProbeGroup("grad_alignment", ("grad_alignment",), "gradient\nalignment"),
)

_COLUMN_LABELS = {
    "precond_directional_curvature": r"$\hat g^\top P^{-1}H\hat g$ (preconditioned)",
    "directional_curvature": r"$\hat g^\top H \hat g$",
}


@dataclass
class FigureInfo:
    kind: str                   # training | spikes | sweep
    case: str
    title: str
    panels: int
    files: list[Path] = field(default_factory=list)
    run_id: str | None = None   # the run of a spikes figure's largest spike
    note: str = ""
    run_ids: list[str] = field(default_factory=list)   # every run a spikes figure zooms into


# ------------------------------------------------------------------------------ data
def _array(values: Iterable[Any] | None) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _history(run: ReportRun, column: str) -> tuple[np.ndarray, np.ndarray]:
    h = run.result.history
    y = _array(h.get(column))
    x = _array(h.get("step", range(len(y))))
    n = min(len(x), len(y))
    return x[:n], y[:n]


def _probe(run: ReportRun, column: str) -> tuple[np.ndarray, np.ndarray]:
    p = run.result.probes or {}
    if column not in p or "step" not in p:
        return np.zeros(0), np.zeros(0)
    x, y = _array(p["step"]), _array(p[column])
    n = min(len(x), len(y))
    return x[:n], y[:n]


def _probe_in_window(run: ReportRun, column: str, lo: float, hi: float) -> bool:
    x, y = _probe(run, column)
    return bool(np.isfinite(y[(x >= lo) & (x <= hi)]).any())


def has_probe(run: ReportRun, column: str) -> bool:
    """The run recorded ``column`` with at least one finite value."""
    return bool(np.isfinite(_probe(run, column)[1]).any())


def probe_groups(runs: Sequence[ReportRun]) -> list[ProbeGroup]:
    """The probe panels the runs call for, in :data:`PROBE_GROUPS` order."""
    return [g for g in PROBE_GROUPS if any(has_probe(r, c) for r in runs for c in g.columns)]


def has_schedule(runs: Sequence[ReportRun]) -> bool:
    """Some run's learning rate changed during training (a ``schedule:``): the recorded
    ``lr`` column, one value per step, is not constant."""
    for run in runs:
        lr = _history(run, "lr")[1]
        lr = lr[np.isfinite(lr)]
        if lr.size > 1 and not np.all(lr == lr[0]):
            return True
    return False


def spikes_of(run: ReportRun) -> np.ndarray:
    """Array positions of the spike onsets in the run's loss (the case's detector settings)."""
    return detect_spikes(_history(run, "loss")[1], run.spike_config)


def _threshold(run: ReportRun) -> tuple[np.ndarray, np.ndarray] | float | None:
    """The threshold as a probe column (step, value) when recorded, else theory's constant."""
    x, y = _probe(run, "threshold")
    if np.isfinite(y).any():
        return x, y
    t = (run.result.theory or {}).get("threshold")
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else None


def _positive_scale(ax, values: Iterable[np.ndarray], min_ratio: float = 1.0) -> None:
    """Log y scale when every finite value is positive (and they span ``min_ratio``)."""
    finite = [v[np.isfinite(v)] for v in values]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if finite.size and (finite > 0).all() and finite.max() >= min_ratio * finite.min():
        ax.set_yscale("log")


def decades(values: Iterable[np.ndarray]) -> float:
    """How many decades the finite non-zero magnitudes of ``values`` span (0 without two)."""
    finite = [np.abs(v[np.isfinite(v)]) for v in values]
    mags = np.concatenate(finite) if finite else np.zeros(0)
    mags = mags[mags > 0]
    return float(np.log10(mags.max() / mags.min())) if mags.size >= 2 else 0.0


def _decade_scale(ax, values: Iterable[np.ndarray]) -> None:
    """A curvature panel's y axis: logarithmic when the values span more than a decade —
    ``log`` when all are positive, else ``symlog`` (curvature can be negative), linear
    within a decade of the smallest magnitude so a sign change stays visible."""
    values = [np.asarray(v, dtype=float) for v in values]
    if decades(values) <= 1.0:
        return
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    if (finite > 0).all():
        ax.set_yscale("log")
    else:
        mags = np.abs(finite[finite != 0])
        ax.set_yscale("symlog", linthresh=float(mags.min()))


# --------------------------------------------------------------------------- drawing
def _new_figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _line_style(series: Series) -> dict:
    return {"lw": 0.7, "alpha": 0.75} if len(series.runs) > 1 else {"lw": 1.2, "alpha": 0.95}


def _mark_divergence(ax, run: ReportRun, colour, y: np.ndarray | None = None, x: np.ndarray | None = None,
                     window: tuple[float, float] | None = None) -> None:
    r = run.result
    if not r.diverged or r.divergence_step is None:
        return
    if window is not None and not window[0] <= r.divergence_step <= window[1]:
        return
    ax.axvline(r.divergence_step, color=colour, ls=":", lw=1.0)
    if y is not None and x is not None:
        before = np.flatnonzero((x <= r.divergence_step) & np.isfinite(y))
        if before.size:
            ax.scatter([r.divergence_step], [y[before[-1]]], marker="X", s=70, color=colour,
                       edgecolors="black", linewidths=0.6, zorder=5)


def _draw_threshold(ax, run: ReportRun, colour, x_window: tuple[float, float] | None = None) -> bool:
    t = _threshold(run)
    if t is None:
        return False
    if isinstance(t, float):
        ax.axhline(t, color=colour, ls="--", lw=1.0, alpha=0.9)
    else:
        tx, ty = t
        if x_window is not None:
            keep = (tx >= x_window[0]) & (tx <= x_window[1])
            tx, ty = tx[keep], ty[keep]
        ax.plot(tx, ty, color=colour, ls="--", lw=1.0, alpha=0.9, drawstyle="steps-post")
    return True


def _probe_panel(ax, group: ProbeGroup, items: list[tuple[ReportRun, Any, dict]], all_runs_have_precond: dict,
                 window: tuple[float, float] | None = None, legend: bool = True) -> bool:
    """Draw one probe group for (run, colour, style) items; returns whether a threshold was drawn."""
    drew_threshold = False
    values = []
    for run, colour, style in items:
        for i, column in enumerate(group.columns):
            x, y = _probe(run, column)
            if window is not None:
                keep = (x >= window[0]) & (x <= window[1])
                x, y = x[keep], y[keep]
            if not np.isfinite(y).any():
                continue
            values.append(y)
            ax.plot(x, y, color=colour, ls="-" if i == 0 else "--", lw=style["lw"], alpha=style["alpha"],
                    marker="." if len(x) <= 60 else None, ms=3)
        wants = group.threshold == "yes" or (group.threshold == "without_precond"
                                             and not all_runs_have_precond.get(run.result.run_id))
        if wants and any(has_probe(run, c) for c in group.columns):
            drew = _draw_threshold(ax, run, colour, window)
            drew_threshold |= drew
            t = _threshold(run) if drew else None
            if t is not None:  # the axis must show the line too
                values.append(np.array([t]) if isinstance(t, float) else t[1])
    if group.curvature:
        _decade_scale(ax, values)
    else:
        _positive_scale(ax, values, min_ratio=10.0)
    ax.set_ylabel(group.label, fontsize=8)
    if legend and len(group.columns) > 1:
        present = [c for c in group.columns if any(has_probe(r, c) for r, _, _ in items)]
        if len(present) > 1:
            from matplotlib.lines import Line2D

            ax.legend([Line2D([], [], color="0.3", ls="-" if i == 0 else "--") for i, _ in enumerate(present)],
                      [_COLUMN_LABELS.get(c, c) for c in present], fontsize=6, loc="best")
    return drew_threshold


def smoothing_window(run: ReportRun) -> int | None:
    """Steps of the running median drawn over a minibatch run's loss: one epoch (odd, at
    least 5), so the epoch's batch-to-batch noise averages out and the trend shows; None
    for full-batch runs, whose loss is drawn as is."""
    per_epoch = (run.result.theory or {}).get("batches_per_epoch") or 1
    if per_epoch <= 1:
        return None
    return max(5, int(per_epoch) | 1)


def running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Centred running median over ``window`` (odd) entries, ignoring non-finite ones and
    shrinking at the ends: unlike an EMA it does not smear a spike into the trend."""
    half = window // 2
    padded = np.concatenate([np.full(half, np.nan), np.where(np.isfinite(values), values, np.nan),
                             np.full(half, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN window gives NaN
        return np.nanmedian(windows, axis=1)


def _draw_loss(ax, run: ReportRun, x: np.ndarray, loss: np.ndarray, colour, style: dict) -> None:
    """The loss; for minibatch runs faint, under its running median (the trend), and the
    ``eval:`` losses as dots joined by a dashed line."""
    finite = np.where(np.isfinite(loss), loss, np.nan)
    window = smoothing_window(run)
    if window is None:
        ax.plot(x, finite, color=colour, **style)
    else:
        ax.plot(x, finite, color=colour, lw=0.5, alpha=0.25)
        ax.plot(x, running_median(loss, window), color=colour, **style)
    evals = getattr(run.result, "evals", None) or {}
    if evals.get("step"):
        ax.plot(_array(evals["step"]), _array(evals["eval_loss"]), color=colour, ls="--", lw=0.9,
                marker="o", ms=3, alpha=0.9)


def training_figure(runs: Sequence[ReportRun], title: str | None = None):
    """Loss, gradient norm and the probe panels the runs recorded, against the step."""
    runs = list(runs)
    groups = probe_groups(runs)
    scheduled = has_schedule(runs)
    n = 2 + len(groups) + scheduled
    fig = _new_figure(11.0, 1.4 + 2.2 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    series = series_of(runs)
    colours = _colours(len(series))
    has_precond = {r.result.run_id: has_probe(r, "precond_sharpness") for r in runs}
    loss_values, grad_values, lr_values = [], [], []
    any_spike = any_diverged = any_threshold = False
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for s, colour in zip(series, colours):
        style = _line_style(s)
        for run in s.runs:
            x, loss = _history(run, "loss")
            loss_values.append(loss)
            _draw_loss(axes[0], run, x, loss, colour, style)
            onsets = spikes_of(run)
            if onsets.size:
                any_spike = True
                axes[0].scatter(x[onsets], loss[onsets], marker="^", s=16, color=colour,
                                edgecolors="black", linewidths=0.4, zorder=4)
            gx, grad = _history(run, "grad_norm")
            grad_values.append(grad)
            axes[1].plot(gx, np.where(np.isfinite(grad), grad, np.nan), color=colour, **style)
            for ax, (ax_x, ax_y) in ((axes[0], (x, loss)), (axes[1], (gx, grad))):
                _mark_divergence(ax, run, colour, ax_y, ax_x)
            any_diverged |= bool(run.result.diverged)
        for ax, group in zip(axes[2:], groups):
            any_threshold |= _probe_panel(ax, group, [(r, colour, style) for r in s.runs], has_precond)
        if scheduled:
            for run in s.runs:
                lx, lr = _history(run, "lr")
                axes[-1].plot(lx, lr, color=colour, drawstyle="steps-post", **style)
                lr_values.append(lr)
        seeds = sorted({r.result.seed for r in s.runs})
        handles.append(Line2D([], [], color=colour, lw=1.5))
        labels.append(s.label + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else f" (seed {seeds[0]})"))
    _positive_scale(axes[0], loss_values)
    _positive_scale(axes[1], grad_values, min_ratio=10.0)
    axes[0].set_ylabel("loss", fontsize=9)
    axes[1].set_ylabel(r"gradient norm $\|g\|$", fontsize=9)
    if scheduled:
        _positive_scale(axes[-1], lr_values, min_ratio=10.0)
        axes[-1].set_ylabel("learning rate\n(schedule)", fontsize=8)
    axes[-1].set_xlabel("step")
    if any_spike:
        handles.append(Line2D([], [], ls="", marker="^", color="0.5", markeredgecolor="black"))
        labels.append("spike onset")
    if any_diverged:
        handles.append(Line2D([], [], ls=":", marker="X", color="0.5", markeredgecolor="black"))
        labels.append("diverged")
    if any_threshold:
        handles.append(Line2D([], [], ls="--", color="0.3"))
        labels.append("stability threshold")
    if any(smoothing_window(r) for r in runs):
        handles.append(Line2D([], [], color="0.5", lw=0.5, alpha=0.35))
        labels.append("minibatch loss (line: median over an epoch)")
    if any((getattr(r.result, "evals", None) or {}).get("step") for r in runs):
        handles.append(Line2D([], [], ls="--", marker="o", ms=3, color="0.3"))
        labels.append("eval loss")
    axes[0].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7,
                   frameon=False, ncols=1 if len(labels) <= 16 else 2)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.25)
        ax.tick_params(labelsize=8)
    case = runs[0].result.case if runs else ""
    fig.suptitle(title or f"{case} — {optimizer_summary(runs)}", fontsize=10)
    return fig


def zoom_candidates(runs: Sequence[ReportRun]) -> list[ReportRun]:
    """The runs whose spikes a case's zoom may show: those with a spike that did not diverge
    (a diverging run's growth reads as one spike), else every run with a spike."""
    spiking = [run for run in runs if spikes_of(run).size]
    calm = [run for run in spiking if not run.result.diverged]
    return calm or spiking


def spike_size(run: ReportRun, pos: int) -> float:
    """How large the spike starting at array position ``pos`` is: the highest finite loss
    of its excursion (the detector's window after the onset) over the median of the
    ``window`` finite losses before it — the ratio the detector tests, at the peak."""
    _, loss = _history(run, "loss")
    window = int(run.spike_config.window)
    before = loss[max(0, pos - 4 * window):pos]
    before = before[np.isfinite(before)][-window:]
    after = loss[pos:pos + window + 1]
    after = after[np.isfinite(after)]
    if not before.size or not after.size:
        return 0.0
    base = float(np.median(before))
    return float(after.max() / base) if base > 0 else math.inf


def largest_spikes(runs: Sequence[ReportRun], count: int) -> list[tuple[ReportRun, int, float]]:
    """The ``count`` largest spikes over all ``runs`` (every seed and sweep point): (run,
    array position of the onset, :func:`spike_size`), largest first; ties in run order."""
    found = [(run, int(pos), spike_size(run, int(pos))) for run in runs for pos in spikes_of(run)]
    return sorted(found, key=lambda item: -item[2])[:count]


def spikes_figure(runs: ReportRun | Sequence[ReportRun], max_spikes: int = 3, before: int | None = None,
                  after: int | None = None, title: str | None = None):
    """A zoom on the ``max_spikes`` largest spikes over ``runs`` (one run, or a case's runs:
    every seed); one column per spike, rows: loss, gradient norm, then the probe groups the
    runs shown recorded. None when no run has a spike."""
    runs = [runs] if isinstance(runs, ReportRun) else list(runs)
    shown = largest_spikes(runs, max_spikes)
    if not shown:
        return None
    shown_runs = list(dict.fromkeys(id(r) for r, _, _ in shown))
    by_id = {id(r): r for r, _, _ in shown}
    groups = probe_groups([by_id[i] for i in shown_runs])
    rows, cols = 2 + len(groups), len(shown)
    fig = _new_figure(max(7.0, 3.6 * cols + 1.2), 1.4 + 1.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    label = {id(run): s.label for s in series_of(runs) for run in s.runs}
    colours = dict(zip(shown_runs, _colours(len(shown_runs))))
    style = {"lw": 1.1, "alpha": 0.95}
    has_precond = {by_id[i].result.run_id: has_probe(by_id[i], "precond_sharpness") for i in shown_runs}
    for j, (run, pos, size) in enumerate(shown):
        colour = colours[id(run)]
        window = int(run.spike_config.window)
        lo_steps = 2 * window if before is None else before
        hi_steps = window if after is None else after
        x, loss = _history(run, "loss")
        _, grad = _history(run, "grad_norm")
        onsets = spikes_of(run)
        onset = float(x[pos])
        lo, hi = onset - lo_steps, onset + hi_steps
        keep = (x >= lo) & (x <= hi)
        for i, (values, name) in enumerate(((loss, "loss"), (grad, r"$\|g\|$"))):
            ax = axes[i, j]
            ax.plot(x[keep], np.where(np.isfinite(values[keep]), values[keep], np.nan), color=colour, **style)
            _positive_scale(ax, [values[keep]], min_ratio=1.0 if i == 0 else 10.0)
            if i == 0:
                near = onsets[(x[onsets] >= lo) & (x[onsets] <= hi)]
                ax.scatter(x[near], loss[near], marker="^", s=22, color=colour, edgecolors="black",
                           linewidths=0.4, zorder=4)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
            _mark_divergence(ax, run, "black", values, x, window=(lo, hi))
        for ax, group in zip(axes[2:, j], groups):
            _probe_panel(ax, group, [(run, colour, style)], has_precond, window=(lo, hi), legend=j == 0)
            if j:
                ax.set_ylabel("")
            if not any(_probe_in_window(run, c, lo, hi) for c in group.columns):
                ax.text(0.5, 0.5, "no probe in this window", transform=ax.transAxes, ha="center",
                        va="center", fontsize=7, color="0.4")
        for ax in axes[:, j]:
            ax.axvline(onset, color="red", lw=0.9, alpha=0.8)
            ax.set_xlim(max(lo, float(x[0])), min(hi, float(x[-1])))
            ax.grid(True, alpha=0.25)
            ax.tick_params(labelsize=7)
        axes[0, j].set_title(f"{label[id(run)]} seed {run.result.seed}\nstep {int(onset)}: "
                             f"{size:.3g}× its median", fontsize=8)
        axes[-1, j].set_xlabel("step", fontsize=8)
    total = sum(spikes_of(r).size for r in runs)
    case = runs[0].result.case
    fig.suptitle(title or (f"{case} — the {len(shown)} largest spike{'s' if len(shown) > 1 else ''} of {total} "
                           f"over {len(runs)} run{'s' if len(runs) > 1 else ''} (red: onset)"), fontsize=10)
    return fig


def critical_lr_figure(searches: Sequence[Any], title: str | None = None):
    """The critical-lr searches of a case: one column per search (optimizer, seed, device),
    its probes' learning rates as dots (stable) and ✕ (diverged) on a log axis, the edge
    interval as a bar and the critical lr as a diamond. None without a search."""
    searches = [s for s in searches if s.found]
    if not searches:
        return None
    from matplotlib.lines import Line2D

    fig = _new_figure(max(6.0, 0.9 * len(searches) + 3.0), 4.2)
    ax = fig.subplots()
    optimizers = list(dict.fromkeys(s.optimizer for s in searches))
    colours = dict(zip(optimizers, _colours(len(optimizers))))
    for i, s in enumerate(searches):
        found, colour = s.found, colours[s.optimizer]
        probes = [(float(lr), bool(d)) for lr, d in (found.get("probes") or [])]
        stable = [lr for lr, d in probes if not d]
        diverged = [lr for lr, d in probes if d]
        ax.scatter([i] * len(stable), stable, marker="o", s=18, color=colour, zorder=3)
        ax.scatter([i] * len(diverged), diverged, marker="x", s=24, color="red", zorder=3)
        if found.get("lower") is not None and found.get("upper") is not None:
            ax.plot([i, i], [found["lower"], found["upper"]], color=colour, lw=5, alpha=0.5,
                    solid_capstyle="butt")
        if found.get("value") is not None:
            ax.scatter([i], [found["value"]], marker="D", s=40, color=colour, edgecolors="black", zorder=4)
    ax.set_yscale("log")
    ax.set_xticks(range(len(searches)), [f"{s.optimizer}\nseed {s.seed}" + (f"\n{s.device}" if s.device != "cpu"
                                                                             else "") for s in searches],
                  fontsize=7)
    ax.set_xlim(-0.6, len(searches) - 0.4)
    ax.set_ylabel("learning rate")
    ax.grid(True, which="major", alpha=0.25)
    handles = [Line2D([], [], ls="", marker="o", color="0.4"), Line2D([], [], ls="", marker="x", color="red"),
               Line2D([], [], lw=5, alpha=0.5, color="0.4"),
               Line2D([], [], ls="", marker="D", color="0.4", markeredgecolor="black")]
    ax.legend(handles, ["probe: stable", "probe: diverged", "edge interval", "critical lr"], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title or f"{searches[0].case} — critical learning rate per seed", fontsize=10)
    return fig


@dataclass
class SweepPanel:
    optimizer_class: str
    param: str
    lines: list[list[ReportRun]]     # runs sharing the other hyperparameters, one line each


def sweep_panels(runs: Sequence[ReportRun]) -> list[SweepPanel]:
    """(optimizer class, numeric hyperparameter) pairs that take ≥ 2 values among runs whose
    other hyperparameters are equal."""
    by_class: dict[str, list[ReportRun]] = {}
    for run in runs:
        by_class.setdefault(run.result.optimizer_class, []).append(run)
    panels = []
    for cls, members in by_class.items():
        names = list(dict.fromkeys(n for m in members for n in m.result.params))
        for p in names:
            values = [m.result.params.get(p) for m in members]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                continue
            lines: dict[str, list[ReportRun]] = {}
            for m in members:
                others = _key({n: m.result.params.get(n) for n in names if n != p})
                lines.setdefault(others, []).append(m)
            swept = [line for line in lines.values() if len({_key(m.result.params[p]) for m in line}) >= 2]
            if swept:
                panels.append(SweepPanel(cls, p, swept))
    return panels


def _critical_value(line: list[ReportRun], param: str) -> float | None:
    """Where theory's threshold meets the known sharpness, for a threshold c/η in η = lr."""
    if param != "lr":
        return None
    consts, sharp = set(), set()
    for run in line:
        t, s = run.result.theory.get("threshold"), run.result.theory.get("sharpness")
        if not isinstance(t, (int, float)) or not isinstance(s, (int, float)) or s <= 0:
            return None
        consts.add(round(t * run.result.params["lr"], 9))
        sharp.add(s)
    if len(consts) != 1 or len(sharp) != 1:
        return None
    return consts.pop() / sharp.pop()


def sweep_figure(runs: Sequence[ReportRun], metric: str = "final_loss", title: str | None = None):
    """The ``metric`` of each run against each swept hyperparameter; None without a sweep."""
    panels = sweep_panels(runs)
    if not panels:
        return None
    fig = _new_figure(max(5.0, 4.6 * len(panels)), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    from matplotlib.lines import Line2D

    legend_needed = {"diverged": False, "theory": False, "critical": False}
    for ax, panel in zip(axes, panels):
        values = sorted({float(m.result.params[panel.param]) for line in panel.lines for m in line})
        index = {v: i for i, v in enumerate(values)}
        colours = _colours(len(panel.lines))
        ys = []
        for line, colour in zip(panel.lines, colours):
            pts = sorted(line, key=lambda m: (float(m.result.params[panel.param]), m.result.seed))
            xs = np.array([index[float(m.result.params[panel.param])] for m in pts], dtype=float)
            y = np.array([np.nan if m.result.metrics.get(metric) is None else float(m.result.metrics[metric])
                          for m in pts])
            y = np.where(y > 0, y, np.nan) if metric.endswith("loss") else y
            ys.append(y)
            ax.plot(xs, y, color=colour, lw=0.8, alpha=0.6)
            diverged = np.array([bool(m.result.diverged) for m in pts])
            ax.scatter(xs[~diverged], y[~diverged], marker="o", s=30, color=colour, zorder=3)
            ax.scatter(xs[diverged], y[diverged], marker="X", s=80, color="red", edgecolors="black",
                       linewidths=0.5, zorder=4)
            legend_needed["diverged"] |= bool(diverged.any())
            predicted = np.array([m.result.theory.get("predicted_diverged") is True for m in pts])
            if predicted.any():
                ax.scatter(xs[predicted], y[predicted], marker="o", s=190, facecolors="none",
                           edgecolors="red", linewidths=1.0, zorder=2)
                legend_needed["theory"] = True
            crit = _critical_value(line, panel.param)
            if crit is not None:
                pos = float(np.interp(crit, values, np.arange(len(values)))) if len(values) > 1 else 0.0
                if values[0] <= crit <= values[-1]:
                    ax.axvline(pos, color=colour if len(panel.lines) > 1 else "black", ls="--", lw=1.0)
                    ax.annotate(f"{panel.param} = {crit:.4g}", (pos, 0.5), xycoords=("data", "axes fraction"),
                                rotation=90, ha="center", va="center", fontsize=7,
                                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
                    legend_needed["critical"] = True
        _positive_scale(ax, ys, min_ratio=100.0)
        ax.set_xticks(range(len(values)), [_fmt_value(v) for v in values], fontsize=8, rotation=30)
        ax.set_xlim(-0.5, len(values) - 0.5)
        entries = sorted({m.result.optimizer for line in panel.lines for m in line})
        ax.set_title(f"{short_class(panel.optimizer_class)} ({', '.join(entries)})", fontsize=8)
        ax.set_xlabel(panel.param)
        ax.grid(True, alpha=0.25)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(metric.replace("_", " "))
    handles, labels = [Line2D([], [], ls="", marker="o", color="0.4")], ["finished"]
    if legend_needed["diverged"]:
        handles.append(Line2D([], [], ls="", marker="X", color="red", markeredgecolor="black"))
        labels.append("diverged (last finite loss)")
    if legend_needed["theory"]:
        handles.append(Line2D([], [], ls="", marker="o", markersize=12, markerfacecolor="none",
                              markeredgecolor="red"))
        labels.append("theory: must diverge")
    if legend_needed["critical"]:
        handles.append(Line2D([], [], ls="--", color="black"))
        labels.append("theory: threshold = sharpness")
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7, frameon=False)
    case = runs[0].result.case if runs else ""
    fig.suptitle(title or f"{case} — {metric.replace('_', ' ')} vs swept hyperparameter", fontsize=10)
    return fig


# ---------------------------------------------------------------------------- saving
def save_figure(fig, stem: str | Path, formats: Sequence[str] = FORMATS, title: str = "") -> list[Path]:
    """Write ``stem.<fmt>`` for each format, recording the panel count; closes nothing
    (figures made here are not registered with pyplot, so they are freed with the object)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    panels = len(fig.axes)
    engine = fig.get_layout_engine()
    if engine is not None and len(formats) > 1:  # lay out once, not once per file
        engine.execute(fig)
        fig.set_layout_engine("none")
    files = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "png":
            metadata = {"Title": title, "Software": "stability-bench", PANELS_KEY: str(panels)}
            fig.savefig(path, format="png", dpi=DPI, metadata=metadata)
        elif fmt == "svg":
            fig.savefig(path, format="svg", metadata={"Title": title, "Description": f"panels={panels}",
                                                      "Creator": "stability-bench"})
        else:
            fig.savefig(path, format=fmt)
        files.append(path)
    return files


def _title(fig, default: str) -> str:
    text = fig.get_suptitle() if hasattr(fig, "get_suptitle") else getattr(fig, "_suptitle", None)
    text = text if isinstance(text, str) else (text.get_text() if text is not None else "")
    return text or default


def case_figures(runs: Sequence[ReportRun], out_dir: str | Path, stem: str | None = None,
                 formats: Sequence[str] = FORMATS, zoom_run: ReportRun | None = None,
                 searches: Sequence[Any] = (), case: str | None = None) -> list[FigureInfo]:
    """Draw and save the figures of one case's runs (and its critical-lr searches) into
    ``out_dir``; returns what was written.

    The spikes figure zooms into the largest spikes over all the case's runs, or only
    ``zoom_run``'s when given (a triage bundle's run)."""
    runs = list(runs)
    case = runs[0].result.case if runs else (case or (searches[0].case if searches else None))
    if case is None:
        return []
    stem = stem or safe_name(case)
    out = Path(out_dir)
    infos = []
    if runs:
        fig = training_figure(runs)
        title = _title(fig, case)
        infos.append(FigureInfo("training", case, title, len(fig.axes),
                                save_figure(fig, out / f"{stem}.training", formats, title)))
        targets = [zoom_run] if zoom_run is not None else zoom_candidates(runs)
        fig = spikes_figure(targets) if targets else None
        if fig is not None:
            title = _title(fig, case)
            shown = [r.result.run_id for r, _, _ in largest_spikes(targets, 3)]
            infos.append(FigureInfo("spikes", case, title, len(fig.axes),
                                    save_figure(fig, out / f"{stem}.spikes", formats, title), run_id=shown[0],
                                    run_ids=list(dict.fromkeys(shown))))
        fig = sweep_figure(runs)
        if fig is not None:
            title = _title(fig, case)
            infos.append(FigureInfo("sweep", case, title, len(fig.axes), save_figure(fig, out / f"{stem}.sweep",
                                                                                      formats, title)))
    fig = critical_lr_figure(searches)
    if fig is not None:
        title = _title(fig, case)
        infos.append(FigureInfo("critical_lr", case, title, len(fig.axes),
                                save_figure(fig, out / f"{stem}.critical_lr", formats, title)))
    return infos
