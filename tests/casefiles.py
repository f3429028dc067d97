"""Small case files as test data, and where their problems must be reported.

Test cases live as files under ``tests/data/``; a test that names a line of one finds it in
the file (:func:`line_of`) or reads it from a marker comment on that line, never counts it
by hand. A marker is ``# ERROR: <key path> | <fragment> | ...`` (a validation problem
reported at this line, its message holding every fragment), ``# ERROR(no line): ...`` (one
that no line applies to), ``# PLAN-ERROR: ...`` (a valid case whose runs are over the
limit one invocation plans) or ``# SETUP-ERROR: ...`` (a located error when a run starts).
The checked messages never echo the source line, so a fragment cannot match its own marker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
CASES = DATA / "cases"
_MARK = re.compile(r"#\s*(ERROR|ERROR\(no line\)|PLAN-ERROR|SETUP-ERROR):\s*(.*)$")


def case_text(name: str) -> str:
    """The text of ``tests/data/cases/<name>``."""
    return (CASES / name).read_text()


def line_of(source: Path | str | bytes, text: str | bytes) -> int:
    """The number (from 1) of the one line of ``source`` (a file, or the text or bytes
    themselves) that contains ``text``; an AssertionError where none or several do."""
    content = source.read_text() if isinstance(source, Path) else source
    lines = content.split(b"\n") if isinstance(content, bytes) else content.splitlines()
    found = [i for i, line in enumerate(lines, 1) if text in line]
    assert len(found) == 1, f"{text!r} is on lines {found} of {source if isinstance(source, Path) else 'the text'}," \
                            " not on exactly one"
    return found[0]


def write_case(folder: Path, text: str, name: str = "case.yaml") -> Path:
    """``text`` written to ``folder/name``, marked as a case at its end (so the line numbers
    the tests look up in ``text`` stay put)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text + ("" if text.endswith("\n") else "\n") + "stability-bench: 1\n")
    return path


@dataclass(frozen=True)
class Marked:
    kind: str             # "ERROR", "ERROR(no line)", "PLAN-ERROR" or "SETUP-ERROR"
    line: int | None
    path: str
    fragments: tuple


def marked_problems(file: Path) -> list[Marked]:
    """The problems a file's marker comments expect, in file order."""
    out = []
    for number, text in enumerate(file.read_text().splitlines(), start=1):
        found = _MARK.search(text)
        if found:
            path, *fragments = [part.strip() for part in found[2].split("|")]
            out.append(Marked(found[1], None if found[1] == "ERROR(no line)" else number, path, tuple(fragments)))
    return out


def problem_lines(message: str, file: Path) -> list[tuple[int | None, str, str]]:
    """(line, key path, text) of each ``file:line: key.path: text`` line of a message."""
    out = []
    for text in message.splitlines():
        if text.startswith("… and "):  # the cap's last line
            continue
        assert text.startswith(f"{file}"), f"a problem line not naming {file}: {text!r}"
        rest = text[len(str(file)):]
        line = None
        if rest.startswith(":") and rest[1:].split(":", 1)[0].isdigit():
            number, rest = rest[1:].split(":", 1)
            line = int(number)
        else:
            rest = rest[1:]
        path, _, body = rest.strip().partition(": ")
        out.append((line, path, body))
    return out


def assert_reported(message: str, file: Path, line: int | None, path: str, fragments) -> None:
    """``message`` has a line for ``file:line: path:`` whose text holds every fragment."""
    found = [(n, p, body) for n, p, body in problem_lines(message, file) if n == line and p == path]
    assert found, f"nothing reported at line {line} for {path!r}; got:\n{message}"
    assert any(all(f in body for f in fragments) for _, _, body in found), \
        f"{fragments} not in the message for line {line}, {path!r}:\n{message}"


def assert_exactly_marked(message: str, file: Path) -> None:
    """``message`` (a CaseError's) reports exactly the problems ``file`` marks: one line
    each, at its line and key path, with its fragments."""
    marked = marked_problems(file)
    assert marked, f"{file.name} marks no expected problem"
    assert "Traceback" not in message
    assert len(message.splitlines()) == len(marked), message   # no per-character or duplicated extras
    for m in marked:
        assert_reported(message, file, m.line, m.path, m.fragments)
