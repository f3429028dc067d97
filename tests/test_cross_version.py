"""benchmarks/cross_version.py: trajectory comparison and alarm classification (pure: no torch runs)."""
from __future__ import annotations

import json

import pytest

from benchmarks.cross_version import (CHANGES, alarms_of, cross_check, documented, first_difference, load_changes,
                                      load_results, main, render, version_matches)


def _run(run_id, loss, baseline=(), expectations=(), probes=None):
    return {"run_id": run_id, "history": {"step": list(range(len(loss))), "loss": list(loss),
                                          "grad_norm": [1.0] * len(loss)},
            "probes": probes or {}, "baseline": list(baseline), "expectations": list(expectations)}


def _results(torch, runs=(), failures=(), searches=()):
    return {"environment": {"torch": torch}, "runs": {r["run_id"]: r for r in runs},
            "failures": {f["run_id"]: f for f in failures}, "searches": {s["search_id"]: s for s in searches}}


OUTSIDE = {"figure": "late_instability", "status": "outside", "value": 0.37, "band": [0.39, 1.03], "baseline": 0.71,
           "message": "late_instability 0.37 outside the baseline band"}


def test_first_difference_names_the_step_and_columns():
    a = {"step": [0, 1, 2, 3], "loss": [1.0, 0.5, 0.25, 0.1], "grad_norm": [2.0, 1.0, 0.5, 0.3]}
    assert first_difference(a, json.loads(json.dumps(a))) is None  # JSON keeps every bit
    b = {**a, "loss": [1.0, 0.5, 0.25000000000000006, 0.1], "grad_norm": [2.0, 1.0, 0.5, 0.31]}
    assert first_difference(a, b) == {"index": 2, "step": 2, "columns": ["loss"]}
    c = {**a, "loss": [1.0, 0.5], "step": [0, 1]}  # diverged earlier: the shorter history ends first
    assert first_difference(a, c)["index"] == 2
    d = {**a, "update_norm": [0.1] * 4}  # a column only one side has differs from its start
    assert first_difference(a, d) == {"index": 0, "step": 0, "columns": ["update_norm"]}
    assert first_difference({"loss": [None, 1.0]}, {"loss": [None, 1.0]}) is None  # non-finite is null in both


@pytest.mark.parametrize("version, spec, expected", [
    ("2.5.1+cu124", ">=2.5,<2.6", True), ("2.5.0", ">=2.5,<2.6", True), ("2.6.0", ">=2.5,<2.6", False),
    ("2.13.0+cpu", "<2.13", False), ("2.12.1", "<2.13", True), ("2.5.1", "==2.5.1", True), ("2.5.1", "2.5", False),
    ("2.14.1", None, True), ("2.14.1", "", True), ("2.14.1", "!=2.14.1", False)])
def test_version_matches(version, spec, expected):
    assert version_matches(version, spec) is expected


def test_alarms_are_failing_findings_failed_expectations_and_failures():
    entry = _run("c::a-seed0-cpu", [1.0], baseline=[OUTSIDE, {"figure": "min_loss", "status": "uninformative"},
                                                    {"figure": "final_loss", "status": "stale", "message": "m"},
                                                    {"figure": "spike_frequency", "status": "new", "failed": False}],
                 expectations=[{"metric": "spike_count", "comparator": "at_least", "resolved_bound": 2, "value": 0,
                                "passed": False, "optimizer": "a", "where": "c.yaml:3"},
                               {"metric": "min_loss", "passed": True}])
    found = alarms_of(entry)
    # an unknown status counts (here "stale") until it is known to be informational; failed: False never does
    assert [(a["kind"], a["figure"]) for a in found] == [("baseline", "late_instability"),
                                                         ("baseline", "final_loss"), ("expectation", "spike_count")]
    crash = alarms_of({}, {"run_id": "c::a-seed0-cpu", "kind": "crash", "error": "RuntimeError: x"})
    assert crash[0]["kind"] == "failure" and "RuntimeError" in crash[0]["message"]


