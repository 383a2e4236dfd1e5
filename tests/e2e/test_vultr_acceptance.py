"""Issue 4's acceptance test: a vultr-like host over a real sshd, restored onto a fresh host.

Source: this machine reached over a real sshd on 127.0.0.1, holding PostgreSQL
``callmeback`` and its owner role, the seed's four services' ``.env`` files,
PM2 running two of them (code as a ``files`` source), and a Caddy data dir with
a certificate made at test time. Target: a *different, fresh* host, a container
of the vultr drill image, reached as ``ssh://root@127.0.0.1:PORT``. One backup,
one restore: the plan is asserted step by step, then the restore's own verdict,
then each fact again from inside the container with ``docker exec``. Last, the
finding when the apps' code is not restored: PM2 cannot start what is missing,
and the restore says so instead of passing.
"""

from __future__ import annotations

import json
import pwd
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.drills.test_drill import SERVICES, engine, start_pm2_apps, vultr_like
from tests.helpers import drkit, load_callmeback, write_policy
from tests.servers.pm2 import PM2_VERSION, pm2_bin
from tests.servers.postgres import PgServer
from tests.servers.sshd import SshHost, sshd_server

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

HOST = "vultr"
DOMAIN = "db.example.invalid"


@contextmanager
def fresh_target(authorized_key: str) -> Iterator[Future[Any]]:
    """A fresh vultr-like container, started in the background (vfs copies the image for
    each container, which takes a while); removed at exit whatever happened."""
    from drkit.drills.container import start_container
    from drkit.drills.images import ensure_base_image, ensure_host_image

    def start() -> Any:
        image = ensure_host_image(HOST, base_tag=ensure_base_image().tag)
        return start_container(image.tag, host="fresh-vultr", authorized_keys=authorized_key)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(start)
        try:
            yield future
        finally:
            if future.exception() is None:
                future.result().remove()


def checksums(sql: Callable[[str], str]) -> dict[str, str]:
    """Row count and md5 of every table's content, through ``sql`` (one query -> output)."""
    tables = sql(
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog','information_schema') ORDER BY 1;"
    ).split()
    assert tables
    return {
        t: sql(
            "SELECT count(*) || ':' || "
            f"coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM {t} x;"
        ).strip()
        for t in tables
    }


def sql_in(box: Any, database: str, query: str) -> str:
    """``query``'s output from psql inside the container, as the postgres user."""
    argv = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database]
    return str(box.exec(argv, input=query.encode(), user="postgres").stdout.decode())


def package_default_then_edited(
    box: Any, policies: Path, dest: str, known_hosts: Path, identity: Path
) -> None:
    """On the fresh host (the real caddy package): a backed-up Caddyfile that differs from
    its /etc/caddy/Caddyfile is planned as "replaces package default" without any flag
    while that file is as the package shipped it; once edited there, it needs
    --force-files."""
    from drkit.actions.restore_target import target_runner
    from drkit.policy.loader import load_policy
    from drkit.policy.models import CaddyConfig
    from drkit.sources.base import RestoreOptions
    from drkit.sources.caddy import CaddySource

    policy = load_policy(policies / f"{HOST}.toml")
    runner, _label = target_runner(
        policy, dest, identity_file=str(identity), known_hosts=str(known_hosts)
    )
    config = CaddyConfig(
        kind="caddy",
        name="etc",
        config_paths=["/etc/caddy"],
        data_dir="/var/lib/caddy/.local/share/caddy",
    )
    source = CaddySource("etc", config, runner)
    facts = {
        "entries": [
            {
                "path": "/etc/caddy/Caddyfile",
                "type": "file",
                "mode": "0644",
                "owner": "root",
                "group": "root",
                "size": 20,
                "sha256": "0" * 64,
            }
        ],
        "files": 1,
        "bytes": 20,
        "truncated": False,
    }
    try:
        plan = source.describe(facts, RestoreOptions())
        assert plan.blocked is None, plan
        assert "replaces package default /etc/caddy/Caddyfile (unmodified)" in plan.actions
        box.exec(
            [
                "sh",
                "-c",
                "cp /etc/caddy/Caddyfile /tmp/pkg && echo '# mine' >> /etc/caddy/Caddyfile",
            ]
        )
        edited = source.describe(facts, RestoreOptions())
        assert edited.blocked and "use --force-files to overwrite" in edited.blocked, edited
        assert source.describe(facts, RestoreOptions(force_files=True)).blocked is None
    finally:
        box.exec(["sh", "-c", "[ ! -f /tmp/pkg ] || mv /tmp/pkg /etc/caddy/Caddyfile"])
        runner.close()


