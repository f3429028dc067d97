"""Stability baselines: snapshot testing for stability figures, noise-aware and fingerprinted.

A baseline records, for every run of a case file (keyed by run id without the seed:
``case::optimizer[point]-device``), each figure's value per seed and how much it moves
under changes that do not change the algorithm: the same seed with every initial
parameter nudged by one ulp up and by one ulp down (``RunSpec.perturb`` = +1, −1). From
those it derives the band a new measurement must stay in:

* ``noise`` = the largest |f(seed) − f(seed, nudged)| over seeds and nudges, in the
  figure's scale f (log10 for losses and the critical lr, linear otherwise);
* ``tolerance`` = ``NOISE_FACTOR`` · noise + the figure's ``floor``; a run of seed s fails
  when f(measured) leaves f(baseline of s) ± tolerance (a seed the baseline lacks: the
  seeds' range ± tolerance). A nudge samples the rounding noise once; the factor 3 covers
  the rounding of a rewritten formula, which may move a figure further than one ulp at
  the start does (measured in docs/regressions.md), and the floor keeps a bit-stable
  figure from failing on the last digit;
* a figure is **uninformative**, reported and not used, when its noise exceeds ``cap``
  (rounding scrambles it), when its band is wider than ``cap`` (a band that cannot fail),
  or, with two or more seeds, when a nudge moves it by half as much as another seed does
  (chaotic: its value is the trajectory's accident), or, with one seed, when a nudge moves
  it by more than its floor (chaotic too, and two samples of the noise are no bound on it:
  a rewrite that rounds differently at every step moved such a figure 7× further than the
  nudges did, cohen_fig7_warmup's final loss; docs/regressions.md).

Three more things make a verdict trustworthy:

* **Fingerprints.** Each run stores what decides it (the case's sections after variant
  merge and the optimizer entry as written); a check whose case no longer matches is
  **stale** (which keys changed, and the command that re-records), never a regression.
  The environment it was recorded in is stored too, and printed beside any failure.
* **Early trajectory.** The first ``TRAJECTORY_STEPS`` steps of loss, gradient norm and
  update norm, with a per-step band from the nudged runs: a formula change shows there
  (first departing step) even when the stability figures hold.
* **Expectations under rounding.** The nudged runs' metrics are stored, so every
  expectation of the case can be evaluated on them (:func:`fragile_expectations`): one
  that a nudge flips is *fragile* — not a claim.

Direction: every figure says which way is less stable (``Figure.worse``): more divergence,
an earlier divergence, higher losses, more instability, more or taller spikes, a higher
preconditioned-sharpness ratio (less margin below the threshold), a lower critical lr.

The file is plain JSON beside the case file (``cases/x.yaml`` → ``cases/x.baseline.json``),
keys sorted so a re-recording diffs line by line.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from stability_bench.critical_lr import CriticalLr
from stability_bench.results import RunResult
from stability_bench.types import Case

FORMAT, VERSION = "stability-bench-baseline", 2
NOISE_FACTOR = 3.0
NUDGES = (1, -1)   # one ulp up, one ulp down: two samples of rounding noise per seed
# The early trajectory: 20 steps. Long enough for a formula change to show (Adam's first
# bias correction 1 − β₁ᵗ is still 12 % from 1 at t = 20; a step counter off by one, ε's
# place, a missing correction all move the first updates), short enough that a one-ulp
# nudge has not yet grown past the differences it must tell apart (measured in
# docs/regressions.md: nudged runs stay within ~1e-5 relative over 20 steps on the shipped
# cases, where the formula changes of the corpus move the update norm by ≥ 1e-4).
TRAJECTORY_STEPS = 20
TRAJECTORY_COLUMNS = ("loss", "grad_norm", "update_norm")
# Per-step relative floor of the trajectory band, in units of the dtype's epsilon: a value
# computed in another order may differ in its last few bits even where a nudge moved
# nothing.
TRAJECTORY_FLOOR_EPS = 16
RERECORD = "stability-bench baseline {file}  (or: python -m pytest {file} --stability-baseline-update)"


@dataclass(frozen=True)
class Figure:
    """How a figure is read, scaled and compared. ``floor`` and ``cap`` are in the scale;
    ``worse`` is the direction of less stable: "higher", "lower" or "true"."""

    scale: str                      # "log" (log10), "linear" or "bool"
    worse: str
    floor: float = 0.0
    cap: float = math.inf
    unit: str = ""


# Floors: the smallest change that is a change. Losses: 0.01 decade (2.3 %): a smooth run
# whose arithmetic only rounds differently moves its loss by ~1e-6 of itself (measured:
# teacher_mlp_optimizers, 2e-7 decades), and a chaotic run's larger noise is measured and
# multiplied. Caps: beyond them the band says nothing (a loss known to 2 decades).
FIGURES: dict[str, Figure] = {
    "diverged": Figure("bool", "true"),
    "divergence_step": Figure("linear", "lower", floor=0.0, unit="steps"),   # floor: 2 % of the steps
    "min_loss": Figure("log", "higher", floor=0.01, cap=2.0, unit="decades"),
    "final_loss": Figure("log", "higher", floor=0.01, cap=2.0, unit="decades"),
    "late_instability": Figure("linear", "higher", floor=0.25, cap=2.0, unit="decades"),
    "spike_frequency": Figure("linear", "higher", floor=1.0, cap=20.0, unit="per 1000 steps"),
    "spike_height_min": Figure("linear", "higher", floor=0.25, cap=2.0, unit="decades"),
    "spike_height_median": Figure("linear", "higher", floor=0.25, cap=2.0, unit="decades"),
    "precond_sharpness_ratio": Figure("linear", "higher", floor=0.02, cap=0.3),
    "critical_lr": Figure("log", "lower", cap=0.5, unit="decades"),   # floor: twice the search precision
}
RUN_FIGURES = [f for f in FIGURES if f != "critical_lr"]
EARLY_TRAJECTORY = "early_trajectory"


def direction(figure: str, old: Any, new: Any) -> str | None:
    """"less stable" or "more stable": which way ``new`` moved from ``old`` by the figure's
    rule (None when it did not move or cannot be ordered)."""
    spec = FIGURES.get(figure)
    if spec is None or old is None or new is None or old == new:
        return None
    if spec.scale == "bool":
        return "less stable" if bool(new) else "more stable"
    try:
        higher = float(new) > float(old)
    except (TypeError, ValueError):
        return None
    return "less stable" if higher == (spec.worse == "higher") else "more stable"


def _read(result: "RunResult", figure: str) -> Any:
    if figure == "diverged":
        return bool(result.diverged)
    if figure == "divergence_step":
        return result.divergence_step
    return (result.metrics or {}).get(figure)


def _scaled(figure: str, value: Any) -> float | None:
    """The value in the figure's comparison scale (log10 for losses); None if undefined."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    if not math.isfinite(value):
        return None
    return math.log10(max(value, 1e-300)) if FIGURES[figure].scale == "log" else value


