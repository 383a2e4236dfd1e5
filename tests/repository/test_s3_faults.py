"""S3Store against a faulty S3: the fault proxy (tests/servers/s3faults.py) in front of
the real SeaweedFS. Transient faults are retried to success; the others fail naming the
store, the object and what the server said; nothing partial is left behind."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from collections.abc import Iterator

import pytest

from drkit.errors import RepositoryError
from drkit.repository.s3 import S3Store
from drkit.repository.store import Written
from tests.repository.conftest import make_s3_store
from tests.servers.s3faults import Fault, S3FaultProxy, fault_proxy
from tests.servers.seaweed import SeaweedServer

MiB = 1 << 20


@pytest.fixture
def proxy(seaweed: SeaweedServer) -> Iterator[S3FaultProxy]:
    with fault_proxy(seaweed) as p:
        yield p


@pytest.fixture
def store(seaweed: SeaweedServer, proxy: S3FaultProxy) -> Iterator[S3Store]:
    """A store on a fresh bucket, reached through the proxy."""
    direct = make_s3_store(seaweed)
    options = dataclasses.replace(direct.options, endpoint=proxy.endpoint)
    s = S3Store(direct.bucket, direct.prefix, options)
    yield s
    s.close()
    direct.close()


def blob(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}".encode()).digest(size)


def uploads(store: S3Store) -> list[str]:
    return [k for k, _, _ in store.list_incomplete_uploads()]


def test_proxy_forwards_byte_exact(store: S3Store, proxy: S3FaultProxy) -> None:
    data = blob(12 * MiB)
    store.put("big", io.BytesIO(data))  # multipart: 3 signed parts through the proxy
    with store.get("big") as f:
        assert f.read() == data
    assert [o.key for o in store.list()] == ["big"]
    assert proxy.requests >= 6 and proxy.injected == []


@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")]
)
def test_transient_status_is_retried(
    store: S3Store, proxy: S3FaultProxy, status: int, code: str
) -> None:
    proxy.add(Fault("status", "PUT", status=status, code=code, times=2))
    proxy.add(Fault("status", "GET", r"/small$", status=status, code=code))
    store.put_bytes("small", b"hello")
    assert store.get_bytes("small") == b"hello"
    assert len(proxy.injected) == 3


def test_access_denied_fails_at_once_naming_the_object(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", status=403, code="AccessDenied", times=0))
    with pytest.raises(RepositoryError) as err:
        store.put_bytes("denied", b"x")
    assert f"{store.url}/denied: put failed: AccessDenied (HTTP 403)" in str(err.value)
    assert len(proxy.injected) == 1  # not retried
    assert store.stat("denied") is None


def test_persistent_500_gives_up_after_the_attempts(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", times=0))
    with pytest.raises(RepositoryError, match=r"/x: put failed: InternalError \(HTTP 500\)"):
        store.put_bytes("x", b"x")
    assert len(proxy.injected) == store.max_attempts


@pytest.mark.parametrize("action", ["reset_request", "status"])
def test_multipart_part_fault_is_retried(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    data = blob(12 * MiB, 1)
    proxy.add(Fault(action, "PUT", r"partNumber=2", after=1 * MiB))
    store.put("big", io.BytesIO(data))
    assert store.get_bytes("big") == data
    assert len(proxy.injected) == 1
    assert uploads(store) == []


def test_multipart_part_failing_for_good_aborts_the_upload(
    store: S3Store, proxy: S3FaultProxy
) -> None:
    proxy.add(Fault("reset_request", "PUT", r"partNumber=2", after=1000, times=0))
    with pytest.raises(
        RepositoryError, match=r"/big: upload part 2 of failed: ConnectionResetError"
    ):
        store.put("big", io.BytesIO(blob(12 * MiB, 2)))
    assert store.stat("big") is None
    assert uploads(store) == []


def test_an_upload_that_cannot_be_aborted_is_named(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("status", "PUT", r"partNumber=2", status=403, code="AccessDenied", times=0))
    proxy.add(Fault("status", "DELETE", r"uploadId=", times=0))
    with pytest.raises(RepositoryError) as err:
        store.put("big", io.BytesIO(blob(12 * MiB, 5)))
    said = str(err.value)
    assert "/big: upload part 2 of failed: AccessDenied" in said
    assert "also: could not abort the multipart upload" in said and "drkit prune" in said
    proxy.clear()
    left = store.list_incomplete_uploads()
    assert [k for k, _, _ in left] == ["big"]
    store.abort_upload("big", left[0][1])  # what prune does after the grace period
    assert uploads(store) == []


@pytest.mark.parametrize("action", ["reset_response", "short_body"])
def test_broken_small_answer_is_retried(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    store.put_bytes("small", blob(4000))
    proxy.add(Fault(action, "GET", r"/small$", after=100))
    assert store.get_bytes("small") == blob(4000)
    assert len(proxy.injected) == 1


@pytest.mark.parametrize("action", ["reset_response", "short_body"])
def test_broken_streamed_answer_resumes(store: S3Store, proxy: S3FaultProxy, action: str) -> None:
    data = blob(6 * MiB, 3)
    store.put("big", io.BytesIO(data))
    proxy.add(Fault(action, "GET", r"/big$", after=2 * MiB + 17))
    with store.get("big") as f:
        assert f.read() == data
    assert len(proxy.injected) == 1


def test_listing_that_omits_a_key_once(store: S3Store, proxy: S3FaultProxy) -> None:
    for name in ("a", "b", "c"):
        store.put_bytes(name, b"x")
    proxy.add(Fault("omit_key", "GET", r"list-type=2", key="/b"))
    assert [o.key for o in store.list()] == ["a", "c"]
    assert [o.key for o in store.list()] == ["a", "b", "c"]


def test_server_ignoring_conditions_is_found_out(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("ignore_conditions", "PUT", times=0))
    assert store.put_bytes_if("lock", b"one", tag=None) is Written.UNCHECKED
    assert proxy.injected, "the proxy dropped no header"


def test_conditions_checked_without_the_fault(store: S3Store) -> None:
    assert store.put_bytes_if("lock", b"one", tag=None) is Written.YES
    assert store.put_bytes_if("lock", b"two", tag=None) is Written.REFUSED


def test_latency_is_only_slow(store: S3Store, proxy: S3FaultProxy) -> None:
    proxy.add(Fault("delay", "PUT", seconds=0.5))
    store.put_bytes("slow", b"x")
    assert store.get_bytes("slow") == b"x"


def test_stall_beyond_the_read_timeout_is_retried(store: S3Store, proxy: S3FaultProxy) -> None:
    s = S3Store(store.bucket, store.prefix, store.options)
    s.read_timeout = 1
    try:
        proxy.add(Fault("stall", "PUT", seconds=30))
        started = time.monotonic()
        s.put_bytes("stalled", b"x")
        assert time.monotonic() - started < 10  # the client gave up on the stall and retried
        assert s.get_bytes("stalled") == b"x"
        assert len(proxy.injected) == 1
    finally:
        s.close()


def test_stalled_body_is_resumed(store: S3Store, proxy: S3FaultProxy) -> None:
    data = blob(3 * MiB, 4)
    store.put("big", io.BytesIO(data))
    s = S3Store(store.bucket, store.prefix, store.options)
    s.read_timeout = 1
    try:
        proxy.add(Fault("stall_body", "GET", r"/big$", after=MiB, seconds=30))
        started = time.monotonic()
        with s.get("big") as f:
            assert f.read() == data
        assert time.monotonic() - started < 10
        assert len(proxy.injected) == 1
    finally:
        s.close()
