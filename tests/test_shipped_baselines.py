"""The shipped baselines are current and every shipped expectation is a claim.

Reads ``cases/*.baseline.json`` (never trains): each baseline matches its case as the case
reads today (no stale fingerprint), holds two nudged runs per seed, and every expectation
of every non-slow shipped case gives the same verdict on the recorded run and on its runs
nudged one ulp up and one down (``fragile_expectations``). Re-recording
(``stability-bench baseline cases/``) refuses to write a file with a fragile expectation,
and this test fails when a case's expectation is edited into one.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from stability_bench.baseline import (
    NUDGES,
    baseline_key,
    baseline_path,
    critical_fingerprint,
    fragile_expectations,
    informative_count,
    read_baseline,
    run_fingerprint,
)
from stability_bench.critical_lr import specs
from stability_bench.plan import plan_runs
from stability_bench.schema import load_cases

ROOT = Path(__file__).parent.parent
CASE_FILES = sorted((ROOT / "cases").glob("*.yaml"))


def _shipped(path: Path):
    return [case for case in load_cases(path) if not case.slow]


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_the_baseline_is_current_for_every_run_and_critical_lr(path):
    baseline = read_baseline(baseline_path(path))
    assert "outdated" not in baseline, f"{path}: baseline recorded before fingerprints"
    for case in _shipped(path):
        for spec in plan_runs(case, devices=["cpu"]):
            entry = baseline["runs"].get(baseline_key(spec.run_id))
            assert entry is not None, f"{spec.run_id}: no baseline"
            assert entry["fingerprint"] == run_fingerprint(case, spec.optimizer.key), f"{spec.run_id}: stale"
            rounding = entry["rounding"][str(spec.seed)]
            assert set(rounding["metrics"]) == {"0", *(f"{n:+d}" for n in NUDGES)}
        for optimizer in specs(case):
            entry = baseline["critical_lr"][f"{case.name}::{optimizer}-cpu"]
            assert entry["fingerprint"] == critical_fingerprint(case, optimizer)


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_no_shipped_expectation_is_fragile_under_a_one_ulp_nudge(path):
    baseline = read_baseline(baseline_path(path))
    fragile = [f.message for case in _shipped(path) for f in fragile_expectations(case, baseline)]
    assert fragile == []


def test_the_readme_table_shows_how_many_figures_each_baseline_can_fail_on():
    """The shipped-cases table says, per case file, 'k of n figures informative' as the
    baseline holds it: a case whose baseline checks nothing is visible."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for path in CASE_FILES:
        informative, figures = informative_count(read_baseline(baseline_path(path)))
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{path.stem}`")), None)
        assert row is not None, f"README: no row for {path.stem}"
        found = re.search(r"(\d+) of (\d+) informative", row)
        assert found and (int(found[1]), int(found[2])) == (informative, figures), (row, informative, figures)
