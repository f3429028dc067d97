"""``stability-bench compare OLD.json NEW.json``: hand-made results files, rows worked out by hand."""
from __future__ import annotations

import json
import math

import pytest

from stability_bench.cli import main
from stability_bench.compare import (
    BETTER,
    SAME,
    WORSE,
    CompareInputError,
    compare_figure,
    compare_runs,
    load,
)
from stability_bench.results import RunResult, results_payload, write_json_atomic

METRICS = ("late_instability", "spike_count", "spike_frequency", "final_loss", "min_loss")


def run(run_id: str, *, steps: int = 1000, diverged: bool = False, divergence_step: int | None = None,
        **metrics) -> RunResult:
    base = dict.fromkeys(METRICS, 0.0) | {"spike_count": 0}
    return RunResult(case=run_id.split("::")[0], run_id=run_id, optimizer="opt", optimizer_class="reference.GD",
                     params={"lr": 0.1}, seed=0, device="cpu", dtype="float64", steps=steps,
                     diverged=diverged, divergence_step=divergence_step, metrics=base | metrics,
                     history={"step": [], "loss": []})


def write(path, runs) -> str:
    write_json_atomic(path, results_payload((r, []) for r in runs))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """OLD and NEW of two runs: in NEW, run a's late instability grows 2 → 3 decades (×1.5)
    and its spikes 10 → 10.5 per 1000 steps (×1.05, inside 1.1); run b now diverges at step
    400 of 1000, and its final loss falls 1e-3 → 1e-4 (better)."""
    old = [run("toy::a-seed0-cpu", late_instability=2.0, spike_count=10, spike_frequency=10.0,
               final_loss=1e-6, min_loss=1e-8),
           run("toy::b-seed0-cpu", final_loss=1e-3, min_loss=1e-3)]
    new = [run("toy::a-seed0-cpu", late_instability=3.0, spike_count=10, spike_frequency=10.5,
               final_loss=1e-6, min_loss=1e-8),
           run("toy::b-seed0-cpu", final_loss=1e-4, min_loss=1e-3, diverged=True, divergence_step=400)]
    return write(tmp_path / "old.json", old), write(tmp_path / "new.json", new)


# ---------------------------------------------------------------------------- one figure
@pytest.mark.parametrize("old, new, threshold, atol, expected", [
    (2.0, 3.0, 1.1, 0.0, (1.5, 1.0, WORSE)),          # 3 > 2 × 1.1
    (2.0, 2.2, 1.1, 0.0, (1.1, 0.2, SAME)),           # exactly at the threshold: not past it
    (2.0, 2.3, 1.2, 0.0, (1.15, 0.3, SAME)),          # inside a larger threshold
    (3.0, 2.0, 1.1, 0.0, (2 / 3, -1.0, BETTER)),      # 3 > 2 × 1.1 the other way
    (0.0, 0.0, 1.1, 0.0, (1.0, 0.0, SAME)),
    (0.0, 0.5, 1.1, 0.0, (math.inf, 0.5, WORSE)),     # from an exact 0 any increase is worse
    (0.0, 0.5, 1.1, 1.0, (math.inf, 0.5, SAME)),      # ... unless it is within atol
    (4.0, 8.0, 1.1, 5.0, (2.0, 4.0, SAME)),           # atol applies to every figure
    (1.0, None, 1.1, 0.0, (None, None, WORSE)),       # defined before, undefined now
    (None, 1.0, 1.1, 0.0, (None, None, "changed")),
    (None, None, 1.1, 0.0, (None, None, SAME)),
    (False, True, 1.1, 0.0, (None, None, WORSE)),     # diverged: no -> yes
    (False, True, 1000.0, 100.0, (None, None, WORSE)),  # ... whatever the threshold
    (True, False, 1.1, 0.0, (None, None, BETTER)),
    (True, True, 1.1, 0.0, (None, None, SAME)),
])
def test_compare_figure(old, new, threshold, atol, expected):
    ratio, diff, verdict = compare_figure(old, new, threshold, atol)
    assert verdict == expected[2]
    assert (ratio is None) == (expected[0] is None) and (diff is None) == (expected[1] is None)
    if ratio is not None:
        assert ratio == pytest.approx(expected[0])
        assert diff == pytest.approx(expected[1])