def _unscaled(figure: str, x: float) -> float:
    return 10.0 ** x if FIGURES[figure].scale == "log" else x


_PERTURBED = re.compile(r"-perturb(-?\d+)$")


def unperturbed(run_id: str) -> str:
    """``…-seed0-cpu-perturb-1`` → ``…-seed0-cpu``."""
    return _PERTURBED.sub("", run_id)


def baseline_key(run_id: str) -> str:
    """``case::opt[point]-seed3-cpu`` → ``case::opt[point]-cpu`` (seed-independent)."""
    head, _, tail = unperturbed(run_id).rpartition("-seed")
    _, _, device = tail.partition("-")
    return f"{head}-{device}" if head else run_id


def baseline_path(case_file: str | Path) -> Path:
    """Where a case file's baseline lives: ``cases/x.yaml`` → ``cases/x.baseline.json``."""
    path = Path(case_file)
    return path.with_name(f"{path.stem}.baseline.json")


# -------------------------------------------------------------------------- fingerprints
def _canonical(value: Any) -> Any:
    """JSON-able, order-free form: tuples as lists, dataclasses as dicts, floats as floats."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value) if isinstance(value, float) else int(value)
    return repr(value)


def run_fingerprint(case: "Case", optimizer: str) -> dict:
    """What decides every run of ``optimizer`` in ``case``: the case's training sections
    after variant merge and the optimizer entry as written (class name, hyperparameters,
    sweeps). Expectations, descriptions and timeouts decide nothing and are left out."""
    spec = case.optimizers[optimizer]
    return _canonical({
        "model": case.model, "data": case.data, "loss": case.loss, "batch": case.batch, "steps": case.steps,
        "seeds": case.seeds, "dtype": case.dtype, "schedule": case.schedule, "clip": case.clip,
        "probes": case.probes, "divergence": case.divergence, "spikes": case.spikes, "eval": case.eval,
        "optimizer": {"class": spec.class_name, **spec.fixed, **{k: {"sweep": v} for k, v in spec.sweeps.items()}},
    })


def critical_fingerprint(case: "Case", optimizer: str) -> dict:
    """A critical-lr search's fingerprint: its optimizer's runs' and its ``critical_lr:`` entry."""
    return {**run_fingerprint(case, optimizer),
            "critical_lr": _canonical((case.raw.get("critical_lr") or {}).get(optimizer))}


