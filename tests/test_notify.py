"""Notifications reach a real local HTTP server; the Prometheus textfile parses strictly.

The server is started by the test on 127.0.0.1 and records every request. The
backup runs through the real ``backup`` action (a ``command`` source into a
local repository), wrapped the way the CLI wires notifications.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from drkit.actions.backup import backup
from drkit.errors import DrkitError
from drkit.notify import LogTail, Notifier, RunEvent, Targets, new_run_id, resolve_targets
from drkit.notify.http import safe_target
from drkit.notify.prometheus import (
    SourceMetrics,
    metrics_for_host,
    read_rows,
    render,
    write_textfile,
)
from drkit.policy.models import Policy
from drkit.repository.layout import Repository
from drkit.repository.local import LocalStore
from drkit.repository.manifest import ArtifactRecord, Manifest, SourceRecord, snapshot_time
from tests.conftest import Keys
from tests.helpers import local_signer, trust_for
from tests.servers.ports import free_port

PING_UUID = "5b1c9e0e-secret-ping-key-7f3a"
NTFY_TOKEN = "tk_secret_ntfy_token_123"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server recording requests; paths under /broken answer 500, /slow sleep."""

    port: int
    requests: list[Request] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            rec.requests.append(
                Request(
                    "POST",
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
            )
            if parts.path.startswith("/slow"):
                time.sleep(3)
            status = 500 if parts.path.startswith("/broken") else 200
            try:
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")
            except BrokenPipeError:  # the client timed out on /slow, as intended
                pass

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", rec.port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def command_policy(tmp_path: Path, keys: Keys, command: list[str]) -> Policy:
    return Policy.model_validate(
        {
            "host": "vultr",
            "discover": False,  # the host is this shared machine (tests/helpers.py write_policy)
            "repository": {"url": (tmp_path / "repo").as_uri()},
            "encryption": {"recipients": [keys.recipient], "signers": [local_signer()]},
            "source": [{"kind": "command", "name": "app", "command": command}],
        }
    )


def run_backup_with_notifications(
    policy: Policy, notifier: Notifier, tail: LogTail
) -> tuple[RunEvent, Manifest | None]:
    """What the CLI does around one host's backup: start ping, run, success or fail ping."""
    run_id = new_run_id()
    started = dt.datetime.now(dt.UTC)
    notifier.send(RunEvent("start", policy.host, run_id, started=started))
    repo = Repository(LocalStore(Path(policy.repository.url.removeprefix("file://"))), trust_for())
    try:
        result = backup(policy, repo, log=tail)
    except DrkitError as exc:
        tail(f"error: {exc}")
        event = RunEvent(
            "fail",
            policy.host,
            run_id,
            started=started,
            finished=dt.datetime.now(dt.UTC),
            error=str(exc),
            log_tail=tail.text(),
        )
        notifier.send(event)
        return event, None
    m = result.manifest
    event = RunEvent(
        "success",
        policy.host,
        run_id,
        snapshot=m.snapshot,
        started=started,
        finished=dt.datetime.now(dt.UTC),
        stored_bytes=m.stored_bytes,
        sources=tuple(s.name for s in m.sources),
        log_tail=tail.text(),
    )
    notifier.send(event)
    return event, m


def all_targets(rec: Receiver) -> Targets:
    return Targets(
        healthchecks=f"{rec.base}/ping/{PING_UUID}",
        ntfy=f"{rec.base}/drkit-alerts-{PING_UUID}",
        ntfy_token=NTFY_TOKEN,
        ntfy_events=frozenset({"fail"}),
        webhook=f"{rec.base}/hook",
        timeout=5,
    )


def test_success_sends_start_and_success_pings_and_the_webhook(
    receiver: Receiver, tmp_path: Path, keys: Keys
) -> None:
    logs: list[str] = []
    tail = LogTail(logs.append)
    with Notifier(all_targets(receiver), logs.append) as notifier:
        event, manifest = run_backup_with_notifications(
            command_policy(tmp_path, keys, ["printf", "hello"]), notifier, tail
        )
    assert manifest is not None
    # ntfy only on failure by default: start ping, success ping, webhook.
    assert receiver.paths() == [f"/ping/{PING_UUID}/start", f"/ping/{PING_UUID}", "/hook"]
    start, success, hook = receiver.requests
    assert start.query["rid"] == success.query["rid"] == [event.run_id]
    assert f"snapshot {manifest.snapshot} committed" in success.body.decode()
    assert "vultr: app/output: 5 bytes" in success.body.decode()
    payload = json.loads(hook.body)
    assert hook.headers["content-type"] == "application/json"
    assert payload["event"] == "success" and payload["host"] == "vultr"
    assert payload["snapshot"] == manifest.snapshot
    assert payload["stored_bytes"] == manifest.stored_bytes
    assert payload["sources"] == ["app"] and payload["error"] is None
    assert not [m for m in logs if m.startswith("warning")]


def test_failure_sends_the_fail_ping_with_the_log_tail_ntfy_and_webhook(
    receiver: Receiver, tmp_path: Path, keys: Keys
) -> None:
    logs: list[str] = []
    tail = LogTail(logs.append)
    policy = command_policy(
        tmp_path, keys, ["sh", "-c", "echo partial; echo disk full >&2; exit 3"]
    )
    with Notifier(all_targets(receiver), logs.append) as notifier:
        event, manifest = run_backup_with_notifications(policy, notifier, tail)
    assert manifest is None and event.error
    assert receiver.paths() == [
        f"/ping/{PING_UUID}/start",
        f"/ping/{PING_UUID}/fail",
        f"/drkit-alerts-{PING_UUID}",
        "/hook",
    ]
    _, fail, ntfy, hook = receiver.requests
    body = fail.body.decode()
    assert "vultr: app (command) ..." in body  # the log tail
    assert "host vultr" in body and "disk full" in body  # the error, naming host and stderr
    assert ntfy.headers["authorization"] == f"Bearer {NTFY_TOKEN}"
    assert ntfy.headers["priority"] == "high"
    assert ntfy.headers["title"] == "drkit backup vultr FAILED"
    assert "disk full" in ntfy.body.decode()
    payload = json.loads(hook.body)
    assert payload["event"] == "fail" and "disk full" in payload["error"]
    assert payload["log_tail"] == tail.text()


def test_failing_channels_warn_without_secrets_and_never_raise(receiver: Receiver) -> None:
    logs: list[str] = []
    closed = free_port()
    targets = Targets(
        healthchecks=f"{receiver.base}/broken/{PING_UUID}",
        ntfy=f"http://127.0.0.1:{closed}/topic-{PING_UUID}",
        ntfy_token=NTFY_TOKEN,
        ntfy_events=frozenset({"success"}),
        webhook=f"{receiver.base}/slow/{PING_UUID}",
        timeout=0.5,
    )
    t0 = time.monotonic()
    with Notifier(targets, logs.append) as notifier:
        sent = notifier.send(RunEvent("success", "vultr", new_run_id()))
    assert time.monotonic() - t0 < 5  # short timeouts: a dead endpoint cannot stall a backup
    assert sent == {"healthchecks": False, "ntfy": False, "webhook": False}
    assert any("healthchecks success ping" in m and "HTTP 500" in m for m in logs)
    assert any("ntfy" in m and "ConnectError" in m for m in logs)
    assert any("webhook" in m and "Timeout" in m for m in logs)
    for message in logs:
        assert message.startswith("warning: notify")
        assert PING_UUID not in message and NTFY_TOKEN not in message
        assert "/broken" not in message and "/topic" not in message
    assert f"to {receiver.base}" in "\n".join(logs)  # scheme://host:port only


def test_targets_resolve_from_secret_references(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    @dataclass
    class Config:
        healthchecks: str | None = "env:DRKIT_TEST_HC_URL"
        ntfy: str | None = "env:DRKIT_TEST_NOT_SET"
        ntfy_token: str | None = None
        ntfy_events: tuple[str, ...] = ("fail",)
        webhook: str | None = None
        webhook_events: tuple[str, ...] = ("success", "fail")
        timeout: str = "3s"

    url_file = tmp_path / "hook-url"
    url_file.write_text(f"{receiver.base}/hook\n")
    monkeypatch.setenv("DRKIT_TEST_HC_URL", f"{receiver.base}/ping/{PING_UUID}")
    logs: list[str] = []
    config = Config(webhook=f"file:{url_file}")
    targets = resolve_targets(config, "vultr", logs.append)
    assert targets.healthchecks == f"{receiver.base}/ping/{PING_UUID}"
    assert targets.webhook == f"{receiver.base}/hook"
    assert targets.ntfy is None and targets.timeout == 3
    assert logs == [
        "warning: host vultr: notify ntfy disabled: secret env:DRKIT_TEST_NOT_SET: "
        "environment variable DRKIT_TEST_NOT_SET is not set"
    ]
    assert PING_UUID not in repr(targets)
    with Notifier.from_config(config, "vultr", logs.append) as notifier:
        assert notifier.send(RunEvent("fail", "vultr", new_run_id(), error="boom")) == {
            "healthchecks": True,
            "webhook": True,
        }


def test_safe_target_shows_only_scheme_host_port() -> None:
    assert safe_target(f"https://hc-ping.com/{PING_UUID}") == "https://hc-ping.com"
    assert safe_target("https://user:pw@ntfy.example:8443/t?auth=x") == "https://ntfy.example:8443"
    assert safe_target("http://[::1]:9/x") == "http://[::1]:9"


def test_log_tail_keeps_the_last_lines() -> None:
    tail = LogTail(lines=3)
    for i in range(10):
        tail(f"line {i}")
    assert tail.text() == "line 7\nline 8\nline 9"


# -- Prometheus textfile --------------------------------------------------------------

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """A strict parser of the Prometheus text format (0.0.4) for what drkit writes.

    Checks: the file ends with a newline; HELP/TYPE come before a family's
    samples, at most once each; a family's samples are contiguous; metric and
    label names are valid; label values use only the \\\\, \\" and \\n escapes;
    no duplicate label names or series; values are floats (NaN, +Inf, -Inf);
    gauges carry no suffixes. Returns name -> {"help", "type", "samples"}.
    """
    assert text.endswith("\n"), "the last line must end with a newline"
    families: dict[str, dict[str, Any]] = {}
    finished: set[str] = set()
    current: str | None = None
    for n, line in enumerate(text.splitlines(), 1):
        where = f"line {n}: {line!r}"
        assert line.strip(), f"{where}: empty line"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[1] in ("HELP", "TYPE"), where
            name = parts[2]
            assert NAME.match(name), where
            fam = families.setdefault(name, {"help": None, "type": None, "samples": []})
            assert not fam["samples"], f"{where}: {parts[1]} after samples"
            key = parts[1].lower()
            assert fam[key] is None, f"{where}: second {parts[1]}"
            if key == "type":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), where
            else:
                assert not re.search(r"\\[^\\n]", parts[3]), f"{where}: bad HELP escape"
            fam[key] = parts[3]
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        name, labels, rest = _sample(line, where)
        fam = families.get(name)
        assert fam is not None and fam["type"] is not None, f"{where}: sample before TYPE"
        assert name not in finished, f"{where}: family {name} is not contiguous"
        if current != name:
            if current is not None:
                finished.add(current)
            current = name
        fields = rest.split(" ")
        assert len(fields) == 1, f"{where}: timestamps are not allowed in textfiles"
        value = fields[0]
        assert value in ("NaN", "+Inf", "-Inf") or re.match(
            r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$", value
        ), where
        series = tuple(sorted(labels.items()))
        assert series not in [s for s, _ in fam["samples"]], f"{where}: duplicate series"
        fam["samples"].append((series, float(value)))
    return families


def _sample(line: str, where: str) -> tuple[str, dict[str, str], str]:
    m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{)?", line)
    assert m, where
    name, pos = m.group(1), m.end()
    labels: dict[str, str] = {}
    if m.group(2):
        while line[pos] != "}":
            lm = LABEL_NAME.match(line, pos)
            assert lm and line[lm.end() : lm.end() + 2] == '="', where
            pos = lm.end() + 2
            value = []
            while line[pos] != '"':
                if line[pos] == "\\":
                    nxt = line[pos + 1]
                    assert nxt in '\\"n', f"{where}: bad escape \\{nxt}"
                    value.append("\n" if nxt == "n" else nxt)
                    pos += 2
                else:
                    assert line[pos] != "\n", where
                    value.append(line[pos])
                    pos += 1
            pos += 1
            assert lm.group(0) not in labels, f"{where}: duplicate label"
            labels[lm.group(0)] = "".join(value)
            if line[pos] == ",":
                pos += 1
        pos += 1
    assert line[pos] == " ", f"{where}: one space before the value"
    return name, labels, line[pos + 1 :]


def manifest(host: str, sid: str, sources: dict[str, int], status: str = "complete") -> Manifest:
    t = snapshot_time(sid).isoformat()
    return Manifest(
        host=host,
        snapshot=sid,
        started=t,
        finished=t,
        drkit_version="test",
        policy_sha256="0" * 64,
        recipients=[],
        sources=[
            SourceRecord(
                name,
                "command",
                [ArtifactRecord(name, "out", f"{name}/out", "zstd+age/v1", 1, "x", size, "y")],
                0.1,
            )
            for name, size in sources.items()
        ],
        facts=None,
        status=status,
    )


def test_textfile_parses_strictly_and_holds_each_metric(tmp_path: Path) -> None:
    history = [
        manifest("vultr", "20260301T020000Z-000001", {"db": 100, "env": 5}),
        manifest("vultr", "20260302T020000Z-000002", {"db": 120, "env": 6}),
        manifest("vultr", "20260303T020000Z-000003", {"db": 999}, status="partial"),
    ]
    rows = metrics_for_host(
        "vultr",
        history,
        ["db", "env", "certs"],
        rpo_seconds=26 * 3600,
        drill_success={"db": True, "env": False},
        uncovered=3,
    )
    path = tmp_path / "textfile" / "drkit.prom"
    write_textfile(path, rows)
    families = parse_exposition(path.read_text())
    assert set(families) == {
        "drkit_last_success_timestamp_seconds",
        "drkit_snapshot_bytes",
        "drkit_last_drill_success",
        "drkit_rpo_seconds",
        "drkit_source_warnings",
        "drkit_discover_uncovered",
    }
    # One sample per host, labelled by host alone; read back with the file.
    assert families["drkit_discover_uncovered"]["samples"] == [((("host", "vultr"),), 3.0)]
    assert {r.uncovered for r in read_rows(path.read_text())} == {3}
    assert all(f["type"] == "gauge" and f["help"] for f in families.values())

    def value(metric: str, source: str) -> float | None:
        for series, v in families[metric]["samples"]:
            if dict(series) == {"host": "vultr", "source": source}:
                return float(v)
        return None

    newest = snapshot_time("20260302T020000Z-000002").timestamp()  # the partial one is not
    assert value("drkit_last_success_timestamp_seconds", "db") == newest
    assert value("drkit_snapshot_bytes", "db") == 120
    assert value("drkit_snapshot_bytes", "env") == 6
    assert value("drkit_last_drill_success", "db") == 1
    assert value("drkit_last_drill_success", "env") == 0
    assert value("drkit_rpo_seconds", "env") == 26 * 3600
    assert value("drkit_source_warnings", "db") == 0  # none filed; never backed up: none
    assert value("drkit_source_warnings", "certs") is None
    # Never backed up: timestamp 0 (an RPO alert fires), no size, no drill.
    assert value("drkit_last_success_timestamp_seconds", "certs") == 0
    assert value("drkit_snapshot_bytes", "certs") is None
    assert value("drkit_last_drill_success", "certs") is None
    assert [p.name for p in path.parent.iterdir() if p.suffix != ".lock"] == ["drkit.prom"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_label_values_are_escaped(tmp_path: Path) -> None:
    rows = [SourceMetrics('we"ird\\host', "line\nbreak", last_success=1.5, snapshot_bytes=7)]
    text = render(rows)
    assert 'host="we\\"ird\\\\host",source="line\\nbreak"' in text
    families = parse_exposition(text)
    series = dict(families["drkit_snapshot_bytes"]["samples"][0][0])
    assert series == {"host": 'we"ird\\host', "source": "line\nbreak"}
    assert families["drkit_last_success_timestamp_seconds"]["samples"][0][1] == 1.5
    assert read_rows(text) == rows  # the merge reads back exactly what it wrote


def test_special_values_render_in_prometheus_spelling() -> None:
    families = parse_exposition(
        render([SourceMetrics("h", "s", rpo_seconds=math.inf, last_success=1e20)])
    )
    assert families["drkit_rpo_seconds"]["samples"][0][1] == math.inf
    assert families["drkit_last_success_timestamp_seconds"]["samples"][0][1] == 1e20


def test_writes_for_one_host_keep_the_other_hosts_series(tmp_path: Path) -> None:
    path = tmp_path / "drkit.prom"
    write_textfile(path, [SourceMetrics("vultr", "db", last_success=100.0, rpo_seconds=60)])
    write_textfile(path, [SourceMetrics("hetzner", "db", last_success=200.0)])
    write_textfile(path, [SourceMetrics("vultr", "db", last_success=300.0, rpo_seconds=60)])
    families = parse_exposition(path.read_text())
    stamps = {
        dict(s)["host"]: v for s, v in families["drkit_last_success_timestamp_seconds"]["samples"]
    }
    assert stamps == {"hetzner": 200.0, "vultr": 300.0}
    write_textfile(path, [], replace_hosts=["hetzner"])  # a host removed from the fleet
    stamps = {
        dict(s)["host"]: v
        for s, v in parse_exposition(path.read_text())["drkit_last_success_timestamp_seconds"][
            "samples"
        ]
    }
    assert stamps == {"vultr": 300.0}


def test_textfile_parses_with_prometheus_client(tmp_path: Path) -> None:
    """Cross-check with the reference Python parser (dev dependency prometheus-client)."""
    parser = pytest.importorskip("prometheus_client.parser")
    rows = [
        SourceMetrics("vultr", "db", 1.7e9, 1234, True, 93600.0),
        SourceMetrics("vultr", 'q"uote', None, None, None, None),
    ]
    families = {f.name: f for f in parser.text_string_to_metric_families(render(rows))}
    assert families["drkit_snapshot_bytes"].type == "gauge"
    samples = families["drkit_last_success_timestamp_seconds"].samples
    assert {(s.labels["source"], s.value) for s in samples} == {("db", 1.7e9), ('q"uote', 0.0)}
