"""NATS ``mode = "stop-copy"`` with NATS in a Docker container, drilled in the drill
container's own engine (#18 acceptance).

The host (test image tests/drills/images/nats-docker, added to a copy of docker/ as
docker/hosts/nats-docker) runs JetStream as seed 001's conversational platform does:
in a container named ``nats``, its store bind-mounted from /var/lib/platform-data/nats.
Seeded with CONVERSATIONS (history, purged start, a deleted message, two durable
consumers: tests/seeded/conversational.py), it is backed up over SSH with stop-copy:
the stream counts are read while NATS runs, the container is stopped, the store
copied, the container started again, and it serves the same state. ``drkit drill``
then restores the store into a fresh container of the image (its engine started, the
``nats`` container created but not started, as on a host being rebuilt): the source's
check compares the restored files with the backup's listing, and the drill file's
check starts the container on the restored store and reads the stream's messages,
sequences and consumers from NATS' monitoring endpoint: as at backup time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from drkit.drills.images import docker_dir
from tests.drills.test_drill import engine
from tests.drills.test_drill_image import write_drill_file
from tests.helpers import drkit, toml_value, write_policy
from tests.seeded.containers import host_containers, ssh_login, write_known_hosts
from tests.seeded.conversational import STREAM, jetstream_state, load_conversations
from tests.seeded.policy import ssh_connection

__all__ = ["engine"]  # the Docker engine fixture, shared with the drill tests

pytestmark = [pytest.mark.docker, pytest.mark.drills, pytest.mark.timeout(2400)]

HOST = "nats-docker-host"
IMAGE = "nats-docker"
STORE = "/var/lib/platform-data/nats"
SOURCE = {
    "kind": "nats", "name": "jetstream", "container": "nats", "url": "nats://127.0.0.1:4222",
    "streams": "all", "mode": "stop-copy", "store_dir": STORE,
}  # fmt: skip
HEALTHY = (
    "for i in $(seq 300); do curl -fsS http://127.0.0.1:8222/healthz >/dev/null 2>&1 && exit 0; "
    "sleep 0.2; done; exit 1"
)
# The drill's check: start the restored host's NATS container on the restored store,
# wait until it serves the stream, print its state as "NAME messages first last consumers".
READ = (
    "docker start nats >/dev/null; for i in $(seq 300); do "
    "curl -fsS 'http://127.0.0.1:8222/jsz?streams=true' -o /tmp/jsz 2>/dev/null && "
    f"grep -q '\"{STREAM}\"' /tmp/jsz && break; sleep 0.2; done; python3 -c '"
    'import json; d = json.load(open("/tmp/jsz")); '
    's = [s for a in d["account_details"] for s in a["stream_detail"]][0]; t = s["state"]; '
    'print(s["name"], t["messages"], t["first_seq"], t["last_seq"], t["consumer_count"])'
    "'"
)


def images_with_test_host(tmp_path: Path) -> Path:
    """A copy of the shipped docker/ with the test image as docker/hosts/nats-docker."""
    images = tmp_path / "docker"
    shutil.copytree(docker_dir(), images)
    shutil.copytree(Path(__file__).parent / "images" / IMAGE, images / "hosts" / IMAGE)
    return images


def running(box: HostContainer) -> str:
    return (
        box.exec(["docker", "inspect", "-f", "{{.State.Status}}", "nats"]).stdout.decode().strip()
    )


def test_nats_stop_copy_in_docker_is_backed_up_and_drilled_in_the_drills_own_engine(
    engine: None, keys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = images_with_test_host(tmp_path)
    monkeypatch.setenv("DRKIT_DOCKER_DIR", str(images))
    login = ssh_login(tmp_path / "ssh")
    with host_containers(IMAGE, [HOST], login) as boxes:
        source = boxes[HOST]
        assert source.engine and running(source) == "created"
        source.exec(["docker", "start", "nats"])
        source.exec(["sh", "-c", HEALTHY])
        stream, consumers = load_conversations(source, None)
        known = write_known_hosts(tmp_path / "known_hosts", source)
        conn = ssh_connection(source.port(22), login.identity, known)
        extra = "[connection]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in conn.items())
        policy = write_policy(
            tmp_path / f"{HOST}.toml", HOST, {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient], [SOURCE], extra=extra,
        )  # fmt: skip
        backup = drkit("backup", "--policy", str(policy))
        assert backup.returncode == 0, backup.output
        # Stopped for the copy, started again: the same stream and consumers served.
        assert running(source) == "running"
        source.exec(["sh", "-c", HEALTHY])
        assert jetstream_state(source, None) == (stream, consumers)
    expect = (
        f"{STREAM} {stream['messages']} {stream['first_seq']} {stream['last_seq']} "
        f"{stream['consumers']}"
    )
    drills = tmp_path / "drills"
    write_drill_file(
        drills,
        f'image = "{IMAGE}"\n[[command]]\nname = "nats serves the restored store"\n'
        f"run = {json.dumps(['sh', '-c', READ])}\ncontains = {json.dumps(expect)}\n",
        host=HOST,
    )
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills), "--docker-dir",
                str(images), "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["drills"]
    checks = {
        (c["source"], c["name"]): (c["status"], c.get("detail", "")) for c in report["checks"]
    }
    print(f"\n{HOST}: drill RTO {report['rto_seconds']} s; checks {checks}")
    assert report["verdict"] == "pass", report
    assert checks[("drill", "nats serves the restored store")][0] == "pass", checks
    assert all(status == "pass" for status, _ in checks.values()), checks
