"""pm2 source against a real pm2 daemon: save -> backup -> kill -> restore -> resurrect.

Apps are tiny HTTP servers that answer with a value from their PM2
environment, so "online after restore" is checked by asking them, and the
environment (which holds a secret) is proven to come back from the dump
while never appearing in facts, output, manifests or the catalog.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import drkit, write_policy
from tests.servers.pm2 import Pm2Home, bin_path_env, pm2_home
from tests.servers.ports import free_port

SECRET = "sk-live-PM2-ENV-7d1e0c55"

SERVER_JS = """const http = require('http');
http.createServer((req, res) => res.end(process.env.APP_NAME + ':' + process.env.API_KEY))
  .listen(Number(process.env.PORT), '127.0.0.1');
"""


def fetch(port: int) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def make_apps(base: Path, user: str) -> tuple[Path, dict[str, int]]:
    """Two apps (one in its own namespace) and an ecosystem file, owned by ``user``."""
    ports = {"voice-pipeline": free_port(), "db-proxy": free_port()}
    apps = []
    for name, port in ports.items():
        d = base / "srv" / name
        d.mkdir(parents=True)
        (d / "server.js").write_text(SERVER_JS)
        env = {"PORT": str(port), "APP_NAME": name, "API_KEY": SECRET}
        app: dict[str, Any] = {"name": name, "script": str(d / "server.js"), "cwd": str(d)}
        app["env"] = env
        if name == "db-proxy":
            app["namespace"] = "data"
        apps.append(app)
    eco = base / "srv" / "ecosystem.config.js"
    eco.write_text("module.exports = " + json.dumps({"apps": apps}, indent=2) + ";\n")
    pw = pwd.getpwnam(user)
    for p in [base / "srv", *(base / "srv").rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return eco, ports


def start_apps(pm2: Pm2Home, eco: Path, ports: dict[str, int]) -> None:
    pm2.run("start", str(eco))
    pm2.wait_online(set(ports))
    # "online" is pm2's word for a started process; node binds its port a moment later
    # (seconds on a busy machine).
    for name, port in ports.items():
        assert fetch_soon(port) == f"{name}:{SECRET}"


def fetch_soon(port: int, within: float = 30.0) -> str | None:
    """``fetch(port)`` retried until it answers or ``within`` seconds passed."""
    deadline = time.monotonic() + within
    while (body := fetch(port)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return body


def policy_for(tmp_path: Path, keys: Any, pm2: Pm2Home, *ecosystem: Path) -> Path:
    source: dict[str, Any] = {"kind": "pm2", "user": pm2.user, "pm2_home": str(pm2.home)}
    source["ecosystem"] = [str(e) for e in ecosystem]
    return write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [source],
    )


def restore(policy: Path, keys: Any, *extra: str) -> tuple[dict[str, Any], str]:
    """Restore through the CLI; its JSON report and its whole output."""
    res = drkit(
        "restore",
        "--policy",
        str(policy),
        "--identity",
        str(keys.identity_file),
        "--yes",
        "--json",
        *extra,
        env=bin_path_env(),
    )
    assert res.stdout, res.output
    return json.loads(res.stdout), res.output


def checks_of(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def details_of(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["checks"]}


def test_pm2_roundtrip_as_owner_resurrects_apps_and_never_leaks_env(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any, leak_check: Any
) -> None:
    user = "nobody"  # a daemon owned by someone else than drkit's user: runs as that user
    eco, ports = make_apps(open_dir, user)
    with pm2_home(open_dir, user) as pm2:
        start_apps(pm2, eco, ports)
        policy = policy_for(tmp_path, keys, pm2, eco)
        dump = pm2.home / "dump.pm2"
        assert not dump.exists()

        backup = drkit("backup", "--policy", str(policy), "--json", env=bin_path_env(), check=True)
        facts = snapshot_facts(policy, "pm2")
        saved_dump = dump.read_bytes()  # written by the pm2 save drkit ran as nobody
        assert SECRET.encode() in saved_dump
        apps = {a["name"]: a for a in facts["apps"]}
        assert set(apps) == set(ports)
        for name in ports:
            assert apps[name]["cwd"] == str(open_dir / "srv" / name)
            assert apps[name]["script"] == str(open_dir / "srv" / name / "server.js")
            assert apps[name]["exec_interpreter"] == "node"
            assert apps[name]["exec_mode"] == "fork_mode"
        assert apps["db-proxy"]["namespace"] == "data"
        assert apps["voice-pipeline"]["namespace"] == "default"
        # The TCP ports each app listened on, read from /proc as the owner (no iproute2).
        assert {n: a["listen"] for n, a in apps.items()} == {n: [p] for n, p in ports.items()}
        assert facts["listen_notes"] == []
        assert facts["saved"] is True and facts["user"] == user
        assert facts["ecosystem_warnings"] == []
        entries = {e["path"]: e for e in facts["entries"]}
        assert entries[str(dump)]["owner"] == user
        assert str(eco) in entries and str(pm2.home / "module_conf.json") in entries

        # Disaster: the daemon and its apps are gone, and so are PM2_HOME and the
        # ecosystem file.
        pm2.stop_daemon()
        assert all(fetch(p) is None for p in ports.values())
        shutil.rmtree(pm2.home)
        eco_text = eco.read_text()
        eco.unlink()

        plan = drkit(
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            "--plan",
            env=bin_path_env(),
            check=True,
        )
        assert (
            "then check that each app listens again on its ports of backup time (up to 30s): "
            f"voice-pipeline :{ports['voice-pipeline']}, db-proxy :{ports['db-proxy']}"
        ) in plan.stdout, plan.stdout

        report, output = restore(policy, keys)
        steps = report["steps"]
        assert report["verdict"] == "pass", output
        assert dump.read_bytes() == saved_dump
        assert eco.read_text() == eco_text and eco.stat().st_uid == pwd.getpwnam(user).pw_uid
        assert dump.stat().st_uid == pwd.getpwnam(user).pw_uid
        assert pm2.home.stat().st_uid == pwd.getpwnam(user).pw_uid
        assert "pm2: app voice-pipeline: online" in steps and "pm2: app db-proxy: online" in steps
        assert checks_of(report) == {
            "files restored": "pass",
            "app voice-pipeline": "pass",
            "app db-proxy": "pass",
        }
        for name, port in ports.items():  # a pass means the app serves its port again
            assert details_of(report)[f"app {name}"] == f"online, listening on :{port}"
        for name, port in ports.items():  # running again, with the env from the dump
            assert fetch_soon(port) == f"{name}:{SECRET}"
        assert pm2.states() == {"voice-pipeline": "online", "db-proxy": "online"}
        daemon = pm2.daemon_pid()
        assert daemon is not None
        assert pwd.getpwuid(os.stat(f"/proc/{daemon}").st_uid).pw_name == user

        leak_check(SECRET, tmp_path / "repo", json.dumps(facts), backup.output, output)


def test_pm2_stopped_daemon_and_missing_app_code_are_findings(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any
) -> None:
    eco, ports = make_apps(open_dir, "root")
    with pm2_home(open_dir, "root") as pm2:
        start_apps(pm2, eco, ports)
        pm2.run("save")
        pm2.stop_daemon()
        # Seed 000's mistake, kept in an old ecosystem file the policy also lists.
        legacy = open_dir / "srv" / "legacy.config.js"
        legacy.write_text("// config\nrequire('dotenv').config();\nmodule.exports = {apps: []};\n")
        policy = policy_for(tmp_path, keys, pm2, eco, legacy)

        # No daemon: drkit must not start one; it backs up the last saved dump.
        drkit("backup", "--policy", str(policy), env=bin_path_env(), check=True)
        assert pm2.daemon_pid() is None
        facts = snapshot_facts(policy, "pm2")
        assert facts["saved"] is False and "not running" in facts["save_skipped"]
        assert {a["name"] for a in facts["apps"]} == set(ports)
        [warning] = facts["ecosystem_warnings"]
        assert warning.startswith(f"{legacy} loads dotenv")

        # A fresh host where one app's code was not restored.
        shutil.rmtree(pm2.home)
        missing = open_dir / "srv" / "db-proxy" / "server.js"
        missing.unlink()
        report, output = restore(policy, keys)
        steps = report["steps"]
        finding = [s for s in steps if s.startswith("pm2: app db-proxy: script")]
        assert finding and str(missing) in finding[0] and "does not exist" in finding[0]
        assert "pm2: app voice-pipeline: online" in steps
        # The missing code is a finding (warn), not a failed restore.
        assert checks_of(report)["app db-proxy"] == "warn"
        assert checks_of(report)["app voice-pipeline"] == "pass"
        assert report["verdict"] == "warn", output
        assert fetch_soon(ports["voice-pipeline"]) == f"voice-pipeline:{SECRET}"
        assert fetch(ports["db-proxy"]) is None


def renamed_port_js(default: int) -> str:
    """A newer release of an app: it reads its port from HTTP_PORT, else its default
    (8080 in real life; a free port here). The environment in PM2's dump still says
    PORT: the app starts and serves, pm2 shows it online, but on the default port."""
    new = f"Number(process.env.HTTP_PORT || {default})"
    return SERVER_JS.replace("Number(process.env.PORT)", new)


def test_pm2_app_online_but_not_listening_on_its_port_fails_the_check(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any
) -> None:
    eco, ports = make_apps(open_dir, "root")
    with pm2_home(open_dir, "root") as pm2:
        start_apps(pm2, eco, ports)
        policy = policy_for(tmp_path, keys, pm2, eco)
        drkit("backup", "--policy", str(policy), env=bin_path_env(), check=True)
        facts = snapshot_facts(policy, "pm2")
        assert {a["name"]: a["listen"] for a in facts["apps"]} == {n: [p] for n, p in ports.items()}

        # The fresh host got db-proxy's newer code (restored by another source, or
        # deployed before the restore): it starts, and listens, but not on its port.
        pm2.stop_daemon()
        shutil.rmtree(pm2.home)
        default = free_port()
        (open_dir / "srv" / "db-proxy" / "server.js").write_text(renamed_port_js(default))
        started = time.monotonic()
        report, output = restore(policy, keys)
        assert report["verdict"] == "fail", output
        assert "pm2: app db-proxy: online" in report["steps"]  # pm2's word: started
        assert pm2.states() == {"voice-pipeline": "online", "db-proxy": "online"}
        assert checks_of(report) == {
            "files restored": "pass",
            "app voice-pipeline": "pass",
            "app db-proxy": "fail",
        }
        details = details_of(report)
        port = ports["db-proxy"]
        assert details["app db-proxy"] == (
            f"online but not listening on :{port} within 30s (it listened at backup)"
        )
        assert details["app voice-pipeline"] == (f"online, listening on :{ports['voice-pipeline']}")
        assert time.monotonic() - started >= 30  # it waited for the port
        assert fetch(port) is None
        assert fetch_soon(default) == f"db-proxy:{SECRET}"  # it serves, elsewhere
        assert fetch_soon(ports["voice-pipeline"]) == f"voice-pipeline:{SECRET}"


def test_pm2_restore_refuses_to_overwrite_a_newer_dump(
    tmp_path: Path, open_dir: Path, keys: Any
) -> None:
    eco, ports = make_apps(open_dir, "root")
    with pm2_home(open_dir, "root") as pm2:
        start_apps(pm2, eco, ports)
        policy = policy_for(tmp_path, keys, pm2, eco)
        drkit("backup", "--policy", str(policy), env=bin_path_env(), check=True)
        pm2.run("delete", "db-proxy")
        pm2.run("save")
        newer = (pm2.home / "dump.pm2").read_bytes()
        res = drkit(
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            env=bin_path_env(),
        )
        assert res.returncode == 1
        assert f"{pm2.home}/dump.pm2" in res.stderr and "--force" in res.stderr
        assert (pm2.home / "dump.pm2").read_bytes() == newer
        assert pm2.states() == {"voice-pipeline": "online"}


def test_pm2_missing_on_the_target_refuses_the_restore_before_any_step(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any
) -> None:
    """pm2 not installed for the owner: the plan is REFUSED naming host, source and what
    to install (the version recorded at backup), and nothing is restored, not even the
    steps before pm2's (found only at `pm2 resurrect`, exit 127 came after them)."""
    home = open_dir / "pm2-home"
    home.mkdir()
    app = {
        "name": "web",
        "pm_exec_path": "/srv/web/server.js",
        "pm_cwd": "/srv/web",
        "status": "online",
        "env": {"API_KEY": SECRET},
    }
    (home / "dump.pm2").write_text(json.dumps([app]))
    site = open_dir / "site.conf"
    site.write_text("server_name example;\n")
    repo = {"url": (tmp_path / "repo").as_uri()}

    def policy(name: str, **pm2: str) -> Path:
        source = {"kind": "pm2", "user": "root", "pm2_home": str(home), **pm2}
        files = {"kind": "files", "name": "site", "paths": [str(site)]}
        return write_policy(tmp_path / name, "vultr", repo, [keys.recipient], [files, source])

    # Backed up where pm2 is installed (no daemon runs: none is started).
    drkit("backup", "--policy", str(policy("vultr.toml")), env=bin_path_env(), check=True)
    version = snapshot_facts(tmp_path / "vultr.toml", "pm2")["pm2_version"]
    assert version and version[0].isdigit()

    # The fresh host lacks pm2: the policy names where it would be.
    missing = policy("target.toml", pm2_bin=str(open_dir / "nvm" / "bin" / "pm2"))
    shutil.rmtree(home)
    site.unlink()
    identity = ("--identity", str(keys.identity_file))
    plan = drkit("restore", "--policy", str(missing), *identity, "--plan", env=bin_path_env())
    assert plan.returncode == 6, plan.output  # a plan with a refused step
    refused = [ln.strip() for ln in plan.stdout.splitlines() if "REFUSED" in ln]
    assert len(refused) == 1, plan.stdout
    assert refused[0].startswith("! REFUSED: host ") and "source pm2 (pm2)" in refused[0]
    assert f"{open_dir}/nvm/bin/pm2" in refused[0] and "not installed for root" in refused[0]
    assert f"npm install -g pm2@{version}" in refused[0]

    res = drkit("restore", "--policy", str(missing), *identity, "--yes", env=bin_path_env())
    assert res.returncode == 1, res.output
    assert "nothing was restored" in res.stderr and f"pm2@{version}" in res.stderr
    assert not site.exists() and not home.exists()
    assert SECRET not in res.output

    # With pm2 found (the default, on PATH) the same snapshot's plan is not refused.
    ok = drkit(
        "restore", "--policy", str(policy("vultr.toml")), *identity, "--plan", env=bin_path_env()
    )
    assert ok.returncode == 0 and "REFUSED" not in ok.stdout, ok.output
