"""One record per optimizer class (optimizers/records.py): the tables read it, and what a
record says about a class's state is what its step leaves there."""
from __future__ import annotations

import pytest
import torch

from stability_bench.contracts import step_contract
from stability_bench.optimizers.lookup import Unknown
from stability_bench.optimizers.records import RECORDS, OptimizerRecord
from stability_bench.optimizers.thresholds import TORCH_THRESHOLDS, threshold_and_reason
from stability_bench.probes.preconditioner import PRECONDITIONERS, SECOND_MOMENTS, preconditioning, second_moment

TORCH_CLASSES = sorted((c for c in vars(torch.optim).values() if isinstance(c, type)
                        and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer),
                       key=lambda c: c.__name__)


def test_every_torch_optimizer_has_one_record_stating_threshold_and_preconditioner():
    for cls in TORCH_CLASSES:
        record = RECORDS.get(cls)
        assert record is not None, cls.__name__
        assert record.threshold is not None and record.preconditioner is not None, cls.__name__


def test_the_tables_are_the_fields_of_the_records():
    for record in RECORDS:
        for table, field in ((TORCH_THRESHOLDS, "threshold"), (PRECONDITIONERS, "preconditioner"),
                             (SECOND_MOMENTS, "second_moment")):
            value = getattr(record, field)
            if value is None:
                assert record.cls not in table
            elif isinstance(value, Unknown):
                assert table.unknown()[record.cls] == value.reason
            else:
                assert table.lookup(record.cls)[0] is value


@pytest.mark.parametrize("record", [r for r in RECORDS if r.second_moment],
                         ids=lambda r: f"{r.cls.__module__}.{r.cls.__name__}")
def test_second_moment_keys_are_in_the_state_after_a_step(record):
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = record.cls([p], lr=1e-2)
    p.grad = torch.randn_like(p)
    if record.cls is torch.optim.SparseAdam:
        p.grad = p.grad.to_sparse()
    opt.step()
    state = opt.state[p]
    assert any(k in state and state[k] is not None for k in record.second_moment), sorted(state)
    assert second_moment(opt) is not None


def test_a_new_record_is_found_by_every_table_and_a_step_override_is_not():
    class Momentumless(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.add_(p.grad, alpha=-group["lr"])

    class Overriding(Momentumless):
        def step(self, closure=None):
            return super().step(closure)

    RECORDS.add(OptimizerRecord(Momentumless, threshold=lambda group, state: 2.0 / group["lr"],
                                preconditioner=lambda opt: None, contract=frozenset({"create_graph"})))
    p = torch.nn.Parameter(torch.ones(2))
    assert threshold_and_reason(Momentumless([p], lr=0.5)) == (4.0, None)
    assert preconditioning(Momentumless([p])).reason.startswith("no optimizer step yet")
    assert step_contract(Momentumless) == {"create_graph"}
    assert Momentumless not in SECOND_MOMENTS
    threshold, reason = threshold_and_reason(Overriding([p]))
    assert threshold is None and "overrides step" in reason
    assert step_contract(Overriding) == frozenset()
