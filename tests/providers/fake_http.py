"""A small threaded HTTP server speaking one provider's JSON API, for tests.

Each fake (``FakeApi`` subclass) keeps the provider's state in memory,
answers with the documented response shapes, checks the bearer token, and
records every request (method, path, query, headers, body, status) so tests
assert exactly what the real client code sent. ``inject`` queues canned
answers (429 with rate-limit headers, 503) for the next requests.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

# status, extra headers, JSON body (None: no body)
Reply = tuple[int, dict[str, str], Any]
Handler = Callable[..., Reply]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any
    status: int

    def q(self, name: str) -> str | None:
        """The single value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else None


class FakeApi:
    """State and routes of one provider API. Subclasses fill ``routes``."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.url = ""  # set when the server starts
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._injected: list[tuple[str | None, Reply]] = []
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def inject(self, *replies: Reply, method: str | None = None) -> None:
        """The next requests (of ``method``, else any) get these answers, whatever they ask."""
        with self.lock:
            self._injected.extend((method, r) for r in replies)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """Recorded requests, optionally only one method and/or path (exact or regex)."""
        with self.lock:
            out = list(self.requests)
        if method:
            out = [r for r in out if r.method == method]
        if path:
            out = [r for r in out if r.path == path or re.fullmatch(path, r.path)]
        return out

    # -- provider specifics (overridden) ----------------------------------
    def unauthorized(self) -> Reply:
        return 401, {}, {"error": "unauthorized"}

    def not_found(self) -> Reply:
        return 404, {}, {"error": "not found"}

    def common_headers(self) -> dict[str, str]:
        return {}

    # -- dispatch ------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: Any) -> Reply:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self.lock:
            injected = None
            for i, (only, _reply) in enumerate(self._injected):
                if only in (None, method):
                    injected = self._injected.pop(i)[1]
                    break
        if injected is not None:
            reply = injected
        elif headers.get("authorization") != f"Bearer {self.token}":
            reply = self.unauthorized()
        else:
            reply = self._route(method, parts.path, query, body)
        status, extra, payload = reply
        with self.lock:
            self.requests.append(Request(method, parts.path, query, headers, body, status))
        return status, {**self.common_headers(), **extra}, payload

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Reply:
        for m, pattern, handler in self.routes:
            match = pattern.match(path)
            if m == method and match:
                with self.lock:
                    return handler(*match.groups(), query=query, body=body)
        return self.not_found()


def _handler_class(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's
            # algorithm and delayed ACKs add ~40 ms to every answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = api.handle(self.command, self.path, headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            for k, v in extra.items():
                self.send_header(k, v)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are recorded on the api instead

    return Handler


@contextmanager
def serve(api: FakeApi) -> Iterator[FakeApi]:
    """Run ``api`` on a free 127.0.0.1 port (the OS picks it) until the block ends."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(api))
    server.daemon_threads = True
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-api", daemon=True
    )
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
