"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a real S3 server (SeaweedFS).

Requests are forwarded byte for byte (request line, headers, body), so the
client's SigV4 signatures stay valid: the client signs the proxy's
``host:port`` and SeaweedFS checks the signature against the Host header it
receives, which is that one. Answers come back byte for byte too, unless a
fault says otherwise.

Faults are scripted per request: each ``Fault`` matches a method and a
regular expression on the request target (path and query), lets ``skip``
matching requests through, then acts on the next ``times`` of them:

- ``status``: answer ``status`` with an S3 error document (``code``) without
  forwarding (500 InternalError, 503 SlowDown, 403 AccessDenied, ...);
- ``reset_request``: read ``after`` bytes of the request body, then reset
  the connection (RST): the upstream never sees the request;
- ``reset_response``: forward, send the answer's head and ``after`` bytes of
  its body, then reset;
- ``short_body``: forward, send the answer's head (its Content-Length
  unchanged, now a lie) and ``after`` bytes of the body, then close cleanly;
- ``stall``: read the request, say nothing for ``seconds``, then close
  (beyond the client's timeout, it gives up first);
- ``stall_body``: forward, send the head and ``after`` bytes of the body,
  then say nothing for ``seconds`` and reset;
- ``delay``: wait ``seconds``, then forward normally (latency);
- ``omit_key``: forward a listing, and drop from its answer the
  ``<Contents>`` whose key contains ``key`` (a listing that misses a key
  once, as an eventually consistent store may);
- ``garble``: forward, and answer the first ``after`` bytes of the body
  as the whole of it (Content-Length says so: well framed, the document is
  cut; a listing page a broken proxy or server mangled);
- ``lose_answer``: forward, read the server's whole answer, then reset
  without sending any of it (the server did act: a DELETE that was applied,
  whose answer never came back);
- ``ignore_conditions``: strip ``If-None-Match`` / ``If-Match`` from the
  request (re-signed with the server's credentials: they are signed
  headers), as a server that does not know conditional writes would.

Every injection is recorded in ``injected``. The proxy holds no state of the
store: everything it forwards is the real server's.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import parse_qsl, unquote, urlsplit

from drkit.repository.s3_sign import Credentials, authorization

if TYPE_CHECKING:
    from tests.servers.seaweed import SeaweedServer

ACTIONS = frozenset(
    {
        "status",
        "reset_request",
        "reset_response",
        "short_body",
        "stall",
        "stall_body",
        "delay",
        "omit_key",
        "garble",
        "lose_answer",
        "ignore_conditions",
    }
)
_FORWARDED = frozenset(
    {
        "ignore_conditions",
        "omit_key",
        "garble",
        "lose_answer",
        "reset_response",
        "short_body",
        "stall_body",
    }
)
_BLOCK = 1 << 16
_MAX_HEAD = 64 << 10
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.S)
_KEY = re.compile(rb"<Key>(.*?)</Key>", re.S)


@dataclass
class Fault:
    """One scripted fault; see the module docstring for the actions."""

    action: str
    method: str | None = None  # None: any
    target: str = ""  # regex searched in the request target ("/bucket/key?query")
    skip: int = 0  # matching requests let through before the first injection
    times: int = 1  # injections; 0: every matching request from then on
    status: int = 500
    code: str = "InternalError"
    after: int = 0  # bytes of the body passed before a reset or a short end
    seconds: float = 0.0
    key: str = ""  # omit_key: part of the key to leave out of a listing
    seen: int = 0
    hits: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        self._pattern = re.compile(self.target)

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and method != self.method:
            return False
        return self._pattern.search(target) is not None

    @property
    def spent(self) -> bool:
        return self.times > 0 and self.hits >= self.times


@dataclass
class Injection:
    """A fault that acted: on which request, and what it did."""

    action: str
    method: str
    target: str
    detail: str = ""


class _Request:
    def __init__(self, head: bytes) -> None:
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        self.method, self.target, self.version = lines[0].split(" ", 2)
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers.append((name, value.strip()))

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def length(self) -> int:
        if self.header("transfer-encoding"):
            raise ValueError("s3faults: chunked request bodies are not supported")
        return int(self.header("content-length") or 0)


