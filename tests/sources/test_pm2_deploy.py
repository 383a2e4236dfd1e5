"""PM2 dumps taken while an operator deploys (issue #17).

A deploy loop (``pm2 reload``, ``pm2 restart``, ``pm2 start`` of a new app, ``pm2
delete``, a blue/green redeploy of an app onto a new port, and ``pm2 save``) runs
against a real daemon while ``drkit backup`` runs again and again. Every backup
either commits a consistent set or fails naming what kept changing; every committed
snapshot restores onto a fresh PM2_HOME, its apps come back online and each answers
on the port its restored dump gives it, and the recorded ports agree with the dump.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from drkit.sources.pm2_state import dump_identity, judge
from tests.helpers import drkit
from tests.servers.pm2 import APP_JS, Pm2Home, bin_path_env, pm2_home
from tests.servers.ports import free_port
from tests.sources.test_pm2 import checks_of, fetch, fetch_soon, policy_for

BACKUPS = 4


class Deployer(threading.Thread):
    """Deploys in bursts (a few pm2 commands, then ``pm2 save``) with quiet gaps,
    as a deploy script run now and then would; ``ops`` logs what it did."""

    def __init__(self, pm2: Pm2Home, root: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.pm2, self.root, self.rng = pm2, root, random.Random(seed)
        self.apps: dict[str, int] = {}  # name -> port, as deployed
        self.ops: list[str] = []
        self.errors: list[str] = []
        self.halt = threading.Event()
        self.serial = 0

    def start_app(self, name: str, *options: str) -> None:
        port = free_port()
        script = self.root / "srv" / name / "server.js"
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(APP_JS)
        # pm2 start hands the CLI's environment to the app: PORT and APP_NAME go in the dump.
        env = [f"PM2_HOME={self.pm2.home}", f"PORT={port}", f"APP_NAME={name}"]
        argv = [
            "env",
            "-C",
            "/",
            *env,
            str(self.pm2.pm2),
            "start",
            str(script),
            "--name",
            name,
            *options,
        ]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"pm2 start {name}: {res.stderr[-500:]}")
        self.apps[name] = port

    def new_name(self) -> str:
        self.serial += 1
        return f"app{self.serial}"

    def step(self) -> None:
        names = sorted(self.apps)
        op = self.rng.choice(["reload", "restart", "start", "delete", "bluegreen"])
        if op == "delete" and len(names) <= 2:
            op = "start"
        if op == "start" and len(names) >= 5:
            op = "reload"
        name = self.rng.choice(names)
        if op in ("reload", "restart"):
            self.pm2.run(op, name)
        elif op == "start":
            name = self.new_name()
            self.start_app(name)
        elif op == "delete":
            self.pm2.run("delete", name)
            del self.apps[name]
        else:  # the same app, redeployed onto another port
            self.pm2.run("delete", name)
            self.start_app(name)
        self.ops.append(f"{op} {name}")

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for _ in range(self.rng.randint(1, 3)):
                    self.step()
                self.pm2.run("save")
                self.ops.append("save")
                self.halt.wait(self.rng.uniform(1.0, 3.0))
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(repr(exc))


def wipe(pm2: Pm2Home) -> None:
    """The disaster: the daemon and its apps stopped, PM2_HOME emptied."""
    pm2.stop_daemon()
    for f in pm2.home.iterdir():
        shutil.rmtree(f) if f.is_dir() else f.unlink()


def snapshots(policy: Path, keys: Any) -> dict[str, dict[str, Any]]:
    """Snapshot id -> the pm2 source's facts, for every committed snapshot."""
    loaded = load_policy(policy)
    repo = open_repository(loaded)
    identities = load_identities(keys.identity_file)
    out = {}
    for manifest in repo.read_host(loaded.host).trusted:
        out[manifest.snapshot] = read_facts(repo, manifest, identities)["pm2"]
    return out


def restored_ports(dump: Path) -> dict[str, int]:
    """App name -> the PORT its restored dump gives it (apps online at backup)."""
    entries = json.loads(dump.read_text())
    return {e["name"]: int(e["env"]["PORT"]) for e in entries if e["status"] == "online"}


