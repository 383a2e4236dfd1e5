"""One contract for every Store backend (LocalStore, S3Store on a real SeaweedFS).

Then S3-only checks: error messages, credentials, Content-MD5, bounded
multipart memory, Object Lock, incomplete-upload housekeeping.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import random
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import ObjectNotFound, RepositoryError
from drkit.repository import s3_multipart as s3_parts
from drkit.repository.factory import open_store
from drkit.repository.layout import Repository
from drkit.repository.local import LocalStore
from drkit.repository.s3 import S3Store
from drkit.repository.store import Store, Written
from tests.repository.conftest import PART_SIZE, make_s3_store, s3_options
from tests.servers.seaweed import SeaweedServer

MiB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


class TrickleStream(io.BytesIO):
    """Returns at most ``step`` bytes per read: stores must not assume full reads."""

    def __init__(self, data: bytes, step: int = 70_001) -> None:
        super().__init__(data)
        self._step = step

    def read(self, size: int | None = -1) -> bytes:
        n = self._step if size is None or size < 0 else min(size, self._step)
        return super().read(n)


class FailingStream(io.BytesIO):
    """Yields ``data`` up to ``fail_after`` bytes, then raises ``exc`` on the next read."""

    def __init__(self, data: bytes, fail_after: int, exc: BaseException) -> None:
        super().__init__(data)
        self._fail_after = fail_after
        self._exc = exc

    def read(self, size: int | None = -1) -> bytes:
        left = self._fail_after - self.tell()
        if left <= 0:
            raise self._exc
        return super().read(left if size is None or size < 0 else min(size, left))


def leftovers(store: Store) -> list[str]:
    """Debris a failed put must not leave: open uploads, and a local store's temp files."""
    found = [key for key, _upload, _when in store.list_incomplete_uploads()]
    if isinstance(store, LocalStore) and store.root.exists():
        found += [str(p) for p in store.root.rglob("*") if p.name.startswith(".drkit-tmp-")]
    return found


def keys(store: Store, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


# -- the contract: every backend ----------------------------------------------


@pytest.mark.parametrize(
    "size",
    [0, 1, 1000, PART_SIZE - 1, PART_SIZE, 2 * PART_SIZE, 12 * MiB + 123],
    ids=["empty", "1B", "1kB", "part-1", "one-part", "two-parts", "12MiB"],
)
def test_put_get_round_trip(store: Store, size: int) -> None:
    data = payload(size, seed=size)
    assert store.put("host/snapshots/s1/blob", io.BytesIO(data)) == size
    assert store.get_bytes("host/snapshots/s1/blob") == data
    info = store.stat("host/snapshots/s1/blob")
    assert info is not None
    assert info.key == "host/snapshots/s1/blob"
    assert info.size == size
    assert info.modified.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - info.modified).total_seconds()) < 300


@pytest.mark.parametrize(
    "size", [0, 1000, PART_SIZE + 17, 12 * MiB + 5], ids=["0", "1kB", "part+", "12MiB"]
)
def test_put_file_stores_the_whole_file_from_its_start(
    store: Store, size: int, tmp_path: Path
) -> None:
    data = payload(size, seed=size + 1)
    with open(tmp_path / "pack", "w+b") as fh:
        fh.write(data)  # left at its end: put_file sends it from its start
        assert store.put_file("host/packs/p1", fh) == size
    assert store.get_bytes("host/packs/p1") == data


def test_put_accepts_short_reads(store: Store) -> None:
    data = payload(PART_SIZE + 3 * MiB, seed=7)
    assert store.put("trickle", TrickleStream(data)) == len(data)
    assert store.get_bytes("trickle") == data


def test_get_is_a_binary_stream(store: Store) -> None:
    data = payload(3 * MiB + 17, seed=3)
    store.put_bytes("a/b", data)
    with store.get("a/b") as f:
        assert f.read(10) == data[:10]
        assert f.read(0) == b""
        rest = bytearray()
        while chunk := f.read(1 << 16):
            rest += chunk
        assert bytes(rest) == data[10:]
        assert f.read(10) == b""
    assert f.closed
    reader = store.get("a/b")
    reader.close()  # closing before reading everything is fine
    assert reader.closed


