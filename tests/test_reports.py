"""Reports: figures, the HTML page, triage bundles — on short runs of the shipped cases and on
hand-made results carrying curvature-probe columns.

Expected panel counts are derived here from the data fed in (which probe columns hold a
finite value, how many spikes the detector finds, which hyperparameters are swept), not
read from the implementation.
"""
from __future__ import annotations

import base64
import copy
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from casefiles import case_text, write_case

# Loaded before any pytester run (it drops modules a run imports afterwards; see test_plugin).
import stability_bench.cli  # noqa: F401
import stability_bench.expectations  # noqa: F401
import stability_bench.pytest_plugin  # noqa: F401
import stability_bench.reports.collect  # noqa: F401
import stability_bench.reports.triage  # noqa: F401
import stability_bench.runner  # noqa: F401
from stability_bench.cli import main
from stability_bench.expectations import check_run
from stability_bench.metrics import SpikeConfig, detect_spikes
from stability_bench.reports import INSTALL_HINT
from stability_bench.results import RunResult, results_payload, write_json_atomic
from stability_bench.orchestrate import run_case
from stability_bench.plan import plan_runs
from stability_bench.runner import execute, start
from stability_bench.schema import load_case, load_cases

matplotlib = pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (a matplotlib dependency)

from stability_bench.reports.collect import ReportRun  # noqa: E402
from stability_bench.reports.figures import (PANELS_KEY, save_figure, spikes_figure,  # noqa: E402
                                             sweep_figure, training_figure)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "cases").glob("*.yaml"))
# Steps for the short runs: enough for each case to show its character where that is cheap
# (Bai Li's minimum near step 300; the quadratic's unstable runs diverge by step ~250).
# Cases on CIFAR-10 take 4 (a full-batch step of their network costs ~0.1 s; step 0's probes
# already fill every panel).
SHORT_STEPS = {"bai_li_perceptron": 400, "mlp_14_100_40_4": 40, "quadratic_half_x2": 300}
CIFAR_STEPS = 4


def short_steps(case) -> int:
    return CIFAR_STEPS if case.data["kind"] == "cifar10" else SHORT_STEPS.get(case.name.split("/")[0], 40)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Probe columns → the panel that shows them (two directional-curvature columns share one).
PANEL_OF_COLUMN = {
    "precond_sharpness": "precond_sharpness", "sharpness": "sharpness",
    "directional_curvature": "directional", "precond_directional_curvature": "directional",
    "g2_over_v_median": "g2v_median", "g2_over_v_frac_below": "g2v_frac", "grad_alignment": "alignment",
}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is many times faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- helpers
def finite_values(values) -> bool:
    return any(v is not None and math.isfinite(v) for v in values)


def probe_panels(results) -> set[str]:
    return {PANEL_OF_COLUMN[c] for r in results for c, v in (r.probes or {}).items()
            if c in PANEL_OF_COLUMN and "step" in r.probes and finite_values(v)}


def spike_onsets(result: RunResult, config: SpikeConfig) -> np.ndarray:
    loss = np.array([np.nan if v is None else v for v in result.history["loss"]], dtype=float)
    return detect_spikes(loss, config)


def swept_pairs(results) -> set[tuple[str, str]]:
    """(optimizer class, hyperparameter) with two values among runs otherwise alike."""
    pairs = set()
    for a in results:
        for b in results:
            if a.optimizer_class != b.optimizer_class:
                continue
            for p, value in a.params.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                others_a = {k: v for k, v in a.params.items() if k != p}
                others_b = {k: v for k, v in b.params.items() if k != p}
                other = b.params.get(p)   # a hyperparameter one run leaves at its default is not swept
                if others_a == others_b and isinstance(other, (int, float)) and other != value:
                    pairs.add((a.optimizer_class, p))
    return pairs


