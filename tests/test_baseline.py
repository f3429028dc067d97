"""Baselines: the ulp nudge, bands worked out by hand from hand-made runs, located
failures, the file round trip, and the shipped quadratic case against its own baseline."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from stability_bench.baseline import (
    NOISE_FACTOR,
    baseline_key,
    baseline_path,
    check_against_baseline,
    read_baseline,
    record_baseline,
    write_baseline,
)
from stability_bench.results import RunResult
from stability_bench.runner import execute, plan_runs, start
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
    return case, record_baseline(case, runs, nudged)


def test_record_noise_tolerance_and_informativeness(toy):
    _, data = toy
    figures = data["runs"]["toy::adam-cpu"]["figures"]
    loss = figures["final_loss"]
    assert loss["noise"] == pytest.approx(math.log10(2))
    assert loss["tolerance"] == pytest.approx(NOISE_FACTOR * math.log10(2) + 0.01)
    assert loss["spread"] == pytest.approx(2.0) and loss["informative"]       # 0.301 < half of 2 decades
    late = figures["late_instability"]
    assert late["noise"] == pytest.approx(1.5) and late["spread"] == pytest.approx(2.0)
    assert not late["informative"] and late["reason"].startswith("chaotic")  # 1.5 ≥ half of 2
    assert figures["diverged"]["informative"] and figures["diverged"]["seeds"] == {"0": False, "1": False}


def test_check_inside_outside_and_uninformative(toy):
    case, data = toy
    tol = NOISE_FACTOR * math.log10(2) + 0.01  # 0.913 decades around seed 0's 1e-6
    inside = result(0, final_loss=1e-6 * 10 ** (tol * 0.99), late=9.0)
    findings = check_against_baseline(case, inside, data)
    assert [f.status for f in findings] == ["uninformative"]  # late instability: reported, not used
    assert not any(f.failed for f in findings)
    outside = result(0, final_loss=1e-6 * 10 ** (tol * 1.01), late=3.0)
    failed = [f for f in check_against_baseline(case, outside, data) if f.failed]
    assert sorted(f.figure for f in failed) == ["final_loss", "min_loss"]  # the toy's min = final
    (bad,) = [f for f in failed if f.figure == "final_loss"]
    line = next(i for i, t in enumerate((DATA / "baseline_toy.yaml").read_text().splitlines(), 1)
                if t.strip().startswith("adam:"))
    assert bad.figure == "final_loss" and bad.band == pytest.approx((1e-6 / 10 ** tol, 1e-6 * 10 ** tol))
    assert bad.message.startswith(f"{DATA / 'baseline_toy.yaml'}:{line}: toy::adam-seed0-cpu: final_loss ")
    assert "outside the baseline band" in bad.message and f"{outside.metrics['final_loss']:.4g}" in bad.message
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
    (missing,) = check_against_baseline(case, other, data)
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
