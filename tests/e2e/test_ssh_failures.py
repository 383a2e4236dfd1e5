"""Failure paths over SSH through the real CLI, run with every Python warning an error.

Each case must end with one clear message and its documented exit code: no
warning (``coroutine ... was never awaited``, unclosed resources), no traceback.
Host key refusals name the key type the server offered, its fingerprint, and
what to change in the terms of the command in use (policy setting or flag).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CliResult, drkit, toml_value, write_policy
from tests.servers.ports import free_port
from tests.servers.sshd import SshHost, sshd_server

WARNING = re.compile(r"[A-Z]\w*Warning\b|never awaited")
NOISE = re.compile(WARNING.pattern + r"|Traceback|Exception ignored")
READER_TRACEBACK = 'drkit/sources/base.py", line'


def strict(*args: str) -> CliResult:
    """The real CLI under ``python -W error``: a warning anywhere is an error."""
    res = subprocess.run(
        [sys.executable, "-W", "error", "-m", "drkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        timeout=300,
    )
    return CliResult(res.returncode, res.stdout, res.stderr)


def assert_clean_failure(res: CliResult, code: int, *expected: str) -> None:
    assert res.returncode == code, res.output
    assert not NOISE.search(res.stderr), res.stderr
    for text in expected:
        assert text in res.stderr, res.stderr


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True, capture_output=True
    )
    return path


def random_bytes(size: int) -> list[str]:
    return ["head", "-c", str(size), "/dev/urandom"]


def connection_table(server: SshHost, known: Path) -> str:
    conn = server.connection(known_hosts=str(known))
    return "[connection]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in conn.items())


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshHost]:
    with sshd_server() as host:
        yield host


@pytest.fixture
def box(tmp_path: Path, keys: Any) -> dict[str, Any]:
    """A policy backed up on this machine (local), restored onto ``--target`` in the tests.

    ``blob``: 8 MB piped into a restore command that waits (long enough to cut the
    connection) before it reads; ``fails``: a restore command that exits 3 unread;
    ``conf``: a file, whose plan looks at the target.
    """
    marker = tmp_path / "restore-started"
    (tmp_path / "app.conf").write_text("listen 8080\n")
    policy = write_policy(
        tmp_path / "sshbox.toml",
        "sshbox",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {
                "kind": "command",
                "name": "blob",
                "command": random_bytes(8_000_000),
                "restore_command": ["sh", "-c", f"touch {marker}; sleep 60; cat >/dev/null"],
            },
            {
                "kind": "command",
                "name": "fails",
                "command": random_bytes(4_000_000),
                "restore_command": ["sh", "-c", "echo no room >&2; exit 3"],
            },
            {"kind": "files", "name": "conf", "paths": [str(tmp_path / "app.conf")]},
        ],
    )
    drkit("backup", "--policy", str(policy), check=True)
    return {
        "policy": str(policy),
        "marker": marker,
        "ident": str(keys.identity_file),
        "dest": str(tmp_path / "dest"),
    }


def target_args(box: dict[str, Any], server: SshHost, known: Path, *extra: str) -> list[str]:
    return [
        "restore",
        "--policy",
        box["policy"],
        "--identity",
        box["ident"],
        "--target",
        f"ssh://root@127.0.0.1:{server.port}",
        "--target-identity",
        str(server.identity_file),
        "--target-known-hosts",
        str(known),
        *extra,
    ]


# ---- host keys: the key offered and the flag that applies ------------------------


def test_restore_target_unknown_rsa_host_key_names_rsa_and_the_flags(
    tmp_path: Path, box: dict[str, Any]
) -> None:
    host_key = keygen(tmp_path / "host_rsa", "rsa")
    with sshd_server(host_key=host_key) as server:
        assert server.host_public_key.startswith("ssh-rsa ")
        known = tmp_path / "target_known_hosts"
        plan = ("--plan", "--only", "conf", "--dest", box["dest"])
        res = strict(*target_args(box, server, known, *plan))
        assert_clean_failure(
            res,
            1,
            "REFUSED: unknown host key ssh-rsa",
            server.fingerprint,
            "ssh-keygen -lf /etc/ssh/ssh_host_rsa_key.pub",
            "--accept-new-host-key",
            "--target-known-hosts",
        )
        assert "ed25519" not in res.stderr and "accept_new_host_key" not in res.stderr
        assert "[connection]" not in res.stderr
        assert not known.exists()

        # The flag it names works: the key is recorded, the plan is made.
        ok = strict(*target_args(box, server, known, *plan, "--accept-new-host-key"))
        assert ok.returncode == 0, ok.output
        assert known.read_text().split()[1:3] == server.host_public_key.split()

        # A changed key is refused naming the key offered and the same flag.
        other = keygen(tmp_path / "other_rsa", "rsa").with_suffix(".pub").read_text()
        known.write_text(server.known_hosts_line(" ".join(other.split()[:2])))
        res = strict(*target_args(box, server, known, *plan, "--accept-new-host-key"))
        assert_clean_failure(
            res,
            1,
            "CHANGED",
            "presents ssh-rsa",
            server.fingerprint,
            "ssh_host_rsa_key.pub",
            "ssh-keygen -R",
            "pass --accept-new-host-key",
        )
        assert "accept_new_host_key" not in res.stderr

        # Only a key of another type is known: the server has none such and hangs up
        # (asyncssh offers only known types); the message says what that likely means.
        ed = keygen(tmp_path / "other_ed", "ed25519").with_suffix(".pub").read_text()
        known.write_text(server.known_hosts_line(" ".join(ed.split()[:2])))
        res = strict(*target_args(box, server, known, *plan, "--accept-new-host-key"))
        assert_clean_failure(
            res,
            1,
            "cannot connect",
            "offered only the host key type(s)",
            "ssh-ed25519",
            "ssh-keygen -R",
            "pass --accept-new-host-key",
        )


def test_backup_unknown_host_key_names_the_policy_setting(
    tmp_path: Path, keys: Any, sshd: SshHost
) -> None:
    known = tmp_path / "nothing_known"
    policy = write_policy(
        tmp_path / "remote.toml",
        "remote",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "x", "command": ["echo", "x"]}],
        extra=connection_table(sshd, known),
    )
    res = strict("backup", "--policy", str(policy))
    assert_clean_failure(
        res,
        1,
        "unknown host key ssh-ed25519",
        sshd.fingerprint,
        "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
        "accept_new_host_key = true in the policy's [connection]",
    )
    assert "--accept-new-host-key" not in res.stderr
    assert not known.exists()


# ---- failure paths: one message, the exit code, no warning -----------------------


def test_restore_onto_an_unreachable_target(tmp_path: Path, box: dict[str, Any]) -> None:
    port = free_port()  # nothing listens there
    res = strict(
        "restore",
        "--policy",
        box["policy"],
        "--identity",
        box["ident"],
        "--yes",
        "--target",
        f"ssh://root@127.0.0.1:{port}",
        "--target-known-hosts",
        str(tmp_path / "kh"),
    )
    assert_clean_failure(res, 1, "host sshbox:", "cannot connect")


def test_restore_with_a_wrong_identity(tmp_path: Path, box: dict[str, Any], sshd: SshHost) -> None:
    known = sshd.write_known_hosts(tmp_path / "kh")
    stranger = keygen(tmp_path / "stranger")
    args = target_args(box, sshd, known, "--yes")
    args[args.index("--target-identity") + 1] = str(stranger)
    res = strict(*args)
    assert_clean_failure(res, 1, "login as root refused", str(stranger), "--target-identity")


def test_restore_command_failing_on_the_target(
    tmp_path: Path, box: dict[str, Any], sshd: SshHost
) -> None:
    """What the issue saw: this printed ``sys:1: RuntimeWarning: coroutine
    'SshSession.send' was never awaited`` (stdin's unflushed buffer, flushed at exit
    after the runner had closed its event loop)."""
    known = sshd.write_known_hosts(tmp_path / "kh")
    res = strict(*target_args(box, sshd, known, "--yes", "--only", "fails"))
    assert_clean_failure(res, 1, "exited with status 3: no room")


def test_restore_with_the_connection_dropped_mid_stream(
    tmp_path: Path, box: dict[str, Any]
) -> None:
    with sshd_server() as server:
        known = server.write_known_hosts(tmp_path / "kh")
        marker: Path = box["marker"]
        dropped: dict[str, int] = {}

        def drop_once_started() -> None:
            deadline = time.monotonic() + 120
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # the window fills: the writer waits on the server
            dropped["sessions"] = server.drop_connections()

        cutter = threading.Thread(target=drop_once_started, daemon=True)
        cutter.start()
        res = strict(*target_args(box, server, known, "--yes", "--only", "blob"))
        cutter.join(timeout=130)
        assert dropped.get("sessions"), res.output
        assert res.returncode == 1 and "host sshbox:" in res.stderr, res.output
        assert not WARNING.search(res.stderr), res.stderr
        # pipe_into's stdout reader leaves the lost connection to proc.wait() to report.
        assert READER_TRACEBACK not in res.stderr, res.stderr
        assert_clean_failure(res, 1, "connection")


def test_backup_of_a_host_whose_sshd_is_stopped(tmp_path: Path, keys: Any) -> None:
    with sshd_server(client_key=keygen(tmp_path / "login")) as server:
        known = server.write_known_hosts(tmp_path / "kh")
        table = connection_table(server, known)
    policy = write_policy(
        tmp_path / "gone.toml",
        "gone",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "x", "command": ["echo", "x"]}],
        extra=table,
    )
    res = strict("backup", "--policy", str(policy))
    assert_clean_failure(res, 1, "host gone:", "cannot connect")


def test_backup_with_the_connection_dropped_mid_stream(tmp_path: Path, keys: Any) -> None:
    marker = tmp_path / "dump-started"
    dump = f"head -c 3000000 /dev/urandom; touch {marker}; sleep 60"
    with sshd_server() as server:
        known = server.write_known_hosts(tmp_path / "kh")
        policy = write_policy(
            tmp_path / "cut.toml",
            "cut",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "command", "name": "dump", "command": ["sh", "-c", dump]}],
            extra=connection_table(server, known),
        )

        def drop_once_started() -> None:
            deadline = time.monotonic() + 120
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            server.drop_connections()

        cutter = threading.Thread(target=drop_once_started, daemon=True)
        cutter.start()
        res = strict("backup", "--policy", str(policy))
        cutter.join(timeout=130)
    assert marker.exists(), res.output
    assert_clean_failure(res, 1, "host cut:", "connection lost")
