"""``optimizers:`` under a probe: which optimizer entries' runs take it, and with which of its
options (a control probed more sparsely than the run whose spikes are timed). The entries
left out record none of its columns; validation checks the names and options, and refuses an
expectation on a figure whose probe the entry does not take."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from casefiles import line_of
import stability_bench
from stability_bench.schema import CaseError, load_case
from stability_bench.unknown_theory import case_warnings

DATA = Path(__file__).parent / "data" / "probe_optimizers"


def probes_by_optimizer(path: Path) -> dict[str, dict]:
    return {r.optimizer: r.probes for r in stability_bench.run_case(load_case(path), devices=["cpu"], seeds=[0])}


def test_each_entry_takes_only_its_probes_on_its_own_schedule():
    probes = probes_by_optimizer(DATA / "per_optimizer.yaml")
    assert probes["adam"]["step"] == [0, 2, 4, 6, 8, 10]
    assert {"sharpness", "precond_sharpness", "threshold"} <= set(probes["adam"])
    assert probes["control"]["step"] == [0, 4, 8]
    assert "precond_sharpness" in probes["control"] and "sharpness" not in probes["control"]
    assert not probes["sgd"] and not probes["rprop"]


def test_the_entries_that_take_a_probe_record_what_they_would_without_the_others(tmp_path):
    """Naming entries changes nothing for those named: adam's columns equal those of the same
    case with every ``optimizers:`` removed (all entries taking every probe)."""
    source = DATA / "per_optimizer.yaml"
    text = source.read_text()
    plain = tmp_path / "plain.yaml"
    plain.write_text(text.replace("{optimizers: [adam]}", "{}")
                     .replace("{optimizers: {adam: {}, control: {every: 4}}}", "{}")
                     .replace("{optimizers: {adam: null, control: {every: 4}}}", "{}"))
    assert "optimizers: " not in plain.read_text().split("probes:")[1].split("expect:")[0]
    with_names, without = probes_by_optimizer(source), probes_by_optimizer(plain)
    assert with_names["adam"] == without["adam"]
    assert without["control"]["step"] == [0, 2, 4, 6, 8, 10]   # the section's schedule


def test_a_wrong_optimizers_key_is_an_error_naming_file_line_and_key():
    path = DATA / "bad.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    lines = str(info.value).splitlines()
    assert len(lines) == 4, lines
    unknown, option, empty, scalar = lines
    assert unknown.startswith(f"{path}:{line_of(path, 'contrl')}: probes.sharpness.optimizers[1]: ")
    assert "unknown optimizer entry 'contrl'" in unknown and "did you mean 'control'?" in unknown
    assert option.startswith(f"{path}:{line_of(path, 'evry')}: probes.precond_sharpness.optimizers.control.evry: ")
    assert "did you mean 'every'?" in option
    assert empty.startswith(f"{path}:{line_of(path, 'optimizers: []')}: probes.threshold.optimizers: ")
    assert scalar.startswith(f"{path}:{line_of(path, 'optimizers: adam}')}: probes.directional_curvature.optimizers: ")


def test_an_expectation_on_a_figure_whose_probe_the_entry_does_not_take_is_refused():
    path = DATA / "not_taken.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    [line] = str(info.value).splitlines()   # adam's sharpness_rise is fine: adam takes sharpness
    last = max(i for i, text in enumerate(path.read_text().splitlines(), 1) if "sharpness_rise" in text)
    assert line.startswith(f"{path}:{last}: expect.control.sharpness_rise: "), line
    assert "add control to the optimizers: of sharpness" in line


def test_no_warning_for_an_entry_that_does_not_take_the_probe_needing_what_it_lacks():
    """rprop has no known preconditioner; it takes no probe, so nothing of it will be NaN."""
    assert not [w for w in case_warnings(load_case(DATA / "per_optimizer.yaml")) if "rprop" in w]


def test_a_probe_function_taking_an_option_the_section_keeps_for_itself_is_refused(monkeypatch):
    """``every`` and ``optimizers`` under a probe are the plan's: a user's probe with a
    parameter of either name would silently never get its value. Refused at validation, at
    the probe's key, one line per name."""
    monkeypatch.syspath_prepend(str(DATA))
    monkeypatch.delitem(sys.modules, "reserved_probe", raising=False)
    path = DATA / "reserved.yaml"
    with pytest.raises(CaseError) as info:
        load_case(path)
    lines = str(info.value).splitlines()
    where = f"{path}:{line_of(path, 'reserved_probe:norm_by_group')}: probes.reserved_probe:norm_by_group: "
    assert len(lines) == 2 and all(line.startswith(where) for line in lines), lines
    assert "option named 'every'" in lines[0] and "option named 'optimizers'" in lines[1]
    assert all("rename that parameter" in line for line in lines)