def test_backups_during_a_deploy_are_consistent_or_fail_naming_the_change(
    tmp_path: Path, open_dir: Path, keys: Any
) -> None:
    with pm2_home(open_dir, "root") as pm2:
        deployer = Deployer(pm2, open_dir, seed=17)
        for _ in range(3):
            deployer.start_app(deployer.new_name())
        pm2.wait_online(set(deployer.apps))
        for name, port in deployer.apps.items():
            assert fetch_soon(port) == f"{name} ok"
        policy = policy_for(tmp_path, keys, pm2)

        results = []
        deployer.start()
        try:
            for _ in range(BACKUPS):
                results.append(drkit("backup", "--policy", str(policy), env=bin_path_env()))
        finally:
            deployer.halt.set()
            deployer.join(timeout=120)
        assert not deployer.errors, deployer.errors
        assert len(deployer.ops) >= BACKUPS, deployer.ops  # the deploy ran throughout

        for res in results:
            if res.returncode != 0:  # never a torn dump or another error: the change, named
                assert "kept changing while its dump was taken" in res.stderr, res.output
                assert "app app" in res.stderr, res.output
        taken = snapshots(policy, keys)
        assert len(taken) == sum(r.returncode == 0 for r in results) >= 2, [
            r.output for r in results
        ]
        # The deploy did overlap the dumps: some were taken again (or a backup failed).
        retried = [f for f in taken.values() if f["dump_tries"] > 1]
        assert retried or len(taken) < BACKUPS, deployer.ops
        for facts in retried:
            said = ("taken again", "restarted at each")  # the latter: restarts all along
            assert any(x in w for w in facts["warnings"] for x in said), facts["warnings"]

        for snapshot, facts in sorted(taken.items()):
            wipe(pm2)
            res = drkit(
                "restore",
                "--policy",
                str(policy),
                "--identity",
                str(keys.identity_file),
                "--snapshot",
                snapshot,
                "--yes",
                "--json",
                env=bin_path_env(),
            )
            report = json.loads(res.stdout)
            assert report["verdict"] == "pass", (snapshot, res.output)
            ports = restored_ports(pm2.home / "dump.pm2")
            apps = {a["name"]: a for a in facts["apps"]}
            assert set(apps) == set(ports), (snapshot, apps, ports)
            for name, port in ports.items():
                # The facts agree with the dump: a recorded port is the dump's.
                assert apps[name].get("listen", [port]) in ([], [port]), (snapshot, name)
                assert fetch_soon(port) == f"{name} ok", (snapshot, name, port)
                assert checks_of(report)[f"app {name}"] == "pass"
            assert pm2.states() == dict.fromkeys(ports, "online")


# A `pm2` first on PATH for drkit: the real pm2, and right after drkit's `pm2 save` the
# operator's deploy step, run with the real pm2 (at most $DEPLOYS times in all): the
# race of a deploy with the backup, made to happen at its worst moment every time.
WRAPPER = """#!/bin/sh
"$REAL_PM2" "$@"; rc=$?
if [ "$1" = save ]; then
    n=$(ls "$DEPLOY_DIR" | wc -l)
    if [ "$n" -lt "$DEPLOYS" ]; then mkdir "$DEPLOY_DIR/$n" && sh "$DEPLOY_SCRIPT" >&2; fi
fi
exit $rc
"""
# Blue/green: the app goes and comes back on another port; the deploy saves later.
REDEPLOY = """set -e
"$REAL_PM2" delete web >/dev/null
PORT=$(cat "$NEXT_PORT") APP_NAME=web "$REAL_PM2" start "$WEB_JS" --name web >/dev/null
"""


def racing_env(pm2: Pm2Home, root: Path, deploys: int) -> tuple[dict[str, str], Path]:
    """Environment for drkit with the racing ``pm2``; the file holding the next port."""
    wrapper = root / "racing-bin" / "pm2"
    wrapper.parent.mkdir()
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    (root / "deploys").mkdir()
    (root / "redeploy.sh").write_text(REDEPLOY)
    env = bin_path_env()
    env.update(
        PATH=f"{wrapper.parent}:{env['PATH']}",
        REAL_PM2=str(pm2.pm2),
        DEPLOY_DIR=str(root / "deploys"),
        DEPLOYS=str(deploys),
        DEPLOY_SCRIPT=str(root / "redeploy.sh"),
        NEXT_PORT=str(root / "next-port"),
        WEB_JS=str(root / "srv" / "web" / "server.js"),
        PM2_HOME=str(pm2.home),
    )
    return env, root / "next-port"


def start_web(pm2: Pm2Home, root: Path) -> int:
    deployer = Deployer(pm2, root, seed=0)
    deployer.start_app("web")
    deployer.start_app("api")
    pm2.wait_online({"web", "api"})
    return deployer.apps["web"]


def test_a_redeploy_right_after_the_save_is_seen_and_the_dump_taken_again(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any
) -> None:
    """Without the second look, the dump held web's old port while the facts recorded
    the new one: the restore's port check failed on a good snapshot."""
    with pm2_home(open_dir, "root") as pm2:
        old = start_web(pm2, open_dir)
        env, next_port = racing_env(pm2, open_dir, deploys=1)
        new = free_port()
        next_port.write_text(str(new))
        policy = policy_for(tmp_path, keys, pm2)
        res = drkit("backup", "--policy", str(policy), env=env, check=True)
        assert fetch_soon(new) == "web ok"
        facts = snapshot_facts(policy, "pm2")

        wipe(pm2)
        restored = drkit(
            "restore",
            "--policy",
            str(policy),
            "--identity",
            str(keys.identity_file),
            "--yes",
            "--json",
            env=bin_path_env(),
        )
        report = json.loads(restored.stdout)
        assert report["verdict"] == "pass", restored.output
        assert restored_ports(pm2.home / "dump.pm2")["web"] == new
        assert checks_of(report)["app web"] == "pass"
        assert fetch_soon(new) == "web ok" and fetch(old) is None

        apps = {a["name"]: a for a in facts["apps"]}
        assert apps["web"]["listen"] == [new]
        assert facts["dump_tries"] == 2
        [retried] = facts["dump_retried"]
        assert "app web restarted" in retried or "app web started" in retried, retried
        assert "app web" in res.output and "taken again" in res.output


