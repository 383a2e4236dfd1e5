"""The vultr box as seeds 000 and 003 describe it, in a container of the vultr drill image.

At the paths ``policies/vultr.toml`` names (so the shipped policy backs it up as is):

- PostgreSQL ``callmeback`` (tests/data/callmeback.sql, applied from
  /root/migrations like seed 000's "Running Database Migrations", plus its
  009_create_admin_users.sql) owned by ``cmb_user`` (password login), and a
  service-specific role ``log_query`` (seed 000: "cmb_user (and other
  service-specific users)", "Service-specific users with limited
  permissions") allowed to read the tables;
- the four services of seed 000's "Services Running" under /root/<service>/,
  each with its ``.env`` (0600) that the app reads itself (seed 000's "The
  Right Way (Option 2)"): small node servers on their seed ports answering
  ``GET /health``; db-proxy and log-query-service log into PostgreSQL with
  their .env's role and password through a module in their node_modules
  (``cmb-db``, standing in for ``pg``: without node_modules they cannot
  answer), so a 200 from /health means code, node_modules, .env, role and
  password all came back;
- ecosystem.config.js for the three apps the policy lists (seed 000 shows
  log-query-service's), deepgram-proxy started without one (its start method
  is unknown: `pm2 start server.js --name`), all under PM2 as root with
  PM2_HOME /root/.pm2, then ``pm2 save``;
- /root/migrations;
- Caddy: seed 000's /etc/caddy/Caddyfile (three site blocks reverse-proxying
  to the apps, gzip, JSON logs under /var/log/caddy) for three names under
  ``.invalid`` (never the real domains), and a certificate per name in
  Caddy's storage as Let's Encrypt's would be (tls.py), owned by caddy; Caddy
  restarted so that 443 answers each name with its certificate.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from drkit.drills.container import HostContainer
from tests.helpers import DATA
from tests.seeded.tls import Certificate, make_certificate, served_fingerprints
from tests.seeded.tree import (
    Entry,
    Tree,
    caddy_tree,
    https_status,
    restart_caddy,
    wait_for,
    write_tree,
)

HOST = "vultr"
DATABASE = "callmeback"
OWNER = "cmb_user"
SERVICE_ROLE = "log_query"
PM2_HOME = "/root/.pm2"
# Seed 000 "Services Running": service -> port (deepgram-proxy's "varies": one is picked).
PORTS = {
    "voice-pipeline": 8080,
    "db-proxy": 3000,
    "log-query-service": 3001,
    "deepgram-proxy": 8081,
}
# The policy's pm2 source lists these three ecosystem files.
ECOSYSTEM = ("voice-pipeline", "db-proxy", "log-query-service")
# Seed 000 "Current Caddy Routes", under .invalid: name -> (app, Caddy log file).
SITES = {
    "voice.example.invalid": ("voice-pipeline", "voice-service"),
    "db.example.invalid": ("db-proxy", "db-service"),
    "logs.example.invalid": ("log-query-service", "logs-service"),
}

APP_JS = """\
// {name}: stands in for call-me-back's service of that name (seed 000, Services Running).
// It reads its own .env (seed 000, PM2 Environment Variable Issues, Option 2); what PM2
// sets (the ecosystem file's env) wins over the file.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');

for (const line of fs.readFileSync(path.join(__dirname, '.env'), 'utf8').split('\\n')) {{
  const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
  if (m && !(m[1] in process.env)) process.env[m[1]] = m[2];
}}
const name = require('./package.json').name;
// The real apps reach PostgreSQL through `pg` from their node_modules.
const db = process.env.POSTGRES_USER ? require('cmb-db') : null;

function reply(res, code, body) {{
  res.statusCode = code;
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify(body));
}}

http.createServer((req, res) => {{
  if (req.url !== '/health') return reply(res, 200, {{ service: name }});
  if (!db) return reply(res, 200, {{ service: name, status: 'ok' }});
  db.query('SELECT count(*) FROM calls', (err, calls) => {{
    if (err) return reply(res, 503, {{ service: name, status: 'error', error: err.message }});
    reply(res, 200, {{ service: name, status: 'ok', calls: Number(calls) }});
  }});
}}).listen(Number(process.env.PORT), '127.0.0.1');
"""

CMB_DB_JS = """\
// Stands in for the `pg` package (`npm install` on the real host): one query through psql
// over TCP, logged in with the app's .env role and password.
'use strict';
const { execFile } = require('child_process');

