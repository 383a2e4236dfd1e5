"""drkit as a user installs it: the wheel in a fresh venv outside the checkout.

Builds the wheel (``pip wheel . --no-deps``: the build backend comes from the
package index, like any ``pip install``), installs it into a new venv in a
temporary directory (its dependencies from the index pip is configured with;
nothing of the checkout's venv is visible), and from another working directory,
with a HOME of its own, runs that venv's ``drkit``: init -> policy validate ->
backup -> verify -> restore --dest -> drill in Docker. The drill uses the
``docker/`` files the wheel ships (package data) and a drill file in the config
dir, for a files-only host in the smallest image (visualkit-hetzner: a container
from it starts in 2-4 s on vfs, the vultr image's in 9-23 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.helpers import CliResult

ROOT = Path(__file__).resolve().parents[2]
HOST = "wheelbox"
SHIPPED = ("docker", "restore_drills", "policies")  # package data: drkit/data/<name>


@dataclass
class Installed:
    venv: Path
    seconds: dict[str, float]

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from this checkout, installed into a fresh venv under /tmp."""
    base = tmp_path_factory.mktemp("wheel")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    wheels = base / "wheelhouse"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)])
    [wheel] = wheels.glob("drkit-*.whl")
    seconds["build"] = time.monotonic() - started
    started = time.monotonic()
    venv = base / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    # --no-compile: byte-compiling every dependency (botocore) is a third of the install;
    # drkit compiles what it imports on first use.
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", str(wheel)])
    seconds["install"] = time.monotonic() - started
    print(f"wheel built in {seconds['build']:.1f} s, installed in {seconds['install']:.1f} s")
    return Installed(venv, seconds)


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, (
        f"{' '.join(argv)} -> {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done


class User:
    """A person with the wheel's venv on PATH, a HOME of their own and a working
    directory outside the checkout; nothing of drkit's test environment leaks in."""

    def __init__(self, installed: Installed, root: Path) -> None:
        self.home = root / "user-home"
        self.cwd = root / "elsewhere"
        self.home.mkdir()
        self.cwd.mkdir()
        checkout_bin = str(ROOT / ".venv" / "bin")
        path = [p for p in os.environ["PATH"].split(os.pathsep) if p != checkout_bin]
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DRKIT_", "XDG_", "PYTHON", "VIRTUAL_ENV", "AWS_"))
        }
        self.env |= {"HOME": str(self.home), "PATH": os.pathsep.join([str(installed.bin), *path])}
        self.python = str(installed.bin / "python")

    def drkit(self, *args: str, check: bool = True) -> CliResult:
        done = subprocess.run(
            ["drkit", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        res = CliResult(done.returncode, done.stdout, done.stderr)
        assert "Traceback" not in res.stderr, res.output
        if check:
            assert res.returncode == 0, f"drkit {' '.join(args)} -> {res.returncode}\n{res.output}"
        return res

    def py(self, code: str) -> str:
        return run([self.python, "-c", code], cwd=self.cwd, env=self.env).stdout.strip()


def digests(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_wheel_ships_the_drill_files_policies_and_images(
    installed: Installed, tmp_path: Path
) -> None:
    user = User(installed, tmp_path)
    where = Path(user.py("import drkit; print(drkit.__file__)"))
    assert where.is_relative_to(installed.venv), f"drkit imported from {where}, not the venv"
    for name in SHIPPED:
        packaged = Path(user.py(f"from drkit.paths import shipped; print(shipped({name!r}))"))
        assert packaged == where.parent / "data" / name
        assert digests(packaged) == digests(ROOT / name), f"{name}: the wheel differs"
    images = user.py("from drkit.drills.images import image_names; print(*image_names())")
    assert images == "conversational-platform dockerhost e2i-droplet visualkit-hetzner vultr"


@pytest.mark.docker
@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("engine")
def test_init_backup_verify_restore_and_drill_from_the_installed_wheel(
    installed: Installed, tmp_path: Path
) -> None:
    user = User(installed, tmp_path)
    started = time.monotonic()
    # init: identity, signing key, a sample policy and a local repository in the data dir.
    res = user.drkit("init", "--host", HOST, "--json")
    made = json.loads(res.stdout)
    config = user.home / ".config" / "drkit"
    assert made["sample_policy"] == str(config / "policies" / f"{HOST}.toml")
    # The sample backs up a database this machine does not have: make it files-only,
    # as a newcomer edits it.
    app = tmp_path / "srv" / "app"
    app.mkdir(parents=True)
    (app / "index.html").write_text("<h1>hello from the wheel</h1>\n")
    (app / "run.sh").write_text("#!/bin/sh\n")
    (app / "run.sh").chmod(0o750)
    Path(made["sample_policy"]).write_text(
        f'host = "{HOST}"\nrpo = "26h"\n'
        f'[repository]\nurl = "{made["repository"]}"\n'
        f'[encryption]\nrecipients = ["{made["recipient"]}"]\nsigners = ["{made["signer"]}"]\n'
        f'[[source]]\nkind = "files"\nname = "site"\npaths = ["{app}"]\n'
    )
    user.drkit("policy", "validate")
    user.drkit("backup", "--host", HOST)
    user.drkit("verify", "--host", HOST)
    dest = tmp_path / "restored"
    user.drkit("restore", "--host", HOST, "--dest", str(dest), "--yes")
    out = dest / str(app).lstrip("/")
    assert (out / "index.html").read_text() == "<h1>hello from the wheel</h1>\n"
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o750
    # A drill file of one's own beside the policies, naming a shipped image.
    drills = config / "restore_drills"
    drills.mkdir()
    drill_file = drills / f"{HOST}.toml"
    drill_file.write_text(
        f'host = "{HOST}"\nimage = "visualkit-hetzner"\n'
        f'[[file]]\npath = "{app}/run.sh"\nmode = "0750"\n'
        f'[[command]]\nname = "page restored"\nrun = ["cat", "{app}/index.html"]\n'
        'contains = "hello from the wheel"\n'
    )
    res = user.drkit("drill", "--host", HOST, "--json")
    [report] = json.loads(res.stdout)["drills"]
    assert (report["verdict"], report["error"]) == ("pass", None), report
    assert report["image_from"] == str(drill_file)
    assert report["image"].startswith("drkit-host-visualkit-hetzner:")
    names = {c["name"] for c in report["checks"] if c["status"] == "pass"}
    assert "page restored" in names, report["checks"]
    # The drill found its image files in the wheel, not in a checkout.
    docker_dir = user.py("from drkit.drills.images import docker_dir; print(docker_dir())")
    assert Path(docker_dir).is_relative_to(installed.venv), docker_dir
    print(
        f"wheel {installed.seconds['build']:.1f} s + install {installed.seconds['install']:.1f}"
        f" s; init..drill {time.monotonic() - started:.1f} s"
    )
