"""The SSH runner against a real OpenSSH sshd on 127.0.0.1 (this machine is the remote host)."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from drkit.actions.backup import backup
from drkit.actions.repository_access import open_repository
from drkit.errors import SourceError
from drkit.policy.loader import load_policy
from drkit.policy.models import CommandConfig
from drkit.remote import ssh
from drkit.remote.ssh import SshRunner
from drkit.sources.base import pipe_into
from drkit.sources.command import CommandSource
from tests.helpers import drkit, toml_value, write_policy
from tests.servers.sshd import SshHost, sshd_server, sudo_missing_reason, temp_user

MB = 1_000_000
PATTERN = b"0123456789abcdef\n"


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def written(pid: int) -> int:
    """Bytes a (local = remote) process has written so far."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar")


def pattern_sha256(size: int) -> str:
    block = PATTERN * 100_000  # a whole number of patterns, so blocks concatenate
    sha = hashlib.sha256()
    for _ in range(size // len(block)):
        sha.update(block)
    sha.update(block[: size % len(block)])
    return sha.hexdigest()


def command_source(runner: SshRunner, argv: list[str], **config: Any) -> CommandSource:
    return CommandSource("dump", CommandConfig(kind="command", command=argv, **config), runner)


def read_artifact(source: CommandSource) -> bytes:
    artifact = next(source.artifacts())
    with artifact.open() as stream:
        return stream.read()


# ---- commands, exit codes, stdin -------------------------------------------------


def test_runs_commands_over_one_reused_connection(runner: SshRunner) -> None:
    res = runner.run(["sh", "-c", 'printf "%s|" "$@"; echo err >&2; exit 3', "sh", "a b", "c'd"])
    assert (res.returncode, res.stdout, res.stderr) == (3, b"a b|c'd|", "err\n")
    assert runner.run(["true"]).returncode == 0
    assert runner.check(["echo", "$HOME *"], what="echo") == b"$HOME *\n"  # no shell expansion
    # sshd's view of the client (address and source port) is the same TCP connection each time.
    seen = {runner.check(["printenv", "SSH_CONNECTION"], what="env") for _ in range(3)}
    assert len(seen) == 1


def test_nonzero_exit_fails_the_artifact_with_stderr_tail(runner: SshRunner) -> None:
    script = "echo partial; echo 'pg_dump: disk full' >&2; exit 2"
    source = command_source(runner, ["sh", "-c", script])
    with pytest.raises(SourceError) as err:
        read_artifact(source)
    msg = str(err.value)
    assert "host testhost" in msg and "exited with status 2" in msg
    assert "pg_dump: disk full" in msg


def test_remote_signal_is_a_negative_status(runner: SshRunner) -> None:
    assert runner.run(["sh", "-c", "kill -TERM $$"]).returncode == -15


def test_stdin_round_trip(runner: SshRunner) -> None:
    small = b"line one\n\x00binary\xff\nno newline"
    assert runner.run(["cat"], input=small).stdout == small
    # Large input streams both ways at once (stdout read in a thread by pipe_into).
    data = os.urandom(20 * MB)
    out = pipe_into(runner, ["sha256sum"], io.BytesIO(data), what="test")
    assert out.split()[0] == hashlib.sha256(data).hexdigest()
    # env travels ahead of stdin on the same channel: it must not leak into the data.
    assert runner.run(["cat"], input=small, env={"X": "1"}).stdout == small


# ---- streaming: throughput, backpressure, memory ---------------------------------


def test_streams_200mb_with_backpressure_and_bounded_memory(
    runner: SshRunner, sshd: SshHost
) -> None:
    size = 200 * MB
    argv = ["sh", "-c", f"yes 0123456789abcdef | head -c {size}"]
    proc = runner.start(argv)
    tracemalloc.start()
    try:
        first = proc.stdout.read(1)
        producer = wait_for(lambda: sshd.find_command(["head", "-c", str(size)]))
        # Nothing is read for a while: the remote side must be held back, not buffered here.
        time.sleep(0.5)
        held = written(producer)
        time.sleep(0.7)
        assert written(producer) == held, "the remote command kept writing: no backpressure"
        assert held < 16 * MB
        sha = hashlib.sha256(first)
        total = len(first)
        t0 = time.monotonic()
        while chunk := proc.stdout.read(256 << 10):
            sha.update(chunk)
            total += len(chunk)
        seconds = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert proc.wait() == 0
    assert total == size
    assert sha.hexdigest() == pattern_sha256(size)
    print(f"\nssh stream: {size / seconds / MB:.0f} MB/s, traced peak {peak / 2**20:.1f} MiB")
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MiB buffered"
    assert size / seconds > 20 * MB  # a floor for regressions; loopback gives 150+ MB/s


# ---- faults ----------------------------------------------------------------------


def test_connection_killed_mid_stream_raises_never_a_clean_eof(
    runner: SshRunner, sshd: SshHost
) -> None:
    argv = ["head", "-c", str(1000 * MB), "/dev/zero"]
    source = command_source(runner, argv)
    artifact = next(source.artifacts())
    total = 0
    # The error comes mid-read, after 20 MB: the read loop is the statement under test.
    with pytest.raises(SourceError) as err, artifact.open() as stream:  # noqa: PT012
        while chunk := stream.read(256 << 10):
            total += len(chunk)
            if total >= 20 * MB and sshd.find_command(argv):
                assert sshd.drop_connections() > 0
    assert 20 * MB <= total < 1000 * MB
    msg = str(err.value)
    assert "host testhost" in msg and "head -c" in msg
    # The runner reconnects for the next command.
    assert runner.run(["echo", "back"]).stdout == b"back\n"


def test_silent_peer_is_noticed_by_keepalive(
    make_runner: Any, sshd: SshHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh, "KEEPALIVE_INTERVAL", 0.5)
    monkeypatch.setattr(ssh, "KEEPALIVE_COUNT_MAX", 2)
    with sshd_server() as server:  # its own server: it is frozen below
        known = server.write_known_hosts(server.base / "kh")
        runner = make_runner(server, known_hosts=str(known))
        argv = ["head", "-c", str(1000 * MB), "/dev/zero"]
        proc = runner.start(argv)
        assert proc.stdout.read(MB)
        frozen = server.signal_connections(signal.SIGSTOP)  # no FIN, no RST: just silence
        try:
            t0 = time.monotonic()
            with pytest.raises(SourceError, match="connection lost"):  # noqa: PT012 (mid-read)
                while proc.stdout.read(256 << 10):
                    pass
            assert time.monotonic() - t0 < 15
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            runner.close()


def test_dropped_connection_commits_no_snapshot(
    tmp_path: Path, keys: Any, runner: SshRunner, sshd: SshHost
) -> None:
    argv = ["head", "-c", str(2000 * MB), "/dev/zero"]
    policy = load_policy(
        write_policy(
            tmp_path / "h.toml",
            "remote1",
            {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient],
            [{"kind": "command", "name": "dump", "command": argv}],
        )
    )
    repo = open_repository(policy, signing=True)

    def cut() -> None:
        pid = wait_for(lambda: sshd.find_command(argv))
        wait_for(lambda: written(pid) > 30 * MB, timeout=30)
        sshd.drop_connections()

    killer = threading.Thread(target=cut, daemon=True)
    killer.start()
    with pytest.raises(SourceError, match="host testhost"):
        backup(policy, repo, runner=runner)
    killer.join(timeout=30)
    assert not [s for s in repo.snapshots("remote1") if s.committed]
    assert list(repo.store.list("remote1/")) == []


def test_source_timeout_kills_the_remote_command(runner: SshRunner, sshd: SshHost) -> None:
    source = command_source(runner, ["sleep", "37"], timeout="1s")
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="timed out"):
        read_artifact(source)
    assert time.monotonic() - t0 < 10
    wait_for(lambda: sshd.find_command(["sleep", "37"]) is None)


