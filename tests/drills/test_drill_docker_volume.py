"""A ``docker_volume`` source drilled in a container with its own Docker engine (#18 item 3).

The source host is a container of the e2i-droplet image, whose own engine runs the
host's containers; a named volume there holds files and a hard link, written by a
container. It is backed up over SSH as root; ``drkit drill`` then restores it into
its own drill container (the same image, with its own engine, started because the
image has one) and the drill file's check reads the volume through a container of the
inner engine: the files are back, and the hard link is still one (link count 2, same
inode). Without the engine inside the drill, the restore's ``docker volume inspect``
has nothing to talk to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.drills.test_drill_image import write_drill_file
from tests.helpers import drkit, toml_value, write_policy
from tests.seeded.containers import host_containers, ssh_login, write_known_hosts
from tests.seeded.policy import ssh_connection

pytestmark = [pytest.mark.docker, pytest.mark.drills, pytest.mark.timeout(2400)]

HOST = "volume-host"
VOLUME = "e2i_reports"
INNER_IMAGE = "e2i-standin/falkordb:debian-redis"  # loaded by the image's own engine
WRITE = (
    "mkdir -p /v/reports && printf 'ate=0.42\\n' >/v/reports/estimate.txt && "
    "ln /v/reports/estimate.txt /v/reports/latest.txt && chown -R 999:999 /v/reports"
)
# Through a container of the drill's own engine: content, link count and inodes, owner.
READ = (
    "cat /v/reports/latest.txt; stat -c '%h %u' /v/reports/estimate.txt; "
    "[ $(stat -c %i /v/reports/estimate.txt) = $(stat -c %i /v/reports/latest.txt) ] && echo linked"
)
EXPECT = "ate=0.42\n2 999\nlinked"


def test_a_docker_volume_with_a_hard_link_is_drilled_in_the_drills_own_engine(
    keys: Any, tmp_path: Path
) -> None:
    login = ssh_login(tmp_path / "ssh")
    with host_containers("e2i-droplet", [HOST], login) as boxes:
        source = boxes[HOST]
        assert source.engine
        source.exec(["docker", "run", "--rm", "-v", f"{VOLUME}:/v", INNER_IMAGE, "sh", "-c", WRITE])
        seen = source.exec(["docker", "run", "--rm", "-v", f"{VOLUME}:/v", INNER_IMAGE,
                            "sh", "-c", READ]).stdout.decode().strip()  # fmt: skip
        assert seen == EXPECT, seen
        known = write_known_hosts(tmp_path / "known_hosts", source)
        conn = ssh_connection(source.port(22), login.identity, known)
        extra = "[connection]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in conn.items())
        policy = write_policy(
            tmp_path / f"{HOST}.toml", HOST, {"url": (tmp_path / "repo").as_uri()},
            [keys.recipient], [{"kind": "docker_volume", "name": "reports", "volume": VOLUME}],
            extra=extra,
        )  # fmt: skip
        backup = drkit("backup", "--policy", str(policy))
        assert backup.returncode == 0, backup.output
    drills = tmp_path / "drills"
    check = ["docker", "run", "--rm", "-v", f"{VOLUME}:/v", INNER_IMAGE, "sh", "-c", READ]
    write_drill_file(
        drills,
        'image = "e2i-droplet"\n[[command]]\nname = "the volume is back, hard link included"\n'
        f"run = {json.dumps(check)}\ncontains = {json.dumps(EXPECT)}\n",  # JSON strings are TOML
        host=HOST,
    )
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 0, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "pass", report
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks["the volume is back, hard link included"] == "pass", report["checks"]
    print(f"\n{HOST}: drill RTO {report['rto_seconds']} s")