@dataclass
class S3FaultProxy:
    """Listens on 127.0.0.1 (a free port) and forwards to ``upstream_port``.

    ``credentials`` and ``region`` (the server's) are needed only by
    ``ignore_conditions``, which must re-sign the request it alters.
    """

    upstream_port: int
    credentials: Credentials | None = None
    region: str = "us-east-1"
    faults: list[Fault] = field(default_factory=list)
    injected: list[Injection] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socketserver.ThreadingTCPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- script -------------------------------------------------------------

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        """No more faults (what was injected stays recorded)."""
        with self._lock:
            self.faults.clear()

    def _pick(self, method: str, target: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            for fault in self.faults:
                if fault.spent or not fault.matches(method, target):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                fault.hits += 1
                return fault
        return None

    def _record(self, fault: Fault, req: _Request, detail: str = "") -> None:
        with self._lock:
            self.injected.append(Injection(fault.action, req.method, req.target, detail))

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError, ValueError):
                    proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="s3faults", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> S3FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one client connection ----------------------------------------------

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        cfile = client.makefile("rb")
        try:
            while True:
                head = _read_head(cfile)
                if head is None:
                    return
                req = _Request(head)
                fault = self._pick(req.method, req.target)
                if fault is not None and fault.action not in _FORWARDED:
                    if not self._inject(fault, req, cfile, client):
                        return
                    if fault.action != "delay":
                        continue
                if fault is not None and fault.action == "ignore_conditions":
                    head = self._without_conditions(fault, req)
                if upstream is None:
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                upstream.sendall(head)
                _copy(cfile, upstream, req.length)
                keep = self._answer(upstream, client, req, fault)
                if not keep:
                    return
        finally:
            cfile.close()
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                client.close()

    def _inject(self, fault: Fault, req: _Request, cfile: BinaryIO, client: socket.socket) -> bool:
        """Act out a fault that needs no answer from upstream; True to keep the connection."""
        action = fault.action
        if action == "status":
            _discard(cfile, req.length)
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{fault.code}</Code><Message>injected by s3faults</Message>"
                "<RequestId>s3faults</RequestId></Error>"
            ).encode()
            head = (
                f"HTTP/1.1 {fault.status} {fault.code}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\n"
            )
            if fault.status == 503:
                head += "Retry-After: 1\r\n"
            self._record(fault, req, f"HTTP {fault.status} {fault.code}")
            client.sendall((head + "\r\n").encode() + body)
            return True
        if action == "reset_request":
            _discard(cfile, min(fault.after, req.length))
            self._record(fault, req, f"reset after {min(fault.after, req.length)} request bytes")
            _reset(client)
            return False
        if action == "stall":
            _discard(cfile, req.length)
            self._record(fault, req, f"stalled {fault.seconds:g} s")
            time.sleep(fault.seconds)
            _reset(client)
            return False
        if action == "delay":
            self._record(fault, req, f"delayed {fault.seconds:g} s")
            time.sleep(fault.seconds)
            return True
        raise AssertionError(action)

    def _without_conditions(self, fault: Fault, req: _Request) -> bytes:
        """The request head without If-Match / If-None-Match, signed again."""
        dropped = {"if-match", "if-none-match"}
        if not any(k.lower() in dropped for k, _ in req.headers):
            return req.head
        if self.credentials is None:
            raise ValueError("s3faults: ignore_conditions needs the server's credentials")
        auth = req.header("authorization") or ""
        signed_names = re.search(r"SignedHeaders=([^,\s]+)", auth)
        names = set(signed_names.group(1).split(";")) - dropped if signed_names else set()
        headers = {k.lower(): v for k, v in req.headers if k.lower() in names}
        parts = urlsplit(req.target)
        params = parse_qsl(parts.query, keep_blank_values=True)
        new_auth = authorization(
            self.credentials,
            req.method,
            parts.path,
            params,
            headers,
            headers.get("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            region=self.region,
            service="s3",
            amz_date=headers["x-amz-date"],
        )
        lines = [f"{req.method} {req.target} {req.version}"]
        for k, v in req.headers:
            low = k.lower()
            if low in dropped:
                continue
            lines.append(f"{k}: {new_auth if low == 'authorization' else v}")
        self._record(
            fault,
            req,
            "dropped " + ", ".join(sorted(dropped & {k.lower() for k, _ in req.headers})),
        )
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _answer(
        self, upstream: socket.socket, client: socket.socket, req: _Request, fault: Fault | None
    ) -> bool:
        """Relay one answer (faults applied); True if both connections stay open."""
        ufile = upstream.makefile("rb")
        try:
            head = _read_head(ufile)
            if head is None:
                raise ConnectionError("upstream closed without an answer")
            status_line, _, rest = head.partition(b"\r\n")
            status = int(status_line.split()[1])
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (
                    line.partition(":") for line in rest.decode("latin-1").split("\r\n") if line
                )
            }
            close = headers.get("connection", "").lower() == "close"
            if req.method == "HEAD" or status in (204, 304) or status < 200:
                body_len: int | None = 0
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body_len = None
            elif "content-length" in headers:
                body_len = int(headers["content-length"])
            else:
                body_len, close = -1, True  # until the server closes
            action = fault.action if fault is not None else ""
            if action == "omit_key" and fault is not None:
                body = _read_body(ufile, body_len)
                body, left_out = _omit(body, fault.key)
                self._record(fault, req, f"left out {left_out}" if left_out else "nothing to omit")
                client.sendall(_reframed(head, body))
                return not close
            if action == "garble" and fault is not None:
                body = _read_body(ufile, body_len)[: fault.after]
                self._record(fault, req, f"answered {len(body)} body bytes as the whole")
                client.sendall(_reframed(head, body))
                return not close
            if action == "lose_answer" and fault is not None:
                raw = _raw_body(ufile, body_len)
                self._record(fault, req, f"HTTP {status} ({len(raw)} body bytes) not sent")
                _reset(client)
                return False
            if action in ("reset_response", "short_body", "stall_body") and fault is not None:
                raw = _raw_body(ufile, body_len)
                self._record(
                    fault,
                    req,
                    f"{action} after {min(fault.after, len(raw))} of {len(raw)} body bytes",
                )
                client.sendall(head + raw[: fault.after])
                if action == "stall_body":
                    time.sleep(fault.seconds)
                if action != "short_body":
                    _reset(client)
                else:
                    client.shutdown(socket.SHUT_WR)
                return False
            client.sendall(head)
            _relay_body(ufile, client, body_len)
            return not close
        finally:
            ufile.close()


