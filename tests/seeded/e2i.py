"""The e2i-droplet box as seed 002 describes it, in a container of its drill image.

At the paths ``policies/e2i-droplet.toml`` names (so the shipped policy backs it up
as is), logged into as enunez (§Quick Connect; root login is disabled, enunez has
passwordless sudo: §Security Configuration, §Cloud-Init Configuration):

- Supabase's PostgreSQL on 5433 (§Self-Hosted Supabase: "PostgreSQL | 5433";
  DATABASE_URL=postgresql://postgres:...@localhost:5433/postgres): the image's
  cluster, initialised like a fresh self-hosted Supabase, moved to 5433 with a
  password for postgres (the policy's ``env:E2I_SUPABASE_DB_PASSWORD``) and the
  user objects of tests/drills/test_drill_supabase.py (tests/e2e/test_supabase.py's
  without its tuned reserved role);
- nginx with the site config /etc/nginx/sites-available/e2i-app, enabled
  (§Systemd Services > Nginx Reverse Proxy Configuration: the proxy routes /api/,
  /health, /copilotkit, /ws, /mlflow/, /opik/, /falkordb/ to their ports, rate
  limits 10/30/100 r/s, security headers, malicious paths blocked, the e2i-app
  logs, HTTP redirected to HTTPS) for the seed's domain under .invalid (never the
  real eznomics.site), its TLS lines as ``certbot --nginx`` writes them;
- certbot's /etc/letsencrypt ("Let's Encrypt | Auto-renewing via certbot"): the
  lineage of that domain (archive/<name>/*1.pem, live/<name>/*.pem symlinks into
  archive/, renewal/<name>.conf, the ACME account it names, certbot's
  options-ssl-nginx.conf and ssl-dhparams.pem) holding a self-signed certificate
  made at test time; nginx restarted so 443 serves it;
- §Application Paths: /opt/e2i_causal_analytics/.env and deploy/e2i-bentoml.env,
  the patched .venv (a __pycache__ the policy excludes), the core compose file
  docker/docker-compose.yml, the systemd units e2i-api/e2i-bentoml, Opik's compose
  dir under /home/enunez, and §Firewall & Security's /etc/iptables/rules.v4 with
  the DOCKER-USER chain.

- §Docker Containers: the containers the policy's two ``command`` sources ``docker
  exec`` into, in the container's own Docker engine (the image's ``containers-up``):
  ``e2i_falkordb`` holding graph-like keys, ``opik-mysql-1`` holding Opik's ``opik``
  schema (tables, rows, a stored procedure). They are stand-ins from Debian
  (Redis for FalkorDB, MariaDB for MySQL 8: docker/hosts/e2i-droplet/containers/), so
  the keys are plain Redis keys, not FalkorDB graphs.

The API and BentoML do not run: nginx answers 502 behind /health.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from drkit.drills.container import HostContainer
from tests.drills.test_drill_supabase import DRILL_SQL
from tests.seeded.tls import Certificate, make_certificate, served_fingerprints
from tests.seeded.tree import Entry, Tree, add_dirs, https_status, wait_for, write_tree

HOST = "e2i-droplet"
USER = "enunez"  # the policy's SSH user (sudo to root, as the seed's cloud-init sets up)
DOMAIN = "eznomics.invalid"  # seed 002's eznomics.site, under .invalid
SUPABASE_PORT = 5433  # seed 002 §Self-Hosted Supabase; the image's cluster is on 5432
APP = "/opt/e2i_causal_analytics"
LE = "/etc/letsencrypt"
# What nginx answers with the API not running (no Docker in the image), and for a blocked path.
NO_BACKEND = 502
BLOCKED = 404

# The policy's sources this image can back up and restore, and why the other cannot.
BACKED_UP = ("supabase", "env", "certbot", "host-config", "venv", "falkordb", "opik-mysql")
NOT_IN_IMAGE = {
    "do-snapshot": "DigitalOcean's API (a provider snapshot): no network beyond this machine",
}
FALKORDB = "e2i_falkordb"  # seed 002 §Docker Containers
OPIK_MYSQL = "opik-mysql-1"
# Keys as the E2I app's graph layer would leave them (stand-in: plain Redis keys).
FALKORDB_KEYS = {
    "e2i:graph:causal:nodes": ["treatment", "outcome", "confounder:age", "confounder:region"],
    "e2i:graph:causal:meta": {"version": "7", "updated": "2026-12-01T02:47:00Z"},
    "e2i:session:last-run": "run-20261201-0247",
}
OPIK_SQL = """\
CREATE DATABASE opik;
USE opik;
CREATE TABLE projects (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL UNIQUE);
CREATE TABLE traces (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  project_id INT NOT NULL,
  name VARCHAR(200) NOT NULL,
  FOREIGN KEY (project_id) REFERENCES projects (id)
);
INSERT INTO projects VALUES (1, 'e2i-causal'), (2, 'e2i-copilot');
INSERT INTO traces (project_id, name) VALUES
  (1, 'estimate ate'), (1, 'refute placebo'), (2, 'chat turn 1'), (2, 'chat turn 2');
