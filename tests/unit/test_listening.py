"""``drkit.sources.listening``: listening TCP ports read from /proc, without iproute2.

The parsing runs on sample /proc contents (lines as the kernel writes them); the
script itself runs once on this machine against sockets the test opens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from drkit.sources.listening import (
    SCRIPT,
    Listener,
    ProcNet,
    app_ports,
    hex_address,
    parse,
    parse_tcp_line,
    port_list,
    socket_inode,
)

# /proc/net/tcp: a LISTEN socket on 127.0.0.1:38111 (0x94DF), one on 0.0.0.0:2024, and
# sockets in other states that must not count: ESTABLISHED (01) and TIME_WAIT (06).
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:94DF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 262117 1 0000000000000000 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1356 1 0000000000000000 100 0 0 10 0
   2: 0100007F:94DF 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 262200 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:C351 06 00000000:00000000 03:00000B2D 00000000     0        0 0 3 0000000000000000
"""  # noqa: E501
# /proc/net/tcp6: LISTEN on [::1]:38223 (0x954F) and on [::]:8443 (0x20FB); one ESTABLISHED.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:954F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 272965 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 272999 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000001000000:954F 00000000000000000000000001000000:D000 01 00000000:00000000 00:00000000 00000000     0        0 273001 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501


def script_output(
    *,
    fds: dict[int, list[str]],
    procs: dict[int, int],
    parents: dict[int, int],
    denied: tuple[int, ...] = (),
    tcp6: bool = True,
) -> bytes:
    """What SCRIPT prints for these processes (pid -> fd links), ``procs`` (pid -> the
    given pid it is under), ``parents`` and the sample tables (LISTEN lines only, as
    the script's awk keeps; the parser must still drop other states)."""
    lines = [f"proc {pid} {root}" for pid, root in procs.items()]
    lines += [f"parent {root} {ppid}" for root, ppid in parents.items()]
    for pid, links in fds.items():
        lines.append(f"fdok {pid}")
        lines += [f"fd {pid} {link}" for link in links]
    lines += [f"fderr {pid}" for pid in denied]
    tables = [("tcp", TCP), ("tcp6", TCP6)] if tcp6 else [("tcp", TCP)]
    for table, text in tables:
        lines += [f"net {table} {ln}" for ln in text.splitlines()[1:]]
        lines.append(f"netok {table}")
    return ("\n".join(lines) + "\n").encode()


def test_tcp_lines_ipv4_and_ipv6_listen_only() -> None:
    v4 = [parse_tcp_line(ln) for ln in TCP.splitlines()]
    assert v4 == [
        None,  # the header
        Listener("127.0.0.1", 38111, 262117),
        Listener("0.0.0.0", 2024, 1356),
        None,  # ESTABLISHED on the same port
        None,  # TIME_WAIT
    ]
    v6 = [parse_tcp_line(ln) for ln in TCP6.splitlines()]
    assert v6 == [None, Listener("::1", 38223, 272965), Listener("::", 8443, 272999), None]
    assert parse_tcp_line("   0: garbage") is None
    assert parse_tcp_line("   0: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 1") is None


def test_hex_addresses_are_words_in_host_order() -> None:
    assert hex_address("0100007F") == "127.0.0.1"
    assert hex_address("0101A8C0") == "192.168.1.1"
    assert hex_address("00000000000000000000000001000000") == "::1"
    # 2001:db8::1 as the kernel prints it: each 32-bit word little-endian.
    assert hex_address("B80D0120000000000000000001000000") == "2001:db8::1"
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address: 7F0001"):
        hex_address("7F0001")


def test_socket_inodes_from_fd_links() -> None:
    assert socket_inode("socket:[262117]") == 262117
    assert socket_inode("pipe:[262117]") is None
    assert socket_inode("/dev/null") is None
    assert socket_inode("socket:[]") is None


def test_ports_are_matched_to_processes_by_socket_inode() -> None:
    # Two apps: 100 listens on :38111 itself; 200's child 201 listens on [::1]:38223
    # (fork mode spawning a server). An ESTABLISHED socket (262200) on :38111 held by
    # 200 does not make 200 a listener of :38111.
    out = script_output(
        fds={
            100: ["/dev/null", "socket:[262117]", "pipe:[9]"],
            200: ["socket:[262200]"],
            201: ["socket:[272965]"],
        },
        procs={100: 100, 200: 200, 201: 200},
        parents={100: 50, 200: 50},
    )
    net = parse(out)
    assert net.readable and net.tables == {"tcp", "tcp6"}
    assert net.ports() == {38111, 2024, 38223, 8443}
    assert net.tree_sockets(100) == {262117}
    assert net.tree_sockets(200) == {262200, 272965}
    assert net.ports_of({262200, 272965}) == {38223}
    ports, notes = app_ports(net, {"web": [(100, False)], "api": [(200, False)]})
    assert ports == {"web": [38111], "api": [38223]} and notes == []


