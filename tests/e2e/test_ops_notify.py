"""Notifications and metrics from the real CLI: a local HTTP server started here receives
the healthchecks pings, the ntfy message and the webhook, on success and on failure; the
Prometheus textfile parses with the reference parser."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from drkit.repository.manifest import snapshot_time
from tests.conftest import Keys
from tests.helpers import drkit, write_policy
from tests.servers.ports import free_port

PING = "ping/0f3c7c0e-a7e4-4dc1-secret"
TOPIC = "drkit-alerts-secret-topic"
NTFY_TOKEN = "tk_ntfy_secret_0123456789"


@dataclass
class Hit:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    hits: list[Hit] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            rec.hits.append(Hit(parts.path, parse_qs(parts.query), headers, body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def notify_policy(tmp_path: Path, keys: Keys, command: list[str], prom: Path) -> Path:
    notify = (
        'notify = { healthchecks = "env:T_HC", ntfy = "env:T_NTFY", ntfy_token = "env:T_TOK", '
        f'webhook = "env:T_HOOK", prometheus_textfile = "{prom}", timeout = "5s" }}'
    )
    return write_policy(
        tmp_path / "vultr.toml",
        "vultr",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "command", "name": "db", "command": command}],
        extra=f'rpo = "26h"\n{notify}',
    )


def secrets_env(rec: Receiver) -> dict[str, str]:
    return {
        "T_HC": f"{rec.base}/{PING}",
        "T_NTFY": f"{rec.base}/{TOPIC}",
        "T_TOK": NTFY_TOKEN,
        "T_HOOK": f"{rec.base}/hook",
    }


def test_success_pings_start_and_success_and_writes_metrics(
    tmp_path: Path, keys: Keys, receiver: Receiver
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    prom = tmp_path / "textfile" / "drkit.prom"
    policy = notify_policy(tmp_path, keys, ["echo", "hello"], prom)
    res = drkit("backup", "--policy", str(policy), "--json", env=secrets_env(receiver))
    assert res.returncode == 0, res.output
    snapshot = json.loads(res.stdout)["results"][0]["snapshot"]

    start, done = receiver.to(f"/{PING}/start"), receiver.to(f"/{PING}")
    assert len(start) == 1 and len(done) == 1 and receiver.to(f"/{PING}/fail") == []
    assert start[0].query["rid"] == done[0].query["rid"]  # one run: start and end paired
    assert f"snapshot {snapshot} committed" in done[0].body.decode()  # the log tail
    (hook,) = receiver.to("/hook")
    payload = json.loads(hook.body)
    assert payload["event"] == "success" and payload["snapshot"] == snapshot
    assert payload["host"] == "vultr" and payload["sources"] == ["db"]
    assert receiver.to(f"/{TOPIC}") == []  # ntfy: failures only, by default
    for secret in (PING, TOPIC, NTFY_TOKEN):
        assert secret not in res.output

    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    (last,) = families["drkit_last_success_timestamp_seconds"].samples
    assert last.labels == {"host": "vultr", "source": "db"}
    assert last.value == snapshot_time(snapshot).timestamp()
    (rpo,) = families["drkit_rpo_seconds"].samples
    assert rpo.value == 26 * 3600
    (size,) = families["drkit_snapshot_bytes"].samples
    assert size.value > 0
    assert oct(prom.stat().st_mode & 0o777) == "0o644"


def test_failure_pings_fail_with_the_log_tail_ntfy_and_webhook(
    tmp_path: Path, keys: Keys, receiver: Receiver
) -> None:
    prom = tmp_path / "drkit.prom"
    policy = notify_policy(tmp_path, keys, ["sh", "-c", "echo disk full >&2; exit 4"], prom)
    res = drkit("backup", "--policy", str(policy), env=secrets_env(receiver))
    assert res.returncode == 1

    assert len(receiver.to(f"/{PING}/start")) == 1 and receiver.to(f"/{PING}") == []
    (fail,) = receiver.to(f"/{PING}/fail")
    body = fail.body.decode()
    assert "vultr: db (command) ..." in body  # the log tail...
    assert "host vultr: source db" in body and "disk full" in body  # ...and the error
    (ntfy,) = receiver.to(f"/{TOPIC}")
    assert ntfy.headers["authorization"] == f"Bearer {NTFY_TOKEN}"
    assert ntfy.headers["priority"] == "high" and "FAILED" in ntfy.headers["title"]
    (hook,) = receiver.to("/hook")
    payload = json.loads(hook.body)
    assert payload["event"] == "fail" and payload["snapshot"] is None
    assert "exited with status 4" in payload["error"]
    # Metrics after a failure: the source has no success yet (0 makes the RPO alert fire).
    assert 'drkit_last_success_timestamp_seconds{host="vultr",source="db"} 0' in prom.read_text()
    for secret in (PING, TOPIC, NTFY_TOKEN):
        assert secret not in res.output


def test_an_unreachable_channel_only_warns(tmp_path: Path, keys: Keys) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    prom = tmp_path / "drkit.prom"
    policy = notify_policy(tmp_path, keys, ["echo", "hello"], prom)
    env = {
        "T_HC": f"{dead}/{PING}",
        "T_NTFY": f"{dead}/t",
        "T_TOK": "x" * 8,
        "T_HOOK": f"{dead}/hook",
    }
    res = drkit("backup", "--policy", str(policy), env=env)
    assert res.returncode == 0, res.output
    assert f"warning: notify healthchecks start ping to {dead} failed" in res.stderr
    assert PING not in res.output