def test_overwrite_replaces_content(store: Store) -> None:
    store.put_bytes("k", b"first version, longer")
    store.put_bytes("k", b"second")
    assert store.get_bytes("k") == b"second"
    info = store.stat("k")
    assert info is not None and info.size == 6
    big = payload(PART_SIZE + 1, seed=9)
    store.put_bytes("k", big)
    assert store.get_bytes("k") == big
    assert keys(store) == ["k"]


def test_stat_missing_is_none(store: Store) -> None:
    assert store.stat("no/such/key") is None
    store.put_bytes("no/such/other", b"x")
    assert store.stat("no/such/key") is None


def test_get_missing_raises_object_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound) as err:
        store.get("missing/key")
    assert "missing/key" in str(err.value)
    assert store.url in str(err.value)


def test_list_is_sorted_relative_and_prefixed(store: Store) -> None:
    # Chosen so that directory-walk order differs from key (byte) order.
    names = ["snap/a/b", "snap/a-c", "snap/a.d", "snap/ab", "snap/a/b2/c", "snap/A", "other/x", "z"]
    for i, name in enumerate(names):
        store.put_bytes(name, b"x" * i)
    assert keys(store) == sorted(names)
    assert keys(store, "snap/") == sorted(n for n in names if n.startswith("snap/"))
    assert keys(store, "snap/a") == sorted(n for n in names if n.startswith("snap/a"))
    assert keys(store, "nothing/") == []
    sizes = {info.key: info.size for info in store.list()}
    assert sizes == {name: i for i, name in enumerate(names)}


def test_list_empty_store(store: Store) -> None:
    assert keys(store) == []


def test_delete(store: Store) -> None:
    store.put_bytes("d/one", b"1")
    store.put_bytes("d/two", b"2")
    store.delete("d/one")
    assert store.stat("d/one") is None
    assert keys(store) == ["d/two"]
    store.delete("d/one")  # already gone: not an error
    store.delete("never/existed")
    store.delete("d/two")
    assert keys(store) == []


@pytest.mark.parametrize("bad", ["", "../escape", "a/../b", "a/./b"])
def test_invalid_keys_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(RepositoryError):
        store.put_bytes(bad, b"x")


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize(
    "size, fail_after",
    [(1000, 500), (3 * PART_SIZE, PART_SIZE + MiB), (3 * PART_SIZE, 2 * PART_SIZE)],
    ids=["small", "in-part-2", "at-part-boundary"],
)
def test_failed_put_leaves_nothing(
    store: Store, exc_type: type[BaseException], size: int, fail_after: int
) -> None:
    data = payload(size, seed=1)
    stream = FailingStream(data, fail_after, exc_type("source died"))
    with pytest.raises(exc_type, match="source died"):
        store.put("host/obj", stream)
    assert store.stat("host/obj") is None
    assert keys(store) == []
    assert leftovers(store) == []


def test_failed_put_keeps_existing_object(store: Store) -> None:
    old = payload(PART_SIZE + 5, seed=2)
    store.put_bytes("host/obj", old)
    for fail_after in (100, PART_SIZE + MiB):
        stream = FailingStream(payload(3 * PART_SIZE, seed=3), fail_after, OSError("boom"))
        with pytest.raises(OSError, match="boom"):
            store.put("host/obj", stream)
        assert store.get_bytes("host/obj") == old
    assert keys(store) == ["host/obj"]
    assert leftovers(store) == []


# -- S3 only -------------------------------------------------------------------