def test_a_deploy_that_never_pauses_fails_the_source_naming_the_app(
    tmp_path: Path, open_dir: Path, keys: Any
) -> None:
    with pm2_home(open_dir, "root") as pm2:
        start_web(pm2, open_dir)
        env, next_port = racing_env(pm2, open_dir, deploys=100)
        next_port.write_text(str(free_port()))
        policy = policy_for(tmp_path, keys, pm2)
        res = drkit("backup", "--policy", str(policy), env=env)
        assert res.returncode == 1, res.output
        assert "kept changing while its dump was taken (6 tries)" in res.stderr, res.stderr
        assert "app web" in res.stderr and "nothing stored for it" in res.stderr
        assert not list((tmp_path / "repo").rglob("manifest.json"))
        leftovers = [p.name for p in pm2.home.iterdir() if p.name.startswith(".drkit-dump-")]
        assert leftovers == []


# Serves for a moment, then exits: pm2 restarts it again and again (--max-restarts: it
# never gives up on it).
FLAKY_JS = APP_JS + "setTimeout(() => process.exit(1), 300);\n"


def test_an_app_in_a_crash_loop_does_not_fail_the_backup_forever(
    tmp_path: Path, open_dir: Path, keys: Any, snapshot_facts: Any
) -> None:
    with pm2_home(open_dir, "root") as pm2:
        web = start_web(pm2, open_dir)
        deployer = Deployer(pm2, open_dir, seed=0)
        deployer.start_app("flaky", "--max-restarts", "100000")
        (open_dir / "srv" / "flaky" / "server.js").write_text(FLAKY_JS)
        pm2.run("restart", "flaky")
        policy = policy_for(tmp_path, keys, pm2)
        res = drkit("backup", "--policy", str(policy), env=bin_path_env(), check=True)
        facts = snapshot_facts(policy, "pm2")
        assert facts["restarting"] == ["flaky"] and facts["dump_tries"] == 6
        apps = {a["name"]: a for a in facts["apps"]}
        assert set(apps) == {"web", "api", "flaky"}
        assert "listen" not in apps["flaky"] and apps["web"]["listen"] == [web]
        assert "app(s) flaky restarted at each of the 6 looks" in res.output


def proc(pm_id: int, name: str, pid: int, restarts: int = 0, status: str = "online") -> Any:
    """One entry as ``process_states`` gives it."""
    entry = {"pm_id": pm_id, "name": name, "pid": pid, "restarts": restarts}
    entry.update(status=status, uptime=pid * 1000, namespace="default", module=False)
    return entry


def dumped(*procs: dict[str, Any]) -> Counter[tuple[str, str, str, int, int]]:
    """The dump's identity of these processes, as ``dump_identity`` reads a dump."""
    keys = {
        "name": "name",
        "namespace": "namespace",
        "status": "status",
        "restarts": "restart_time",
        "uptime": "pm_uptime",
    }
    return Counter(dump_identity({keys[k]: p[k] for k in keys}) for p in procs)


def test_judge_names_each_kind_of_change_and_tells_restarts_apart() -> None:
    web, api = proc(0, "web", 100), proc(1, "api", 200)
    same = judge([web, api], [web, api], dumped(web, api), "/h/dump.pm2")
    assert same == ([], [])
    # A pm2 module (not in the dump) that started meanwhile is no change of the apps.
    logrotate = {**proc(9, "pm2-logrotate", 900), "module": True}
    assert judge([web], [web, logrotate], dumped(web), "/h/dump.pm2") == ([], [])
    # A deploy: api restarted, new started, web deleted.
    after = [proc(1, "api", 201, restarts=1), proc(2, "new", 300)]
    changes, restarting = judge([web, api], after, dumped(*after), "/h/dump.pm2")
    assert changes == ["app api restarted (pid 200 -> 201)", "app new started", "app web deleted"]
    assert restarting == []
    # The dump of another, earlier `pm2 save`: it still lists web.
    changes, restarting = judge([api], [api], dumped(web, api), "/h/dump.pm2")
    assert changes == ["/h/dump.pm2 lists app web, which pm2 no longer runs"] and not restarting
    # Only restarts (the same pm_ids and names, the dump lists the same apps).
    flaky = proc(1, "api", 202, restarts=2, status="launching")
    changes, restarting = judge([web, api], [web, flaky], dumped(web, api), "/h/dump.pm2")
    assert changes == ["app api restarted (pid 200 -> 202)"] and restarting == ["api"]
