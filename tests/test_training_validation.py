"""Malformed training sections and component paths are rejected at validation with the
file, line and key. Each file under tests/data/training/bad marks the line its problem must
be reported at, with the key path and a part of the message (``# ERROR: ...``,
tests/casefiles.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from casefiles import assert_exactly_marked
from stability_bench.schema import CaseError, load_cases

BAD = Path(__file__).parent / "data" / "training" / "bad"


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_case_is_located(path: Path) -> None:
    with pytest.raises(CaseError) as info:
        load_cases(path)
    assert_exactly_marked(str(info.value), path)
