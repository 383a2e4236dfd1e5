"""Progress and log lines as a person at a terminal and as cron see them (#21 items 1-2).

The real CLI backs up and restores a real file tree and a command source that
streams 16 MiB over ~1.6 s (and is read back as slowly), so there is something
to watch: under a pseudo-terminal the rich bars must move (two renders with more
bytes); through pipes (cron) the log has timestamped progress lines at a short
interval and a final line with bytes, rate and duration; ``-q`` leaves only
warnings, each with its host and source; ``--json`` stays a clean document on
stdout with progress on.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.sources.test_files_live_writes import writer_tar

MIB = 1 << 20
# 16 MiB of random bytes in 1 MiB writes, 0.1 s apart; read back 1 MiB per 0.1 s.
SLOW_OUT = (
    "import os,sys,time; [(sys.stdout.buffer.write(os.urandom(1<<20)), "
    "sys.stdout.buffer.flush(), time.sleep(0.1)) for _ in range(16)]"
)
SLOW_IN = (
    "import sys,time; [time.sleep(0.1) for _ in iter(lambda: sys.stdin.buffer.read(1<<20), b'')]"
)
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
UNITS = {"bytes": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def slow_policy(tmp_path: Path, keys: Keys) -> Path:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(256 << 10))
    return write_policy(
        tmp_path / "box.toml",
        "box",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [
            {"kind": "files", "name": "tree", "paths": [str(tree)]},
            {
                "kind": "command",
                "name": "slow",
                "command": [sys.executable, "-c", SLOW_OUT],
                "restore_command": [sys.executable, "-c", SLOW_IN],
            },
        ],
    )


def on_tty(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``drkit ARGS`` with stderr on a pseudo-terminal (120 columns), stdout a pipe:
    (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    full = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", **(env or {})}
    full.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drkit", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        env=full,
    )
    os.close(slave)
    shown = bytearray()

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            shown.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, out.decode(), shown.decode(errors="replace")


def amounts(shown: str, label: str) -> list[int]:
    """The byte counts rendered after ``label`` in each frame the terminal got."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)
    found = []
    for m in re.finditer(
        re.escape(label) + r"[^\n\r]*?\s(\d+(?:\.\d+)?)(?:/\d+(?:\.\d+)?)? (bytes|KiB|MiB|GiB)",
        plain,
    ):
        found.append(int(float(m[1]) * UNITS[m[2]]))
    return found


def moved(values: list[int]) -> bool:
    """A render in the middle of the work (more than nothing, less than all) and a later
    one with more bytes: the bar moved while the work ran, not only at its start and end."""
    top = max(values, default=0)
    middle = [i for i, v in enumerate(values) if 0 < v < top]
    return bool(middle) and any(v > values[middle[0]] for v in values[middle[0] :])


def test_backup_and_restore_bars_move_on_a_terminal_and_json_stays_clean(
    tmp_path: Path, keys: Keys
) -> None:
    policy = slow_policy(tmp_path, keys)
    code, out, shown = on_tty("backup", "--policy", str(policy), "--json", "-v")
    assert code == 0, shown
    [result] = json.loads(out)["results"]  # stdout: the document, nothing else
    assert result["status"] == "success"
    backup_bytes = amounts(shown, "box: slow")
    assert moved(backup_bytes), (backup_bytes, shown[-3000:])
    assert max(backup_bytes) >= 12 * MIB, backup_bytes
    assert "stored" in shown and "box: slow: done" in shown, shown[-3000:]
    assert not re.search(STAMP, shown), "on a terminal lines stay short"

    code, out, shown = on_tty(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--dest",
        str(tmp_path / "dest"),
        "--identity",
        str(keys.identity_file),
    )
    assert code == 0, out + shown
    label = "box: step 2/2: slow (command)"  # the plan's step name
    restored = amounts(shown, label)
    assert moved(restored), (restored, shown[-3000:])
    assert f"{label}: done" in shown, shown[-3000:]
    assert (tmp_path / "dest" / str(tmp_path / "tree" / "a.txt").lstrip("/")).exists()


