"""The case schema: every malformed case gives one clear paragraph naming file:line and key path.

Table-driven (like PyTorch's OptimizerInfo): ``BAD_CASES`` is data only — each row is a small
case derived from ``BASE`` by editing one line, with the line the error must point at (counted
by hand in the row's YAML), a key path substring and message fragments. The test logic lives in
the functions below the table.
"""
from __future__ import annotations

import math
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import stability_bench
from stability_bench.schema import CaseError, load_case, load_cases

# A 2-D quadratic trained by gradient descent. Line numbers, for the rows below:
BASE = """\
name: quad
model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}
loss: {kind: quadratic}
steps: 20
optimizers:
  gd: {class: reference.GD, lr: 0.1}
expect:
  gd:
    final_loss: {below: 1.0}
"""
#  1 name
#  2 model
#  3 loss
#  4 steps
#  5 optimizers:
#  6   gd
#  7 expect:
#  8   gd:
#  9     final_loss


def edit(old: str, new: str, text: str = BASE) -> str:
    """``text`` with the one line ``old`` replaced by ``new`` (which may be several lines or none)."""
    lines = text.splitlines()
    assert lines.count(old) == 1, f"{old!r} is not exactly one line of the base case"
    i = lines.index(old)
    return "\n".join(lines[:i] + ([new] if new is not None else []) + lines[i + 1:]) + "\n"


def with_optimizer(spec: str) -> str:
    return edit("  gd: {class: reference.GD, lr: 0.1}", f"  gd: {spec}")


@dataclass
class Bad:
    id: str
    yaml: str
    line: int                      # the line the message must name (counted in ``yaml``)
    path: str                      # a substring of the key path shown on that line
    fragments: tuple = ()          # more substrings the same message line must contain


