"""The critical learning rate: the search against an oracle, the case section's validation,
and the driver on the quadratics against the theory of stability_bench.optimizers.theory."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casefiles import line_of
import stability_bench
from stability_bench.critical_lr import CriticalLrSearch, check_critical_lr, probe_count, specs
from stability_bench.orchestrate import find_critical_lr
from stability_bench.optimizers import theory
from stability_bench.schema import CaseError, load_case

DATA = Path(__file__).parent / "data"
CASES = Path(__file__).parent.parent / "cases"


def search_with_oracle(search: CriticalLrSearch, edge: float) -> CriticalLrSearch:
    """Answer every probe as a run would whose critical learning rate is ``edge``."""
    while not search.done:
        for lr in search.pending():
            search.report(lr, lr > edge)
    return search


@given(lo=st.floats(1e-6, 1e3), span=st.floats(1.5, 1e6), where=st.floats(0.001, 0.999),
       rtol=st.floats(1e-3, 0.5), parallel=st.integers(1, 8))
def test_search_brackets_the_edge_to_rtol(lo, span, where, rtol, parallel):
    hi = lo * span
    edge = lo * span ** where  # strictly inside the bracket, log-uniformly placed
    result = search_with_oracle(CriticalLrSearch(lo, hi, rtol, parallel), edge).result
    assert result.reason is None
    assert result.value == result.lower <= edge < result.upper
    assert result.upper / result.lower <= 1 + rtol
    # k-section: each round divides the log-width by k + 1, so the rounds are bounded.
    rounds = math.ceil(math.log(math.log(span) / math.log1p(rtol)) / math.log(parallel + 1)) + 1
    assert len(result.probes) <= 2 + parallel * max(rounds, 0)


@given(lo=st.floats(1e-6, 1e3), span=st.floats(1.0001, 1e6), where=st.floats(0.001, 0.999),
       rtol=st.floats(1e-3, 0.5), parallel=st.integers(1, 8))
def test_probe_count_is_what_a_search_trains(lo, span, where, rtol, parallel):
    """The count schedulers weigh a search by, against a simulated search (any edge inside)."""
    edge = lo * span ** where
    search = search_with_oracle(CriticalLrSearch(lo, lo * span, rtol, parallel), edge)
    assert probe_count(lo, lo * span, rtol, parallel) == len(search.result.probes)


@pytest.mark.parametrize("edge, reason", [(0.5, "critical lr below the bracket"),
                                          (20.0, "critical lr above the bracket")])
def test_edges_outside_the_bracket_are_unknown_with_the_reason(edge, reason):
    result = search_with_oracle(CriticalLrSearch(1.0, 10.0, 0.02), edge).result
    assert result.value is None and result.reason.startswith(reason)
    assert len(result.probes) == 2  # only the two edges were run


def test_search_rejects_unasked_reports_and_bad_arguments():
    search = CriticalLrSearch(1.0, 10.0)
    assert search.pending() == [1.0, 10.0]
    with pytest.raises(ValueError, match="was not asked for"):
        search.report(3.0, True)
    for bad in [(10.0, 1.0, 0.02), (1.0, 10.0, 0.0), (0.0, 1.0, 0.1)]:
        with pytest.raises(ValueError):
            CriticalLrSearch(*bad)


def test_section_problems_are_located():
    path = DATA / "critical_lr_bad.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    lines = str(info.value).splitlines()
    expected = [
        (line_of(path, "bracket: [2.0, 1.0]"), "critical_lr.gd.bracket: expected [lo, hi]"),
        (line_of(path, "rtol: 1.5"), "critical_lr.gd.rtol: rtol must be in (0, 1)"),
        (line_of(path, "expect: {between"), "critical_lr.gd.expect.between: 'between' takes [low, high]"),
        (line_of(path, "hb: {bracket"), "critical_lr.hb: the critical lr is searched with the other "
                                  "hyperparameters fixed, but optimizer 'hb' sweeps beta1"),
        (line_of(path, "paramm"), "critical_lr.nest.paramm: unknown critical_lr key 'paramm'; did you mean 'param'?"),
        (line_of(path, "gdd:"), "critical_lr.gdd: unknown optimizer 'gdd'; did you mean 'gd'?"),
    ]
    assert len(lines) == len(expected), lines
    for (line, message), got in zip(expected, lines):
        assert got.startswith(f"{path}:{line}: {message}"), got


# --------------------------------------------------------------------- theory on ½x²
THEORY = {"emahb_stable": "EMAHB", "gd": "GD", "ema_nesterov": "EMANesterov"}


@pytest.mark.parametrize("key", list(THEORY))
def test_critical_lr_on_half_x2_equals_theory(key):
    """On ½x² (λ = 1) the critical learning rate is threshold(η = 1): 38, 2, 13.57… The
    search is exact to its rtol; the case's finite horizon can only place the edge higher
    (a barely unstable run needs time to grow by the divergence factor), and by theory a
    run at theory·(1 + rtol) grows past that factor within the steps, so the result lies
    within rtol of theory."""
    case = load_case(CASES / "quadratic_half_x2.yaml")
    spec = specs(case)[key]
    beta1 = case.optimizers[key].fixed.get("beta1", 0.0)
    expected = theory.threshold(THEORY[key], lr=1.0, beta1=beta1)
    found = find_critical_lr(case, key)
    assert found.reason is None
    assert abs(found.value - expected) <= spec.rtol * expected, (found.value, expected)
    # The horizon argument: at theory·(1 + rtol) |x| grows past √factor (the loss is ½x²).
    steps = spec.steps or case.steps
    growth = theory.growth_factor(THEORY[key], a=1.0, lr=expected * (1 + spec.rtol), beta1=beta1)
    assert growth ** steps > math.sqrt(case.divergence["factor"])
    # Every probe at or below theory was stable, every one above theory·(1 + rtol) diverged.
    assert all(not d for lr, d in found.probes if lr <= expected)
    assert all(d for lr, d in found.probes if lr >= expected * (1 + spec.rtol))


QUADRATIC_GD = {"name": "q", "model": {"kind": "quadratic", "eigenvalues": [1.0]},
                "loss": {"kind": "quadratic"}, "steps": 400,
                "optimizers": {"gd": {"class": "reference.GD", "lr": 1.0}}}


def test_parallel_probes_give_the_same_answer_in_fewer_rounds():
    """k-section with k = 3 against an edge at 2 (diverged iff lr > 2): the pure search."""
    def search(parallel):
        state, rounds = CriticalLrSearch(0.5, 10.0, 0.05, parallel=parallel), []
        while not state.done:
            lrs = state.pending()
            rounds.append(len(lrs))
            for lr in lrs:
                state.report(lr, lr > 2.0)
        return state.result, rounds

    found, rounds = search(3)
    assert found.value <= 2.0 < found.value * 1.05
    assert rounds[0] == 2 and all(n == 3 for n in rounds[1:])
    assert len(rounds) <= 1 + math.ceil(math.log(math.log(20) / math.log(1.05), 4))
    sequential, one_by_one = search(1)
    assert sequential.value <= 2.0 < sequential.value * 1.05 and sum(one_by_one) > sum(rounds) - len(rounds)


def test_two_workers_find_the_same_critical_lr():
    case = load_case({**QUADRATIC_GD, "critical_lr": {"gd": {"bracket": [0.5, 10.0], "rtol": 0.05}}})
    assert find_critical_lr(case, "gd", jobs=2) == find_critical_lr(case, "gd")


def test_expectation_on_the_critical_lr(tmp_path):
    case = load_case({**QUADRATIC_GD, "critical_lr": {"gd": {"bracket": [0.5, 10.0], "rtol": 0.05,
                                                              "expect": {"between": [1.9, 2.2]}}}})
    (outcome,) = check_critical_lr(case, "gd", find_critical_lr(case, "gd"))
    assert outcome.passed and 1.9 <= outcome.value <= 2.2
    narrow = load_case({**case.raw, "critical_lr": {"gd": {"bracket": [3.0, 10.0], "expect": {"above": 1.0}}}})
    (outcome,) = check_critical_lr(narrow, "gd", find_critical_lr(narrow, "gd"))
    assert not outcome.passed and "critical lr below the bracket" in outcome.value


def test_a_searchs_probe_runs_take_no_curvature_probes(monkeypatch):
    """A search asks each probe run one thing, whether it diverged, and probes never change
    training: so its runs take none of the case's probes, and find the same edge."""
    from stability_bench.probes.registry import ProbePlan

    section = {"critical_lr": {"gd": {"bracket": [0.5, 10.0], "rtol": 0.05}}}
    probed = load_case({**QUADRATIC_GD, **section, "probes": {"every": 5, "sharpness": {}}})
    probe_steps, run = [], ProbePlan.run
    monkeypatch.setattr(ProbePlan, "run", lambda self, session, step: probe_steps.append(step) or run(self, session, step))
    found = find_critical_lr(probed, "gd")
    assert probe_steps == []
    assert found == find_critical_lr(load_case({**QUADRATIC_GD, **section}), "gd")
    assert stability_bench.run_case(probed, devices=["cpu"])[0].probes["step"][:2] == [0, 5]   # runs still probe