def served_fingerprint(box: Any, name: str) -> str:
    """SHA-256 of the certificate the container serves for ``name`` on its 127.0.0.1:443."""
    script = (
        'openssl s_client -connect 127.0.0.1:443 -servername "$1" </dev/null 2>/dev/null '
        "| openssl x509 -outform DER | sha256sum"
    )
    out: str = box.exec(["sh", "-c", script, "sh", name]).stdout.decode()
    return out.split()[0]


def key_names(text: str) -> list[str]:
    return sorted(ln.split("=", 1)[0] for ln in text.splitlines() if "=" in ln)


def source_host(base: Path, pg: PgServer, uniq: str) -> dict[str, Any]:
    """The vultr-like host's files (tests/drills/test_drill.py) plus owners a restore must
    keep by name: db-proxy's .env belongs to postgres (another uid in the image), Caddy's
    data dir to caddy."""
    paths = vultr_like(base, pg, uniq, cert_days=60)
    envs = {app: paths["root"] / app / ".env" for app in SERVICES}
    for app, path in envs.items():  # distinct key names per service
        path.write_text(path.read_text() + f"{app.upper().replace('-', '_')}_TOKEN=t-{uniq}\n")
    shutil.chown(envs["db-proxy"], "postgres", "postgres")
    envs["db-proxy"].chmod(0o640)
    data = paths["caddy"] / "data"
    for p in [data, *data.rglob("*")]:
        shutil.chown(p, "caddy", "caddy")
        p.chmod(0o700 if p.is_dir() else 0o600)
    paths["envs"] = envs
    paths["cert"] = next(data.rglob(f"{DOMAIN}.crt"))
    return paths


def policy_dir(
    tmp: Path,
    ssh: SshHost,
    known_hosts: Path,
    pg: PgServer,
    db: str,
    keys: Any,
    paths: dict[str, Any],
    pm2_home: Path,
) -> Path:
    directory = tmp / "policies"
    directory.mkdir()
    conn = ssh.connection(known_hosts=str(known_hosts))
    extra = "[connection]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in conn.items())
    write_policy(
        directory / f"{HOST}.toml",
        HOST,
        {"url": (tmp / "repo").as_uri()},
        [keys.recipient],
        [
            # sudo_user postgres: on a fresh Debian/Ubuntu host only peer auth works.
            {
                "kind": "postgres",
                "name": "callmeback",
                "database": db,
                "host": "127.0.0.1",
                "port": pg.port,
                "user": "postgres",
                "sudo_user": "postgres",
            },
            {"kind": "env", "name": "env", "paths": [f"{paths['root']}/*/.env"]},
            {"kind": "files", "name": "apps", "paths": [str(paths["root"])], "exclude": [".env"]},
            {
                "kind": "caddy",
                "name": "caddy",
                "config_paths": [str(paths["caddy"] / "etc")],
                "data_dir": str(paths["caddy"] / "data"),
            },
            {
                "kind": "pm2",
                "name": "pm2",
                "user": "root",
                "pm2_home": str(pm2_home),
                "ecosystem": [str(paths["ecosystem"])],
            },
        ],
        extra,
    )
    return directory