# ---------------------------------------------------------------------------- the table
def test_table_and_exit_status(files, capsys):
    old, new = files
    assert main(["compare", old, new, "--threshold", "1.1"]) == 1
    out = capsys.readouterr().out
    # Worked out by hand from the fixture: a: late_instability 2 -> 3 (ratio 1.5, +1) worse,
    # spike_frequency 10 -> 10.5 (1.05) inside 1.1; b: divergence 0 -> 1000 - 400 = 600
    # steps lost (ratio inf) worse, diverged no -> yes worse, final_loss 1e-3 -> 1e-4 better.
    assert out == """\
run               figure              old     new  ratio     diff  verdict
----------------  ----------------  -----  ------  -----  -------  -------
toy::a-seed0-cpu  late_instability      2       3  1.500       +1  WORSE
toy::a-seed0-cpu  spike_count          10      10  1.000        0
toy::a-seed0-cpu  spike_frequency      10    10.5  1.050     +0.5
toy::a-seed0-cpu  final_loss        1e-06   1e-06  1.000        0
toy::a-seed0-cpu  min_loss          1e-08   1e-08  1.000        0
toy::a-seed0-cpu  divergence            0       0  1.000        0
toy::a-seed0-cpu  diverged             no      no      -        -

toy::b-seed0-cpu  late_instability      0       0  1.000        0
toy::b-seed0-cpu  spike_count           0       0  1.000        0
toy::b-seed0-cpu  spike_frequency       0       0  1.000        0
toy::b-seed0-cpu  final_loss        0.001  0.0001  0.100  -0.0009  better
toy::b-seed0-cpu  min_loss          0.001   0.001  1.000        0
toy::b-seed0-cpu  divergence            0     600    inf     +600  WORSE
toy::b-seed0-cpu  diverged             no     yes      -        -  WORSE
3 figure(s) worse past the threshold (ratio > 1.1), 1 better, 10 within it; 2 run(s) compared
"""


