"""Which TCP ports processes listen on, read from ``/proc`` (no iproute2, no ``ss``).

``SCRIPT`` runs on the host (POSIX ``sh`` and ``awk``, nothing else) with the
pids to look at as arguments, and prints raw lines; everything else is parsed
here, in Python:

- ``proc <pid> <root>``: a process that is one of the given pids (``root`` is
  itself) or descends from one (``root`` is the nearest given ancestor), from
  the ppid field of every ``/proc/<pid>/stat``;
- ``parent <root> <ppid>``: the parent of a given pid (when it is not init):
  pm2's daemon, which holds the listening socket of a cluster-mode app (node's
  cluster module listens in the primary and hands connections to the workers);
- ``fdok <pid>`` then ``fd <pid> <link>`` per open file of that process
  (``socket:[<inode>]`` for sockets), or ``fderr <pid>`` when its ``fd``
  directory cannot be read (gone, or another user's);
- ``net <table> <line>``: a line of ``/proc/net/tcp`` or ``/proc/net/tcp6``
  in state ``0A`` (LISTEN), then ``netok <table>`` once the table was read.

A host without ``/proc/net/tcp`` (not Linux, or no access) prints no
``netok tcp``: ``ProcNet.readable`` is then false and nothing is known.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

LISTEN = "0A"  # the TCP state in /proc/net/tcp{,6}: include/net/tcp_states.h TCP_LISTEN

SCRIPT = r"""
procs=$(cat /proc/[0-9]*/stat 2>/dev/null | awk -v roots="$*" '
BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
{ pid = $1; s = $0; sub(/.*\) /, "", s); split(s, f, " "); parent[pid] = f[2] }
END {
    for (p in parent) {
        q = p; d = 0
        while (!(q in root) && (q in parent) && d < 100) { q = parent[q]; d++ }
        if (q in root) print "proc", p, q
    }
    for (q in root) if ((q in parent) && parent[q] > 1) print "parent", q, parent[q]
}')
[ -z "$procs" ] || printf '%s\n' "$procs"
for p in $(printf '%s\n' "$procs" | awk '
    $1 == "proc" { k = $2 } $1 == "parent" { k = $3 } k != "" && !(k in seen) { seen[k]; print k }
'); do
    if out=$(ls -l "/proc/$p/fd" 2>/dev/null); then
        echo "fdok $p"
        printf '%s\n' "$out" | awk -v p="$p" '/ -> / { print "fd", p, $NF }'
    else
        echo "fderr $p"
    fi
done
for t in tcp tcp6; do
    [ -r "/proc/net/$t" ] || continue
    awk -v t="$t" '$4 == "0A" { print "net", t, $0 }' "/proc/net/$t" && echo "netok $t"
done
true
"""


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket: its local address and port, and its socket inode."""

    address: str
    port: int
    inode: int


@dataclass
class ProcNet:
    """What ``SCRIPT`` printed, parsed."""

    listeners: list[Listener] = field(default_factory=list)
    tables: set[str] = field(default_factory=set)  # "tcp", "tcp6": read whole
    sockets: dict[int, set[int]] = field(default_factory=dict)  # pid -> socket inodes
    denied: set[int] = field(default_factory=set)  # pids whose fd directory was not read
    root_of: dict[int, int] = field(default_factory=dict)  # pid -> the given pid it is under
    parent_of: dict[int, int] = field(default_factory=dict)  # given pid -> its parent

    @property
    def readable(self) -> bool:
        """/proc/net/tcp was read (tcp6 is absent where IPv6 is off)."""
        return "tcp" in self.tables

    def ports(self) -> set[int]:
        """Every port some process listens on (any address, IPv4 or IPv6)."""
        return {sock.port for sock in self.listeners}

    def tree_sockets(self, root: int) -> set[int] | None:
        """Socket inodes of ``root`` and its descendants; None when ``root`` itself was
        not read (gone, or its fd directory not readable)."""
        if root not in self.sockets:
            return None
        out: set[int] = set()
        for pid, top in self.root_of.items():
            if top == root:
                out |= self.sockets.get(pid, set())
        return out

    def ports_of(self, inodes: Iterable[int]) -> set[int]:
        """The listening ports among these socket inodes."""
        wanted = set(inodes)
        return {sock.port for sock in self.listeners if sock.inode in wanted}


def parse(output: bytes) -> ProcNet:
    """Parse ``SCRIPT``'s output; lines that do not parse are skipped."""
    net = ProcNet()
    for raw in output.decode("utf-8", "replace").splitlines():
        kind, _, rest = raw.partition(" ")
        words = rest.split()
        try:
            if kind == "proc" and len(words) == 2:
                net.root_of[int(words[0])] = int(words[1])
            elif kind == "parent" and len(words) == 2:
                net.parent_of[int(words[0])] = int(words[1])
            elif kind == "fdok" and len(words) == 1:
                net.sockets.setdefault(int(words[0]), set())
            elif kind == "fderr" and len(words) == 1:
                net.denied.add(int(words[0]))
            elif kind == "fd" and len(words) == 2:
                inode = socket_inode(words[1])
                if inode is not None:
                    net.sockets.setdefault(int(words[0]), set()).add(inode)
            elif kind == "net" and words and words[0] in ("tcp", "tcp6"):
                sock = parse_tcp_line(rest.partition(" ")[2])
                if sock is not None:
                    net.listeners.append(sock)
            elif kind == "netok" and len(words) == 1:
                net.tables.add(words[0])
        except ValueError:
            continue
    return net


def socket_inode(link: str) -> int | None:
    """The inode in a ``/proc/<pid>/fd`` link ``socket:[12345]``, else None."""
    if link.startswith("socket:[") and link.endswith("]") and link[8:-1].isdigit():
        return int(link[8:-1])
    return None


def parse_tcp_line(line: str) -> Listener | None:
    """A ``/proc/net/tcp`` or ``tcp6`` line in state LISTEN, else None (the header,
    other states, malformed lines)."""
    f = line.split()
    if len(f) < 10 or f[3] != LISTEN or ":" not in f[1]:
        return None
    addr_hex, _, port_hex = f[1].rpartition(":")
    try:
        return Listener(hex_address(addr_hex), int(port_hex, 16), int(f[9]))
    except ValueError:
        return None


def hex_address(text: str) -> str:
    """The kernel's hex address: 32-bit words, each in host order (little-endian on
    every platform drkit targets): ``0100007F`` is 127.0.0.1."""
    if len(text) not in (8, 32):
        raise ValueError(f"not an IPv4 or IPv6 address: {text}")
    raw = bytes.fromhex(text)
    data = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(data))