def _read_head(f: BinaryIO) -> bytes | None:
    """Bytes up to and including the blank line; None at a clean end of stream."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = f.readline(_MAX_HEAD)
        if not line:
            if lines:
                raise ConnectionError("connection closed inside a message head")
            return None
        lines.append(line)
        size += len(line)
        if size > _MAX_HEAD:
            raise ValueError("message head too long")
        if line in (b"\r\n", b"\n"):
            if len(lines) == 1:  # a stray blank line between messages
                lines, size = [], 0
                continue
            return b"".join(lines)


def _copy(src: BinaryIO, dst: socket.socket, length: int) -> None:
    while length > 0:
        block = src.read(min(_BLOCK, length))
        if not block:
            raise ConnectionError("body ended early")
        dst.sendall(block)
        length -= len(block)


def _discard(src: BinaryIO, length: int) -> None:
    while length > 0:
        block = src.read(min(_BLOCK, length))
        if not block:
            return
        length -= len(block)


def _raw_body(src: BinaryIO, length: int | None) -> bytes:
    """The body as it came on the wire (chunk framing kept)."""
    if length is None:
        out = bytearray()
        while True:
            size_line = src.readline()
            out += size_line
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    line = src.readline()
                    out += line
                    if line in (b"\r\n", b"\n", b""):
                        return bytes(out)
            out += src.read(size + 2)
    if length < 0:
        return src.read()
    return src.read(length)


def _read_body(src: BinaryIO, length: int | None) -> bytes:
    """The body's bytes (chunk framing removed)."""
    if length is not None:
        return _raw_body(src, length)
    out = bytearray()
    while True:
        size = int(src.readline().split(b";")[0], 16)
        if size == 0:
            while src.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += src.read(size)
        src.read(2)


def _relay_body(src: BinaryIO, dst: socket.socket, length: int | None) -> None:
    if length is None or length < 0:
        dst.sendall(_raw_body(src, length))
        return
    _copy(src, dst, length)


def _reframed(head: bytes, body: bytes) -> bytes:
    """An answer's ``head`` (ending in its blank line) with ``body``, framed by a
    Content-Length that is true for it."""
    new_head = re.sub(rb"(?im)^(content-length|transfer-encoding):[^\r]*\r\n", b"", head[:-2])
    return new_head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def _omit(body: bytes, key: str) -> tuple[bytes, str]:
    """``body`` without the first ``<Contents>`` whose key contains ``key``."""
    for m in _CONTENTS.finditer(body):
        found = _KEY.search(m.group(0))
        name = found.group(1).decode() if found else ""
        if key in unquote(name):
            return body[: m.start()] + body[m.end() :], unquote(name)
    return body, ""


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@contextlib.contextmanager
def fault_proxy(server: SeaweedServer) -> Iterator[S3FaultProxy]:
    """A proxy in front of a SeaweedServer, stopped afterwards."""
    creds = Credentials(server.access_key, server.secret_key)
    with S3FaultProxy(server.ports["s3"], creds, server.region) as proxy:
        yield proxy