def test_classification_documented_also_current_unexplained():
    changes = [{"run": "c::a-*-cpu", "figure": "late_instability", "torch": "<2.6", "reason": "known"},
               {"run": "c::*", "figure": "trajectory", "torch": "<2.6", "reason": "norm rounding"}]
    current = _results("2.13.0", [_run("c::a-seed0-cpu", [1.0, 0.5]), _run("c::b-seed0-cpu", [1.0, 0.5],
                                                                            baseline=[OUTSIDE]),
                                  _run("c::c-seed0-cpu", [1.0, 0.5])])
    other = _results("2.5.1", [_run("c::a-seed0-cpu", [1.0, 0.6], baseline=[OUTSIDE]),
                               _run("c::b-seed0-cpu", [1.0, 0.5], baseline=[OUTSIDE]),
                               _run("c::c-seed0-cpu", [1.0, 0.5], baseline=[OUTSIDE])])
    out = cross_check(current, other, changes)
    rows = {r["run"]: r for r in out["rows"]}
    assert rows["c::a-seed0-cpu"]["trajectory"] == "differs" and rows["c::a-seed0-cpu"]["first_step"] == 1
    assert rows["c::a-seed0-cpu"]["trajectory_reason"] == "norm rounding"
    assert rows["c::a-seed0-cpu"]["alarms"][0]["classification"] == "documented"
    assert rows["c::b-seed0-cpu"]["alarms"][0]["classification"] == "also-current"
    # identical trajectory, alarm only under the other torch: nondeterminism or probe arithmetic
    assert rows["c::c-seed0-cpu"]["alarms"][0]["classification"] == "unexplained"
    assert "bit-identical" in rows["c::c-seed0-cpu"]["alarms"][0]["reason"]
    assert out["alarms"] == {"documented": 1, "also-current": 1, "unexplained": 1}
    assert out["runs_identical"] == 2
    # the documented entry does not cover another torch
    assert cross_check(current, {**other, "environment": {"torch": "2.7.0"}}, changes)["alarms"]["documented"] == 0


def test_probes_and_searches_and_missing_runs():
    cur = _results("2.13.0", [_run("c::a-seed0-cpu", [1.0], probes={"step": [0], "sharpness": [3.0]})],
                   searches=[{"search_id": "c::a-critical_lr-seed0-cpu", "critical_lr": {"value": 0.1, "probes": []},
                              "baseline": []}])
    oth = _results("2.5.1", [_run("c::a-seed0-cpu", [1.0], probes={"step": [0], "sharpness": [3.5]})],
                   failures=[{"run_id": "c::b-seed0-cpu", "kind": "crash", "error": "E"}],
                   searches=[{"search_id": "c::a-critical_lr-seed0-cpu", "critical_lr": {"value": 0.2, "probes": []},
                              "baseline": [OUTSIDE]}])
    rows = {r["run"]: r for r in cross_check(cur, oth, [])["rows"]}
    assert rows["c::a-seed0-cpu"]["trajectory"] == "identical" and rows["c::a-seed0-cpu"]["probes_first_step"] == 0
    assert rows["c::a-critical_lr-seed0-cpu"]["critical_lr"] == [0.1, 0.2]
    assert rows["c::a-critical_lr-seed0-cpu"]["alarms"][0]["classification"] == "unexplained"
    assert rows["c::b-seed0-cpu"]["trajectory"] == "missing in current"
    assert rows["c::b-seed0-cpu"]["alarms"][0]["kind"] == "failure"


def test_shipped_changes_table_is_well_formed():
    changes = load_changes(CHANGES)
    assert changes, "the table documents the measured changes"
    for change in changes:
        assert {"run", "figure", "torch", "reason"} <= set(change)
        version_matches("2.5.1", change["torch"])  # parses
    assert documented(changes, "cohen_fig5::adafactor-seed0-cpu", "trajectory", "2.5.1+cu124") is not None
    assert documented(changes, "cohen_fig5::adam-seed0-cpu", "trajectory", "2.5.1+cu124") is None


def test_main_from_results_files(tmp_path, capsys):
    def write(name, torch, runs):
        path = tmp_path / name
        path.write_text(json.dumps({"format": "stability-bench-results", "version": 1, "environment": {"torch": torch},
                                    "runs": runs, "failures": [], "critical_lr": []}))
        return str(path)

    cur = write("cur.json", "2.13.0", [_run("c::a-seed0-cpu", [1.0, 0.5])])
    same = write("same.json", "2.14.1", [_run("c::a-seed0-cpu", [1.0, 0.5])])
    alarm = write("alarm.json", "2.5.1", [_run("c::a-seed0-cpu", [1.0, 0.4], baseline=[OUTSIDE])])
    assert load_results(cur)["runs"]["c::a-seed0-cpu"]["history"]["loss"] == [1.0, 0.5]
    assert main(["--other-results", same, "--current-results", cur, "--out", str(tmp_path / "a")]) == 0
    assert "1 of 1 runs and searches bit-identical" in capsys.readouterr().out
    assert main(["--other-results", alarm, "--current-results", cur, "--out", str(tmp_path / "b")]) == 1
    text = capsys.readouterr().out
    assert "differs from step 1" in text and "UNEXPLAINED" in text
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["summary"]["alarms"]["unexplained"] == 1
    assert render(report).startswith("torch 2.5.1 (other) against torch 2.13.0 (current)")


def test_largest_probe_change_skips_solver_diagnostics():
    from benchmarks.cross_version import largest_change

    a = {"step": [0, 10], "sharpness": [2.0, 4.0], "sharpness_residual": [1e-4, 1e-4], "sharpness_hvps": [9, 9]}
    b = {"step": [0, 10], "sharpness": [2.0, 4.4], "sharpness_residual": [3e-4, 1e-4], "sharpness_hvps": [12, 9]}
    big = largest_change(a, b)
    assert big["column"] == "sharpness" and big["relative"] == pytest.approx(0.4 / 4.4)
    assert largest_change(a, a) is None
