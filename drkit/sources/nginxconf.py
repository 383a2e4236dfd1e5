"""The TLS server blocks of an nginx configuration, as ``nginx -T`` prints it.

Only what a probe needs: for each ``server { ... }`` that listens with ``ssl``,
its ``server_name``s, the port, and the ``ssl_certificate`` file. Read from
the restored target's ``nginx -T`` (every file of the configuration), so the
probe asks exactly what the restored nginx serves.

``nginx -T`` does not expand includes in place: it prints the main file as it
is (``include`` lines kept), then each included file after a ``# configuration
file PATH:`` line. The server blocks of ``sites-enabled/*`` (certbot's usual
layout) are therefore at the top level of their file's section, not inside
``http { }``: each section is read with an empty block stack, and a ``server``
block at the top of a section counts as well as one inside ``http``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The line ``nginx -T`` prints before each file of the configuration.
_FILE = re.compile(r"^# configuration file [^\n]*:$", re.MULTILINE)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|#[^\n]*|[{};]|[^\s{};]+')


@dataclass(frozen=True)
class TlsServer:
    names: tuple[str, ...]
    port: int
    certificate: str


def _statements(text: str) -> list[list[str] | str]:
    """Flat list: each directive's words, or "{" / "}" for block boundaries."""
    out: list[list[str] | str] = []
    words: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok.startswith("#"):
            continue
        if tok in ("{", "}", ";"):
            if words:
                out.append(words)
            words = []
            if tok != ";":
                out.append(tok)
            continue
        if tok[:1] in "\"'" and tok[-1:] == tok[:1] and len(tok) >= 2:
            tok = tok[1:-1]
        words.append(tok)
    return out


def tls_servers(text: str) -> list[TlsServer]:
    """Every server block that listens with ssl and names a certificate, in each file
    of ``text`` (``nginx -T``: the main file, then each included one)."""
    return [server for section in _FILE.split(text) for server in _section_servers(section)]


def _section_servers(text: str) -> list[TlsServer]:
    """The TLS server blocks of one file: inside ``http { }``, or at the file's top
    level (a file included from ``http``, e.g. ``sites-enabled/*``)."""
    servers: list[TlsServer] = []
    stack: list[str] = []  # the directive that opened each enclosing block
    current: dict[str, list[list[str]]] | None = None
    depth = 0  # len(stack) inside the current server block
    last: list[str] = []
    for st in _statements(text):
        if st == "{":
            stack.append(last[0] if last else "")
            if current is None and stack in (["http", "server"], ["server"]):
                current, depth = {}, len(stack)
            last = []
            continue
        if st == "}":
            if current is not None and len(stack) == depth:
                server = _server(current)
                if server:
                    servers.append(server)
                current = None
            if stack:
                stack.pop()
            last = []
            continue
        assert isinstance(st, list)
        last = st
        if current is not None and len(stack) == depth:
            current.setdefault(st[0], []).append(st[1:])
    return servers


def _server(directives: dict[str, list[list[str]]]) -> TlsServer | None:
    port = None
    for args in directives.get("listen", []):
        if "ssl" in args[1:] or "quic" in args[1:]:
            address = args[0] if args else ""
            tail = address.rsplit(":", 1)[-1] if ":" in address else address
            port = int(tail) if tail.isdigit() else 443
            break
    certs = directives.get("ssl_certificate", [])
    if port is None or not certs or not certs[0]:
        return None
    names = tuple(
        n.lower()
        for args in directives.get("server_name", [])
        for n in args
        if n and n != "_" and not n.startswith(("~", "*", ".")) and "$" not in n
    )
    return TlsServer(names, port, certs[0][0]) if names else None
