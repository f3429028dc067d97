"""Hostile case files and the messages they get, for tests/test_hostile_input.py and
docs/hostile-input.md.

Small files live in ``tests/data/hostile/``. Each starts with ``# hostile: <what it is>``
and marks where its problems must be reported with a comment on that line:
``# ERROR: <key path> | <fragment> | ...`` (a validation error at this line),
``# ERROR(no line): <key path> | ...`` (no line applies), or
``# SETUP-ERROR: <key path> | ...`` (a located error when a run starts).
Files too big or too odd to commit (huge, alias bomb, not UTF-8, ...) are made by
:data:`GENERATED` into a folder. Regenerate the docs table with::

    python tests/hostile_cases.py > docs/hostile-input.md
"""
from __future__ import annotations

import contextlib
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "hostile"
_MARK = re.compile(r"#\s*(ERROR|ERROR\(no line\)|SETUP-ERROR):\s*(.*)$")

QUAD = ("stability-bench: 1\nname: quad\nmodel: {kind: quadratic, eigenvalues: [1.0, 4.0]}\n"
        "loss: {kind: quadratic}\nsteps: 20\noptimizers:\n  gd: {class: reference.GD, lr: 0.1}\n")


def _alias_bomb() -> bytes:
    """Nine levels of ten aliases each: 10**9 values once expanded, 600 bytes written."""
    lines = ["stability-bench: 1", "name: bomb", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    return ("\n".join(lines) + "\n").encode()


def _huge() -> bytes:
    """A valid case padded with a 300 KB description: over the size limit."""
    return (QUAD + "description: >\n" + "  padding padding padding padding\n" * 9400).encode()


def _too_many_problems() -> bytes:
    return (QUAD + "".join(f"unknown_key_{i}: 1\n" for i in range(30))).encode()


@dataclass(frozen=True)
class Generated:
    name: str
    what: str
    content: bytes
    line: int | None      # the line the (first) problem must name, None for none
    path: str             # its key path as shown
    fragments: tuple


GENERATED = [
    Generated("not_utf8.yaml", "text that is not UTF-8 (Latin-1 é on line 3)",
              b"stability-bench: 1\nname: quad\ndescription: caf\xe9\n", 3, "(case)",
              ("not UTF-8 text (byte 0xe9 at line 3)",)),
    Generated("alias_bomb.yaml", 'a "billion laughs" alias bomb (10**9 values in 600 bytes)',
              _alias_bomb(), 7, "a4", ("expands to more than 100,000 values",)),
    Generated("huge.yaml", "a file over the size limit (300 KB)", _huge(), None, "(case)",
              ("bytes is over the 256 KiB limit",)),
    Generated("empty.yaml", "an empty file", b"", None, "(case)", ("the file is empty",)),
    Generated("control_character.yaml", "a control character (NUL) in the text",
              b"stability-bench: 1\nname: qu\x00ad\n", 2, "(case)", ("'\\x00' is not allowed",)),
    Generated("many_problems.yaml", "30 problems in one file (the report is capped at 20)",
              _too_many_problems(), 8, "unknown_key_0", ("unknown key",)),
]


def write_generated(folder: Path) -> dict[str, Path]:
    paths = {}
    for g in GENERATED:
        paths[g.name] = folder / g.name
        paths[g.name].write_bytes(g.content)
    return paths


@dataclass(frozen=True)
class Expected:
    kind: str             # "ERROR", "ERROR(no line)" or "SETUP-ERROR"
    line: int | None
    path: str
    fragments: tuple


def what(file: Path) -> str:
    first = file.read_text().splitlines()[0]
    assert first.startswith("# hostile: "), f"{file} does not start with '# hostile: '"
    return first[len("# hostile: "):]


def expected(file: Path) -> list[Expected]:
    """The problems a committed hostile file marks, in file order."""
    out = []
    for number, text in enumerate(file.read_text().splitlines(), start=1):
        found = _MARK.search(text)
        if found:
            path, *fragments = [part.strip() for part in found[2].split("|")]
            out.append(Expected(found[1], None if found[1] == "ERROR(no line)" else number, path,
                                tuple(fragments)))
    return out


def committed() -> list[Path]:
    return sorted(DATA.glob("*.yaml"))


@contextlib.contextmanager
def scaled_model():
    """A model kind with a ``dict[str, float]`` parameter, registered while in use."""
    from stability_bench.components.models import MODELS, quadratic

    def sb_test_scaled(ctx, *, scales: dict[str, float]):
        return quadratic(ctx, eigenvalues=list(scales.values()))

    MODELS.register("sb_test_scaled", sb_test_scaled)
    try:
        yield
    finally:
        del MODELS._entries["sb_test_scaled"]


def message(path: Path) -> str:
    """What a user sees for ``path``: the CaseError of loading it, else the setup error
    of starting its first run."""
    from stability_bench.runner import RunSetupError, plan_runs, start
    from stability_bench.schema import CaseError, load_cases

    try:
        cases = load_cases(path)
    except CaseError as exc:
        return str(exc)
    try:
        start(plan_runs(cases[0])[0])
    except RunSetupError as exc:
        return str(exc)
    return "(no error)"


def markdown() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, scaled_model():
        generated = write_generated(Path(tmp))
        sources = [(what(f), f, f.relative_to(ROOT).as_posix()) for f in committed()]
        sources += [(g.what, generated[g.name], f"<generated>/{g.name}") for g in GENERATED]
        for description, path, shown in sources:
            text = message(path).replace(str(path), shown)
            cell = "<br>".join(line.replace("|", "\\|") for line in text.splitlines())
            rows.append(f"| {description} | `{shown}` | {cell} |")
    return "\n".join([
        "# Hostile input: what each kind of bad case file gets",
        "",
        "Every row is a file that `stability-bench validate`/`run` and pytest collection read; the",
        "message is what `load_cases` raises (a `CaseError`, one line per problem: `file:line: key.path:",
        "what is wrong`), or, for the last kind, the `RunSetupError` of starting the run. Files under",
        "`tests/data/hostile/` are committed; `<generated>` ones are written by `tests/hostile_cases.py`",
        "(too big or too odd to commit). Limits: 256 KiB per file, 64 nesting levels, 100,000 values",
        "after alias expansion, 10,000,000 steps, 20 problems shown per file.",
        "",
        "Generated from the actual messages; regenerate with",
        "`python tests/hostile_cases.py > docs/hostile-input.md` (tests/test_hostile_input.py fails",
        "when this file is out of date).",
        "",
        "| hostile input | file | message |",
        "|---|---|---|",
        *rows,
        "",
        RUNS_AND_PLUGIN,
    ])


# Bad days that are not a malformed file: what a run, the results file and the plugin do.
# Each line is asserted by the test named (tests/test_orchestrate.py, test_plugin.py).
RUNS_AND_PLUGIN = """## Runs, results files and the pytest plugin

| hostile input | what happens | test |
|---|---|---|
| a user optimizer that raises at step 50 | `CRASH <run id>` and `error: <run id>: crashed at step 50: FloatingPointError: ...`; the other runs still run; the results file lists it under `failures` (kind, error, step); a triage bundle holds the traceback and the state before step 50; exit 3 | `test_a_crashing_run_is_reported_and_the_others_finish`, `test_a_crash_leaves_a_triage_bundle_with_the_error_and_the_state_before_the_step` |
| a user optimizer that raises in `__init__` | the same, `crashed: RuntimeError: ...` with no step | `test_cli_exit_code_3_for_a_crash_and_the_results_file_keeps_every_run` |
| a hyperparameter the optimizer rejects at run start (lr: -1.0) | `ERROR <run id>` and `error: <run id>: could not be set up: <file>:<line>: optimizers.<key>: Invalid learning rate: -1.0`; exit 2 | `test_cli_exit_code_2_outranks_a_crash` |
| a run past its `timeout:` | `TIMEOUT <run id>`, `<file>:<line>: timeout: the run took more than 1e-06 s; stopped after step 0`; exit 3 | `test_a_run_past_its_timeout_stops_and_is_reported_with_exit_code_3` |
| `--json` into a path whose parent is a file (or an unwritable folder) | `error: --json <path>: cannot write there (...)` before any run trains; exit 2 | `test_json_into_an_unwritable_place_is_bad_input_before_any_run` |
| Ctrl-C during `run` | `interrupted`, exit 130; `--json` holds every run that finished (the journal is compacted on the way out) | `test_ctrl_c_exits_130_and_the_results_file_keeps_the_runs_that_finished` |
| another tool's YAML in `cases/` (no `stability-bench: 1`) | not collected, not an error | `test_only_marked_yaml_below_the_rootdir_cases_folder_is_collected` |
| a project below a folder named `cases` | nothing of it collected (folders are relative to the rootdir) | `test_a_project_living_below_a_folder_named_cases_collects_nothing_of_ours` |
| a marked case file that is not UTF-8 | one collection error naming the file (`not UTF-8 text`); the session goes on | `test_a_case_file_that_cannot_be_read_is_one_error_not_an_aborted_session` |
| an empty project with the plugin installed | the plugin loads without torch | `test_loading_the_pytest_plugin_imports_no_torch` |
"""


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(markdown())
