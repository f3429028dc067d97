"""The HTML report tells the truth at a glance, and the commit it shows is the one the case
file's repository was at when the runs ran.

Findings, outcomes and critical-lr results are built with the project's own types
(``baseline.Finding``, ``critical_lr.CriticalLr``, ``expectations``' outcomes through a real
``check_run``) and the page is parsed with ``html.parser``: what is asserted is what a reader
of the page sees (which rows say "pass", which links go where), not the code's internals.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stability_bench.baseline import Finding
from stability_bench.critical_lr import CriticalLr
from stability_bench.results import RunResult, case_source

matplotlib = pytest.importorskip("matplotlib")

from stability_bench.reports.collect import ReportData, ReportRun, ReportSearch  # noqa: E402
from stability_bench.reports.figures import case_figures, spikes_figure, training_figure  # noqa: E402
from stability_bench.reports.html import render_html, write_report  # noqa: E402

TINY_CASE = """\
stability-bench: 1
name: tiny
model: {kind: quadratic, eigenvalues: [1.0], x0: 1.0}
loss: {kind: quadratic}
batch: full
dtype: float64
steps: 40
seeds: [0]
devices: [cpu]
optimizers:
  gd: {class: reference.GD, lr: 0.5}
expect:
  gd:
    diverged: {equals: false}
"""


# ------------------------------------------------------------------------------ helpers
def run_result(case: str = "hand", optimizer: str = "gd", seed: int = 0, steps: int = 120, loss=None,
               lr=None, probes=None) -> RunResult:
    loss = list(loss) if loss is not None else [0.97 ** t for t in range(steps)]
    history = {"step": list(range(len(loss))), "loss": loss, "grad_norm": [math.sqrt(v) for v in loss],
               "update_norm": [1e-3] * len(loss), "lr": list(lr) if lr is not None else [0.1] * len(loss)}
    return RunResult(case=case, run_id=f"{case}::{optimizer}-seed{seed}-cpu", optimizer=optimizer,
                     optimizer_class="reference.GD", params={"lr": 0.1}, seed=seed, device="cpu",
                     dtype="float64", steps=len(loss), diverged=False, divergence_step=None,
                     metrics={"final_loss": loss[-1], "min_loss": min(loss)}, history=history,
                     probes=probes or {})


def outcome(passed: bool) -> dict:
    return {"where": "hand.yaml:9", "optimizer": "gd", "metric": "final_loss", "comparator": "below",
            "bound": 1.0, "resolved_bound": 1.0, "value": 0.5 if passed else 2.0, "passed": passed}


def finding(run_id: str, status: str, value=0.9, band=(0.1, 0.2)) -> dict:
    return Finding("hand.yaml:9", run_id, "final_loss", status, band, 0.15, value,
                   f"hand.yaml:9: {run_id}: final_loss {value}", "less stable" if status == "outside" else None,
                   ["optimizers.gd.lr"] if status == "stale" else []).to_dict()


class Page(HTMLParser):
    """Ids and the text of each element carrying one; links of the failures section."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: dict[str, list[str]] = {}      # tr id → cell texts
        self.ids: set[str] = set()
        self.failure_links: list[str] = []
        self.tables: list[str] = []
        self._row: str | None = None
        self._cell: list[str] | None = None
        self._in_failures = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids.add(attrs["id"])
        if tag == "section" and attrs.get("id") == "failures":
            self._in_failures = 1
        if tag == "a" and self._in_failures and attrs.get("href", "").startswith("#"):
            self.failure_links.append(attrs["href"][1:])
        if tag == "table":
            self.tables.append(attrs.get("class", ""))
        if tag == "tr" and "id" in attrs:
            self._row = attrs["id"]
            self.rows[self._row] = []
        if tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "section":
            self._in_failures = 0
        if tag == "td" and self._cell is not None:
            self.rows[self._row].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def verdict_of(page: Page, row: str) -> str:
    return page.rows[row][-1]


def row_of(page: Page, text: str) -> str:
    """The id of the one row whose first cell is ``text``... or holds it."""
    found = [rid for rid, cells in page.rows.items() if text in " ".join(cells[:1])]
    assert len(found) == 1, (text, found)
    return found[0]


# ------------------------------------------------------------------------------- verdicts
def test_a_run_whose_baseline_figure_failed_is_not_pass_and_is_linked_from_the_top():
    good, broke, stale = (run_result(optimizer=name) for name in ("good", "broke", "stale"))
    runs = [ReportRun(good, [outcome(True)], findings=[finding(good.run_id, "inside", 0.15)]),
            # every expectation held; only the baseline figure moved
            ReportRun(broke, [outcome(True)], findings=[finding(broke.run_id, "outside", 0.9)]),
            ReportRun(stale, [outcome(True)], findings=[finding(stale.run_id, "stale", 0.15, None)])]
    page = Page(render_html(ReportData({}, runs), []))
    rows = {r.result.optimizer: row_of(page, r.result.optimizer) for r in runs}
    assert verdict_of(page, rows["good"]) == "pass"
    assert verdict_of(page, rows["broke"]) == "FAIL"
    assert verdict_of(page, rows["stale"]) == "stale baseline"
    baseline_cell = page.rows[rows["broke"]][-2]
    assert "final_loss = 0.9" in baseline_cell and "band [0.1, 0.2]" in baseline_cell and "OUTSIDE" in baseline_cell
    assert "inside band" in page.rows[rows["good"]][-2]          # a held figure is shown, folded
    # The top of the page lists the failure and the stale baseline, each linking to its row.
    assert page.failure_links == [rows["broke"], rows["stale"]]
    assert all(link in page.ids for link in page.failure_links)


