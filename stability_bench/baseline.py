"""Stability baselines: snapshot testing for stability figures, noise-aware.

A baseline records, for every run of a case file (keyed by run id without the seed:
``case::optimizer[point]-device``), each figure's value per seed and how much it moves
under a change that does not change the algorithm: the same seed with every initial
parameter nudged by one ulp (``RunSpec.perturb``). From those it derives the band a new
measurement must stay in:

* ``noise`` = the largest |f(seed) − f(seed, nudged)| over the seeds, in the figure's
  scale f (log10 for losses and the critical lr, linear otherwise);
* ``tolerance`` = ``NOISE_FACTOR`` · noise + the figure's ``floor``; a run of seed s fails
  when f(measured) leaves f(baseline of s) ± tolerance (a seed the baseline lacks: the
  seeds' range ± tolerance). One nudge per seed samples the rounding noise once; the
  factor 3 covers the rounding of a rewritten formula, which may move a figure further
  than one ulp at the start does (measured in docs/regressions.md), and the floor keeps
  a bit-stable figure from failing on the last digit;
* a figure is **uninformative**, reported and not used, when its noise exceeds ``cap``
  (rounding scrambles it) or, with two or more seeds, when a one-ulp nudge moves it by
  half as much as another seed does (chaotic: its value is the trajectory's accident).

The file is plain JSON beside the case file (``cases/x.yaml`` → ``cases/x.baseline.json``),
keys sorted so a re-recording diffs line by line.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

if TYPE_CHECKING:
    from stability_bench.critical_lr import CriticalLr
    from stability_bench.results import RunResult
    from stability_bench.schema import Case

FORMAT, VERSION = "stability-bench-baseline", 1
NOISE_FACTOR = 3.0


@dataclass(frozen=True)
class Figure:
    """How a figure is read, scaled and compared. ``floor`` and ``cap`` are in the scale."""

    scale: str                      # "log" (log10), "linear" or "bool"
    floor: float = 0.0
    cap: float = math.inf
    unit: str = ""


# Floors: the smallest change that is a change. Losses: 0.01 decade (2.3 %): a smooth run
# whose arithmetic only rounds differently moves its loss by ~1e-6 of itself (measured:
# teacher_mlp_optimizers, 2e-7 decades), and a chaotic run's larger noise is measured and
# multiplied. Caps: beyond them the band says nothing (a loss known to 2 decades).
FIGURES: dict[str, Figure] = {
    "diverged": Figure("bool"),
    "divergence_step": Figure("linear", floor=0.0, unit="steps"),   # floor: 2 % of the steps, below
    "min_loss": Figure("log", floor=0.01, cap=2.0, unit="decades"),
    "final_loss": Figure("log", floor=0.01, cap=2.0, unit="decades"),
    "late_instability": Figure("linear", floor=0.25, cap=2.0, unit="decades"),
    "spike_frequency": Figure("linear", floor=1.0, cap=20.0, unit="per 1000 steps"),
    "precond_sharpness_ratio": Figure("linear", floor=0.02, cap=0.3),
    "critical_lr": Figure("log", cap=0.5, unit="decades"),   # floor: twice the search precision
}
RUN_FIGURES = [f for f in FIGURES if f != "critical_lr"]


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


def baseline_key(run_id: str) -> str:
    """``case::opt[point]-seed3-cpu`` → ``case::opt[point]-cpu`` (seed-independent)."""
    head, _, tail = run_id.rpartition("-seed")
    _, _, device = tail.partition("-")
    return f"{head}-{device}" if head else run_id


def baseline_path(case_file: str | Path) -> Path:
    """Where a case file's baseline lives: ``cases/x.yaml`` → ``cases/x.baseline.json``."""
    path = Path(case_file)
    return path.with_name(f"{path.stem}.baseline.json")