def test_off_a_terminal_progress_lines_carry_time_level_host_and_source(
    tmp_path: Path, keys: Keys
) -> None:
    policy = slow_policy(tmp_path, keys)
    env = {"DRKIT_PROGRESS_INTERVAL": "0.4"}
    res = drkit("backup", "--policy", str(policy), env=env)
    assert res.returncode == 0, res.output
    assert "box: snapshot" in res.stdout and not re.search(STAMP, res.stdout), res.stdout
    lines = res.stderr.splitlines()
    assert lines and all(re.match(rf"{STAMP} .*(info|debug|warning): ", ln) for ln in lines), lines
    prefix = rf"^{STAMP} host=box source=slow info: backup slow: "
    ticks = [ln for ln in lines if re.match(prefix + r"\d", ln)]
    assert len(ticks) >= 2, lines  # ~1.6 s at 0.4 s intervals
    read = [float(re.search(r": ([\d.]+) MiB", t)[1]) for t in ticks if " MiB," in t]  # type: ignore[index]
    assert read == sorted(read) and read[-1] > read[0], ticks
    [final] = [ln for ln in lines if re.match(prefix + "done: ", ln)]
    assert re.search(r"done: 16\.0 MiB, [\d.]+ MiB/s, [\d.]+ MiB stored, \d+\.\ds$", final), final
    assert any(re.match(rf"{STAMP} host=box source=tree info: ", ln) for ln in lines), lines

    res = drkit(
        "restore",
        "--yes",
        "--policy",
        str(policy),
        "--dest",
        str(tmp_path / "dest"),
        "--identity",
        str(keys.identity_file),
        env=env,
    )
    assert res.returncode == 0, res.output
    step = rf"^{STAMP} host=box source=slow info: restore step 2/2: slow \(command\): "
    ticks = [ln for ln in res.stderr.splitlines() if re.match(step + r"\d", ln)]
    assert len(ticks) >= 2, res.stderr
    assert re.search(step + r"done: 16\.0 MiB of 16\.0 MiB, ", res.stderr, re.M), res.stderr

    # verify: a final line per snapshot; with --json only under -v, and stdout parses.
    res = drkit("verify", "--policy", str(policy), "--identity", str(keys.identity_file), env=env)
    assert res.returncode == 0 and not re.search(STAMP, res.stdout), res.output
    assert re.search(
        rf"^{STAMP} host=box info: verify snapshot \S+: done: 16\.\d MiB, ", res.stderr, re.M
    )
    res = drkit("backup", "--policy", str(policy), "--json", env=env)
    assert json.loads(res.stdout)["results"][0]["status"] == "success"
    assert res.stderr == "", res.stderr  # --json: warnings and errors only
    res = drkit("backup", "--policy", str(policy), "--json", "-v", env=env)
    assert json.loads(res.stdout)["results"][0]["status"] == "success"
    assert re.search(prefix + "done: ", res.stderr, re.M), res.stderr


def test_quiet_shows_only_warnings_each_with_host_and_source(tmp_path: Path, keys: Keys) -> None:
    """A file vanishing while tar reads the tree (tests/sources/test_files_live_writes.py
    puts the deletion there): the one warning of the run, under -q as cron runs it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"A" * (4 << 20))
    (data / "z.txt").write_text("deleted while the backup runs\n")
    env = writer_tar(tmp_path / "bin", f"rm -f {data}/z.txt\n")
    env["DRKIT_PROGRESS_INTERVAL"] = "0.1"
    policy = write_policy(
        tmp_path / "box.toml",
        "box",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "files", "name": "data", "paths": [str(data)]}],
    )
    res = drkit("backup", "-q", "--policy", str(policy), env=env)
    assert res.returncode == 0, res.output
    lines = res.stderr.splitlines()
    assert lines == [
        f"{lines[0][:20]} host=box source=data warning: box: source data: 1 file(s) vanished "
        f"before they were read (not in this backup): {data}/z.txt"
    ], lines
    assert re.match(STAMP, lines[0]), lines

    # Without -q the same run says what it does, progress included, at INFO.
    res = drkit("-v", "backup", "--policy", str(policy), env=env)
    assert res.returncode == 0, res.output
    assert re.search(rf"^{STAMP} host=box source=data info: backup data: done: ", res.stderr, re.M)


def test_verbosity_options_on_every_command() -> None:
    """-v and -q are accepted by the root group, every command and every sub-command."""
    from click import Command, Group

    from drkit.cli.main import cli, register_commands

    register_commands()

    def walk(cmd: Command, path: str) -> list[tuple[str, Command]]:
        found = [(path, cmd)]
        if isinstance(cmd, Group):
            for name, sub in cmd.commands.items():
                found += walk(sub, f"{path} {name}")
        return found

    every = walk(cli, "drkit")
    assert len(every) > 15
    for path, cmd in every:
        opts = {o for p in cmd.params for o in getattr(p, "opts", ())}
        assert {"-v", "--verbose", "-q", "--quiet"} <= opts, path
    res = subprocess.run(
        [sys.executable, "-m", "drkit", "-q", "policy", "validate", "-v", "--help"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "-q, --quiet" in res.stdout, res.stdout + res.stderr
