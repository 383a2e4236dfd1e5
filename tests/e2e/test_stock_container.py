"""drkit on machines that never ran the developer setup: fresh containers of the drill
base image (Debian 12 from the mirror, nothing of this machine's `make setup`).

- ``test_the_drill_workflow_runs_in_a_stock_container``: the steps of
  .github/workflows/restore-drill.yml, read from the file (not a copy), run in order
  by a small stand-in for GitHub's runner inside a container that has only what a
  stock runner brings and drkit does not install: python3, pip and pipx, the docker
  CLI (the engine is this machine's: its socket is mounted), sudo and a non-root
  ``runner`` user. The checkout is ``git archive HEAD`` with the user's policies/
  and restore_drills/ in place of the examples; the repository drilled is a local
  directory holding one host, backed up here beforehand and mounted in at its own
  path. ``--network host``: the drill reaches its container through ports drkit
  opens on 127.0.0.1. The drill must pass from inside.
- ``test_first_hour_in_a_fresh_container``: README's "Install" and "Using it", as a
  newcomer types them as root in a fresh container: apt, the source, `pipx install
  .`, init, validate, the sample edited to a files and an env source, backup,
  snapshots, verify, restore --plan, restore --yes, status.

The network path to PyPI goes through a TLS-inspecting proxy whose CA is in this
machine's /etc/ssl/certs/ca-certificates.crt (docs of the testbed): it is mounted
read-only and pip is pointed at it with PIP_CERT, the setting a user behind a
company proxy uses. Every container a test starts is removed by its id, and so is
any drill container left by the drill inside (by its name, which carries the test's
host name).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.helpers import drkit
from tests.unit.test_drill_workflow import parse_yaml

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "restore-drill.yml"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_IN_CONTAINER = "/etc/drkit-test/proxy-ca.crt"  # not under /etc/ssl: apt owns that
RUNNER_UID = 1001
WORKSPACE = "/home/runner/work/drkit/drkit"  # where GitHub checks a repository out
RUNNER_TEMP = "/home/runner/work/_temp"
STOCK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What a stock GitHub runner has and drkit's workflow does not install. The docker
# CLI is this machine's binary (Debian packages it only with the daemon).
RUNNER_DOCKERFILE = f"""\
ARG BASE
FROM ${{BASE}}
LABEL org.drkit.kind=test-stock-runner
COPY docker /usr/local/bin/docker
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip pipx sudo \\
 && useradd -m -u {RUNNER_UID} -s /bin/bash runner \\
 && echo 'runner ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/runner \\
 && chmod 440 /etc/sudoers.d/runner && rm -rf /var/lib/apt/lists/*
"""


def docker(*args: str, timeout: float = 600, check: bool = True, **kw: Any) -> str:
    done = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check:
        assert done.returncode == 0, f"docker {' '.join(args[:4])}: {done.stderr[-3000:]}"
    return str(done.stdout)


def base_image() -> str:
    from drkit.drills.images import ensure_base_image

    return ensure_base_image().tag


@pytest.fixture(scope="module")
def runner_image(engine: None) -> str:  # noqa: F811
    """The stock-runner image FROM the drill base, built once per Dockerfile and base."""
    base = base_image()
    cli = Path(shutil.which("docker") or "/usr/bin/docker").read_bytes()
    digest = hashlib.sha256(RUNNER_DOCKERFILE.encode() + base.encode() + cli).hexdigest()
    tag = f"drkit-test-stock-runner:{digest[:12]}"
    if _exists(tag):
        return tag
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, mode in (
            ("Dockerfile", RUNNER_DOCKERFILE.encode(), 0o644),
            ("docker", cli, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    done = subprocess.run(
        ["docker", "build", "--force-rm", "-q", "-t", tag, "--build-arg", f"BASE={base}", "-"],
        input=buffer.getvalue(),
        capture_output=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return tag


def _exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


@contextlib.contextmanager
def container(image: str, *args: str, host: str | None = None) -> Iterator[str]:
    """A container left running (``sleep``), removed by id afterwards, whatever happened;
    with ``host``, also the drill containers (and their networks) drkit made for it."""
    ca = f"{HOST_CA}:{CA_IN_CONTAINER}:ro"
    cid = docker("run", "-d", "--network", "host", "-v", ca, *args, image, "sleep", "7200").strip()
    try:
        yield cid
    finally:
        docker("rm", "-f", cid, check=False, timeout=300)
        if host:
            _remove_drill_containers(host)


def _remove_drill_containers(host: str) -> None:
    ids = docker("ps", "-aq", "--filter", f"name=drkit-drill-{host}-", check=False).split()
    for cid in ids:
        networks = docker(
            "inspect",
            "--format",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            cid,
            check=False,
        ).split()
        docker("rm", "-f", cid, check=False, timeout=300)
        for net in networks:
            if net.startswith("drkit-drill-"):
                docker("network", "rm", net, check=False)


def apt_mirrors() -> list[str]:
    """The URIs of this machine's apt sources (one-line and deb822), without a trailing /."""
    found: list[str] = []
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            found += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", path.read_text(), re.M)
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for line in re.findall(r"^URIs:\s*(.+)$", path.read_text(), re.M):
            found += line.split()
    return [uri.rstrip("/") for uri in found]


def git_archive(dest: Path) -> None:
    """The source as a checkout gives it: the committed tree of HEAD."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True, timeout=120
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="tar")


# -- a stand-in for GitHub's runner ---------------------------------------------------

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class StepResult:
    name: str
    ran: bool
    returncode: int = 0
    output: str = ""
    seconds: float = 0.0


@dataclass
class Runner:
    """Runs a job's steps in a container the way GitHub's runner does, for the features
    the workflow uses: ``${{ github.workspace | runner.temp | secrets.X }}``, ``env:``
    at workflow, job and step level, ``if:`` with success()/always()/cancelled() and
    ``steps.<id>.outcome``, $GITHUB_ENV / $GITHUB_PATH / $GITHUB_STEP_SUMMARY, the
    default shell (``bash -e``). Anything else in the file fails the test, so a
    workflow change this stand-in does not model is noticed. ``uses:`` steps:
    actions/checkout is the workspace already in place; actions/upload-artifact
    copies the path out of the container (``artifacts``)."""

    cid: str
    secrets: dict[str, str]
    artifacts: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    added_env: dict[str, str] = field(default_factory=dict)
    added_path: list[str] = field(default_factory=list)
    outcomes: dict[str, str] = field(default_factory=dict)
    failed: bool = False
    results: list[StepResult] = field(default_factory=list)

    def expr(self, text: Any) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "github.workspace":
                return WORKSPACE
            if name == "runner.temp":
                return RUNNER_TEMP
            if name.startswith("secrets."):
                return self.secrets.get(name.removeprefix("secrets."), "")
            raise AssertionError(f"the runner stand-in does not know ${{{{ {name} }}}}")

        return _EXPR.sub(one, str(text))

    def condition(self, text: str | None) -> bool:
        if text is None:
            return not self.failed
        expr = _EXPR.sub(lambda m: m.group(1), text).strip()
        outcome = re.compile(r"steps\.([\w-]+)\.outcome")
        expr = outcome.sub(lambda m: repr(self.outcomes.get(m[1], "")), expr)
        expr = expr.replace("success()", str(not self.failed))
        expr = expr.replace("failure()", str(self.failed))
        expr = expr.replace("always()", "True").replace("cancelled()", "False")
        expr = expr.replace("&&", " and ").replace("||", " or ")
        expr = re.sub(r"!(?!=)", " not ", expr)
        left = re.sub(r"'[^']*'|\b(True|False|and|or|not)\b|==|!=|[()\s]", "", expr)
        assert not left, f"the runner stand-in cannot evaluate if: {text!r} ({left!r})"
        return bool(eval(expr, {"__builtins__": {}}))  # noqa: S307 (only the tokens checked above)

    def base_env(self) -> dict[str, str]:
        return {
            "HOME": "/home/runner",
            "CI": "true",
            "GITHUB_ACTIONS": "true",
            "GITHUB_WORKSPACE": WORKSPACE,
            "RUNNER_TEMP": RUNNER_TEMP,
            "GITHUB_ENV": f"{RUNNER_TEMP}/_runner_file_commands/env",
            "GITHUB_PATH": f"{RUNNER_TEMP}/_runner_file_commands/path",
            "GITHUB_STEP_SUMMARY": f"{RUNNER_TEMP}/_runner_file_commands/summary",
            "PATH": ":".join([*reversed(self.added_path), STOCK_PATH]),
            # The machine's network: PyPI through a proxy whose CA pip must trust.
            "PIP_CERT": CA_IN_CONTAINER,
        }

    def run_job(self, job: dict[str, Any], workflow_env: dict[str, Any]) -> None:
        # The runner owns its work directory (docker made the mount point's parents).
        owned = ("/home/runner/work", RUNNER_TEMP, f"{RUNNER_TEMP}/_runner_file_commands")
        docker(
            "exec", "-u", "root", self.cid, "install", "-d", "-o", "runner", "-g", "runner", *owned
        )
        code, out = self.exec_(': > "$GITHUB_ENV"; : > "$GITHUB_PATH"', self.base_env())
        assert code == 0, out
        for step in job["steps"]:
            self.step(step, {**workflow_env, **job.get("env", {})})

    def step(self, step: dict[str, Any], outer_env: dict[str, Any]) -> None:
        name = step.get("name") or step.get("uses") or step.get("run", "")[:40]
        if not self.condition(step.get("if")):
            self.results.append(StepResult(name, ran=False))
            return
        started = time.monotonic()
        if "uses" in step:
            code, out = self.action(step)
        else:
            env = self.base_env()
            env |= {k: self.expr(v) for k, v in outer_env.items()}
            env |= self.added_env
            env |= {k: self.expr(v) for k, v in step.get("env", {}).items()}
            env |= self.env_overrides
            code, out = self.exec_(self.expr(step["run"]), env)
            self.read_file_commands()
        self.results.append(StepResult(name, True, code, out, time.monotonic() - started))
        if "id" in step:
            self.outcomes[step["id"]] = "success" if code == 0 else "failure"
        self.failed = self.failed or code != 0

    def action(self, step: dict[str, Any]) -> tuple[int, str]:
        uses = step["uses"]
        if uses.startswith("actions/checkout@"):
            return 0, "the workspace is the checkout (git archive HEAD)"
        if uses.startswith("actions/upload-artifact@"):
            args = {k: self.expr(v) for k, v in step["with"].items()}
            dest = self.artifacts / args["name"]
            dest.mkdir(parents=True)
            path = args["path"]
            source = path if path.startswith("/") else f"{WORKSPACE}/{path}"
            listing = f'for p in {source}; do [ -e "$p" ] && echo "$p"; done; true'
            _, out = self.exec_(listing, self.base_env())
            for found in out.split():
                docker("cp", f"{self.cid}:{found}", str(dest))
            return 0, out
        raise AssertionError(f"the runner stand-in does not run {uses}")

    def exec_(self, script: str, env: dict[str, str]) -> tuple[int, str]:
        argv = ["docker", "exec", "-u", "runner", "-w", WORKSPACE]
        for name in env:
            argv += ["-e", name]  # values from the CLI's environment, not its arguments
        argv += [self.cid, "bash", "-e", "-c", script]
        done = subprocess.run(
            argv,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def read_file_commands(self) -> None:
        script = 'cat "$GITHUB_ENV"; echo "::path::"; cat "$GITHUB_PATH"; '
        code, out = self.exec_(script + ': > "$GITHUB_ENV"; : > "$GITHUB_PATH"', self.base_env())
        assert code == 0, out
        env_part, path_part = out.split("::path::\n", 1)
        for line in env_part.splitlines():
            assert "<<" not in line.split("=", 1)[0], f"multi-line $GITHUB_ENV: {line}"
            name, _, value = line.partition("=")
            self.added_env[name] = value
        self.added_path += [p for p in path_part.splitlines() if p.strip()]

    def report(self) -> str:
        rows = [
            f"{'ran' if r.ran else 'skipped':7} rc={r.returncode:<3} {r.seconds:6.1f}s  {r.name}"
            for r in self.results
        ]
        failed = [r for r in self.results if r.returncode]
        return "\n".join(rows + [f"--- {r.name}:\n{r.output[-4000:]}" for r in failed])


# -- the tests -------------------------------------------------------------------------


def make_backup(tmp_path: Path, host: str) -> dict[str, Any]:
    """One host backed up here into a local-directory repository: a files and an env source."""
    made: dict[str, Any] = json.loads(drkit("init", "--host", host, "--json", check=True).stdout)
    app = tmp_path / "srv" / host
    app.mkdir(parents=True)
    (app / "index.html").write_text(f"<h1>{host} restored</h1>\n")
    (app / "run.sh").write_text("#!/bin/sh\nexec true\n")
    (app / "run.sh").chmod(0o750)
    (app / ".env").write_text("DATABASE_URL=postgres://app@localhost/app\nAPI_TOKEN=s3cr3t\n")
    policy = Path(made["sample_policy"])
    policy.write_text(
        f'host = "{host}"\nrpo = "26h"\n'
        f'[repository]\nurl = "{made["repository"]}"\n'
        f'[encryption]\nrecipients = ["{made["recipient"]}"]\nsigners = ["{made["signer"]}"]\n'
        "drill_signers = [DRILL_SIGNER]\n"
        f'[[source]]\nkind = "files"\nname = "site"\npaths = ["{app}"]\n'
        f'[[source]]\nkind = "env"\npaths = ["{app}/.env"]\n'
    )
    made["app"] = app
    made["policy"] = policy
    return made


@pytest.mark.usefixtures("engine")
def test_the_drill_workflow_runs_in_a_stock_container(
    runner_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"stockbox-{uuid.uuid4().hex[:6]}"
    # Not the checkout's ./policies (the examples): the ones this test writes.
    monkeypatch.setenv("DRKIT_POLICY_DIR", os.environ["DRKIT_CONFIG_DIR"] + "/policies")
    # A drill signing key, as docs/drill-workflow.md makes one: its own config dir.
    keydir = tmp_path / "drill-key"
    own = {"DRKIT_CONFIG_DIR": str(keydir), "XDG_DATA_HOME": str(keydir)}
    key = json.loads(drkit("init", "--json", env=own, check=True).stdout)
    made = make_backup(tmp_path, host)
    policy_text = made["policy"].read_text().replace("DRILL_SIGNER", json.dumps(key["signer"]))
    made["policy"].write_text(policy_text)
    drkit("backup", "--host", host, check=True)
    repo = Path(made["repository"].removeprefix("file://"))
    # The user's repository holding drkit: the checkout with their files in place.
    work = tmp_path / "workspace"
    git_archive(work)
    for directory in ("policies", "restore_drills"):
        shutil.rmtree(work / directory)
        (work / directory).mkdir()
    (work / "policies" / f"{host}.toml").write_text(policy_text)
    app = made["app"]
    (work / "restore_drills" / f"{host}.toml").write_text(
        f'host = "{host}"\nimage = "visualkit-hetzner"\n'
        f'[[file]]\npath = "{app}/run.sh"\nmode = "0750"\n'
        f'[[env]]\npath = "{app}/.env"\nkeys = ["DATABASE_URL", "API_TOKEN"]\n'
        f'[[command]]\nname = "page restored"\nrun = ["cat", "{app}/index.html"]\n'
        f'contains = "{host} restored"\n'
    )
    subprocess.run(["chown", "-R", f"{RUNNER_UID}:{RUNNER_UID}", str(work), str(repo)], check=True)
    secrets = {
        "DRKIT_IDENTITY": Path(made["identity_file"]).read_text(),
        "DRKIT_DRILL_SIGNING_KEY": (keydir / "signing.key").read_text(),
    }
    socket_gid = str(os.stat("/var/run/docker.sock").st_gid)
    workflow = parse_yaml(WORKFLOW.read_text())
    [job] = workflow["jobs"].values()
    started = time.monotonic()
    with container(
        runner_image,
        "--user",
        "runner",
        "--group-add",
        socket_gid,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-v",
        f"{work}:{WORKSPACE}",
        "-v",
        f"{repo}:{repo}",
        host=host,
    ) as cid:
        runner = Runner(cid, secrets, tmp_path / "artifacts")
        # The workflow names deb.debian.org, this machine's mirror. Where the machine's
        # apt uses another, the drill uses that one, as a user behind a mirror would
        # (and nothing outside the allowed network is contacted).
        mirror = str(workflow.get("env", {}).get("DRKIT_DEBIAN_MIRROR", ""))
        ours = [uri for uri in apt_mirrors() if "security" not in uri]
        if ours and mirror.rstrip("/") not in ours:
            runner.env_overrides["DRKIT_DEBIAN_MIRROR"] = ours[0]
        runner.run_job(job, workflow.get("env", {}))
        left = runner.exec_(
            f"ls -A {RUNNER_TEMP}/drkit {WORKSPACE}/drill-report 2>&1; true", runner.base_env()
        )[1]
    seconds = time.monotonic() - started
    print(runner.report())
    assert not runner.failed, runner.report()
    assert all(r.ran for r in runner.results), runner.report()
    # The artifact holds the report: the host passed, JUnit and the summary are there.
    report_dir = tmp_path / "artifacts" / "drill-report" / "drill-report"
    [report_file] = report_dir.glob(f"{host}-*.json")
    report = json.loads(report_file.read_text())
    assert (report["verdict"], report["error"]) == ("pass", None), report
    passed = {c["name"] for c in report["checks"] if c["status"] == "pass"}
    assert "page restored" in passed, report["checks"]
    assert Path(report["image_from"]).name == f"{host}.toml"
    # The base: bootstrapped (the workflow names a mirror, the drill runs as root), and
    # the report says so and why; no registry was probed.
    assert report["base_image"].startswith("drkit-base:"), report
    assert report["base_from"].startswith("debootstrap (auto: "), report["base_from"]
    assert host in (report_dir / "junit.xml").read_text()
    assert host in (report_dir / "drill-summary.md").read_text()
    # The last step removed the keys and the report from the runner.
    assert "No such file" in left and "identity" not in left, left
    # Signed with the drill key the policy trusts: the report is in the repository, so
    # `drkit status` here (another machine) sees the drill.
    status = json.loads(drkit("status", "--host", host, "--json").stdout)
    [row] = [r for r in status["hosts"] if r["host"] == host]
    assert row["last_drill"]["verdict"] == "pass", row
    print(f"workflow in a stock container: {seconds:.0f} s")


# -- the first hour --------------------------------------------------------------------

README = ROOT / "README.md"


def readme_lines(heading: str) -> list[str]:
    """The command lines (comments dropped) of the first code block under ``heading``."""
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    block = section[section.index("```sh\n") + 6 : section.index("\n```", section.index("```sh"))]
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def readme_command(heading: str, start: str) -> str:
    found = [line for line in readme_lines(heading) if line.startswith(start)]
    assert found, f"README's {heading} no longer shows `{start}...`"
    return found[0]


@dataclass
class Newcomer:
    """A person at a root shell on a fresh Debian 12 machine (a container of the drill
    base image): each command in a new login shell, as typed into a terminal."""

    cid: str
    cwd: str = "/root"
    log: list[str] = field(default_factory=list)

    def sh(self, command: str, *, expect: int | None = 0, answer: str = "") -> str:
        started = time.monotonic()
        env = {"PIP_CERT": CA_IN_CONTAINER, "DEBIAN_FRONTEND": "noninteractive"}
        argv = ["docker", "exec", "-i", "-w", self.cwd, *(f"-e{n}" for n in env)]
        done = subprocess.run(
            [*argv, self.cid, "bash", "-lc", command],
            input=answer,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        out = done.stdout + done.stderr
        took = time.monotonic() - started
        self.log.append(f"$ {command}   # exit {done.returncode}, {took:.1f} s\n{out[-1500:]}")
        assert "Traceback" not in out, "\n".join(self.log)
        if expect is not None:
            assert done.returncode == expect, "\n".join(self.log)
        return out


@pytest.mark.usefixtures("engine")
def test_first_hour_in_a_fresh_container(tmp_path: Path) -> None:
    install = readme_lines("## Install")
    apt, pipx = install[0], readme_command("## Install", "pipx install .")
    assert "pipx" in apt.split(), apt
    using = {
        start: readme_command("## Using it", start).replace("vultr", "example")
        for start in (
            "drkit init",
            "drkit policy validate",
            "drkit backup --host",
            "drkit snapshots --host",
            "drkit verify --host",
            "drkit restore --host vultr --plan",
            "drkit restore --host vultr --yes",
            "drkit status",
        )
    }
    started = time.monotonic()
    with container(base_image()) as cid:
        me = Newcomer(cid)
        me.sh(apt, answer="y\n")  # apt asks before installing: the person says yes
        me.sh(readme_command("## Install", "pipx ensurepath"))
        # The source, as a checkout or an unpacked tarball gives it.
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--prefix=drkit/", "HEAD"],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        subprocess.run(["docker", "cp", "-", f"{cid}:/root/"], input=archive, check=True)
        me.cwd = "/root/drkit"
        me.sh(pipx)
        installed = time.monotonic() - started
        assert readme_command("## Install", "cd ~"), "README says to leave the checkout"
        me.cwd = "/root"  # a new shell after `cd ~`
        me.sh(using["drkit init"])
        # Valid, with a warning: the sample's postgres source needs a client not here.
        assert "pg_dumpall is not installed on PATH here" in me.sh(using["drkit policy validate"])
        # The sample's postgres source needs a server this machine does not have.
        out = me.sh(using["drkit backup --host"], expect=1)
        assert re.search(r"pg_dump\w*: command not found", out), out
        assert "internal error" not in out, out
        # Edited as a newcomer would: a files source for the site, the sample's env
        # source kept (it matches /root/*/.env).
        me.sh(
            "mkdir -p /root/app /srv/site && printf 'API_TOKEN=abc\\nPORT=8080\\n' > "
            "/root/app/.env && echo '<h1>first hour</h1>' > /srv/site/index.html"
        )
        sample = tmp_path / "example.toml"
        docker("cp", f"{cid}:/root/.config/drkit/policies/example.toml", str(sample))
        text = sample.read_text()
        postgres = text.index('[[source]]\nkind = "postgres"')
        env_source = text.index('[[source]]\nkind = "env"')
        files = '[[source]]\nkind = "files"\nname = "site"\npaths = ["/srv/site"]\n\n'
        sample.write_text(text[:postgres] + files + text[env_source:])
        docker("cp", str(sample), f"{cid}:/root/.config/drkit/policies/example.toml")
        me.sh(using["drkit policy validate"])
        me.sh(using["drkit backup --host"])
        assert "example" in me.sh(using["drkit snapshots --host"])
        me.sh(using["drkit verify --host"])
        plan = me.sh(using["drkit restore --host vultr --plan"])
        assert "/root/app/.env" in plan or "env" in plan, plan
        me.sh("rm /root/app/.env /srv/site/index.html")
        me.sh(using["drkit restore --host vultr --yes"])
        assert me.sh("cat /root/app/.env") == "API_TOKEN=abc\nPORT=8080\n"
        assert me.sh("cat /srv/site/index.html") == "<h1>first hour</h1>\n"
        assert " ok " in me.sh(using["drkit status"])
    print("\n".join(me.log))
    print(f"first hour: installed in {installed:.0f} s, all in {time.monotonic() - started:.0f} s")