# ------------------------------------------------------------------------------ record
def _figure_entry(figure: str, seeds: dict[int, Any], nudged: dict[int, Any], floor: float) -> dict:
    """Values per seed, the nudged values, and the band derived from them."""
    spec = FIGURES[figure]
    entry: dict[str, Any] = {"scale": spec.scale, "seeds": {str(s): v for s, v in seeds.items()},
                             "perturbed": {str(s): v for s, v in nudged.items()}}
    if spec.scale == "bool" or any(v is None for v in seeds.values()):
        flips = [s for s in nudged if nudged[s] != seeds.get(s)]
        entry.update(noise=None, tolerance=None, spread=None, informative=not flips,
                     reason=f"a one-ulp nudge changes it (seed {flips[0]})" if flips else None)
        return entry
    xs = {s: _scaled(figure, v) for s, v in seeds.items()}
    moves = [abs(xs[s] - _scaled(figure, nudged[s])) if _scaled(figure, nudged[s]) is not None else math.inf
             for s in nudged if s in xs]
    noise = max(moves, default=0.0)
    spread = max(xs.values()) - min(xs.values()) if xs else 0.0
    tolerance = NOISE_FACTOR * noise + floor
    reason = None
    if noise > spec.cap:
        reason = f"a one-ulp nudge moves it by {noise:.3g} {spec.unit} (> {spec.cap:g})".replace("  ", " ")
    elif len(xs) >= 2 and noise > floor and noise >= 0.5 * spread:
        reason = (f"chaotic: a one-ulp nudge moves it by {noise:.3g}, half or more of the "
                  f"{spread:.3g} between seeds")
    entry.update(noise=noise, tolerance=tolerance if math.isfinite(tolerance) else None,
                 spread=spread, informative=reason is None, reason=reason)
    return entry


def _floor(figure: str, steps: int, rtol: float | None = None) -> float:
    if figure == "divergence_step":
        return 0.02 * steps
    if figure == "critical_lr":
        return 2 * math.log10(1 + (rtol or 0.0))
    return FIGURES[figure].floor


def record_baseline(case: "Case", results: Sequence["RunResult"], perturbed_results: Sequence["RunResult"],
                    critical: dict[tuple[str, int, str], "CriticalLr"] | None = None) -> dict:
    """The baseline of one case from its runs (every seed) and the same runs nudged by one ulp
    (``RunSpec.perturb = 1``); ``critical``: (optimizer, seed, device) → critical lr found."""
    nudged = {baseline_key(r.run_id.rsplit("-perturb", 1)[0]): {} for r in perturbed_results}
    for r in perturbed_results:
        nudged[baseline_key(r.run_id.rsplit("-perturb", 1)[0])][r.seed] = r
    grouped: dict[str, dict[int, "RunResult"]] = {}
    for r in results:
        grouped.setdefault(baseline_key(r.run_id), {})[r.seed] = r
    runs = {}
    for key, by_seed in grouped.items():
        pert = nudged.get(key, {})
        steps = next(iter(by_seed.values())).steps
        first = next(iter(by_seed.values()))
        figures = {f: _figure_entry(f, {s: _read(r, f) for s, r in by_seed.items()},
                                    {s: _read(r, f) for s, r in pert.items()}, _floor(f, steps))
                   for f in RUN_FIGURES if any(_read(r, f) is not None for r in by_seed.values())}
        runs[key] = {"optimizer": first.optimizer, "figures": figures}
    out = {"format": FORMAT, "version": VERSION, "runs": runs, "critical_lr": {}}
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
            out["critical_lr"][key] = {"optimizer": opt, "figures": {"critical_lr": entry}}
    return out


def merge_baselines(parts: Iterable[dict]) -> dict:
    """One file's baseline from the baselines of its cases (base case and variants)."""
    out = {"format": FORMAT, "version": VERSION, "runs": {}, "critical_lr": {}}
    for part in parts:
        out["runs"].update(part.get("runs", {}))
        out["critical_lr"].update(part.get("critical_lr", {}))
    return out


def write_baseline(path: str | Path, data: dict) -> None:
    """Sorted, indented JSON (non-finite numbers as null), written atomically."""
    from stability_bench.results import write_json_atomic

    write_json_atomic(path, json.loads(json.dumps(data, sort_keys=True, default=str)))


class BaselineError(ValueError):
    """A baseline file that cannot be read; the message names it."""


