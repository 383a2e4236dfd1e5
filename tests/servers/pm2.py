"""Real pm2 for tests: a private PM2_HOME per test, daemons stopped by PID.

pm2 comes from PATH, else from npm into a project-local prefix
(``.cache/npm``, installed once, under a file lock so parallel runs agree).
Nothing here ever runs ``pm2 kill``: teardown signals, by PID, only the
processes whose environment holds this ``PM2_HOME`` (the daemons first, then
their apps), so no other pm2 on the machine is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NPM_PREFIX = Path(os.environ.get("DRKIT_TEST_NPM_PREFIX", ROOT / ".cache" / "npm"))
PM2_VERSION = "7.0.4"  # pinned: the dump.pm2 layout and CLI output the tests rely on


def pm2_bin() -> Path:
    """The pm2 executable: on PATH, else installed from npm into NPM_PREFIX."""
    found = shutil.which("pm2")
    if found:
        return Path(found)
    local = NPM_PREFIX / "node_modules" / ".bin" / "pm2"
    if local.exists():
        return local
    NPM_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(NPM_PREFIX / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not local.exists():
            subprocess.run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(NPM_PREFIX),
                    f"pm2@{PM2_VERSION}",
                ],
                check=True,
                capture_output=True,
                timeout=300,
            )
    return local


# A small app: answers every request with its PM2 name, so "online" is also "serving".
APP_JS = """const http = require('http');
http.createServer((req, res) => res.end(process.env.APP_NAME + ' ok'))
  .listen(Number(process.env.PORT), '127.0.0.1');
"""


def write_apps(root: Path, ports: dict[str, int]) -> Path:
    """``root/<name>/server.js`` per app and ``root/ecosystem.config.js`` naming them.

    Each app listens on 127.0.0.1:``ports[name]`` and answers ``"<name> ok"``
    (PORT and APP_NAME come from the ecosystem file, so from PM2's dump on a
    restored host). Returns the ecosystem file's path.
    """
    apps = []
    for name, port in ports.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "server.js").write_text(APP_JS)
        env = {"PORT": str(port), "APP_NAME": name}
        script = str(root / name / "server.js")
        apps.append({"name": name, "script": script, "cwd": str(root / name), "env": env})
    eco = root / "ecosystem.config.js"
    eco.write_text("module.exports = " + json.dumps({"apps": apps}, indent=2) + ";\n")
    return eco


def bin_path_env() -> dict[str, str]:
    """PATH with pm2's directory first, for the drkit CLI (the source runs ``pm2``)."""
    return {"PATH": f"{pm2_bin().parent}{os.pathsep}{os.environ.get('PATH', '')}"}


@dataclass
class Pm2Home:
    """One PM2_HOME owned by ``user``; ``run`` drives the pm2 CLI as that user."""

    home: Path
    user: str
    pm2: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["env", f"PM2_HOME={self.home}", str(self.pm2), *args]
        if pwd.getpwuid(os.getuid()).pw_name != self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        # cwd: the user may not enter ours (a checkout under a 0700 directory), and node's
        # spawn fails with EACCES then.
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
        if check and res.returncode != 0:
            raise RuntimeError(f"pm2 {' '.join(args)} failed: {res.stderr[-2000:]}")
        return res

    def jlist(self) -> list[dict[str, Any]]:
        out = self.run("jlist").stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("["))
        return list(json.loads(line))

    def states(self) -> dict[str, str]:
        return {p["name"]: p["pm2_env"]["status"] for p in self.jlist()}

    def daemon_pid(self) -> int | None:
        try:
            return int((self.home / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def wait_online(self, names: set[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            if all(states.get(n) == "online" for n in names):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"pm2 apps not online: {states}")
            time.sleep(0.2)

    def stop_daemon(self) -> None:
        """Stop every daemon of this home and every app they started, by PID.

        Processes are found by ``PM2_HOME=<home>`` in their environment (the
        daemon's title cannot be trusted: pm2 rewrites it within the space of
        its original argv, which cuts a long PM2_HOME short). Daemons go first,
        or they would restart the apps killed after them.
        """
        entry = f"PM2_HOME={self.home}"
        pids = [p for p in _pids() if _environ_has(p, entry)]
        pid = self.daemon_pid()
        if pid is not None and pid not in pids and _cmdline_has(pid, str(self.home)):
            pids.append(pid)
        daemons = [p for p in pids if _cmdline_has(p, "God Daemon")]
        for p in daemons:
            _terminate(p)
        for p in pids:
            if p not in daemons:
                _terminate(p)


@contextmanager
def pm2_home(base: Path, user: str = "root") -> Iterator[Pm2Home]:
    """A fresh PM2_HOME under ``base`` owned by ``user``; its daemons are stopped at exit
    (including one a restore started in the same home)."""
    home = base / "pm2-home"
    home.mkdir(parents=True)
    pw = pwd.getpwnam(user)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    h = Pm2Home(home, user, pm2_bin())
    try:
        yield h
    finally:
        h.stop_daemon()


def _terminate(pid: int, timeout: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline_has(pid: int, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _environ_has(pid: int, entry: str) -> bool:
    try:
        return entry.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
