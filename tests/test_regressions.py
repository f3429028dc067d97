"""The regression corpus of the detection benchmark: the plain originals reproduce
torch.optim's trajectories bit for bit, every regression departs from them, every
equivalent stays within rounding, every change modelled on a reported bug cites it, the
changed classes read as the class they replace, and the benchmark sorts what it reads
into its channels; the case added for the precision changes catches them against its
committed baseline and stays quiet for the equivalents."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from benchmarks.detection import classify, substitute
from benchmarks.regressions import CHANGES, EQUIVALENT, FAMILIES, ORIGINALS, REGRESSION
from stability_bench.optimizers.resolve import resolve_optimizer_class

# Hyperparameters that exercise every branch the originals implement (and the corpus changes).
HPARAMS = {
    "torch.optim.Adam": [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.8, 0.99)},
                         {"lr": 1e-2, "amsgrad": True},
                         {"lr": 1e-2, "amsgrad": True, "maximize": True, "weight_decay": 0.1},
                         {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
                         {"lr": 1e-2, "foreach": True}],
    "torch.optim.AdamW": [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.3, "amsgrad": True},
                          {"lr": 1e-2, "maximize": True}],
    "torch.optim.SGD": [{"lr": 1e-2}, {"lr": 1e-2, "momentum": 0.9},
                        {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                        {"lr": 1e-2, "momentum": 0.5, "dampening": 0.3},
                        {"lr": 1e-2, "momentum": 0.9, "maximize": True}],
    "torch.optim.RMSprop": [{"lr": 1e-3}, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.1},
                            {"lr": 1e-3, "centered": True},
                            {"lr": 1e-3, "alpha": 0.995, "eps": 1e-7, "maximize": True}],
    "torch.optim.NAdam": [{"lr": 1e-3}, {"lr": 1e-3, "momentum_decay": 10.0, "eps": 1e-7},
                          {"lr": 1e-3, "weight_decay": 0.1},
                          {"lr": 1e-3, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}],
    "torch.optim.RAdam": [{"lr": 1e-3}, {"lr": 1e-2, "weight_decay": 0.1},
                          {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True, "maximize": True}],
    "torch.optim.Adagrad": [{"lr": 1e-2},
                            {"lr": 1e-2, "lr_decay": 0.05, "initial_accumulator_value": 0.1, "weight_decay": 0.1},
                            {"lr": 1e-2, "eps": 1e-6, "maximize": True}],
    "torch.optim.Adafactor": [{"lr": 1e-2}, {"lr": 1e-2, "d": 1.5, "weight_decay": 0.1, "beta2_decay": -0.5},
                              {"lr": 1e-1, "eps": (1e-30, 1e-3), "maximize": True}],
}
# The setting in which a change with ``when`` acts (an SGD momentum bug needs momentum).
EXERCISE = {"amsgrad": True, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}
LR = {"torch.optim.RMSprop": 1e-3}
STEPS = {"adam_step_counter_bf16": 300}   # acts once the bf16 counter saturates (step 256)


def trajectory(cls, hparams: dict, dtype=torch.float64, steps: int = 40) -> torch.Tensor:
    """Parameters after each step of a small tanh MLP on fixed random data, stacked."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)
    x, y = torch.randn(32, 6, dtype=dtype), torch.randn(32, 2, dtype=dtype)
    opt = cls(model.parameters(), **hparams)
    rows = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        rows.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone())
    return torch.stack(rows)


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()))


@pytest.mark.parametrize("name, hparams", [(n, h) for n, hs in HPARAMS.items() for h in hs])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_original_matches_torch_bit_for_bit(name, hparams, dtype):
    """torch's single-tensor CPU path, formula for formula and in the same order: equal
    bit for bit over 60 steps (measured equal over 100 in float32 and float64)."""
    torch_cls, plain = resolve_optimizer_class(name), ORIGINALS[name]
    assert torch.equal(trajectory(plain, hparams, dtype, 60), trajectory(torch_cls, hparams, dtype, 60))


def _exercise(change) -> dict:
    return {"lr": LR.get(change.replaces, 1e-2), **{k: EXERCISE[k] for k in change.when}}


