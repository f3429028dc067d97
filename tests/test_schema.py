"""The case schema: every malformed case gives one clear paragraph naming file:line and key path.

Data apart from logic (like PyTorch's OptimizerInfo): each file under tests/data/schema/bad
is a small malformed case, most of them ``base.yaml`` beside it with one line edited, whose
marker comments (``# ERROR: <key path> | <fragment> | ...``, tests/casefiles.py) say on which
line each problem must be reported and what its message holds. The user modules some of them
name by import path are in tests/data/schema/user_modules.
"""
from __future__ import annotations

import math
import re
import sys
import textwrap
from pathlib import Path

import pytest

import stability_bench
from casefiles import assert_exactly_marked, line_of
from stability_bench.schema import CaseError, load_case, load_cases

DATA = Path(__file__).parent / "data" / "schema"
BASE = (DATA / "base.yaml").read_text()   # a 2-D quadratic trained by gradient descent
BAD = sorted((DATA / "bad").glob("*.yaml"))
USER_MODULES = DATA / "user_modules"


def edit(old: str, new: str, text: str = BASE) -> str:
    """``text`` with the one line ``old`` replaced by ``new`` (which may be several lines or none)."""
    lines = text.splitlines()
    assert lines.count(old) == 1, f"{old!r} is not exactly one line of the base case"
    i = lines.index(old)
    return "\n".join(lines[:i] + ([new] if new is not None else []) + lines[i + 1:]) + "\n"


@pytest.fixture
def user_modules(monkeypatch):
    """tests/data/schema/user_modules on sys.path, its modules imported afresh by each test."""
    names = [path.stem for path in USER_MODULES.glob("*.py")]
    for name in names:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(USER_MODULES))
    yield
    for name in names:
        sys.modules.pop(name, None)


def _load_error(path: Path) -> str:
    with pytest.raises(CaseError) as info:
        load_cases(path)
    return str(info.value)


@pytest.mark.parametrize("path", BAD, ids=[path.stem for path in BAD])
def test_malformed_case_names_file_line_and_key_path(path: Path, user_modules):
    assert_exactly_marked(_load_error(path), path)


def test_invalid_yaml_names_the_line_of_the_broken_construct(tmp_path):
    # A key without a colon after the last line of the base case: PyYAML notices at the end
    # of the file, a line later, so the message must also name the line where the key starts.
    path = tmp_path / "case.yaml"
    path.write_text(BASE + "  bad indent\n")
    message = _load_error(path)
    assert message.startswith(f"{path}:")
    assert "YAML" in message and f"line {line_of(path, 'bad indent')}" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CaseError, match=re.escape(str(tmp_path / "nope.yaml"))):
        load_cases(tmp_path / "nope.yaml")


def test_dict_case_error_names_key_path_without_a_file():
    with pytest.raises(CaseError) as info:
        load_case({"name": "q", "model": {"kind": "quadratic", "eigenvalues": [1.0]},
                   "loss": {"kind": "quadratic"}, "steps": 5,
                   "optimizers": {"gd": {"class": "torch.optim.Adamm"}}})
    assert "optimizers.gd.class" in str(info.value)
    assert "torch.optim.Adam'" in str(info.value)


def test_load_case_unknown_variant(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(BASE + "variants:\n  fast:\n    steps: 5\n")
    with pytest.raises(CaseError) as info:
        load_case(path, variant="slow")
    assert "'slow'" in str(info.value) and "fast" in str(info.value)


# ------------------------------------------------------------------------- valid cases
def _base_dict() -> dict:
    return {
        "name": "quad",
        "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0], "x0": 1.0},
        "loss": {"kind": "quadratic"},
        "steps": 20,
        "optimizers": {"gd": {"class": "reference.GD", "lr": 0.1}},
        "expect": {"gd": {"final_loss": {"below": 1.0}}},
    }


def test_yaml_and_dict_load_the_same_case(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(BASE)
    from_yaml, from_dict = load_case(path), load_case(_base_dict())
    for attr in ("name", "model", "loss", "steps", "seeds", "devices", "dtype", "batch"):
        assert getattr(from_yaml, attr) == getattr(from_dict, attr), attr
    assert from_yaml.optimizers["gd"].fixed == from_dict.optimizers["gd"].fixed == {"lr": 0.1}
    assert [(e.optimizer, e.metric, e.comparator, e.bound) for e in from_yaml.expectations] == \
        [(e.optimizer, e.metric, e.comparator, e.bound) for e in from_dict.expectations] == \
        [("gd", "final_loss", "below", 1.0)]
    # Defaults a case may leave out.
    assert from_dict.seeds == [0] and from_dict.devices == ["cpu"] and from_dict.slow is False


def test_load_case_does_not_modify_the_dict():
    case = _base_dict()
    case["variants"] = {"v": {"steps": 5}}
    before = repr(case)
    load_case(case, variant="v")
    assert repr(case) == before


def test_dict_case_with_a_string_number_is_rejected():
    case = _base_dict()
    case["optimizers"]["gd"]["lr"] = "1e-3"
    with pytest.raises(CaseError, match=r"got '1e-3' \(a string\); did you mean the number 1e-3"):
        load_case(case)


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E5", 1e5), ("-2e-7", -2e-7), ("1.0e5", 1e5),
                                         ("+.5e1", 5.0), ("3.0e-4", 3e-4)])
