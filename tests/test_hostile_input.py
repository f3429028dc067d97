"""Hostile case files: every one ends in a located CaseError (or RunSetupError at run
start) naming file, line and key path — never another exception, a hang or a flood.

The files and their expected problems are in tests/data/hostile/ (see hostile_cases.py for
the marker comments); the big or odd ones are generated into tmp_path.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile_cases as hostile
from casefiles import assert_exactly_marked, assert_reported, marked_problems
from stability_bench.plan import PlanTooLarge, check_run_limit
from stability_bench.plan import plan_runs
from stability_bench.runner import RunSetupError, start
from stability_bench.schema import CaseError, load_case, load_cases
from stability_bench.types import MAX_PROBLEMS
from stability_bench.yamlsource import MAX_BYTES, has_case_marker

COMMITTED = hostile.committed()


@pytest.fixture
def scaled_model():
    with hostile.scaled_model(), hostile.user_code():
        yield


@pytest.mark.parametrize("file", COMMITTED, ids=[f.stem for f in COMMITTED])
def test_committed_hostile_file_gets_exactly_its_marked_problems(file, scaled_model):
    expected = marked_problems(file)
    kinds = {e.kind for e in expected}
    if not kinds & {"SETUP-ERROR", "PLAN-ERROR"}:
        with pytest.raises(CaseError) as info:
            load_cases(file)
        assert_exactly_marked(str(info.value), file)
        return
    assert len(expected) == 1, f"{file.name}: a setup or plan error is the file's only problem"
    (case,) = load_cases(file)  # valid as a case: the problem shows when it is planned or built
    if "PLAN-ERROR" in kinds:
        with pytest.raises(PlanTooLarge) as info:
            check_run_limit([case])
    else:
        with pytest.raises(RunSetupError) as info:
            start(plan_runs(case)[0])
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    (e,) = expected
    assert_reported(message, file, e.line, e.path, e.fragments)


@pytest.mark.parametrize("file", COMMITTED, ids=[f.stem for f in COMMITTED])
def test_validate_refuses_what_run_refuses(file, scaled_model, capsys):
    """`validate` and `run` give a file the same verdict and the same lines, exit 2 — except
    a model or data factory that fails to build (SETUP-ERROR): validation builds optimizers,
    not models or data, so only the run finds it (still exit 2, "could not be set up")."""
    from stability_bench.cli import main

    kinds = {e.kind for e in marked_problems(file)}
    validated = main(["validate", str(file)])
    _, validate_err = capsys.readouterr()
    ran = main(["run", str(file), "--no-triage"])
    run_out, run_err = capsys.readouterr()
    assert ran == 2, run_out + run_err
    if kinds == {"SETUP-ERROR"}:
        assert validated == 0 and "could not be set up" in run_err and "ERROR " in run_out
    else:
        assert validated == 2
        assert run_err == validate_err, "validate and run tell the same problems alike"
        assert "passed" not in run_out  # refused before any run


@pytest.mark.parametrize("gen", hostile.GENERATED, ids=[g.name for g in hostile.GENERATED])
def test_generated_hostile_file_is_a_located_case_error_quickly(gen, tmp_path):
    path = hostile.write_generated(tmp_path)[gen.name]
    started = time.perf_counter()
    with pytest.raises(CaseError) as info:
        load_cases(path)
    elapsed = time.perf_counter() - started
    message = str(info.value)
    assert_reported(message, path, gen.line, gen.path, gen.fragments)
    # Bounded work, not a timing test: an unbounded bomb takes minutes and gigabytes.
    assert elapsed < 30, f"{gen.name} took {elapsed:.1f} s"


def test_problem_report_is_capped(tmp_path):
    path = hostile.write_generated(tmp_path)["many_problems.yaml"]
    with pytest.raises(CaseError) as info:
        load_cases(path)
    assert len(info.value.problems) == 30  # all kept for programs; the text shows the first 20
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_PROBLEMS + 1
    assert lines[-1] == f"… and {30 - MAX_PROBLEMS} more problems"
    assert "unknown_key_0" in lines[0] and f"unknown_key_{MAX_PROBLEMS - 1}'" in lines[MAX_PROBLEMS - 1]


def test_size_limit_is_checked_before_parsing(tmp_path, monkeypatch):
    """Not even read: a file just over the limit fails before PyYAML sees it."""
    import yaml

    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * MAX_BYTES)
    monkeypatch.setattr(yaml.SafeLoader, "__init__", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(CaseError, match="over the 256 KiB limit"):
        load_cases(path)


def test_a_file_just_under_the_limit_is_read(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(hostile.QUAD + "description: >\n" + "  x" * ((MAX_BYTES - 400) // 3) + "\n")
    assert path.stat().st_size <= MAX_BYTES
    assert load_case(path).name == "quad"


def test_nesting_just_within_the_limit_is_read(tmp_path):
    from stability_bench.yamlsource import MAX_DEPTH, read_yaml

    path = tmp_path / "deep.yaml"
    levels = MAX_DEPTH - 1  # the top-level mapping is one level
    path.write_text("a: " + "[" * levels + "]" * levels + "\n")
    data, _ = read_yaml(path)
    depth, value = 0, data["a"]
    while value:
        value, depth = value[0], depth + 1
    assert depth == levels - 1


def test_aliases_that_stay_small_are_expanded(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(hostile.QUAD.replace("  gd: {class: reference.GD, lr: 0.1}\n",
                                         "  gd: &gd {class: reference.GD, lr: 0.1}\n  gd2: *gd\n"))
    case = load_case(path)
    assert case.optimizers["gd2"].fixed == {"lr": 0.1}


# ----------------------------------------------------------------- the marker
def test_marker_is_optional_for_dicts_and_version_1_loads(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(hostile.QUAD)
    assert load_case(path).name == "quad"
    as_dict = {"name": "q", "model": {"kind": "quadratic", "eigenvalues": [1.0]},
               "loss": {"kind": "quadratic"}, "steps": 3, "optimizers": {"gd": {"class": "reference.GD", "lr": 0.1}}}
    assert load_case(as_dict).steps == 3


@pytest.mark.parametrize("text, marked", [
    ("stability-bench: 1\nname: q\n", True),
    ("# a comment\n---\nstability-bench: 1\n", True),
    ("name: q\n'stability-bench': 1\n", True),
    ("name: q\nstability-bench : 2\n", True),               # collected, then rejected by validation
    ("name: q\n", False),
    ("services:\n  stability-bench: 1\n", False),             # nested, not top-level
    ("# stability-bench: 1\n", False),                        # a comment
    ("name: stability-bench: 1\n", False),
])
def test_has_case_marker(tmp_path, text, marked):
    path = tmp_path / "file.yaml"
    path.write_text(text)
    assert has_case_marker(path) is marked


def test_has_case_marker_reads_only_the_head_of_a_file(tmp_path):
    late = tmp_path / "late.yaml"
    late.write_bytes(b"#" * (64 * 2**10) + b"\nstability-bench: 1\n")
    assert has_case_marker(late) is False
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00stability\nstability-bench: 1\n")
    assert has_case_marker(binary) is True   # collected, then a located 'not UTF-8' error
    assert has_case_marker(tmp_path) is False and has_case_marker(tmp_path / "missing.yaml") is False


def test_shipped_cases_carry_the_marker():
    shipped = sorted((hostile.ROOT / "cases").glob("*.yaml"))
    assert shipped
    for file in shipped:
        assert file.read_text().splitlines()[0] == "stability-bench: 1", file
        assert has_case_marker(file)


def test_yamlsource_imports_no_torch():
    code = ("import sys; import stability_bench.yamlsource as y; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(y.has_case_marker(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(hostile.ROOT / "cases" / "cifar_fc.yaml")],
                         capture_output=True, text=True, cwd=hostile.ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


# ----------------------------------------------------------------- accepted values
def test_timeout_is_kept_on_the_case(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(hostile.QUAD + "timeout: 2.5\n")
    assert load_case(path).timeout == 2.5
    path.write_text(hostile.QUAD)
    assert load_case(path).timeout is None


def test_strict_types_still_accept_the_right_values(tmp_path, scaled_model):
    path = tmp_path / "case.yaml"
    path.write_text(hostile.QUAD.replace(
        "  gd: {class: reference.GD, lr: 0.1}\n",
        "  adam: {class: torch.optim.Adam, lr: 1, betas: [0.8, 0.9], amsgrad: true, foreach: null}\n"
        "  sweep: {class: torch.optim.Adam, betas: {sweep: [[0.9, 0.99], [0.5, 0.9]]}}\n")
        + "expect:\n  adam: {final_loss: {between: [0.0, 1.0e10], below: {of: threshold, times: 2}}}\n")
    case = load_case(path)
    assert case.optimizers["adam"].fixed == {"lr": 1, "betas": (0.8, 0.9), "amsgrad": True, "foreach": None}
    assert case.optimizers["sweep"].sweeps == {"betas": [(0.9, 0.99), (0.5, 0.9)]}
    path.write_text(hostile.QUAD.replace("model: {kind: quadratic, eigenvalues: [1.0, 4.0]}",
                                         "model: {kind: sb_test_scaled, scales: {a: 1.0, b: 4}}"))
    assert load_case(path).model["scales"] == {"a": 1.0, "b": 4}


def test_cross_entropy_on_real_targets_from_an_undeclared_data_set_fails_at_run_start(tmp_path):
    """Data registered without declaring its targets: the schema cannot know, the run's
    one-batch check names the loss and the targets before training."""
    from stability_bench.components.data import DATA, gaussian

    DATA.register("sb_test_undeclared", lambda ctx, *, n: gaussian(ctx, n=n, in_features=3, out_features=2))
    try:
        case = load_case({"name": "ce", "model": {"kind": "linear", "in_features": 3, "out_features": 2},
                          "data": {"kind": "sb_test_undeclared", "n": 4}, "loss": {"kind": "cross_entropy"},
                          "steps": 2, "optimizers": {"gd": {"class": "reference.GD", "lr": 0.1}}})
        with pytest.raises(RunSetupError, match=r"cross_entropy needs integer class labels"):
            start(plan_runs(case)[0])
    finally:
        del DATA._entries["sb_test_undeclared"]


# ----------------------------------------------------------------- fuzz
YAMLISH = st.text(alphabet=st.sampled_from(list("ab:-[]{},&*!|>'\"#?<=\n\t .0123e%@`\\") + ["\x00", "é"]),
                  max_size=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=200), YAMLISH.map(str.encode),
                         st.builds(lambda t: hostile.QUAD.encode() + t.encode(), YAMLISH)))
def test_fuzz_load_cases_raises_only_case_error(tmp_path, content):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content)
    try:
        load_cases(path)
    except CaseError as exc:
        assert str(exc).startswith(str(path)), str(exc)


CASE_KEYS = st.sampled_from(["name", "model", "data", "loss", "steps", "optimizers", "expect", "variants",
                             "devices", "seeds", "batch", "probes", "timeout", "stability-bench", "kind",
                             "class", "lr", "betas", "eigenvalues", "n", "widths", "gd", "sweep", "final_loss",
                             "below", "between", "of", "times", "with", "size", "every", "subset", "v"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(), st.text(max_size=4),
                   st.sampled_from(["cpu", "threshold", "reference.GD", "torch.optim.Adam", "quadratic",
                                    "mse", "cross_entropy", "gaussian", "mlp", "cifar10", "final_loss"]))
TREES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(CASE_KEYS, inner, max_size=5)),
                     max_leaves=25)
VALID = {"name": "q", "model": {"kind": "quadratic", "eigenvalues": [1.0]}, "loss": {"kind": "quadratic"},
         "steps": 3, "optimizers": {"gd": {"class": "reference.GD", "lr": 0.1}}}


@settings(max_examples=150, deadline=None)
@given(extra=st.dictionaries(CASE_KEYS, TREES, max_size=8), over_a_valid_case=st.booleans())
def test_fuzz_case_shaped_dicts_raise_only_case_error(extra, over_a_valid_case):
    """Case-shaped structures with values of every type in every place (this found a
    TypeError for ``kind: []``)."""
    try:
        load_cases({**VALID, **extra} if over_a_valid_case else extra)
    except CaseError as exc:   # any other exception fails the test
        lines = str(exc).splitlines()
        assert lines and all(": " in line for line in lines if not line.startswith("… and ")), str(exc)


# ----------------------------------------------------------------- docs
def test_docs_table_is_current():
    doc = hostile.ROOT / "docs" / "hostile-input.md"
    assert doc.read_text() == hostile.markdown(), \
        "docs/hostile-input.md is out of date: python tests/hostile_cases.py > docs/hostile-input.md"


def test_every_test_the_docs_name_exists():
    """Each row of the runs table names the tests that assert it: they must exist."""
    import re

    named = set(re.findall(r"`(test_\w+)`", hostile.markdown()))
    sources = "".join(path.read_text() for path in (hostile.ROOT / "tests").glob("test_*.py"))
    assert named and not [t for t in sorted(named) if f"def {t}(" not in sources]
