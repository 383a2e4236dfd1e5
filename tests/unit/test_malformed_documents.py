"""Malformed repository documents and server answers end in one clear error naming the
object, never a traceback or an endless loop: lock objects, chunk indexes, and S3
answers that are not what S3 sends.

The S3 cases use a tiny local HTTP server answering what a real server cannot be made
to (fault injection); it is started and stopped by each test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from drkit.errors import DrkitError, IntegrityError, RepositoryError
from drkit.locks import LockHeld, LockInfo, MalformedLock, host_lock, lock_key
from drkit.pipeline import chunked
from drkit.pipeline.chunk_index import MAX_CHUNK_SIZE, IndexReader, IndexWriter
from drkit.repository.factory import StoreOptions
from drkit.repository.layout import Repository
from drkit.repository.local import LocalStore
from drkit.repository.s3 import S3Store

HOST = "vultr"
SECRET = "s3cr3t-never-in-a-message"
ORIGIN = "s3://b/vultr/locks/backup.json"


def finishes(seconds: float, fn: Callable[[], Any]) -> BaseException | Any:
    """``fn()``'s result or exception; fails the test if it runs past ``seconds`` (the
    daemon thread it ran in then ends with the server it loops on)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert box, f"still running after {seconds}s: it would loop forever"
    return box[0]


def lock_outcome(repo: Repository, wait: float) -> tuple[Any, float]:
    """Try to take the host lock, waiting up to ``wait``: what that raised (or returned)
    and how many seconds it took. Fails the test if it does not end within 30 s."""
    started = time.monotonic()

    def take() -> None:
        with host_lock(repo, HOST, wait=wait, poll=0.1, confirm_delay=0.1, owner="machine-a"):
            pass

    try:
        return finishes(30, take), time.monotonic() - started
    finally:
        repo.store.close()


# -- lock objects ------------------------------------------------------------------------


def lock_doc(**changes: Any) -> bytes:
    now = dt.datetime.now(dt.UTC)
    doc: dict[str, Any] = {
        "format": "drkit-lock",
        "version": 1,
        "host": HOST,
        "owner": "backup-01",
        "pid": 4242,
        "operation": "backup",
        "started": now.isoformat(),
        "heartbeat": now.isoformat(),
        "ttl": 900.0,
        "token": "deadbeef",
        "pidns": None,
    }
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


MALFORMED_LOCKS = {
    "not json": (b"garbage", "Invalid JSON"),
    "not utf-8": (b"\xff\xfe{}", "Invalid JSON|UTF-8"),
    "a list": (b"[1, 2]", "at top level: Input should be an object"),
    "a string": (b'"lock"', "at top level"),
    "too large": (b" " * (65 << 10), "bytes, a lock is under"),
    "ttl zero": (lock_doc(ttl=0), "at ttl: Input should be greater than 0"),
    "ttl negative": (lock_doc(ttl=-5), "at ttl: Input should be greater than 0"),
    "ttl a string": (lock_doc(ttl="900"), "at ttl: Input should be a valid number"),
    "ttl of years": (lock_doc(ttl=1e9), "at ttl: Input should be less than or equal"),
    "pid a string": (lock_doc(pid="4242"), "at pid: Input should be a valid integer"),
    "pid past os.kill": (lock_doc(pid=2**40), "at pid: Input should be less than or equal"),
    "no token": (lock_doc(token=...), "at token: Field required"),
    "empty owner": (lock_doc(owner=""), "at owner: String should have at least 1"),
    "owner with escapes": (lock_doc(owner="x\x1b[2J"), "at owner: String should match"),
    "time not a time": (lock_doc(started="yesterday"), "at started: Input should be a valid"),
    "time without zone": (
        lock_doc(started="2026-01-01T00:00:00", heartbeat="2026-01-01T00:00:00"),
        "at started: Input should have timezone info",
    ),
    "heartbeat before start": (
        lock_doc(started="2026-01-02T00:00:00Z", heartbeat="2026-01-01T00:00:00Z"),
        "heartbeat is before started",
    ),
    "newer version": (lock_doc(version=2), "at version: Input should be 1"),
    "other format": (lock_doc(format="drkit-manifest"), "at format: Input should be"),
    "unknown field": (lock_doc(extra=1), "at extra: Unexpected"),
}


@pytest.mark.parametrize("name", list(MALFORMED_LOCKS))
def test_a_malformed_lock_object_is_refused_naming_it(name: str) -> None:
    raw, why = MALFORMED_LOCKS[name]
    with pytest.raises(MalformedLock) as info:
        LockInfo.from_json(raw, ORIGIN)
    message = str(info.value)
    assert message.startswith(f"{ORIGIN}: unreadable lock ("), message
    assert re.search(why, message), message
    assert isinstance(info.value, RepositoryError) and info.value.exit_code == 1


