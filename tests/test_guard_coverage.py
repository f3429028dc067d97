"""Every torch.optim class the harness has facts for is guarded by a shipped case in the
default CI run (issue 21, point 7).

The classes are read from the harness's own registries — ``probes.preconditioner.PRECONDITIONERS``
and ``optimizers.thresholds.TORCH_THRESHOLDS``, known or registered as unknown — so a class
registered there without a guard case fails here. The guard must be an entry of a non-slow
shipped case whose data needs no download (cases/*.yaml with the marker; a CIFAR case is
skipped where the data is absent, so it guards nothing there), recorded in the case file's
baseline. For each branch in tests/data/guard_coverage/rules.yaml that the class's
``__init__`` has (amsgrad, nesterov, dampening, maximize, decoupled weight decay, foreach on
and off, fused, centered) some entry must take it, and maximize only on a negated loss (else
it ascends the loss: nothing is guarded). Each class with a known stability threshold needs a
critical-lr search, except those the rules exempt, with the reason.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from stability_bench.baseline import baseline_key, baseline_path
from stability_bench.critical_lr import specs as critical_lr_specs
from stability_bench.optimizers.thresholds import TORCH_THRESHOLDS
from stability_bench.probes.preconditioner import PRECONDITIONERS
from stability_bench.results import format_run_id
from stability_bench.schema import Case, load_cases
from stability_bench.yamlsource import has_case_marker

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "guard_coverage"
RULES = yaml.safe_load((DATA / "rules.yaml").read_text(encoding="utf-8"))


def guarded_classes() -> list[type]:
    """The torch.optim classes in the harness's preconditioner and threshold tables."""
    classes = {cls for table in (PRECONDITIONERS, TORCH_THRESHOLDS) for cls in table}
    return sorted((c for c in classes if getattr(torch.optim, c.__name__, None) is c), key=lambda c: c.__name__)


@dataclass(frozen=True)
class Entry:
    case: Case
    key: str
    cls: type
    params: dict   # one sweep point: every hyperparameter the entry sets

    @property
    def where(self) -> str:
        return f"{self.case.name}::{self.key}"


def entries(folder: Path) -> list[Entry]:
    """Every entry (and sweep point) of the non-slow cases in ``folder`` whose data needs no
    download."""
    out = []
    for file in sorted(folder.glob("*.yaml")):
        if not has_case_marker(file):
            continue
        for case in load_cases(file):
            if case.slow or case.data.get("kind") in RULES["downloaded_data"]:
                continue
            for key, spec in case.optimizers.items():
                out.extend(Entry(case, key, spec.cls, point) for point in spec.points())
    return out


def _default(cls: type, name: str):
    return inspect.signature(cls.__init__).parameters[name].default


def _takes(entry: Entry, flag: str, value, rule: dict) -> bool:
    """Whether ``entry`` takes the branch: ``flag`` set explicitly to ``value`` (None: to
    anything but the default), each hyperparameter in ``with`` nonzero, and the loss negated
    where the rule says ``negated_loss``."""
    default = _default(entry.cls, flag)
    if value is None:
        taken = entry.params.get(flag, default) != default
    else:
        taken = flag in entry.params and entry.params[flag] == value
    return (taken and all(entry.params.get(w, _default(entry.cls, w)) not in (0, 0.0, None, False)
                          for w in rule.get("with", []))
            and (not rule.get("negated_loss") or bool(entry.case.loss.get("negate"))))


def _has_baseline(entry: Entry) -> bool:
    path = baseline_path(entry.case.source.file)
    if not path.is_file():
        return False
    runs = json.loads(path.read_text(encoding="utf-8")).get("runs", {})
    label = entry.case.optimizers[entry.key].label(entry.params)
    return baseline_key(format_run_id(entry.case.name, entry.key, label, 0, "cpu")) in runs