def test_yaml12_floats_are_numbers(tmp_path, text, value):
    """YAML 1.2: an exponent makes a number without a dot, and its sign is optional
    (PyYAML's YAML 1.1 rules read all but the last as text)."""
    path = tmp_path / "case.yaml"  # x0: any real number (a learning rate must be > 0: validation builds the optimizer)
    path.write_text(edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                         f"model: {{kind: quadratic, eigenvalues: [1.0, 4.0], x0: {text}}}"))
    x0 = load_case(path).model["x0"]
    assert isinstance(x0, float) and x0 == value


def test_integers_and_version_like_text_stay_what_they_were(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(edit("steps: 20", "steps: 20\ndescription: 1.2.3e4"))
    case = load_case(path)
    assert case.steps == 20 and isinstance(case.steps, int)
    assert case.description == "1.2.3e4"


def test_sweep_expands_to_the_cartesian_product_with_labels():
    case = _base_dict()
    case["optimizers"] = {"hb": {"class": "reference.EMAHB", "lr": {"sweep": [0.1, 0.5]},
                                 "beta1": {"sweep": [0.0, 0.5, 0.9]}}}
    case.pop("expect")
    spec = load_case(case).optimizers["hb"]
    points = spec.points()
    assert len(points) == 6
    assert {(p["lr"], p["beta1"]) for p in points} == {(lr, b) for lr in (0.1, 0.5) for b in (0.0, 0.5, 0.9)}
    labels = {spec.label(p) for p in points}
    assert len(labels) == 6
    assert "lr=0.1,beta1=0.9" in labels or "beta1=0.9,lr=0.1" in labels
    # A fixed hyperparameter is in every point but not in the label.
    fixed = _base_dict()
    fixed["optimizers"] = {"gd": {"class": "torch.optim.SGD", "momentum": 0.5, "lr": {"sweep": [0.1, 0.2]}}}
    spec = load_case(fixed).optimizers["gd"]
    assert [p["momentum"] for p in spec.points()] == [0.5, 0.5]
    assert [spec.label(p) for p in spec.points()] == ["lr=0.1", "lr=0.2"]


def test_sweep_run_ids_are_distinct_per_point_seed_and_device():
    from stability_bench.plan import plan_runs

    case = _base_dict()
    case.update(seeds=[0, 1], devices=["cpu", "cuda"])
    case["optimizers"]["gd"]["lr"] = {"sweep": [0.1, 0.2]}
    ids = [spec.run_id for spec in plan_runs(load_case(case))]
    assert len(ids) == len(set(ids)) == 8


def test_list_hyperparameter_becomes_a_tuple_where_the_default_is_one():
    case = _base_dict()
    case["optimizers"] = {"adam": {"class": "torch.optim.Adam", "lr": 1.0e-3, "betas": [0.8, 0.9]}}
    case.pop("expect")
    assert load_case(case).optimizers["adam"].fixed["betas"] == (0.8, 0.9)


VARIANTS = BASE + """\
seeds: [0, 1]
variants:
  long:
    steps: 40
    model: {eigenvalues: [2.0, 3.0]}
    optimizers:
      gd: {lr: 0.05}
    expect:
      gd:
        min_loss: {below: 0.5}
"""


def test_variants_deep_merge_and_replace_expect(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(VARIANTS)
    base, long = load_cases(path)
    assert base.name == "quad" and long.name.endswith("long") and "quad" in long.name
    assert long.steps == 40 and base.steps == 20
    # Mappings merge: the variant's model keeps the base's kind and x0.
    assert long.model == {"kind": "quadratic", "eigenvalues": [2.0, 3.0], "x0": 1.0}
    assert long.optimizers["gd"].class_name == "reference.GD"
    assert long.optimizers["gd"].fixed == {"lr": 0.05}
    assert long.seeds == [0, 1]
    # ``expect`` is replaced, not merged: the base's final_loss bound is gone.
    assert [(e.metric, e.comparator, e.bound) for e in long.expectations] == [("min_loss", "below", 0.5)]
    assert [(e.metric, e.comparator, e.bound) for e in base.expectations] == [("final_loss", "below", 1.0)]
    # load_case picks a variant by name; lines of the variant's expectations point into it.
    chosen = load_case(path, variant="long")
    assert chosen.steps == 40
    assert chosen.where(chosen.expectations[0].path) == f"{path}:{line_of(path, 'min_loss: {below: 0.5}')}"
    assert load_case(path).steps == 20


def test_variant_from_a_dict():
    case = _base_dict()
    case["variants"] = {"float64": {"dtype": "float64"}}
    chosen = load_case(case, variant="float64")
    assert chosen.dtype == "float64"
    # Not replaced by the variant: expect is kept when the variant does not state it.
    assert [e.metric for e in chosen.expectations] == ["final_loss"]


def test_shipped_cases_validate():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "cases").glob("*.yaml"))
    assert files
    for file in files:
        assert load_cases(file)


