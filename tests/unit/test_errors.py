"""Errors gain context by being reworded, never rebuilt (issue #22)."""

from __future__ import annotations

import pytest

from drkit.errors import DrkitError, IntegrityError
from drkit.locks import LockHeld, MalformedLock


@pytest.mark.parametrize(
    "error",
    [
        LockHeld("host web1: another run holds the lock", "web1"),
        MalformedLock("file:///r/web1/locks/backup.json", "not JSON"),
        IntegrityError("web1/snapshots/x/db/app: digest mismatch"),
    ],
)
def test_reword_keeps_the_class_and_its_attributes(error: DrkitError) -> None:
    attributes = dict(vars(error))
    try:
        raise error
    except DrkitError as exc:
        exc.reword(f"host web1: source db: {exc}; nothing was restored")
        caught = exc
    assert caught is error and type(caught) is type(error)
    assert str(caught).startswith("host web1: source db: ")
    assert str(caught).endswith("; nothing was restored")
    assert vars(caught) == attributes
    assert caught.__traceback__ is not None
