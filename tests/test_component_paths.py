"""A user's components by import path and by entry point, from the Python API, the CLI
and pytest. The user's package (tests/data/training/userpkg) is copied into tmp_path:
(a) put on sys.path / PYTHONPATH and named ``userpkg.models:TinyNet``; (b) "installed" as
a dist-info with entry_points.txt in a temporary site folder, and named by the names its
entry points register (``user_tiny_net``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stability_bench.registry as registry
from prewarmed import run_module
from stability_bench.components.data import DATA
from stability_bench.components.losses import LOSSES
from stability_bench.components.models import MODELS
from stability_bench.registry import UnknownNameError
from stability_bench.plan import plan_runs
from stability_bench.runner import execute, replay, start
from stability_bench.schema import CaseError, load_case

DATA_DIR = Path(__file__).parent / "data" / "training"
ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = """[stability_bench.components]
userpkg_register = userpkg.plugin:register
userpkg_module = userpkg.plugin
broken = userpkg.no_such_module:register
"""


@pytest.fixture
def user_site(tmp_path, monkeypatch):
    """A site folder holding userpkg and its dist-info; registries and the entry-point
    state restored afterwards, userpkg forgotten."""
    site = tmp_path / "site"
    shutil.copytree(DATA_DIR / "userpkg", site / "userpkg")
    info = site / "userpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    for reg in (MODELS, DATA, LOSSES):
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(registry, "_ENTRY_POINT_ERRORS", [])
    yield site
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]


def test_components_by_import_path(user_site, monkeypatch):
    monkeypatch.syspath_prepend(str(user_site))
    spec = plan_runs(load_case(DATA_DIR / "user_by_path.yaml"))[0]
    assert type(start(spec).model).__name__ == "TinyNet"
    result = execute(spec)
    assert result.metrics["final_loss"] < result.history["loss"][0]
    # the user's probe ran at steps 0, 4, 8 and measured the parameters there
    assert result.probes["step"] == [0, 4, 8]
    params = replay(spec, 4).params
    expected = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in params)))
    assert result.probes["user_weight_norm"][1] == pytest.approx(expected, rel=1e-12)


def test_entry_points_load_lazily_once_and_report_broken_ones(user_site, monkeypatch):
    monkeypatch.syspath_prepend(str(user_site))
    assert "user_tiny_net" not in MODELS  # nothing loaded up front
    assert type(MODELS.get("user_tiny_net")).__name__ == "type"
    assert "user_half_mse" in LOSSES and "user_line" in DATA  # the module entry point too
    assert registry.load_entry_points() is False  # once per process
    with pytest.raises(UnknownNameError, match=r"broken = userpkg.no_such_module:register: ModuleNotFoundError"):
        MODELS.get("no_such_model")


def test_an_unknown_user_model_is_a_case_error(user_site):
    """Without the package on the path the entry-point names are unknown."""
    with pytest.raises(CaseError, match=r"user_by_entry_point.yaml:\d+: model.kind: unknown model kind 'user_tiny_net'"):
        load_case(DATA_DIR / "user_by_entry_point.yaml")


def cli(case: Path, out: Path, *pythonpath: Path, jobs: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (ROOT, *pythonpath))), "OMP_NUM_THREADS": "1"}
    seeds = [arg for seed in range(jobs) for arg in ("--seed", str(seed))]  # a run per worker
    return run_module(["-m", "stability_bench.cli", "run", str(case), "--json", str(out), "--jobs", str(jobs), *seeds],
                      out.parent, env, timeout=300)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("case", ["user_by_entry_point.yaml", "user_by_path.yaml"])
def test_cli_runs_the_users_components(user_site, tmp_path, case, jobs):
    """Also with --jobs 2 (a seed per worker): spawned workers find the package as the CLI does."""
    done = cli(DATA_DIR / case, tmp_path / "out.json", user_site, jobs=jobs)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads((tmp_path / "out.json").read_text())["runs"]
    assert [r["optimizer"] for r in runs] == ["adam"] * jobs
    assert all(r["metrics"]["final_loss"] < 100 for r in runs)


def test_cli_without_the_package_says_the_model_is_unknown(tmp_path):
    done = cli(DATA_DIR / "user_by_entry_point.yaml", tmp_path / "out.json")
    assert done.returncode == 2
    assert "model.kind: unknown model kind 'user_tiny_net'" in done.stderr


def test_pytest_collects_and_passes_a_case_with_the_users_components(user_site, pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(map(str, (ROOT, user_site))))
    cases = pytester.mkdir("cases")
    shutil.copy(DATA_DIR / "user_by_entry_point.yaml", cases)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-q")
    result.assert_outcomes(passed=1)
