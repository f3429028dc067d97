"""How the harness must call an optimizer's ``step`` — its *step contract* — read from the
class, so a case that cannot run is rejected at validation instead of crashing mid-run.

* ``closure``: ``step(closure)`` re-evaluates the loss itself (torch.optim.LBFGS). Detected
  when ``step`` has a required parameter named ``closure``.
* ``create_graph``: the step differentiates the gradient (second-order methods such as
  Sophia-H, AdaHessian): backward runs with ``create_graph=True``. Declared only.
* ``train_eval``: the parameters differ between training and evaluation (schedule-free
  methods): ``optimizer.train()`` before training steps, ``optimizer.eval()`` around
  probes and ``eval:`` losses. Detected when the optimizer has ``train`` and ``eval``
  methods.

A class declares contracts with ``stability_bench_contract = "create_graph"`` (a name
or a list of names), or its record in ``optimizers.records`` does (``contract``, found
along the MRO while the subclass runs the recorded class's step, as ``optimizers.lookup``
says); declared and detected contracts add up.
"""
from __future__ import annotations

import inspect

from stability_bench.optimizers.lookup import ClassTable
from stability_bench.optimizers.records import RECORDS
from stability_bench.registry import nearest

CONTRACTS = ("closure", "create_graph", "train_eval")
ATTRIBUTE = "stability_bench_contract"
RECORDED: ClassTable[frozenset] = ClassTable("step contract", None, RECORDS, "contract")


class ContractError(ValueError):
    """An optimizer the harness cannot step; the message says why and what is supported."""


def step_contract(cls: type) -> frozenset[str]:
    """The contracts of optimizer class ``cls`` (:class:`ContractError` if unsupported)."""
    declared = getattr(cls, ATTRIBUTE, ())
    declared = [declared] if isinstance(declared, str) else list(declared)
    recorded = RECORDED.lookup(cls)[0] or ()
    for name, where in [(n, f"{cls.__name__}.{ATTRIBUTE}") for n in declared] + \
            [(n, f"the record of {cls.__name__} (optimizers.records)") for n in recorded]:
        if name not in CONTRACTS:
            guess = nearest(str(name), list(CONTRACTS))
            raise ContractError(f"{where} = {name!r} is not a step contract"
                                + (f"; did you mean {guess!r}?" if guess else "")
                                + f" Known: {', '.join(CONTRACTS)}.")
    contract = set(declared) | set(recorded)
    params = list(inspect.signature(cls.step).parameters.values())[1:]
    for p in params:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "closure":
            contract.add("closure")
        else:
            raise ContractError(
                f"{cls.__name__}.step() requires the argument {p.name!r}; the harness calls step() or "
                f"step(closure) (contracts: {', '.join(CONTRACTS)}; see 'Optimizer step contracts')")
    if callable(getattr(cls, "train", None)) and callable(getattr(cls, "eval", None)):
        contract.add("train_eval")
    return frozenset(contract)
