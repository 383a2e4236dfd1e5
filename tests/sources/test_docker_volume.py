"""``docker_volume`` against the real Docker engine: a volume with files, modes, owners,
links and binary content, read while its labelled container is stopped, then removed
and restored through the CLI.

Volumes and containers get unique names and are removed by name in ``finally``.
Off CI the tests skip when no engine can be started; in CI that is a failure.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import SourceError
from drkit.policy.models import DockerVolumeConfig as VolumeConfig
from drkit.remote.local import LocalRunner
from drkit.sources.docker_volume import DockerVolumeSource
from tests.helpers import drkit, toml_value, write_policy
from tests.servers.sshd import SshHost, sshd_server

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
MB = 1 << 20


@pytest.fixture(scope="module")
def base_image() -> Iterator[str]:
    """A running engine and the drill base image (built once, then found by its hash)."""
    from drkit.drills.engine import DockerError, ensure_engine, stop_engine
    from drkit.drills.images import ensure_base_image

    try:
        running = ensure_engine()
        tag = ensure_base_image().tag
    except DockerError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Docker tests, but: {exc}")
        pytest.skip(f"no Docker engine or base image here: {exc}")
    yield tag
    stop_engine(running)


def docker(*args: str, check: bool = True) -> str:
    from drkit.drills.engine import docker as run

    return run(*args, check=check, timeout=300).stdout.decode().strip()


def mountpoint(volume: str) -> Path:
    return Path(docker("volume", "inspect", "--format", "{{.Mountpoint}}", volume))


def state(container: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(docker("inspect", "--format", "{{json .State}}", container))
    return out


def moment(text: str) -> dt.datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python parses microseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, mode, owner ids and content or link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        rel = "/" + path.relative_to(root).as_posix() if path != root else "/"
        if stat.S_ISLNK(st.st_mode):
            body: Any = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            body = ("dir",)
        else:
            body = ("file", path.read_bytes())
        out[rel] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, *body)
    return out


@pytest.fixture
def volume(base_image: str) -> Iterator[dict[str, Any]]:
    """A volume with varied content and a running container labelled to be stopped."""
    uniq = secrets.token_hex(4)
    names = {
        "volume": f"drkit-test-vol-{uniq}",
        "container": f"drkit-test-app-{uniq}",
        "label": f"org.drkit.test.stop={uniq}",
    }
    try:
        docker(
            "volume",
            "create",
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.volume=data",
            names["volume"],
        )
        root = mountpoint(names["volume"])
        (root / "conf").mkdir(mode=0o750)
        (root / "conf" / "app.ini").write_text("[db]\nname = shop\n")
        (root / "conf" / "app.ini").chmod(0o640)
        (root / "pgdata" / "base").mkdir(parents=True)
        os.chown(root / "pgdata", 999, 999)
        (root / "pgdata").chmod(0o700)
        (root / "pgdata" / "base" / "16384").write_bytes(os.urandom(3 * MB) + bytes(range(256)))
        os.chown(root / "pgdata" / "base" / "16384", 999, 999)
        (root / "pgdata" / "base" / "16384").chmod(0o600)
        (root / "bin").mkdir()
        (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (root / "bin" / "run.sh").chmod(0o4755)
        (root / "empty").write_bytes(b"")
        (root / "current").symlink_to("pgdata/base/16384")
        (root / "dangling").symlink_to("/nowhere/at/all")
        (root / "name with spaces\tand tab").write_text("odd name\n")
        root.chmod(0o1777)
        docker(
            "run",
            "--detach",
            "--init",
            "--name",
            names["container"],
            "--label",
            names["label"],
            "-v",
            f"{names['volume']}:/data",
            base_image,
            "sleep",
            "infinity",
        )
        yield names
    finally:
        docker("rm", "--force", names["container"], check=False)
        docker("volume", "rm", "--force", names["volume"], check=False)


def policy_for(
    tmp_path: Path, keys: Any, names: dict[str, Any], ssh: SshHost | None = None, **extra: Any
) -> Path:
    # bin/run.sh is setuid: restoring that bit needs the policy's consent (#16).
    source = {
        "kind": "docker_volume",
        "name": "shopdata",
        "volume": names["volume"],
        "stop_label": names["label"],
        "allow_setid": True,
        **extra,
    }
    connection = ""
    if ssh is not None:  # the host reached over SSH (a local sshd), as in production
        conn = ssh.connection(known_hosts=str(ssh.write_known_hosts(tmp_path / "known_hosts")))
        connection = "[connection]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in conn.items())
    return write_policy(
        tmp_path / "dockerbox.toml",
        "dockerbox",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
        extra=connection,
    )


def test_backup_remove_restore_round_trip(
    tmp_path: Path, keys: Any, volume: dict[str, Any], snapshot_facts: Any
) -> None:
    policy = policy_for(tmp_path, keys, volume)
    root = mountpoint(volume["volume"])
    before = tree(root)
    started_before = moment(state(volume["container"])["StartedAt"])

    t0 = dt.datetime.now(dt.UTC)
    drkit("backup", "--policy", str(policy), check=True)
    t1 = dt.datetime.now(dt.UTC)
    # Stopped during the read, running again after.
    after = state(volume["container"])
    assert after["Running"]
    assert t0 < moment(after["FinishedAt"]) < t1
    assert moment(after["StartedAt"]) > max(moment(after["FinishedAt"]), started_before)

    facts = snapshot_facts(policy, "shopdata")
    assert facts["stopped"] == [volume["container"]]
    files = [v for v in before.values() if v[3] == "file"]
    assert facts["files"] == len(files) == 5
    assert facts["bytes"] == sum(len(v[4]) for v in files)
    assert facts["labels"]["com.docker.compose.project"] == "shop"
    assert facts["digest"] and not facts["truncated"]

    docker("rm", "--force", volume["container"])
    docker("volume", "rm", volume["volume"])
    res = drkit(
        "--json",
        "restore",
        "--policy",
        str(policy),
        "--yes",
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    out = json.loads(res.stdout)
    assert out["verdict"] == "pass", out
    assert any("identical to the backup" in c["detail"] for c in out["checks"])

    assert tree(mountpoint(volume["volume"])) == before
    labels = json.loads(
        docker("volume", "inspect", "--format", "{{json .Labels}}", volume["volume"])
    )
    assert labels == {"com.docker.compose.project": "shop", "com.docker.compose.volume": "data"}

    # A volume holding files is refused without --force; --force makes it equal the backup.
    (mountpoint(volume["volume"]) / "stray.log").write_text("written after the backup\n")
    (mountpoint(volume["volume"]) / "conf" / "app.ini").write_text("changed\n")
    refused = drkit(
        "restore", "--policy", str(policy), "--yes", "--identity", str(keys.identity_file)
    )
    assert refused.returncode != 0
    assert "holds files" in refused.stderr and "--force" in refused.stderr
    assert (mountpoint(volume["volume"]) / "stray.log").exists()
    drkit(
        "restore",
        "--policy",
        str(policy),
        "--yes",
        "--force",
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    assert tree(mountpoint(volume["volume"])) == before

    # Staged: the plan says where; a run killed between its two renames (the old tree
    # aside in the staging dir, the volume's directory gone) is put right first.
    data = mountpoint(volume["volume"])
    plan = drkit(
        "restore",
        "--policy",
        str(policy),
        "--plan",
        "--force-db",
        "--identity",
        str(keys.identity_file),
        check=True,
    ).stdout
    staged = [ln for ln in plan.splitlines() if "- stage " in ln]
    assert len(staged) == 1 and f"in {data.parent}/.drkit-staging-" in staged[0], plan
    stage = data.parent / staged[0].split(f"in {data.parent}/", 1)[1].split(" ", 1)[0]
    (data / "stray.log").write_text("the tree a killed restore had moved aside\n")
    stage.mkdir(mode=0o700)
    (stage / "new").mkdir()
    data.rename(stage / "old")
    drkit(
        "restore",
        "--policy",
        str(policy),
        "--yes",
        "--force-db",
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    assert tree(data) == before
    assert not [p for p in data.parent.iterdir() if p.name.startswith(".drkit-staging-")]


def test_check_names_a_file_that_differs(
    tmp_path: Path, keys: Any, volume: dict[str, Any], snapshot_facts: Any
) -> None:
    policy = policy_for(tmp_path, keys, volume)
    drkit("backup", "--policy", str(policy), check=True)
    dest = tmp_path / "elsewhere"
    res = drkit(
        "--json",
        "restore",
        "--policy",
        str(policy),
        "--yes",
        "--dest",
        str(dest),
        "--identity",
        str(keys.identity_file),
        check=True,
    )
    assert json.loads(res.stdout)["verdict"] == "pass"
    assert tree(dest / volume["volume"]) == tree(mountpoint(volume["volume"]))

    # The restore check is computed on the target: a changed byte shows, with its path.
    blob = dest / volume["volume"] / "pgdata" / "base" / "16384"
    data = bytearray(blob.read_bytes())
    data[MB] ^= 1
    blob.write_bytes(bytes(data))
    from drkit.policy.loader import load_policy
    from drkit.sources.base import RestoreOptions

    config = load_policy(policy).source[0]
    source = DockerVolumeSource("shopdata", config, LocalRunner("dockerbox"))
    facts = snapshot_facts(policy, "shopdata")
    [check] = source.check(facts, RestoreOptions(dest=str(dest)))
    assert check.status == "fail" and "/pgdata/base/16384" in check.detail


def test_failure_mid_read_starts_the_container_again(volume: dict[str, Any]) -> None:
    config = VolumeConfig(kind="docker_volume", volume=volume["volume"], stop_label=volume["label"])
    source = DockerVolumeSource("shopdata", config, LocalRunner("dockerbox"))
    artifact = next(source.artifacts())
    # The block stands for an upload failing mid-read, with the container stopped.
    with pytest.raises(RuntimeError, match="upload failed"), artifact.open() as stream:  # noqa: PT012
        assert stream.read(64 << 10)  # tar is mid-stream: 3 MiB are still to come
        assert not state(volume["container"])["Running"]
        raise RuntimeError("upload failed")
    assert state(volume["container"])["Running"]


def test_timeout_mid_read_through_the_cli_commits_nothing_and_restarts(
    tmp_path: Path, keys: Any, volume: dict[str, Any]
) -> None:
    # A sparse 64 GiB file: no disk used, but far more than tar reads in 2 s.
    with open(mountpoint(volume["volume"]) / "huge.img", "wb") as fh:
        fh.truncate(64 << 30)
    policy = policy_for(tmp_path, keys, volume, timeout="2s")
    res = drkit("backup", "--policy", str(policy))
    assert res.returncode == 1, res.output
    assert "host dockerbox" in res.stderr and "shopdata" in res.stderr
    assert "timed out" in res.stderr
    assert state(volume["container"])["Running"]
    assert not list((tmp_path / "repo").rglob("manifest.json"))


def test_missing_volume_is_a_clear_error(volume: dict[str, Any]) -> None:
    config = VolumeConfig(kind="docker_volume", volume=volume["volume"] + "-gone")
    source = DockerVolumeSource("shopdata", config, LocalRunner("dockerbox"))
    with pytest.raises(SourceError, match=r"host dockerbox: source shopdata .*does not exist"):
        next(source.artifacts())


# ---- containers stopped for the copy always start again (issue #17) --------------------


def processes_reading(mp: Path) -> dict[str, int]:
    """The copy's processes on this machine, by PID: ``tar`` reading ``mp`` and the
    shell around it (both name the volume's unique mountpoint in their argv)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(mp).encode() in argv and argv[0] in (b"tar", b"sh"):
            out[argv[0].decode()] = int(proc.name)
    return out


def wait_for(what: str, cond: Any, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def busy(volume: dict[str, Any], base_image: str) -> Iterator[dict[str, Any]]:
    """``volume`` with a sparse 64 GiB file (a copy that lasts minutes) and a second
    labelled container that was stopped before any backup."""
    with open(mountpoint(volume["volume"]) / "huge.img", "wb") as fh:
        fh.truncate(64 << 30)
    idle = volume["container"] + "-idle"
    try:
        docker(
            "create",
            "--init",
            "--name",
            idle,
            "--label",
            volume["label"],
            "-v",
            f"{volume['volume']}:/data",
            base_image,
            "sleep",
            "infinity",
        )
        yield {**volume, "idle": idle}
    finally:
        docker("rm", "--force", idle, check=False)


@contextlib.contextmanager
def backup_running(policy: Path, busy: dict[str, Any]) -> Iterator[subprocess.Popen[str]]:
    """``drkit backup`` in the background; at exit it and what is left of its copy are
    killed, by PID."""
    mp = mountpoint(busy["volume"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", "backup", "--policy", str(policy)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        for pid in processes_reading(mp).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def copying(busy: dict[str, Any], proc: subprocess.Popen[str]) -> dict[str, int]:
    """Wait until the copy runs with the container stopped; its processes."""
    mp = mountpoint(busy["volume"])
    found: dict[str, int] = {}

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()
        found.update(processes_reading(mp))
        return "tar" in found and not state(busy["container"])["Running"]

    wait_for("the copy to run with the container stopped", started)
    return found


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGKILL over SSH"])
def test_drkit_killed_mid_copy_the_host_starts_the_containers_again(
    tmp_path: Path, keys: Any, busy: dict[str, Any], how: str
) -> None:
    with contextlib.ExitStack() as stack:
        ssh = stack.enter_context(sshd_server()) if "SSH" in how else None
        killed_mid_copy(tmp_path, keys, busy, getattr(signal, how.split()[0]), ssh)


def killed_mid_copy(
    tmp_path: Path, keys: Any, busy: dict[str, Any], sig: int, ssh: SshHost | None
) -> None:
    policy = policy_for(tmp_path, keys, busy, ssh)
    with backup_running(policy, busy) as proc:
        copying(busy, proc)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        # Nobody left to run `docker start`: the shell on the host does, once tar's
        # output goes nowhere.
        wait_for("the container to run again", lambda: state(busy["container"])["Running"])
        mp = mountpoint(busy["volume"])
        wait_for("the copy to end", lambda: not processes_reading(mp))
    assert not state(busy["idle"])["Running"]  # stopped before: not started by the backup
    assert not list((tmp_path / "repo").rglob("manifest.json"))
    assert not Path(state_path(policy)).exists()


def state_path(policy: Path) -> str:
    from drkit.policy.loader import load_policy

    config = load_policy(policy).source[0]
    return DockerVolumeSource("shopdata", config, LocalRunner("dockerbox")).state_file()


def test_copy_killed_or_failing_on_the_host_fails_the_source_and_starts_them_again(
    tmp_path: Path, keys: Any, busy: dict[str, Any]
) -> None:
    policy = policy_for(tmp_path, keys, busy)
    # The remote tar killed mid-copy.
    with backup_running(policy, busy) as proc:
        os.kill(copying(busy, proc)["tar"], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "source shopdata" in err and f"`tar -C {mountpoint(busy['volume'])}" in err, err
    assert "exited with status 137" in err and "again()" not in err, err
    assert state(busy["container"])["Running"]

    # tar's own error: a file it was still to read removed under it.
    mp = mountpoint(busy["volume"])
    (mp / "huge.img").unlink()
    for name in ("a.img", "b.img"):
        with open(mp / name, "wb") as fh:
            fh.truncate(4 << 30)
    with backup_running(policy, busy) as proc:
        tar = copying(busy, proc)["tar"]
        reading: list[str] = []

        def one_open() -> bool:
            reading[:] = [n for n in ("a.img", "b.img") if str(mp / n) in open_files(tar)]
            return bool(reading)

        wait_for("tar to read one of the images", one_open)
        (mp / ({"a.img", "b.img"} - set(reading)).pop()).unlink()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert "File removed before we read it" in err or "Cannot stat" in err, err
    assert state(busy["container"])["Running"]
    assert not state(busy["idle"])["Running"]
    assert not list((tmp_path / "repo").rglob("manifest.json"))


def open_files(pid: int) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            out.append(os.readlink(fd))
    return out


def test_copy_and_drkit_killed_together_the_next_backup_starts_them_with_a_warning(
    tmp_path: Path, keys: Any, busy: dict[str, Any], snapshot_facts: Any
) -> None:
    policy = policy_for(tmp_path, keys, busy)
    with backup_running(policy, busy) as proc:
        found = copying(busy, proc)
        # Everything dies at once (an OOM kill, say): no process is left to start them.
        for pid in (found["sh"], proc.pid, found["tar"]):
            os.kill(pid, signal.SIGKILL)
    wait_for("the copy to end", lambda: not processes_reading(mountpoint(busy["volume"])))
    assert not state(busy["container"])["Running"]
    state_file = Path(state_path(policy))
    assert busy["container"] in state_file.read_text()

    (mountpoint(busy["volume"]) / "huge.img").unlink()
    res = drkit("--json", "backup", "--policy", str(policy), check=True)
    assert state(busy["container"])["Running"]
    assert not state(busy["idle"])["Running"]
    assert not state_file.exists()
    [warning] = snapshot_facts(policy, "shopdata")["warnings"]
    assert warning.startswith(f"container(s) {busy['container']} were still stopped"), warning
    assert "killed before it could start them" in warning and warning in res.stdout


def test_restore_killed_with_the_containers_stopped_the_next_backup_starts_them(
    tmp_path: Path, keys: Any, volume: dict[str, Any], snapshot_facts: Any
) -> None:
    """A restore stops and starts them from drkit's side: killed in between, it left
    them named on the host, and the next backup starts them, saying so."""
    policy = policy_for(tmp_path, keys, volume)
    with open(mountpoint(volume["volume"]) / "zeros.img", "wb") as fh:
        fh.truncate(2 << 30)  # a restore that lasts seconds
    drkit("backup", "--policy", str(policy), check=True)
    restore = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drkit",
            "restore",
            "--policy",
            str(policy),
            "--yes",
            "--force-db",
            "--identity",
            str(keys.identity_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def stopped() -> bool:
        assert restore.poll() is None, restore.communicate()  # it must still run
        return not state(volume["container"])["Running"]

    try:
        wait_for("the restore to stop the container", stopped)
        restore.kill()
    finally:
        if restore.poll() is None:
            restore.kill()
        restore.wait(timeout=60)
    assert not state(volume["container"])["Running"]

    (mountpoint(volume["volume"]) / "zeros.img").unlink(missing_ok=True)
    res = drkit("--json", "backup", "--policy", str(policy), check=True)
    assert state(volume["container"])["Running"]
    assert not Path(state_path(policy)).exists()
    [warning] = snapshot_facts(policy, "shopdata")["warnings"]
    assert warning.startswith(f"container(s) {volume['container']} were still stopped"), warning
    assert "backup or restore" in warning and warning in res.stdout
