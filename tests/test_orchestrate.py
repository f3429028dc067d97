"""The orchestrator: one plan, runs once each, parallel runs identical to sequential ones,
crashed runs reported while the others finish, checks that never train."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from casefiles import line_of
from stability_bench.checks import check
from stability_bench.orchestrate import RunsFailed, run_case, run_plan
from stability_bench.plan import make_plan
from stability_bench.results import RunFailure
from stability_bench.schema import load_case

DATA = Path(__file__).parent / "data" / "orchestrate"


@pytest.fixture
def crashy_module(monkeypatch):
    """tests/data/orchestrate on sys.path (spawned workers inherit it), as a user's package."""
    monkeypatch.syspath_prepend(str(DATA))
    yield
    sys.modules.pop("crashy_optimizers", None)


def test_plan_holds_every_run_once_with_parity_partners_as_dependencies():
    plan = make_plan([load_case(DATA / "sweep.yaml")], cuda_available=False)
    assert len(plan.runs) == 8 and len(plan.requested) == 8  # 2 optimizers x 2 lr x 2 seeds
    needs = plan.needs["sweep::adam[lr=0.01]-seed1-cpu"]
    assert needs == ("sweep::ref[lr=0.01]-seed1-cpu",)
    assert plan.needs["sweep::ref[lr=0.01]-seed1-cpu"] == ()


def test_partners_are_planned_even_when_not_requested():
    plan = make_plan([load_case(DATA / "sweep.yaml")], optimizers=["adam"], seeds=[0], cuda_available=False)
    assert len(plan.requested) == 2 and len(plan.runs) == 4
    assert sorted(plan.to_execute()) == sorted(plan.runs)


def test_cuda_runs_are_skipped_with_the_reason_where_there_is_no_gpu():
    plan = make_plan([load_case(DATA / "sweep.yaml")], devices=["cpu", "cuda"], cuda_available=False)
    cuda = [r for r in plan.runs if r.endswith("-cuda")]
    assert cuda and all(plan.skipped[r] == "CUDA is not available on this machine" for r in cuda)
    assert not set(cuda) & set(plan.to_execute())


def test_check_never_trains(monkeypatch):
    """Checking reads finished results only: training during a check is an error here."""
    plan = make_plan([load_case(DATA / "sweep.yaml")], seeds=[0], cuda_available=False)
    finished = dict(__import__("stability_bench.execute", fromlist=["x"]).execute_plan(plan))
    import stability_bench.runner as runner

    def no_training(*args, **kwargs):
        raise AssertionError("a check trained a run")

    monkeypatch.setattr(runner, "execute", no_training)
    monkeypatch.setattr("stability_bench.execute.execute", no_training)   # the executor's own reference
    reports = [check(plan, r, finished) for r in plan.requested]
    assert [r.status for r in reports] == ["passed"] * 4
    parity = [o for r in reports for o in r.outcomes if o.metric == "parity"]
    assert len(parity) == 2 and all("agrees at all 150 steps" in o.detail for o in parity)


def test_parity_against_a_partner_that_did_not_run_fails_saying_why():
    plan = make_plan([load_case(DATA / "sweep.yaml")], seeds=[0], optimizers=["adam"], cuda_available=False)
    run_id = plan.requested[0]
    finished = {run_id: run_case(load_case(DATA / "sweep.yaml"), seeds=[0])[0]}
    partner = plan.needs[run_id][0]
    finished[partner] = RunFailure(partner, "crash", "ValueError: boom", 3)
    [parity] = [o for o in check(plan, run_id, finished).outcomes if o.metric == "parity"]
    assert not parity.passed and "crashed at step 3: ValueError: boom" in parity.detail


def _histories(results):
    return {r.run_id: (r.history, r.metrics) for r in results}


def test_two_worker_processes_give_bit_identical_cpu_results():
    case = load_case(DATA / "sweep.yaml")
    sequential = run_case(case)
    parallel = run_case(case, jobs=2)
    assert [r.run_id for r in parallel] == [r.run_id for r in sequential]  # plan order
    assert _histories(parallel) == _histories(sequential)


