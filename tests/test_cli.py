"""The ``stability-bench`` command line: exit codes, messages, JSON results, progress."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casefiles import case_text, line_of, write_case
from stability_bench.cli import main

PASSING = case_text("quad_pass.yaml")
FAILING = case_text("quad_fail.yaml")
FAILING_EXPECTATION_LINE = line_of(FAILING, "final_loss: {above")
DIVERGING = case_text("quad_diverge.yaml")
MALFORMED = case_text("quad_bad.yaml")
MALFORMED_LINE = line_of(MALFORMED, "Adamm")
SWEEP = case_text("quad_sweep.yaml")
CIFAR = case_text("cifar_tiny.yaml")
CIFAR_DATA_LINE = line_of(CIFAR, "data:")


@pytest.fixture
def case_file(tmp_path):
    def write(text: str, name: str = "case.yaml") -> str:
        return str(write_case(tmp_path / "cases", text, name))

    return write


def strict_json(path: Path):
    """Parse as strict JSON: NaN / Infinity are not JSON and must not appear."""
    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)


# ---------------------------------------------------------------------------- validate
def test_validate_ok(case_file, capsys):
    path = case_file(PASSING)
    assert main(["validate", path]) == 0
    out, err = capsys.readouterr()
    assert "quad_pass" in out and err == ""


def test_validate_a_folder(case_file, capsys):
    case_file(PASSING, "a.yaml")
    case_file(SWEEP, "b.yaml")
    folder = str(Path(case_file(DIVERGING, "c.yaml")).parent)
    assert main(["validate", folder]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("quad_pass", "quad_sweep", "quad_diverge"))


@pytest.mark.parametrize("command", ["validate", "run", "list"])
def test_malformed_case_exits_2_with_a_located_message(case_file, capsys, command):
    path = case_file(MALFORMED)
    assert main([command, path]) == 2
    out, err = capsys.readouterr()
    assert f"{path}:{MALFORMED_LINE}" in err
    assert "optimizers.gd.class" in err and "torch.optim.Adam'" in err
    assert "Traceback" not in err + out


def test_invalid_yaml_exits_2(case_file, capsys):
    path = case_file("name: x\nsteps: [1, 2\n")
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert path in err and "YAML" in err and "Traceback" not in err


def test_missing_case_file_exits_2(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert main(["validate", missing]) == 2
    assert missing in capsys.readouterr().err


def test_one_bad_file_in_a_folder_fails_validation(case_file, capsys):
    case_file(PASSING, "a.yaml")
    bad = case_file(MALFORMED, "b.yaml")
    assert main(["validate", str(Path(bad).parent)]) == 2
    assert f"{bad}:{MALFORMED_LINE}" in capsys.readouterr().err


# --------------------------------------------------------------------------------- run
def test_run_passing_exits_0(case_file, capsys):
    assert main(["run", case_file(PASSING)]) == 0
    out, err = capsys.readouterr()
    assert "quad_pass" in out
    assert err == ""  # stderr is not a terminal under capsys: no progress line


def test_run_failing_exits_1_and_names_the_expectation(case_file, capsys):
    path = case_file(FAILING)
    assert main(["run", path]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if f"{path}:{FAILING_EXPECTATION_LINE}" in line)
    assert "final_loss" in line and "above" in line and "1.0" in line
    # The measured value: GD's closed-form loss at the last of 20 recorded steps.
    expected = 0.5 * (0.9 ** 38 + 4 * 0.6 ** 38)
    measured = float(line.split("measured")[1].split()[0])
    assert measured == pytest.approx(expected, rel=1e-4)


def test_run_json_is_strict_complete_and_written_atomically(case_file, tmp_path, capsys):
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    target = out_dir / "results.json"
    target.write_text("old contents\n")
    code = main(["run", case_file(PASSING, "a.yaml"), case_file(FAILING, "b.yaml"), "--json", str(target)])
    assert code == 1
    data = strict_json(target)
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.json"]  # no temporary files left
    runs = {run["case"]: run for run in data["runs"]}
    assert set(runs) == {"quad_pass", "quad_fail"}
    for run in runs.values():
        assert run["steps"] == 20 and run["seed"] == 0 and run["device"] == "cpu"
        assert run["params"] == {"lr": 0.1}
        assert len(run["history"]["loss"]) == 20
        assert {"final_loss", "min_loss", "diverged"} <= set(run["metrics"])
        assert run["diverged"] is False
        assert run["metrics"]["final_loss"] == pytest.approx(0.5 * (0.9 ** 38 + 4 * 0.6 ** 38), rel=1e-9)
        assert run["history"]["loss"][0] == pytest.approx(2.5)  # ½(1 + 4) at x0 = (1, 1)
    passing, failing = runs["quad_pass"]["expectations"], runs["quad_fail"]["expectations"]
    assert [(e["metric"], e["passed"]) for e in passing] == [("final_loss", True), ("diverged", True)]
    assert [(e["metric"], e["comparator"], e["bound"], e["passed"]) for e in failing] == \
        [("final_loss", "above", 1.0, False)]
    assert failing[0]["value"] == pytest.approx(0.5 * (0.9 ** 38 + 4 * 0.6 ** 38), rel=1e-9)
    assert f":{FAILING_EXPECTATION_LINE}" in failing[0]["where"]


def test_diverged_run_is_a_result_not_a_crash(case_file, tmp_path, capsys):
    target = tmp_path / "diverged.json"
    assert main(["run", case_file(DIVERGING), "--json", str(target)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "diverged" in out
    (run,) = strict_json(target)["runs"]
    assert run["diverged"] is True and run["metrics"]["diverged"] is True
    # 9× per step from 2.0: the loss passes 1e10 × its first value after about 10.5 steps.
    assert isinstance(run["divergence_step"], int) and 5 <= run["divergence_step"] <= 15
    assert len(run["history"]["loss"]) < 40
    assert run["theory"]["threshold"] == pytest.approx(2.0) and run["theory"]["sharpness"] == 4.0
    assert run["theory"]["predicted_diverged"] is True


def test_run_with_metrics_that_are_none_does_not_crash(case_file, capsys):
    # A negative-definite quadratic: the loss is negative, so late_instability is None.
    negative = PASSING.replace("eigenvalues: [1.0, 4.0]", "eigenvalues: [-1.0]").split("expect:")[0]
    assert main(["run", case_file(negative)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_cuda_runs_are_skipped_not_a_crash_without_cuda(case_file, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the cuda run would run")
    path = case_file(PASSING.replace("dtype: float64", "dtype: float64\ndevices: [cpu, cuda]"))
    target = tmp_path / "r.json"
    assert main(["run", path, "--json", str(target)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    cuda_lines = [line for line in out.splitlines() if "cuda" in line]
    assert cuda_lines and all("CUDA is not available" in line for line in cuda_lines)
    assert [run["device"] for run in strict_json(target)["runs"]] == ["cpu"]


def test_run_json_keeps_the_old_file_if_writing_fails(tmp_path, monkeypatch):
    from stability_bench import results

    target = tmp_path / "results.json"
    target.write_text('{"old": true}\n')

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(results.json, "dump", broken_dump)
    with pytest.raises(OSError):
        results.write_json_atomic(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# -------------------------------------------------------------------------------- list
def test_list_runs_prints_every_run_id(case_file, capsys):
    from stability_bench.plan import plan_runs
    from stability_bench.schema import load_case

    path = case_file(SWEEP)
    assert main(["list", path, "--runs"]) == 0
    out = capsys.readouterr().out
    ids = [spec.run_id for spec in plan_runs(load_case(path))]
    assert len(ids) == 4  # 2 learning rates × 2 seeds
    listed = [line.strip() for line in out.splitlines() if line.startswith((" ", "\t"))]
    assert listed == ids
    for lr in ("0.1", "0.2"):
        for seed in ("3", "4"):
            assert sum(f"lr={lr}" in i and seed in i.split("]")[-1] for i in listed) == 1


def test_list_without_runs_prints_cases_only(case_file, capsys):
    assert main(["list", case_file(SWEEP)]) == 0
    out = capsys.readouterr().out
    assert "quad_sweep" in out and "lr=" not in out


# ---------------------------------------------------------------------------- progress
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_only(case_file, monkeypatch, capsys):
    path = case_file(PASSING)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["run", path]) == 0
    assert "quad_pass" in terminal.getvalue() and "\r" in terminal.getvalue()
    monkeypatch.undo()
    assert main(["run", path]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- data
def test_missing_cifar_data_exits_5_naming_the_case_and_where_it_looked(case_file, tmp_path,
                                                                        monkeypatch, capsys):
    empty = tmp_path / "empty_data"
    empty.mkdir()
    monkeypatch.setenv("STABILITY_BENCH_DATA", str(empty))
    path = case_file(CIFAR)
    assert main(["validate", path]) == 0  # the case itself is fine
    capsys.readouterr()
    assert main(["run", path]) == 5
    out, err = capsys.readouterr()
    assert f"could not run here (no data): {path} (1 run) — get CIFAR-10 with `stability-bench data fetch`" in out
    assert err.count("CIFAR-10 not found") == 1 and str(empty) in err
    assert "Not downloaded: STABILITY_BENCH_DATA is set" in err
    assert "Traceback" not in out + err
    journal = tmp_path / "r.json"
    assert main(["run", path, "--json", str(journal)]) == 5   # the results file says why, located
    failures = [e for e in strict_json(journal).get("failures", [])]
    assert failures and failures[0]["kind"] == "missing_data" and f"{path}:{CIFAR_DATA_LINE}" in failures[0]["error"]


def test_strict_run_fails_cuda_runs_skipped_on_a_machine_with_a_gpu(case_file, monkeypatch, capsys, gpu_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the cuda runs run")
    path = case_file(PASSING.replace("dtype: float64", "dtype: float64\ndevices: [cpu, cuda]"))
    monkeypatch.setenv("PATH", gpu_path)
    assert main(["run", path]) == 0                      # not strict: skipped, as before
    capsys.readouterr()
    for strict in (["--strict"], []):
        if not strict:
            monkeypatch.setenv("STABILITY_BENCH_STRICT", "1")
        assert main(["run", path, *strict]) == 5
        out = capsys.readouterr().out
        line = [x for x in out.splitlines() if x.startswith("could not run here (strict)")]
        assert len(line) == 1 and path in line[0] and "nvidia-smi lists GPU 0" in line[0]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")          # the GPU hidden on purpose: a skip again
    assert main(["run", path]) == 0
    monkeypatch.setenv("STABILITY_BENCH_STRICT", "perhaps")
    assert main(["run", path]) == 2
    assert "STABILITY_BENCH_STRICT='perhaps': expected 1 or 0" in capsys.readouterr().err


# --------------------------------------------------------------------- console script
def test_console_script_end_to_end(case_file, tmp_path):
    script = Path(sys.executable).parent / "stability-bench"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "stability_bench.cli"]
    target = tmp_path / "out.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command + ["run", case_file(FAILING), "--json", str(target)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""  # stderr is a pipe, not a terminal: no progress line
    assert "quad_fail" in done.stdout
    assert strict_json(target)["runs"][0]["expectations"][0]["passed"] is False


# ------------------------------------------------------------ what run would refuse
HOSTILE = Path(__file__).parent / "data" / "hostile"
ORCHESTRATE = Path(__file__).parent / "data" / "orchestrate"


@pytest.fixture
def no_expansion(monkeypatch):
    """Expanding a sweep into its points is an error here: counting must use the sizes."""
    from stability_bench.schema import OptimizerSpec

    monkeypatch.setattr(OptimizerSpec, "iter_points", lambda self: pytest.fail("a sweep was expanded"))


@pytest.mark.parametrize("command", ["validate", "run", "list --runs"])
def test_a_sweep_over_the_run_limit_is_refused_before_anything_is_expanded(command, no_expansion, capsys):
    """100,000,000 runs in a 5 KB file: a located error naming the product of the sweep sizes,
    at once, from every command that would plan it."""
    import time

    file = HOSTILE / "sweep_over_limit.yaml"
    started = time.perf_counter()
    assert main([*command.split(), str(file)]) == 2
    assert time.perf_counter() - started < 30
    err = capsys.readouterr().err
    assert (f"{file}:{line_of(file, '# PLAN-ERROR')}: optimizers.adam: the case plans 100,000,000 runs, over the limit of 10,000 runs per "
            "invocation: adam sweeps lr (100) × eps (100) × weight_decay (100) × betas (100) = 100,000,000 "
            "points × 1 seed × 1 device") in err
    assert "--max-runs N" in err and "Traceback" not in err


def test_validate_counts_a_huge_sweep_without_expanding_it_when_the_limit_is_raised(no_expansion, capsys):
    file = HOSTILE / "sweep_over_limit.yaml"
    assert main(["validate", str(file), "--max-runs", "0"]) == 0  # 0: no limit
    first_key = line_of(file, "stability-bench: 1")   # a case is located at its first key
    assert capsys.readouterr().out == f"ok {file}:{first_key}: huge_sweep — 100,000,000 runs, 0 expectations\n"


def test_the_run_limit_is_over_the_whole_invocation(capsys):
    """Two files of 8 runs each, under a limit of 10 alone, over it together — as `run`
    would plan them; the message names each case's share."""
    sweep, quad = ORCHESTRATE / "sweep.yaml", HOSTILE.parent / "plugin" / "quad_pass.yaml"
    for command in (["validate"], ["run", "--no-critical-lr"]):
        assert main([*command, str(sweep), str(quad), "--max-runs", "10"]) == 2
        err = capsys.readouterr().err
        assert "16 runs planned, over the limit of 10 runs per invocation" in err
        # each case located at its first key
        assert f"{sweep}:{line_of(sweep, 'name: sweep')} sweep: 8" in err
        assert f"{quad}:{line_of(quad, 'stability-bench: 1')} quad_pass: 8" in err
    assert main(["validate", str(sweep), "--max-runs", "8"]) == 0


