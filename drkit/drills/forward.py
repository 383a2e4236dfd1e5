"""Publish an isolated container's ports on 127.0.0.1 from drkit itself.

Docker does not publish ports of a container on an ``--internal`` network
(the kind that cannot reach anything beyond this machine), so a drill
container there is reachable only at its address on that network. A
``PortForwarder`` listens on an ephemeral 127.0.0.1 port per container port
and relays each connection to ``<container address>:<port>``, as Docker's
own ``docker-proxy`` does for published ports. It lives as long as the
drill process (threads, daemonic); ``close()`` stops it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Sequence

from drkit.drills.engine import DockerError

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024


class PortForwarder:
    """Relays ``127.0.0.1:<ports[p]>`` to ``target:p`` for each container port ``p``.

    Given the target address (the container's on its network), the ports to
    forward and a label for errors. ``ports`` maps container port -> local
    port once constructed. Raises ``DockerError`` if a local port cannot be bound.
    """

    def __init__(self, target: str, ports: Sequence[int], label: str) -> None:
        self.target = target
        self.label = label
        self.ports: dict[int, int] = {}
        self._listeners: list[socket.socket] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        try:
            for port in ports:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((LOOPBACK, 0))
                listener.listen(16)
                self._listeners.append(listener)
                self.ports[port] = listener.getsockname()[1]
                threading.Thread(
                    target=self._accept, args=(listener, port), daemon=True,
                    name=f"drkit-forward-{port}",
                ).start()  # fmt: skip
        except OSError as exc:
            self.close()
            raise DockerError(f"{label}: cannot listen on {LOOPBACK}: {exc}") from None

    def _accept(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by close()
                return
            threading.Thread(
                target=self._serve, args=(client, port), daemon=True,
                name=f"drkit-forward-{port}-conn",
            ).start()  # fmt: skip

    def _serve(self, client: socket.socket, port: int) -> None:
        try:
            upstream = socket.create_connection((self.target, port), timeout=CONNECT_TIMEOUT)
        except OSError:
            client.close()  # the client sees the connection close, as with no listener
            return
        upstream.settimeout(None)
        with self._lock:
            if self._closed:
                client.close()
                upstream.close()
                return
            self._open.update((client, upstream))
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    def close(self) -> None:
        """Stop listening and cut every open connection; idempotent."""
        with self._lock:
            self._closed = True
            sockets = [*self._listeners, *self._open]
            self._listeners, self._open = [], set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst`` (SSH needs the other way open)."""
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
