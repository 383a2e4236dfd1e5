"""The Object Lock guard over a store without Object Lock (a local directory).

The store contract suite (tests/repository/) runs against the guard over a bucket
with Object Lock. It cannot apply here: every write of the contract is refused, which
is the point of the guard. What is checked here instead: each write is refused before
it reaches the inner store, naming the host; reads and housekeeping are the inner
store's and never ask for the check; and the guard implements every Store method
rather than inheriting a default that would hide the inner store's own.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from drkit.errors import RepositoryError
from drkit.repository.local import LocalStore
from drkit.repository.object_lock import ObjectLockGuard
from drkit.repository.store import Store, Written

# Built by Store on put / put_without_retention / get: they reach the guard's own.
COMPOSED = {"put_bytes", "get_bytes"}


class Counted:
    """``enabled`` for the guard: ``answer()``, counting the questions."""

    def __init__(self, answer: Callable[[], bool]) -> None:
        self.answer = answer
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        return self.answer()


@pytest.fixture
def inner(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "repo")
    store.put_bytes("vultr/snapshots/s1/manifest.json", b"{}")
    return store


def test_the_guard_implements_every_store_method() -> None:
    methods = {n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")}
    assert methods - set(vars(ObjectLockGuard)) == COMPOSED
    assert "__getattr__" not in vars(ObjectLockGuard)  # nothing forwarded unseen


@pytest.mark.parametrize(
    "write",
    [
        lambda s: s.put("vultr/snapshots/s2/db", io.BytesIO(b"rows")),
        lambda s: s.put_bytes("vultr/snapshots/s2/db", b"rows"),
        lambda s: s.put_bytes("vultr/locks/backup.json", b"{}", retain=False),
        lambda s: s.put_without_retention("vultr/locks/backup.json", io.BytesIO(b"{}")),
        lambda s: s.put_bytes_if("vultr/locks/backup.json", b"{}", tag=None),
        lambda s: s.put_bytes_if("vultr/snapshots/s1/manifest.json", b"{}", tag="etag"),
    ],
    ids=["put", "put_bytes", "lock", "put_without_retention", "create", "replace"],
)
def test_writes_are_refused_naming_the_host(
    inner: LocalStore, write: Callable[[Store], object]
) -> None:
    enabled = Counted(inner.object_lock_enabled)
    guard = ObjectLockGuard(inner, days=7, enabled=enabled)
    with pytest.raises(RepositoryError) as err:
        write(guard)
    message = str(err.value)
    assert message.startswith(f"host vultr: bucket {inner.url} ({inner.url}) does not have")
    assert "repository.immutable_days = 7; nothing was written" in message
    assert enabled.asked == 1
    assert [o.key for o in inner.list()] == ["vultr/snapshots/s1/manifest.json"]
    assert inner.get_bytes("vultr/snapshots/s1/manifest.json") == b"{}"


def test_a_key_without_a_host_names_none(inner: LocalStore) -> None:
    guard = ObjectLockGuard(inner, days=1, enabled=inner.object_lock_enabled)
    with pytest.raises(RepositoryError) as err:
        guard.put_bytes("format.json", b"{}")
    assert str(err.value).startswith(f"bucket {inner.url} (")
    assert inner.stat("format.json") is None


def test_reads_and_housekeeping_are_the_inner_stores_unchecked(inner: LocalStore) -> None:
    enabled = Counted(inner.object_lock_enabled)
    guard = ObjectLockGuard(inner, days=1, enabled=enabled)
    key = "vultr/snapshots/s1/manifest.json"
    assert guard.url == inner.url
    assert guard.get_bytes(key) == b"{}"
    assert guard.get_bytes_tagged(key) == (b"{}", None)
    info = guard.stat(key)
    assert info is not None and info.size == 2
    assert [o.key for o in guard.list("vultr/")] == [key]
    assert guard.list_dirs() == ["vultr"] and guard.list_dirs("vultr/") == ["snapshots"]
    assert guard.ensure_bucket() is False
    assert guard.object_lock_enabled() is False  # the inner store's answer
    assert guard.object_retention(key) is None
    assert guard.list_incomplete_uploads("vultr/") == []
    guard.abort_upload(key, "no-such-upload")
    guard.delete(key)  # a delete writes nothing to hold: not checked
    assert inner.stat(key) is None
    guard.close()
    assert enabled.asked == 0


def test_writes_reach_the_inner_store_when_enabled(inner: LocalStore) -> None:
    """The other answer, without a bucket: every write asks again, then goes through."""
    enabled = Counted(lambda: True)
    guard = ObjectLockGuard(inner, days=1, enabled=enabled)
    guard.put_bytes("vultr/snapshots/s2/db", b"rows")
    guard.put_bytes("vultr/locks/backup.json", b"{}", retain=False)
    assert guard.put_bytes_if("vultr/locks/other.json", b"{}", tag=None) is Written.YES
    assert enabled.asked == 3
    assert inner.get_bytes("vultr/snapshots/s2/db") == b"rows"
    assert inner.get_bytes("vultr/locks/other.json") == b"{}"