# ----------------------------------------------------------------------- user optimizers
USER_OPTIMIZER = '''
import torch


class HalfStepSGD(torch.optim.SGD):
    """SGD; its threshold (the hook the harness reads) is a recognisable number."""

    def stability_threshold(self):
        return 2.0 / self.param_groups[0]["lr"] + 0.125


class PlainGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(group["lr"] * p.grad)
'''


@pytest.fixture
def user_optimizer_module(tmp_path, monkeypatch):
    name = "sb_user_optim"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_OPTIMIZER))
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _user_case(class_name: str, **hyper) -> dict:
    return {
        "name": "user_opt",
        "dtype": "float64",
        "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0], "x0": 1.0},
        "loss": {"kind": "quadratic"},
        "steps": 10,
        "optimizers": {"mine": {"class": class_name, **hyper}},
    }


def _closed_form_losses(lr: float, eigenvalues=(1.0, 4.0), steps: int = 10) -> list[float]:
    return [0.5 * sum(lam * (1 - lr * lam) ** (2 * t) for lam in eigenvalues) for t in range(steps)]


def test_user_sgd_subclass_by_import_path_runs_and_gives_its_threshold(user_optimizer_module):
    results = stability_bench.run_case(_user_case(f"{user_optimizer_module}:HalfStepSGD", lr=0.2))
    assert len(results) == 1
    result = results[0]
    assert result.optimizer_class == f"{user_optimizer_module}:HalfStepSGD"
    assert result.theory["threshold"] == pytest.approx(2.0 / 0.2 + 0.125)
    assert result.history["loss"] == pytest.approx(_closed_form_losses(0.2), rel=1e-9)
    assert not result.diverged


def test_user_plain_optimizer_by_import_path_runs(user_optimizer_module):
    case = _user_case(f"{user_optimizer_module}:PlainGD", lr={"sweep": [0.1, 0.3]})
    results = stability_bench.run_case(case)
    assert [r.params["lr"] for r in results] == [0.1, 0.3]
    for r in results:
        assert r.history["loss"] == pytest.approx(_closed_form_losses(r.params["lr"]), rel=1e-9)
        assert r.theory["threshold"] is None  # no hook and not a torch.optim class: unknown
        assert math.isfinite(r.metrics["final_loss"])


def test_user_optimizer_hyperparameters_are_checked_against_its_signature(user_optimizer_module):
    with pytest.raises(CaseError, match=r"did you mean 'lr'"):
        load_case(_user_case(f"{user_optimizer_module}:PlainGD", lrate=0.1))


def test_validation_builds_each_optimizer_once_per_swept_value_not_per_point(monkeypatch):
    """Every swept value is offered to the optimizer's constructor, the other
    hyperparameters at their first values: 1 + 3 × 9 builds for 1000 points."""
    import stability_bench.schema as schema

    built = []
    real = schema._refusal

    def counting(cls, params, dtype):
        built.append(dict(params))
        return real(cls, params, dtype)

    monkeypatch.setattr(schema, "_refusal", counting)
    case = load_case(Path(__file__).parent / "data" / "schema" / "sweep_cube.yaml")
    adam = case.optimizers["adam"]
    assert adam.count() == 1000 and len(built) == 1 + 3 * 9
    for name, values in adam.sweeps.items():
        assert sorted({b[name] for b in built}) == sorted(values)


def test_a_sweep_point_is_matched_with_its_parity_partner_by_lookup():
    """Planning is linear: a run's parity partner is found by hashing its swept values."""
    from stability_bench.expectations import partner_point
    from stability_bench.plan import plan_runs

    case = load_case(Path(__file__).parent / "data" / "orchestrate" / "sweep.yaml")
    for spec in plan_runs(case, optimizers=["adam"]):
        assert partner_point(case, spec.params, "ref") == {"lr": spec.params["lr"]}
