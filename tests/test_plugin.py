"""The pytest plugin, run on scratch ``cases/`` folders with pytester."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from casefiles import line_of

# Imported here so that pytester's in-process runs find them already loaded (it drops the
# modules a run imports afterwards, which would leave two copies of the registries).
import stability_bench.cli  # noqa: F401
import stability_bench.expectations  # noqa: F401
import stability_bench.pytest_plugin  # noqa: F401
import stability_bench.runner  # noqa: F401

DATA = Path(__file__).parent / "data" / "plugin"


def plugin_line(name: str, text: str) -> int:
    """The line of ``tests/data/plugin/<name>.yaml`` holding ``text`` (1-based)."""
    return line_of(DATA / f"{name}.yaml", text)


def closed_form_final_loss(lr: float, eigenvalues=(1.0, 4.0), steps: int = 20) -> float:
    """The loss at the last recorded step of GD from x0 = 1: ½ Σ λ (1 − ηλ)^(2(steps−1))."""
    return 0.5 * sum(lam * (1 - lr * lam) ** (2 * (steps - 1)) for lam in eigenvalues)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in-process on the scratch folder (the plugin comes from its pytest11 entry
    point); hypothesis's plugin is left out: it adds seconds to every in-process run."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def write_cases(pytester: pytest.Pytester, *names: str, folder: str = "cases", **edited: str) -> Path:
    """Copy case files from tests/data/plugin into the scratch project's ``folder``;
    ``edited`` gives a case's text where a test changes it."""
    target = pytester.path / folder
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = next(DATA.glob(f"{name}.y*ml"))
        (target / source.name).write_bytes(source.read_bytes())
    for name, text in edited.items():
        (target / f"{name}.yaml").write_text(text)
    return target


def case_text(name: str) -> str:
    return (DATA / f"{name}.yaml").read_text(encoding="utf-8")