BAD_CASES = [
    # ---- keys: unknown (with the nearest valid one), wrong type, missing
    Bad("unknown-top-level-key", edit("steps: 20", "steps: 20\nstepz: 30"), 5, "stepz",
        ("did you mean 'steps'",)),
    Bad("unknown-top-level-key-deep-in-file", BASE + "descriptoin: a typo\n", 10, "descriptoin",
        ("did you mean 'description'",)),
    Bad("unknown-model-key", edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                                  "model: {kind: quadratic, eigenvalue: [1.0, 4.0], x0: 1.0}"),
        2, "model.eigenvalue", ("'eigenvalues'",)),
    Bad("unknown-data-key", edit("loss: {kind: quadratic}",
                                 "data: {kind: gaussian, n: 8, in_featurs: 3}\nloss: {kind: mse}"),
        3, "data.in_featurs", ("'in_features'",)),
    Bad("unknown-loss-key", edit("loss: {kind: quadratic}", "loss: {kind: mse, reduktion: sum}"),
        3, "loss.reduktion", ("'reduction'",)),
    Bad("unknown-loss-key-block-style", edit("loss: {kind: quadratic}",
                                             "loss:\n  kind: mse\n  reduction: sum\n  divide_by_batchsize: true"),
        6, "loss.divide_by_batchsize", ("'divide_by_batch_size'",)),
    Bad("wrong-type-steps", edit("steps: 20", 'steps: "ten"'), 4, "steps", ("integer", "'ten'")),
    Bad("wrong-type-steps-float", edit("steps: 20", "steps: 20.5"), 4, "steps", ("integer", "20.5")),
    Bad("wrong-type-component-param", edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                                           "model: {kind: quadratic, eigenvalues: lots, x0: 1.0}"),
        2, "model.eigenvalues", ("list", "'lots'")),
    Bad("wrong-literal-dtype", edit("steps: 20", "steps: 20\ndtype: float16"), 5, "dtype",
        ("'float32'", "'float64'", "'float16'")),
    Bad("missing-steps", edit("steps: 20", None), 1, "steps", ("missing",)),
    Bad("missing-optimizers", "name: quad\nmodel: {kind: quadratic, eigenvalues: [1.0]}\n"
                              "loss: {kind: quadratic}\nsteps: 20\n", 1, "optimizers", ("missing",)),
    Bad("missing-model-kind", edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                                   "model: {eigenvalues: [1.0, 4.0], x0: 1.0}"),
        2, "model", ("'kind'", "quadratic")),
    Bad("missing-model-param", edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                                    "model: {kind: quadratic, x0: 1.0}"),
        2, "model", ("missing", "'eigenvalues'")),
    Bad("unknown-model-kind", edit("model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}",
                                   "model: {kind: quadratik, eigenvalues: [1.0, 4.0], x0: 1.0}"),
        2, "model.kind", ("'quadratik'", "did you mean 'quadratic'")),
    Bad("unknown-loss-kind-block-style", edit("loss: {kind: quadratic}", "loss:\n  kind: msee"),
        4, "loss.kind", ("did you mean 'mse'",)),
    Bad("unknown-device", edit("steps: 20", "steps: 20\ndevices: [cpu, gpu]"), 5, "devices[1]",
        ("'gpu'", "cuda")),
    Bad("batch-not-full", edit("steps: 20", "steps: 20\nbatch: all"), 5, "batch", ("'full'", "'all'")),
    Bad("batch-unknown-key", edit("steps: 20", "steps: 20\nbatch: {size: 4, shufle: true}"), 5,
        "batch.shufle", ("'shuffle'",)),
    Bad("divergence-unknown-key", edit("steps: 20", "steps: 20\ndivergence: {factr: 10.0}"), 5,
        "divergence.factr", ("'factor'",)),
    Bad("steps-below-one", edit("steps: 20", "steps: 0"), 4, "steps", ("at least 1",)),
    Bad("no-optimizers", edit("  gd: {class: reference.GD, lr: 0.1}", None).replace(
        "optimizers:\n", "optimizers: {}\n").replace("expect:\n  gd:\n    final_loss: {below: 1.0}\n", ""),
        5, "optimizers", ("at least one",)),

    # ---- optimizer classes
    Bad("torch-class-typo", with_optimizer("{class: torch.optim.Adamm, lr: 0.1}"), 6,
        "optimizers.gd.class", ("'Adamm'", "torch.optim.Adam'")),
    Bad("bare-class-name", with_optimizer("{class: Adam, lr: 0.1}"), 6, "optimizers.gd.class",
        ("torch.optim.", "reference.", "module:", "torch.optim.Adam'")),
    Bad("reference-class-typo", with_optimizer("{class: reference.GDD, lr: 0.1}"), 6,
        "optimizers.gd.class", ("reference.GD",)),
    Bad("class-missing", with_optimizer("{lr: 0.1}"), 6, "optimizers.gd", ("'class'",)),
    Bad("unimportable-user-module", with_optimizer("{class: 'no_such_module:Opt', lr: 0.1}"), 6,
        "optimizers.gd.class", ("module 'no_such_module' was not found", "PYTHONPATH")),
    Bad("user-module-fails-on-import", with_optimizer("{class: 'sb_user_broken:Opt', lr: 0.1}"), 6,
        "optimizers.gd.class", ("sb_user_broken", "found but raised while importing: RuntimeError: boom at import")),
    Bad("user-module-imports-a-missing-module", with_optimizer("{class: 'sb_user_needs_dep:Opt', lr: 0.1}"), 6,
        "optimizers.gd.class", ("'sb_user_needs_dep'", "found but raised while importing: ModuleNotFoundError: "
                                "No module named 'sb_no_such_dependency'")),
        # modules are written by the test; the row names them:
    Bad("user-module-lacks-attribute", with_optimizer("{class: 'sb_user_noattr:Optt', lr: 0.1}"), 6,
        "optimizers.gd.class", ("'Optt'", "'Opt'")),
    Bad("user-class-not-an-optimizer", with_optimizer("{class: 'sb_user_notopt:Thing', lr: 0.1}"), 6,
        "optimizers.gd.class", ("Thing", "Optimizer")),

    # ---- hyperparameters
    Bad("unknown-hyperparameter", with_optimizer("{class: reference.GD, lrr: 0.1}"), 6,
        "optimizers.gd.lrr", ("did you mean 'lr'",)),
    Bad("unknown-torch-hyperparameter", with_optimizer("{class: torch.optim.SGD, lr: 0.1, momentun: 0.9}"), 6,
        "optimizers.gd.momentun", ("'momentum'",)),
    Bad("missing-required-hyperparameter", with_optimizer("{class: reference.GD}"), 6, "optimizers.gd",
        ("'lr'",)),
    # A number in quotes is text (unquoted, 1e-3 is a YAML 1.2 float: test_yaml12_floats_are_numbers).
    Bad("quoted-number-lr-torch", with_optimizer("{class: torch.optim.SGD, lr: '1e-3'}"), 6,
        "optimizers.gd.lr", ("'1e-3'", "did you mean the number 1e-3, without quotes")),
    Bad("quoted-number-lr-reference", with_optimizer('{class: reference.GD, lr: "0.1"}'), 6,
        "optimizers.gd.lr", ("without quotes",)),
    Bad("quoted-number-lr-block-style", with_optimizer("\n    class: torch.optim.Adam\n    lr: '3E-4'"), 8,
        "optimizers.gd.lr", ("the number 3E-4",)),
    Bad("string-hyperparameter", with_optimizer("{class: torch.optim.SGD, lr: fast}"), 6,
        "optimizers.gd.lr", ("'fast'", "number")),

    # ---- sweeps
    Bad("sweep-empty", with_optimizer("{class: reference.GD, lr: {sweep: []}}"), 6,
        "optimizers.gd.lr.sweep", ("non-empty",)),
    Bad("sweep-not-a-list", with_optimizer("{class: reference.GD, lr: {sweep: 0.1}}"), 6,
        "optimizers.gd.lr.sweep", ("0.1",)),
    Bad("sweep-extra-key", with_optimizer("{class: reference.GD, lr: {sweep: [0.1], steps: 3}}"), 6,
        "optimizers.gd.lr", ("sweep", "steps")),
    Bad("sweep-repeats-a-value", with_optimizer("{class: reference.GD, lr: {sweep: [0.1, 0.2, 0.1]}}"), 6,
        "optimizers.gd.lr.sweep", ("repeat",)),
    Bad("sweep-quoted-number", with_optimizer("\n    class: reference.GD\n    lr:\n      sweep:\n"
                                              "        - 0.1\n        - '1e-2'"), 11,
        "optimizers.gd.lr.sweep[1]", ("without quotes",)),

    # ---- expectations
    Bad("expect-unknown-metric", edit("    final_loss: {below: 1.0}", "    final_los: {below: 1.0}"), 9,
        "expect.gd.final_los", ("did you mean 'final_loss'",)),
    Bad("expect-unknown-comparator", edit("    final_loss: {below: 1.0}", "    final_loss: {belo: 1.0}"), 9,
        "expect.gd.final_loss.belo", ("did you mean 'below'",)),
    Bad("expect-unknown-optimizer", BASE.replace("expect:\n  gd:\n", "expect:\n  gdd:\n"), 8,
        "expect.gdd", ("'gd'",)),
    Bad("expect-bound-not-a-number", edit("    final_loss: {below: 1.0}", "    final_loss: {below: [1, 2]}"), 9,
        "expect.gd.final_loss.below", ("[1, 2]",)),
    Bad("expect-bound-unknown-reference", edit("    final_loss: {below: 1.0}", "    final_loss: {below: threshhold}"),
        9, "expect.gd.final_loss.below", ("did you mean 'threshold'",)),
    Bad("expect-bound-quoted-number", edit("    final_loss: {below: 1.0}", "    final_loss: {below: '1e-10'}"),
        9, "expect.gd.final_loss.below", ("the number 1e-10",)),
    Bad("expect-between-needs-two", edit("    final_loss: {below: 1.0}", "    final_loss: {between: [0.0]}"),
        9, "expect.gd.final_loss.between", ("[low, high]",)),
    Bad("expect-scaled-bound", edit("    final_loss: {below: 1.0}",
                                    "    final_loss: {below: {of: treshold, times: 0.5}}"),
        9, "expect.gd.final_loss.below", ("treshold",)),
    Bad("expect-not-a-mapping", edit("    final_loss: {below: 1.0}", "    final_loss: 1.0"),
        9, "expect.gd.final_loss", ("below",)),

    # ---- the file itself
    # The parser notices the unclosed mapping of line 3 on line 4; the message names both lines.
    Bad("invalid-yaml-syntax", edit("loss: {kind: quadratic}", "loss: {kind: quadratic"), 4, "",
        ("YAML", "line 3")),
    Bad("duplicate-key", edit("steps: 20", "steps: 20\nsteps: 30"), 5, "", ("duplicate", "'steps'")),
    Bad("duplicate-nested-key", edit("    final_loss: {below: 1.0}",
                                     "    final_loss: {below: 1.0}\n  gd:\n    min_loss: {below: 1.0}"),
        10, "expect", ("duplicate", "'gd'")),
    Bad("not-a-mapping", "- name: quad\n- steps: 20\n", 1, "", ("mapping",)),

    # ---- variants (errors point into the variant)
    Bad("variant-unknown-hyperparameter", BASE + "variants:\n  fast:\n    optimizers:\n"
                                                 "      gd: {lrr: 0.5}\n", 13, "optimizers.gd.lrr",
        ("did you mean 'lr'",)),
    Bad("variant-wrong-type", BASE + "variants:\n  long:\n    steps: many\n", 12, "steps", ("integer",)),
    Bad("variant-unknown-key", BASE + "variants:\n  long:\n    stepz: 100\n", 12, "stepz",
        ("did you mean 'steps'",)),
    Bad("variant-quoted-number", BASE + "variants:\n  small:\n    optimizers:\n"
                                        "      gd:\n        lr: '1e-2'\n", 14, "variants.small.optimizers.gd.lr",
        ("without quotes",)),
    Bad("variant-bad-expectation", BASE + "variants:\n  v:\n    expect:\n      gd:\n"
                                          "        final_loss: {abov: 1.0}\n", 14,
        "expect.gd.final_loss.abov", ("'above'",)),
    Bad("variant-not-a-mapping", BASE + "variants:\n  v: 3\n", 11, "variants.v", ("mapping",)),
    Bad("variants-not-a-mapping", BASE + "variants: [a, b]\n", 10, "variants", ("map",)),
]

