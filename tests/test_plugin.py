"""The pytest plugin, run on scratch ``cases/`` folders with pytester."""
from __future__ import annotations

import re

import pytest
import torch

# Imported here so that pytester's in-process runs find them already loaded (it drops the
# modules a run imports afterwards, which would leave two copies of the registries).
import stability_bench.cli  # noqa: F401
import stability_bench.expectations  # noqa: F401
import stability_bench.pytest_plugin  # noqa: F401
import stability_bench.runner  # noqa: F401

PASSING = """\
name: quad_pass
dtype: float64
seeds: [7, 8]
devices: [cpu, cuda]
model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}
loss: {kind: quadratic}
steps: 20
optimizers:
  gd: {class: reference.GD, lr: {sweep: [0.1, 0.2]}}
expect:
  gd:
    final_loss: {below: 0.1}
    diverged: {equals: false}
"""

# GD at lr 0.1 on ½(x₁² + 4x₂²) from (1, 1) converges, so the loss cannot stay above 1.0.
FAILING = """\
name: quad_fail
dtype: float64
model: {kind: quadratic, eigenvalues: [1.0, 4.0], x0: 1.0}
loss: {kind: quadratic}
steps: 20
optimizers:
  gd: {class: reference.GD, lr: 0.1}
expect:
  gd:
    diverged: {equals: false}
    final_loss: {above: 1.0}
"""
FAILING_EXPECTATION_LINE = 11

SLOW = """\
name: quad_slow
slow: true
model: {kind: quadratic, eigenvalues: [1.0]}
loss: {kind: quadratic}
steps: 10
optimizers:
  gd: {class: reference.GD, lr: 0.5}
expect:
  gd:
    diverged: {equals: false}
"""

CUDA = """\
name: quad_cuda
devices: [cuda]
model: {kind: quadratic, eigenvalues: [1.0]}
loss: {kind: quadratic}
steps: 10
optimizers:
  gd: {class: reference.GD, lr: 0.5}
"""

MALFORMED = """\
name: quad_bad
model: {kind: quadratic, eigenvalues: [1.0]}
loss: {kind: quadratic}
steps: 10
optimizers:
  gd:
    class: reference.GD
    lrr: 0.5
"""
MALFORMED_LINE = 8

CIFAR = """\
name: cifar_tiny
model: {kind: mlp, widths: [3072, 10]}
data: {kind: cifar10, subset: 10}
loss: {kind: mse}
steps: 2
optimizers:
  sgd: {class: torch.optim.SGD, lr: 0.01}
"""
CIFAR_DATA_LINE = 3


def closed_form_final_loss(lr: float, eigenvalues=(1.0, 4.0), steps: int = 20) -> float:
    """The loss at the last recorded step of GD from x0 = 1: ½ Σ λ (1 − ηλ)^(2(steps−1))."""
    return 0.5 * sum(lam * (1 - lr * lam) ** (2 * (steps - 1)) for lam in eigenvalues)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in-process on the scratch folder (the plugin comes from its pytest11 entry
    point); hypothesis's plugin is left out: it adds seconds to every in-process run."""
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def write_cases(pytester: pytest.Pytester, **cases: str) -> None:
    folder = pytester.mkdir("cases")
    for name, text in cases.items():
        (folder / f"{name}.yaml").write_text(text)


def test_item_ids_name_case_optimizer_sweep_point_seed_and_device(pytester):
    write_cases(pytester, quad_pass=PASSING)
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
    write_cases(pytester, quad_pass=PASSING.replace("devices: [cpu, cuda]", "devices: [cpu]"),
                quad_fail=FAILING)
    result = run(pytester)
    result.assert_outcomes(passed=4, failed=1)
    out = result.stdout.str()
    # The file and line of the expectation, the metric, the comparator and the bound.
    located = [line for line in result.outlines if f"quad_fail.yaml:{FAILING_EXPECTATION_LINE}" in line]
    assert located, out
    line = located[0]
    assert "final_loss" in line and "above" in line and "1.0" in line
    # The measured value is GD's closed-form loss, formatted to a few significant digits.
    measured = re.search(r"measured\s+([-+0-9.eE]+)", line)
    assert measured, line
    assert float(measured.group(1)) == pytest.approx(closed_form_final_loss(0.1), rel=1e-4)
    # The expectation that held is not reported as a failure.
    assert not any("quad_fail.yaml:10" in line for line in result.outlines)
    assert "Traceback" not in out and "runner.py" not in out


def test_cuda_items_skip_where_cuda_is_absent(pytester):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the items would run")
    write_cases(pytester, quad_cuda=CUDA)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*CUDA is not available*"])


def test_slow_cases_run_only_with_run_slow(pytester):
    write_cases(pytester, quad_slow=SLOW)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*--run-slow*"])
    result = run(pytester, "--run-slow")
    result.assert_outcomes(passed=1)


def test_malformed_case_is_a_collection_error_naming_file_line_and_key(pytester):
    write_cases(pytester, quad_bad=MALFORMED, quad_pass=PASSING)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"quad_bad.yaml:{MALFORMED_LINE}" in out
    assert "optimizers.gd.lrr" in out and "'lr'" in out
    assert "Traceback" not in out
    assert "schema.py" not in out and "pytest_plugin.py" not in out  # no traceback frames either


def test_missing_data_skips_the_item_with_a_located_reason(pytester, tmp_path, monkeypatch):
    empty = tmp_path / "no_data_here"
    empty.mkdir()
    monkeypatch.setenv("STABILITY_BENCH_DATA", str(empty))
    write_cases(pytester, cifar_tiny=CIFAR)
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1)
    out = result.stdout.str()
    assert "data not available" in out
    assert f"cifar_tiny.yaml:{CIFAR_DATA_LINE}" in out
    assert str(empty) in out
    assert "Traceback" not in out and "runner.py" not in out


def test_only_yaml_below_a_cases_folder_is_collected(pytester):
    write_cases(pytester, quad_slow=SLOW)
    other = pytester.mkdir("configs")
    (other / "not_a_case.yaml").write_text("just: some config\n")
    result = run(pytester, "--collect-only", "-q")
    ids = [line for line in result.outlines if "::" in line]
    assert len(ids) == 1 and "quad_slow" in ids[0]
    assert "not_a_case" not in result.stdout.str()
