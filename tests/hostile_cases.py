"""Hostile case files and the messages they get, for tests/test_hostile_input.py and
docs/hostile-input.md.

Small files live in ``tests/data/hostile/``. Each starts with ``# hostile: <what it is>``
and marks where its problems must be reported with the marker comments of
:mod:`casefiles` (``# ERROR: <key path> | <fragment> | ...`` and its kin; a PLAN-ERROR is
refused by validate, run and pytest before anything is expanded).
The user code they name by import path (``hostile_user_code:...``) is in the same folder,
on sys.path while they are read (:func:`user_code`).
Files too big or too odd to commit (huge, alias bomb, not UTF-8, ...) are made by
:data:`GENERATED` into a folder. Regenerate the docs table with::

    python tests/hostile_cases.py > docs/hostile-input.md
"""
from __future__ import annotations

import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from casefiles import line_of

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "hostile"

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


_NOT_UTF8 = b"stability-bench: 1\nname: quad\ndescription: caf\xe9\n"
_NOT_UTF8_LINE = line_of(_NOT_UTF8, b"\xe9")
_CONTROL = b"stability-bench: 1\nname: qu\x00ad\n"
GENERATED = [
    Generated("not_utf8.yaml", f"text that is not UTF-8 (Latin-1 é on line {_NOT_UTF8_LINE})", _NOT_UTF8,
              _NOT_UTF8_LINE, "(case)", (f"not UTF-8 text (byte 0xe9 at line {_NOT_UTF8_LINE})",)),
    Generated("alias_bomb.yaml", 'a "billion laughs" alias bomb (10**9 values in 600 bytes)',
              _alias_bomb(), line_of(_alias_bomb(), b"a4:"), "a4", ("expands to more than 100,000 values",)),
    Generated("huge.yaml", "a file over the size limit (300 KB)", _huge(), None, "(case)",
              ("bytes is over the 256 KiB limit",)),
    Generated("empty.yaml", "an empty file", b"", None, "(case)", ("the file is empty",)),
    Generated("control_character.yaml", "a control character (NUL) in the text", _CONTROL,
              line_of(_CONTROL, b"\x00"), "(case)", ("'\\x00' is not allowed",)),
    Generated("many_problems.yaml", "30 problems in one file (the report is capped at 20)",
              _too_many_problems(), line_of(_too_many_problems(), b"unknown_key_0:"), "unknown_key_0",
              ("unknown key",)),
]


def write_generated(folder: Path) -> dict[str, Path]:
    paths = {}
    for g in GENERATED:
        paths[g.name] = folder / g.name
        paths[g.name].write_bytes(g.content)
    return paths


def what(file: Path) -> str:
    first = file.read_text().splitlines()[0]
    assert first.startswith("# hostile: "), f"{file} does not start with '# hostile: '"
    return first[len("# hostile: "):]


def committed() -> list[Path]:
    return sorted(DATA.glob("*.yaml"))


USER_MODULES = ("hostile_user_code", "hostile_import_raises")


@contextlib.contextmanager
def user_code():
    """tests/data/hostile on sys.path, as a user's package; its modules imported afresh."""
    sys.path.insert(0, str(DATA))
    try:
        yield
    finally:
        sys.path.remove(str(DATA))
        for name in USER_MODULES:
            sys.modules.pop(name, None)


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
    """What a user sees for ``path``: the CaseError of loading it, else the error of
    planning its runs (over the limit), else the setup error of starting its first run."""
    from stability_bench.plan import PlanTooLarge, check_run_limit
    from stability_bench.plan import plan_runs
    from stability_bench.runner import RunSetupError, start
    from stability_bench.schema import CaseError, load_cases

    try:
        cases = load_cases(path)
    except CaseError as exc:
        return str(exc)
    try:
        check_run_limit(cases)
    except PlanTooLarge as exc:
        return str(exc)
    try:
        start(plan_runs(cases[0])[0])
    except RunSetupError as exc:
        return str(exc)
    return "(no error)"


