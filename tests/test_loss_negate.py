"""``loss: {negate: true}``: the optimizer is handed −loss (backward on it, a closure returns
it) while the history, metrics and probes record the loss itself — so an optimizer run with
``maximize=True`` descends the loss, exactly as it does without maximize on the loss as it is
(what cases/torch_optim_guards_maximize.yaml relies on)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from casefiles import line_of
from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start, train_step
from stability_bench.schema import CaseError, load_case

DATA = Path(__file__).parent / "data" / "negate"
COLUMNS = ("loss", "grad_norm", "update_norm")


def history(case, optimizer: str) -> dict:
    return execute(plan_runs(case, optimizers=[optimizer])[0]).history


@pytest.mark.parametrize("optimizer", ["adam", "adam_foreach", "sgd"])
def test_maximize_on_the_negated_loss_takes_the_same_steps_bit_for_bit(optimizer):
    """torch negates the gradient exactly, and so does backward on −loss: the two runs are
    one trajectory (weight decay included, which maximize must add after negating)."""
    plain = history(load_case(DATA / "maximize_mlp.yaml"), optimizer)
    negated = history(load_case(DATA / "maximize_mlp.yaml", variant="maximize"), optimizer)
    for column in COLUMNS:
        assert negated[column] == plain[column], column
    assert plain["loss"][-1] < plain["loss"][0]


def test_the_history_records_the_loss_not_what_the_optimizer_is_handed():
    """Negated without maximize, SGD descends −loss: the recorded loss starts where the
    plain run's does (positive) and rises."""
    plain = history(load_case(DATA / "maximize_mlp.yaml"), "sgd")
    ascend = history(load_case(DATA / "maximize_mlp.yaml", variant="ascend"), "sgd")
    assert ascend["loss"][0] == plain["loss"][0] > 0
    assert ascend["grad_norm"][0] == plain["grad_norm"][0]
    assert ascend["loss"][-1] > 10 * ascend["loss"][0]


def test_a_closure_returns_the_negated_loss_with_its_gradient():
    """A closure optimizer is handed −loss consistently: the value its closure returns and
    the gradient it leaves are both of −loss; observe (the history) gets the loss."""
    case = load_case(DATA / "closure.yaml")
    session = start(plan_runs(case)[0])
    x = session.params[0]
    A = session.model.A.detach()
    observed: list[float] = []
    for _ in range(3):
        xt = x.detach().clone()
        expected_loss = float(0.5 * xt @ (A @ xt))
        expected_grad = A @ xt
        train_step(session, session.data.x, session.data.y, observe=lambda loss: observed.append(float(loss.detach())))
        opt = session.optimizer
        assert observed[-1] == pytest.approx(expected_loss, rel=1e-15)
        assert opt.returned[-1] == pytest.approx(-expected_loss, rel=1e-15)
        torch.testing.assert_close(opt.grads[-1], -expected_grad, rtol=1e-15, atol=0)
    assert observed[-1] > observed[0]  # descending −loss ascends the loss


def test_negate_applies_to_losses_named_by_import_path():
    """The harness strips negate before calling the factory (torch.nn.MSELoss has no such
    argument) and applies it itself."""
    case = load_case(DATA / "import_path_loss.yaml")
    h = history(case, "sgd")
    assert h["loss"][-1] < h["loss"][0]  # maximize on −loss: descent


def test_negate_must_be_true_or_false():
    with pytest.raises(CaseError) as exc:
        load_case(DATA / "negate_text.yaml")
    message = str(exc.value)
    assert f"{DATA / 'negate_text.yaml'}:{line_of(DATA / 'negate_text.yaml', 'negate:')}: loss.negate:" in message
    assert "true/false" in message and "'yes'" in message


def test_a_misspelt_negate_is_named():
    with pytest.raises(CaseError) as exc:
        load_case(DATA / "negate_typo.yaml")
    message = str(exc.value)
    assert f"{DATA / 'negate_typo.yaml'}:{line_of(DATA / 'negate_typo.yaml', 'negat:')}: loss.negat:" in message
    assert "did you mean 'negate'" in message


def test_negate_defaults_to_off():
    case = load_case(DATA / "maximize_mlp.yaml")
    assert "negate" not in case.loss
    assert start(plan_runs(case)[0]).negate is False
    assert start(plan_runs(load_case(DATA / "maximize_mlp.yaml", variant="maximize"))[0]).negate is True
    assert np.isfinite(history(case, "adam")["loss"]).all()