CREATE PROCEDURE trace_count(IN p INT) SELECT count(*) FROM traces WHERE project_id = p;
"""
OPIK_STATE = (
    "SELECT concat_ws('|', t.id, p.name, t.name) FROM opik.traces t "
    "JOIN opik.projects p ON p.id = t.project_id ORDER BY t.id",
    "SELECT routine_name FROM information_schema.routines WHERE routine_schema = 'opik'",
)

# Where ``certbot --nginx`` installs its TLS settings (python3-certbot-nginx, certbot).
_CERTBOT_FILES = {
    f"{LE}/options-ssl-nginx.conf": "/usr/lib/python3/dist-packages/certbot_nginx/_internal/"
    "tls_configs/options-ssl-nginx.conf",
    f"{LE}/ssl-dhparams.pem": "/usr/lib/python3/dist-packages/certbot/ssl-dhparams.pem",
}

SITE = """\
# /etc/nginx/sites-available/e2i-app: E2I Causal Analytics (seed 002 §Nginx Reverse Proxy)
limit_req_zone $binary_remote_addr zone=e2i_api:10m rate=10r/s;
limit_req_zone $binary_remote_addr zone=e2i_copilotkit:10m rate=30r/s;
limit_req_zone $binary_remote_addr zone=e2i_general:10m rate=100r/s;

map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
}}

