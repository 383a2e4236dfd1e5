"""JetStream snapshot/restore helper that runs ON the NATS host (stdlib only, Python 3.7+).

NATS usually listens on the host's loopback and drkit reaches hosts only
through a Runner, so drkit never dials the NATS URL itself: ``nats.py`` sends
this file's text to ``python3`` on the host (on stdin, behind a one-line
bootstrap in argv) and this script speaks the NATS text protocol (CONNECT,
SUB, PUB, MSG/HMSG, PING/PONG) to the JetStream API. It must not import drkit
or anything outside the standard library: the host has neither. For the same
reason it stays one module (~770 lines): its text is what is sent, whole.

Usage (argv after the bootstrap): ``OP URL [ARGS]``

- ``info URL --all`` / ``info URL NAME...``: stdout is JSON
  ``{"streams": [StreamInfo...], "missing": [NAME...]}``.
- ``snapshot URL NAME CHUNK``: stdout is one JSON line ``{"config", "state"}``
  (the server's snapshot response) followed by the snapshot bytes exactly as
  the server streams them (an s2-compressed tar in nats-server 2.9).
- ``restore URL NAME``: stdin is the same JSON line and bytes; stdout is the
  restored stream's info (JSON). With ``"bytes": N`` in the JSON line, the
  snapshot is applied only if exactly N bytes follow (its sender may die).
- ``delete URL NAME``.
- ``export URL NAME``: for streams the snapshot API cannot take (memory storage):
  stdout is one JSON line ``{"config", "state"}`` (the state before reading),
  then one record per message read through an ordered consumer (ack none,
  flow control, recreated after a gap) up to that state's last sequence, then
  an end record holding the count (see ``EXPORT_FORMAT``).
- ``import URL NAME``: stdin is an export; creates the stream from its config
  and publishes every message to its subject again (new sequence numbers);
  stdout is the stream's info (JSON).

Credentials come in the environment (``DRKIT_NATS_AUTH``: JSON fields merged
into CONNECT, e.g. ``{"auth_token": ...}``), never in argv. Errors: one line
on stderr, exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import uuid
from collections import deque
from typing import Any, BinaryIO
from urllib.parse import urlsplit

API = "$JS.API"
API_TIMEOUT = 10.0
# Between two snapshot chunks, and for the server to finish applying a restore.
STREAM_TIMEOUT = 60.0
FINISH_TIMEOUT = 600.0
RESTORE_CHUNK = 128 * 1024
# Restore chunks in flight before waiting for the server's acks.
RESTORE_WINDOW = 16
MAX_CONTROL_LINE = 64 * 1024
# Snapshot bytes held in memory when stdout is slower than the server; the rest spills to disk.
SPOOL_MEMORY = 8 << 20
# An export record: type 1, stream sequence, timestamp (ns), then the lengths of subject,
# headers and data, then those bytes. The end record: type 0 and the message count.
EXPORT_RECORD = struct.Struct(">BQqIII")
EXPORT_END = struct.Struct(">BQ")
EXPORT_WINDOW = 256
HEARTBEAT_NS = 1_000_000_000
EXPORT_SID = "3"


class HelperError(Exception):
    """A failure reported as one line on stderr."""


class Msg:
    __slots__ = ("headers", "payload", "reply", "sid", "subject")

    def __init__(
        self, subject: str, reply: str, headers: bytes, payload: bytes, sid: str = ""
    ) -> None:
        self.subject = subject
        self.sid = sid
        self.reply = reply
        self.headers = headers
        self.payload = payload

    @property
    def status(self) -> tuple[int, str]:
        """(code, description) from a ``NATS/1.0 503 No Responders`` header line; (0, "")."""
        if not self.headers:
            return 0, ""
        first = self.headers.split(b"\r\n", 1)[0].decode("utf-8", "replace")
        parts = first.split(" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            return int(parts[1]), parts[2] if len(parts) > 2 else ""
        return 0, ""


def parse_url(url: str) -> tuple[str, int]:
    """(host, port) of ``nats://host:port``; TLS and credentials in the URL are refused."""
    if "://" not in url:
        url = "nats://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tcp"):
        raise HelperError(f"unsupported NATS URL scheme {parts.scheme!r} (use nats://)")
    if parts.username or parts.password:
        raise HelperError("credentials in the NATS URL are refused")
    if not parts.hostname:
        raise HelperError("the NATS URL has no host")
    return parts.hostname, parts.port or 4222