def test_failed_expectation_crash_and_failed_search_all_listed_at_the_top_with_working_links():
    run = run_result()
    search = ReportSearch("hand::gd-critical_lr-seed0-cpu", "hand", "gd", 0, "cpu",
                          CriticalLr(1.9, 1.9, 2.05, 0.02, None, [(0.5, False), (10.0, True), (1.9, False),
                                                                  (2.05, True)]).to_dict(),
                          [outcome(False)], [])
    data = ReportData({}, [ReportRun(run, [outcome(False)])], [search],
                      [{"run_id": "hand::other-seed0-cpu", "kind": "crash", "error": "ValueError: boom", "step": 3}])
    page = Page(render_html(data, []))
    assert len(page.failure_links) == 3 and all(link in page.ids for link in page.failure_links)
    # the run's row, the crashed run's row, the search's row (first cells: label, run id, optimizer)
    assert sorted(page.rows[link][0] for link in page.failure_links) == ["gd", "gd", "hand::other-seed0-cpu"]
    # The critical lr: a table with the value and the interval the edge lies in.
    assert "critical-lr" in page.tables
    [search_row] = [cells for cells in page.rows.values() if "[1.9, 2.05]" in cells]
    assert search_row[3] == "1.9" and search_row[5] == "4 (2)" and search_row[-1] == "FAIL"


def test_nothing_checked_is_not_pass():
    page = Page(render_html(ReportData({}, [ReportRun(run_result())]), []))
    assert verdict_of(page, row_of(page, "gd")) == "nothing checked"
    assert page.failure_links == []


def test_the_run_table_is_laid_out_to_the_page_width():
    """A fixed layout at 100 % width, cells that wrap anywhere and column shares summing to
    100 %: the table is as wide as the window, never wider (the screenshot script checks it
    in a real browser: benchmarks/report_screenshot.py)."""
    from stability_bench.reports.html import CSS, RUN_COLUMNS

    assert "table.runs" in CSS and "table-layout:fixed" in CSS and "width:100%" in CSS
    assert "overflow-wrap:anywhere" in CSS
    assert math.isclose(sum(w for _, w in RUN_COLUMNS), 100.0)


# -------------------------------------------------------------------------------- figures
def test_a_schedule_gets_a_learning_rate_panel_and_a_constant_lr_none():
    steps = 100
    warm = run_result(lr=[0.1 * min(1.0, (t + 1) / 20) for t in range(steps)], steps=steps)
    flat = run_result(steps=steps)
    with_schedule = training_figure([ReportRun(warm)])
    without = training_figure([ReportRun(flat)])
    assert len(with_schedule.axes) == len(without.axes) + 1
    assert "learning rate" in with_schedule.axes[-1].get_ylabel()
    assert not any("learning rate" in ax.get_ylabel() for ax in without.axes)


@pytest.mark.parametrize("values, scale", [
    ([1.0 + 0.4 * i for i in range(20)], "linear"),                 # 1 … 8.6: within a decade
    ([1.0 + 0.6 * i for i in range(20)], "log"),                    # 1 … 12.4: past one
    ([10.0 ** (i / 6) for i in range(20)], "log"),                  # three decades
    ([(-1) ** i * 10.0 ** (i / 6) for i in range(20)], "symlog"),   # three decades, both signs
    ([(-1) ** i * (2.0 + 0.1 * i) for i in range(20)], "linear"),   # both signs, within a decade
])
def test_curvature_panels_are_logarithmic_past_one_decade(values, scale):
    steps = list(range(0, 100, 5))
    result = run_result(probes={"step": steps, "sharpness": values})
    fig = training_figure([ReportRun(result)])
    ax = next(a for a in fig.axes if "lambda_1(H)" in a.get_ylabel())
    assert ax.get_yscale() == scale


def spiky(seed: int, factor: float, at=(40, 80)) -> RunResult:
    loss = [0.97 ** t for t in range(120)]
    for s in at:
        loss[s] *= factor
    return run_result(seed=seed, loss=loss)