def fingerprint_changes(recorded: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (``steps``, ``optimizer.lr``, ``model.width``); two
    levels deep, so a message names what changed without printing whole sections."""
    changed = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key, "<absent>"), current.get(key, "<absent>")
        if a == b:
            continue
        if not prefix and isinstance(a, Mapping) and isinstance(b, Mapping):
            changed += fingerprint_changes(a, b, f"{key}.") or [key]
        else:
            changed.append(f"{prefix}{key}")
    return changed


def environment_changes(recorded: Mapping, current: Mapping) -> list[str]:
    """``torch 2.13.0 → 2.5.1`` for every environment key that differs."""
    return [f"{k} {recorded.get(k)} → {current.get(k)}" for k in sorted(set(recorded) | set(current))
            if recorded.get(k) != current.get(k)]


# ------------------------------------------------------------------------------ record
def _figure_entry(figure: str, seeds: dict[int, Any], nudged: dict[int, list[Any]], floor: float) -> dict:
    """Values per seed, the nudged values (per seed, one per nudge), and the band."""
    spec = FIGURES[figure]
    entry: dict[str, Any] = {"scale": spec.scale, "worse": spec.worse,
                             "seeds": {str(s): v for s, v in seeds.items()},
                             "perturbed": {str(s): vs for s, vs in nudged.items()}}
    if spec.scale == "bool" or any(v is None for v in seeds.values()):
        flips = [s for s, vs in nudged.items() if any(v != seeds.get(s) for v in vs)]
        entry.update(noise=None, tolerance=None, spread=None, informative=not flips,
                     reason=f"a one-ulp nudge changes it (seed {flips[0]})" if flips else None)
        return entry
    xs = {s: _scaled(figure, v) for s, v in seeds.items()}
    moves = [abs(xs[s] - _scaled(figure, v)) if _scaled(figure, v) is not None else math.inf
             for s, vs in nudged.items() if s in xs for v in vs]
    noise = max(moves, default=0.0)
    spread = max(xs.values()) - min(xs.values()) if xs else 0.0
    tolerance = NOISE_FACTOR * noise + floor
    reason = None
    unit = f" {spec.unit}" if spec.unit else ""
    if noise > spec.cap:
        reason = f"a one-ulp nudge moves it by {noise:.3g}{unit} (> {spec.cap:g})"
    elif tolerance > spec.cap:
        reason = f"its band ±{tolerance:.3g}{unit} is wider than {spec.cap:g}: it could not fail"
    elif len(xs) >= 2 and noise > floor and noise >= 0.5 * spread:
        reason = (f"chaotic: a one-ulp nudge moves it by {noise:.3g}, half or more of the "
                  f"{spread:.3g} between seeds")
    elif len(xs) == 1 and noise > floor:
        reason = (f"chaotic with one seed: a one-ulp nudge moves it by {noise:.3g}{unit}, more than "
                  f"its floor {floor:.3g}; two nudges cannot bound how far rounding moves it — "
                  f"declare 3 or more seeds to band it")
    entry.update(noise=noise, tolerance=tolerance if math.isfinite(tolerance) else None,
                 spread=spread, informative=reason is None, reason=reason)
    return entry


def _floor(figure: str, steps: int, rtol: float | None = None) -> float:
    if figure == "divergence_step":
        return 0.02 * steps
    if figure == "spike_frequency":   # spikes are counted: one spike more or less per run is the least change
        return max(FIGURES[figure].floor, 1000.0 / max(1, steps))
    if figure == "critical_lr":
        return 2 * math.log10(1 + (rtol or 0.0))
    return FIGURES[figure].floor


def _eps(dtype: str) -> float:
    return {"float64": 2.220446049250313e-16, "float16": 9.765625e-4, "bfloat16": 7.8125e-3}.get(dtype, 1.1920929e-07)


def _head(history: Mapping, column: str, steps: int) -> list:
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in list(history.get(column, []))[:steps]]


def _trajectory(original: "RunResult", nudged: Sequence["RunResult"], steps: int) -> dict:
    """The first ``steps`` values of each column and the per-step relative band: the running
    maximum over earlier steps of the nudged runs' relative departure, × ``NOISE_FACTOR``,
    plus ``TRAJECTORY_FLOOR_EPS`` epsilons of the dtype."""
    floor = TRAJECTORY_FLOOR_EPS * _eps(original.dtype)
    values, bands = {}, {}
    for column in TRAJECTORY_COLUMNS:
        ref = _head(original.history, column, steps)
        others = [_head(run.history, column, steps) for run in nudged]
        envelope, band = 0.0, []
        for k, x in enumerate(ref):
            for other in others:
                y = other[k] if k < len(other) else None
                if x is not None and y is not None and x != 0:
                    envelope = max(envelope, abs(y - x) / abs(x))
                elif (x is None) != (y is None):
                    envelope = math.inf
            band.append(NOISE_FACTOR * envelope + floor if math.isfinite(envelope) else None)
        values[column], bands[column] = ref, band
    return {"values": values, "rtol": bands}


def _rounding_record(case: "Case", original: "RunResult", nudged: Mapping[int, "RunResult"],
                     partners: Mapping[int, Mapping[str, "RunResult"]]) -> dict:
    """What the expectations read, on the run ("0") and each nudged run ("+1", "-1"), for
    :func:`fragile_expectations`: metrics, theory, and the verdicts of parity expectations
    (each nudged run against its partner nudged alike; ``partners``: nudge → run id → run)."""
    from stability_bench.expectations import PARITY, check_run

    runs = {0: original, **nudged}
    return {"run_id": original.run_id, "theory": original.theory,
            "metrics": {f"{n:+d}" if n else "0": r.metrics for n, r in runs.items()},
            "parity": {f"{n:+d}" if n else "0": [o.passed for o in check_run(case, r, partners.get(n, {}))
                                                 if o.metric == PARITY] for n, r in runs.items()}}


def record_baseline(case: "Case", results: Sequence["RunResult"], nudged_results: Sequence["RunResult"],
                    critical: dict[tuple[str, int, str], "CriticalLr"] | None = None,
                    trajectory_steps: int = TRAJECTORY_STEPS, environment: Mapping | None = None) -> dict:
    """The baseline of one case from its requested runs (every seed) and the same runs
    nudged (``RunSpec.perturb`` ±1, with their parity partners nudged alike);
    ``critical``: (optimizer, seed, device) → critical lr found."""
    by_nudge: dict[int, dict[str, "RunResult"]] = {0: {r.run_id: r for r in results}}
    for r in nudged_results:
        match = _PERTURBED.search(r.run_id)
        by_nudge.setdefault(int(match.group(1)), {})[unperturbed(r.run_id)] = r
    grouped: dict[str, dict[int, "RunResult"]] = {}
    for r in results:
        grouped.setdefault(baseline_key(r.run_id), {})[r.seed] = r
    runs = {}
    for key, by_seed in grouped.items():
        first = next(iter(by_seed.values()))
        nudges = {s: {n: runs_[r.run_id] for n, runs_ in by_nudge.items() if n and r.run_id in runs_}
                  for s, r in by_seed.items()}
        figures = {f: _figure_entry(f, {s: _read(r, f) for s, r in by_seed.items()},
                                    {s: [_read(x, f) for x in nudges[s].values()] for s in by_seed},
                                    _floor(f, first.steps))
                   for f in RUN_FIGURES if any(_read(r, f) is not None for r in by_seed.values())}
        rounding, trajectory = {}, {}
        for s, r in by_seed.items():
            rounding[str(s)] = _rounding_record(case, r, nudges[s], by_nudge)
            trajectory[str(s)] = _trajectory(r, list(nudges[s].values()), trajectory_steps)
        runs[key] = {"optimizer": first.optimizer, "fingerprint": run_fingerprint(case, first.optimizer),
                     "data": {str(s): r.meta.get("data") for s, r in by_seed.items()},
                     "threads": first.meta.get("threads"), "figures": figures, "rounding": rounding,
                     "trajectory": {"steps": trajectory_steps, "seeds": trajectory}}
    out = {"format": FORMAT, "version": VERSION, "environment": dict(environment or {}), "runs": runs,
           "critical_lr": {}}
    if critical:
        from stability_bench.critical_lr import specs

        declared = specs(case)
        grouped_c: dict[str, dict[int, CriticalLr]] = {}
        for (opt, seed, device), found in critical.items():
            grouped_c.setdefault(f"{case.name}::{opt}-{device}", {})[seed] = found
        for key, by_seed in grouped_c.items():
            opt = key.split("::", 1)[1].rsplit("-", 1)[0]
            entry = _figure_entry("critical_lr", {s: f.value for s, f in by_seed.items()}, {},
                                  _floor("critical_lr", 0, declared[opt].rtol))
            entry["rtol"] = declared[opt].rtol
            entry["reasons"] = {str(s): f.reason for s, f in by_seed.items() if f.reason}
            out["critical_lr"][key] = {"optimizer": opt, "fingerprint": critical_fingerprint(case, opt),
                                       "figures": {"critical_lr": entry}}
    return out


def merge_baselines(parts: Iterable[dict]) -> dict:
    """One file's baseline from the baselines of its cases (base case and variants)."""
    out = {"format": FORMAT, "version": VERSION, "environment": {}, "runs": {}, "critical_lr": {}}
    for part in parts:
        out["environment"] = part.get("environment") or out["environment"]
        out["runs"].update(part.get("runs", {}))
        out["critical_lr"].update(part.get("critical_lr", {}))
    return out


def informative_count(data: Mapping) -> tuple[int, int]:
    """(informative figures, figures) over a baseline's runs and critical lrs."""
    entries = [e for section in ("runs", "critical_lr") for run in data.get(section, {}).values()
               for e in run["figures"].values()]
    return sum(bool(e.get("informative")) for e in entries), len(entries)


def write_baseline(path: str | Path, data: dict) -> None:
    """Sorted, indented JSON (non-finite numbers as null), written atomically."""
    from stability_bench.results import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(data, sort_keys=True, default=str)))


