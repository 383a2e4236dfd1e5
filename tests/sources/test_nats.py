"""nats source against a real nats-server 2.9 with JetStream.

Round trip through the real CLI: a stream (headers, a deleted message, a durable
consumer with acked messages), a KV bucket (history, a deleted key) and an
object store are backed up, deleted, restored, and compared message by message.
Faults: an unreachable server, wrong credentials, a stream that already exists,
memory streams, a stop-copy container drkit cannot reach.
"""

from __future__ import annotations

import ast
import asyncio
import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError

from drkit.actions import backup as backup_action
from drkit.actions.artifact_read import read_facts
from drkit.actions.repository_access import open_repository
from drkit.actions.restore import Executor
from drkit.actions.snapshot_select import select_snapshot
from drkit.errors import RestoreError, SourceError, UsageError
from drkit.pipeline.age import load_identities
from drkit.policy.loader import load_policy
from drkit.policy.models import Connection, NatsConfig
from drkit.remote.local import LocalRunner
from drkit.remote.ssh import SshRunner
from drkit.sources import jetstream, registry
from drkit.sources.base import RestoreOptions
from drkit.sources.nats import NatsSource
from drkit.sources.nats_helper import HelperStream
from drkit.sources.nats_streams import artifact_name, auth_fields, restore_order, store_streams
from tests.helpers import drkit, write_policy
from tests.servers.nats import NatsServer, nats_server
from tests.servers.sshd import sshd_server

STREAMS = ["ORDERS", "KV_config", "OBJ_files"]
TOKEN = "s3cr3t-nats-token-7f1d"


