"""Secret values kept out of what drkit writes: output, errors, the catalog, notifications.

Policies name secrets by reference (``secrets.py``); every value a reference
resolves to is remembered here, and ``scrub`` replaces it with ``***``. A
command given a secret in its environment may still print it (``curl -v``
does): its stderr tail reaches error messages, ``--json``, the catalog's
``runs.error`` and the notifications' log tail, so those are scrubbed where
they are made (``DrkitError.__str__``, ``remote.base.tail_text``) and the
CLI's own stdout and stderr pass through ``ScrubbedStream`` as a last net.

Values shorter than ``MIN_LENGTH`` are not remembered: replacing every ``ab``
in every message would hide more than it protects.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

MIN_LENGTH = 4
MASK = "***"

_lock = threading.Lock()
_values: tuple[str, ...] = ()  # longest first, so a secret containing another goes whole


def remember(value: str | None) -> None:
    """Scrub ``value`` (a resolved secret) from everything ``scrub`` sees from now on."""
    global _values
    if not value or len(value) < MIN_LENGTH:
        return
    # Also its form inside a JSON string (quotes, backslashes, non-ASCII escaped).
    forms = {value, json.dumps(value)[1:-1]}
    with _lock:
        _values = tuple(sorted(set(_values) | forms, key=len, reverse=True))


def scrub(text: str) -> str:
    """``text`` with every remembered secret value replaced by ``***``."""
    for value in _values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def drop_partial_secret(text: str) -> str:
    """``text`` cut from a longer one (a tail) may begin inside a secret whose start was
    cut off, where ``scrub`` cannot see it: drop as many characters as could be one."""
    longest = len(_values[0]) if _values else 0
    return text[longest - 1 :] if longest > 1 else text


def forget_all() -> None:
    """Forget every remembered value (tests that run in one process)."""
    global _values
    with _lock:
        _values = ()


class ScrubbedStream:
    """A text stream that scrubs what is written to it, delegating everything else."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, data: Any) -> int:
        if isinstance(data, str):
            data = scrub(data)
        return int(self._inner.write(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def guard_std_streams() -> None:
    """Route the process's stdout and stderr through ``ScrubbedStream`` (idempotent)."""
    if not isinstance(sys.stdout, ScrubbedStream):
        sys.stdout = ScrubbedStream(sys.stdout)
    if not isinstance(sys.stderr, ScrubbedStream):
        sys.stderr = ScrubbedStream(sys.stderr)
