"""The one type of a progress log: a callable taking one line.

Actions, sources and notifications take a ``log`` of this type (the CLI passes one
that prints to stderr, tests one that collects); defined once so they agree.
"""

from __future__ import annotations

from collections.abc import Callable

Log = Callable[[str], None]


def quiet(_line: str) -> None:
    """A log that drops every line: the default where a caller asked for none."""