def test_changed_only_and_metric_selection(files, capsys):
    old, new = files
    assert main(["compare", old, new, "--changed", "--metrics", "spike_frequency,final_loss",
                 "--metrics", "late_instability", "--threshold", "1.1"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[2:] if line] == [
        ["toy::a-seed0-cpu", "spike_frequency"], ["toy::a-seed0-cpu", "late_instability"],
        ["toy::b-seed0-cpu", "final_loss"], ["1", "figure(s)"]]


def test_threshold_decides(files, capsys):
    old, new = files
    # Only the spike frequency (×1.05) and late instability (×1.5): inside ×1.6, worse past ×1.04.
    assert main(["compare", old, new, "--metrics", "spike_frequency,late_instability", "--threshold", "1.6"]) == 0
    assert main(["compare", old, new, "--metrics", "spike_frequency", "--threshold", "1.04"]) == 1
    assert main(["compare", old, new, "--metrics", "late_instability", "--threshold", "1.1", "--atol", "1.5"]) == 0
    capsys.readouterr()


def test_no_change_exits_zero(files, capsys):
    old, _ = files
    assert main(["compare", old, old]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "0 figure(s) worse (no noise estimate: no verdict), 0 better, 14 within it; 2 run(s) compared"


def test_runs_matched_by_id(tmp_path, capsys):
    old = write(tmp_path / "old.json", [run("toy::a-seed0-cpu"), run("toy::gone-seed0-cpu")])
    new = write(tmp_path / "new.json", [run("toy::added-seed0-cpu"), run("toy::a-seed0-cpu", spike_count=1)])
    assert main(["compare", old, new, "--metrics", "spike_count", "--threshold", "1.1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["toy::a-seed0-cpu", "spike_count", "0", "1", "inf", "+1", "WORSE"]
    assert out[3:5] == ["only in OLD: toy::gone-seed0-cpu", "only in NEW: toy::added-seed0-cpu"]


def test_compare_runs_api():
    old = [run("x::a-seed0-cpu", steps=2000, diverged=True, divergence_step=150)]
    new = [run("x::a-seed0-cpu", steps=2000, diverged=True, divergence_step=1900)]
    (row,) = compare_runs(old, new, ["divergence"], threshold=1.1).rows
    assert (row.old, row.new, row.verdict) == (1850, 100, BETTER)
    assert row.ratio == pytest.approx(100 / 1850)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_exits_two(tmp_path, files, capsys):
    old, new = files
    not_json = tmp_path / "not.json"
    not_json.write_text("{ nope")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else", "runs": []}))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "stability-bench-results", "version": 1, "runs": [{"run_id": "x"}]}))
    cases = [
        ([str(tmp_path / "missing.json"), new], "missing.json: no such file"),
        ([str(not_json), new], "not.json:1: not valid JSON"),
        ([str(other), new], "other.json: not a stability-bench results file"),
        ([str(broken), new], "broken.json: malformed results file"),
        ([str(tmp_path), new], "is a folder"),
        ([old, new, "--metrics", "late_instabilty"], "unknown figure(s) 'late_instabilty'"),
        ([old, new, "--threshold", "0.9"], "--threshold must be a number >= 1"),
        ([old, new, "--atol", "-1"], "--atol must be a number >= 0"),
    ]
    for argv, message in cases:
        assert main(["compare", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("stability-bench: error: ") and message in captured.err, captured.err


def test_no_common_run_is_bad_input(tmp_path, capsys):
    old = write(tmp_path / "old.json", [run("toy::a-seed0-cpu")])
    new = write(tmp_path / "new.json", [run("toy::b-seed0-cpu")])
    assert main(["compare", old, new]) == 2
    assert "no run is in both" in capsys.readouterr().err


def test_load_reads_real_results_file(tmp_path):
    path = write(tmp_path / "r.json", [run("toy::a-seed0-cpu", late_instability=1.5)])
    (loaded,) = load(path)
    assert loaded.metrics["late_instability"] == 1.5
    with pytest.raises(CompareInputError):
        load(tmp_path / "absent.json")


# ---------------------------------------------------------------------------- noise bands
def bands(**figures) -> dict:
    """A baseline (stability_bench.baseline format) with bands for toy::a's figures."""
    return {"format": "stability-bench-baseline", "version": 1, "critical_lr": {},
            "runs": {"toy::a-cpu": {"optimizer": "opt", "figures": figures}}}


def test_bands_judge_the_figures_they_cover(tmp_path, capsys):
    """final_loss 1e-6 → 2e-6 is ×2 (worse by the 1.1 ratio) but 0.301 decades, inside a
    0.5-decade band; late_instability 2 → 3 is chaotic in the baseline: noisy, not worse;
    min_loss 1e-8 → 1e-7 is 1 decade, past the 0.5-decade band: worse."""
    from stability_bench.baseline import write_baseline

    old = write(tmp_path / "old.json", [run("toy::a-seed0-cpu", late_instability=2.0, final_loss=1e-6, min_loss=1e-8)])
    new = write(tmp_path / "new.json", [run("toy::a-seed0-cpu", late_instability=3.0, final_loss=2e-6, min_loss=1e-7)])
    baseline = tmp_path / "toy.baseline.json"
    write_baseline(baseline, bands(
        final_loss={"scale": "log", "tolerance": 0.5, "informative": True},
        min_loss={"scale": "log", "tolerance": 0.5, "informative": True},
        late_instability={"scale": "linear", "informative": False, "reason": "chaotic"}))
    assert main(["compare", old, new, "--metrics", "final_loss,late_instability", "--threshold", "1.1"]) == 1
    capsys.readouterr()
    from stability_bench.compare import run_compare
    status, table = run_compare(old, new, figures=["final_loss", "late_instability", "min_loss"], baseline=baseline)
    rows = {line.split()[1]: line.split()[-1] for line in table.splitlines()[2:5]}
    # the last column: the verdict, or the difference where the verdict is empty (within)
    assert rows == {"final_loss": "+1e-06", "late_instability": "noisy", "min_loss": "WORSE"}
    assert status == 1
    assert table.splitlines()[-1] == ("1 figure(s) worse past the noise band, 0 better, 1 within it, 1 noisy "
                                      "(not compared); 1 run(s) compared")
    status, _ = run_compare(old, new, figures=["final_loss", "late_instability"], baseline=baseline)
    assert status == 0


def test_a_run_missing_from_new_is_reported_and_fails(tmp_path, capsys):
    old = write(tmp_path / "old.json", [run("toy::a-seed0-cpu"), run("toy::gone-seed0-cpu")])
    new = write(tmp_path / "new.json", [run("toy::a-seed0-cpu"), run("toy::added-seed0-cpu")])
    assert main(["compare", old, new]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("0 figure(s) worse") and last.endswith(
        "1 run(s) compared; 1 run(s) only in OLD (missing from NEW: exit 1), 1 only in NEW")
    assert main(["compare", new, old, "--metrics", "spike_count"]) == 1  # 'added' is missing from that NEW
    assert main(["compare", old, write(tmp_path / "more.json", [run("toy::a-seed0-cpu"), run("toy::gone-seed0-cpu"),
                                                                  run("toy::x-seed0-cpu")])]) == 0  # only added runs
    capsys.readouterr()


def test_without_a_noise_estimate_there_is_no_verdict(files, capsys):
    """The fixture's changes (late instability ×1.5, a run that now diverges) are what a
    rounding-only rewrite can do to a chaotic run: without bands they are shown, unjudged,
    and the exit status is 0."""
    old, new = files
    assert main(["compare", old, new]) == 0
    out = capsys.readouterr().out
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in out.splitlines()[2:] if line.startswith("toy::")}
    assert rows[("toy::a-seed0-cpu", "late_instability")] == "unjudged"
    assert rows[("toy::b-seed0-cpu", "diverged")] == "unjudged"
    assert "WORSE" not in rows.values() and "better" not in rows.values()
    assert out.splitlines()[-1] == ("0 figure(s) worse (no noise estimate: no verdict), 0 better, 9 within it, "
                                    "5 changed but unjudged (no noise estimate: give --baseline FILE, the case's "
                                    ".baseline.json); 2 run(s) compared")