def test_item_ids_name_case_optimizer_sweep_point_seed_and_device(pytester):
    write_cases(pytester, "quad_pass")
    result = run(pytester, "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert len(ids) == 8, result.outlines  # 2 lr × 2 seeds × 2 devices
    assert len(set(ids)) == 8
    for lr in ("0.1", "0.2"):
        for seed in ("7", "8"):
            for device in ("cpu", "cuda"):
                match = [i for i in ids if f"lr={lr}" in i and re.search(rf"seed\W?{seed}(?!\d)", i)
                         and re.search(rf"\b{device}\b", i)]
                assert len(match) == 1, (lr, seed, device, ids)
                assert "quad_pass.yaml" in match[0] and "quad_pass" in match[0].split("::", 1)[1]
                assert re.search(r"\bgd\b", match[0])


def test_passing_case_passes_and_failed_expectation_is_reported_precisely(pytester):
    write_cases(pytester, "quad_fail",
                quad_pass=case_text("quad_pass").replace("devices: [cpu, cuda]", "devices: [cpu]"))
    result = run(pytester)
    result.assert_outcomes(passed=4, failed=1)
    out = result.stdout.str()
    # The file and line of the expectation, the metric, the comparator and the bound.
    located = [line for line in result.outlines if f"quad_fail.yaml:{plugin_line('quad_fail', 'above: 1.0')}" in line]
    assert located, out
    line = located[0]
    assert "final_loss" in line and "above" in line and "1.0" in line
    # The measured value is GD's closed-form loss, formatted to a few significant digits.
    measured = re.search(r"measured\s+([-+0-9.eE]+)", line)
    assert measured, line
    assert float(measured.group(1)) == pytest.approx(closed_form_final_loss(0.1), rel=1e-4)
    # The expectation that held is not reported as a failure.
    assert not any(f"quad_fail.yaml:{plugin_line('quad_fail', 'diverged')}" in line for line in result.outlines)
    assert "Traceback" not in out and "runner.py" not in out


def test_cuda_items_skip_where_cuda_is_absent(pytester):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the items would run")
    write_cases(pytester, "quad_cuda")
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*CUDA is not available*"])


def test_slow_cases_run_only_with_run_slow(pytester):
    write_cases(pytester, "quad_slow")
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*--run-slow*"])
    result = run(pytester, "--run-slow")
    result.assert_outcomes(passed=1)


def test_malformed_case_is_a_collection_error_naming_file_line_and_key(pytester):
    write_cases(pytester, "quad_bad", "quad_pass")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"quad_bad.yaml:{plugin_line('quad_bad', 'lrr')}" in out
    assert "optimizers.gd.lrr" in out and "'lr'" in out
    assert "Traceback" not in out
    assert "schema.py" not in out and "pytest_plugin.py" not in out  # no traceback frames either


def test_a_case_with_no_runs_is_a_collection_error_naming_file_and_key(pytester):
    """seeds: [] would be an empty file of items (pytest's exit 5, "no tests ran", naming
    nothing): it is a collection error at the key."""
    write_cases(pytester, "quad_no_seeds", "quad_fail")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"quad_no_seeds.yaml:{plugin_line('quad_no_seeds', 'seeds:')}: seeds: seeds is empty" in out


def test_the_session_plans_at_most_stability_max_runs_counted_before_expanding(pytester, monkeypatch):
    """Each case file's runs are counted from its sweep sizes into the session's total; the
    file that takes it past the limit is a collection error naming the numbers, and nothing
    of a sweep over the limit is expanded."""
    from stability_bench.schema import OptimizerSpec

    write_cases(pytester, "quad_pass", "quad_fail")  # 8 runs and 1
    result = run(pytester, "--stability-max-runs", "8", "--collect-only")
    result.assert_outcomes(errors=1)
    assert re.search(r"9 runs planned \(after [18] planned before\), over the limit of 8 runs per invocation",
                     result.stdout.str())
    result = run(pytester, "--stability-max-runs", "9", "--collect-only")
    result.assert_outcomes(errors=0)

    (pytester.path / "cases" / "quad_fail.yaml").unlink()
    huge = Path(__file__).parent / "data" / "hostile" / "sweep_over_limit.yaml"
    (pytester.path / "cases" / huge.name).write_bytes(huge.read_bytes())
    monkeypatch.setattr(OptimizerSpec, "iter_points", lambda self: pytest.fail("a sweep was expanded"))
    result = run(pytester, "--collect-only")
    result.assert_outcomes(errors=1)
    line = line_of(huge, "# PLAN-ERROR")
    assert f"sweep_over_limit.yaml:{line}: optimizers.adam: the case plans 100,000,000 runs" in result.stdout.str()


def test_missing_data_skips_the_item_with_a_located_reason(pytester, tmp_path, monkeypatch):
    empty = tmp_path / "no_data_here"
    empty.mkdir()
    monkeypatch.setenv("STABILITY_BENCH_DATA", str(empty))
    write_cases(pytester, "cifar_tiny", cifar_tiny_2=case_text("cifar_tiny").replace("name: cifar_tiny",
                                                                                     "name: cifar_tiny_2"))
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=2)
    out = result.stdout.str()
    assert "data not available" in out
    assert f"cifar_tiny.yaml:{plugin_line('cifar_tiny', 'data:')}: data: CIFAR-10 not found — get CIFAR-10" in out
    assert f"cifar_tiny_2.yaml:{plugin_line('cifar_tiny', 'data:')}: data: CIFAR-10 not found — get CIFAR-10" in out
    # where it looked, and why nothing was downloaded: once for the session, not once per item
    assert out.count("Looked for:") == 1 and out.count("Not downloaded: STABILITY_BENCH_DATA is set") == 1
    header = re.search(r"data not available \(2 items of (.*)\)", out)
    assert header and sorted(header.group(1).split(", ")) == ["cases/cifar_tiny.yaml", "cases/cifar_tiny_2.yaml"]
    assert str(empty) in out
    assert "Traceback" not in out and "runner.py" not in out