def test_a_well_formed_lock_object_reads_back_as_written() -> None:
    info = LockInfo.from_json(lock_doc(), ORIGIN)
    assert (info.owner, info.pid, info.ttl, info.started.tzinfo is not None) == (
        "backup-01",
        4242,
        900.0,
        True,
    )
    assert LockInfo.from_json(info.to_json(), ORIGIN) == info


def local_repo(tmp_path: Path) -> Repository:
    return Repository(LocalStore(tmp_path / "repo"))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"garbage", "Invalid JSON"),
        (lock_doc(ttl=-1), "at ttl"),
        (lock_doc(host="other"), "it is for host other"),
        # Our own machine and pid namespace with a pid os.kill cannot take: it crashed.
        (lock_doc(pid=2**40, owner="machine-a", pidns=os.readlink("/proc/self/ns/pid")), "pid"),
    ],
)
def test_a_fresh_unreadable_lock_bars_the_run_until_the_wait_is_over(
    tmp_path: Path, raw: bytes, why: str
) -> None:
    """It may be a newer drkit's live lock: not taken over, reported after ``wait``."""
    repo = local_repo(tmp_path)
    repo.store.put_bytes(lock_key(HOST), raw)
    error, took = lock_outcome(repo, wait=0.5)
    assert isinstance(error, MalformedLock), error
    assert 0.5 <= took < 10
    message = str(error)
    assert message.startswith(f"{repo.url}/{lock_key(HOST)}: unreadable lock ("), message
    assert why in message and "written 0s ago, it is replaced once unchanged for 15m" in message
    assert repo.store.get_bytes(lock_key(HOST)) == raw  # left for its holder or a person


def test_a_run_whose_lock_became_garbage_warns_and_removes_nothing(tmp_path: Path) -> None:
    repo = local_repo(tmp_path)
    messages: list[str] = []
    with host_lock(repo, HOST, ttl=60, confirm_delay=0, log=messages.append) as held:
        repo.store.put_bytes(lock_key(HOST), b"[]")
        held.check()  # no heartbeat yet (TTL/4 is 15 s): nothing noticed
    assert any("could not remove lock" in m and "unreadable lock" in m for m in messages)
    assert repo.store.get_bytes(lock_key(HOST)) == b"[]"


# -- chunk indexes -----------------------------------------------------------------------

RSET = "0123456789abcdef"
ID = hashlib.sha256(b"chunk").hexdigest()


def index(*lines: str, header: str = f"drkit-chunk-index 1 cdc+zstd+age/v1 {RSET}") -> bytes:
    """An index of ``lines`` (chunk lines of chunk ``ID``, however spelt) with the end
    line they would have, so that only the line under test is wrong."""
    tree = hashlib.sha256(bytes.fromhex(ID) * len(lines)).hexdigest()
    total = sum(int(line.split()[1]) for line in lines)
    return "".join(f"{x}\n" for x in (header, *lines, f"end {total} {tree}")).encode()


def test_the_index_bound_is_the_chunkers_maximum() -> None:
    assert MAX_CHUNK_SIZE == chunked.MAX_CHUNK


MALFORMED_INDEXES = {
    "empty": (b"", "truncated"),
    "bad header": (b"drkit-chunk-index 1 cdc\n", "known version"),
    "signed recipient set": (index(header="drkit-chunk-index 1 c -0123abc"), "bad header"),
    "0x recipient set": (index(header="drkit-chunk-index 1 c 0x0123"), "bad header"),
    "id with a sign": (index(f"-{ID[1:]} 5"), "bad chunk line 1"),
    "id with 0x": (index(f"0x{ID[2:]} 5"), "bad chunk line 1"),
    "id with underscores": (index(f"{ID[:10]}_{ID[11:]} 5"), "bad chunk line 1"),
    "id not hex": (index(f"{ID[:-1]}g 5"), "bad chunk line 1"),
    "id in capitals": (index(f"{ID.upper()} 5"), "bad chunk line 1"),
    "negative size": (index(f"{ID} -5"), "bad chunk line 1"),
    "size with a sign": (index(f"{ID} +5"), "bad chunk line 1"),
    "size with leading zeros": (index(f"{ID} 05"), "bad chunk line 1"),
    "size over a chunk": (index(f"{ID} 5", f"{ID} {MAX_CHUNK_SIZE + 1}"), "chunk 2 claims"),
    "size of exabytes": (index(f"{ID} {10**18}"), "chunk 1 claims"),
    "size past 64 bits": (index(f"{ID} {10**30}"), "bad chunk line 1"),
    "three fields": (index(f"{ID} 5 5"), "bad chunk line 1"),
    "tab for a space": (index(f"{ID}\t5"), "bad chunk line 1"),
    "carriage return": (index(f"{ID} 5\r"), "bad chunk line 1"),
    "no end line": (index(f"{ID} 5").rsplit(b"end", 1)[0], "truncated"),
    "end line of another shape": (index(f"{ID} 5").replace(b"\nend 5 ", b"\nend 5  "), "end"),
    "data after the end line": (index(f"{ID} 5") + b"more\n", "after its end line"),
    "not utf-8": (index(f"{ID} 5").replace(b" 5\n", b" \xff5\n", 1), "not text"),
    "a line too long": (index(f"{ID} 5" + " " * 300), "line too long"),
}