def app_ports(
    net: ProcNet, apps: Mapping[str, Iterable[tuple[int, bool]]]
) -> tuple[dict[str, list[int]], list[str]]:
    """The ports each app listens on, and notes on the apps that could not be told.

    ``apps``: app name -> its processes, (pid, cluster mode). An app's ports are those
    of the sockets of its processes and their descendants; a cluster-mode app's also
    those its processes' parent (pm2's daemon) listens on, when it is the only
    cluster-mode app of that parent (the sockets do not say which app they serve).
    An app none of whose processes could be read is left out, with a note.
    """
    if not net.readable:
        return {}, ["/proc/net/tcp could not be read"]
    clusters: dict[int, set[str]] = {}
    for name, procs in apps.items():
        for pid, cluster in procs:
            parent = net.parent_of.get(pid)
            if cluster and parent is not None:
                clusters.setdefault(parent, set()).add(name)
    ports: dict[str, list[int]] = {}
    notes = []
    for name, procs in apps.items():
        found: set[int] = set()
        read = False
        shared: set[str] = set()
        for pid, cluster in procs:
            inodes = net.tree_sockets(pid)
            if inodes is None:
                continue
            read = True
            found |= net.ports_of(inodes)
            parent = net.parent_of.get(pid)
            if cluster and parent is not None:
                others = clusters.get(parent, set()) - {name}
                held = net.sockets.get(parent)
                if others:
                    shared |= others
                elif held is not None:
                    found |= net.ports_of(held)
        if not read:
            pids = ", ".join(str(pid) for pid, _ in procs) or "none"
            notes.append(f"app {name}: the open files of its processes (pid {pids}) not readable")
        elif shared and not found:
            notes.append(
                f"app {name}: cluster mode, like {', '.join(sorted(shared))}: pm2's daemon "
                "holds their listening sockets and which port is whose is not known"
            )
        else:
            ports[name] = sorted(found)
    return ports, notes


def port_list(ports: Iterable[int]) -> str:
    """``:3000, :3001``."""
    return ", ".join(f":{p}" for p in sorted(ports))
