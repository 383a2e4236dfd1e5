"""A source whose program is not installed on this machine says so by name (a newcomer's
first backup with the sample policy's postgres source and no PostgreSQL client), not
"internal error: FileNotFoundError"."""

from __future__ import annotations

import pytest

from drkit.errors import SourceError
from drkit.remote.local import LocalRunner


def test_a_missing_program_is_named() -> None:
    with pytest.raises(SourceError, match=r"drkit-no-such-program: command not found on "):
        LocalRunner("example").start(["drkit-no-such-program", "--version"])