def test_validate_refuses_what_the_optimizer_refuses_at_set_up(capsys):
    """lr: -1 used to validate and then fail at run start: now both refuse it, at the key."""
    file = HOSTILE / "lr_negative.yaml"
    message = f"{file}:{line_of(file, '# ERROR')}: optimizers.sgd.lr: torch.optim.SGD refuses lr=-1.0: ValueError: Invalid learning rate: -1.0"
    for command in ("validate", "run"):
        assert main([command, str(file)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_case_without_seeds_is_refused_naming_file_and_key(command, capsys):
    file = HOSTILE / "seeds_empty.yaml"
    assert main([command, str(file)]) == 2
    out, err = capsys.readouterr()
    assert f"{file}:{line_of(file, '# ERROR')}: seeds: seeds is empty, so the case has no runs" in err
    assert "0 passed" not in out


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adamm"], "--optimizer adamm: no case given has an optimizer entry of that name; "
                               "did you mean 'adam'? Their optimizers: adam, ref."),
    (["--optimizer", "zzz"], "--optimizer zzz: no case given has an optimizer entry of that name. "
                             "Their optimizers: adam, ref."),
    (["--variant", "fast"], "--variant fast: no case has a variant of that name; their variants: none"),
])
def test_run_with_filters_that_leave_nothing_says_so(args, message, capsys):
    assert main(["run", str(ORCHESTRATE / "sweep.yaml"), *args]) == 2
    out, err = capsys.readouterr()
    assert message in err and "passed" not in out


@pytest.mark.parametrize("command", ["validate", "run", "list"])
def test_a_folder_without_case_files_is_an_error_not_an_empty_success(command, tmp_path, capsys):
    (tmp_path / "ci.yaml").write_text("jobs: {build: {steps: [checkout]}}\n")  # not marked: not a case
    assert main([command, str(tmp_path)]) == 2
    assert f"no case files in {tmp_path}" in capsys.readouterr().err


def test_validate_builds_optimizers_without_importing_torch_dynamo():
    """Building each optimizer at validation must not import torch._dynamo (~1 s): torch
    wraps Optimizer.add_param_group to import it on first use."""
    code = ("import sys; from stability_bench.cli import main; code = main(['validate', 'cases/']); "
            "assert code == 0, code; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'")
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