def test_workers_get_the_sys_path_and_environment_of_now_not_of_their_first_start(monkeypatch):
    """Workers fork from a server that keeps the sys.path and environment it started with; a
    user's module put on sys.path after that, and the setting it reads, reach them all the
    same (the pool's initializer brings this process's current ones)."""
    run_case(load_case(DATA / "sweep.yaml"), jobs=2)   # the worker machinery has started
    monkeypatch.syspath_prepend(str(DATA / "late"))
    monkeypatch.setenv("SB_LATE_SETTING", "yes")
    monkeypatch.delitem(sys.modules, "late_optimizers", raising=False)
    results = run_case(load_case(DATA / "late" / "late.yaml"), jobs=2)   # RunsFailed if a worker could not import it
    assert [r.optimizer_class for r in results] == ["late_optimizers:LateSGD"] * 2 and all(r.steps == 20 for r in results)


def test_a_crashing_run_is_reported_and_the_others_finish(crashy_module):
    with pytest.raises(RunsFailed) as info:
        run_case(load_case(DATA / "crashy.yaml"), jobs=2)
    failures = {f.run_id.split("::")[1].split("-")[0]: f for f in info.value.failures}
    assert set(failures) == {"at_step"}
    assert failures["at_step"].kind == "crash" and failures["at_step"].step == 50
    assert "FloatingPointError: user optimizer blew up at step 50" in failures["at_step"].error
    assert [r.optimizer for r in info.value.results] == ["fine"]
    assert info.value.results[0].steps == 100 and not info.value.results[0].diverged


def test_cli_exit_code_3_for_a_crash_and_the_results_file_keeps_every_run(crashy_module, tmp_path, capsys):
    from stability_bench.cli import main

    out = tmp_path / "results.json"
    code = main(["run", str(DATA / "crashy.yaml"), "--json", str(out), "--no-triage"])
    stdout, stderr = capsys.readouterr()
    assert code == 3
    assert "CRASH crashy::at_step-seed0-cpu" in stdout and "pass crashy::fine-seed0-cpu" in stdout
    assert "crashed at step 50: FloatingPointError" in stderr
    payload = json.loads(out.read_text())
    assert [r["run_id"] for r in payload["runs"]] == ["crashy::fine-seed0-cpu"]
    assert {f["run_id"]: (f["kind"], f["step"]) for f in payload["failures"]} == {
        "crashy::at_step-seed0-cpu": ("crash", 50)}
    assert not list(tmp_path.glob(".*journal"))  # compacted and removed


