"""Runs on a real Dask cluster: a scheduler and two workers, each its own process on
127.0.0.1, started with the ``dask`` command line as a user would. Skips (saying why) where
the ``dask`` extra is not installed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed "
                                  "(pip install 'stability-bench[dask]')")

DATA = Path(__file__).parent / "data" / "orchestrate"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` + two ``dask worker --nthreads 1`` processes on loopback; the
    workers find the user's optimizers (tests/data/orchestrate) on their PYTHONPATH, as
    the README tells users to arrange."""
    dask = shutil.which("dask")
    if dask is None:
        pytest.skip("the dask command is not on PATH")
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DATA), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    common = ["--no-dashboard"]
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(scheduler_file), *common],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler_file.exists(), "the Dask scheduler did not start within 60 s"
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-nanny", *common], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = distributed.Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=90)
        assert all(host.startswith("tcp://127.0.0.1:") for host in client.scheduler_info()["workers"])
        yield client
        client.close()
    finally:
        for proc in reversed(procs):   # the workers first, each waited for: a worker that loses its
            proc.terminate()           # scheduler mid-shutdown retries it for ~20 s before exiting
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_runs_on_a_dask_cluster_equal_a_local_run(cluster):
    from stability_bench.orchestrate import run_case
    from stability_bench.schema import load_case

    case = load_case(DATA / "sweep.yaml")
    local = run_case(case)
    with distributed.get_task_stream(cluster) as stream:
        remote = run_case(case, client=cluster)
    assert [r.run_id for r in remote] == [r.run_id for r in local]
    assert [(r.history, r.metrics) for r in remote] == [(r.history, r.metrics) for r in local]
    assert len({task["worker"] for task in stream.data}) == 2  # the runs were shared out


def test_cli_dask_route_reports_a_users_crash_and_finishes_the_rest(cluster, tmp_path):
    """The user's optimizer module is importable where the case is validated and on the
    workers (both PYTHONPATHs): runs travel with the optimizer class by reference."""
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(DATA), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "stability_bench.cli", "run", str(DATA / "crashy.yaml"),
                           "--dask", cluster.scheduler.address, "--json", str(out), "--no-triage"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "pass crashy::fine-seed0-cpu" in proc.stdout
    payload = json.loads(out.read_text())
    assert [r["run_id"] for r in payload["runs"]] == ["crashy::fine-seed0-cpu"]
    # One failure: the optimizer raising at step 50 (one raising in __init__ is refused at
    # validation now, tests/data/hostile/optimizer_init_raises.yaml).
    assert [(f["run_id"], f["kind"], f["step"]) for f in payload["failures"]] == [("crashy::at_step-seed0-cpu", "crash", 50)]