def gaps(folder: Path) -> list[str]:
    """What the cases in ``folder`` leave unguarded, one line each (empty: nothing)."""
    found = entries(folder)
    out = []
    for cls in guarded_classes():
        name = f"torch.optim.{cls.__name__}"
        mine = [e for e in found if e.cls is cls]
        if not mine:
            out.append(f"{name}: no entry in a non-slow shipped case whose data needs no download")
            continue
        if not any(_has_baseline(e) for e in mine):
            out.append(f"{name}: no entry recorded in its case file's baseline ({', '.join(e.where for e in mine)})")
        parameters = inspect.signature(cls.__init__).parameters
        for flag, rule in RULES["branches"].items():
            if flag not in parameters:
                continue
            for value in rule.get("values") or [None]:
                if not any(_takes(e, flag, value, rule) for e in mine):
                    what = f"{flag}={value}" if value is not None else f"{flag} (not {parameters[flag].default!r})"
                    needs = f" with {', '.join(rule['with'])} nonzero" if rule.get("with") else ""
                    out.append(f"{name}: no entry takes {what}{needs}")
        if cls in TORCH_THRESHOLDS.known() and cls.__name__ not in RULES["no_critical_lr"]:
            if not any(e.key in critical_lr_specs(e.case) and not e.params.get("maximize") for e in mine):
                out.append(f"{name}: its stability threshold is known but no entry has a critical-lr search")
    for e in found:
        if e.params.get("maximize") and not e.case.loss.get("negate"):
            out.append(f"{e.where}: maximize=True on a loss that is not negated (loss: {{negate: true}}) "
                       "ascends it")
    return out


def test_every_registered_torch_optim_class_and_branch_is_guarded_by_a_shipped_case():
    assert gaps(ROOT / "cases") == []


def test_the_classes_are_the_registries_torch_optim_classes():
    classes = guarded_classes()
    assert torch.optim.Adam in classes and torch.optim.LBFGS in classes  # known, and registered unknown
    assert all(c.__module__.startswith("torch.optim") for c in classes)


def test_the_check_names_every_gap():
    """A folder guarding Adam alone (single-tensor only), AdamW with maximize on a loss that
    is not negated and SGD with dampening but no momentum; RMSprop only in a slow case, NAdam
    only on CIFAR-10; no baselines."""
    found = gaps(DATA / "partial")
    joined = "\n".join(found)
    assert "torch.optim.Adam: no entry recorded in its case file's baseline (adam_only::adam)" in found
    assert "torch.optim.Adam: no entry takes foreach=True" in found
    assert "torch.optim.Adam: no entry takes foreach=False" not in found
    assert "torch.optim.Adam: no entry takes amsgrad (not False)" not in found
    assert "torch.optim.Adam: no entry takes maximize (not False)" in found
    assert "torch.optim.Adam: no entry takes decoupled_weight_decay (not False) with weight_decay nonzero" in found
    assert "torch.optim.Adam: its stability threshold is known but no entry has a critical-lr search" not in found
    assert "torch.optim.AdamW: its stability threshold is known but no entry has a critical-lr search" in found
    assert "adam_only::adamw: maximize=True on a loss that is not negated (loss: {negate: true}) ascends it" in found
    assert "torch.optim.AdamW: no entry takes maximize (not False)" in found  # not on that loss
    assert "torch.optim.SGD: no entry takes dampening (not 0) with momentum nonzero" in found
    assert "torch.optim.SGD: no entry takes nesterov (not False)" in found
    for name in ("RMSprop", "NAdam", "LBFGS", "SparseAdam", "Muon"):
        assert f"torch.optim.{name}: no entry in a non-slow shipped case whose data needs no download" in found
    assert "not_a_case" not in joined


@pytest.mark.parametrize("flag", sorted(RULES["branches"]))
def test_each_branch_rule_names_a_parameter_some_guarded_class_has(flag):
    """A rule for a flag no class has would guard nothing (a typo, or torch renamed it)."""
    assert any(flag in inspect.signature(c.__init__).parameters for c in guarded_classes())


def test_exempt_classes_exist():
    names = {c.__name__ for c in guarded_classes()}
    assert set(RULES["no_critical_lr"]) <= names
