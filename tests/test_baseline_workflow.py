"""The baseline workflow end to end, as the README gives it: record, check (CLI and
pytest), update after an intended change. The change is in the optimizer's code (its β₁,
a constant of the user's module beside the case): an optimizer that trains differently
must leave its bands; the unchanged one must not. An edit of the case itself makes the
baseline stale (its own outcome and exit code), never a regression."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from casefiles import line_of
from stability_bench.cli import main

DATA = Path(__file__).parent / "data" / "baseline"
CASE = DATA / "teacher.yaml"


@pytest.fixture
def guard(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cases" / "guard.yaml"
    path.parent.mkdir()
    shutil.copy(CASE, path)
    shutil.copy(DATA / "guard_optimizer.py", tmp_path / "guard_optimizer.py")
    monkeypatch.syspath_prepend(str(tmp_path))   # this process; pytester's subprocesses read PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.delitem(sys.modules, "guard_optimizer", raising=False)
    return path


def changed(path: Path) -> None:
    """A commit to the user's optimizer: its β₁ 0.9 → 0.5 (the case file is untouched)."""
    module = path.parent.parent / "guard_optimizer.py"
    module.write_text(module.read_text().replace("BETA1 = 0.9", "BETA1 = 0.5"))
    # Where Python writes bytecode, it trusts a cached .pyc whose recorded source mtime (whole
    # seconds) and size match: this same-size edit, within the second of the first import,
    # would go unseen. The cache goes with the edit.
    shutil.rmtree(module.parent / "__pycache__", ignore_errors=True)
    sys.modules.pop("guard_optimizer", None)


def edited(path: Path) -> None:
    """An edit of the case: fewer steps and another seed (no optimizer changed)."""
    path.write_text(path.read_text().replace("steps: 100", "steps: 80").replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))


def test_record_then_check_passes_and_a_change_fails_naming_file_line_figure_and_band(guard, capsys):
    assert main(["baseline", str(guard), "--jobs", "2"]) == 0
    baseline = json.loads(guard.with_name("guard.baseline.json").read_text())
    assert set(baseline["runs"]) == {"guard::adam-cpu"} and set(baseline["critical_lr"]) == {"guard::adam-cpu"}
    assert set(baseline["runs"]["guard::adam-cpu"]["figures"]["min_loss"]["seeds"]) == {"0", "1"}
    capsys.readouterr()
    assert main(["run", str(guard), "--baseline", "--no-triage"]) == 0, capsys.readouterr()
    changed(guard)
    assert main(["run", str(guard), "--baseline", "--no-triage"]) == 1
    out = capsys.readouterr().out
    located = [line for line in out.splitlines() if "baseline:" in line and "outside the baseline band" in line]
    assert located, out
    assert all(f"{guard}:{line_of(guard, 'adam: {class')}" in line for line in located)
    assert any("final_loss" in line or "min_loss" in line for line in located)
    assert "FAIL guard::adam-seed0-cpu" in out and "FAIL guard::adam-seed1-cpu" in out
    assert "less stable" in out or "more stable" in out   # every finding says which way it moved


def test_an_edited_case_is_stale_not_a_regression(guard, capsys, tmp_path):
    assert main(["baseline", str(guard)]) == 0
    edited(guard)
    capsys.readouterr()
    assert main(["run", str(guard), "--baseline", "--no-triage", "--no-critical-lr",
                 "--json", str(tmp_path / "r.json")]) == 4
    out = capsys.readouterr().out
    assert "FAIL" not in out and "outside the baseline band" not in out, out
    assert "STALE guard::adam-seed0-cpu" in out and "3 stale" in out
    stale = [line for line in out.splitlines() if "baseline is stale" in line]
    assert stale and all("seeds" in line and "steps" in line and "stability-bench baseline" in line for line in stale)
    entries = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert {f["status"] for e in entries for f in e["baseline"]} == {"stale"}


