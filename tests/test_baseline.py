"""Baselines: the ulp nudge, bands worked out by hand from hand-made runs, located
failures, the file round trip, and the shipped quadratic case against its own baseline."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from casefiles import line_of
from stability_bench.baseline import (
    NOISE_FACTOR,
    BaselineError,
    baseline_key,
    baseline_path,
    check_against_baseline,
    direction,
    fragile_expectations,
    informative_count,
    read_baseline,
    record_baseline,
    run_fingerprint,
    write_baseline,
)
from stability_bench.results import RunResult, environment
from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start
from stability_bench.schema import load_case

CASES = Path(__file__).parent.parent / "cases"
DATA = Path(__file__).parent / "data"


# ------------------------------------------------------------------------- the nudge
def test_perturb_moves_every_parameter_one_ulp_and_names_the_run():
    case = load_case(CASES / "bai_li_perceptron.yaml")
    spec = plan_runs(case, devices=["cpu"], seeds=[0], optimizers=["adam"])[0]
    plain, nudged = start(spec), start(dataclasses.replace(spec, perturb=1))
    for p, q in zip(plain.params, nudged.params):
        assert torch.equal(q, torch.nextafter(p, torch.tensor(math.inf)))
    down = start(dataclasses.replace(spec, perturb=-2))
    for p, q in zip(plain.params, down.params):
        once = torch.nextafter(p, torch.tensor(-math.inf))
        assert torch.equal(q, torch.nextafter(once, torch.tensor(-math.inf)))
    assert dataclasses.replace(spec, perturb=1).run_id == spec.run_id + "-perturb1"
    assert baseline_key(spec.run_id) == "bai_li_perceptron::adam-cpu"


# ----------------------------------------------------------------- bands by hand
def result(seed: int, *, final_loss: float, late: float, diverged: bool = False, perturb: int = 0) -> RunResult:
    suffix = f"-perturb{perturb}" if perturb else ""
    return RunResult(case="toy", run_id=f"toy::adam-seed{seed}-cpu{suffix}", optimizer="adam",
                     optimizer_class="torch.optim.Adam", params={"lr": 1e-3}, seed=seed, device="cpu",
                     dtype="float32", steps=1000, diverged=diverged, divergence_step=None,
                     metrics={"final_loss": final_loss, "min_loss": final_loss, "late_instability": late,
                              "spike_frequency": 0.0}, history={})


@pytest.fixture
def toy():
    case = load_case(DATA / "baseline_toy.yaml")
    runs = [result(0, final_loss=1e-6, late=3.0), result(1, final_loss=1e-4, late=5.0)]
    # Nudged: seed 0's loss moves 1e-6 → 2e-6 (0.301 decades), seed 1's 1e-4 → 1.1e-4
    # (0.0414 decades); late instability moves 3.0 → 4.5 and 5.0 → 4.0 (1.5 and 1.0 decades).
    nudged = [result(0, final_loss=2e-6, late=4.5, perturb=1), result(1, final_loss=1.1e-4, late=4.0, perturb=1)]
    return case, record_baseline(case, runs, nudged, environment=environment())


def test_record_noise_tolerance_and_informativeness(toy):
    _, data = toy
    figures = data["runs"]["toy::adam-cpu"]["figures"]
    loss = figures["final_loss"]
    assert loss["noise"] == pytest.approx(math.log10(2))
    assert loss["tolerance"] == pytest.approx(NOISE_FACTOR * math.log10(2) + 0.01)
    assert loss["spread"] == pytest.approx(2.0) and loss["informative"]       # 0.301 < half of 2 decades
    late = figures["late_instability"]
    assert late["noise"] == pytest.approx(1.5) and late["spread"] == pytest.approx(2.0)
    # 1.5 ≥ half of 2 (chaotic), and its band 3·1.5 + 0.25 is wider than the 2-decade cap.
    assert not late["informative"] and late["reason"] == "its band ±4.75 decades is wider than 2: it could not fail"
    assert figures["diverged"]["informative"] and figures["diverged"]["seeds"] == {"0": False, "1": False}


def test_check_inside_outside_and_uninformative(toy):
    case, data = toy
    tol = NOISE_FACTOR * math.log10(2) + 0.01  # 0.913 decades around seed 0's 1e-6
    inside = result(0, final_loss=1e-6 * 10 ** (tol * 0.99), late=9.0)
    findings = check_against_baseline(case, inside, data)
    # Late instability: reported, not used; every other figure (and the trajectory) inside.
    assert {f.figure: f.status for f in findings if f.status != "inside"} == {"late_instability": "uninformative"}
    assert {f.figure for f in findings} == {"diverged", "final_loss", "min_loss", "late_instability",
                                            "spike_frequency", "early_trajectory"}
    assert not any(f.failed for f in findings)
    outside = result(0, final_loss=1e-6 * 10 ** (tol * 1.01), late=3.0)
    failed = [f for f in check_against_baseline(case, outside, data) if f.failed]
    assert sorted(f.figure for f in failed) == ["final_loss", "min_loss"]  # the toy's min = final
    (bad,) = [f for f in failed if f.figure == "final_loss"]
    line = line_of(DATA / "baseline_toy.yaml", "adam: {class")
    assert bad.figure == "final_loss" and bad.band == pytest.approx((1e-6 / 10 ** tol, 1e-6 * 10 ** tol))
    assert bad.message.startswith(f"{DATA / 'baseline_toy.yaml'}:{line}: toy::adam-seed0-cpu: final_loss ")
    assert "outside the baseline band" in bad.message and f"{outside.metrics['final_loss']:.4g}" in bad.message
    assert bad.direction == "less stable" and bad.message.endswith(": less stable")   # a higher loss
    lower = [f for f in check_against_baseline(case, result(0, final_loss=1e-6 / 10 ** (tol * 1.01), late=3.0), data)
             if f.failed and f.figure == "final_loss"]
    assert [f.direction for f in lower] == ["more stable"]
    # A seed the baseline lacks: the seeds' range (1e-6 … 1e-4) widened by the tolerance.
    assert not [f for f in check_against_baseline(case, result(7, final_loss=1e-5, late=3.0), data) if f.failed]
    assert sorted(f.figure for f in check_against_baseline(case, result(7, final_loss=1e-3, late=3.0), data)
                  if f.failed) == ["final_loss", "min_loss"]
    # Divergence is compared exactly (no nudge flipped it).
    assert "diverged" in [f.figure for f in check_against_baseline(
        case, result(0, final_loss=1e-6, late=3.0, diverged=True), data) if f.failed]


def test_missing_run_fails_and_file_round_trip(toy, tmp_path):
    case, data = toy
    other = dataclasses.replace(result(0, final_loss=1e-6, late=3.0), run_id="toy::sgd-seed0-cpu", optimizer="adam")
    (missing,) = [f for f in check_against_baseline(case, other, data)]
    assert missing.failed and missing.status == "missing" and "no baseline for this run" in missing.message
    path = baseline_path(tmp_path / "toy.yaml")
    assert path.name == "toy.baseline.json"
    write_baseline(path, data)
    assert read_baseline(path) == data
    text = path.read_text()
    assert text.index('"critical_lr"') < text.index('"format"') < text.index('"runs"')  # keys sorted: diffable


# -------------------------------------------------- the shipped quadratic case
def test_shipped_quadratic_case_passes_its_baseline():
    """The CI check in small: the EMAHB and GD runs of quadratic_half_x2 (seed 0) inside their bands, and
    a learning rate 1 % off its sweep point leaves them (the bands are not vacuous)."""
    case = load_case(CASES / "quadratic_half_x2.yaml")
    data = read_baseline(baseline_path(CASES / "quadratic_half_x2.yaml"))
    for spec in plan_runs(case, devices=["cpu"], seeds=[0], optimizers=["emahb_stable", "gd"]):
        assert [f.message for f in check_against_baseline(case, execute(spec), data) if f.failed] == []
    spec = plan_runs(case, devices=["cpu"], seeds=[0], optimizers=["emahb_stable"])[1]   # lr = 37
    shifted = dataclasses.replace(spec, params={**spec.params, "lr": 37.0 * 1.01})
    off = execute(shifted)
    off.run_id = spec.run_id
    assert "final_loss" in [f.figure for f in check_against_baseline(case, off, data) if f.failed]


# ------------------------------------------------- bands that can fail, direction
def test_a_band_wider_than_its_cap_is_uninformative_whatever_the_seeds_say():
    """final_loss's cap is 2 decades: a nudge moving it 0.7 decades gives a band of
    3·0.7 + 0.01 = 2.11 decades, which could not fail — reported, not used — though the
    seeds are 4 decades apart (not chaotic); 0.6 decades gives 1.81, which can."""
    case = load_case(DATA / "baseline_toy.yaml")
    runs = [result(0, final_loss=1e-6, late=3.0), result(1, final_loss=1e-2, late=3.0)]
    for move, informative in ((0.7, False), (0.6, True)):
        nudged = [result(0, final_loss=1e-6 * 10 ** move, late=3.0, perturb=1),
                  result(1, final_loss=1e-2, late=3.0, perturb=1)]
        entry = record_baseline(case, runs, nudged)["runs"]["toy::adam-cpu"]["figures"]["final_loss"]
        assert entry["informative"] is informative, entry
        if not informative:
            assert "could not fail" in entry["reason"]
    assert informative_count(record_baseline(case, runs, nudged)) == (5, 5)
    # Chaotic: a nudge moves late instability 0.5 decades, half the 1 decade between the seeds.
    late = [result(0, final_loss=1e-6, late=3.0), result(1, final_loss=1e-2, late=4.0)]
    entry = record_baseline(case, late, [result(0, final_loss=1e-6, late=3.5, perturb=1)])
    assert entry["runs"]["toy::adam-cpu"]["figures"]["late_instability"]["reason"].startswith("chaotic")


def test_with_one_seed_a_figure_a_nudge_moves_past_its_floor_is_chaotic():
    """One seed gives no spread to compare the noise with: a figure a one-ulp nudge moves by
    more than its floor (0.01 decade for losses) has amplified the nudge ~10⁵-fold, and two
    samples of that are no bound (cohen_fig7_warmup: nudges 0.1 decade, a rewrite 0.66).
    One that a nudge moves less stays banded."""
    case = load_case(DATA / "baseline_toy.yaml")
    runs = [result(0, final_loss=1e-3, late=3.0)]
    for move, informative in ((0.02, False), (0.005, True)):
        nudged = [result(0, final_loss=1e-3 * 10 ** move, late=3.0, perturb=1)]
        entry = record_baseline(case, runs, nudged)["runs"]["toy::adam-cpu"]["figures"]["final_loss"]
        assert entry["informative"] is informative, entry
        assert informative or entry["reason"].startswith("chaotic with one seed")


@pytest.mark.parametrize("figure, old, new, moved", [
    ("spike_frequency", 1.0, 5.0, "less stable"), ("critical_lr", 0.1, 0.05, "less stable"),
    ("critical_lr", 0.1, 0.2, "more stable"), ("diverged", False, True, "less stable"),
    ("divergence_step", 500, 400, "less stable"), ("precond_sharpness_ratio", 1.0, 1.2, "less stable"),
    ("min_loss", 1e-3, 1e-5, "more stable"), ("spike_height_min", 4.0, 3.0, "more stable"),
])
def test_every_figure_states_which_way_is_less_stable(figure, old, new, moved):
    assert direction(figure, old, new) == moved
    assert direction(figure, old, old) is None


# -------------------------------------------------------------------- fingerprints
def test_an_edited_case_is_stale_naming_the_keys_and_the_command(toy):
    _, data = toy
    edited = load_case(DATA / "baseline" / "toy_edited.yaml")
    findings = check_against_baseline(edited, result(0, final_loss=1e-6, late=3.0), data)
    assert [f.status for f in findings] == ["stale"] and not findings[0].failed
    assert findings[0].changed == ["optimizer.lr", "seeds", "steps"]
    assert "stability-bench baseline " + str(DATA / "baseline" / "toy_edited.yaml") in findings[0].message
    # An unedited case after an environment change: compared, and a failure names the difference.
    case, _ = toy
    here = {**data["environment"], "torch": "9.9.9"}
    failed = [f for f in check_against_baseline(case, result(0, final_loss=1.0, late=3.0), data, here) if f.failed]
    assert failed and all("recorded elsewhere: torch 2" in f.message and "→ 9.9.9" in f.message for f in failed)
    assert not [f for f in check_against_baseline(case, result(0, final_loss=1e-6, late=3.0), data, here) if f.failed]


def test_the_fingerprint_ignores_what_decides_nothing():
    base = load_case(DATA / "baseline_toy.yaml")
    assert run_fingerprint(base, "adam") == run_fingerprint(dataclasses.replace(base, expectations=[],
                                                                                description="x"), "adam")
    assert run_fingerprint(base, "adam") != run_fingerprint(dataclasses.replace(base, dtype="float64"), "adam")


# ------------------------------------------------------- expectations under rounding
def test_an_expectation_a_nudge_flips_is_fragile_naming_line_and_values(toy):
    case, data = toy   # expect final_loss below 1.5e-6: seed 0 holds at 1e-6, its nudged twin 2e-6 fails
    (fragile,) = fragile_expectations(case, data)
    line = line_of(DATA / "baseline_toy.yaml", "final_loss: {below")
    assert fragile.message.startswith(f"{DATA / 'baseline_toy.yaml'}:{line}: toy::adam-seed0-cpu: expectation on final_loss")
    assert "run: 1e-06 (holds)" in fragile.message and "nudged +1: 2e-06 (fails)" in fragile.message
    # seed 1 fails on the run and its nudge alike: a failing expectation, not a fragile one.


# ------------------------------------------------------------ the early trajectory
def traced(seed: int, scale: float = 1.0, perturb: int = 0, at: int | None = None) -> RunResult:
    """A run whose first 20 steps of loss, grad norm and update norm are smooth, × ``scale``
    from step ``at`` on (or everywhere)."""
    run = result(seed, final_loss=1e-6, late=3.0, perturb=perturb)
    k = range(20)
    factor = [scale if at is None or i >= at else 1.0 for i in k]
    run.history = {"step": list(k), "loss": [f / (1 + i) for i, f in zip(k, factor)],
                   "grad_norm": [f * 2.0 for f in factor], "update_norm": [1e-3 * f for f in factor]}
    return run


def test_the_early_trajectory_band_comes_from_the_nudges_and_names_the_first_departure():
    case = load_case(DATA / "baseline_toy.yaml")
    # Nudged: 1e-6 relative from step 5 on, so the band is 3e-6 (+16 ε) from step 5, 16 ε before.
    data = record_baseline(case, [traced(0)], [traced(0, 1 + 1e-6, perturb=1, at=5)])
    rtol = data["runs"]["toy::adam-cpu"]["trajectory"]["seeds"]["0"]["rtol"]["loss"]
    assert rtol[4] == pytest.approx(16 * 1.1920929e-07) and rtol[5] == pytest.approx(3e-6 + 16 * 1.1920929e-07)

    def trajectory(run):
        return next(f for f in check_against_baseline(case, run, data) if f.figure == "early_trajectory")

    assert trajectory(traced(0, 1 + 2e-6, at=5)).status == "inside"
    departs = trajectory(traced(0, 1 + 2e-6, at=3))   # before the nudge moved anything
    assert departs.status == "outside" and departs.value == 3
    assert "early trajectory departs first at step 3: loss" in departs.message
    assert trajectory(traced(0, 1 + 1e-5, at=7)).value == 7


# ----------------------------------------------------------------- bad baseline files
def test_a_hand_broken_or_newer_baseline_file_is_one_located_line(toy, tmp_path):
    _, data = toy
    path = tmp_path / "toy.baseline.json"
    newer = {**data, "version": 99}
    write_baseline(path, newer)
    with pytest.raises(BaselineError, match=rf"^{path}:\d+: version: baseline format 99 is newer"):
        read_baseline(path)
    broken = json.loads(json.dumps(data))
    del broken["runs"]["toy::adam-cpu"]["fingerprint"]
    write_baseline(path, broken)
    line = line_of(path, '"toy::adam-cpu"')
    with pytest.raises(BaselineError) as error:
        read_baseline(path)
    assert str(error.value) == (f"{path}:{line}: runs.toy::adam-cpu: missing key 'fingerprint' "
                                f"(edited by hand? re-record: stability-bench baseline)")
    broken = json.loads(json.dumps(data))
    del broken["runs"]["toy::adam-cpu"]["figures"]["min_loss"]["seeds"]
    write_baseline(path, broken)
    with pytest.raises(BaselineError, match=r"runs.toy::adam-cpu.figures.min_loss: missing key 'seeds'"):
        read_baseline(path)
    path.write_text('{"format": "stability-bench-baseline",\n "version": 2,\n "runs": [}')
    with pytest.raises(BaselineError, match=rf"^{path}:{line_of(path, '[}')}: not valid JSON"):
        read_baseline(path)


def test_a_baseline_from_before_fingerprints_is_stale_not_compared(toy):
    case, data = toy
    (finding,) = check_against_baseline(case, result(0, final_loss=1.0, late=3.0), {**data, "outdated": 1})
    assert finding.stale and "recorded in format 1, before fingerprints" in finding.message


def test_one_spike_more_or_less_per_run_is_inside_the_spike_frequency_band():
    """Spikes are counted: in a 300-step run one spike is 3.33 per 1000 steps, so a run with
    1 spike where the recording had 2 (nudges moving nothing) is inside; 0 is outside."""
    case = load_case(DATA / "baseline_toy.yaml")

    def spiky(spikes: int, perturb: int = 0) -> RunResult:
        run = result(0, final_loss=1e-6, late=3.0, perturb=perturb)
        run.steps, run.metrics = 300, {**run.metrics, "spike_frequency": 1000.0 * spikes / 300}
        return run

    data = record_baseline(case, [spiky(2)], [spiky(2, perturb=1), spiky(2, perturb=-1)])
    assert data["runs"]["toy::adam-cpu"]["figures"]["spike_frequency"]["tolerance"] == pytest.approx(1000 / 300)

    def status(spikes):
        return next(f.status for f in check_against_baseline(case, spiky(spikes), data) if f.figure == "spike_frequency")

    assert [status(n) for n in (1, 2, 3, 0, 4)] == ["inside", "inside", "inside", "outside", "outside"]
