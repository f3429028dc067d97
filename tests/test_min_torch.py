"""``min_torch`` on an optimizer entry: a class or hyperparameter that older torch releases
lack (torch.optim.Muon: 2.9; Adam's decoupled_weight_decay: 2.7) makes its entry skipped
there, with the reason, instead of making the whole case file invalid."""
from __future__ import annotations

from pathlib import Path

import pytest

from casefiles import line_of
from stability_bench.cli import main
from stability_bench.orchestrate import run_plan
from stability_bench.plan import make_plan
from stability_bench.schema import CaseError, load_case

DATA = Path(__file__).parent / "data" / "min_torch"


def test_an_entry_for_a_newer_torch_is_skipped_with_the_reason_and_the_rest_runs():
    case = load_case(DATA / "min_torch.yaml")
    assert case.optimizers["now"].unavailable is None
    assert case.optimizers["now"].fixed == {"lr": 0.1}          # min_torch is no hyperparameter
    reason = case.optimizers["future"].unavailable
    assert reason.startswith("needs torch >= 999.0 (min_torch); this is torch ")
    plan = make_plan([case], devices=["cpu"])
    skipped = {k for k, why in plan.skipped.items() if why == reason}
    assert skipped == {"min_torch::future[lr=0.1]-seed0-cpu", "min_torch::future[lr=0.2]-seed0-cpu",
                       "min_torch::future-critical_lr-seed0-cpu"}
    statuses = {getattr(r, "spec", None) and r.spec.run_id: r.status for r in run_plan(plan)}
    assert statuses["min_torch::now-seed0-cpu"] == "passed"
    assert statuses["min_torch::future[lr=0.1]-seed0-cpu"] == "skipped"


def test_validate_says_which_entries_this_torch_skips(capsys):
    assert main(["validate", str(DATA / "min_torch.yaml")]) == 0
    out = capsys.readouterr().out
    path = DATA / "min_torch.yaml"
    assert f"{path}:{line_of(path, 'future: {class')}: optimizers.future skipped here: needs torch >= 999.0" in out


def test_an_unquoted_version_is_a_located_error():
    with pytest.raises(CaseError) as info:
        load_case(DATA / "unquoted.yaml")
    path = DATA / "unquoted.yaml"
    assert f"{path}:{line_of(path, 'min_torch: 2.10')}: optimizers.sgd.min_torch: min_torch is a quoted release" in str(info.value)
