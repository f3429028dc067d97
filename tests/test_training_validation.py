"""Malformed training sections and component paths are rejected at validation with the
file, line and key. Each file under tests/data/training/bad names its key path and a part
of the expected message in its header; the line is the one marked ``# <- error``."""
from __future__ import annotations

from pathlib import Path

import pytest

from stability_bench.schema import CaseError, load_cases

BAD = Path(__file__).parent / "data" / "training" / "bad"


def header(path: Path, field: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"# {field}: "):
            return line[len(f"# {field}: "):]
    raise AssertionError(f"{path} has no '# {field}:' header")


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_case_is_located(path: Path) -> None:
    marked = [i for i, line in enumerate(path.read_text().splitlines(), 1) if line.endswith("# <- error")]
    assert len(marked) == 1, f"{path} must mark exactly one line"
    with pytest.raises(CaseError) as info:
        load_cases(path)
    located = f"{path}:{marked[0]}: {header(path, 'key')}: "
    lines = [line for line in str(info.value).splitlines() if line.startswith(located)]
    assert lines, f"no problem located at {located!r} in:\n{info.value}"
    assert any(header(path, "expect") in line for line in lines), str(info.value)
