"""The regression corpus of the detection benchmark: the plain originals follow
torch.optim's trajectories to rounding, every regression departs from them, every
equivalent stays within rounding; the case added for the precision changes catches them
against its committed baseline and stays quiet for the equivalents."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.detection import substitute
from benchmarks.regressions import CHANGES, EQUIVALENT, ORIGINALS, REGRESSION
from stability_bench.optimizers.resolve import resolve_optimizer_class

# Hyperparameters that exercise every branch the corpus changes.
HPARAMS = {
    "torch.optim.Adam": [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1, "betas": (0.8, 0.99)}],
    "torch.optim.AdamW": [{"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.3}],
    "torch.optim.SGD": [{"lr": 1e-2}, {"lr": 1e-2, "momentum": 0.9},
                        {"lr": 1e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1},
                        {"lr": 1e-2, "momentum": 0.5, "dampening": 0.3}],
    "torch.optim.RMSprop": [{"lr": 1e-3}, {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.1},
                            {"lr": 1e-3, "centered": True}],
}
# The setting in which each change acts (an SGD momentum bug needs momentum).
EXERCISE = {"sgd_dampening_is_momentum": {"momentum": 0.9}, "sgd_stale_momentum": {"momentum": 0.9},
            "sgd_nesterov_ignored": {"momentum": 0.9, "nesterov": True},
            "sgd_buffer_fp16": {"momentum": 0.9}, "sgd_velocity_form": {"momentum": 0.9}}


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
def test_original_matches_torch(name, hparams):
    """float64: agreement to 1e-12 of the parameter scale (40 steps of ~1e-16 rounding)."""
    torch_cls, plain = resolve_optimizer_class(name), ORIGINALS[name]
    assert relative_gap(trajectory(plain, hparams), trajectory(torch_cls, hparams)) < 1e-12
    # float32: the same formulas in the same order, so the same roundings.
    assert relative_gap(trajectory(plain, hparams, torch.float32),
                        trajectory(torch_cls, hparams, torch.float32)) < 1e-6


@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_each_change_departs_or_not(change):
    """A regression moves the float64 parameters by more than 1e-6 of their scale within
    40 steps (10⁹ times the rounding an equivalent may add; the precision changes, fp16
    and ε = 1e-7, move them least: 3e-4 and 4e-5); an equivalent stays within 1e-12."""
    hparams = {"lr": 1e-3 if "RMSprop" in change.replaces else 1e-2, **EXERCISE.get(change.name, {})}
    assert issubclass(change.cls, ORIGINALS[change.replaces])
    reference = trajectory(resolve_optimizer_class(change.replaces), hparams)
    gap = relative_gap(trajectory(change.cls, hparams), reference)
    if change.kind == REGRESSION:
        assert gap > 1e-6, f"{change.name}: {gap:.3g}"
    else:
        assert change.kind == EQUIVALENT and gap < 1e-12, f"{change.name}: {gap:.3g}"


def test_corpus_size():
    kinds = [c.kind for c in CHANGES]
    assert kinds.count(REGRESSION) >= 15 and kinds.count(EQUIVALENT) >= 3
    assert {c.replaces for c in CHANGES} == set(ORIGINALS)
    assert len({c.name for c in CHANGES}) == len(CHANGES)


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
    from stability_bench.orchestrate import Baselines, make_plan, run_plan
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