def png_panels(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, (path, image.shape)
    with Image.open(path) as im:
        return int(im.text[PANELS_KEY])


def svg_panels(path: Path) -> int:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(el.text or "" for el in root.iter() if el.tag.endswith("description"))
    return int(re.search(r"panels=(\d+)", text).group(1))


def check_figure_files(out: Path, stem: str, panels: int) -> None:
    png, svg = out / f"{stem}.png", out / f"{stem}.svg"
    assert png.is_file() and svg.is_file(), sorted(p.name for p in out.iterdir())
    assert png_panels(png) == panels
    assert svg_panels(svg) == panels


class Tables(HTMLParser):
    """Every <table>'s rows as lists of cell texts; <img> sources; external references."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.images: list[str] = []
        self.references: list[str] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href"):
            if name in attrs:
                self.references.append(attrs[name])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "table":
            self.tables.append((attrs.get("class", ""), []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def short_case(case, steps: int):
    raw = copy.deepcopy(case.raw)
    raw["steps"] = steps
    return load_case(raw)


# ------------------------------------------------------------------ shipped cases
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_report_of_each_shipped_case(path, tmp_path, capsys):
    cases = [short_case(c, short_steps(c)) for c in load_cases(path) if not c.slow]
    pairs = []
    for case in cases:
        try:
            results = run_case(case, devices=["cpu"], seeds=[case.seeds[0]])
        except FileNotFoundError as exc:  # DataNotFoundError, or the runner's MissingDataError
            pytest.skip(f"no CIFAR-10 data here: {exc}")
        pairs += [(case, r, check_run(case, r)) for r in results]
    results_file = tmp_path / "results.json"
    write_json_atomic(results_file, results_payload([(r, o) for _, r, o in pairs]))
    out = tmp_path / "report"
    assert main(["report", str(results_file), "--out", str(out)]) == 0
    assert "index.html" in capsys.readouterr().out

    manifest = json.loads((out / "manifest.json").read_text())
    figures = {(f["case"], f["kind"]): f for f in manifest["figures"]}
    for case in cases:
        runs = [r for c, r, _ in pairs if c is case]
        stem = re.sub(r"[^A-Za-z0-9._=+-]", "_", case.name)
        # training: loss + gradient norm, one panel per probe group with data, and the
        # learning rate when it changed during a run (a schedule).
        panels = 2 + len(probe_panels(runs)) + any(len(set(r.history["lr"])) > 1 for r in runs)
        assert figures[(case.name, "training")]["panels"] == panels
        check_figure_files(out, f"{stem}.training", panels)
        # spikes: exactly when the detector finds one; columns = the largest spikes over all
        # runs that spiked without diverging (else all that spiked), at most 3.
        spiking = [r for r in runs if spike_onsets(r, case.spikes).size]
        assert ((case.name, "spikes") in figures) == bool(spiking), case.name
        if spiking:
            candidates = [r for r in spiking if not r.diverged] or spiking
            zoomed = [r for r in runs if r.run_id in figures[(case.name, "spikes")]["run_ids"]]
            assert zoomed and all(r in candidates for r in zoomed)
            columns = min(3, sum(spike_onsets(r, case.spikes).size for r in candidates))
            check_figure_files(out, f"{stem}.spikes", columns * (2 + len(probe_panels(zoomed))))
        # sweep: one panel per swept (class, hyperparameter).
        sweeps = swept_pairs(runs)
        assert ((case.name, "sweep") in figures) == bool(sweeps), case.name
        if sweeps:
            check_figure_files(out, f"{stem}.sweep", len(sweeps))

    # The page: self-contained, every figure embedded, one summary table per case.
    page = (out / "index.html").read_text(encoding="utf-8")
    parsed = Tables()
    parsed.feed(page)
    assert all(ref.startswith(("data:", "#")) for ref in parsed.references), parsed.references
    assert not re.search(r"<script|<link|@import|url\(", page, re.I)
    assert len(parsed.images) == len(manifest["figures"])
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_SIGNATURE
    run_tables = [rows for cls, rows in parsed.tables if cls == "runs"]
    assert len(run_tables) == len(cases)
    for case, rows in zip(cases, run_tables):
        header, body = rows[0], rows[1:]
        assert {"final loss", "late instability", "spike count", "expectations", "verdict"} <= set(header)
        outcomes = [o for c, _, o in pairs if c is case]
        assert len(body) == len(outcomes)
        verdicts = [row[header.index("verdict")] for row in body]
        assert verdicts == [("pass" if all(o.passed for o in os_) else "FAIL") if os_ else "nothing checked"
                            for os_ in outcomes]
        for row, os_ in zip(body, outcomes):
            for o in os_:
                assert o.metric in row[header.index("expectations")]
    env = dict(r[:2] for cls, rows in parsed.tables if cls == "env" for r in rows)
    assert env["torch"] == torch.__version__ and env["devices"] == "cpu"
    # results_payload of runs alone records no case source: the page says so, it does not
    # substitute the commit of whatever checkout the report is made in.
    assert env["commit"].startswith("not recorded")


# ------------------------------------------------------------- probe panels by hand
def hand_made(columns: list[str], *, optimizer: str = "adam", lr: float = 1e-3, spikes=(40, 70),
              steps: int = 100, seed: int = 0) -> RunResult:
    loss = [1.0 * 0.98 ** t for t in range(steps)]
    for s in spikes:
        loss[s] *= 20.0
    probe_steps = list(range(0, steps, 5))
    values = {
        "threshold": [38.0 / lr] * len(probe_steps),
        "precond_sharpness": [30.0 / lr + t for t in probe_steps],
        "sharpness": [100.0 + t for t in probe_steps],
        "directional_curvature": [50.0 + t for t in probe_steps],
        "precond_directional_curvature": [20.0 / lr + t for t in probe_steps],
        "g2_over_v_median": [0.5 * 0.9 ** (t / 5) for t in probe_steps],
        "g2_over_v_frac_below": [min(1.0, t / steps) for t in probe_steps],
        "grad_alignment": [0.1 + 0.8 * t / steps for t in probe_steps],
    }
    probes = {"step": probe_steps, **{c: values[c] for c in columns}} if columns else {}
    return RunResult(case="hand", run_id=f"hand::{optimizer}[lr={lr:g}]-seed{seed}-cpu", optimizer=optimizer,
                     optimizer_class="torch.optim.Adam", params={"lr": lr, "betas": [0.9, 0.999]}, seed=seed,
                     device="cpu", dtype="float32", steps=steps, diverged=False, divergence_step=None,
                     metrics={"final_loss": loss[-1], "min_loss": min(loss)},
                     history={"step": list(range(steps)), "loss": loss, "grad_norm": [math.sqrt(v) for v in loss],
                              "update_norm": [1e-3] * steps},
                     probes=probes, theory={"threshold": 38.0 / lr, "sharpness": None})


PROBE_SETS = {
    "none": [],
    "all": list(PANEL_OF_COLUMN) + ["threshold"],
    "precond_and_threshold": ["precond_sharpness", "threshold"],
    "raw_sharpness_only": ["sharpness"],
    "g2v": ["g2_over_v_median", "g2_over_v_frac_below"],
    "both_directional": ["directional_curvature", "precond_directional_curvature"],
    "alignment": ["grad_alignment"],
}


@pytest.mark.parametrize("name", PROBE_SETS)
def test_probe_panels_follow_the_columns_present(name, tmp_path):
    columns = PROBE_SETS[name]
    result = hand_made(columns)
    expected = 2 + len(probe_panels([result]))
    fig = training_figure([ReportRun(result)])
    assert len(fig.axes) == expected
    if "precond_sharpness" in columns:  # the threshold as a dashed line in λ₁(P⁻¹H)'s panel
        ax = next(a for a in fig.axes if "P^{-1}H" in a.get_ylabel())
        dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
        assert any(np.allclose(ln.get_ydata(), 38.0 / 1e-3) for ln in dashed)
    # The zoom: one column per spike (2 planted), rows = loss, gradient norm and the probes.
    onsets = spike_onsets(result, SpikeConfig())
    assert onsets.size == 2
    zoom = spikes_figure(ReportRun(result))
    assert len(zoom.axes) == min(3, onsets.size) * expected
    if name == "all":  # saved: the file records the count
        save_figure(fig, tmp_path / "hand.training", ("png",))
        assert png_panels(tmp_path / "hand.training.png") == expected


def test_mixed_runs_get_the_union_of_probe_panels_and_all_none_columns_count_as_absent():
    with_probes = hand_made(["precond_sharpness", "threshold", "g2_over_v_median"], seed=0)
    without = hand_made([], seed=1)
    empty = hand_made(["sharpness"], seed=2)
    empty.probes["sharpness"] = [None] * len(empty.probes["sharpness"])
    runs = [ReportRun(r) for r in (with_probes, without, empty)]
    fig = training_figure(runs)
    assert len(fig.axes) == 2 + len(probe_panels([with_probes, without, empty])) == 4


def test_sweep_figure_marks_where_theory_puts_the_threshold():
    runs = []
    for lr in (1.0, 37.0, 37.9, 38.1, 39.0):
        r = hand_made([], lr=lr, spikes=())
        r.optimizer_class, r.params = "reference.EMAHB", {"lr": lr, "beta1": 0.9}
        r.theory = {"threshold": 38.0 / lr, "sharpness": 1.0, "predicted_diverged": 1.0 > 38.0 / lr}
        r.diverged = lr > 38
        runs.append(ReportRun(r))
    fig = sweep_figure(runs)
    (ax,) = fig.axes
    # Sweep points sit at positions 0..4; the critical η = 38 lies halfway between 37.9 and 38.1.
    vertical = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--" and len(set(ln.get_xdata())) == 1]
    assert vertical and vertical[0].get_xdata()[0] == pytest.approx(2.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "37", "37.9", "38.1", "39"]


# -------------------------------------------------------------------------- triage
SPIKY = case_text("tiny_spiky.yaml")             # its last, small batch makes the loss spike
DIVERGING = case_text("quad_diverge_capped.yaml")  # passes the loss cap before spikes are seen
PASSING = case_text("quad_pass.yaml")


def bundle_paths(out: str) -> list[Path]:
    return [Path(m) for m in re.findall(r"triage bundle: (\S+)", out)]


def test_cli_failure_writes_a_bundle_that_reproduces_the_run(tmp_path, capsys):
    path = write_case(tmp_path / "cases", SPIKY.replace("seeds: [0, 1]", "seeds: [0]")
                      .replace("{sweep: [1.0e-2, 3.0e-2]}", "{sweep: [1.0e-2]}"))
    root = tmp_path / "tri"
    assert main(["run", str(path), "--triage-dir", str(root)]) == 1
    out, err = capsys.readouterr()
    assert err == ""  # not a terminal: no progress line, and the bundle says nothing there
    (bundle,) = bundle_paths(out)
    assert bundle.parent == root.resolve() and bundle.is_dir()
    assert {"case.yaml", "result.json", "optimizer_state.pt", "model_state.pt", "triage.json"} \
        <= {p.name for p in bundle.iterdir()}

    # result.json is a results file; its run failed the expectation and spiked.
    data = json.loads((bundle / "result.json").read_text())
    (run,) = data["runs"]
    assert run["expectations"][0]["passed"] is False
    recorded = RunResult.from_dict(run)
    onsets = spike_onsets(recorded, SpikeConfig())
    assert onsets.size and run["metrics"]["spike_count"] == onsets.size

    # figures: the training figure (2 panels, no probes) and the zoom on its spikes.
    check_figure_files(bundle, "tiny_spiky.training", 2)
    check_figure_files(bundle, "tiny_spiky.spikes", 2 * min(3, onsets.size))

    # case.yaml: one optimizer at fixed hyperparameters, one seed, one device — and it
    # reproduces the same loss history.
    case = load_case(bundle / "case.yaml")
    (spec,) = plan_runs(case)
    assert (spec.seed, spec.device, spec.params["lr"]) == (0, "cpu", 1e-2)
    assert case.optimizers["adam"].sweeps == {}
    (again,) = run_case(case)
    assert again.history["loss"] == recorded.history["loss"]

    # The state just before the first spike loads into a fresh Adam and continues the run
    # exactly as recorded.
    worst = json.loads((bundle / "triage.json").read_text())["worst_step"]
    assert worst == int(onsets[0]) - 1
    session = start(spec)
    assert type(session.optimizer) is torch.optim.Adam
    session.optimizer.load_state_dict(torch.load(bundle / "optimizer_state.pt"))
    session.model.load_state_dict(torch.load(bundle / "model_state.pt"))
    assert session.optimizer.state_dict()["state"][0]["step"] == worst
    batches = iter(session.batches)
    for _ in range(worst):
        next(batches)
    continued = []
    for _ in range(worst, case.steps):
        x, y = next(batches)
        session.optimizer.zero_grad()
        loss = session.loss_fn(session.model(x), y)
        loss.backward()
        session.optimizer.step()
        continued.append(float(loss.detach()))
    assert continued == pytest.approx(recorded.history["loss"][worst:], rel=1e-6)


def test_bundle_before_divergence_holds_the_last_state_and_cli_report_in_one_go(tmp_path, capsys):
    path = write_case(tmp_path / "cases", DIVERGING)
    root, report = tmp_path / "tri", tmp_path / "report"
    assert main(["run", str(path), "--triage-dir", str(root), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    (bundle,) = bundle_paths(out)
    meta = json.loads((bundle / "triage.json").read_text())
    run = json.loads((bundle / "result.json").read_text())["runs"][0]
    assert run["diverged"] and not spike_onsets(RunResult.from_dict(run), SpikeConfig()).size
    assert meta["worst_step"] == run["divergence_step"] - 1
    # full batch: the saved parameters give the loss recorded at that step
    assert meta["loss_at_saved_state"] == pytest.approx(run["history"]["loss"][meta["worst_step"]], rel=1e-12)
    assert torch.load(bundle / "model_state.pt")  # GD keeps no optimizer state, the model does
    assert (report / "index.html").is_file() and "report: " in out


def test_worst_step_is_before_the_first_spike_else_before_divergence_else_the_minimum():
    from stability_bench.reports.triage import worst_step

    spiky = hand_made([], spikes=(40, 70))
    assert worst_step(spiky)[0] == int(spike_onsets(spiky, SpikeConfig())[0]) - 1 == 39
    diverged = hand_made([], spikes=())
    diverged.diverged, diverged.divergence_step = True, 60
    assert worst_step(diverged)[0] == 59
    smooth = hand_made([], spikes=())
    smooth.history["loss"][50] = 1e-9
    smooth.metrics["min_loss_step"] = 50
    assert worst_step(smooth)[0] == 50


def test_bundle_case_keeps_the_parity_partner_at_the_matching_sweep_point(tmp_path):
    import stability_bench.expectations as expectations
    from stability_bench.reports.triage import write_triage

    if not hasattr(expectations, "PARITY"):
        pytest.skip("no parity expectation in this tree")
    # EMA heavy ball at β₁ = 0.5 departs from GD at the same lr at once: the parity fails.
    case = load_case({
        "name": "quad_parity", "dtype": "float64", "steps": 10,
        "model": {"kind": "quadratic", "eigenvalues": [1.0, 4.0]}, "loss": {"kind": "quadratic"},
        "optimizers": {"hb": {"class": "reference.EMAHB", "beta1": 0.5, "lr": {"sweep": [0.1, 0.2]}},
                       "gd": {"class": "reference.GD", "lr": {"sweep": [0.1, 0.2]}}},
        "expect": {"hb": {"parity": {"with": "gd", "rtol": 1.0e-9}}}})
    spec = next(s for s in plan_runs(case) if s.optimizer.key == "hb" and s.params["lr"] == 0.2)
    result = execute(spec)
    outcomes = check_run(case, result)
    assert not outcomes[0].passed
    bundle = write_triage(case, spec, result, outcomes, tmp_path)
    again = load_case(bundle / "case.yaml")
    assert {k: o.points() for k, o in again.optimizers.items()} == \
        {"hb": [{"beta1": 0.5, "lr": 0.2}], "gd": [{"lr": 0.2}]}
    (hb,) = [r for r in run_case(again) if r.optimizer == "hb"]
    assert hb.history["loss"] == result.history["loss"]
    assert [o.passed for o in check_run(again, hb)] == [False]


def test_no_bundle_for_a_passing_run_and_the_default_root_is_the_environment_variable(tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STABILITY_BENCH_TRIAGE", str(tmp_path / "from_env"))
    assert main(["run", str(write_case(tmp_path / "cases", PASSING))]) == 0
    assert "triage bundle" not in capsys.readouterr().out
    assert not (tmp_path / "from_env").exists() and not (tmp_path / "triage").exists()
    assert main(["run", str(write_case(tmp_path / "cases", DIVERGING, "d.yaml"))]) == 1
    (bundle,) = bundle_paths(capsys.readouterr().out)
    assert bundle.parent == (tmp_path / "from_env").resolve()
    monkeypatch.delenv("STABILITY_BENCH_TRIAGE")
    assert main(["run", str(tmp_path / "cases" / "d.yaml")]) == 1
    (bundle,) = bundle_paths(capsys.readouterr().out)
    assert bundle.parent == (tmp_path / "triage").resolve()
    assert main(["run", str(tmp_path / "cases" / "d.yaml"), "--no-triage"]) == 1
    assert "triage bundle" not in capsys.readouterr().out


def test_pytest_failure_message_ends_with_the_bundle(pytester):
    write_case(Path(pytester.path) / "cases", SPIKY.replace("seeds: [0, 1]", "seeds: [0]")
               .replace("{sweep: [1.0e-2, 3.0e-2]}", "1.0e-2"), "tiny_spiky.yaml")
    write_case(Path(pytester.path) / "cases", PASSING, "quad_pass.yaml")
    root = Path(pytester.path) / "bundles"
    result = pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider",
                                "--triage-dir", str(root))
    result.assert_outcomes(passed=1, failed=1)
    lines = result.outlines
    located = [i for i, line in enumerate(lines) if "expect adam.spike_count equals 0" in line]
    assert located, result.stdout.str()
    tail = next(line for line in lines[located[0]:] if "triage bundle:" in line)
    bundle = Path(tail.split("triage bundle:", 1)[1].strip())
    assert bundle.parent == root.resolve() and (bundle / "case.yaml").is_file()
    assert (bundle / "optimizer_state.pt").is_file() and (bundle / "tiny_spiky.training.png").is_file()
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [bundle.name]  # none for the pass


# ------------------------------------------------------------- without matplotlib
def test_without_matplotlib_reports_say_how_to_get_it_and_bundles_still_work(tmp_path, monkeypatch, capsys):
    from stability_bench.reports.triage import write_triage

    case = load_case(write_case(tmp_path / "cases", DIVERGING))
    (spec,) = plan_runs(case)
    (result,) = run_case(case)
    results_file = tmp_path / "r.json"
    write_json_atomic(results_file, results_payload([(result, check_run(case, result))]))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails

    assert main(["report", str(results_file), "--out", str(tmp_path / "rep")]) == 2
    assert INSTALL_HINT in capsys.readouterr().err
    assert main(["run", str(tmp_path / "cases" / "case.yaml"), "--report", str(tmp_path / "rep")]) == 2
    out, err = capsys.readouterr()
    assert INSTALL_HINT in err and "Traceback" not in err and out == ""  # nothing ran

    bundle = write_triage(case, spec, result, check_run(case, result), tmp_path / "tri")
    names = {p.name for p in bundle.iterdir()}
    assert {"case.yaml", "result.json", "model_state.pt", "optimizer_state.pt"} <= names
    assert not any(n.endswith(".png") for n in names)
    assert INSTALL_HINT in json.loads((bundle / "triage.json").read_text())["figure_note"]


def test_a_bundle_that_cannot_be_written_is_reported_not_raised(tmp_path):
    from stability_bench.reports.triage import triage_or_reason

    case = load_case({"name": "quad_gd", "dtype": "float64", "steps": 5,
                      "model": {"kind": "quadratic", "eigenvalues": [1.0]}, "loss": {"kind": "quadratic"},
                      "optimizers": {"gd": {"class": "reference.GD", "lr": 0.5}},
                      "expect": {"gd": {"final_loss": {"above": 1.0}}}})
    spec = plan_runs(case)[0]
    result = execute(spec)
    outcomes = check_run(case, result)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    reason = triage_or_reason(spec, result, outcomes, blocker / "triage")
    assert reason.startswith("not written (") and "a_file" in reason
    written = triage_or_reason(spec, result, outcomes, tmp_path / "triage")
    assert (Path(written) / "case.yaml").is_file()