@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_each_change_departs_or_not(change):
    """A regression moves the float64 parameters by more than 1e-6 of their scale within
    40 steps (the least: RAdam without ε, 1.1e-5; ε = 1e-7, 3.8e-5); an equivalent stays
    within 1e-14 (measured at most 6.4e-16: a few roundings)."""
    hparams = _exercise(change)
    assert issubclass(change.cls, ORIGINALS[change.replaces])
    steps = STEPS.get(change.name, 40)
    reference = trajectory(resolve_optimizer_class(change.replaces), hparams, steps=steps)
    gap = relative_gap(trajectory(change.cls, hparams, steps=steps), reference)
    if change.kind == REGRESSION:
        assert gap > 1e-6, f"{change.name}: {gap:.3g}"
    else:
        assert change.kind == EQUIVALENT and gap < 1e-14, f"{change.name}: {gap:.3g}"


@pytest.mark.parametrize("change", [c for c in CHANGES if c.when], ids=[c.name for c in CHANGES if c.when])
def test_change_is_the_original_where_it_does_not_act(change):
    """Where a ``when`` setting is off the change runs the original's code: equal bit for
    bit (so the benchmark may skip those entries exactly)."""
    for off in change.when:
        hparams = {**_exercise(change), off: False if off in ("amsgrad", "nesterov") else 0.0}
        if off == "momentum":
            hparams.pop("nesterov", None)
        cls = resolve_optimizer_class(change.replaces)
        assert torch.equal(trajectory(change.cls, hparams, torch.float32), trajectory(cls, hparams, torch.float32))


def test_corpus():
    regressions = [c for c in CHANGES if c.kind == REGRESSION]
    equivalents = [c for c in CHANGES if c.kind == EQUIVALENT]
    cited = [c for c in regressions if c.cite]
    assert len(cited) >= 12 and len(equivalents) >= 10
    assert len({c.name for c in CHANGES}) == len(CHANGES)
    assert {c.replaces for c in CHANGES} == set(ORIGINALS) == set(FAMILIES)
    # one rounding-only equivalent at least per optimizer family, per class touched
    assert {c.family for c in regressions} <= {c.family for c in equivalents}
    assert {c.replaces for c in regressions} <= {c.replaces for c in equivalents}
    # the cited regressions are spread over the classes the cases use
    assert len({c.replaces for c in cited}) >= 7


@pytest.mark.parametrize("change", [c for c in CHANGES if c.cite], ids=[c.name for c in CHANGES if c.cite])
def test_reported_bug_docstring_cites_it(change):
    """"owner/repo#number" in the list, the same number in the docstring, which also says
    what the bug was and how the change models it ("Here ...")."""
    match = re.fullmatch(r"[\w.-]+/[\w.-]+#(\d+)", change.cite)
    assert match, change.cite
    doc = change.cls.__doc__
    assert change.cite in doc or f"#{match.group(1)}" in doc
    assert "Here " in doc, f"{change.name}: the docstring should say how the change models the bug"


@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_changed_class_reads_as_the_class_it_replaces(change):
    """The threshold and preconditioner probes take a changed class for the torch class it
    replaces (as they would a patched torch.optim class)."""
    from stability_bench.optimizers.thresholds import TORCH_THRESHOLDS
    from stability_bench.probes.preconditioner import PRECONDITIONERS, SECOND_MOMENTS

    replaced = resolve_optimizer_class(change.replaces)
    for table in (PRECONDITIONERS, SECOND_MOMENTS, TORCH_THRESHOLDS):
        (fact, reason), (expected, expected_reason) = table.lookup(change.cls), table.lookup(replaced)
        assert fact is expected and (reason is None) == (expected_reason is None)


