"""The baseline workflow end to end, as the README gives it: record, check (CLI and
pytest), update after an intended change. The change is Adam's betas: an optimizer that
trains differently must leave its bands; the unchanged one must not."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stability_bench.cli import main

CASE = Path(__file__).parent / "data" / "baseline" / "teacher.yaml"


@pytest.fixture
def guard(tmp_path) -> Path:
    path = tmp_path / "cases" / "guard.yaml"
    path.parent.mkdir()
    shutil.copy(CASE, path)
    return path


def changed(path: Path) -> None:
    """An edit a user would make to their optimizer: Adam's β₁ 0.9 → 0.5."""
    path.write_text(path.read_text().replace("lr: 0.01}", "lr: 0.01, betas: [0.5, 0.999]}"))


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


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
    assert all(f"{guard}:{line_of(guard, 'adam:')}" in line for line in located)
    assert any("final_loss" in line or "min_loss" in line for line in located)
    assert "FAIL guard::adam-seed0-cpu" in out and "FAIL guard::adam-seed1-cpu" in out


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
    changed(project / "cases" / "guard.yaml")
    result = pytester.runpytest(*args)
    assert result.parseoutcomes()["failed"] >= 2
    result.stdout.fnmatch_lines(["*baseline: *guard.yaml:*outside the baseline band*"])
    before = (project / "cases" / "guard.baseline.json").read_text()
    result = pytester.runpytest(*args, "--stability-baseline-update")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*baseline written: *guard.baseline.json"])
    assert (project / "cases" / "guard.baseline.json").read_text() != before
    pytester.runpytest(*args).assert_outcomes(passed=4)
