"""A drill that cannot be set up on this machine is not a failed drill (issue 23, item 1).

No Docker engine, or an image build that fails: the drill's verdict is ERROR, the
message says what is missing, drkit exits 7 (not 4, "a drill ran and failed its
checks"), and nothing is recorded: `status` still reports no drill, so a broken
drill machine never looks like a broken backup.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.images import docker_dir
from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.drills.test_drill_image import HOST, backed_up_policy, write_drill_file
from tests.helpers import drkit

BROKEN_DOCKERFILE = """\
ARG BASE=drkit-base
FROM ${BASE}
ENTRYPOINT ["/usr/local/sbin/drkit-entrypoint"]
RUN echo "this image does not build" >&2; exit 3
"""


def assert_not_recorded(policy: Path) -> None:
    listed = json.loads(drkit("status", "--policy", str(policy), "--json").stdout)
    [host] = listed["hosts"]
    assert host.get("last_drill") is None, host


def test_no_engine_is_a_setup_error_not_a_failed_drill(keys: Any, tmp_path: Path) -> None:
    policy = backed_up_policy(tmp_path, keys)
    drills = tmp_path / "drills"
    write_drill_file(drills, 'image = "vultr"\n')
    nowhere = f"unix://{tmp_path}/no-engine.sock"
    argv = ("drill", "--policy", str(policy), "--drills-dir", str(drills),
            "--identity", str(keys.identity_file))  # fmt: skip
    res = drkit(*argv, "--json", env={"DOCKER_HOST": nowhere})
    assert res.returncode == 7, res.output
    assert "Traceback" not in res.stderr
    [report] = json.loads(res.stdout)["drills"]
    assert report["verdict"] == "error", report
    assert report["error"].startswith("drill could not be set up: "), report
    assert nowhere in report["error"] or "docker CLI is not installed" in report["error"]
    assert report["checks"] == [] and report["image"] == ""
    res = drkit(*argv, env={"DOCKER_HOST": nowhere})
    assert res.returncode == 7, res.output
    assert f"{HOST}: drill ERROR: not set up, nothing checked or recorded" in res.stdout
    assert "cached" not in res.stdout  # it said "image none cached 0.0s"
    assert_not_recorded(policy)


@pytest.mark.docker
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("engine")
def test_a_failed_image_build_is_a_setup_error(keys: Any, tmp_path: Path) -> None:
    """--docker-dir: a copy of the shipped docker/ with one more image that does not build."""
    policy = backed_up_policy(tmp_path, keys)
    images = tmp_path / "docker"
    shutil.copytree(docker_dir(), images)
    (images / "hosts" / "broken").mkdir()
    (images / "hosts" / "broken" / "Dockerfile").write_text(BROKEN_DOCKERFILE)
    drills = tmp_path / "drills"
    write_drill_file(drills, 'image = "broken"\n')
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills),
                "--docker-dir", str(images), "--identity", str(keys.identity_file),
                "--json")  # fmt: skip
    assert res.returncode == 7, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert (report["verdict"], report["image_name"]) == ("error", "broken"), report
    assert "image for broken: docker build exited" in report["error"], report
    assert "this image does not build" in report["error"], report
    assert_not_recorded(policy)