def test_acts_on_follows_the_entry_and_torch_defaults():
    from stability_bench.schema import OptimizerSpec

    amsgrad = next(c for c in CHANGES if c.name == "amsgrad_max_not_stored")
    nesterov = next(c for c in CHANGES if c.name == "sgd_nesterov_ignored")
    decay = next(c for c in CHANGES if c.name == "adamw_decay_as_subtraction")
    adam, sgd, adamw = (resolve_optimizer_class(f"torch.optim.{n}") for n in ("Adam", "SGD", "AdamW"))
    spec = lambda name, cls, fixed, sweeps=None: OptimizerSpec("k", name, cls, fixed, sweeps or {})  # noqa: E731
    assert not amsgrad.acts_on(spec("torch.optim.Adam", adam, {"lr": 1e-3}))
    assert amsgrad.acts_on(spec("torch.optim.Adam", adam, {"amsgrad": True}))
    assert amsgrad.acts_on(spec("torch.optim.Adam", adam, {}, {"amsgrad": [False, True]}))
    assert not amsgrad.acts_on(spec("torch.optim.AdamW", adamw, {"amsgrad": True}))
    assert not nesterov.acts_on(spec("torch.optim.SGD", sgd, {"momentum": 0.9}))
    assert nesterov.acts_on(spec("torch.optim.SGD", sgd, {"momentum": 0.9, "nesterov": True}))
    assert decay.acts_on(spec("torch.optim.AdamW", adamw, {}))           # torch's default 1e-2
    assert not decay.acts_on(spec("torch.optim.AdamW", adamw, {"weight_decay": 0.0}))


def test_classify_sorts_findings_into_channels():
    """Early trajectory and other figures are separate channels; a stale or missing baseline
    and a set-up failure are errors, never catches; a search's failures are the critical lr."""
    from types import SimpleNamespace

    from stability_bench.checks import RunReport, SearchReport
    from stability_bench.results import RunFailure

    def finding(figure, status):
        return SimpleNamespace(figure=figure, status=status, failed=status in ("outside", "missing"),
                               message=f"{figure} {status}")

    run = RunReport(spec=None, findings=[finding("early_trajectory", "outside"), finding("min_loss", "outside"),
                                         finding("final_loss", "uninformative"), finding("late_instability", "stale"),
                                         finding("(run)", "missing")])
    assert [c for c, _ in classify(run)] == ["early trajectory", "baseline figure", "error", "error"]
    crashed = RunReport(spec=None, failure=RunFailure("r", "crash", "FloatingPointError: nan"))
    assert [c for c, _ in classify(crashed)] == ["expectation"]
    no_data = RunReport(spec=None, failure=RunFailure("r", "missing_data", "no CIFAR-10"))
    assert [c for c, _ in classify(no_data)] == ["error"]
    search = SearchReport(search=None, findings=[finding("critical_lr", "outside")])
    assert [c for c, _ in classify(search)] == ["critical lr"]


VALLEY = Path(__file__).resolve().parent.parent / "cases" / "quadratic_valley_optimizers.yaml"
# The changes the float32 cases miss (docs/regressions.md), and the equivalents of the same
# classes: the valley case exists to tell them apart.
VALLEY_CHANGES = ["sgd_buffer_fp16", "rmsprop_eps_inside_sqrt", "rmsprop_state_bf16",
                  "sgd_velocity_form", "rmsprop_divide_then_scale"]


@pytest.mark.parametrize("name", VALLEY_CHANGES)
def test_valley_case_tells_precision_changes_from_rewrites(name):
    """Seed 0 of the shipped valley case with the change in place of its torch class,
    checked against the committed baseline as `stability-bench run --baseline` does: a
    regression leaves a band (measured: min loss 6–38 decades off, the bands are ±0.01),
    an equivalent leaves none (measured: equal to 4 digits). ~1 s."""
    from stability_bench.checks import Baselines
    from stability_bench.orchestrate import run_plan
    from stability_bench.plan import make_plan
    from stability_bench.schema import load_cases

    change = next(c for c in CHANGES if c.name == name)
    (case,) = load_cases(VALLEY)
    changed = substitute(case, change)
    keys = [k for k, v in changed.optimizers.items() if v.cls is change.cls]
    assert keys, f"{name}: the valley case has no {change.replaces} entry"
    plan = make_plan([changed], devices=["cpu"], seeds=[0], optimizers=keys, searches=False)
    reports = list(run_plan(plan, baselines=Baselines([changed])))
    assert reports and all(r.failure is None for r in reports)
    outside = [f.figure for r in reports for f in r.failed_findings]
    if change.kind == REGRESSION:
        assert "min_loss" in outside, f"{name}: {outside}"
    else:
        assert outside == [], f"{name}: {[f.message for r in reports for f in r.failed_findings]}"
