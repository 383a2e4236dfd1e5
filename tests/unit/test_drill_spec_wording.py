"""Drill-file problems read like policy problems: ``<file>: <key path>: <message>``,
every one at once, in the validator's words (issue 23, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from drkit.drills.spec import load_spec
from drkit.errors import PolicyError


def test_drill_file_problems_are_worded_like_policy_problems(tmp_path: Path) -> None:
    path = tmp_path / "h1.toml"
    path.write_text(
        'host = "h1"\ncolour = "red"\n'
        '[[sql]]\nname = "rows"\nsource = "db"\nquery = "select 1"\n'
        '[[command]]\nname = "x"\nrun = []\n'
    )
    with pytest.raises(PolicyError) as err:
        load_spec(path)
    assert sorted(err.value.problems) == [
        f"{path}: colour: unknown key",
        f"{path}: command[0].run: List should have at least 1 item after validation, not 0",
        f"{path}: sql[0].expect: field required",
    ]