@pytest.fixture(autouse=True)
def host_python3(monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper runs ``python3`` from PATH, as on a Debian/Ubuntu host: prefer the
    system one (a pyenv shim first on PATH costs ~0.7 s per call)."""
    if Path("/usr/bin/python3").exists():
        monkeypatch.setenv("PATH", "/usr/bin" + os.pathsep + os.environ.get("PATH", ""))


@pytest.fixture
def server() -> Iterator[NatsServer]:
    with nats_server() as s:
        yield s


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _connect(url: str, token: str | None = None) -> Any:
    return await nats.connect(url, token=token, connect_timeout=5, max_reconnect_attempts=0)


async def load_data(url: str, token: str | None = None) -> None:
    """ORDERS: 40 messages (every third with headers), seq 7 deleted, a durable consumer
    that acked 5; KV config: history and a deleted key; OBJ files: one 300 KB object;
    MEM: a memory stream."""
    nc = await _connect(url, token)
    js = nc.jetstream()
    await js.add_stream(name="ORDERS", subjects=["orders.>"])
    for i in range(1, 41):
        headers = {"Order-Id": f"o-{i}", "Trace": "x" * (i % 5)} if i % 3 == 0 else None
        await js.publish(f"orders.{i % 4}", f"order {i} ".encode() * i, headers=headers)
    await js.delete_msg("ORDERS", 7)
    await js.add_consumer("ORDERS", durable_name="worker", ack_policy="explicit")
    sub = await js.pull_subscribe("orders.>", durable="worker", stream="ORDERS")
    for msg in await sub.fetch(5, timeout=5):
        await msg.ack_sync()
    kv = await js.create_key_value(bucket="config", history=5)
    for value in (b"1", b"2", b"3"):
        await kv.put("a", value)
    await kv.put("b", b"gone soon")
    await kv.delete("b")
    await kv.put("c.d", b'{"nested": true}')
    obs = await js.create_object_store("files")
    await obs.put("report.bin", os.urandom(300_000))
    await js.add_stream(name="MEM", subjects=["mem.>"], storage="memory")
    await js.publish("mem.x", b"volatile")
    await nc.close()


async def capture(url: str, token: str | None = None) -> dict[str, Any]:
    """Everything that must come back: every message with its sequence, subject, data
    and headers; stream states; KV values and history; the object; the consumer."""
    nc = await _connect(url, token)
    js = nc.jetstream()
    out: dict[str, Any] = {}
    for name in STREAMS:
        info = await js.stream_info(name)
        msgs = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await js.get_msg(name, seq)
            except NotFoundError:
                continue
            msgs.append((m.seq, m.subject, m.data, dict(m.headers or {})))
        out[name] = {
            "messages": info.state.messages,
            "first_seq": info.state.first_seq,
            "last_seq": info.state.last_seq,
            "msgs": msgs,
        }
    # KV history straight from the bucket's stream, read message by message: the
    # client's kv.history() is a watcher that can report "no keys" on a busy machine.
    kv_msgs = out["KV_config"]["msgs"]
    for key in ("a", "b"):
        out[f"kv_{key}"] = [
            (seq, data, headers.get("KV-Operation"))
            for seq, subject, data, headers in kv_msgs
            if subject == f"$KV.config.{key}"
        ]
    assert out["kv_a"] and out["kv_b"], "the KV bucket's history is empty"
    kv = await js.key_value("config")
    out["kv_values"] = {k: (await kv.get(k)).value for k in ("a", "c.d")}
    obs = await js.object_store("files")
    out["object"] = (await obs.get("report.bin")).data
    ci = await js.consumer_info("ORDERS", "worker")
    out["consumer"] = (ci.config.durable_name, ci.ack_floor.stream_seq, ci.num_pending)
    await nc.close()
    return out


async def delete_streams(url: str, names: list[str], token: str | None = None) -> None:
    nc = await _connect(url, token)
    js = nc.jetstream()
    for name in names:
        await js.delete_stream(name)
    await nc.close()


async def stream_names(url: str) -> list[str]:
    nc = await _connect(url)
    names = sorted(await nc.jetstream().streams_info(), key=lambda s: s.config.name)
    await nc.close()
    return [s.config.name for s in names]


async def publish(url: str, subject: str, data: bytes) -> int:
    nc = await _connect(url)
    ack = await nc.jetstream().publish(subject, data)
    await nc.close()
    return int(ack.seq)


def nats_policy(tmp_path: Path, keys: Any, **source: Any) -> Path:
    return write_policy(
        tmp_path / "platform.toml",
        "platform",
        {"url": (tmp_path / "repo").as_uri()},
        [keys.recipient],
        [{"kind": "nats", **source}],
    )


def nats_facts(policy: Path, keys: Any) -> dict[str, Any]:
    loaded = load_policy(policy)
    repo = open_repository(loaded)
    manifest = select_snapshot(repo, loaded.host)
    facts = read_facts(repo, manifest, load_identities(keys.identity_file))
    nats_part: dict[str, Any] = facts["nats"]
    return nats_part


def restore(policy: Path, keys: Any, *extra: str, env: dict[str, str] | None = None) -> Any:
    args = ["--policy", str(policy), "--identity", str(keys.identity_file), "--yes", *extra]
    return drkit("restore", *args, env=env)


# ---- round trip through the CLI ---------------------------------------------
def test_backup_delete_restore_brings_back_messages_kv_and_objects(
    server: NatsServer, tmp_path: Path, keys: Any
) -> None:
    run(load_data(server.url))
    before = run(capture(server.url))
    policy = nats_policy(tmp_path, keys, url=server.url)
    drkit("backup", "--policy", str(policy), check=True)

    facts = nats_facts(policy, keys)
    assert facts["mode"] == "snapshot"
    assert facts["server"]["version"].startswith("2.")
    by_name = {s["name"]: s for s in facts["streams"]}
    assert sorted(by_name) == sorted(STREAMS)
    orders = by_name["ORDERS"]
    assert (orders["messages"], orders["first_seq"], orders["last_seq"]) == (39, 1, 40)
    assert orders["num_deleted"] == 1 and orders["consumers"] == 1
    assert orders["type"] == "stream" and not orders["kv"]
    assert by_name["KV_config"]["kv"] and by_name["KV_config"]["bucket"] == "config"
    assert by_name["OBJ_files"]["object_store"] and by_name["OBJ_files"]["bucket"] == "files"
    assert by_name["KV_config"]["messages"] == before["KV_config"]["messages"]
    assert all(s["snapshot_bytes"] > 0 for s in facts["streams"])
    assert facts["skipped"] == [{"name": "MEM", "reason": "memory storage cannot be snapshotted"}]

    run(delete_streams(server.url, STREAMS))
    assert run(stream_names(server.url)) == ["MEM"]
    res = restore(policy, keys)
    assert res.returncode == 0, res.output
    assert "restored stream ORDERS: 39 messages, seq 1-40, 1 consumer(s)" in res.output
    assert "[pass] nats: stream ORDERS: 39 messages, seq 1-40" in res.output

    after = run(capture(server.url))
    assert after == before
    assert after["kv_b"][-1][2] == "DEL"  # the delete marker came back too
    # Sequences continue where the backup ended.
    assert run(publish(server.url, "orders.new", b"after restore")) == 41


def test_restore_refuses_existing_stream_unless_forced(
    server: NatsServer, tmp_path: Path, keys: Any
) -> None:
    run(load_data(server.url))
    before = run(capture(server.url))
    policy = nats_policy(tmp_path, keys, url=server.url, streams=["ORDERS", "KV_config"])
    drkit("backup", "--policy", str(policy), check=True)
    assert run(publish(server.url, "orders.late", b"newer than the backup")) == 41
    run(delete_streams(server.url, ["KV_config"]))

    res = restore(policy, keys)
    assert res.returncode == 1
    assert "host platform: step 1 (nats) is refused" in res.stderr
    assert "ORDERS already exist" in res.stderr and "--force" in res.stderr
    assert "KV_config" not in run(stream_names(server.url))  # nothing was touched

    res = restore(policy, keys, "--force")
    assert res.returncode == 0, res.output
    assert "replaced stream ORDERS" in res.output and "restored stream KV_config" in res.output
    after = run(capture(server.url))
    assert after["ORDERS"] == before["ORDERS"]
    assert after["kv_a"] == before["kv_a"] and after["consumer"] == before["consumer"]


def test_token_auth_and_faults_never_show_the_secret(tmp_path: Path, keys: Any) -> None:
    with nats_server(token=TOKEN) as server:
        run(load_data(server.url, TOKEN))
        before = run(capture(server.url, TOKEN))
        policy = nats_policy(
            tmp_path, keys, url=server.url, streams=["ORDERS"], credentials="env:NATS_TOKEN"
        )
        ok = drkit("backup", "--policy", str(policy), env={"NATS_TOKEN": TOKEN}, check=True)

        bad = drkit("backup", "--policy", str(policy), env={"NATS_TOKEN": "wrong"})
        assert bad.returncode == 1
        assert "host platform: source nats" in bad.stderr
        assert "Authorization Violation" in bad.stderr and server.url in bad.stderr

        run(delete_streams(server.url, ["ORDERS"], TOKEN))
        res = restore(policy, keys)  # NATS_TOKEN unset: named, never guessed
        assert res.returncode == 1 and "env:NATS_TOKEN" in res.stderr
        res = restore(policy, keys, env={"NATS_TOKEN": TOKEN})
        assert res.returncode == 0, res.output
        assert run(capture(server.url, TOKEN))["ORDERS"] == before["ORDERS"]
        url = server.url
    # The server is gone now: unreachable.
    down = drkit("backup", "--policy", str(policy), env={"NATS_TOKEN": TOKEN})
    assert down.returncode == 1
    assert "host platform: source nats" in down.stderr
    assert f"cannot connect to NATS at {url}" in down.stderr
    assert "Traceback" not in down.output
    for out in (ok.output, bad.output, res.output, down.output):
        assert TOKEN not in out
    assert len(list((tmp_path / "repo").rglob("manifest.json"))) == 1  # only the good run


def test_memory_and_missing_streams_fail_the_backup(
    server: NatsServer, tmp_path: Path, keys: Any
) -> None:
    run(load_data(server.url))
    for streams, expected in (
        (["ORDERS", "MEM"], "stream MEM at " + server.url + " uses memory storage"),
        (["ORDERS", "NOPE"], "stream(s) NOPE not found at " + server.url),
    ):
        policy = nats_policy(tmp_path, keys, url=server.url, streams=streams)
        res = drkit("backup", "--policy", str(policy))
        assert res.returncode == 1
        assert "host platform: source nats" in res.stderr and expected in res.stderr
    assert not list((tmp_path / "repo").rglob("manifest.json"))


def test_stop_copy_names_the_container_it_cannot_stop(tmp_path: Path, keys: Any) -> None:
    """No Docker engine runs here: the backup must fail before reading the store."""
    store = tmp_path / "platform-data"
    (store / "jetstream").mkdir(parents=True)
    policy = nats_policy(tmp_path, keys, mode="stop-copy", container="nats", store_dir=str(store))
    res = drkit("backup", "--policy", str(policy), env={"PATH": _path_without_docker()})
    assert res.returncode == 1
    assert "host platform: source nats" in res.stderr
    assert "inspecting container nats" in res.stderr
    assert not list((tmp_path / "repo").rglob("manifest.json"))


def _path_without_docker() -> str:
    """PATH without any docker client, so the result does not depend on this machine."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if not (Path(d) / "docker").exists())


def test_roundtrip_over_ssh_with_token(tmp_path: Path, keys: Any, monkeypatch: Any) -> None:
    """The usual deployment: NATS on the remote host's loopback, drkit over SSH (a real
    sshd on 127.0.0.1 plays the host). The helper and the restore data travel on the
    SSH channel's stdin, the token in the runner's env preamble."""
    monkeypatch.setitem(registry.SOURCES, "nats", NatsSource)  # until registry.py has it
    monkeypatch.setenv("NATS_TOKEN", TOKEN)
    with nats_server(token=TOKEN) as server, sshd_server() as sshd:
        run(load_data(server.url, TOKEN))
        before = run(capture(server.url, TOKEN))
        policy_file = nats_policy(
            tmp_path, keys, url=server.url, streams=STREAMS, credentials="env:NATS_TOKEN"
        )
        policy = load_policy(policy_file)
        known = sshd.write_known_hosts(tmp_path / "known_hosts")
        runner = SshRunner("platform", Connection(**sshd.connection(known_hosts=str(known))))
        try:
            repo = open_repository(policy, signing=True)
            result = backup_action.backup(policy, repo, runner=runner)
            run(delete_streams(server.url, STREAMS, TOKEN))
            identities = load_identities(keys.identity_file)
            executor = Executor(policy, repo, result.manifest, identities, runner, RestoreOptions())
            assert all(step.plan.blocked is None for step in executor.plan())
            restored = executor.run()
        finally:
            runner.close()
        assert restored.verdict == "pass", restored.checks
        assert run(capture(server.url, TOKEN)) == before
        assert TOKEN not in sshd.log()


# ---- the source object directly --------------------------------------------
def source(server: NatsServer, **config: Any) -> NatsSource:
    cfg = NatsConfig.model_validate({"kind": "nats", "url": server.url, **config})
    return NatsSource("nats", cfg, LocalRunner("platform"))


def test_slow_downstream_does_not_make_a_slow_consumer(tmp_path: Path) -> None:
    """nats-server 2.9 keeps sending snapshot chunks every 10 ms without acks and cuts a
    connection that falls max_pending behind: the helper's spool must absorb a long stall
    of the pipeline (a slow upload). Without the disk spill this fails (checked: Slow
    Consumer Detected with the spool capped at its memory part)."""
    mib = 64
    with nats_server(config="max_pending: 16777216\n") as server:

        async def fill() -> None:
            nc = await _connect(server.url)
            js = nc.jetstream()
            await js.add_stream(name="BIG", subjects=["big"])
            for _ in range(mib * 64):  # 64 MiB that do not compress
                await nc.publish("big", os.urandom(16384))
            await nc.flush()
            await nc.close()

        run(fill())
        src = source(server, streams=["BIG"])
        stream = HelperStream(src, "snapshot", "BIG", "131072")
        with stream as reader:
            data = bytearray(reader.read(65536))
            time.sleep(6)
            while chunk := reader.read(1 << 20):
                data += chunk
        assert "Slow Consumer" not in server.log_file.read_text()
        assert stream.header["state"]["messages"] == mib * 64
        run(delete_streams(server.url, ["BIG"]))
        header = json.dumps(stream.header).encode() + b"\n"
        out = src.helper("restore", "BIG", data=io.BytesIO(header + bytes(data)))
        assert json.loads(out)["state"]["messages"] == mib * 64


def test_policy_timeout_stops_a_hung_server_call(server: NatsServer) -> None:
    """A server that accepts but never answers (SIGSTOPped): the policy's timeout ends the
    helper and says so, instead of hanging the backup."""
    src = source(server, streams=["ORDERS"], timeout="1s")
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(SourceError, match="jetstream info timed out after 1s"):
            list(src.artifacts())
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_stop_copy_store_tar_roundtrip(tmp_path: Path) -> None:
    """The tar half of stop-copy (no Docker here): the server is stopped by the test."""
    with nats_server() as server:
        run(load_data(server.url))
        before = run(capture(server.url))
        server.stop()
        src = source(server, mode="stop-copy", store_dir=str(server.store_dir))
        artifact = src.tar_artifact([str(server.store_dir)], [])
        blob = io.BytesIO()
        with artifact.open() as stream:
            while chunk := stream.read(1 << 20):
                assert artifact.observe is not None
                artifact.observe(chunk)
                blob.write(chunk)
        facts = {"mode": "stop-copy", "store_dir": str(server.store_dir), **src.listing_facts()}
        streams = store_streams(facts["entries"])
        assert {(s["account"], s["name"]) for s in streams} >= {
            ("$G", "ORDERS"),
            ("$G", "KV_config"),
            ("$G", "OBJ_files"),
        }

        def feed(name: str, consume: Any) -> None:
            assert name == "store.tar"
            blob.seek(0)
            consume(blob)

        assert "is not empty; use --force" in str(src.describe(facts, RestoreOptions()).blocked)
        with pytest.raises(RestoreError, match="is not empty; use --force"):
            src.restore(feed, facts, RestoreOptions())
        shutil.rmtree(server.store_dir / "jetstream" / "$G" / "streams" / "ORDERS")
        assert src.describe(facts, RestoreOptions(force_db=True)).blocked is None
        report = src.restore(feed, facts, RestoreOptions(force_db=True))
        assert any("moved the existing store dir to" in a for a in report.actions)
        checks = src.check(facts, RestoreOptions())
        assert checks and all(c.status == "pass" for c in checks), checks
        server.start()
        assert run(capture(server.url)) == before


def test_helper_is_stdlib_only_and_parses_as_python37() -> None:
    """The helper runs with the host's python3 (Ubuntu 20.04: 3.8, Debian 11: 3.9)."""
    tree = ast.parse(Path(jetstream.__file__).read_text(), feature_version=(3, 7))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _older_python() -> str | None:
    """A python3.7-3.9 that runs on this machine (e.g. pyenv's), to run the helper as
    older hosts would."""
    for minor in (7, 8, 9):
        pattern = os.path.expanduser(f"~/.pyenv/versions/3.{minor}.*/bin/python3")
        for candidate in [*sorted(glob.glob(pattern)), shutil.which(f"python3.{minor}")]:
            if candidate and subprocess.run([candidate, "-c", ""], check=False).returncode == 0:
                return candidate
    return None


OLD_PYTHON = _older_python()


@pytest.mark.skipif(OLD_PYTHON is None, reason="no python 3.7-3.9 on this machine")
def test_helper_snapshot_and_restore_with_an_older_python(server: NatsServer) -> None:
    run(load_data(server.url))
    before = run(capture(server.url))
    assert OLD_PYTHON is not None
    helper = Path(jetstream.__file__).read_bytes()

    def call(op: str, *args: str, data: bytes = b"") -> bytes:
        boot = "import sys;exec(compile(sys.stdin.buffer.read(int(sys.argv[1])),'h','exec'))"
        argv = [OLD_PYTHON, "-c", boot, str(len(helper)), op, server.url, *args]
        res = subprocess.run(argv, input=helper + data, capture_output=True, check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout

    snap = call("snapshot", "ORDERS", "65536")
    call("delete", "ORDERS")
    assert json.loads(call("info", "ORDERS"))["missing"] == ["ORDERS"]
    call("restore", "ORDERS", data=snap)
    assert run(capture(server.url))["ORDERS"] == before["ORDERS"]


# ---- pure helpers -----------------------------------------------------------
def test_restore_order_puts_origins_before_mirrors_and_sources() -> None:
    entries: list[dict[str, Any]] = [
        {"name": "A_MIRROR", "config": {"mirror": {"name": "Z_ORIGIN"}}},
        {"name": "B_AGG", "config": {"sources": [{"name": "A_MIRROR"}, {"name": "ELSEWHERE"}]}},
        {"name": "Z_ORIGIN", "config": {}},
        {"name": "C_LOOP", "config": {"mirror": {"name": "D_LOOP"}}},
        {"name": "D_LOOP", "config": {"mirror": {"name": "C_LOOP"}}},
    ]
    names = [e["name"] for e in restore_order(entries)]
    assert names.index("Z_ORIGIN") < names.index("A_MIRROR") < names.index("B_AGG")
    assert sorted(names) == sorted(e["name"] for e in entries)


def test_credentials_and_artifact_names() -> None:
    assert auth_fields("tok3n") == {"auth_token": "tok3n"}
    assert auth_fields("app:pa:ss") == {"user": "app", "pass": "pa:ss"}
    with pytest.raises(UsageError, match="creds"):
        auth_fields("-----BEGIN NATS USER JWT-----\neyJ...\n")
    assert artifact_name("KV_config") == "KV_config.snapshot"
    odd = artifact_name("ünïcode$name")
    assert odd.startswith("stream-") and odd.endswith(".snapshot")


def test_credentials_in_url_are_refused_without_showing_them() -> None:
    cfg = NatsConfig.model_validate({"kind": "nats", "url": "nats://app:hunter2@127.0.0.1:4222"})
    src = NatsSource("nats", cfg, LocalRunner("platform"))
    with pytest.raises(UsageError) as err:
        list(src.artifacts())
    assert "hunter2" not in str(err.value) and "credentials = env:" in str(err.value)