@pytest.mark.parametrize("how", ["flag", "env"])
def test_strict_mode_makes_missing_data_a_failure(pytester, tmp_path, monkeypatch, how):
    """CI cannot go green without checking: the item that skips by default fails under
    --stability-strict or STABILITY_BENCH_STRICT=1, with the same located reason."""
    empty = tmp_path / "no_data_here"
    empty.mkdir()
    monkeypatch.setenv("STABILITY_BENCH_DATA", str(empty))
    write_cases(pytester, "cifar_tiny")
    if how == "env":
        monkeypatch.setenv("STABILITY_BENCH_STRICT", "1")
    result = run(pytester, *(["--stability-strict"] if how == "flag" else []))
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "strict" in out and "data not available" in out and str(empty) in out
    assert f"cifar_tiny.yaml:{plugin_line('cifar_tiny', 'data:')}" in out
    assert "Traceback" not in out


def test_a_malformed_strict_variable_is_a_usage_error(pytester, monkeypatch):
    write_cases(pytester, "quad_slow")
    monkeypatch.setenv("STABILITY_BENCH_STRICT", "sometimes")
    result = run(pytester, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "STABILITY_BENCH_STRICT='sometimes': expected 1 or 0" in result.stderr.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA items run here: nothing skips")
def test_strict_mode_fails_cuda_items_skipped_on_a_machine_with_a_gpu(pytester, monkeypatch, gpu_path):
    from stability_bench.plan import hidden_gpu

    write_cases(pytester, "quad_cuda")
    if hidden_gpu() is None:  # a machine without a GPU: skipping CUDA items is right, strict or not
        run(pytester, "--stability-strict").assert_outcomes(skipped=1)
    monkeypatch.setenv("PATH", gpu_path)
    run(pytester).assert_outcomes(skipped=1)   # not strict: a skip, as before
    result = run(pytester, "--stability-strict", "-rf")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "CUDA is not available" in out and "GPU 0: NVIDIA H200" in out and "Traceback" not in out


def test_only_marked_yaml_below_the_rootdir_cases_folder_is_collected(pytester):
    """Another tool's YAML in cases/ (no marker) and marked files elsewhere are not collected;
    the unmarked files in cases/ are listed with a warning (tests/test_init_scaffold.py)."""
    write_cases(pytester, "quad_slow", "not_a_case", "docker-compose")
    write_cases(pytester, "quad_pass", folder="configs")
    write_cases(pytester, "quad_pass", folder="sub/cases")   # a cases folder, but not <rootdir>/cases
    result = run(pytester, "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    ids = [line for line in result.outlines if "::" in line]
    assert len(ids) == 1 and "quad_slow" in ids[0]
    warned = [line for line in result.outlines if "NotACaseWarning" in line]
    assert len(warned) == 2 and any("not_a_case.yaml" in w for w in warned) \
        and any("docker-compose.yml" in w for w in warned), result.outlines


def test_a_project_living_below_a_folder_named_cases_collects_nothing_of_ours(pytester):
    """The rule is relative to the rootdir: a `cases` folder above it does not count."""
    project = pytester.mkdir("cases") / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "docker-compose.yml").write_bytes((DATA / "docker-compose.yml").read_bytes())
    (project / "test_x.py").write_text("def test_x():\n    assert True\n")
    result = pytester.runpytest(str(project), "--rootdir", str(project), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_stability_cases_dirs_names_folders_relative_to_the_ini_file(pytester):
    pytester.makeini("[pytest]\nstability_cases_dirs = guards\n")
    write_cases(pytester, "quad_slow", folder="guards")
    write_cases(pytester, "quad_cuda")   # cases/ is no longer collected
    result = run(pytester, "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert len(ids) == 1 and "quad_slow" in ids[0]


def test_a_case_file_that_cannot_be_read_is_one_error_not_an_aborted_session(pytester):
    """Not UTF-8: a located collection error for that file; the other files still run."""
    write_cases(pytester, "not_utf8", "quad_fail")
    result = run(pytester, "--continue-on-collection-errors")
    result.assert_outcomes(failed=1, errors=1)
    out = result.stdout.str()
    assert "INTERNALERROR" not in out and "not_utf8.yaml" in out and "UTF-8" in out


@pytest.mark.parametrize("partner_first", [False, True])
def test_a_parity_partner_that_is_also_an_item_trains_once(pytester, monkeypatch, tmp_path, partner_first):
    """Items run in the order of the optimizers: the partner's own item may come first or
    last; either way CountingSGD is built once."""
    count = tmp_path / "count"
    monkeypatch.setenv("COUNT_FILE", str(count))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(DATA), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(DATA))
    lines = case_text("parity_pair").splitlines(keepends=True)
    mine = next(i for i, line in enumerate(lines) if line.startswith("  mine:"))
    if partner_first:
        lines[mine], lines[mine + 1] = lines[mine + 1], lines[mine]
    write_cases(pytester, parity_pair="".join(lines))
    result = run(pytester, "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert count.read_text().count("trained") == 1


def test_the_heaviest_case_file_comes_first_then_the_other_tests(pytester):
    """xdist hands out files in collection order; a long case file started last would
    leave the other workers idle, so case files come first, heaviest first (estimated work:
    steps × model size, partners and probes included), whatever pytest-randomly's shuffle,
    and other tests after them."""
    heavy = case_text("quad_pass").replace("name: quad_pass", "name: quad_heavy").replace("steps: 20", "steps: 2000")
    write_cases(pytester, "quad_pass", a_heavy=heavy)  # 'a_heavy' sorts first, 'quad_pass' second
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    for seed in ("1", "2", "3"):
        result = run(pytester, "--collect-only", "-q", "-p", "randomly", "-p", "no:xdist", "--randomly-seed", seed)
        files = list(dict.fromkeys(line.split("::")[0] for line in result.outlines if "::" in line))
        assert files == ["cases/a_heavy.yaml", "cases/quad_pass.yaml", "test_plain.py"], (seed, result.outlines)


def test_xdist_keeps_that_order_under_the_projects_own_options(pytester):
    """The order above only helps if xdist keeps it. Since pytest-xdist 3.5, ``--dist
    loadfile`` hands out files with more items first unless ``--no-loadscope-reorder`` is
    given, so the heavy case files ran last. With the distribution options of this
    project's addopts and one worker, the heaviest case file (8 items) runs before a plain
    test file of 12 items; with xdist's reorder it would run after it."""
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    addopts = re.search(r'^addopts\s*=\s*"([^"]*)"', pyproject, re.M).group(1).split()
    dist = [opt for i, opt in enumerate(addopts)
            if opt.startswith(("--dist", "--no-loadscope")) or (i and addopts[i - 1] == "--dist")]
    assert "--no-loadscope-reorder" in dist, addopts
    heavy = case_text("quad_pass").replace("name: quad_pass", "name: quad_heavy").replace("steps: 20", "steps: 2000")
    write_cases(pytester, a_heavy=heavy)
    pytester.makepyfile(test_many="".join(f"def test_{i}():\n    assert True\n" for i in range(12)))
    result = run(pytester, "-n", "1", *dist, "-v", "-p", "randomly", "--randomly-seed", "2")
    ran = [line.split()[-1].split("::")[0] for line in result.outlines
           if line.startswith("[gw0]") and ("PASSED" in line or "SKIPPED" in line)]
    assert ran and ran[0] == "cases/a_heavy.yaml", result.outlines
    assert ran.index("test_many.py") > max(i for i, f in enumerate(ran) if f == "cases/a_heavy.yaml"), ran