@pytest.mark.parametrize("name", list(MALFORMED_INDEXES))
def test_a_malformed_chunk_index_is_refused_naming_it(name: str) -> None:
    raw, why = MALFORMED_INDEXES[name]
    label = "s3://b/vultr/snapshots/x/db.idx"
    with pytest.raises(IntegrityError) as info:
        list(IndexReader(io.BytesIO(raw), label))
    assert str(info.value).startswith(f"{label}: unreadable chunk index ("), info.value
    assert why in str(info.value), info.value


def test_a_well_formed_index_of_largest_chunks_reads() -> None:
    writer = IndexWriter("cdc+zstd+age/v1", RSET)
    writer.add(bytes.fromhex(ID), MAX_CHUNK_SIZE)
    writer.add(bytes.fromhex(ID), 0)
    done = writer.finish()
    assert [r.size for r in IndexReader(done.file, "idx")] == [MAX_CHUNK_SIZE, 0]


# -- S3 answers that are not S3's -----------------------------------------------------------

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class FakeS3:
    """An HTTP server on 127.0.0.1 answering by ``route(method, path, query)``."""

    route: Callable[[str, str, dict[str, list[str]]], Answer]
    requests: list[str] = field(default_factory=list)
    endpoint: str = ""


@pytest.fixture
def fake_s3() -> Iterator[Callable[[Callable[..., Answer]], FakeS3]]:
    servers: list[ThreadingHTTPServer] = []

    def start(route: Callable[..., Answer]) -> FakeS3:
        fake = FakeS3(route)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                url = urlsplit(self.path)
                fake.requests.append(f"{self.command} {self.path}")
                status, headers, body = fake.route(
                    self.command, url.path, parse_qs(url.query, keep_blank_values=True)
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

            def log_message(self, *_args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        return fake

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def s3_store(fake: FakeS3) -> S3Store:
    store = S3Store(
        "bkt",
        "fleet",
        StoreOptions(endpoint=fake.endpoint, access_key_id="AKIDFAKE", secret_access_key=SECRET),
    )
    store.max_attempts = 1  # what is malformed stays malformed: no retries to wait out
    return store


def garbage(_method: str, _path: str, _query: dict[str, list[str]]) -> Answer:
    return 200, {"Content-Type": "text/html"}, b"<html><body>Welcome to our portal"


def s3_xml(root: str, inner: str = "") -> Answer:
    xmlns = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
    return 200, {"Content-Type": "application/xml"}, f"<{root} {xmlns}>{inner}</{root}>".encode()


def multipart_completing_with(answer: Answer) -> Callable[..., Answer]:
    """A server that starts uploads and takes parts well, then answers ``answer`` to the
    completion."""

    def route(method: str, _path: str, query: dict[str, list[str]]) -> Answer:
        if method == "POST" and "uploads" in query:
            return s3_xml("InitiateMultipartUploadResult", "<UploadId>u1</UploadId>")
        if method == "PUT" and "partNumber" in query:
            return 200, {"ETag": '"e"'}, b""
        if method == "DELETE":
            return 204, {}, b""
        return answer

    return route


def listing(inner: str, token: str = "") -> Callable[..., Answer]:
    more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
    return lambda *_a: s3_xml("ListBucketResult", inner + (more if token else ""))


BIG = b"x" * (17 << 20)  # over one 16 MiB part: a multipart upload
S3_CASES: dict[str, tuple[Callable[..., Answer], Callable[[S3Store], object], str, str]] = {
    "list": (garbage, lambda s: list(s.list("vultr/")), "list", "not XML (text/html"),
    "list of folders": (garbage, lambda s: s.list_dirs(), "list", "where S3 sends"),
    "list answering an error with 200": (
        lambda *_a: s3_xml("Error", "<Code>AccessDenied</Code>"),
        lambda s: list(s.list("vultr/")),
        "list",
        "answer is <Error> AccessDenied, where S3 sends <ListBucketResult>",
    ),
    "list with a size not a number": (
        listing("<Contents><Key>fleet/a</Key><Size>ten</Size></Contents>"),
        lambda s: list(s.list()),
        "list",
        "<Size> 'ten' is not a byte count",
    ),
    "list with a time not a time": (
        listing(
            "<Contents><Key>fleet/a</Key><Size>1</Size><LastModified>x</LastModified></Contents>"
        ),
        lambda s: list(s.list()),
        "list",
        "<LastModified> 'x' is not an ISO 8601 time",
    ),
    "list going round in circles": (
        listing("", token="again"),
        lambda s: list(s.list()),
        "list",
        "repeats a continuation token",
    ),
    "open uploads": (garbage, lambda s: s.list_incomplete_uploads(), "list uploads", "not XML"),
    "Object Lock configuration": (
        garbage,
        lambda s: s.object_lock_enabled(),
        "read Object Lock configuration of",
        "not XML",
    ),
    "stat with a size not a number": (
        lambda *_a: (200, {"Content-Length": "ten"}, b""),
        lambda s: s.stat("vultr/x"),
        "stat",
        "size 'ten' is not a byte count",
    ),
    "stat with a time not a time": (
        lambda *_a: (200, {"Last-Modified": "not a date"}, b""),
        lambda s: s.stat("vultr/x"),
        "stat",
        "Last-Modified 'not a date' is not an HTTP date",
    ),
    "start of a multipart upload": (
        garbage,
        lambda s: s.put("vultr/big", io.BytesIO(BIG)),
        "start upload of",
        "not XML",
    ),
    "completion of a multipart upload": (
        multipart_completing_with(garbage("POST", "/", {})),
        lambda s: s.put("vultr/big", io.BytesIO(BIG)),
        "complete upload of",
        "where S3 sends <CompleteMultipartUploadResult>",
    ),
    "an error that is a web page": (
        lambda *_a: (403, {"Content-Type": "text/html"}, b"<html>Forbidden</html"),
        lambda s: s.get_bytes("vultr/x"),
        "read",
        "403 (HTTP 403): Forbidden",
    ),
}


@pytest.mark.parametrize("name", list(S3_CASES))
def test_an_answer_s3_would_not_send_is_a_repository_error_naming_it(
    fake_s3: Callable[..., FakeS3], name: str
) -> None:
    route, call, action, why = S3_CASES[name]
    fake = fake_s3(route)
    store = s3_store(fake)
    try:
        error = finishes(30, lambda: call(store))
    finally:
        store.close()
    assert isinstance(error, RepositoryError), error
    message = str(error)
    assert re.match(rf"s3://bkt/fleet(/\S*)?: {action} failed: ", message), message
    assert why in message, message
    if not name.startswith("an error"):
        assert f"failed: {fake.endpoint}: " in message, message  # which server sent it
    assert SECRET not in message and "AKIDFAKE" not in message


def test_the_lock_loop_ends_against_a_server_answering_garbage(
    fake_s3: Callable[..., FakeS3],
) -> None:
    """Was: `backup` looped forever (unreadable lock -> replace -> read garbage back)."""
    error, took = lock_outcome(Repository(s3_store(fake_s3(garbage))), wait=1)
    assert isinstance(error, MalformedLock), error
    assert took < 15
    assert str(error).startswith(f"s3://bkt/fleet/{lock_key(HOST)}: unreadable lock (")


def test_the_lock_loop_ends_against_a_server_that_keeps_nothing(
    fake_s3: Callable[..., FakeS3],
) -> None:
    """Every write answered 200, every read 404: the lock never reads back as written."""

    def forgetful(method: str, _path: str, _query: dict[str, list[str]]) -> Answer:
        if method in ("GET", "HEAD"):
            return 404, {}, b""
        return 200, {"ETag": '"e"'}, b""

    error, took = lock_outcome(Repository(s3_store(fake_s3(forgetful))), wait=1)
    assert isinstance(error, RepositoryError) and not isinstance(error, LockHeld), error
    assert took < 15
    expected = f"host {HOST}: could not take the lock s3://bkt/fleet/{lock_key(HOST)}: "
    assert str(error).startswith(expected), error
    assert "did not read back as written" in str(error)
    assert isinstance(error, DrkitError) and error.exit_code == 1