# User modules the user-optimizer rows name (written to a folder on sys.path by a fixture).
USER_MODULES = {
    "sb_user_broken": "raise RuntimeError('boom at import')\n",
    "sb_user_needs_dep": "import sb_no_such_dependency\n",
    "sb_user_noattr": "import torch\n\nclass Opt(torch.optim.SGD):\n    pass\n",
    "sb_user_notopt": "class Thing:\n    def __init__(self, params, lr=0.1):\n        pass\n",
}


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Importable user modules (fresh for each test: they are dropped from sys.modules after)."""
    folder = tmp_path / "user_modules"
    folder.mkdir()
    for name, source in USER_MODULES.items():
        (folder / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(folder))
    yield
    for name in USER_MODULES:
        sys.modules.pop(name, None)


def _load_error(tmp_path, text: str) -> tuple[str, str]:
    path = tmp_path / "case.yaml"
    path.write_text(text)
    with pytest.raises(CaseError) as info:
        load_cases(path)
    return str(path), str(info.value)


@pytest.mark.parametrize("bad", BAD_CASES, ids=[b.id for b in BAD_CASES])
def test_malformed_case_names_file_line_and_key_path(bad: Bad, tmp_path, user_modules):
    file, message = _load_error(tmp_path, bad.yaml)
    assert "Traceback" not in message
    prefix = f"{file}:{bad.line}: "
    lines = [line for line in message.splitlines() if line.startswith(prefix)]
    assert lines, f"no problem reported at {prefix!r}; got:\n{message}"
    # One line (one paragraph) holds location, key path and explanation together.
    matching = [line for line in lines if bad.path in line[len(prefix):]
                and all(f.lower() in line.lower() for f in bad.fragments)]
    assert matching, f"expected {bad.path!r} and {bad.fragments} on a line starting {prefix!r}; got:\n{message}"


def test_invalid_yaml_names_the_line_of_the_broken_construct(tmp_path):
    # Line 10 is a key without a colon: PyYAML notices at the end of the file (line 11), so
    # the message must also name line 10, where the broken key starts.
    text = BASE + "  bad indent\n"
    file, message = _load_error(tmp_path, text)
    assert message.startswith(f"{file}:")
    assert "YAML" in message and "line 10" in message
    assert "Traceback" not in message and len(message.splitlines()) == 1


def test_every_problem_is_reported_at_once(tmp_path):
    text = edit("steps: 20", 'steps: "ten"', with_optimizer("{class: reference.GD, lrr: 0.1}"))
    file, message = _load_error(tmp_path, text)
    assert f"{file}:4: steps" in message
    assert f"{file}:6: optimizers.gd.lrr" in message


def test_bad_case_table_lines_are_where_the_rows_say():
    """Guards the table itself: each row's line exists in its YAML."""
    for bad in BAD_CASES:
        assert 1 <= bad.line <= len(bad.yaml.splitlines()), bad.id


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
    assert chosen.where(chosen.expectations[0].path) == f"{path}:19"
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