exports.query = (sql, cb) => {
  const e = process.env;
  const argv = ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', e.POSTGRES_HOST,
    '-p', e.POSTGRES_PORT, '-U', e.POSTGRES_USER, '-d', e.POSTGRES_DB, '-c', sql];
  const env = { ...e, PGPASSWORD: e.POSTGRES_PASSWORD, PGCONNECT_TIMEOUT: '5' };
  execFile('psql', argv, { env, timeout: 10000 }, (err, stdout, stderr) =>
    cb(err ? new Error(String(stderr || err.message).trim()) : null, String(stdout).trim()));
};
"""

ECOSYSTEM_JS = """\
// PM2 config (seed 000, PM2 Environment Variable Issues): no dotenv here, the app loads
// its own .env.
module.exports = {{
  apps: [{{
    name: '{name}',
    script: './server.js',
    cwd: '/root/{name}',
    env: {{ NODE_ENV: 'production', PORT: {port} }},
  }}],
}};
"""

SITE = """\
{domain} {{
    reverse_proxy localhost:{port}
{extra}    encode gzip
    log {{
        output file /var/log/caddy/{log}.log
        format json
    }}
}}
"""
# Seed 000: the logs site adds CORS headers.
CORS = """\
    header {
        Access-Control-Allow-Origin *
        Access-Control-Allow-Methods "GET, POST, OPTIONS"
        Access-Control-Allow-Headers "Authorization, Content-Type"
    }