def test_the_spike_zoom_shows_the_largest_spikes_over_all_seeds(tmp_path):
    small, large = spiky(0, 5.0), spiky(1, 60.0, at=(30, 60, 90))
    runs = [ReportRun(small), ReportRun(large)]
    fig = spikes_figure(runs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all("seed 1" in t for t in titles), titles   # seed 0's spikes are smaller
    [info] = [i for i in case_figures(runs, tmp_path, formats=("png",)) if i.kind == "spikes"]
    assert info.run_ids == [large.run_id]
    # With one large spike in seed 1, seed 0's two come next.
    runs = [ReportRun(small), ReportRun(spiky(1, 60.0, at=(30,)))]
    titles = [ax.get_title() for ax in spikes_figure(runs).axes if ax.get_title()]
    assert ["seed 1" in t for t in titles] == [True, False, False]


def test_critical_lr_figure_is_drawn_per_case_with_searches(tmp_path):
    searches = [ReportSearch(f"hand::gd-critical_lr-seed{seed}-cpu", "hand", "gd", seed, "cpu",
                             CriticalLr(1.9 + seed / 100, 1.9, 2.1, 0.02, None, [(0.5, False), (10.0, True)]).to_dict())
                for seed in (0, 1)]
    infos = case_figures([ReportRun(run_result())], tmp_path, formats=("png",), searches=searches)
    [clr] = [i for i in infos if i.kind == "critical_lr"]
    assert clr.files[0].is_file() and clr.files[0].stat().st_size > 1000


# ------------------------------------------------------------- the commit of the case repo
def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_results_record_the_case_repositorys_commit_and_dirty_flag_and_the_report_shows_it(tmp_path, monkeypatch,
                                                                                             capsys):
    from stability_bench.cli import main

    repo = tmp_path / "project"
    (repo / "cases").mkdir(parents=True)
    case = repo / "cases" / "tiny.yaml"
    case.write_text(TINY_CASE)
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "a case")
    head = git(repo, "rev-parse", "HEAD")
    elsewhere = tmp_path / "elsewhere"   # neither the case's repository nor stability-bench's
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    out = tmp_path / "clean.json"
    assert main(["run", str(case), "--json", str(out), "--report", str(tmp_path / "page")]) == 0
    [run] = json.loads(out.read_text())["runs"]
    assert run["source"]["commit"] == head and run["source"]["dirty"] is False
    assert run["source"]["repository"] == str(repo.resolve())
    page = (tmp_path / "page" / "index.html").read_text()
    assert head in page and "(dirty" not in page

    case.write_text(TINY_CASE.replace("steps: 40", "steps: 41"))   # an uncommitted change
    dirty = tmp_path / "dirty.json"
    assert main(["run", str(case), "--json", str(dirty)]) == 0
    [run] = json.loads(dirty.read_text())["runs"]
    assert run["source"]["commit"] == head and run["source"]["dirty"] is True
    git(repo, "commit", "-qam", "later")   # the repository moves on after the runs
    assert main(["report", str(dirty), "--out", str(tmp_path / "later")]) == 0
    page = (tmp_path / "later" / "index.html").read_text()
    assert f"{head} (dirty: uncommitted changes)" in page
    assert git(repo, "rev-parse", "HEAD") not in page
    capsys.readouterr()


def test_a_case_outside_any_repository_or_without_git_records_why(tmp_path, monkeypatch):
    case = tmp_path / "tiny.yaml"
    case.write_text(TINY_CASE)
    if shutil.which("git") is not None:
        monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp
        source = case_source(case)
        assert source["commit"] is None and "not in a git repository" in source["reason"]
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    source = case_source(case)
    assert source["commit"] is None and source["reason"] == "git is not installed here"
    assert case_source(None)["reason"].startswith("the case was given as a dict")


# ---------------------------------------------------------------------- a real browser
def test_the_page_in_a_real_headless_browser(tmp_path):
    """Rendered by Chromium in a 1280-px window: no horizontal scrolling even with long run
    ids and many hyperparameters, failures above the tables with links that land, a
    screenshot written. Skipped, saying why, where no browser can start (Playwright and a
    Chromium: ``playwright install chromium``, or $STABILITY_BENCH_CHROMIUM / a system
    ``chromium`` on PATH)."""
    import os

    from stability_bench.reports.screenshot import NoBrowser, screenshot

    long_name = "an_optimizer_entry_with_a_rather_long_name_to_stress_the_layout"
    runs = []
    for i, status in enumerate(("inside", "outside", "stale")):
        r = run_result(optimizer=f"{long_name}_{i}", steps=60)
        r.params = {f"hyperparameter_{k}": 0.123456789 * k for k in range(12)}
        runs.append(ReportRun(r, [outcome(True)], findings=[finding(r.run_id, status)]))
    report = write_report(ReportData({"torch": "x"}, runs), tmp_path / "report", formats=("png",))
    shot = tmp_path / "shot.png"
    browser = os.environ.get("STABILITY_BENCH_CHROMIUM") or shutil.which("chromium")
    try:
        measured = screenshot(report.html, shot, 1280, browser)
    except NoBrowser as exc:
        pytest.skip(str(exc))
    assert measured["problems"] == []
    assert measured["verdicts"] == ["pass", "FAIL", "stale baseline"] and measured["links"] == 2
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