def markdown() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, scaled_model(), user_code():
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
        "what is wrong`); for a case over the run limit, the `PlanTooLarge` that `validate`, `run` and",
        "pytest collection give before expanding anything; for a model or data factory that fails",
        "to build (validation does not build them), the `RunSetupError` of starting the run. Files",
        "under `tests/data/hostile/` are committed (with `hostile_user_code.py`, the user code some",
        "name by import path); `<generated>` ones are written by `tests/hostile_cases.py` (too big",
        "or too odd to commit). Limits: 256 KiB per file, 64 nesting levels, 100,000 values after",
        "alias expansion, 10,000,000 steps, 20 problems shown per file, 10,000 runs per invocation",
        "(`--max-runs`).",
        "",
        "Validation builds each optimizer as a run would — on a dummy 2×2 parameter, without",
        "training — with each swept value once (the sum of the sweep sizes, not their product), so",
        "a hyperparameter its constructor refuses is refused by `validate`, at the key responsible.",
        "",
        USER_CODE,
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


# User code that fails, wherever it fails: the one rule (asserted by the tests named below).
USER_CODE = """**User code that fails** — the modules, optimizers, models and data factories a case names:

| where it fails | what you get | exit code of `run` |
|---|---|---|
| importing the module of a `class:` or `kind:` | a validation error at that key: `module 'x' was not found; is it installed, or on PYTHONPATH?` when no such module exists, `it was found but raised while importing: <Type>: <message>` when its code (or a module it imports) raised | 2 |
| an optimizer's constructor, given the case's hyperparameters (any exception type) | a validation error — `validate`, `run` and pytest alike — at the hyperparameter responsible (each swept value is tried), else at the entry: `<class> refuses lr=-1.0: ValueError: ...` | 2 |
| building the model, the data, the loss or the schedule, or anything else before the first step (any exception type) | `ERROR <run id>`, `could not be set up: <file>:<line>: <key>: raised while being built: <Type>: <message>` (`-v`: its traceback); the other runs still run | 2 |
| the optimizer's step, the model's forward or backward, from the first step on | `CRASH <run id>`, `crashed at step N: <Type>: <message>`, a triage bundle; the other runs still run | 3 |
"""