# ------------------------------------------------------------------------- reading
class BaselineError(ValueError):
    """A baseline file that cannot be read; the message names it (and the line)."""


_RUN_KEYS = ("optimizer", "fingerprint", "figures", "rounding", "trajectory")
_FIGURE_KEYS = ("scale", "seeds", "informative")


def _line_of(text: str, *keys: str) -> int:
    """The line where the nested ``keys`` first appear in the JSON text (best effort)."""
    at = 0
    for key in keys:
        found = text.find(json.dumps(key), at)
        if found < 0:
            break
        at = found
    return text.count("\n", 0, at) + 1


def read_baseline(path: str | Path) -> dict:
    """The baseline file at ``path``, checked for the keys a check reads; BaselineError
    (one line: file, line, key) for a missing, unreadable, hand-broken or newer file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise BaselineError(f"{path}: no baseline; record one (stability-bench baseline)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a stability-bench baseline file")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise BaselineError(f"{path}:{_line_of(text, 'version')}: version: baseline format {version!r} is newer "
                            f"than this stability-bench reads ({VERSION}); upgrade stability-bench")
    if version < VERSION:
        return {**data, "outdated": version}
    for section in ("runs", "critical_lr"):
        if not isinstance(data.get(section), dict):
            raise BaselineError(f"{path}:{_line_of(text, section)}: {section}: missing or not an object")
        for key, run in data[section].items():
            needed = _RUN_KEYS if section == "runs" else ("optimizer", "fingerprint", "figures")
            missing = [k for k in needed if not isinstance(run, dict) or k not in run]
            if missing:
                raise BaselineError(f"{path}:{_line_of(text, section, key)}: {section}.{key}: missing key "
                                    f"{missing[0]!r} (edited by hand? re-record: stability-bench baseline)")
            for name, entry in run["figures"].items():
                lacking = [k for k in _FIGURE_KEYS if not isinstance(entry, dict) or k not in entry]
                if name not in FIGURES or lacking:
                    what = f"unknown figure {name!r}" if name not in FIGURES else f"missing key {lacking[0]!r}"
                    raise BaselineError(f"{path}:{_line_of(text, section, key, name)}: "
                                        f"{section}.{key}.figures.{name}: {what}")
    return data


# ------------------------------------------------------------------------------- check
FAILED_STATUSES = ("outside", "missing")   # a finding with one of these fails its run


@dataclass
class Finding:
    """One figure of one run against its baseline: "inside" its band, "outside" it,
    "missing" (no baseline), "uninformative" (not used) or "stale" (recorded for another
    case definition: not compared)."""

    where: str                 # file:line of the optimizer entry (or critical_lr entry)
    run_id: str
    figure: str
    status: str
    band: tuple | None         # (low, high) in the figure's units
    baseline: Any
    value: Any
    message: str
    direction: str | None = None    # "less stable" | "more stable" (outside only)
    changed: list = field(default_factory=list)   # stale: the keys that differ

    @property
    def failed(self) -> bool:
        return self.status in FAILED_STATUSES

    @property
    def stale(self) -> bool:
        return self.status == "stale"

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_figure(where: str, run_id: str, figure: str, entry: dict, seed: int, value: Any) -> Finding:
    seeds = {int(s): v for s, v in entry["seeds"].items()}
    base = seeds.get(seed)
    if not entry.get("informative", True):
        return Finding(where, run_id, figure, "uninformative", None, base, value,
                       f"{where}: {run_id}: {figure} not compared: {entry.get('reason')}")
    tolerance = entry.get("tolerance")
    if tolerance is None:  # boolean or sometimes-undefined figures: equality per seed
        allowed = [base] if seed in seeds else list(seeds.values())
        if value in allowed:
            return Finding(where, run_id, figure, "inside", None, base, value,
                           f"{where}: {run_id}: {figure} is {_fmt(value)}, as recorded")
        moved = direction(figure, allowed[0], value)
        return Finding(where, run_id, figure, "outside", None, base, value,
                       f"{where}: {run_id}: {figure} is {_fmt(value)}, baseline "
                       f"{' or '.join(map(_fmt, allowed))}" + (f" ({moved})" if moved else ""), moved)
    x = _scaled(figure, value)
    xs = [_scaled(figure, v) for v in ([base] if seed in seeds else seeds.values())]
    low, high = min(xs) - tolerance, max(xs) + tolerance
    band = (_unscaled(figure, low), _unscaled(figure, high))
    edge = 1e-9 * max(1.0, abs(low), abs(high))   # a value on the edge is inside: the edge itself was rounded
    if x is not None and low - edge <= x <= high + edge:
        return Finding(where, run_id, figure, "inside", band, base, value,
                       f"{where}: {run_id}: {figure} {_fmt(value)} inside [{_fmt(band[0])}, {_fmt(band[1])}]")
    moved = direction(figure, base if seed in seeds else (_unscaled(figure, (low + high) / 2)), value)
    unit = f" {FIGURES[figure].unit}" if FIGURES[figure].scale == "linear" and FIGURES[figure].unit else ""
    return Finding(where, run_id, figure, "outside", band, base, value,
                   f"{where}: {run_id}: {figure} {_fmt(value)}{unit} outside the baseline band "
                   f"[{_fmt(band[0])}, {_fmt(band[1])}] (baseline {_fmt(base)}; tolerance "
                   f"{tolerance:.3g}{' decades' if FIGURES[figure].scale == 'log' else ''})"
                   + (f": {moved}" if moved else ""), moved)


def _check_trajectory(where: str, run_id: str, entry: Mapping, result: "RunResult") -> Finding:
    """The run's first steps against the recorded ones: the first step where a column
    leaves its per-step band, as parity names it."""
    seeds = entry.get("seeds", {})
    recorded = seeds.get(str(result.seed))
    if recorded is None:
        return Finding(where, run_id, EARLY_TRAJECTORY, "uninformative", None, None, None,
                       f"{where}: {run_id}: early trajectory not compared: no recording for seed {result.seed}")
    steps = int(entry.get("steps", TRAJECTORY_STEPS))
    first = None
    for column in TRAJECTORY_COLUMNS:
        ref, rtol = recorded["values"][column], recorded["rtol"][column]
        new = _head(result.history, column, steps)
        for k, x in enumerate(ref):
            y = new[k] if k < len(new) else None
            if rtol[k] is None:   # a nudge already made this step non-finite: not compared
                continue
            ok = (x is None and y is None) or (x is not None and y is not None and abs(y - x) <= rtol[k] * abs(x))
            if not ok:
                if first is None or k < first[0]:
                    first = (k, [])
                if k == first[0]:
                    first[1].append(f"{column} {_fmt(y)} vs {_fmt(x)} (±{rtol[k]:.2g} relative)")
                break
    if first is None:
        return Finding(where, run_id, EARLY_TRAJECTORY, "inside", None, None, None,
                       f"{where}: {run_id}: early trajectory within its band for {steps} steps")
    step = int(list(result.history.get("step", range(steps)))[first[0]]) if result.history.get("step") else first[0]
    return Finding(where, run_id, EARLY_TRAJECTORY, "outside", None, None, step,
                   f"{where}: {run_id}: early trajectory departs first at step {step}: " + ", ".join(first[1]))


def _stale(where: str, run_id: str, figure: str, recorded: Mapping, current: Mapping, file: str | None) -> Finding:
    changed = fingerprint_changes(recorded, current)
    command = RERECORD.format(file=file or "<case file>")
    return Finding(where, run_id, figure, "stale", None, None, None,
                   f"{where}: {run_id}: baseline is stale, not compared: the case changed since it was "
                   f"recorded ({', '.join(changed)}); re-record: {command}", changed=changed)


def _other_data(where: str, result: "RunResult", entry: Mapping, file: str | None) -> Finding | None:
    """Stale when the run trained on other examples than the recording (their digests,
    ``TensorData.digest``, differ): the same case on another copy of a dataset — the
    official CIFAR-10 release where the baseline used a subset file — or on data a changed
    generator made gives other trajectories, which is no regression. A recording or a run
    without a digest is not compared."""
    recorded, here = (entry.get("data") or {}).get(str(result.seed)), result.meta.get("data")
    if not recorded or not here or recorded == here:
        return None
    return Finding(where, result.run_id, "(run)", "stale", None, None, None,
                   f"{where}: {result.run_id}: baseline is stale, not compared: recorded on other data "
                   f"(examples digest {recorded} there, {here} here: another copy or version of the "
                   f"dataset, or a changed data generator); re-record on this data: "
                   f"{RERECORD.format(file=file or '<case file>')}", changed=["data"])


def _outdated(where: str, run_id: str, figure: str, data: Mapping, file: str | None) -> Finding | None:
    if "outdated" not in data:
        return None
    return Finding(where, run_id, figure, "stale", None, None, None,
                   f"{where}: {run_id}: baseline is stale, not compared: recorded in format "
                   f"{data['outdated']}, before fingerprints; re-record: {RERECORD.format(file=file or '<case file>')}",
                   changed=["format"])


def check_against_baseline(case: "Case", result: "RunResult", baseline: dict,
                           environment: Mapping | None = None) -> list[Finding]:
    """Every figure of ``result`` against the baseline (pure: no training): one finding per
    figure (inside, outside, uninformative), then the early trajectory; a single "stale"
    finding when the case no longer matches the recording, a "missing" one when the
    baseline has no such run. ``environment``: where this check runs, named beside failures."""
    where = case.where(("optimizers", result.optimizer))
    outdated = _outdated(where, result.run_id, "(run)", baseline, case.source.file)
    if outdated:
        return [outdated]
    entry = baseline.get("runs", {}).get(baseline_key(result.run_id))
    if entry is None:
        return [Finding(where, result.run_id, "(run)", "missing", None, None, None,
                        f"{where}: {result.run_id}: no baseline for this run (record it: "
                        f"{RERECORD.format(file=case.source.file or '<case file>')})")]
    current = run_fingerprint(case, result.optimizer)
    if entry["fingerprint"] != current:
        return [_stale(where, result.run_id, "(run)", entry["fingerprint"], current, case.source.file)]
    other_data = _other_data(where, result, entry, case.source.file)
    if other_data:
        return [other_data]
    found = [_check_figure(where, result.run_id, f, e, result.seed, _read(result, f))
             for f, e in entry["figures"].items()]
    found.append(_check_trajectory(where, result.run_id, entry["trajectory"], result))
    return _with_environment(found, baseline, environment)


def _with_environment(found: list[Finding], baseline: Mapping, environment: Mapping | None) -> list[Finding]:
    """Failures say how this machine differs from the one that recorded (never a failure itself)."""
    changes = environment_changes(baseline.get("environment") or {}, environment) if environment else []
    if changes:
        for finding in found:
            if finding.failed:
                finding.message += f" [recorded elsewhere: {'; '.join(changes)}]"
    return found


def check_critical_lr_against_baseline(case: "Case", optimizer: str, seed: int, device: str,
                                       found: "CriticalLr", baseline: dict,
                                       environment: Mapping | None = None) -> list[Finding]:
    """The critical lr of ``optimizer`` (seed, device) against the baseline's band."""
    key = f"{case.name}::{optimizer}-{device}"
    where = case.where(("critical_lr", optimizer))
    run_id = f"{key} (critical lr, seed {seed})"
    outdated = _outdated(where, run_id, "critical_lr", baseline, case.source.file)
    if outdated:
        return [outdated]
    entry = baseline.get("critical_lr", {}).get(key)
    if entry is None:
        return [Finding(where, run_id, "critical_lr", "missing", None, None, found.value,
                        f"{where}: {run_id}: no baseline for this critical lr")]
    current = critical_fingerprint(case, optimizer)
    if entry["fingerprint"] != current:
        return [_stale(where, run_id, "critical_lr", entry["fingerprint"], current, case.source.file)]
    finding = _check_figure(where, run_id, "critical_lr", entry["figures"]["critical_lr"], seed, found.value)
    if finding.failed and found.reason:
        finding.message += f" ({found.reason})"
    return _with_environment([finding], baseline, environment)