def read_baseline(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{path}: no baseline; record one (stability-bench baseline)") from None
    except json.JSONDecodeError as exc:
        raise BaselineError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a stability-bench baseline file")
    return data


# ------------------------------------------------------------------------------- check
@dataclass
class Finding:
    """One figure of one run against its baseline band."""

    where: str                 # file:line of the optimizer entry (or critical_lr entry)
    run_id: str
    figure: str
    status: str                # "outside", "missing" (no baseline), "uninformative" (not used)
    band: tuple | None         # (low, high) in the figure's units
    baseline: Any
    value: Any
    message: str

    @property
    def failed(self) -> bool:
        return self.status in ("outside", "missing")

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _check_figure(where: str, run_id: str, figure: str, entry: dict, seed: int, value: Any) -> Finding | None:
    seeds = {int(s): v for s, v in entry["seeds"].items()}
    base = seeds.get(seed)
    if not entry.get("informative", True):
        return Finding(where, run_id, figure, "uninformative", None, base, value,
                       f"{where}: {run_id}: {figure} not compared: {entry.get('reason')}")
    tolerance = entry.get("tolerance")
    if tolerance is None:  # boolean or sometimes-undefined figures: equality per seed
        allowed = [base] if seed in seeds else list(seeds.values())
        if value in allowed:
            return None
        return Finding(where, run_id, figure, "outside", None, base, value,
                       f"{where}: {run_id}: {figure} is {_fmt(value)}, baseline "
                       f"{' or '.join(map(_fmt, allowed))}")
    x = _scaled(figure, value)
    xs = [_scaled(figure, v) for v in ([base] if seed in seeds else seeds.values())]
    low, high = min(xs) - tolerance, max(xs) + tolerance
    band = (_unscaled(figure, low), _unscaled(figure, high))
    if x is not None and low <= x <= high:
        return None
    unit = f" {FIGURES[figure].unit}" if FIGURES[figure].scale == "linear" and FIGURES[figure].unit else ""
    return Finding(where, run_id, figure, "outside", band, base, value,
                   f"{where}: {run_id}: {figure} {_fmt(value)}{unit} outside the baseline band "
                   f"[{_fmt(band[0])}, {_fmt(band[1])}] (baseline {_fmt(base)}; tolerance "
                   f"{tolerance:.3g}{' decades' if FIGURES[figure].scale == 'log' else ''})")


def check_against_baseline(case: "Case", result: "RunResult", baseline: dict) -> list[Finding]:
    """Every figure of ``result`` against the baseline (pure: no training). Failures and the
    figures left out as uninformative; an empty list means every figure is inside its band."""
    where = case.where(("optimizers", result.optimizer))
    entry = baseline.get("runs", {}).get(baseline_key(result.run_id))
    if entry is None:
        return [Finding(where, result.run_id, "(run)", "missing", None, None, None,
                        f"{where}: {result.run_id}: no baseline for this run (record it with "
                        f"stability-bench baseline, or update the baseline)")]
    found = [_check_figure(where, result.run_id, f, e, result.seed, _read(result, f))
             for f, e in entry["figures"].items()]
    return [f for f in found if f is not None]


def check_critical_lr_against_baseline(case: "Case", optimizer: str, seed: int, device: str,
                                       found: "CriticalLr", baseline: dict) -> list[Finding]:
    """The critical lr of ``optimizer`` (seed, device) against the baseline's band."""
    key = f"{case.name}::{optimizer}-{device}"
    where = case.where(("critical_lr", optimizer))
    run_id = f"{key} (critical lr, seed {seed})"
    entry = baseline.get("critical_lr", {}).get(key)
    if entry is None:
        return [Finding(where, run_id, "critical_lr", "missing", None, None, found.value,
                        f"{where}: {run_id}: no baseline for this critical lr")]
    value = found.value if found.value is not None else None
    finding = _check_figure(where, run_id, "critical_lr", entry["figures"]["critical_lr"], seed, value)
    if finding is not None and found.reason:
        finding.message += f" ({found.reason})"
    return [finding] if finding is not None else []
