"""A user's own repository, from the README's "Guard your own optimizer": ``stability-bench
init`` scaffolds it, and then ``validate``, ``baseline`` and ``python -m pytest`` (from the
project root and from a subdirectory) pass — each in a subprocess, as the user types them —
until a commit changes one formula of the optimizer, which pytest then reports. Also: init
never overwrites, keeps a pytest configuration that is there, refuses an optimizer that does
not import; YAML files in a case folder without a valid marker are listed, once each; and the
plugin's collection from a subdirectory follows what a run from the rootdir would collect."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from casefiles import line_of
import stability_bench.pytest_plugin  # noqa: F401  (loaded before pytester's in-process runs)
from prewarmed import run_module
from stability_bench.cli import main

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"
OPTIMIZER = DATA / "init" / "my_optimizer.py"


def env(*paths: Path) -> dict:
    """The environment of a user's shell: this checkout importable (as if installed), and
    ``paths`` (the user's project, as if installed too) on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [ROOT, *paths]))}


def sh(args: list[str], cwd: Path, environment: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``: a new process (forked from a pre-warmed interpreter:
    tests/prewarmed.py)."""
    return run_module(args, cwd, environment, timeout)


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's repository: their optimizer module, and a subdirectory with code of its own."""
    root = tmp_path / "myproject"
    (root / "src" / "sub").mkdir(parents=True)
    shutil.copy(OPTIMIZER, root / "my_optimizer.py")
    return root


def test_init_then_validate_baseline_and_pytest_pass_and_a_changed_optimizer_fails(project):
    cli = ["-m", "stability_bench.cli"]
    done = sh([*cli, "init", str(project), "--optimizer", "my_optimizer.MyAdam"], project.parent, env(project))
    assert done.returncode == 0, done.stderr
    case = project / "cases" / "guard_myadam.yaml"
    assert {line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("wrote ")} == \
        {str(case), str(project / "pytest.ini"), str(project / ".github" / "workflows" / "stability.yml")}
    assert case.read_text().splitlines()[0] == "stability-bench: 1"
    steps = yaml.safe_load((project / ".github" / "workflows" / "stability.yml").read_text())["jobs"]["stability"]["steps"]
    commands = [step.get("run", "") for step in steps]
    assert "stability-bench validate cases/" in commands
    assert any(c.startswith("python -m pytest cases/") for c in commands)

    done = sh([*cli, "validate"], project, env(project))
    assert done.returncode == 0 and f"ok {Path('cases') / case.name}:" in done.stdout, done.stdout + done.stderr
    done = sh([*cli, "baseline"], project, env(project))
    assert done.returncode == 0, done.stdout + done.stderr
    assert case.with_name("guard_myadam.baseline.json").is_file()

    # pytest from the root and from a subdirectory: the project's module imports through the
    # pytest.ini init wrote (pythonpath), not through PYTHONPATH
    pytest_args = ["-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-n0"]
    for where in (project, project / "src" / "sub"):
        done = sh(pytest_args, where, env())
        assert done.returncode == 0, done.stdout
        assert "2 passed" in done.stdout and "guard_myadam" in done.stdout, done.stdout

    # a commit changes one formula of the optimizer (the case and its baseline stay as they were)
    (project / "my_optimizer.py").rename(project / "my_optimizer_before.py")
    shutil.copy(DATA / "init" / "my_optimizer_changed.py", project / "my_optimizer.py")
    for where in (project, project / "src" / "sub"):
        done = sh(pytest_args, where, env())
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
        assert "2 failed" in done.stdout, done.stdout
        located = [line for line in done.stdout.splitlines() if "outside the baseline band" in line]
        assert located and all(f"{case}:" in line for line in located), done.stdout


def test_init_never_overwrites_and_writes_nothing_when_a_file_is_there(project, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "my_optimizer", raising=False)
    workflow = project / ".github" / "workflows" / "stability.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text("# the user's own workflow\n")
    assert main(["init", str(project), "--optimizer", "my_optimizer:MyAdam"]) == 2
    err = capsys.readouterr().err
    assert f"not overwriting {workflow}" in err and len(err.strip().splitlines()) == 1, err
    assert workflow.read_text() == "# the user's own workflow\n"
    assert not (project / "cases").exists() and not (project / "pytest.ini").exists()


def test_init_keeps_an_existing_pytest_configuration(project, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "my_optimizer", raising=False)
    config = "[project]\nname = 'mine'\n\n[tool.pytest.ini_options]\ntestpaths = ['tests', 'cases']\n"
    (project / "pyproject.toml").write_text(config)
    assert main(["init", str(project), "--optimizer", "my_optimizer:MyAdam"]) == 0
    out = capsys.readouterr().out
    assert not (project / "pytest.ini").exists() and (project / "pyproject.toml").read_text() == config
    assert f"kept {project / 'pyproject.toml'}" in out and "--stability-baseline" in out
    assert (project / "cases" / "guard_myadam.yaml").is_file()
    # a project with a pyproject.toml is installed by the workflow
    assert "pip install -e ." in (project / ".github" / "workflows" / "stability.yml").read_text()


@pytest.mark.parametrize("optimizer, named", [
    ("no_such_module:MyAdam", "no_such_module"),
    ("my_optimizer:NoSuchClass", "NoSuchClass"),
    ("MyAdam", "package.module:ClassName"),
])
def test_init_refuses_an_optimizer_it_cannot_import_in_one_line(project, monkeypatch, capsys, optimizer, named):
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "my_optimizer", raising=False)
    assert main(["init", str(project), "--optimizer", optimizer]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stability-bench: error: ") and named in err and "Traceback" not in err, err
    assert not (project / "cases").exists() and not (project / "pytest.ini").exists()


def test_init_writes_an_lr_the_optimizer_has_no_default_for_and_refuses_other_required_ones(project, monkeypatch,
                                                                                           capsys):
    from stability_bench.schema import load_case

    assert main(["init", str(project), "--optimizer", "reference.Adam"]) == 0   # Adam(params, lr, ...)
    case = load_case(project / "cases" / "guard_adam.yaml")
    assert case.optimizers["adam"].fixed == {"lr": 1.0e-3}
    assert "has no default lr" in (project / "cases" / "guard_adam.yaml").read_text()
    monkeypatch.syspath_prepend(str(project))
    for module in ("my_optimizer", "needs_rho"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    shutil.copy(DATA / "init" / "needs_rho.py", project / "needs_rho.py")
    capsys.readouterr()
    assert main(["init", str(project / "other"), "--optimizer", "needs_rho:NeedsRho"]) == 2
    err = capsys.readouterr().err
    assert "'rho'" in err and "without a default" in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "other").exists()


# ------------------------------------------------------------ YAML files without the marker
def unmarked_folder(tmp_path: Path) -> Path:
    cases = tmp_path / "cases"
    shutil.copytree(DATA / "unmarked", cases)
    return cases


@pytest.mark.parametrize("command", [["validate"], ["list"], ["list", "--runs"]])
def test_validate_and_list_list_each_unmarked_file_once_saying_how_to_mark_it(tmp_path, capsys, command):
    cases = unmarked_folder(tmp_path)
    assert main([*command, str(cases), str(cases)]) == 0   # the folder twice: still once per file
    err = capsys.readouterr().err.splitlines()
    underscore, missing = cases / "underscore_marker.yaml", cases / "no_marker.yml"
    assert [line for line in err if str(underscore) in line] == [
        f"stability-bench: warning: {underscore}:{line_of(underscore, 'stability_bench')}: not read as a case: "
        f"the key 'stability_bench' is not the marker; write 'stability-bench: 1' (a hyphen, lower case)"]
    [line] = [line for line in err if str(missing) in line]
    assert line.startswith(f"stability-bench: warning: {missing}: not read as a case: ")
    assert "'stability-bench: 1'" in line and "move it out of the cases folder" in line
    assert not any("marked.yaml" in line for line in err)


def test_pytest_lists_each_unmarked_file_once_with_a_warning(pytester):
    unmarked_folder(pytester.path)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    ids = [line for line in result.outlines if "::" in line]
    assert ids and all("marked.yaml" in i and "underscore" not in i for i in ids)
    out = result.stdout.str()
    assert out.count("NotACaseWarning") == 2, out
    assert "the key 'stability_bench' is not the marker" in out and "no_marker.yml" in out


def test_a_cases_folder_that_is_not_ours_gets_no_warning_unless_a_file_misspells_the_marker(pytester, monkeypatch):
    """Another project's own cases/ folder (no marked case in it) is left alone — no warning,
    nothing added from a subdirectory — but a misspelt marker there is still meant for us."""
    (pytester.path / "cases").mkdir()
    shutil.copy(DATA / "unmarked" / "no_marker.yml", pytester.path / "cases" / "no_marker.yml")
    (pytester.path / "cases" / "test_in_cases.py").write_text("def test_in_cases():\n    assert True\n")
    sub = subdirectory_project(pytester, "[pytest]\n", marked=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK and "NotACaseWarning" not in result.stdout.str()
    assert not any("test_in_cases" in i for i in collected(pytester, sub, monkeypatch))
    shutil.copy(DATA / "unmarked" / "underscore_marker.yaml", pytester.path / "cases" / "underscore_marker.yaml")
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--collect-only", "-q",
                                str(pytester.path))
    out = result.stdout.str()
    assert out.count("NotACaseWarning") == 1 and "the key 'stability_bench' is not the marker" in out, out


# ------------------------------------------------------------ collection from a subdirectory
def subdirectory_project(pytester, ini: str, marked: bool = True) -> Path:
    pytester.makeini(ini)
    (pytester.path / "cases").mkdir(exist_ok=True)
    if marked:
        shutil.copy(DATA / "unmarked" / "marked.yaml", pytester.path / "cases" / "marked.yaml")
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_unit.py").write_text("def test_unit():\n    assert True\n")
    sub = pytester.path / "tests" / "deeper"
    sub.mkdir()
    (sub / "test_deeper.py").write_text("def test_deeper():\n    assert True\n")
    return sub


def collected(pytester, cwd: Path, monkeypatch, *args: str) -> list[str]:
    monkeypatch.chdir(cwd)
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", "--collect-only", "-q", *args)
    return [line for line in result.outlines if "::" in line]


def test_from_a_subdirectory_pytest_collects_the_case_folders_a_root_run_would(pytester, monkeypatch):
    sub = subdirectory_project(pytester, "[pytest]\n")
    ids = collected(pytester, sub, monkeypatch)
    assert sum("marked.yaml::" in i for i in ids) == 8 and sum("test_deeper" in i for i in ids) == 1, ids
    assert not any("test_unit" in i for i in ids)   # the rest of the project stays out, as before
    # the folder's own arguments are left alone
    assert not any("marked.yaml" in i for i in collected(pytester, sub, monkeypatch, "test_deeper.py"))


def test_from_a_subdirectory_pytest_leaves_out_cases_its_testpaths_leave_out(pytester, monkeypatch):
    """This repository's own layout: testpaths = tests (the cases run as `pytest cases/`)."""
    sub = subdirectory_project(pytester, "[pytest]\ntestpaths = tests\n")
    ids = collected(pytester, sub, monkeypatch)
    assert ids and not any("marked.yaml" in i for i in ids), ids
    ids = collected(pytester, pytester.path, monkeypatch)
    assert ids and not any("marked.yaml" in i for i in ids), ids


def test_a_second_init_adds_its_case_and_keeps_the_first_inits_workflow_and_pytest_ini(project, monkeypatch, capsys):
    """Guarding a second optimizer: its case is written; the workflow and pytest.ini the
    first init wrote stay as they were (they run every case in cases/), and init says so.
    The next step it prints records the new case's baseline only."""
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.delitem(sys.modules, "my_optimizer", raising=False)
    assert main(["init", str(project), "--optimizer", "my_optimizer:MyAdam"]) == 0
    workflow, ini = project / ".github" / "workflows" / "stability.yml", project / "pytest.ini"
    first = {path: path.read_text() for path in (workflow, ini)}
    capsys.readouterr()
    assert main(["init", str(project), "--optimizer", "torch.optim.SGD"]) == 0
    out = capsys.readouterr().out
    case = project / "cases" / "guard_sgd.yaml"
    assert [line for line in out.splitlines() if line.startswith("wrote ")] == [f"wrote {case}"]
    assert f"kept {workflow} (an earlier init wrote it" in out and f"kept {ini} (an earlier init wrote it" in out
    assert f"stability-bench baseline {case} " in out
    assert {path: path.read_text() for path in (workflow, ini)} == first
    assert main(["validate", str(project / "cases")]) == 0
    # the same optimizer again: its case is there, and nothing is written
    assert main(["init", str(project), "--optimizer", "torch.optim.SGD"]) == 2
    assert f"not overwriting {case}" in capsys.readouterr().err
