"""``compose`` end to end on a host with its own Docker engine (the dockerhost image of
tests/e2e/test_discover.py, its compose project "shop" up: an HTTP app, PostgreSQL and
Redis with data in named volumes, uploads in a bind mount, an env file).

Backup of the whole project (its directory, both volumes read with the project
stopped and started again, its images saved), then the disaster: `docker-compose
down -v` (containers and volumes gone), the images removed, the directory deleted.
`drkit restore` brings back the files, loads the images (no registry), fills the
volumes, runs `docker-compose up -d`, and its checks pass: every service running,
the app listening on 127.0.0.1:8080. The app answers, with its rows, keys and
uploaded file.

In ``make drills`` (pytestmark): minutes of vfs copies.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.container import HostContainer
from tests.e2e.test_compose_containers import dockerhost_policy, target
from tests.e2e.test_discover import dockerhost  # noqa: F401 - the fixture
from tests.helpers import drkit
from tests.seeded.containers import Login

pytestmark = [pytest.mark.docker, pytest.mark.drills, pytest.mark.timeout(2400)]
IMAGES = ["shop/cache:1", "shop/db:1", "shop/web:1"]


def sh(box: HostContainer, script: str, *, check: bool = True) -> str:
    done = box.exec(["sh", "-c", script], check=False)
    if check:
        assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")
    return done.stdout.decode().strip()


def state(box: HostContainer) -> dict[str, str]:
    """What the app holds: its health, the orders, a Redis key, the uploaded file."""
    compose = "cd /srv/shop && docker-compose exec -T"
    return {
        "health": sh(box, "curl -fsS http://127.0.0.1:8080/health", check=False),
        "orders": sh(
            box,
            f"{compose} db psql -At -d shop -c 'SELECT count(*), max(item) FROM orders'",
            check=False,
        ),
        "cart": sh(box, f"{compose} cache redis-cli GET cart:1", check=False),
        "upload": sh(box, "cat /srv/shop/uploads/first.txt", check=False),
    }


def test_compose_project_restored_whole_after_down_v(
    dockerhost: tuple[HostContainer, Login],  # noqa: F811 - the imported fixture
    tmp_path: Path,
    keys: Any,
) -> None:
    box, login = dockerhost
    source = {"kind": "compose", "name": "shop", "project": "shop", "dir": "/srv/shop",
              "images": True}  # fmt: skip
    policy = dockerhost_policy(tmp_path, box, login, keys.recipient, [source])
    before = state(box)
    assert before == {"health": "db=ok cache=ok", "orders": "25|item-9",
                      "cart": "three-items", "upload": "an uploaded file"}  # fmt: skip

    started = time.monotonic()
    res = drkit("backup", "--policy", str(policy), "--json", check=True)
    backup_s = time.monotonic() - started
    [result] = json.loads(res.stdout)["results"]
    assert result["status"] == "success" and result["artifacts"] == 3, res.output
    # Started again after the copy: the app answers as before.
    for _ in range(100):
        if state(box)["health"] == "db=ok cache=ok":
            break
        time.sleep(0.3)
    assert state(box) == before

    # The disaster: containers, volumes, images and the project's directory gone.
    sh(box, "cd /srv/shop && docker-compose down -v >/dev/null 2>&1 && "
            f"docker rmi {' '.join(IMAGES)} >/dev/null && rm -rf /srv/shop")  # fmt: skip
    assert sh(box, "docker volume ls -q --filter label=com.docker.compose.project=shop") == ""

    plan = drkit("restore", "--policy", str(policy), "--identity", str(keys.identity_file),
                 "--plan", *target(box, login))  # fmt: skip
    assert "create and fill volume shop_pgdata" in plan.stdout, plan.output
    assert "docker load 3 image(s)" in plan.stdout, plan.output

    started = time.monotonic()
    res = drkit("restore", "--policy", str(policy), "--identity", str(keys.identity_file),
                "--yes", "--json", *target(box, login))  # fmt: skip
    restore_s = time.monotonic() - started
    report = json.loads(res.stdout) if res.stdout else {}
    assert res.returncode == 0 and report.get("verdict") == "pass", res.output
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["service web"]["detail"] == "running, listening on 127.0.0.1:8080", checks
    assert checks["service db"]["status"] == "pass" and checks["service cache"]["status"] == "pass"
    assert checks["files restored"]["status"] == "pass"
    for _ in range(100):
        if state(box)["health"] == "db=ok cache=ok":
            break
        time.sleep(0.3)
    assert state(box) == before
    print(f"compose backup {backup_s:.1f} s, restore {restore_s:.1f} s")