def test_the_results_file_records_every_figure_checked_with_band_and_value(guard, capsys, tmp_path):
    assert main(["baseline", str(guard)]) == 0
    assert main(["run", str(guard), "--baseline", "--no-critical-lr", "--json", str(tmp_path / "r.json")]) == 0
    entry = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    checked = {f["figure"]: f for f in entry["baseline"]}
    assert {"min_loss", "final_loss", "diverged", "early_trajectory"} <= set(checked)
    assert all(f["status"] == "inside" for f in checked.values())
    assert checked["min_loss"]["band"][0] <= checked["min_loss"]["value"] <= checked["min_loss"]["band"][1]
    assert checked["min_loss"]["value"] == entry["metrics"]["min_loss"]


def test_a_case_without_a_baseline_is_bad_input_before_training(guard, capsys):
    assert main(["run", str(guard), "--baseline"]) == 2
    err = capsys.readouterr().err
    assert f"{guard.with_name('guard.baseline.json')}: no baseline" in err and "Traceback" not in err


def test_pytest_checks_the_baseline_and_update_rewrites_it(guard, pytester, capsys):
    """In pytest: --stability-baseline passes, fails after the change, and
    --stability-baseline-update records the changed optimizer, after which it passes.
    Items: per seed, the run and its critical-lr search."""
    assert main(["baseline", str(guard)]) == 0
    project = Path(pytester.path)
    shutil.copytree(guard.parent, project / "cases")
    args = ["-p", "no:cacheprovider", "-p", "no:randomly", "--stability-baseline"]
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=4)  # two seeds, each with its critical-lr search
    changed(guard)   # the module on sys.path is the one beside the fixture's case
    result = pytester.runpytest(*args)
    assert result.parseoutcomes()["failed"] >= 2
    result.stdout.fnmatch_lines(["*baseline: *guard.yaml:*outside the baseline band*"])
    before = (project / "cases" / "guard.baseline.json").read_text()
    result = pytester.runpytest(*args, "--stability-baseline-update")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*baseline written: *guard.baseline.json (* of * figures informative)"])
    assert (project / "cases" / "guard.baseline.json").read_text() != before
    pytester.runpytest(*args).assert_outcomes(passed=4)
    edited(project / "cases" / "guard.yaml")   # the case itself: stale, its own outcome
    result = pytester.runpytest(*args, "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("stale") == 6 and "failed" not in outcomes, outcomes   # 3 seeds × (run, critical lr)
    result.stdout.fnmatch_lines(["*stale baseline (not a regression*", "*baseline is stale*seeds*steps*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_fragile_expectation_is_refused_and_check_writes_nothing(guard, capsys):
    """An expectation pinned to seed 0's final loss to 1e-9 holds on the run and fails on its
    nudged twins (they move it ~1e-7): fragile. `baseline --check` says so (exit 1) and,
    like `baseline`, leaves the recorded file as it was."""
    assert main(["baseline", str(guard)]) == 0
    path = guard.with_name("guard.baseline.json")
    recorded = path.read_text()
    value = json.loads(recorded)["runs"]["guard::adam-cpu"]["figures"]["final_loss"]["seeds"]["0"]
    guard.write_text(guard.read_text() + f"expect:\n  adam: {{final_loss: {{equals: {value!r}}}}}\n")
    capsys.readouterr()
    assert main(["baseline", str(guard), "--check"]) == 1
    out = capsys.readouterr().out
    line = line_of(guard, "final_loss: {equals")
    assert f"fragile: {guard}:{line}: guard::adam-seed0-cpu: expectation on final_loss is fragile" in out
    assert "(checked, not written)" in out and "guard::adam-seed1-cpu" not in out   # seed 1 fails alike: not fragile
    assert main(["baseline", str(guard)]) == 1 and "NOT WRITTEN" in capsys.readouterr().out
    assert path.read_text() == recorded
