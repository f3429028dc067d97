"""Unknown theory is said, never guessed: validation errors for bounds on a threshold an
optimizer lacks, warnings for probes needing a P (or v, or threshold) it lacks, and NaN
with the reason in the probes themselves."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import stability_bench
from stability_bench.probes.registry import ProbePlan
from stability_bench.plan import plan_runs
from stability_bench.runner import replay
from stability_bench.schema import CaseError, load_case
from stability_bench.unknown_theory import case_warnings

DATA = Path(__file__).parent / "data"


def line_of(path: Path, text: str, after: str | None = None) -> int:
    """1-based line of the first line containing ``text`` (after the line containing ``after``)."""
    lines = path.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if after in l) if after else 0
    return next(i for i, l in enumerate(lines) if i >= start and text in l) + 1


def test_bounds_on_an_unknown_threshold_are_errors_naming_file_line_key_and_reason():
    path = DATA / "unknown_threshold_bounds.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines  # adam's bound is fine
    rprop, sgd = lines
    assert rprop.startswith(f"{path}:{line_of(path, 'diverged', after='  rprop:')}: expect.rprop.diverged.equals: ")
    assert "'predicted_diverged'" in rprop and "torch.optim.Rprop" in rprop and "sign of g" in rprop
    assert sgd.startswith(f"{path}:{line_of(path, 'final_loss', after='  sgd:')}: expect.sgd.final_loss.below: ")
    assert "'threshold'" in sgd and "dampening 1.0 >= 1" in sgd and "(at dampening=1)" in sgd


def test_probes_needing_what_an_optimizer_lacks_are_warnings():
    path = DATA / "unknown_preconditioner_probes.yaml"
    case = load_case(path)  # warnings do not stop validation
    warnings = case_warnings(case)
    where = {w.split(": ", 2)[1]: [] for w in warnings}
    for w in warnings:
        where[w.split(": ", 2)[1]].append(w)
    assert set(where) == {"probes.precond_sharpness", "probes.second_moment_ratio", "probes.threshold",
                          "expect.rprop.threshold_crossings.equals"}
    # P: unknown for Rprop only (SGD's is I, Adagrad's known)
    [w] = where["probes.precond_sharpness"]
    assert w.startswith(f"{path}:{line_of(path, 'precond_sharpness:')}: probes.precond_sharpness: ")
    assert "'rprop'" in w and "sign" in w and "NaN" in w
    # v: Adagrad keeps Σg², not an EMA; SGD and Rprop none
    assert sorted(w.split("optimizer '")[1].split("'")[0] for w in where["probes.second_moment_ratio"]) == \
        ["adagrad", "rprop", "sgd"]
    [w] = where["probes.threshold"]
    assert "'rprop'" in w
    [w] = where["expect.rprop.threshold_crossings.equals"]
    assert w.startswith(f"{path}:{line_of(path, 'threshold_crossings')}: ")


def test_known_cases_have_no_warnings():
    for file in sorted((Path(__file__).resolve().parents[1] / "cases").glob("*.yaml")):
        for case in stability_bench.schema.load_cases(file):
            assert case_warnings(case) == [], case.name


ALL_PROBES = {"precond_sharpness": {}, "threshold": {}, "sharpness": {}, "directional_curvature": {},
              "grad_alignment": {"k": 1}, "second_moment_ratio": {}}


def probe_once(optimizer: dict, steps: int = 2, probes: dict = ALL_PROBES) -> ProbePlan:
    """Probe a small quadratic run at step ``steps`` (after that many optimizer steps)."""
    case = load_case({"name": "p", "dtype": "float64", "steps": steps + 1,
                      "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0, 9.0], "basis": "random"},
                      "loss": {"kind": "quadratic"}, "optimizers": {"o": optimizer},
                      "probes": {"every": 1, **probes}})
    spec = plan_runs(case)[0]
    session = replay(spec, steps)
    x, y = next(iter(session.batches))
    session.optimizer.zero_grad()
    session.loss_fn(session.model(x), y).backward()
    plan = ProbePlan.from_case(case)
    plan.run(session, steps)
    return plan


def test_unknown_P_and_threshold_are_NaN_with_the_reason_not_the_raw_figures():
    plan = probe_once({"class": "torch.optim.Rprop", "lr": 1.0e-2})
    c = plan.columns
    assert c["sharpness"][0] == pytest.approx(9.0, rel=1e-6)
    for name in ("precond_sharpness", "threshold", "precond_directional_curvature", "grad_alignment",
                 "g2_over_v_median"):
        assert math.isnan(c[name][0]), name
    assert math.isfinite(c["directional_curvature"][0])
    assert all(isinstance(v, float) or isinstance(v, int) for col in c.values() for v in col)  # numbers only
    assert set(plan.reasons) == {"precond_unknown_reason", "threshold_unknown_reason",
                                 "second_moment_unknown_reason"}
    [(reason, step)] = plan.reasons["precond_unknown_reason"].items()
    assert step == 2 and reason.startswith("torch.optim.Rprop: ") and "sign" in reason


def test_a_known_adaptive_optimizer_has_no_reasons_after_its_first_step():
    plan = probe_once({"class": "torch.optim.Adagrad", "lr": 0.1})
    assert math.isfinite(plan.columns["precond_sharpness"][0]) and plan.columns["threshold"][0] == 20.0
    assert set(plan.reasons) == {"second_moment_unknown_reason"}
    before = probe_once({"class": "torch.optim.Adam", "lr": 0.1}, steps=0)
    assert math.isnan(before.columns["precond_sharpness"][0])
    assert "no optimizer step yet" in next(iter(before.reasons["precond_unknown_reason"]))


def test_second_moment_mean_warns_like_the_other_reader_of_v():
    """second_moment_mean reads v too: the same warning as second_moment_ratio, for the
    optimizers without v only, and its runs record NaN with the reason the warning names."""
    case = load_case({"name": "v", "dtype": "float64", "steps": 3,
                      "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0]}, "loss": {"kind": "quadratic"},
                      "optimizers": {"adam": {"class": "torch.optim.Adam", "lr": 0.1},
                                     "sgd": {"class": "torch.optim.SGD", "lr": 0.1}},
                      "probes": {"every": 1, "second_moment_ratio": {}, "second_moment_mean": {}}})
    warnings = {w.split(": ", 2)[1]: w.split(": ", 2)[2] for w in case_warnings(case)}
    assert set(warnings) == {"probes.second_moment_ratio", "probes.second_moment_mean"}
    assert warnings["probes.second_moment_mean"] == warnings["probes.second_moment_ratio"]
    assert warnings["probes.second_moment_mean"].startswith("needs the second-moment estimate v, unknown for "
                                                            "optimizer 'sgd' (torch.optim.SGD): ")
    plan = probe_once({"class": "torch.optim.SGD", "lr": 0.1}, probes={"second_moment_mean": {}})
    assert math.isnan(plan.columns["v_mean"][0])
    [reason] = plan.reasons["second_moment_unknown_reason"]
    assert reason in warnings["probes.second_moment_mean"]


# What each need's reason is recorded under when the optimizer lacks it.
REASON_OF_NEED = {"preconditioner": "precond_unknown_reason", "second_moment": "second_moment_unknown_reason",
                  "threshold": "threshold_unknown_reason"}


@pytest.mark.parametrize("probe", ["sharpness", "precond_sharpness", "threshold", "directional_curvature",
                                   "second_moment_ratio", "second_moment_mean", "grad_alignment"])
def test_a_probe_records_a_reason_for_exactly_what_it_declares_it_needs(probe):
    """Rprop lacks P, v and a threshold: the reasons a probe records are those of its
    declared needs (``declares`` where it is registered), so validation warns for each."""
    from stability_bench.probes.registry import PROBES, probe_needs

    options = {"k": 1} if probe == "grad_alignment" else {}
    plan = probe_once({"class": "torch.optim.Rprop", "lr": 1.0e-2}, probes={probe: options})
    declared = PROBES.get(probe).needs
    assert set(plan.reasons) == {REASON_OF_NEED[n] for n in declared}
    assert len(probe_needs(probe)) == len(declared)
