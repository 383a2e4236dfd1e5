"""The visualkit-hetzner box as seed 004 describes it, in a container of its drill image.

At the paths ``policies/visualkit-hetzner.toml`` names (so the shipped policy backs it
up as is):

- Caddy (seed 004 §Architecture Overview: "CADDY (Reverse Proxy + SSL) Routes: api,
  agent, janus, cdn, support"; §Caddy Configuration: /etc/caddy/Caddyfile, reloaded
  with systemctl, so Debian's packaged Caddy with its data dir under the caddy
  user's home): a site per route under ``.invalid`` (never the real domains),
  reverse-proxying to the ports of §Service Details (platform-api :3001, vk-agent
  :3004, janus-gateway's WebSocket :8188, Chatwoot :3003; cdn's backend is not named,
  here platform-api's), logging to the journal as §Logs reads it; a certificate per
  name in Caddy's storage as Let's Encrypt's would be ("SSL/TLS: Auto-managed by
  Caddy"), Caddy restarted so 443 answers each name with its certificate;
- the compose projects /opt/platform-api and /opt/vk-agent (§Deploy Backend Updates,
  §Update VK-Agent: ``cd /opt/...; git pull; docker compose build; up -d``), each
  with its docker-compose.yml and its ``.env`` (§Security: "Secrets: Stored in
  `.env` files (not in git)"), 0600 root; the policy's ``apps`` source takes the
  directories, its ``env`` source the .env files.

The apps themselves run in Docker on the host; the image has no Docker (docker/hosts/
visualkit-hetzner/Dockerfile), so behind each site Caddy answers 502: the route is
served, its backend is not running.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from drkit.drills.container import HostContainer
from tests.seeded.tls import Certificate, make_certificate, served_fingerprints
from tests.seeded.tree import Entry, Tree, caddy_tree, https_status, restart_caddy, write_tree

HOST = "visualkit-hetzner"
# Seed 004's routes under .invalid: name -> backend port (§Service Details).
SITES = {
    "api.visualkit.invalid": 3001,  # platform-api (Fastify + tRPC)
    "agent.visualkit.invalid": 3004,  # vk-agent (Python + FastAPI)
    "janus.visualkit.invalid": 8188,  # janus-gateway's WebSocket
    "cdn.visualkit.invalid": 3001,  # backend not in the seed
    "support.visualkit.invalid": 3003,  # Chatwoot
}
# What Caddy answers for each site while the Docker apps are not running.
NO_BACKEND = 502

SITE = """\
{domain} {{
    reverse_proxy localhost:{port}
    encode gzip
}}
"""

COMPOSE = """\
services:
  {name}:
    build: .
    container_name: {name}
    restart: unless-stopped
    env_file: .env
    ports:
      - "127.0.0.1:{port}:{port}"
"""


@dataclass
class VisualkitSeed:
    certificates: dict[str, Certificate]  # domain -> certificate
    env_files: dict[str, str]  # path -> content

    @property
    def compose_files(self) -> dict[str, str]:
        """path -> content of each project's docker-compose.yml (0644 root)."""
        return {
            f"{project}/docker-compose.yml": COMPOSE.format(name=name, port=port)
            for project, name, port in _projects(self.env_files)
        }

    @property
    def fingerprints(self) -> dict[str, str]:
        return {d: c.sha256 for d, c in self.certificates.items()}


def _token() -> str:
    return "test-" + secrets.token_hex(16)


def _env_files() -> dict[str, str]:
    return {
        "/opt/platform-api/.env": (
            "NODE_ENV=production\nPORT=3001\n"
            f"JWT_SECRET={_token()}\n"
            "CORS_ORIGINS=https://app.visualkit.invalid,https://meet.visualkit.invalid\n"
            "VK_AGENT_URL=http://127.0.0.1:3004\n"
            f"CHATWOOT_API_TOKEN={_token()}\n"
        ),
        "/opt/vk-agent/.env": (
            "PORT=3004\nRTP_PORT=5005\n"
            f"GEMINI_API_KEY={_token()}\n"
            "JANUS_WS_URL=ws://127.0.0.1:8188\nJANUS_ROOM=1234\n"
            f"AGENT_API_KEY={_token()}\n"
        ),
    }


def _projects(env_files: dict[str, str]) -> list[tuple[str, str, int]]:
    """(directory, container name, port) of each compose project holding an .env file."""
    out = []
    for path in env_files:
        project = path.rsplit("/", 1)[0]
        name = project.rsplit("/", 1)[1]
        out.append((project, name, 3001 if name == "platform-api" else 3004))
    return out


def _tree(seed: VisualkitSeed) -> Tree:
    tree: Tree = {}
    for project, _name, _port in _projects(seed.env_files):
        tree[project] = Entry(None, 0o755)
    for path, content in seed.compose_files.items():
        tree[path] = Entry(content.encode(), 0o644)
    for path, content in seed.env_files.items():
        tree[path] = Entry(content.encode(), 0o600)
    sites = "\n".join(SITE.format(domain=d, port=p) for d, p in SITES.items())
    caddyfile = "# /etc/caddy/Caddyfile: routes api, agent, janus, cdn, support\n\n" + sites
    return tree | caddy_tree(caddyfile, seed.certificates.values())


def seed_visualkit(box: HostContainer) -> VisualkitSeed:
    """Seed a fresh container of the visualkit-hetzner image as the module doc says."""
    seed = VisualkitSeed(
        certificates={d: make_certificate(d, days_left=60) for d in SITES},
        env_files=_env_files(),
    )
    write_tree(box, _tree(seed))
    restart_caddy(box, seed.fingerprints)
    got, want = serving(box), expected_serving(seed)
    assert got == want, f"the seeded box does not serve what it should:\n{got}\n!=\n{want}"
    return seed


def serving(box: HostContainer) -> dict[str, Any]:
    """Per site: the HTTP status through Caddy and the certificate served (SNI)."""
    return {
        "https": https_status(box, [f"https://{d}/health" for d in sorted(SITES)]),
        "certificates": served_fingerprints(box, sorted(SITES)),
    }


def expected_serving(seed: VisualkitSeed) -> dict[str, Any]:
    return {
        "https": {f"https://{d}/health": NO_BACKEND for d in sorted(SITES)},
        "certificates": {d: seed.certificates[d].sha256 for d in sorted(SITES)},
    }