def test_an_app_that_listens_on_nothing_records_no_port() -> None:
    net = parse(script_output(fds={100: ["socket:[262200]"]}, procs={100: 100}, parents={}))
    assert app_ports(net, {"worker": [(100, False)]}) == ({"worker": []}, [])


def test_cluster_mode_port_is_held_by_the_daemon() -> None:
    """node's cluster module listens in the primary (pm2's daemon, pid 50): the workers
    hold no listening socket. With one cluster-mode app the daemon's listeners are its."""
    out = script_output(
        fds={101: ["socket:[5]"], 102: ["socket:[6]"], 50: ["socket:[262117]", "socket:[7]"]},
        procs={101: 101, 102: 102},
        parents={101: 50, 102: 50},
    )
    net = parse(out)
    ports, notes = app_ports(net, {"web": [(101, True), (102, True)]})
    assert ports == {"web": [38111]} and notes == []
    # A fork-mode app of the same daemon does not get the daemon's sockets.
    ports, _ = app_ports(net, {"web": [(101, False)]})
    assert ports == {"web": []}
    # Two cluster-mode apps: the daemon's sockets do not say whose port is whose.
    ports, notes = app_ports(net, {"web": [(101, True)], "api": [(102, True)]})
    assert ports == {}
    assert len(notes) == 2 and all("cluster mode" in n for n in notes)
    assert "app web" in notes[0] and "api" in notes[0]


def test_unreadable_processes_and_tables_record_nothing() -> None:
    out = script_output(
        fds={100: ["socket:[262117]"]}, procs={100: 100, 300: 300}, parents={}, denied=(300,)
    )
    net = parse(out)
    assert net.denied == {300} and net.tree_sockets(300) is None
    # 400 was not found at all (it exited before the script ran).
    ports, notes = app_ports(
        net, {"web": [(100, False)], "other": [(300, False)], "gone": [(400, False)]}
    )
    assert ports == {"web": [38111]}
    assert [n.split(":")[0] for n in notes] == ["app other", "app gone"]
    # No IPv6 table (IPv6 off): still readable.
    assert parse(script_output(fds={}, procs={}, parents={}, tcp6=False)).readable
    # No /proc/net/tcp (not Linux, or no access): nothing is known, and it says so.
    for text in (b"", b"proc 100 100\nfdok 100\nfd 100 socket:[262117]\n"):
        net = parse(text)
        assert not net.readable
        assert app_ports(net, {"web": [(100, False)]}) == (
            {},
            ["/proc/net/tcp could not be read"],
        )


def test_malformed_lines_are_skipped() -> None:
    net = parse(b"proc x y\nfd 1\nnet udp 0: 0100007F:94DF\nnetok tcp\n\xff\xfe\nfdok 1\n")
    assert net.readable and net.root_of == {} and net.sockets == {1: set()}
    assert net.listeners == []


def test_port_list() -> None:
    assert port_list([3001, 3000]) == ":3000, :3001"


def test_script_reads_this_machine() -> None:
    """SCRIPT (sh + awk, no iproute2) on real processes: this test's own listening
    socket, and a child's on IPv6 (a descendant of the given pid)."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp")
    v4 = socket.socket()
    v4.bind(("127.0.0.1", 0))
    v4.listen()
    connected = socket.create_connection(v4.getsockname())  # ESTABLISHED: not a listener
    child_code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.bind(('::1', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
    )
    if not socket.has_ipv6 or not os.path.exists("/proc/net/tcp6"):
        child_code = child_code.replace("AF_INET6", "AF_INET").replace("'::1'", "'127.0.0.1'")
    child = subprocess.Popen([sys.executable, "-c", child_code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child_port = int(child.stdout.readline())
        me = os.getpid()
        net = ProcNet()
        for _ in range(20):  # the child's socket is open once it printed its port
            out = subprocess.run(
                ["sh", "-c", SCRIPT, "sh", str(me)], capture_output=True, check=True, timeout=30
            ).stdout
            net = parse(out)
            if child_port in net.ports():
                break
            time.sleep(0.1)
        assert net.readable and net.root_of[me] == me and net.root_of[child.pid] == me
        ports, notes = app_ports(net, {"tests": [(me, False)]})
        assert notes == []
        # (pytest itself may listen on more.)
        assert {v4.getsockname()[1], child_port} <= set(ports["tests"]), ports
        inode = socket_inode(os.readlink(f"/proc/self/fd/{connected.fileno()}"))
        assert inode in net.sockets[me]
        assert inode not in {sock.inode for sock in net.listeners}
    finally:
        child.kill()
        child.wait()
        connected.close()
        v4.close()