def test_cli_exit_code_2_outranks_a_crash(crashy_module, capsys):
    """A run that cannot be set up (its model's constructor raises: bad input, exit 2, whatever
    the exception's type) beside a crash (exit 3): 2 wins, and both are reported."""
    from stability_bench.cli import main

    code = main(["run", str(DATA / "crashy.yaml"), str(DATA / "model_raises.yaml"), "--no-triage"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "ERROR model_raises::sgd-seed0-cpu" in out and "CRASH crashy::at_step-seed0-cpu" in out
    file = DATA / "model_raises.yaml"
    assert (f"model_raises::sgd-seed0-cpu: could not be set up: {file}:{line_of(file, 'model:')}: model: "
            "raised while being built: LookupError: no pretrained weights for width 8") in err


def test_a_construction_failure_is_a_setup_failure_whatever_its_type(crashy_module, monkeypatch):
    """One rule: building the model, the data or the optimizer raising anything is "setup"
    (exit 2) with the exception named; only what raises from the first step on is a crash."""
    from stability_bench.execute import run_one
    from stability_bench.plan import plan_runs

    (spec,) = plan_runs(load_case(DATA / "model_raises.yaml"))
    failure = run_one(spec)
    assert failure.kind == "setup" and "LookupError: no pretrained weights for width 8" in failure.error
    assert "crashy_optimizers.py" in failure.traceback  # the user's code, for -v
    for error in (ValueError("bad"), RuntimeError("bad"), ZeroDivisionError("bad"), KeyError("bad")):
        def raising(*args, error=error, **kwargs):
            raise error
        (ok,) = plan_runs(load_case(DATA / "crashy.yaml"), optimizers=["fine"])
        monkeypatch.setattr(ok.optimizer, "cls", raising)
        failure = run_one(ok)
        assert failure.kind == "setup", (error, failure)
        assert f"optimizers.fine: raised while being built: {type(error).__name__}: " in failure.error


def test_json_into_an_unwritable_place_is_bad_input_before_any_run(tmp_path, capsys):
    from stability_bench.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["run", str(DATA / "sweep.yaml"), "--json", str(blocker / "results.json")])
    _, err = capsys.readouterr()
    assert code == 2 and "cannot write there" in err and "Traceback" not in err


def test_reports_stream_as_runs_finish_and_partners_come_first():
    plan = make_plan([load_case(DATA / "sweep.yaml")], seeds=[0], cuda_available=False)
    reports = list(run_plan(plan, jobs=1))
    assert sorted(r.run_id for r in reports) == sorted(plan.requested)
    order = [r.run_id for r in reports]
    for run_id in order:  # a run is reported only after its partner
        for need in plan.needs[run_id]:
            assert order.index(need) < order.index(run_id)


def test_a_run_past_its_timeout_stops_and_is_reported_with_exit_code_3(capsys):
    from stability_bench.cli import main

    code = main(["run", str(DATA / "timeout.yaml"), "--no-triage"])
    out, err = capsys.readouterr()
    assert code == 3 and "TIMEOUT budget::sgd-seed0-cpu" in out
    file = DATA / "timeout.yaml"
    assert f"{file}:{line_of(file, 'timeout:')}: timeout: the run took more than 1e-06 s; stopped after step 0" in err


def test_a_folder_run_takes_only_marked_case_files(tmp_path, capsys):
    """As the pytest plugin: another tool's YAML in the folder is not a case."""
    from stability_bench.cli import main

    (tmp_path / "ci.yaml").write_text("jobs: {build: {steps: [checkout]}}\n")
    (tmp_path / "quad.yaml").write_text((Path(__file__).parent / "data" / "plugin" / "quad_slow.yaml").read_text())
    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["quad_slow (slow): "]


def test_a_crash_leaves_a_triage_bundle_with_the_error_and_the_state_before_the_step(crashy_module, tmp_path,
                                                                                         capsys):
    import torch

    from stability_bench.cli import main

    code = main(["run", str(DATA / "crashy.yaml"), "--optimizer", "at_step", "--triage-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3
    bundle = Path(out.split("triage bundle: ", 1)[1].split()[0])
    meta = json.loads((bundle / "triage.json").read_text())
    assert (meta["kind"], meta["step"], meta["state_saved_before_step"]) == ("crash", 50, 50)
    assert "FloatingPointError: user optimizer blew up at step 50" in (bundle / "error.txt").read_text()
    assert "stability-bench run case.yaml" in (bundle / "case.yaml").read_text()
    model = torch.load(bundle / "model_state.pt")
    assert set(model) == {"0.weight", "0.bias", "2.weight", "2.bias"} or model  # the MLP's parameters


def test_validate_reports_every_bad_file_and_still_says_which_are_fine(tmp_path, capsys):
    from stability_bench.cli import main

    good = DATA / "sweep.yaml"
    bad_a, bad_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    bad_a.write_text(good.read_text().replace("steps: 150", "steps: -1"))
    bad_b.write_text(good.read_text().replace("seeds: [0, 1]", "seeds: zero"))
    assert main(["validate", str(bad_a), str(good), str(bad_b)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"ok {good}:") and f"{bad_a}:" in err and f"{bad_b}:" in err
    assert "steps" in err and "seeds" in err


STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def start_cli(args: list[str], pythonpath: list[Path] = (), group: bool = False) -> "subprocess.Popen":
    """A real ``python -m stability_bench.cli ARGS`` process, with the stop signals at their
    defaults. A child keeps an *ignored* signal across exec — pytest started as a background
    job of a non-interactive shell ignores SIGINT, nohup ignores SIGHUP — and stability-bench,
    like Python, leaves a signal it was started ignoring ignored: that is why this test once
    saw exit 1 (SIGINT did nothing; the run went on to an expectation that fails at 1000
    steps). exec resets a *handled* signal to the default, so each ignored one gets a no-op
    handler here while the child starts. ``group``: the child leads a process group of its
    own (its workers join it), to be signalled as a terminal or ``timeout`` signals one."""
    import signal
    import subprocess
    import threading

    ignored = [getattr(signal, n) for n in STOP_SIGNALS if signal.getsignal(getattr(signal, n)) is signal.SIG_IGN]
    if ignored and threading.current_thread() is not threading.main_thread():
        pytest.skip("stop signals are ignored here and only the main thread can reset them for a child")
    saved = {number: signal.signal(number, lambda *args: None) for number in ignored}
    try:
        path = os.pathsep.join(map(str, [Path(__file__).parent.parent, *pythonpath]))
        return subprocess.Popen([sys.executable, "-m", "stability_bench.cli", *args], env={**os.environ, "PYTHONPATH": path},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group)
    finally:
        for number, previous in saved.items():
            signal.signal(number, previous)


def wait_until(condition, proc, timeout: float) -> None:
    """Poll ``condition`` until it holds; fail (killing ``proc``) if ``proc`` ends first or
    ``timeout`` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to signal it:\n"
                        f"{proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no sign the run was mid-way within {timeout} s:\n{proc.communicate()[1]}")
        time.sleep(0.05)


@pytest.mark.parametrize("name, code, jobs, group", [
    ("SIGINT", 130, 1, False), ("SIGTERM", 143, 1, False), ("SIGHUP", 129, 1, False), ("SIGTERM", 143, 2, False),
    ("SIGHUP", 129, 2, True), ("SIGINT", 130, 2, True)],
    ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGTERM-jobs2", "SIGHUP-group-jobs2", "SIGINT-group-jobs2"])
def test_a_stop_signal_mid_run_exits_128_plus_its_number_and_the_results_file_keeps_the_finished_runs(
        tmp_path, name, code, jobs, group):
    """Ctrl-C, a CI timeout or docker stop (SIGTERM) and a closed terminal (SIGHUP) end a
    run alike: the runs that finished are compacted into --json FILE, the journal is gone,
    the exit code is 128 + the signal's number. Signalled only once a run has finished (a
    journal line), so the moment is mid-run whatever the machine's speed. ``group``: the
    signal goes to the whole process group, workers and multiprocessing's resource tracker
    included, as a closed terminal, Ctrl-C or ``timeout`` send it; the tracker once died of
    SIGHUP and its relaunch printed a KeyError traceback per semaphore, and a worker waiting
    for work printed a KeyboardInterrupt traceback (1 in 8 beside two busy processes)."""
    import signal

    case = tmp_path / "long.yaml"
    case.write_text((DATA / "sweep.yaml").read_text().replace("steps: 150", "steps: 1000"))
    out = tmp_path / "results.json"
    journal = tmp_path / ".results.json.journal"
    proc = start_cli(["run", str(case), "--json", str(out), "--optimizer", "adam", "--no-critical-lr",
                      "--jobs", str(jobs)], group=group)
    try:
        wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 1, proc, timeout=300)
        if group:
            os.killpg(proc.pid, getattr(signal, name))
        else:
            proc.send_signal(getattr(signal, name))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code and f"stability-bench: interrupted ({name})" in err, err
    assert "Traceback" not in err and "Warning" not in err, err
    runs = json.loads(out.read_text())["runs"]
    assert 1 <= len(runs) < 4 and not journal.exists()  # of adam's 4 runs (2 lr x 2 seeds)
    assert all(run["optimizer"] == "adam" and len(run["history"]["loss"]) == 1000 for run in runs)


def test_a_stop_signal_after_the_results_file_is_written_never_kills_the_process(tmp_path):
    """The last moment a signal can land: the command has written its results file and is
    exiting (the summary, then the interpreter's teardown, which takes a second or so with
    torch loaded and in which Python resets its handlers to the default). The exit code is
    the one decided — 0 here, or 130 if the signal beat the decision — never a death by
    SIGINT (returncode -2), and the file stays complete."""
    import signal

    out = tmp_path / "results.json"
    proc = start_cli(["run", str(DATA / "sweep.yaml"), "--json", str(out), "--optimizer", "adam",
                      "--no-critical-lr", "--no-triage"])
    try:
        wait_until(out.exists, proc, timeout=300)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode in (0, 130), (proc.returncode, err[-2000:])  # exit 1 once in CI: tests/test_signals.py
    assert len(json.loads(out.read_text())["runs"]) == 4


def test_a_stop_signal_whose_exception_is_lost_in_a_finaliser_still_ends_the_run(tmp_path):
    """The other moment a signal can land: inside a ``__del__`` run by the garbage collector,
    where Python prints "Exception ignored" and drops the exception the handler raised. The
    signal is remembered: the run in progress finishes, is written, and nothing else starts."""
    out = tmp_path / "results.json"
    proc = start_cli(["run", str(DATA / "swallowed_signal.yaml"), "--json", str(out)], pythonpath=[DATA])
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Exception ignored in: <function _Finaliser.__del__" in err  # where it landed
    assert proc.returncode == 143 and "stability-bench: interrupted (SIGTERM)" in err, err
    assert [run["optimizer"] for run in json.loads(out.read_text())["runs"]] == ["first", "second"]


class StandInPool:
    """A process pool whose tasks finish one at a time, oldest first, when the scheduler
    waits: the scheduler alone, nothing trains. ``submitted`` lists the specs in order;
    ``in_flight`` the devices of the tasks in flight after each submission."""

    def __init__(self, monkeypatch):
        from concurrent.futures import Future

        self.pending, self.submitted, self.in_flight = [], [], []
        pool = self

        class Pool:
            def __init__(self, *args, **kwargs): ...

            def submit(self, fn, spec, threads):
                future = Future()
                future.spec = spec
                pool.pending.append(future)
                pool.submitted.append(spec)
                pool.in_flight.append(sorted(f.spec.device for f in pool.pending))
                return future

            def shutdown(self, **kwargs): ...

        def wait(futures, return_when):
            future = pool.pending.pop(0)
            future.set_result(future.spec.run_id)
            return {future}, set()

        monkeypatch.setattr("stability_bench.execute.ProcessPoolExecutor", Pool)
        monkeypatch.setattr("stability_bench.execute.wait", wait)


def test_worker_processes_never_share_a_gpu_nor_exceed_their_threads(monkeypatch):
    """Three runs on cuda:0 queued before a CPU run, jobs=2: two cuda:0 runs are never in
    flight together; the CPU run goes beside one. No GPU is needed: nothing trains."""
    import stability_bench.execute as execute
    from stability_bench.execute import Executor
    from stability_bench.plan import plan_runs

    case = load_case(DATA / "sweep.yaml")
    gpu = plan_runs(case, devices=["cuda:0"], optimizers=["adam"])[:3]
    cpu = plan_runs(case, devices=["cpu"], seeds=[0], optimizers=["adam"])[:1]
    specs = {s.run_id: s for s in gpu + cpu}
    pool = StandInPool(monkeypatch)
    monkeypatch.setattr(execute, "sizing", lambda spec, threads=None: (1, 0.0))
    with Executor(jobs=2) as executor:
        done = dict(executor.run(specs))
    assert sorted(done) == sorted(specs)
    assert ["cpu", "cuda:0"] in pool.in_flight                      # two at a time where they may
    assert all(len(together) <= 2 and together.count("cuda:0") <= 1 for together in pool.in_flight)


def test_workers_take_critical_lr_probes_first_then_the_longest_runs(monkeypatch):
    """A search's next round waits for its probes, and a long run started last leaves one
    core idle while it finishes: so probes go first, then runs by their estimated work
    (steps, plus two steps per Lanczos HVP of their probes), whatever the order given."""
    import dataclasses

    from stability_bench.execute import Executor
    from stability_bench.orchestrate import SearchDriver
    from stability_bench.plan import plan_runs

    short = plan_runs(load_case(DATA / "sweep.yaml"), devices=["cpu"], seeds=[0], optimizers=["adam"])[0]
    longer = dataclasses.replace(short, case=dataclasses.replace(short.case, steps=1000))
    probed = dataclasses.replace(short, case=dataclasses.replace(     # 150 steps + 15 × 30 × 2 HVP steps
        short.case, probes={"every": 10, "sharpness": {}}))
    specs = {"short": short, "longer": longer, "probed": probed, f"{SearchDriver.PREFIX}x@0.1": short}
    pool = StandInPool(monkeypatch)
    with Executor(jobs=2) as executor:
        assert sorted(key for key, _ in executor.run(specs, urgent=SearchDriver.owns)) == sorted(specs)
    assert [s.case for s in pool.submitted] == [short.case, probed.case, longer.case, short.case]