def test_connect_timeout(make_runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssh, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as silent:  # accepts TCP, never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="cannot connect: timed out"):
            make_runner(port=port).run(["true"])
        assert time.monotonic() - t0 < 10


# ---- host keys -------------------------------------------------------------------


def test_unknown_host_key_is_refused_with_its_fingerprint(
    make_runner: Any, sshd: SshHost, tmp_path: Path
) -> None:
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    with pytest.raises(SourceError) as err:
        make_runner(known_hosts=str(known)).run(["true"])
    msg = str(err.value)
    assert "unknown host key" in msg and sshd.fingerprint in msg
    assert "accept_new_host_key" in msg and "host testhost" in msg
    assert known.read_text() == ""
    assert sshd.find_command(["true"]) is None


def test_a_known_hosts_file_that_is_not_text_is_refused_naming_it(
    make_runner: Any, sshd: SshHost, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    content = b"\xff\xfe not text\n"
    known.write_bytes(content)
    with pytest.raises(SourceError) as err:  # was: a UnicodeDecodeError traceback
        make_runner(known_hosts=str(known), accept_new_host_key=True).run(["true"])
    msg = str(err.value)
    assert f"known_hosts file {known} cannot be read: not UTF-8 text" in msg, msg
    assert known.read_bytes() == content  # nothing appended to a file it could not read
    assert sshd.find_command(["true"]) is None


def test_accept_new_host_key_accepts_once_and_records_it(
    make_runner: Any, sshd: SshHost, tmp_path: Path
) -> None:
    known = tmp_path / "new" / "known_hosts"
    r1 = make_runner(known_hosts=str(known), accept_new_host_key=True)
    assert r1.run(["echo", "ok"]).stdout == b"ok\n"
    assert known.read_text() == sshd.known_hosts_line()
    assert known.stat().st_mode & 0o777 == 0o600
    # Now a plain runner trusts it, and accepting again adds nothing.
    assert make_runner(known_hosts=str(known)).run(["true"]).returncode == 0
    make_runner(known_hosts=str(known), accept_new_host_key=True).run(["true"])
    assert known.read_text() == sshd.known_hosts_line()


def test_changed_host_key_is_refused_even_with_accept_new(
    make_runner: Any, sshd: SshHost, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    old = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    known = sshd.write_known_hosts(tmp_path / "known_hosts", key=old)
    with pytest.raises(SourceError) as err:
        make_runner(known_hosts=str(known), accept_new_host_key=True).run(["true"])
    msg = str(err.value)
    assert "CHANGED" in msg and sshd.fingerprint in msg and "ssh-keygen -R" in msg
    assert known.read_text() == sshd.known_hosts_line(old)


def test_jump_host(make_runner: Any, sshd: SshHost, tmp_path: Path) -> None:
    with sshd_server(client_key=sshd.identity_file) as jump:
        known = tmp_path / "kh"
        known.write_text(sshd.known_hosts_line() + jump.known_hosts_line())
        runner = make_runner(known_hosts=str(known), jump=f"root@127.0.0.1:{jump.port}")
        assert runner.run(["echo", "via jump"]).stdout == b"via jump\n"
        assert len(jump.session_pids()) == 1  # the connection went through the jump host
        runner.close()


# ---- sudo and env ----------------------------------------------------------------


@pytest.fixture
def sudo() -> None:
    reason = sudo_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.usefixtures("sudo")
def test_sudo_runs_as_the_source_user(runner: SshRunner) -> None:
    assert runner.run(["id", "-un"], user="nobody").stdout == b"nobody\n"
    assert runner.run(["id", "-un"], user="root").stdout == b"root\n"  # the login user: no sudo


@pytest.mark.usefixtures("sudo")
def test_sudo_that_needs_a_password_fails_fast_and_clearly(make_runner: Any) -> None:
    with temp_user(sudoers="ALL=(ALL) ALL") as login:
        runner = make_runner(user=login)
        assert runner.run(["id", "-un"]).stdout == login.encode() + b"\n"
        source = command_source(runner, ["pg_dumpall", "-g"], sudo_user="postgres")
        t0 = time.monotonic()
        with pytest.raises(SourceError) as err:
            read_artifact(source)
        assert time.monotonic() - t0 < 10
        msg = str(err.value)
        assert "host testhost" in msg and "sudo -u postgres" in msg and "needs a password" in msg
        assert f"login user {login}" in msg and "NOPASSWD" in msg
        runner.close()


@pytest.mark.usefixtures("sudo")
def test_passwordless_sudo_from_a_non_root_login(make_runner: Any) -> None:
    with temp_user(sudoers="ALL=(ALL) NOPASSWD: ALL") as login:
        runner = make_runner(user=login)
        assert runner.run(["id", "-un"], user="root").stdout == b"root\n"
        runner.close()


@pytest.mark.parametrize("user", [None, "nobody"])
def test_env_secret_reaches_the_command_but_no_process_list(
    runner: SshRunner, sshd: SshHost, user: str | None
) -> None:
    if user and sudo_missing_reason():
        pytest.skip(sudo_missing_reason() or "")
    secret = "pw-" + os.urandom(6).hex() + ' it\'s "quoted" $HOME `x`\nline2'
    env = {"PGPASSWORD": secret, "OTHER": "1"}
    assert runner.run(["printenv", "PGPASSWORD"], env=env, user=user).stdout == (
        secret.encode() + b"\n"
    )
    proc = runner.start(["sleep", "2.5"], env=env, user=user)
    pid = wait_for(lambda: sshd.find_command(["sleep", "2.5"]))
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert f"PGPASSWORD={secret}".encode() in environ.split(b"\0")
    # Every command line on the machine (sshd, login shell, sudo, wrapper, command):
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert secret.split()[0].encode() not in cmdline, cmdline
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert secret.split()[0] not in ps
    assert proc.wait() == 0
    assert secret.split()[0] not in sshd.log()


# ---- end to end: the real CLI with [connection] type = "ssh" --------------------


def test_cli_backup_and_restore_over_ssh(tmp_path: Path, keys: Any, sshd: SshHost) -> None:
    apps = tmp_path / "root"
    secret = "sk-live-" + os.urandom(8).hex()
    for app in ["voice-pipeline", "db-proxy"]:
        (apps / app).mkdir(parents=True)
        (apps / app / ".env").write_text(f"API_KEY={secret}\nAPP={app}\n")
        (apps / app / ".env").chmod(0o600)
    data = tmp_path / "appdata.bin"
    data.write_bytes(os.urandom(3 * MB))
    restored = tmp_path / "restored.bin"
    known = sshd.write_known_hosts(tmp_path / "known_hosts")
    conn = sshd.connection(known_hosts=str(known))
    policy = write_policy(
        tmp_path / "sshbox.toml",
        "sshbox",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {"kind": "env", "name": "env-files", "paths": [f"{apps}/*/.env"]},
            {
                "kind": "command",
                "name": "appdata",
                "command": ["cat", str(data)],
                "restore_command": ["sh", "-c", f"cat > {restored}"],
            },
        ],
        extra="[connection]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in conn.items()),
    )
    logins = sshd.log().count("Accepted publickey")
    drkit("backup", "--policy", str(policy), check=True)
    assert sshd.log().count("Accepted publickey") > logins  # it went through sshd
    originals = {p: p.read_bytes() for p in apps.glob("*/.env")}
    for p in originals:
        p.unlink()
    logins = sshd.log().count("Accepted publickey")
    drkit(
        "restore",
        "--policy",
        str(policy),
        "--target",
        f"ssh://root@127.0.0.1:{sshd.port}",
        "--yes",
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    assert sshd.log().count("Accepted publickey") > logins
    for p, content in originals.items():
        assert p.read_bytes() == content
        assert p.stat().st_mode & 0o777 == 0o600
    assert restored.read_bytes() == data.read_bytes()


def test_cli_unknown_host_key_fails_the_backup(tmp_path: Path, keys: Any, sshd: SshHost) -> None:
    conn = sshd.connection(known_hosts=str(tmp_path / "nothing_known"))
    policy = write_policy(
        tmp_path / "sshbox.toml",
        "sshbox",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "x", "command": ["echo", "x"]}],
        extra="[connection]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in conn.items()),
    )
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1
    assert sshd.fingerprint in res.stderr and "accept_new_host_key" in res.stderr
    assert not (tmp_path / "nothing_known").exists()
