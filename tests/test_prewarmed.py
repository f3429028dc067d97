"""The pre-warmed interpreter the tests fork their ``python -m`` processes from
(tests/prewarmed.py): each child is as a fresh ``python -m MODULE`` would be — its own
folder, environment, sys.path and exit code — and nothing one child does reaches the next."""
from __future__ import annotations

import os
import subprocess

import pytest

from prewarmed import SERVER, run_module

PROBE = '''
import os, sys, torch
print("leak" if hasattr(torch, "sb_leaked") else "clean")
torch.sb_leaked = True                       # a run that changes a pre-imported module
print(os.getcwd(), os.environ.get("SB_PREWARMED_TEST"), sys.path[0], sys.argv[1:], sep="|")
print("stability_bench" in sys.modules)
sys.exit(int(sys.argv[1]))
'''


@pytest.fixture
def module(tmp_path) -> dict:
    (tmp_path / "sb_prewarmed_probe.py").write_text(PROBE)
    (tmp_path / "sb_prewarmed_sleep.py").write_text("import time\ntime.sleep(60)\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path), "SB_PREWARMED_TEST": "yes"}


@pytest.mark.skipif(not SERVER.available(), reason="no os.fork here: the tests start real interpreters")
def test_each_child_is_a_fresh_python_dash_m_with_its_folder_environment_and_exit_code(module, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    for code in (3, 0):   # the second child does not see what the first did
        done = run_module(["-m", "sb_prewarmed_probe", str(code)], cwd, module, timeout=60)
        assert done.returncode == code, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "clean"
        assert lines[1] == f"{cwd}|yes|{cwd}|['{code}']"
        assert lines[2] == "False"   # the package is imported afresh by each child


@pytest.mark.skipif(not SERVER.available(), reason="no os.fork here: the tests start real interpreters")
def test_a_child_past_its_timeout_is_killed(module, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        run_module(["-m", "sb_prewarmed_sleep"], tmp_path, module, timeout=1)
    done = run_module(["-m", "sb_prewarmed_probe", "0"], tmp_path, module, timeout=60)   # the server goes on
    assert done.returncode == 0 and done.stdout.startswith("clean"), done.stderr
