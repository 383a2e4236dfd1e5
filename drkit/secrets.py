"""Secret references: policies name where a secret lives, never its value.

A reference is ``env:NAME`` (an environment variable) or ``file:PATH`` (a
file whose content, stripped of the final newline, is the value). Errors name
the reference, never the value; every resolved value is remembered by
``redact`` so that output, errors and notifications are scrubbed of it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from drkit import redact
from drkit.errors import SecretError
from drkit.keyfiles import read_text_file

_REF = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:.+)$")


def is_reference(value: str) -> bool:
    return bool(_REF.match(value))


def check_reference(value: str) -> str:
    """Return ``value`` if it is a reference; raise ValueError (policy validation) if literal."""
    if not is_reference(value):
        raise ValueError(
            "a literal secret is refused here; write a reference: env:NAME or file:/path"
        )
    return value


def resolve(ref: str) -> str:
    """The secret value ``ref`` points to (remembered by ``redact``). Raises SecretError
    naming the reference."""
    value = _lookup(ref)
    redact.remember(value)
    return value


def _lookup(ref: str) -> str:
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"secret {ref}: environment variable {name} is not set")
        return value
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        try:
            return read_text_file(path).rstrip("\n")
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise SecretError(f"secret {ref}: {exc}") from None
    raise SecretError("secret reference must be env:NAME or file:PATH")
