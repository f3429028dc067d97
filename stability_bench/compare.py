"""Compare two results files (``stability-bench run --json``) figure by figure.

``stability-bench compare OLD.json NEW.json [--threshold 1.1] [--atol 0] [--metrics ...]``

Runs are matched by ``run_id`` (case, optimizer, sweep point, seed, device). For each
matched run and each figure the table shows the old and new values, their ratio new/old
and their difference new − old, and a verdict. Every figure compared is *lower is
better*:

==================  ===========================================================
figure              meaning
==================  ===========================================================
late_instability    decades the loss climbs back after its minimum
spike_count         loss spike onsets
spike_frequency     spike onsets per 1000 recorded steps
final_loss          the last finite loss
min_loss            the smallest finite loss
divergence          steps lost to divergence: steps − divergence_step if the run
                    diverged, else 0
diverged            the run diverged (no → yes is a regression, whatever the
                    threshold)
==================  ===========================================================

Without a noise estimate no figure gets a verdict: a rounding-only change of an optimizer
moves a chaotic run's loss ×16 and its spike count 26 → 3, which no fixed ratio can tell
from a regression. The estimate is a baseline's noise bands (``--baseline FILE``, the
``.baseline.json`` beside the case file; a figure outside its band is **worse** or
**better** by the figure's direction); without one the table shows ratios and differences
marked ``unjudged``, and exit status 0. ``--threshold R`` asks for ratio verdicts anyway,
for figures without a band, knowing they cannot tell rounding from change:
a number is then **worse** when ``new > old × threshold`` and ``new − old > atol``; **better**
when ``old > new × threshold`` and ``old − new > atol``. The ratio of a figure whose old
value is 0 is infinite, so from an exact 0 any increase above ``atol`` is worse (a run
that never spiked now spikes; one that never diverged now loses steps). A figure that
was defined and is now undefined (``null``: e.g. no finite loss any more) is worse; one
that becomes defined is marked "changed". Exit status: 1 if any figure is worse or a run of
OLD is missing from NEW, 0 otherwise, 2 on bad input (an unreadable file, not a results
file, a bad option).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from stability_bench.results import RunResult, read_results


def _metric(name: str) -> Callable[[RunResult], Any]:
    return lambda run: (run.metrics or {}).get(name)


def _steps_lost(run: RunResult) -> int:
    """Steps lost to divergence: steps − divergence_step if the run diverged, else 0."""
    if run.diverged and run.divergence_step is not None:
        return max(0, int(run.steps) - int(run.divergence_step))
    return 0


# Figure name -> how to read it from a run. Every one is lower-is-better.
FIGURES: dict[str, Callable[[RunResult], Any]] = {
    "late_instability": _metric("late_instability"),
    "spike_count": _metric("spike_count"),
    "spike_frequency": _metric("spike_frequency"),
    "final_loss": _metric("final_loss"),
    "min_loss": _metric("min_loss"),
    "divergence": _steps_lost,
    "diverged": lambda run: bool(run.diverged),
}
DEFAULT_FIGURES: tuple[str, ...] = tuple(FIGURES)

WORSE, BETTER, CHANGED, SAME, NOISY, UNJUDGED = "WORSE", "better", "changed", "", "noisy", "unjudged"
# compare's figure → the baseline figure whose band judges it (steps lost move exactly
# as much as the divergence step does).
BAND_OF = {"late_instability": "late_instability", "spike_frequency": "spike_frequency",
           "final_loss": "final_loss", "min_loss": "min_loss", "divergence": "divergence_step",
           "diverged": "diverged"}


class CompareInputError(ValueError):
    """A file that cannot be read as a results file, or a bad option."""


@dataclass
class Row:
    run_id: str
    figure: str
    old: Any
    new: Any
    ratio: float | None      # new / old; inf when old == 0 < new; None when undefined
    diff: float | None       # new − old; None when either is undefined or a boolean
    verdict: str             # WORSE, better, changed or ""


@dataclass
class Comparison:
    rows: list[Row]
    threshold: float | None   # None: no ratio verdicts (figures without a band are unjudged)
    atol: float
    only_old: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    banded: bool = False     # noise bands judged the figures they cover

    @property
    def worse(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == WORSE]

    @property
    def better(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == BETTER]


def load(path: str | Path) -> list[RunResult]:
    """The runs of a results file, or CompareInputError saying why it cannot be read."""
    path = Path(path)
    try:
        runs = read_results(path)
    except FileNotFoundError:
        raise CompareInputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CompareInputError(f"{path}: is a folder, not a results file") from None
    except OSError as exc:
        raise CompareInputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CompareInputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise CompareInputError(f"{path}: not a text file") from None
    except ValueError as exc:  # read_results: "PATH: not a stability-bench results file"
        message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
        raise CompareInputError(f"{message} (results files are written by 'stability-bench run "
                                f"--json FILE')") from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise CompareInputError(f"{path}: malformed results file ({type(exc).__name__}: {exc})") from None
    for i, run in enumerate(runs):
        if not isinstance(run.run_id, str) or not isinstance(run.metrics, dict):
            raise CompareInputError(f"{path}: run {i} has no run_id or metrics")
    return runs


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def compare_figure(old: Any, new: Any, threshold: float = 1.1, atol: float = 0.0) -> tuple[float | None, float | None, str]:
    """(ratio, difference, verdict) of one lower-is-better figure."""
    if isinstance(old, bool) or isinstance(new, bool):  # diverged
        if old is None or new is None:
            return None, None, SAME if old is new else CHANGED
        return None, None, WORSE if (new and not old) else BETTER if (old and not new) else SAME
    a, b = _number(old), _number(new)
    if a is None and b is None:
        return None, None, SAME
    if b is None:
        return None, None, WORSE     # defined before, undefined now
    if a is None:
        return None, None, CHANGED
    diff = b - a
    if a == b:
        ratio = 1.0
    elif a == 0:
        ratio = math.inf if b > 0 else -math.inf
    else:
        ratio = b / a
    if b > a * threshold and diff > atol:
        verdict = WORSE
    elif a > b * threshold and -diff > atol:
        verdict = BETTER
    else:
        verdict = SAME
    return ratio, diff, verdict


def compare_in_band(figure: str, old: Any, new: Any, band: dict) -> tuple[float | None, float | None, str] | None:
    """(ratio, difference, verdict) of a figure judged by its baseline ``band`` entry; None
    when the band cannot judge it (no tolerance: booleans, undefined values)."""
    from stability_bench.baseline import _scaled

    if not band.get("informative", True):
        return None, None, NOISY
    tolerance, name = band.get("tolerance"), BAND_OF[figure]
    a, b = _number(old), _number(new)
    if tolerance is None or a is None or b is None:
        return None
    ratio = 1.0 if a == b else (b / a if a else math.copysign(math.inf, b))
    if figure == "divergence":
        shift = b - a  # steps lost: lower is better, in steps like the divergence step's band
    else:
        shift = _scaled(name, b) - _scaled(name, a)
    verdict = WORSE if shift > tolerance else BETTER if shift < -tolerance else SAME
    return ratio, b - a, verdict


def compare_runs(old: Sequence[RunResult], new: Sequence[RunResult], figures: Iterable[str] = DEFAULT_FIGURES,
                 threshold: float | None = None, atol: float = 0.0, bands: dict | None = None) -> Comparison:
    """Rows for every run in both lists (in OLD's order) and every figure; ``bands``: a
    baseline (``stability_bench.baseline``) whose noise bands judge the figures they cover;
    the others are judged by ``threshold`` if given, else left unjudged."""
    from stability_bench.baseline import baseline_key
    figures = check_figures(figures)
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 1.0):
        raise CompareInputError(f"--threshold must be a number >= 1 (a ratio new/old), got {threshold}")
    if not (math.isfinite(atol) and atol >= 0.0):
        raise CompareInputError(f"--atol must be a number >= 0, got {atol}")
    new_by_id = {run.run_id: run for run in new}
    old_ids = {run.run_id for run in old}
    rows: list[Row] = []
    for run in old:
        other = new_by_id.get(run.run_id)
        if other is None:
            continue
        entry = ((bands or {}).get("runs", {}).get(baseline_key(run.run_id)) or {}).get("figures", {})
        for figure in figures:
            a, b = FIGURES[figure](run), FIGURES[figure](other)
            band = entry.get(BAND_OF.get(figure, ""))
            judged = compare_in_band(figure, a, b, band) if band else None
            if judged is None and threshold is None:
                ratio, diff, _ = compare_figure(a, b, math.inf, math.inf)
                verdict = SAME if a == b else UNJUDGED
            else:
                ratio, diff, verdict = judged or compare_figure(a, b, threshold, atol)
            rows.append(Row(run.run_id, figure, a, b, ratio, diff, verdict))
    return Comparison(rows, threshold, atol,
                      only_old=[r.run_id for r in old if r.run_id not in new_by_id],
                      only_new=[r.run_id for r in new if r.run_id not in old_ids], banded=bands is not None)


def check_figures(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise CompareInputError(f"unknown figure(s) {', '.join(map(repr, unknown))}; "
                                f"figures: {', '.join(FIGURES)}")
    if not names:
        raise CompareInputError(f"no figures to compare; figures: {', '.join(FIGURES)}")
    return names


def _fmt_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    if math.isinf(ratio):
        return "inf" if ratio > 0 else "-inf"
    return f"{ratio:.3f}"


def _fmt_diff(diff: float | None) -> str:
    if diff is None:
        return "-"
    if diff == 0:
        return "0"
    return f"{diff:+.4g}"


HEADER = ("run", "figure", "old", "new", "ratio", "diff", "verdict")


def format_table(comparison: Comparison, changed_only: bool = False) -> str:
    """An aligned text table (text left, numbers right), then the runs found in only one
    file and a summary line."""
    rows = [r for r in comparison.rows if not changed_only or r.old != r.new]
    cells = [HEADER] + [(r.run_id, r.figure, _fmt_value(r.old), _fmt_value(r.new), _fmt_ratio(r.ratio),
                         _fmt_diff(r.diff), r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    right = {2, 3, 4, 5}

    def line(row) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    previous = None
    for row in cells[1:]:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    for label, ids in (("only in OLD", comparison.only_old), ("only in NEW", comparison.only_new)):
        for run_id in ids:
            out.append(f"{label}: {run_id}")
    runs = len({r.run_id for r in comparison.rows})
    worse, better = comparison.worse, comparison.better
    noisy = sum(r.verdict == NOISY for r in comparison.rows)
    unjudged = sum(r.verdict == UNJUDGED for r in comparison.rows)
    if comparison.threshold is None:
        past = "past the noise band" if comparison.banded else "(no noise estimate: no verdict)"
    else:
        past = (f"past the threshold (ratio > {comparison.threshold:g}"
                + (f", difference > {comparison.atol:g}" if comparison.atol else "")
                + (", or past the noise band where the baseline has one" if comparison.banded else "") + ")")
    summary = (f"{len(worse)} figure(s) worse {past}, {len(better)} better, "
               f"{len(comparison.rows) - len(worse) - len(better) - noisy - unjudged} within it"
               + (f", {noisy} noisy (not compared)" if noisy else "")
               + (f", {unjudged} changed but unjudged (no noise estimate: give --baseline FILE, the case's "
                  f".baseline.json)" if unjudged else "")
               + f"; {runs} run(s) compared")
    if comparison.only_old or comparison.only_new:
        summary += (f"; {len(comparison.only_old)} run(s) only in OLD"
                    + (" (missing from NEW: exit 1)" if comparison.only_old else "")
                    + f", {len(comparison.only_new)} only in NEW")
    out.append(summary)
    return "\n".join(out)


def load_bands(*paths: str | Path | None) -> dict | None:
    """Noise bands: the first of ``paths`` that is a baseline file, or the ``"baseline"``
    entry a results file carries; None if none has bands."""
    from stability_bench.baseline import BaselineError, read_baseline

    for path in paths:
        if path is None:
            continue
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("baseline"), dict):
            return data["baseline"]
        try:
            return read_baseline(path)
        except BaselineError:
            continue
    return None


def run_compare(old_path: str | Path, new_path: str | Path, threshold: float | None = None, atol: float = 0.0,
                figures: Iterable[str] | None = None, changed_only: bool = False,
                baseline: str | Path | None = None) -> tuple[int, str]:
    """(exit status, report) for ``stability-bench compare``; CompareInputError on bad input.
    ``baseline``: a baseline file whose noise bands judge the figures (else the bands a
    results file carries, if any)."""
    if baseline is not None and load_bands(baseline) is None:
        raise CompareInputError(f"{baseline}: not a stability-bench baseline file")
    bands = load_bands(baseline, new_path, old_path)
    comparison = compare_runs(load(old_path), load(new_path), figures or DEFAULT_FIGURES, threshold, atol, bands)
    if not comparison.rows:
        raise CompareInputError(f"no run is in both {old_path} and {new_path} (runs are matched by run_id)")
    return (1 if comparison.worse or comparison.only_old else 0), format_table(comparison, changed_only)
