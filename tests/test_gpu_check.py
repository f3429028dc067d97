"""benchmarks/gpu_check.py (issue 19, point 3) on the CPU: its quick path passes, and each
check fails when it should (a mismatching "foreach" optimizer, a case figure moved out of
its baseline band, a CUDA-only departure from the band)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check as gc

REPO = Path(__file__).resolve().parent.parent
CASE = REPO / "cases" / "quadratic_half_x2.yaml"


def test_optimizer_agreement_passes_for_torch_and_fails_for_a_mismatch():
    good = gc.optimizer_agreement("cpu", steps=10, width=32, examples=64)
    assert good["passed"], good["failed"]
    ran = [r for r in good["rows"] if r["status"] != "unsupported"]
    assert {r["variant"] for r in ran} >= {"foreach"}
    assert all(r["same_gradients_max_rel"] <= r["same_gradients_tolerance"] for r in ran)
    # a "foreach" variant whose lr is 0.1 % off: tens of ulps per step, it must be caught
    bad = [{"label": "Adam (lr 0.1 % off)", "cls": torch.optim.Adam, "reference": {"lr": 1e-3, "foreach": False},
            "variants": {"foreach": {"lr": 1.001e-3, "foreach": True}}}]
    out = gc.optimizer_agreement("cpu", steps=10, width=32, examples=64, variants=bad)
    assert not out["passed"] and out["failed"] == ["Adam (lr 0.1 % off) foreach"]
    row = out["rows"][0]
    assert row["status"] == "FAILED" and row["same_gradients_max_rel"] > row["same_gradients_tolerance"]


def test_rekey_baseline_files_cpu_bands_under_the_device():
    data = {"runs": {"c::a[lr=1]-cpu": {"x": 1}}, "critical_lr": {"c::a-cpu": {"y": 2}}, "version": 2}
    out = gc.rekey_baseline(data, "cuda")
    assert out["runs"] == {"c::a[lr=1]-cpu": {"x": 1}, "c::a[lr=1]-cuda": {"x": 1}}
    assert out["critical_lr"] == {"c::a-cpu": {"y": 2}, "c::a-cuda": {"y": 2}}
    assert data["runs"] == {"c::a[lr=1]-cpu": {"x": 1}}          # the shipped baseline is not touched
    assert gc.rekey_baseline(data, "cpu") == data


def _finding(run_id: str, figure: str, status: str) -> dict:
    return {"run_id": run_id, "figure": figure, "status": status, "message": f"{run_id}: {figure} {status}"}


def _results(device: str, status: str, trajectory: str = "inside") -> dict:
    rid = f"c::adam[lr=1]-seed0-{device}"
    return {"runs": [{"case": "c", "run_id": rid, "meta": {"wall_time_s": 0.5}, "expectations": [],
                      "baseline": [_finding(rid, "final_loss", status), _finding(rid, "early_trajectory", trajectory)]}],
            "failures": [], "critical_lr": []}


def test_summary_tells_a_device_disagreement_from_a_torch_version_change():
    only_cuda = gc.summarize_cases(_results("cuda", "outside"), _results("cpu", "inside"))
    assert not only_cuda["passed"] and len(only_cuda["outside_on_device_only"]) == 1
    both = gc.summarize_cases(_results("cuda", "outside"), _results("cpu", "outside"))
    assert both["passed"] and len(both["outside_on_cpu_too"]) == 1 and not both["outside_on_device_only"]
    no_reference = gc.summarize_cases(_results("cuda", "outside"), None)
    assert not no_reference["passed"]
    trajectory = gc.summarize_cases(_results("cuda", "inside", trajectory="outside"), _results("cpu", "inside"))
    assert trajectory["passed"] and len(trajectory["early_trajectory_departures"]) == 1
    assert trajectory["per_case"]["c"]["runs"] == 1


def test_case_figure_outside_its_band_fails_the_check(tmp_path):
    shutil.copy2(CASE, tmp_path / CASE.name)
    base = json.loads(CASE.with_name("quadratic_half_x2.baseline.json").read_text())
    entry = base["runs"]["quadratic_half_x2::gd[lr=1.9]-cpu"]["figures"]["final_loss"]
    entry["seeds"]["0"] *= 10.0     # a decade away; the band is ±0.01 decades
    (tmp_path / "quadratic_half_x2.baseline.json").write_text(json.dumps(base))
    out = gc.cases_part("cpu", [tmp_path / CASE.name], gc.Budget(120), 120, procs=1,
                        extra=["--optimizer", "gd", "--no-critical-lr"])
    assert out["runs"] == 2 and out["complete"]
    assert not out["passed"]
    assert any("gd[lr=1.9]" in m and "final_loss" in m for m in out["outside_on_device_only"])
    # with the CPU run beside it against the same band, the same departure is the machine's, not the device's
    out = gc.cases_part("cpu", [tmp_path / CASE.name], gc.Budget(120), 120, procs=1, cpu_reference=True, cpu_jobs=1,
                        extra=["--optimizer", "gd", "--no-critical-lr"])
    assert out["passed"] and out["cpu_reference"]["runs"] == 2 and not out["outside_on_device_only"]
    assert any("gd[lr=1.9]" in m and "final_loss" in m for m in out["outside_on_cpu_too"])


def test_quick_cpu_run_passes_and_writes_its_report(tmp_path):
    rc = gc.main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--budget", "120"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["verdict"] == "passed"
    assert report["optimizers"]["passed"] and report["probes"]["rows"][0]["lanczos_converged"]
    assert report["cases"]["runs"] == 2 and report["cases"]["baseline_findings"].get("inside", 0) > 0
    assert "## foreach / fused vs for-loop" in (tmp_path / "gpu_check.md").read_text()


def test_cuda_without_a_gpu_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gc.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