class Client:
    """One NATS connection with a wildcard inbox subscription."""

    def __init__(self, url: str, auth: dict[str, Any]) -> None:
        self.url = url
        self._wlock = threading.Lock()
        host, port = parse_url(url)
        try:
            self.sock = socket.create_connection((host, port), timeout=API_TIMEOUT)
        except OSError as exc:
            raise HelperError(f"cannot connect to NATS at {url}: {exc.strerror or exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb", buffering=1 << 20)
        info = self._control()
        if not info.startswith(b"INFO "):
            raise HelperError(f"{url} did not greet like a NATS server")
        server = json.loads(info[5:])
        self.server = {k: server.get(k) for k in ("version", "jetstream", "server_name")}
        if server.get("tls_required"):
            raise HelperError(f"NATS at {url} requires TLS, which the drkit helper does not speak")
        self.max_payload = int(server.get("max_payload", 1 << 20))
        if not server.get("headers", False):
            raise HelperError(f"NATS at {url} does not support headers (server too old)")
        connect = {
            "verbose": False,
            "pedantic": False,
            "headers": True,
            "no_responders": True,
            "protocol": 1,
            "lang": "python3",
            "version": "drkit-jetstream",
            "name": "drkit",
        }
        connect.update(auth)
        self.inbox = "_INBOX." + uuid.uuid4().hex
        self._send(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        while True:
            line = self._control()
            if line == b"PONG":
                break
            if line.startswith(b"-ERR"):
                raise HelperError(f"NATS at {url} refused the connection: {_err_text(line)}")
        self.subscribe(f"{self.inbox}.>", 1)
        self._next_id = 0

    # ---- wire -----------------------------------------------------------
    def _send(self, data: bytes) -> None:
        try:
            with self._wlock:  # the snapshot's reader thread answers PINGs meanwhile
                self.sock.sendall(data)
        except OSError as exc:
            raise HelperError(f"connection to NATS at {self.url} lost: {exc}") from None

    def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        head = (
            f"PUB {subject} {reply} {len(payload)}\r\n"
            if reply
            else (f"PUB {subject} {len(payload)}\r\n")
        )
        self._send(head.encode() + payload + b"\r\n")

    def hpublish(self, subject: str, headers: bytes, payload: bytes, reply: str) -> None:
        total = len(headers) + len(payload)
        head = f"HPUB {subject} {reply} {len(headers)} {total}\r\n".encode()
        self._send(head + headers + payload + b"\r\n")

    def _control(self) -> bytes:
        try:
            line = self.rf.readline(MAX_CONTROL_LINE)
        except socket.timeout:  # noqa: UP041 - not TimeoutError before 3.10 (host python3)
            raise HelperError(f"NATS at {self.url} did not answer in time") from None
        except OSError as exc:
            raise HelperError(f"connection to NATS at {self.url} lost: {exc}") from None
        if not line.endswith(b"\r\n"):
            raise HelperError(f"connection to NATS at {self.url} closed by the server")
        return line[:-2]

    def _exact(self, n: int) -> bytes:
        try:
            data = self.rf.read(n)
        except socket.timeout:  # noqa: UP041 - not TimeoutError before 3.10 (host python3)
            raise HelperError(f"NATS at {self.url} did not answer in time") from None
        except OSError as exc:
            raise HelperError(f"connection to NATS at {self.url} lost: {exc}") from None
        if len(data) != n:
            raise HelperError(f"connection to NATS at {self.url} closed by the server")
        return bytes(data)

    def next_msg(self, timeout: float) -> Msg:
        """The next message for us; answers PINGs; raises on -ERR or a closed connection."""
        self.sock.settimeout(timeout)
        while True:
            line = self._control()
            if line.startswith(b"MSG "):
                parts = line.split(b" ")
                reply = parts[3] if len(parts) == 5 else b""
                data = self._exact(int(parts[-1]) + 2)
                return Msg(parts[1].decode(), reply.decode(), b"", data[:-2], parts[2].decode())
            if line.startswith(b"HMSG "):
                parts = line.split(b" ")
                reply = parts[3] if len(parts) == 6 else b""
                hlen, total = int(parts[-2]), int(parts[-1])
                data = self._exact(total + 2)
                return Msg(
                    parts[1].decode(),
                    reply.decode(),
                    data[:hlen],
                    data[hlen:total],
                    parts[2].decode(),
                )
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise HelperError(f"NATS at {self.url}: {_err_text(line)}")
            # +OK, PONG and INFO updates need nothing.

    def subscribe(self, subject: str, sid: int) -> None:
        self._send(f"SUB {subject} {sid}\r\n".encode())

    def new_reply(self) -> str:
        self._next_id += 1
        return f"{self.inbox}.{self._next_id}"

    def request(self, subject: str, body: Any, timeout: float = API_TIMEOUT) -> dict[str, Any]:
        """A JetStream API request; returns the JSON response, raising on an API error."""
        reply = self.new_reply()
        payload = b"" if body is None else json.dumps(body).encode()
        self.publish(subject, payload, reply)
        return self.wait_response(reply, subject, timeout)

    def wait_response(self, reply: str, subject: str, timeout: float) -> dict[str, Any]:
        while True:
            msg = self.next_msg(timeout)
            if msg.subject == reply:
                return self.api_result(msg, subject)

    def api_result(self, msg: Msg, subject: str) -> dict[str, Any]:
        code, text = msg.status
        if code == 503:
            raise HelperError(f"JetStream is not enabled at {self.url} (no responders)")
        if code >= 400:
            raise HelperError(f"{subject} at {self.url}: status {code} {text}".rstrip())
        try:
            out = json.loads(msg.payload)
        except ValueError:
            raise HelperError(f"{subject} at {self.url}: answer is not JSON") from None
        err = out.get("error") if isinstance(out, dict) else None
        if err:
            raise ApiError(err)
        return out  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ApiError(HelperError):
    """An ``{"error": {code, err_code, description}}`` answer from the JetStream API."""

    def __init__(self, err: dict[str, Any]) -> None:
        self.code = int(err.get("code", 0))
        self.err_code = int(err.get("err_code", 0))
        super().__init__(f"{err.get('description', 'error')} (code {self.code})")


def _failure_text(payload: bytes) -> str:
    text = payload.decode("utf-8", "replace").strip()
    try:
        err = json.loads(text).get("error") or {}
        return str(err.get("description") or text)
    except (ValueError, AttributeError):
        return text


def _err_text(line: bytes) -> str:
    return line[4:].strip().strip(b"'").decode("utf-8", "replace")


# ---- operations -----------------------------------------------------------
def op_info(c: Client, names: list[str], out: BinaryIO) -> None:
    streams: list[dict[str, Any]] = []
    missing: list[str] = []
    if names == ["--all"]:
        offset = 0
        while True:
            page = c.request(f"{API}.STREAM.LIST", {"offset": offset})
            got = page.get("streams") or []
            streams.extend(got)
            offset += len(got)
            if not got or offset >= int(page.get("total", 0)):
                break
    else:
        for name in names:
            try:
                streams.append(c.request(f"{API}.STREAM.INFO.{name}", None))
            except ApiError as exc:
                if exc.code != 404:
                    raise HelperError(f"stream {name}: {exc}") from None
                missing.append(name)
    body = {"server": c.server, "streams": streams, "missing": missing}
    out.write(json.dumps(body).encode() + b"\n")


def op_snapshot(c: Client, name: str, chunk_size: int, out: BinaryIO) -> None:
    """Write the snapshot response line, then every chunk, acking each once written.

    nats-server 2.9 paces a snapshot by these acks only loosely: without them it
    still sends a chunk every 10 ms, and a connection that falls 64 MB behind
    is cut as a slow consumer. So a reader thread always drains the socket
    into a Spool (memory, then a temp file) while this thread writes to
    stdout at whatever pace the pipeline downstream (SSH, S3) allows.
    """
    # Outside the inbox wildcard and subscribed literally: the server waits up to 2 s
    # for interest in the deliver subject and does not see a wildcard's.
    deliver = "_DRKIT_SNAPSHOT." + uuid.uuid4().hex
    c.subscribe(deliver, 2)
    reply = c.new_reply()
    subject = f"{API}.STREAM.SNAPSHOT.{name}"
    req = {"deliver_subject": deliver, "no_consumers": False, "chunk_size": chunk_size}
    c.publish(subject, json.dumps(req).encode(), reply)
    spool = Spool()
    ended = False
    while True:
        msg = c.next_msg(API_TIMEOUT)
        if msg.subject == deliver:
            # The server answers and streams from two queues: chunks, even the end
            # marker of a small snapshot, can arrive before the response.
            ended = _take_chunk(msg, name, spool)
        elif msg.subject == reply:
            try:
                resp = c.api_result(msg, subject)
            except ApiError as exc:
                raise HelperError(f"stream {name}: snapshot refused: {exc}") from None
            break
    header = {"config": resp.get("config"), "state": resp.get("state")}
    out.write(json.dumps(header).encode() + b"\n")
    if not ended:
        reader = threading.Thread(target=_drain, args=(c, name, deliver, spool), daemon=True)
        reader.start()
    size = 0
    while True:
        item = spool.get()
        if item is None:
            break
        data, ack = item
        out.write(data)
        size += len(data)
        if ack:
            c.publish(ack, b"")  # flow control: this chunk is consumed
    out.flush()
    if size == 0:
        raise HelperError(f"stream {name}: the server sent an empty snapshot")


def _take_chunk(msg: Msg, name: str, spool: Spool) -> bool:
    """Spool one snapshot message; True (spool closed) at the end-of-snapshot marker."""
    code, text = msg.status
    if code >= 400:
        raise HelperError(f"stream {name}: snapshot failed: {code} {text}".rstrip())
    if not msg.payload and not msg.reply:
        spool.close(None)
        return True
    spool.put(msg)
    return False


def _drain(c: Client, name: str, deliver: str, spool: Spool) -> None:
    """Reader thread: socket -> spool until the end marker; errors end the spool."""
    try:
        while True:
            msg = c.next_msg(STREAM_TIMEOUT)
            if msg.subject == deliver and _take_chunk(msg, name, spool):
                return
    except HelperError as exc:
        spool.close(exc)
    except Exception as exc:  # any failure (disk full...) must reach the writer
        spool.close(HelperError(f"stream {name}: snapshot reader failed: {exc!r}"))


class Spool:
    """FIFO of (chunk, ack subject): memory up to SPOOL_MEMORY, then an unlinked temp file.

    Once anything waits in the file, later chunks go there too, so order holds.
    The file is rewound whenever it has been read to its end.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[bytes | None, int, int, str]] = deque()
        self._memory = 0
        self._in_file = 0
        self._file: Any = None
        self._end = 0
        self._closed = False
        self._error: HelperError | None = None

    def put(self, msg: Msg) -> None:
        data = msg.payload
        with self._cond:
            if not self._in_file and self._memory + len(data) <= SPOOL_MEMORY:
                self._items.append((data, len(data), 0, msg.reply))
                self._memory += len(data)
            else:
                if self._file is None:
                    # Unlinked at once: nothing is left behind whatever happens.
                    self._file = tempfile.TemporaryFile(prefix="drkit-jetstream-")  # noqa: SIM115
                fd = self._file.fileno()
                if self._in_file == 0:
                    self._end = 0  # nothing left in the file: rewind it
                os.pwrite(fd, data, self._end)
                self._items.append((None, len(data), self._end, msg.reply))
                self._end += len(data)
                self._in_file += 1
            self._cond.notify()

    def get(self) -> tuple[bytes, str] | None:
        """The next chunk, or None at the end; raises the reader's error."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if not self._items:
                return None
            data, size, offset, reply = self._items.popleft()
            if data is None:
                data = os.pread(self._file.fileno(), size, offset)
                self._in_file -= 1
            else:
                self._memory -= size
            return data, reply

    def close(self, error: HelperError | None) -> None:
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify()


def op_restore(c: Client, name: str, inp: BinaryIO, out: BinaryIO) -> None:
    """Stage a snapshot read from ``inp`` on the server and print the restored stream's info."""
    line = inp.readline(64 << 20)
    try:
        header = json.loads(line)
    except ValueError:
        raise HelperError(
            f"stream {name}: restore input does not start with its metadata"
        ) from None
    subject = f"{API}.STREAM.RESTORE.{name}"
    try:
        resp = c.request(subject, {"config": header["config"], "state": header["state"]})
    except ApiError as exc:
        raise HelperError(f"stream {name}: restore refused: {exc}") from None
    deliver = resp["deliver_subject"]
    acks = f"{c.inbox}.ack"
    chunk = min(RESTORE_CHUNK, c.max_payload)
    pending = 0

    def take_ack() -> None:
        nonlocal pending
        msg = c.next_msg(STREAM_TIMEOUT)
        if msg.subject != acks:
            return
        if msg.payload:  # a failed chunk is answered with an error (text or API JSON)
            raise HelperError(f"stream {name}: restore failed: {_failure_text(msg.payload)}")
        pending -= 1

    sent = 0
    expected = header.get("bytes")  # drkit's count: a shorter input is never applied
    while True:
        data = inp.read(chunk)
        if not data:
            break
        if expected is not None and sent + len(data) > expected:
            raise HelperError(f"stream {name}: restore input is longer than {expected} bytes")
        c.publish(deliver, data, acks)
        sent += len(data)
        pending += 1
        while pending >= RESTORE_WINDOW:
            take_ack()
    while pending:
        take_ack()
    if sent == 0:
        raise HelperError(f"stream {name}: restore input holds no snapshot data")
    if expected is not None and sent != expected:
        # Its sender died mid-stream: the server discards a restore never finished.
        raise HelperError(
            f"stream {name}: restore input ended after {sent} of {expected} bytes; not applied"
        )
    done = c.new_reply()
    c.publish(deliver, b"", done)  # end of snapshot: the server now applies it
    try:
        info = c.wait_response(done, subject, FINISH_TIMEOUT)
    except ApiError as exc:
        raise HelperError(f"stream {name}: restore failed: {exc}") from None
    out.write(json.dumps(info).encode() + b"\n")


def op_export(c: Client, name: str, out: BinaryIO) -> None:
    """Every message of a stream up to its last sequence at the start, through an
    ordered consumer: the way to copy a stream the snapshot API refuses (memory)."""
    try:
        info = c.request(f"{API}.STREAM.INFO.{name}", None)
    except ApiError as exc:
        raise HelperError(f"stream {name}: {exc}") from None
    state = info.get("state") or {}
    out.write(json.dumps({"config": info.get("config"), "state": state}).encode() + b"\n")
    count = 0
    if int(state.get("messages", 0)) > 0:
        count = _export(c, name, int(state["first_seq"]), int(state["last_seq"]), out)
    out.write(EXPORT_END.pack(0, count))
    out.flush()


def _ack_fields(reply: str) -> tuple[str, int, int, int, int]:
    """(consumer, stream seq, consumer seq, timestamp, pending) of a ``$JS.ACK`` subject
    (the 9-token form, or the 12-token one with domain and account hash)."""
    t = reply.split(".")
    if len(t) == 9:
        t = [*t[:2], "_", "_", *t[2:], "_"]
    if len(t) < 12 or t[0] != "$JS" or t[1] != "ACK":
        raise HelperError(f"unexpected ack subject {reply!r} in an export")
    return t[5], int(t[7]), int(t[8]), int(t[9]), int(t[10])


def _export(c: Client, name: str, first: int, last: int, out: BinaryIO) -> int:
    deliver = "_DRKIT_EXPORT." + uuid.uuid4().hex
    c.subscribe(deliver, int(EXPORT_SID))
    count, expect, start = 0, 1, first
    consumer = _ordered_consumer(c, name, deliver, start)
    stalled = False  # a heartbeat found deliveries past what arrived; none came since
    try:
        while True:
            msg = c.next_msg(STREAM_TIMEOUT)
            if msg.sid != EXPORT_SID:  # the deliver subscription; subjects are the messages'
                continue
            code, text = msg.status
            if code == 100:
                if msg.reply:  # flow control: answer, or the server stops sending
                    c.publish(msg.reply, b"")
                    continue
                # An idle heartbeat. It may have been sent before deliveries that are still
                # on their way (the consumer's state is read after it): those arrive. If a
                # second heartbeat still finds deliveries past what arrived, they were lost
                # (a slow consumer's drop at the tail): start again after the last written.
                pending, delivered = _consumer_state(c, name, consumer)
                if delivered <= start - 1:
                    if pending == 0:
                        return count
                    stalled = False
                elif stalled:
                    _delete_consumer(c, name, consumer)
                    consumer, expect = _ordered_consumer(c, name, deliver, start), 1
                    stalled = False
                else:
                    stalled = True
                continue
            if code:
                raise HelperError(f"stream {name}: export failed: {code} {text}".rstrip())
            who, sseq, dseq, ts, pending = _ack_fields(msg.reply)
            if who != consumer:
                continue  # a replaced consumer's message still in flight
            if dseq != expect:  # a gap: start a new consumer after the last one written
                _delete_consumer(c, name, consumer)
                consumer, expect = _ordered_consumer(c, name, deliver, start), 1
                continue
            stalled = False
            subject = msg.subject.encode()
            out.write(
                EXPORT_RECORD.pack(1, sseq, ts, len(subject), len(msg.headers), len(msg.payload))
            )
            out.write(subject + msg.headers + msg.payload)
            count, expect, start = count + 1, expect + 1, sseq + 1
            if sseq >= last or pending == 0:
                return count
    finally:
        _delete_consumer(c, name, consumer)


def _ordered_consumer(c: Client, name: str, deliver: str, start: int) -> str:
    config = {
        "deliver_subject": deliver,
        "deliver_policy": "by_start_sequence",
        "opt_start_seq": start,
        "ack_policy": "none",
        "max_deliver": 1,
        "replay_policy": "instant",
        "flow_control": True,
        "idle_heartbeat": HEARTBEAT_NS,
        "mem_storage": True,
        "inactive_threshold": 60 * HEARTBEAT_NS,
    }
    try:
        resp = c.request(f"{API}.CONSUMER.CREATE.{name}", {"stream_name": name, "config": config})
    except ApiError as exc:
        raise HelperError(f"stream {name}: export consumer refused: {exc}") from None
    return str(resp["name"])


def _consumer_state(c: Client, name: str, consumer: str) -> tuple[int, int]:
    """(messages pending for ``consumer``, the last stream sequence delivered to it). With
    ack_policy none a delivered message is done, so pending 0 alone does not mean that
    every delivery reached us: an export once ended with 0 of 299 messages so."""
    info = c.request(f"{API}.CONSUMER.INFO.{name}.{consumer}", None)
    delivered = int((info.get("delivered") or {}).get("stream_seq", 0))
    return int(info.get("num_pending", 0)), delivered


def _delete_consumer(c: Client, name: str, consumer: str) -> None:
    with contextlib.suppress(HelperError):
        c.request(f"{API}.CONSUMER.DELETE.{name}.{consumer}", None)


def read_export_record(inp: BinaryIO) -> tuple[int, int, bytes, bytes, bytes]:
    """(seq, timestamp, subject, headers, data) of the next export record; raises
    _ExportEnd (holding the count it records) at the end record."""
    kind = inp.read(1)
    if not kind:
        raise HelperError("the export ends without its end record")
    if kind == b"\0":
        rest = _read_exact(inp, EXPORT_END.size - 1)
        raise _ExportEnd(EXPORT_END.unpack(kind + rest)[1])
    if kind != b"\1":
        raise HelperError("the export holds an unknown record type")
    rest = _read_exact(inp, EXPORT_RECORD.size - 1)
    _, seq, ts, slen, hlen, dlen = EXPORT_RECORD.unpack(kind + rest)
    body = _read_exact(inp, slen + hlen + dlen)
    return seq, ts, body[:slen], body[slen : slen + hlen], body[slen + hlen :]


class _ExportEnd(Exception):
    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


def _read_exact(inp: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = inp.read(n - len(data))
        if not chunk:
            raise HelperError("the export is truncated")
        data += chunk
    return data


def _strip_expectations(headers: bytes) -> bytes:
    """Headers without ``Nats-Expected-*`` (publish-time conditions, not message data)."""
    if not headers:
        return b""
    lines = headers.split(b"\r\n")
    kept = [ln for ln in lines[1:] if ln and not ln.lower().startswith(b"nats-expected-")]
    if not kept:
        return b""
    return b"\r\n".join([lines[0], *kept]) + b"\r\n\r\n"


def op_import(c: Client, name: str, inp: BinaryIO, out: BinaryIO) -> None:
    """Create a stream from an export's config and publish its messages again."""
    try:
        header = json.loads(inp.readline(64 << 20))
        config = header["config"]
    except (ValueError, KeyError, TypeError):
        raise HelperError(f"stream {name}: import input does not start with its metadata") from None
    try:
        c.request(f"{API}.STREAM.CREATE.{name}", config)
    except ApiError as exc:
        raise HelperError(f"stream {name}: create refused: {exc}") from None
    acks = f"{c.inbox}.pub"
    pending = 0

    def take_ack() -> None:
        nonlocal pending
        msg = c.next_msg(STREAM_TIMEOUT)
        if msg.subject != acks:
            return
        pending -= 1
        code, text = msg.status
        if code >= 400:
            raise HelperError(f"stream {name}: publish failed: {code} {text}".rstrip())
        err = _failure_text(msg.payload) if b'"error"' in msg.payload else ""
        if err:
            raise HelperError(f"stream {name}: publish failed: {err}")

    sent = 0
    while True:
        try:
            record = read_export_record(inp)
        except _ExportEnd as end:
            if end.count != sent:
                raise HelperError(
                    f"stream {name}: the export holds {sent} messages, its end record says "
                    f"{end.count}"
                ) from None
            break
        _seq, _ts, subject, headers, data = record
        headers = _strip_expectations(headers)
        if headers:
            c.hpublish(subject.decode(), headers, data, acks)
        else:
            c.publish(subject.decode(), data, acks)
        sent += 1
        pending += 1
        while pending >= EXPORT_WINDOW:
            take_ack()
    while pending:
        take_ack()
    info = c.request(f"{API}.STREAM.INFO.{name}", None)
    out.write(json.dumps(info).encode() + b"\n")


def op_delete(c: Client, name: str, out: BinaryIO) -> None:
    try:
        resp = c.request(f"{API}.STREAM.DELETE.{name}", None)
    except ApiError as exc:
        raise HelperError(f"stream {name}: delete failed: {exc}") from None
    if not resp.get("success"):
        raise HelperError(f"stream {name}: delete was not confirmed")
    out.write(b'{"deleted": true}\n')


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        sys.stderr.write("usage: OP URL ARGS...\n")
        return 2
    op, url, args = argv[0], argv[1], argv[2:]
    out = sys.stdout.buffer
    try:
        auth = json.loads(os.environ.get("DRKIT_NATS_AUTH") or "{}")
        c = Client(url, auth)
        try:
            if op == "info":
                op_info(c, args, out)
            elif op == "snapshot":
                op_snapshot(c, args[0], int(args[1]), out)
            elif op == "restore":
                op_restore(c, args[0], sys.stdin.buffer, out)
            elif op == "delete":
                op_delete(c, args[0], out)
            elif op == "export":
                op_export(c, args[0], out)
            elif op == "import":
                op_import(c, args[0], sys.stdin.buffer, out)
            else:
                raise HelperError(f"unknown operation {op!r}")
        finally:
            c.close()
        out.flush()
    except HelperError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except BrokenPipeError:
        sys.stderr.write("output closed early\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[2:]))