# ----------------------------------------------------------- expectations under rounding
@dataclass
class Fragile:
    """An expectation whose verdict a one-ulp nudge changes: not a claim."""

    where: str
    run_id: str
    metric: str
    values: dict          # "0" (the run), "+1", "-1" → value
    verdicts: dict        # same keys → passed

    @property
    def message(self) -> str:
        shown = ", ".join(f"{'run' if k == '0' else 'nudged ' + k}: {_fmt(v)} "
                          f"({'holds' if self.verdicts[k] else 'fails'})" for k, v in self.values.items())
        return f"{self.where}: {self.run_id}: expectation on {self.metric} is fragile under rounding — {shown}"


def fragile_expectations(case: "Case", baseline: Mapping) -> list[Fragile]:
    """Every expectation of ``case`` evaluated on the recorded runs and their nudged twins
    (pure: reads the baseline's ``rounding`` records); those a nudge flips. Parity
    expectations read the verdicts recorded with the nudged partners."""
    from stability_bench.expectations import COMPARATORS, PARITY, resolve_bound

    out = []
    for entry in baseline.get("runs", {}).values():
        optimizer = entry["optimizer"]
        if optimizer not in case.optimizers or entry.get("fingerprint") != run_fingerprint(case, optimizer):
            continue   # stale: the check says so; its recorded runs say nothing of this case
        for record in entry.get("rounding", {}).values():
            parity_seen = 0
            for e in case.expectations:
                if e.optimizer != optimizer:
                    continue
                if e.metric == PARITY:
                    verdicts = {n: p[parity_seen] for n, p in record["parity"].items() if len(p) > parity_seen}
                    values = {n: ("tracks" if v else "departs") for n, v in verdicts.items()}
                    parity_seen += 1
                else:
                    bound = resolve_bound(e.bound, record["theory"])
                    values = {n: m.get(e.metric) for n, m in record["metrics"].items()}
                    verdicts = {n: bool(COMPARATORS.get(e.comparator)(v, bound)) for n, v in values.items()}
                if len(set(verdicts.values())) > 1:
                    out.append(Fragile(case.where(e.path), record["run_id"], e.metric, values, verdicts))
    return out