"""

ADMIN_USERS_SQL = """\
-- seed 000, Running Database Migrations: psql -d callmeback -f 009_create_admin_users.sql
CREATE TABLE admin_users (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    role text NOT NULL DEFAULT 'admin',
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO admin_users (email, role)
    VALUES ('ops@example.invalid', 'owner'), ('oncall@example.invalid', 'admin');
ALTER TABLE admin_users OWNER TO cmb_user;
"""

SERVICE_GRANTS_SQL = """\
-- log-query-service reads calls and their stats with its own role.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO log_query;
"""


@dataclass
class VultrSeed:
    """What was put on the box: to compare a backup's facts and a restored host against."""

    certificates: dict[str, Certificate]  # domain -> certificate
    env_files: dict[str, str]  # path -> content
    passwords: dict[str, str]  # role -> password

    @property
    def fingerprints(self) -> dict[str, str]:
        return {d: c.sha256 for d, c in self.certificates.items()}


def _env_files(passwords: dict[str, str]) -> dict[str, str]:
    def token() -> str:
        return "test-" + secrets.token_hex(12)

    def db(role: str) -> str:
        return (
            f"POSTGRES_HOST=localhost\nPOSTGRES_PORT=5432\nPOSTGRES_DB={DATABASE}\n"
            f"POSTGRES_USER={role}\nPOSTGRES_PASSWORD={passwords[role]}\n"
        )

    return {
        "/root/voice-pipeline/.env": (
            f"PORT={PORTS['voice-pipeline']}\nTWILIO_ACCOUNT_SID=AC{secrets.token_hex(16)}\n"
            f"TWILIO_AUTH_TOKEN={token()}\nDEEPGRAM_API_KEY={token()}\n"
            f"ELEVENLABS_API_KEY={token()}\nDB_PROXY_URL=https://db.example.invalid\n"
            f"VULTR_DB_API_KEY={token()}\n"
        ),
        "/root/db-proxy/.env": f"PORT={PORTS['db-proxy']}\nAPI_KEY={token()}\n" + db(OWNER),
        "/root/log-query-service/.env": (
            f"PORT={PORTS['log-query-service']}\nADMIN_TOKEN={token()}\n" + db(SERVICE_ROLE)
        ),
        "/root/deepgram-proxy/.env": (
            f"PORT={PORTS['deepgram-proxy']}\nDEEPGRAM_API_KEY={token()}\n"
        ),
    }


def _tree(env_files: dict[str, str], certificates: dict[str, Certificate]) -> Tree:
    tree: Tree = {}
    for app in PORTS:
        root = f"/root/{app}"
        uses_db = "POSTGRES_USER=" in env_files[f"{root}/.env"]
        package: dict[str, Any] = {"name": app, "version": "1.0.0", "private": True}
        tree[root] = Entry(None, 0o755)
        tree[f"{root}/server.js"] = Entry(APP_JS.format(name=app).encode(), 0o644)
        tree[f"{root}/.env"] = Entry(env_files[f"{root}/.env"].encode(), 0o600)
        if uses_db:
            package["dependencies"] = {"cmb-db": "1.0.0"}
            module = f"{root}/node_modules/cmb-db"
            tree[f"{root}/node_modules"] = Entry(None, 0o755)
            tree[module] = Entry(None, 0o755)
            tree[f"{module}/index.js"] = Entry(CMB_DB_JS.encode(), 0o644)
            meta = {"name": "cmb-db", "version": "1.0.0", "main": "index.js"}
            tree[f"{module}/package.json"] = Entry(json.dumps(meta).encode(), 0o644)
        tree[f"{root}/package.json"] = Entry(json.dumps(package, indent=2).encode(), 0o644)
        if app in ECOSYSTEM:
            eco = ECOSYSTEM_JS.format(name=app, port=PORTS[app])
            tree[f"{root}/ecosystem.config.js"] = Entry(eco.encode(), 0o644)
    tree["/root/migrations"] = Entry(None, 0o755)
    tree["/root/migrations/001_callmeback.sql"] = Entry(
        (DATA / "callmeback.sql").read_bytes(), 0o644
    )
    tree["/root/migrations/009_create_admin_users.sql"] = Entry(ADMIN_USERS_SQL.encode(), 0o644)
    tree["/root/migrations/010_log_query_grants.sql"] = Entry(SERVICE_GRANTS_SQL.encode(), 0o644)
    sites = [
        SITE.format(
            domain=d, port=PORTS[app], log=log, extra=CORS if app == "log-query-service" else ""
        )
        for d, (app, log) in SITES.items()
    ]
    caddyfile = "# /etc/caddy/Caddyfile\n\n" + "\n".join(sites)
    return tree | caddy_tree(caddyfile, certificates.values())


def sql(box: HostContainer, query: str, database: str = "postgres") -> str:
    """``query``'s output (psql -At) as the postgres superuser inside the container."""
    argv = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", database]
    return box.exec(argv, input=query.encode(), user="postgres").stdout.decode()


def pm2(box: HostContainer, *args: str, cwd: str = "/") -> str:
    """``pm2 ARGS`` as root with PM2_HOME /root/.pm2 inside the container."""
    script = 'cd "$1" && shift && exec pm2 "$@"'
    argv = ["bash", "-c", script, "pm2", cwd, *args]
    return box.exec(argv, env={"PM2_HOME": PM2_HOME}, timeout=120).stdout.decode()


def pm2_states(box: HostContainer) -> dict[str, str]:
    """PM2 app name -> status (online, stopped, errored...), from ``pm2 jlist``."""
    out = pm2(box, "jlist")
    line = next((ln for ln in out.splitlines() if ln.startswith("[")), "[]")
    return {p["name"]: p["pm2_env"]["status"] for p in json.loads(line)}


# Each app's GET /health from inside the container: "<app> <status> <body>" lines.
_HEALTH = r"""
while [ $# -gt 0 ]; do
    body=$(curl -s -m 10 -o - -w '\n%{http_code}' "http://127.0.0.1:$2/health")
    echo "$1 ${body##*$'\n'} ${body%$'\n'*}"
    shift 2
done
"""


def health(box: HostContainer) -> dict[str, tuple[int, dict[str, Any]]]:
    """app -> (HTTP status, JSON body) of its GET /health, asked inside the container."""
    pairs = [str(x) for app, port in PORTS.items() for x in (app, port)]
    out = box.exec(["bash", "-c", _HEALTH, "health", *pairs], timeout=120).stdout.decode()
    answers = {}
    for line in out.splitlines():
        app, code, body = [*line.split(" ", 2), ""][:3]
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {"unparsed": body}
        answers[app] = (int(code), parsed)
    return answers


def proxied(box: HostContainer) -> dict[str, int]:
    """domain -> HTTP status of https://<domain>/health through Caddy inside the container."""
    codes = https_status(box, [f"https://{d}/health" for d in SITES])
    return {d: codes[f"https://{d}/health"] for d in SITES}


def serving(box: HostContainer) -> dict[str, Any]:
    """What the box serves: PM2 states, each app's /health status (and the calls count
    the database apps read with their .env's role), HTTPS through Caddy per site, and the
    certificate fingerprint served per site."""
    answers = health(box)
    return {
        "pm2": pm2_states(box),
        "health": {app: (code, body.get("calls")) for app, (code, body) in answers.items()},
        "https": proxied(box),
        "certificates": served_fingerprints(box, sorted(SITES)),
    }


def expected_serving(seed: VultrSeed, calls: int) -> dict[str, Any]:
    """``serving()`` of a box holding ``seed`` with ``calls`` rows in calls."""
    uses_db = {app for app in PORTS if "POSTGRES_USER=" in seed.env_files[f"/root/{app}/.env"]}
    return {
        "pm2": dict.fromkeys(PORTS, "online"),
        "health": {app: (200, calls if app in uses_db else None) for app in PORTS},
        "https": dict.fromkeys(SITES, 200),
        "certificates": {d: seed.certificates[d].sha256 for d in sorted(SITES)},
    }


def seed_vultr(box: HostContainer) -> VultrSeed:
    """Seed a fresh container of the vultr image as the module doc says; returns what it
    holds. Raises AssertionError (with Caddy's log) when the box does not serve it all."""
    passwords = {OWNER: secrets.token_hex(12), SERVICE_ROLE: secrets.token_hex(12)}
    env_files = _env_files(passwords)
    certificates = {d: make_certificate(d, days_left=60) for d in SITES}
    tree = _tree(env_files, certificates)
    write_tree(box, tree)

    # PostgreSQL: the roles, then the database and its migrations as an operator would.
    sql(box, f"CREATE ROLE {OWNER} LOGIN PASSWORD '{passwords[OWNER]}';")
    sql(box, f"CREATE ROLE {SERVICE_ROLE} LOGIN PASSWORD '{passwords[SERVICE_ROLE]}';")
    sql(box, f"CREATE DATABASE {DATABASE} OWNER {OWNER};")
    for migration in sorted(
        p for p in tree if p.startswith("/root/migrations/") and p.endswith(".sql")
    ):
        # The postgres user cannot enter /root: the file goes in on stdin.
        argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"owner={OWNER}", "-d", DATABASE]
        data = tree[migration].data
        assert data is not None
        box.exec(argv, input=data, user="postgres")

    # PM2: three apps from their ecosystem files, deepgram-proxy by hand; then saved.
    for app in ECOSYSTEM:
        pm2(box, "start", f"/root/{app}/ecosystem.config.js", cwd=f"/root/{app}")
    pm2(box, "start", "server.js", "--name", "deepgram-proxy", cwd="/root/deepgram-proxy")
    wait_for("pm2 apps", lambda: pm2_states(box), dict.fromkeys(PORTS, "online"))
    pm2(box, "save")
    calls = int(sql(box, "SELECT count(*) FROM calls;", DATABASE))
    wait_for(
        "apps' /health",
        lambda: {a: c for a, (c, _b) in health(box).items()},
        dict.fromkeys(PORTS, 200),
    )

    # Caddy: restarted on the new Caddyfile, it loads the certificates from its storage.
    seed = VultrSeed(certificates=certificates, env_files=env_files, passwords=passwords)
    restart_caddy(box, seed.fingerprints)
    got, want = serving(box), expected_serving(seed, calls)
    assert got == want, f"the seeded box does not serve what it should:\n{got}\n!=\n{want}"
    return seed