server {{
    server_name {domain};
    root /opt/e2i_causal_analytics/frontend/dist;
    index index.html;

    access_log /var/log/nginx/e2i-app.access.log;
    error_log /var/log/nginx/e2i-app.error.log;

    add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
    add_header X-Frame-Options "SAMEORIGIN" always;
    add_header X-Content-Type-Options "nosniff" always;
    add_header Content-Security-Policy "default-src 'self'; connect-src 'self' wss:" always;
    add_header Permissions-Policy "camera=(), microphone=(), geolocation=()" always;

    # Malicious path blocking
    location ~* \\.php$ {{ return 404; }}
    location ~ /\\.(env|git) {{ return 404; }}
    location ~* ^/(wp-|phpmyadmin) {{ return 404; }}

    location / {{
        limit_req zone=e2i_general burst=200 nodelay;
        try_files $uri $uri/ /index.html;
    }}
    location /api/ {{
        limit_req zone=e2i_api burst=20 nodelay;
        proxy_pass http://127.0.0.1:8000;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
    location /health {{ proxy_pass http://127.0.0.1:8000; }}
    location /copilotkit {{
        limit_req zone=e2i_copilotkit burst=60 nodelay;
        proxy_pass http://127.0.0.1:8000;
        proxy_buffering off;
    }}
    location /ws {{
        proxy_pass http://127.0.0.1:8000;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }}
    location /mlflow/ {{ proxy_pass http://127.0.0.1:5000/; }}
    location /opik/ {{
        proxy_pass http://127.0.0.1:5173/;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }}
    location /falkordb/ {{
        proxy_pass http://127.0.0.1:3030/;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }}

    listen 443 ssl http2; # managed by Certbot
    ssl_certificate /etc/letsencrypt/live/{domain}/fullchain.pem; # managed by Certbot
    ssl_certificate_key /etc/letsencrypt/live/{domain}/privkey.pem; # managed by Certbot
    include /etc/letsencrypt/options-ssl-nginx.conf; # managed by Certbot
    ssl_dhparam /etc/letsencrypt/ssl-dhparams.pem; # managed by Certbot
}}

server {{
    if ($host = {domain}) {{
        return 301 https://$host$request_uri;
    }} # managed by Certbot

    listen 80;
    server_name {domain};
    return 404; # managed by Certbot
}}
"""

RENEWAL = """\
# renew_before_expiry = 30 days
version = 2.9.0
archive_dir = {le}/archive/{domain}
cert = {le}/live/{domain}/cert.pem
privkey = {le}/live/{domain}/privkey.pem
chain = {le}/live/{domain}/chain.pem
fullchain = {le}/live/{domain}/fullchain.pem

# Options used in the renewal process
[renewalparams]
account = {account}
authenticator = nginx
installer = nginx
server = https://acme-v02.api.letsencrypt.org/directory
key_type = ecdsa
"""

API_UNIT = """\
[Unit]
Description=E2I Causal Analytics API (FastAPI)
After=network.target docker.service

[Service]
User=enunez
WorkingDirectory=/opt/e2i_causal_analytics
EnvironmentFile=/opt/e2i_causal_analytics/.env
ExecStart=/opt/e2i_causal_analytics/.venv/bin/uvicorn src.api.main:app \\
    --host 127.0.0.1 --port 8000 --workers 2
Restart=always

[Install]
WantedBy=multi-user.target
"""

BENTOML_UNIT = """\
[Unit]
Description=E2I BentoML model serving
After=network.target

[Service]
User=enunez
WorkingDirectory=/opt/e2i_causal_analytics
EnvironmentFile=/opt/e2i_causal_analytics/deploy/e2i-bentoml.env
ExecStart=/opt/e2i_causal_analytics/.venv/bin/bentoml serve --port 3000
Restart=always

[Install]
WantedBy=multi-user.target
"""

RULES_V4 = """\
# Generated by iptables-save
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A DOCKER-USER -i eth0 -j DROP
-A DOCKER-USER -j RETURN
COMMIT
"""

CORE_COMPOSE = """\
services:
  redis:
    image: redis:7-alpine
    container_name: e2i_redis
    ports: ["6382:6379"]
  falkordb:
    image: falkordb/falkordb:latest
    container_name: e2i_falkordb
    ports: ["6381:6379"]
  falkordb-browser:
    image: falkordb/falkordb-browser:latest
    container_name: e2i_falkordb_browser
    ports: ["3030:3000"]
  mlflow:
    image: mlflow
    container_name: e2i_mlflow
    ports: ["5000:5000"]
  supabase-db:
    image: supabase/postgres:15.8.1.060
    ports: ["5433:5432"]
    environment:
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}
"""

OPIK_COMPOSE = """\
name: opik
services:
  mysql:
    image: mysql:8.4.2
    environment:
      MYSQL_ROOT_PASSWORD: ${OPIK_MYSQL_ROOT_PASSWORD}
  clickhouse:
    image: clickhouse/clickhouse-server:24.3.6.48-alpine
  frontend:
    image: ghcr.io/comet-ml/opik/opik-frontend:latest
    ports: ["5173:5173"]
"""


@dataclass
class E2iSeed:
    password: str  # postgres's, the policy's E2I_SUPABASE_DB_PASSWORD
    certificate: Certificate
    account: str  # the ACME account the renewal file names
    files: dict[str, str]  # env files: path -> content
    containers: dict[str, object]  # container_data() of the seeded box

    @property
    def fingerprint(self) -> str:
        return self.certificate.sha256


def _token() -> str:
    return "test-" + secrets.token_hex(16)


def _env_files(password: str) -> dict[str, str]:
    return {
        f"{APP}/.env": (
            "ENVIRONMENT=production\n"
            "SUPABASE_URL=http://localhost:54321\n"
            f"SUPABASE_ANON_KEY={_token()}\n"
            f"SUPABASE_SERVICE_KEY={_token()}\n"
            f"DATABASE_URL=postgresql://postgres:{password}@localhost:{SUPABASE_PORT}/postgres\n"
            "REDIS_URL=redis://localhost:6382\n"
            "FALKORDB_HOST=localhost\nFALKORDB_PORT=6381\n"
            "MLFLOW_TRACKING_URI=http://localhost:5000\n"
            "OPIK_URL_OVERRIDE=http://localhost:5173/api\n"
            f"ANTHROPIC_API_KEY={_token()}\n"
        ),
        f"{APP}/deploy/e2i-bentoml.env": (
            f"BENTOML_HOME={APP}/bentoml\nBENTOML_PORT=3000\n"
            "MLFLOW_TRACKING_URI=http://localhost:5000\n"
        ),
    }


def _letsencrypt(cert: Certificate, account: str) -> Tree:
    """/etc/letsencrypt as certbot leaves it after ``certbot --nginx -d DOMAIN``."""
    tree: Tree = {}
    d = DOMAIN
    chain = cert.cert_pem  # self-signed: its own issuer
    archive = {
        "cert1.pem": (cert.cert_pem, 0o644),
        "chain1.pem": (chain, 0o644),
        "fullchain1.pem": (cert.cert_pem + chain, 0o644),
        "privkey1.pem": (cert.key_pem, 0o600),
    }
    for top in ("accounts", "archive", "live"):
        tree[f"{LE}/{top}"] = Entry(None, 0o700)
    tree[f"{LE}/renewal"] = Entry(None, 0o755)
    tree[f"{LE}/archive/{d}"] = Entry(None, 0o755)
    tree[f"{LE}/live/{d}"] = Entry(None, 0o755)
    for name, (data, mode) in archive.items():
        tree[f"{LE}/archive/{d}/{name}"] = Entry(data, mode)
        kind = name.replace("1.pem", "")
        tree[f"{LE}/live/{d}/{kind}.pem"] = Entry(None, 0o777, link=f"../../archive/{d}/{name}")
    tree[f"{LE}/live/README"] = Entry(
        b"This directory contains your keys and certificates.\n", 0o644
    )
    renewal = RENEWAL.format(le=LE, domain=d, account=account)
    tree[f"{LE}/renewal/{d}.conf"] = Entry(renewal.encode(), 0o644)
    acct = f"{LE}/accounts/acme-v02.api.letsencrypt.org/directory/{account}"
    add_dirs(tree, acct, f"{LE}/accounts", 0o700)
    tree[acct] = Entry(None, 0o700)
    tree[f"{acct}/meta.json"] = Entry(b'{"creation_host": "e2i-analytics-prod"}', 0o644)
    tree[f"{acct}/regr.json"] = Entry(b'{"body": {}, "uri": "https://acme.invalid/acct/1"}', 0o644)
    tree[f"{acct}/private_key.json"] = Entry(f'{{"kty": "{_token()}"}}'.encode(), 0o400)
    return tree


def _venv() -> Tree:
    """A small stand-in for the patched virtualenv (owned by enunez, who installed it)."""
    venv = f"{APP}/.venv"
    site = f"{venv}/lib/python3.12/site-packages"
    files = {
        f"{venv}/pyvenv.cfg": (
            "home = /usr/bin\nversion = 3.12.3\ninclude-system-site-packages = false\n"
        ),
        f"{venv}/bin/activate": f'VIRTUAL_ENV="{venv}"\nexport VIRTUAL_ENV\n',
        f"{site}/copilotkit/__init__.py": "# patched 2026-01-26: do not pip install over\n",
        f"{site}/ag_ui_langgraph/__init__.py": "# patched 2026-01-26: do not pip install over\n",
        f"{site}/copilotkit/__pycache__/__init__.cpython-312.pyc": "compiled",
    }
    tree: Tree = {}
    for path, content in files.items():
        add_dirs(tree, path, APP, 0o755, USER)
        tree[path] = Entry(content.encode(), 0o644, USER)
    # bin/python -> the system's interpreter, as a real venv has: restored because the
    # shipped policy lists /usr/bin in the source's symlinks_to (refused otherwise).
    tree[f"{venv}/bin/python"] = Entry(None, 0o777, USER, link="/usr/bin/python3")
    return tree


def _tree(seed: E2iSeed) -> Tree:
    tree: Tree = {APP: Entry(None, 0o755, USER)}
    for path, content in seed.files.items():
        add_dirs(tree, path, APP, 0o755, USER)
        tree[path] = Entry(content.encode(), 0o600, USER)
    compose = f"{APP}/docker/docker-compose.yml"
    add_dirs(tree, compose, APP, 0o755, USER)
    tree[compose] = Entry(CORE_COMPOSE.encode(), 0o644, USER)
    opik = f"/home/{USER}/opik/deployment/docker-compose/docker-compose.yaml"
    add_dirs(tree, opik, f"/home/{USER}", 0o755, USER)
    tree[opik] = Entry(OPIK_COMPOSE.encode(), 0o644, USER)
    tree["/etc/systemd/system/e2i-api.service"] = Entry(API_UNIT.encode(), 0o644)
    tree["/etc/systemd/system/e2i-bentoml.service"] = Entry(BENTOML_UNIT.encode(), 0o644)
    tree["/etc/iptables"] = Entry(None, 0o755)
    tree["/etc/iptables/rules.v4"] = Entry(RULES_V4.encode(), 0o640)
    tree["/etc/nginx/sites-available/e2i-app"] = Entry(SITE.format(domain=DOMAIN).encode(), 0o644)
    tree["/etc/nginx/sites-enabled/e2i-app"] = Entry(
        None, 0o777, link="/etc/nginx/sites-available/e2i-app"
    )
    return tree | _letsencrypt(seed.certificate, seed.account) | _venv()


def sql(box: HostContainer, query: str, port: int) -> str:
    """``query``'s rows (psql -At) as the postgres superuser in the container."""
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        str(port),
        "-d",
        "postgres",
        "-c",
        query,
    ]
    return box.exec(argv).stdout.decode().strip()


def set_postgres_password(box: HostContainer, password: str, port: int) -> None:
    """What a self-hosted Supabase's setup does with POSTGRES_PASSWORD (its .env)."""
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-p",
        str(port),
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    box.exec(argv, input=f"ALTER ROLE postgres PASSWORD '{password}';\n".encode())


def _seed_supabase(box: HostContainer, password: str) -> None:
    conf = "/etc/postgresql/15/main/postgresql.conf"
    box.exec(["sed", "-i", f"s/^port = 5432/port = {SUPABASE_PORT}/", conf])
    box.exec(["drkit-svc", "restart", "postgresql"])
    set_postgres_password(box, password, SUPABASE_PORT)
    argv = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-1",
        "-p",
        str(SUPABASE_PORT),
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    box.exec(argv, input=DRILL_SQL.encode())


def seed_e2i(box: HostContainer, password: str) -> E2iSeed:
    """Seed a fresh container of the e2i-droplet image as the module doc says, with
    ``password`` for postgres (the policy's E2I_SUPABASE_DB_PASSWORD)."""
    seed = E2iSeed(
        password=password,
        certificate=make_certificate(DOMAIN, days_left=60),
        account=secrets.token_hex(16),
        files=_env_files(password),
        containers={},
    )
    _seed_containers(box)
    seed.containers = container_data(box)
    _seed_supabase(box, password)
    write_tree(box, _tree(seed))
    for dest, shipped in _CERTBOT_FILES.items():
        box.exec(["install", "-m", "644", shipped, dest])
    box.exec(["drkit-svc", "restart", "nginx"])
    wait_for("served", lambda: served_fingerprints(box, [DOMAIN]), {DOMAIN: seed.fingerprint})
    got, want = serving(box), expected_serving(seed)
    assert got == want, f"the seeded box does not serve what it should:\n{got}\n!=\n{want}"
    return seed


def _redis(box: HostContainer, *args: str) -> str:
    argv = ["docker", "exec", FALKORDB, "redis-cli", "--raw", *args]
    return box.exec(argv).stdout.decode().strip()


def _mysql(box: HostContainer, sql_text: str) -> str:
    """``sql_text`` through the mysql client in Opik's container, as root (its password
    read inside from MYSQL_ROOT_PASSWORD, as the policy does)."""
    argv = [
        "docker",
        "exec",
        "-i",
        OPIK_MYSQL,
        "sh",
        "-c",
        'MYSQL_PWD="$MYSQL_ROOT_PASSWORD" exec mysql -uroot -N -B',
    ]
    return box.exec(argv, input=sql_text.encode()).stdout.decode().strip()


def _seed_containers(box: HostContainer) -> None:
    for key, value in FALKORDB_KEYS.items():
        if isinstance(value, list):
            _redis(box, "RPUSH", key, *value)
        elif isinstance(value, dict):
            _redis(box, "HSET", key, *(x for kv in sorted(value.items()) for x in kv))
        else:
            _redis(box, "SET", key, value)
    _mysql(box, OPIK_SQL)


def container_data(box: HostContainer) -> dict[str, object]:
    """What FalkorDB's and Opik MySQL's containers hold: every key with its value, the
    opik schema's rows and routines."""
    keys: dict[str, object] = {}
    for key in sorted(_redis(box, "KEYS", "*").split()):
        kind = _redis(box, "TYPE", key)
        if kind == "list":
            keys[key] = _redis(box, "LRANGE", key, "0", "-1").splitlines()
        elif kind == "hash":
            flat = _redis(box, "HGETALL", key).splitlines()
            keys[key] = dict(zip(flat[::2], flat[1::2], strict=True))
        else:
            keys[key] = _redis(box, "GET", key)
    return {"falkordb": keys, "opik": [_mysql(box, q + ";") for q in OPIK_STATE]}


def serving(box: HostContainer) -> dict[str, object]:
    """What the box serves: nginx's routes over HTTPS, the certificate, and whether
    certbot itself finds the lineage valid (``certbot certificates``, offline)."""
    listed = box.exec(["certbot", "certificates"], check=False)
    text = listed.stdout.decode() + listed.stderr.decode()
    return {
        "https": https_status(box, [f"https://{DOMAIN}/health", f"https://{DOMAIN}/.env"]),
        "certificates": served_fingerprints(box, [DOMAIN]),
        "certbot": f"Certificate Name: {DOMAIN}" in text
        and "VALID:" in text
        and "INVALID" not in text,
    }


def expected_serving(seed: E2iSeed) -> dict[str, object]:
    return {
        "https": {f"https://{DOMAIN}/health": NO_BACKEND, f"https://{DOMAIN}/.env": BLOCKED},
        "certificates": {DOMAIN: seed.fingerprint},
        "certbot": True,
    }