def test_s3_url_and_factory(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    assert s3_store.url == f"s3://{s3_store.bucket}/repo/sub"
    opened = open_store(f"s3://{s3_store.bucket}/repo/sub", s3_options(seaweed))
    assert isinstance(opened, S3Store)
    s3_store.put_bytes("x/y", b"hello")
    assert opened.get_bytes("x/y") == b"hello"
    # The prefix is a boundary: objects beside it are not ours.
    sibling = S3Store(s3_store.bucket, "repo/sub2", s3_options(seaweed))
    sibling.put_bytes("x/z", b"other")
    root = S3Store(s3_store.bucket, "", s3_options(seaweed))
    assert root.url == f"s3://{s3_store.bucket}"
    assert keys(s3_store) == ["x/y"]
    assert keys(root) == ["repo/sub/x/y", "repo/sub2/x/z"]
    assert s3_store.ensure_bucket() is False


def test_s3_errors_never_show_the_secret(seaweed: SeaweedServer) -> None:
    store = make_s3_store(seaweed)
    secret = seaweed.secret_key
    messages: list[str] = []
    # A bucket that does not exist.
    missing = S3Store("no-such-bucket-" + seaweed.new_bucket_name(), "p", s3_options(seaweed))
    for action in (
        lambda: missing.get("k"),
        lambda: missing.put_bytes("k", b"x"),
        lambda: list(missing.list()),
    ):
        with pytest.raises(RepositoryError) as err:
            action()
        messages.append(str(err.value))
    # An endpoint with user:password@ that nobody listens on.
    dead = S3Store(
        store.bucket,
        "p",
        s3_options(seaweed, endpoint="http://leak:hunter2@127.0.0.1:9"),
    )
    dead.max_attempts = 1
    with pytest.raises(RepositoryError) as err:
        dead.stat("k")
    messages.append(str(err.value))
    assert dead.url == f"s3://{store.bucket}/p"
    for message in messages:
        assert secret not in message
        assert "hunter2" not in message and "leak" not in message
        assert "s3://" in message
    assert "NoSuchBucket" in messages[0]


def test_s3_wrong_secret_names_the_url(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    wrong_secret = "wrong-" + seaweed.secret_key[::-1]
    wrong = S3Store(
        s3_store.bucket, "repo/sub", s3_options(seaweed, secret_access_key=wrong_secret)
    )
    for action in (
        lambda: wrong.put_bytes("k", b"x"),
        lambda: wrong.get("k"),
        lambda: list(wrong.list()),
    ):
        with pytest.raises(RepositoryError) as err:
            action()
        message = str(err.value)
        assert not isinstance(err.value, ObjectNotFound)
        assert wrong.url in message
        assert "SignatureDoesNotMatch" in message
        assert wrong_secret not in message and seaweed.secret_key not in message
    # head_object has no body, hence no error code: still a RepositoryError, not "missing".
    with pytest.raises(RepositoryError) as err:
        wrong.stat("k")
    assert wrong.url in str(err.value)


def test_s3_credentials_from_the_aws_chain(
    seaweed: SeaweedServer, s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    chain = S3Store(
        s3_store.bucket,
        "repo/sub",
        s3_options(seaweed, access_key_id=None, secret_access_key=None),
    )
    chain.put_bytes("chain", b"ok")
    assert s3_store.get_bytes("chain") == b"ok"


def test_s3_content_md5_is_checked(s3_store: S3Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A digest that does not match the bytes is refused (BadDigest), leaving nothing."""
    s3_store.put_bytes("obj", b"original")
    wrong = base64.b64encode(hashlib.md5(b"corrupt").digest()).decode()
    monkeypatch.setattr(s3_parts, "content_md5", lambda md5: wrong)
    for data in (b"small object", payload(2 * PART_SIZE + 10, seed=4)):
        with pytest.raises(RepositoryError, match="BadDigest") as err:
            s3_store.put_bytes("obj", data)
        assert s3_store.url in str(err.value)
    monkeypatch.undo()
    assert s3_store.get_bytes("obj") == b"original"
    assert s3_store.list_incomplete_uploads() == []


def test_s3_multipart_memory_is_bounded(
    seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    concurrency = 2
    store = make_s3_store(seaweed, concurrency=concurrency)
    data = payload(5 * PART_SIZE + 1, seed=5)
    lock = threading.Lock()
    state = {"active": 0, "max_active": 0, "done": 0, "max_held": 0}

    class CountingStream(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            with lock:
                parts_read = -(-self.tell() // PART_SIZE)
                state["max_held"] = max(state["max_held"], parts_read - state["done"])
            return chunk

    real_upload = store._upload_part

    def slow_upload(key: str, upload_id: str, number: int, part: Any) -> tuple[int, str]:
        with lock:
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        try:
            time.sleep(0.15)
            return real_upload(key, upload_id, number, part)
        finally:
            with lock:
                state["active"] -= 1
                state["done"] += 1

    monkeypatch.setattr(store, "_upload_part", slow_upload)
    assert store.put("big", CountingStream(data)) == len(data)
    assert store.get_bytes("big") == data
    assert state["max_active"] == concurrency
    assert state["max_held"] <= concurrency + 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_s3_put_peak_memory(seaweed: SeaweedServer, concurrency: int) -> None:
    """Python-heap peak of a large put stays below one part: parts are spooled to disk."""
    store = make_s3_store(seaweed, concurrency=concurrency)
    store.put_bytes("warm", b"client is built before measuring")
    source = io.BytesIO(payload(10 * PART_SIZE, seed=8))
    tracemalloc.start()
    try:
        store.put("big", source)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Read blocks of 256 KiB into the spool, send blocks of 256 KiB per connection:
    # ~1 MiB measured at concurrency 1 and 3 alike (it was a part per upload before).
    assert peak <= 2 * MiB, peak
    info = store.stat("big")
    assert info is not None and info.size == 10 * PART_SIZE


def test_s3_object_lock(seaweed: SeaweedServer) -> None:
    store = make_s3_store(seaweed, object_lock_days=1)
    client = seaweed.client()
    store.put_bytes("small", b"locked")
    store.put_bytes("large", payload(PART_SIZE + 1, seed=6))
    for key in ("small", "large"):
        head = client.head_object(Bucket=store.bucket, Key=f"repo/sub/{key}")
        assert head["ObjectLockMode"] == "GOVERNANCE"
        until = head["ObjectLockRetainUntilDate"] - dt.datetime.now(dt.UTC)
        assert dt.timedelta(hours=23) < until <= dt.timedelta(days=1)
    assert store.get_bytes("small") == b"locked"


def test_s3_object_lock_enabled(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    """The capability check init/backup rely on: a locked bucket says so, a plain one not."""
    locked = make_s3_store(seaweed, object_lock_days=1)
    assert locked.object_lock_enabled() is True
    assert s3_store.object_lock_enabled() is False


def test_s3_incomplete_uploads(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    client = seaweed.client()
    bucket = s3_store.bucket
    ours = client.create_multipart_upload(Bucket=bucket, Key="repo/sub/host/x")["UploadId"]
    client.create_multipart_upload(Bucket=bucket, Key="repo/subway/y")
    found = s3_store.list_incomplete_uploads()
    assert [(key, upload) for key, upload, _ in found] == [("host/x", ours)]
    assert found[0][2].tzinfo is not None
    s3_store.abort_upload("host/x", ours)
    assert s3_store.list_incomplete_uploads() == []
    s3_store.abort_upload("host/x", ours)  # already gone: not an error


def test_s3_lock_objects_can_skip_retention(seaweed: SeaweedServer) -> None:
    """``retain=False`` (the host lock object) writes without Object Lock, so it can be deleted."""
    store = make_s3_store(seaweed, object_lock_days=1)
    client = seaweed.client()
    store.put_bytes("h/locks/backup.json", b"{}", retain=False)
    store.put("h/big", io.BytesIO(payload(PART_SIZE + 1, seed=9)), retain=False)
    for key in ("h/locks/backup.json", "h/big"):
        head = client.head_object(Bucket=store.bucket, Key=f"repo/sub/{key}")
        assert "ObjectLockMode" not in head
        assert store.object_retention(key) is None
    store.delete("h/locks/backup.json")
    assert store.stat("h/locks/backup.json") is None
    store.put_bytes("h/artifact", b"kept")
    until = store.object_retention("h/artifact")
    assert until is not None and until > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    # A bucket without Object Lock: nothing is retained, and objects are not asked one by one.
    plain = make_s3_store(seaweed)
    plain.put_bytes("x", b"1")
    assert plain.object_retention("x") is None


def test_list_dirs_is_one_level(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in (
        "a/snapshots/s1/manifest.json",
        "a/chunks/ab/cd",
        "b/locks/backup.json",
        "c/snapshots/s2/x",
        "top.json",
    ):
        store.put_bytes(key, b"x")
    assert store.list_dirs() == ["a", "b", "c"]
    assert store.list_dirs("a/") == ["chunks", "snapshots"]
    assert store.list_dirs("nobody/") == []
    # Hosts are the top-level names with snapshots, found without listing every
    # object of the repository (chunks included).
    monkeypatch.setattr(store, "list", lambda prefix="": pytest.fail(f"listed {prefix!r}"))
    assert Repository(store).hosts() == ["a", "c"]


def test_create_if_absent_is_exclusive(store: Store) -> None:
    """The host lock's compare-and-swap: one create wins, a second changes nothing."""
    key = "h/locks/backup.json"
    assert store.put_bytes_if(key, b"first", tag=None) is Written.YES
    assert store.put_bytes_if(key, b"second", tag=None) is Written.REFUSED
    assert store.get_bytes(key) == b"first"
    store.delete(key)
    assert store.put_bytes_if(key, b"third", tag=None) is Written.YES
    assert store.get_bytes_tagged(key)[0] == b"third"
    assert [o.key for o in store.list("h/")] == [key]
    if isinstance(store, LocalStore):  # list() hides temp files: look at the directory
        assert [p.name for p in (store.root / "h" / "locks").iterdir()] == ["backup.json"]


def test_s3_replace_only_the_version_read(s3_store: S3Store) -> None:
    key = "h/locks/backup.json"
    s3_store.put_bytes_if(key, b"stale", tag=None)
    data, tag = s3_store.get_bytes_tagged(key)
    assert data == b"stale" and tag
    s3_store.put_bytes(key, b"rival", retain=False)  # someone replaced it after our read
    assert s3_store.put_bytes_if(key, b"mine", tag=tag) is Written.REFUSED
    assert s3_store.get_bytes(key) == b"rival"
    _, tag = s3_store.get_bytes_tagged(key)
    assert s3_store.put_bytes_if(key, b"mine", tag=tag) is Written.YES
    assert s3_store.get_bytes(key) == b"mine"


def test_s3_conditions_on_an_object_lock_bucket(seaweed: SeaweedServer) -> None:
    """Lock buckets are versioned: create-if-absent still sees the current version, and
    the lock object gets no retention (it must stay deletable)."""
    store = make_s3_store(seaweed, object_lock_days=1)
    key = "h/locks/backup.json"
    assert store.put_bytes_if(key, b"1", tag=None) is Written.YES
    assert store.put_bytes_if(key, b"2", tag=None) is Written.REFUSED
    assert store.object_retention(key) is None
    store.delete(key)
    assert store.put_bytes_if(key, b"3", tag=None) is Written.YES


@pytest.mark.parametrize("ignored", [("if-none-match", "if-match"), ("if-match",)])
def test_s3_server_ignoring_conditions_is_detected(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch, ignored: tuple[str, ...]
) -> None:
    """A server that does not know If-None-Match (or If-Match) writes anyway; the store
    must not claim a compare-and-swap it did not get. Modelled by dropping those
    headers before they are signed and sent (the server then sees a plain PUT)."""
    request = s3_store.client.request

    def without_conditions(*args: Any, headers: Any = None, **kw: Any) -> Any:
        kept = {k: v for k, v in (headers or {}).items() if k not in ignored}
        return request(*args, headers=kept, **kw)

    monkeypatch.setattr(s3_store.client, "request", without_conditions)
    key = "h/locks/backup.json"
    create = Written.UNCHECKED if "if-none-match" in ignored else Written.YES
    assert s3_store.put_bytes_if(key, b"first", tag=None) is create
    assert s3_store.put_bytes_if(key, b"second", tag=None) is (
        Written.UNCHECKED if "if-none-match" in ignored else Written.REFUSED
    )
    _, tag = s3_store.get_bytes_tagged(key)
    assert s3_store.put_bytes_if(key, b"third", tag=tag) is Written.UNCHECKED
    assert s3_store.put_bytes_if(key, b"fourth", tag='"stale"') is Written.UNCHECKED
    assert s3_store.get_bytes(key) == b"fourth"


def test_local_store_accepts_retain(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "repo")
    store.put_bytes("h/locks/backup.json", b"{}", retain=False)
    assert store.get_bytes("h/locks/backup.json") == b"{}"


def test_local_store_has_no_bucket_lock_or_uploads(tmp_path: Path) -> None:
    """The Store defaults a local directory answers with: what init, backup's Object Lock
    check and prune ask of every store."""
    store = LocalStore(tmp_path / "repo")
    assert store.ensure_bucket() is False  # nothing to create: the first write makes the root
    assert not store.root.exists()
    store.put_bytes("h/snapshots/s1/x", b"1")
    assert store.object_lock_enabled() is False
    assert store.object_retention("h/snapshots/s1/x") is None
    assert store.list_incomplete_uploads() == [] and store.list_incomplete_uploads("h/") == []
    store.abort_upload("h/snapshots/s1/x", "no-such-upload")  # none to abort: not an error
    assert store.get_bytes("h/snapshots/s1/x") == b"1"


def test_s3_listings_follow_continuation(s3_store: S3Store, seaweed: SeaweedServer) -> None:
    s3_store.list_page_size = 2
    names = [f"h/k{i}" for i in range(5)]
    for name in names:
        s3_store.put_bytes(name, b"x")
    assert keys(s3_store) == names
    client = seaweed.client()
    ids = [
        client.create_multipart_upload(Bucket=s3_store.bucket, Key=f"repo/sub/u{i}")["UploadId"]
        for i in range(3)
    ]
    found = s3_store.list_incomplete_uploads()
    assert sorted(upload for _key, upload, _ in found) == sorted(ids)
    for key, upload, _ in found:
        s3_store.abort_upload(key, upload)


def test_s3_reprs_and_errors_hold_no_secret(seaweed: SeaweedServer, s3_store: S3Store) -> None:
    secret = seaweed.secret_key
    with_userinfo = S3Store(
        s3_store.bucket, "p", s3_options(seaweed, endpoint=f"http://u:{secret}@127.0.0.1:9")
    )
    with_userinfo.max_attempts = 1
    with pytest.raises(RepositoryError) as err:
        with_userinfo.put_bytes("k", b"x")
    for text in (
        repr(s3_store),
        repr(s3_store.client),
        repr(s3_store.options),
        str(err.value),
        repr(with_userinfo),
        repr(with_userinfo.client),
    ):
        assert secret not in text, text
    # A signed request's failure (wrong key id) carries the server's code, not the request.
    unknown = S3Store(s3_store.bucket, "p", s3_options(seaweed, access_key_id="AKIDUNKNOWN"))
    with pytest.raises(RepositoryError) as err:
        unknown.put_bytes("k", b"x")
    assert secret not in str(err.value) and "Signature=" not in str(err.value)


def test_get_range_reads_exactly_the_bytes_asked(store: Store) -> None:
    data = payload(3 * MiB, seed=7)
    store.put("packs/p", io.BytesIO(data))
    assert store.get_range("packs/p", 0, 10) == data[:10]
    assert store.get_range("packs/p", 1_000_003, 70_001) == data[1_000_003:1_070_004]
    assert store.get_range("packs/p", len(data) - 5, 5) == data[-5:]
    with pytest.raises(RepositoryError, match="packs/p"):
        store.get_range("packs/p", len(data) - 5, 6)
    with pytest.raises(ObjectNotFound):
        store.get_range("packs/absent", 0, 1)


def test_a_local_listing_never_follows_a_planted_directory_symlink(tmp_path: Path) -> None:
    """Whoever can write the repository directory plants ``host/packs -> outside``: no
    listing (prune deletes what it lists as unreferenced packs) may name what is outside."""
    from drkit.repository.local import LocalStore

    store = LocalStore(tmp_path / "repo")
    store.put("host/snapshots/s1/manifest.json", io.BytesIO(b"{}"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"not the repository's")
    (tmp_path / "repo" / "host" / "packs").symlink_to(outside)
    for prefix in ("", "host/", "host/packs/", "host/packs/p", "host/packs/precious"):
        assert [o.key for o in store.list(prefix) if "precious" in o.key] == [], prefix
        assert store.list_incomplete_uploads(prefix) == [], prefix
    assert (outside / "precious").read_bytes() == b"not the repository's"