def test_vultr_host_over_ssh_restored_onto_a_fresh_host(
    engine: None, pg: PgServer, uniq: str, keys: Any, tmp_path: Path
) -> None:
    db, role = f"callmeback_{uniq}", f"cmb_user_{uniq}"
    load_callmeback(pg, db, role, "pw-" + uniq)
    base = tmp_path / "host"
    base.mkdir()
    paths = source_host(base, pg, uniq)
    # The host's pm2 is on its PATH (the test's comes from npm into a local prefix).
    path = f"{pm2_bin().parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    with (
        sshd_server(f"SetEnv PATH={path}") as ssh,
        fresh_target(ssh.identity_file.with_suffix(".pub").read_text()) as target,
        start_pm2_apps(base, paths) as pm2,
    ):
        known_hosts = ssh.write_known_hosts(tmp_path / "known_hosts")
        policies = policy_dir(tmp_path, ssh, known_hosts, pg, db, keys, paths, pm2.home)
        env = {"DRKIT_POLICY_DIR": str(policies)}
        ident = ["--identity", str(keys.identity_file)]
        drkit("backup", "--host", HOST, env=env, check=True)
        source_sums = checksums(lambda q: pg.psql(db, q))

        box = target.result()
        dest = f"ssh://root@127.0.0.1:{box.port(22)}"
        # The fresh host's PostgreSQL is the distribution's (socket, port 5432, peer auth).
        pg_target = ["--pg-host", "/var/run/postgresql", "--pg-port", "5432"]
        # The fresh machine's host key is in no known_hosts file yet: refused, with its
        # fingerprint, until the person accepts it explicitly (then it is recorded).
        target_hosts = tmp_path / "target_known_hosts"
        args = [
            "restore",
            "--host",
            HOST,
            "--target",
            dest,
            *pg_target,
            *ident,
            "--target-known-hosts",
            str(target_hosts),
        ]
        refused = drkit(*args, "--plan", env=env)
        assert refused.returncode == 1 and "unknown host key" in refused.output, refused.output
        assert "SHA256:" in refused.output and not target_hosts.exists()

        # ---- the plan, step by step, touching nothing -------------------------------
        accepted = drkit(*args, "--accept-new-host-key", "--plan", "--json", env=env, check=True)
        plan = json.loads(accepted.stdout)
        assert box.known_hosts_line().split()[:3] == target_hosts.read_text().split()[:3]
        assert plan["target"] == dest
        steps = plan["steps"]
        assert [(s["step"], s["source"], s["kind"]) for s in steps] == [
            (1, "callmeback", "postgres"),
            (2, "env", "env"),
            (3, "apps", "files"),
            (4, "caddy", "caddy"),
            (5, "pm2", "pm2"),
        ]
        assert all(s["blocked"] is None and not s["already_done"] for s in steps)
        where = "/var/run/postgresql:5432"
        # Roles/globals first (the session's server may hold other tests' roles too),
        # then the database.
        *roles, database = steps[0]["actions"]
        assert roles[0].startswith(f"roles on {where}: create ")
        assert role in roles[0].split(": create ", 1)[1].split(", ")
        # Other roles are kept; the bootstrap superuser and the reserved ones are
        # never altered (role-only globals, docs/security.md).
        kept = (f"roles on {where}: keep existing ", f"roles on {where}: never altered ")
        assert all(a.startswith(kept) for a in roles[1:])
        assert database == f"database {db} on {where}: create, load {len(source_sums)} table(s)"
        # Each file step says where it stages and that it fits (#16 item 4).
        tar_steps = (1, 2, 3, 4)  # env, apps, caddy, pm2
        staged = {n: [a for a in steps[n]["actions"] if a.startswith("stage ")] for n in tar_steps}
        for lines in staged.values():
            assert lines and all(a.endswith("rename into place per top-level path") for a in lines)
        plain = {n: [a for a in steps[n]["actions"] if a not in staged[n]] for n in tar_steps}
        assert f"in {paths['root']}/.drkit-staging-" in staged[1][0]
        assert plain[1] == ["write 4 file(s) under /, modes and owners as backed up"]
        code = [p for p in paths["root"].rglob("*") if p.is_file() and p.name != ".env"]
        assert plain[2] == [f"write {len(code)} file(s) under /, modes and owners as backed up"]
        caddy = plain[3]
        assert (
            caddy[0].startswith("write ") and caddy[1] == f"chown -R caddy: {paths['caddy']}/data"
        )
        cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        assert re.fullmatch(
            rf"certificate {DOMAIN} valid until \S+, sha256 {fingerprint[:16]}\.\.\.", caddy[2]
        )
        # No systemd in the container: Caddy's own reload, then the site is probed.
        caddyfile = f"{paths['caddy']}/etc/Caddyfile"
        assert caddy[3] == (
            f"reload caddy: caddy reload --config {caddyfile} --force (start it if not running)"
            f"; then probe https://{DOMAIN}"
        )
        pm2_actions = plain[4]
        assert pm2_actions[1] == (
            f"pm2 resurrect as root (PM2_HOME={pm2.home}): start voice-pipeline, db-proxy"
        )
        # The code is not on the fresh host yet, but step 3 brings it: no finding.
        for app in ("voice-pipeline", "db-proxy"):
            script = paths["root"] / app / "server.js"
            assert f"app {app}: script {script} comes back in step 3 (apps)" in pm2_actions
        text = drkit(*args, "--plan", env=env, check=True).stdout
        # Free space moves between the two plans (other tests write to the same disk).
        free = re.compile(r"\(\S+ \S+ free there\)")
        lines = [free.sub("(free)", ln) for ln in text.splitlines()]
        assert lines[0].startswith(f"Restore plan: host {HOST}, snapshot {plan['snapshot']} ")
        assert lines[0].endswith(f"onto {dest}")
        # The text plan holds the same steps, each with the same actions, in that order.
        assert lines[1:] == [
            ln
            for s in steps
            for ln in [
                f" {s['step']}. {s['source']} ({s['kind']})",
                *(f"    - {free.sub('(free)', a)}" for a in s["actions"]),
            ]
        ]
        assert [ln for ln in lines if re.match(r"^ \d+\. ", ln)] == [
            " 1. callmeback (postgres)",
            " 2. env (env)",
            " 3. apps (files)",
            " 4. caddy (caddy)",
            " 5. pm2 (pm2)",
        ]
        # --plan touched nothing on the target.
        assert box.exec(["test", "!", "-e", str(paths["root"])], check=False).returncode == 0
        exists = f"SELECT count(*) FROM pg_database WHERE datname = '{db}';"
        assert sql_in(box, "postgres", exists).strip() == "0"

        # ---- the restore, and its own verdict ----------------------------------------
        res = drkit(*args, "--yes", env=env)
        assert res.returncode == 0, res.output
        out = res.stdout.splitlines()
        assert re.fullmatch(
            rf"{HOST}: restored snapshot {plan['snapshot']} onto {re.escape(dest)} in "
            r"[\d.]+s \(\d+ actions\); verdict: pass",
            out[-1],
        ), res.output
        checks = {m[1]: m[0] for m in re.findall(r"^  \[(\w+)\] ([^:]+: [^:]+):", res.stdout, re.M)}
        assert checks == {
            f"callmeback: row counts in {db}": "pass",
            "callmeback: roles present": "pass",
            "callmeback: logins": "pass",
            "env: files restored": "pass",
            "apps: files restored": "pass",
            "caddy: files restored": "pass",
            "caddy: data dir owner": "pass",
            "caddy: caddy reloaded": "pass",
            f"caddy: https {DOMAIN}": "pass",
            "pm2: files restored": "pass",
            "pm2: app voice-pipeline": "pass",
            "pm2: app db-proxy": "pass",
        }, res.output

        # ---- every fact again, from inside the container -----------------------------
        assert checksums(lambda q: sql_in(box, db, q)) == source_sums
        db_owner = sql_in(
            box,
            db,
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database();",
        )
        assert db_owner.strip() == role
        for path in paths["envs"].values():
            st = path.stat()
            want = f"{st.st_mode & 0o7777:o} {pwd.getpwuid(st.st_uid).pw_name}"
            got = box.exec(["stat", "-c", "%a %U", str(path)]).stdout.decode().strip()
            assert got == want, path
            content = box.exec(["cat", str(path)]).stdout.decode()
            assert key_names(content) == key_names(path.read_text()), path
            assert content == path.read_text(), path
        restored = box.exec(["cat", str(paths["cert"])]).stdout
        got_cert = x509.load_pem_x509_certificate(restored)
        assert got_cert.fingerprint(hashes.SHA256()).hex() == fingerprint
        # HTTPS answers with the backed-up certificate, with no manual step (asked here
        # with openssl inside the container, apart from drkit's own probe).
        assert served_fingerprint(box, DOMAIN) == fingerprint
        owners = box.exec(["find", f"{paths['caddy']}/data", "-printf", "%u %m %p\n"])
        for line in owners.stdout.decode().splitlines():
            user, mode, name = line.split(" ", 2)
            assert user == "caddy", line
            assert mode == ("600" if name.endswith((".crt", ".key", ".json")) else "700"), line
        jlist = box.exec(["env", f"PM2_HOME={pm2.home}", "pm2", "jlist"]).stdout.decode()
        procs = json.loads(next(ln for ln in jlist.splitlines() if ln.startswith("[")))
        assert {p["name"]: p["pm2_env"]["status"] for p in procs} == {
            "voice-pipeline": "online",
            "db-proxy": "online",
        }
        for app, port in paths["ports"].items():  # serving, with the env from PM2's dump
            body = box.exec(["curl", "-sf", f"http://127.0.0.1:{port}/health"]).stdout
            assert body.decode() == f"{app} ok"
        version = box.exec(["pm2", "--version"]).stdout.decode().split()[-1]
        assert version == PM2_VERSION  # the image pins the pm2 the source hosts run

        # ---- apps whose code is not restored: a finding, not a pass ------------------
        box.exec(["env", f"PM2_HOME={pm2.home}", "pm2", "kill"])
        box.exec(["rm", "-rf", "--", str(pm2.home), str(paths["root"] / "db-proxy")])
        script = paths["root"] / "db-proxy" / "server.js"
        plan = json.loads(
            drkit(*args, "--only", "pm2", "--plan", "--json", env=env, check=True).stdout
        )
        assert (
            f"app db-proxy: script {script} is neither on the target nor in this restore: "
            "PM2 cannot start it (restore the app's code)"
        ) in plan["steps"][0]["actions"]
        res = drkit(*args, "--only", "pm2", "--yes", "--json", env=env)
        assert res.returncode == 0, res.output  # a warning: the restore itself worked
        report = json.loads(res.stdout)
        assert any(
            s.startswith(f"pm2: app db-proxy: script {script} does not exist")
            for s in report["steps"]
        ), report["steps"]
        pm2_checks = {c["name"]: (c["status"], c["detail"]) for c in report["checks"]}
        assert pm2_checks["app db-proxy"] == (
            "warn",
            f"script {script} is missing on the target: restore its code",
        )
        # The app that is back listens again on its port of backup time.
        port = paths["ports"]["voice-pipeline"]
        assert pm2_checks["app voice-pipeline"] == ("pass", f"online, listening on :{port}")
        assert report["verdict"] == "warn"
        assert (paths["root"] / "db-proxy" / "server.js").exists()  # the source host: untouched

        # ---- Caddy cannot be reloaded: the verdict fails, naming the site ------------
        box.exec(["mv", "/usr/bin/caddy", "/usr/bin/caddy.moved"])
        try:
            res = drkit(*args, "--only", "caddy", "--yes", "--json", env=env)
        finally:
            box.exec(["mv", "/usr/bin/caddy.moved", "/usr/bin/caddy"])
        assert res.returncode == 1, res.output
        report = json.loads(res.stdout)
        assert report["verdict"] == "fail"
        failed = {c["name"]: c["detail"] for c in report["checks"] if c["status"] == "fail"}
        assert failed == {
            "caddy reloaded": f"caddy is not installed on the target: https://{DOMAIN} not served "
            "from the restored certificates"
        }, report["checks"]

        # ---- /etc/caddy/Caddyfile: Debian's untouched default is not user data --------
        package_default_then_edited(box, policies, dest, target_hosts, ssh.identity_file)