# Bad days that are not a malformed file: what a run, the results file and the plugin do.
# Each line is asserted by the test named (tests/test_orchestrate.py, test_cli.py, test_plugin.py).
RUNS_AND_PLUGIN = """## Runs, results files and the pytest plugin

| hostile input | what happens | test |
|---|---|---|
| a user optimizer that raises at step 50 | `CRASH <run id>` and `error: <run id>: crashed at step 50: FloatingPointError: ...`; the other runs still run; the results file lists it under `failures` (kind, error, step); a triage bundle holds the traceback and the state before step 50; exit 3 | `test_a_crashing_run_is_reported_and_the_others_finish`, `test_a_crash_leaves_a_triage_bundle_with_the_error_and_the_state_before_the_step` |
| a user optimizer that raises in `__init__` (any exception type) | refused at validation (table above, `optimizer_init_raises.yaml`); exit 2 | `test_validate_refuses_what_run_refuses` |
| a user model whose constructor raises (`LookupError`), beside a crashing run | `ERROR <run id>` and `could not be set up: <file>:3: model: raised while being built: LookupError: ...`; the crash still reported; exit 2 (2 outranks 3) | `test_cli_exit_code_2_outranks_a_crash`, `test_a_construction_failure_is_a_setup_failure_whatever_its_type` |
| a run past its `timeout:` | `TIMEOUT <run id>`, `<file>:<line>: timeout: the run took more than 1e-06 s; stopped after step 0`; exit 3 | `test_a_run_past_its_timeout_stops_and_is_reported_with_exit_code_3` |
| `--json` into a path whose parent is a file (or an unwritable folder) | `error: --json <path>: cannot write there (...)` before any run trains; exit 2 | `test_json_into_an_unwritable_place_is_bad_input_before_any_run` |
| more runs than one invocation plans (over all the files given; default 10,000) | `validate`, `run`, `list --runs`: the case over the limit named at its largest optimizer with the product of its sweep sizes (table above), or `N runs planned, over the limit of 10,000 runs per invocation (<file>:<line> <case>: n, ...)`; counted from the sweep sizes, nothing expanded; exit 2. `--max-runs N` raises it (0: no limit); pytest: `--stability-max-runs N`, one collection error | `test_a_sweep_over_the_run_limit_is_refused_before_anything_is_expanded`, `test_the_run_limit_is_over_the_whole_invocation`, `test_the_session_plans_at_most_stability_max_runs_counted_before_expanding` |
| filters or paths that leave nothing to run | `--optimizer adamm`: `no case given has an optimizer entry of that name; did you mean 'adam'?`; `--variant fast`: `no case has a variant of that name; their variants: ...`; a folder without marked case files: `no case files in <folder>`; exit 2 (`validate` and `list` too) | `test_run_with_filters_that_leave_nothing_says_so`, `test_a_folder_without_case_files_is_an_error_not_an_empty_success` |
| a case with no runs (`seeds: []`, `devices: []`) | `validate`, `run`: the located error of the table above, exit 2; pytest: one collection error naming the file and key (not exit 5, "no tests ran") | `test_a_case_without_seeds_is_refused_naming_file_and_key`, `test_a_case_with_no_runs_is_a_collection_error_naming_file_and_key` |
| SIGINT (Ctrl-C), SIGTERM (a CI timeout, `docker stop`) or SIGHUP (a closed terminal), to the process or to its whole process group, during `run` | `stability-bench: interrupted (SIGTERM)`, exit 128 + the signal's number: **130** SIGINT, **143** SIGTERM, **129** SIGHUP; `--json` holds every run that finished (the journal is compacted on the way out); the runs in flight are abandoned (`--jobs N`: the workers, which ignore SIGINT and SIGHUP, are stopped by the parent; multiprocessing's resource tracker is started with SIGHUP blocked: a signal to the whole group prints no worker or tracker traceback); a signal once the exit code is decided leaves it as decided | `test_a_stop_signal_mid_run_exits_128_plus_its_number_and_the_results_file_keeps_the_finished_runs`, `test_a_stop_signal_after_the_results_file_is_written_never_kills_the_process` |
| a stop signal that lands in a finaliser (`__del__`), where Python drops the exception ("Exception ignored") | remembered: the run in progress finishes and is written, nothing else starts; exit 143 | `test_a_stop_signal_whose_exception_is_lost_in_a_finaliser_still_ends_the_run` |
| another tool's YAML in `cases/` (no `stability-bench: 1`) | not collected, not an error | `test_only_marked_yaml_below_the_rootdir_cases_folder_is_collected` |
| a project below a folder named `cases` | nothing of it collected (folders are relative to the rootdir) | `test_a_project_living_below_a_folder_named_cases_collects_nothing_of_ours` |
| a marked case file that is not UTF-8 | one collection error naming the file (`not UTF-8 text`); the session goes on | `test_a_case_file_that_cannot_be_read_is_one_error_not_an_aborted_session` |
| an empty project with the plugin installed | the plugin loads without torch | `test_loading_the_pytest_plugin_imports_no_torch` |

**When a stop signal lands** (SIGINT, SIGTERM, SIGHUP alike; `stability_bench/signals.py`):

| moment | exit code | `--json FILE` |
|---|---|---|
| before the command starts (the interpreter starting and importing `stability_bench.cli`, the first ~0.1 s: no code of ours runs yet) | Python's default: SIGINT a `KeyboardInterrupt` traceback and exit 1 (in `python -m`'s import) or death by SIGINT; SIGTERM/SIGHUP end the process | not written: nothing ran |
| loading and planning (from the first line of `main`, torch's import included) | 128 + signal | not written: nothing ran |
| training a run, or between runs | 128 + signal | every run that finished; the one in flight is abandoned |
| inside a finaliser, where Python drops the exception | 128 + signal, after the run in progress finishes | every run that finished, that one included |
| while a journal line or FILE is being written | held until the write is whole, then as above | complete |
| after the last run (the summary, `--report`), until the exit code is decided | 128 + signal | complete |
| after the exit code is decided (the interpreter's teardown, ~1 s with torch loaded, where Python resets its handlers to the default) | the code decided: the stop signals are ignored from then on (`cli.entry`), never a death by the signal | complete |
| the signal was ignored when the process started (`nohup`: SIGHUP; a background job of a non-interactive shell: SIGINT) | ignored, as Python ignores such a SIGINT: use SIGTERM | — |
"""


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(markdown())
