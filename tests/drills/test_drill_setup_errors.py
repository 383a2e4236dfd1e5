"""A drill that cannot be set up on this machine is not a failed drill (issue 23, item 1).

No Docker engine, an image build that fails, or a Docker engine that the drill
container needs inside (issue 18 item 3) and cannot start: the drill's verdict is ERROR, the
message says what is missing, drkit exits 7 (not 4, "a drill ran and failed its
checks"), and nothing is recorded: `status` still reports no drill, so a broken
drill machine never looks like a broken backup.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from drkit.drills.images import docker_dir
from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.drills.test_drill_image import HOST, backed_up_policy, write_drill_file
from tests.helpers import drkit, write_policy

BROKEN_DOCKERFILE = """\
ARG BASE=drkit-base
FROM ${BASE}
ENTRYPOINT ["/usr/local/sbin/drkit-entrypoint"]
RUN echo "this image does not build" >&2; exit 3
"""


# Labelled as able to run an engine of its own, but without docker.io: the engine
# inside cannot start (as when dockerd exits), cheaply (no packages installed).
NO_DOCKERD_DOCKERFILE = """\
ARG BASE=drkit-base
FROM ${BASE}
LABEL org.drkit.engine=dockerd
ENTRYPOINT ["/usr/local/sbin/drkit-entrypoint"]
COPY . /opt/drkit/
RUN sh /opt/drkit/setup-image.sh
"""


def drill_in_own_image(
    policy: Path, keys: Any, tmp_path: Path, image: str, dockerfile: str,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``drkit drill`` with --docker-dir: a copy of the shipped docker/ with one more image,
    ``image``, chosen by the drill file; asserts exit 7 and returns the host's report."""
    images = tmp_path / "docker"
    shutil.copytree(docker_dir(), images)
    (images / "hosts" / image).mkdir()
    (images / "hosts" / image / "Dockerfile").write_text(dockerfile)
    drills = tmp_path / "drills"
    write_drill_file(drills, f'image = "{image}"\n')
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills),
                "--docker-dir", str(images), "--identity", str(keys.identity_file),
                "--json", env=env)  # fmt: skip
    assert res.returncode == 7, res.output
    [report] = json.loads(res.stdout)["drills"]
    return dict(report)


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
    report = drill_in_own_image(policy, keys, tmp_path, "broken", BROKEN_DOCKERFILE)
    assert (report["verdict"], report["image_name"]) == ("error", "broken"), report
    assert "image for broken: docker build exited" in report["error"], report
    assert "this image does not build" in report["error"], report
    assert_not_recorded(policy)


@pytest.mark.docker
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("engine")
def test_an_engine_inside_that_does_not_start_is_a_setup_error(keys: Any, tmp_path: Path) -> None:
    """A policy with a Docker-backed source (a command source running docker), drilled in
    an image whose engine cannot start: exit 7, the step that failed and where to read."""
    local = tmp_path / "files" / "app.env"
    local.parent.mkdir(parents=True)
    local.write_text("PORT=3000\n")
    sources = [
        {"kind": "env", "name": "env", "paths": [str(local)]},
        {"kind": "command", "name": "engine-version", "artifact": "version.txt",
         "command": ["docker", "version", "--format", "{{.Client.Version}}"]},
    ]  # fmt: skip
    repo = {"url": (tmp_path / "repo").as_uri()}
    policy = write_policy(tmp_path / f"{HOST}.toml", HOST, repo, [keys.recipient], sources)
    drkit("backup", "--policy", str(policy), check=True)
    # No extra CA: the image has no ca-certificates to add one to.
    env = {"DRKIT_BUILD_CA": "none"}
    report = drill_in_own_image(policy, keys, tmp_path, "no-dockerd", NO_DOCKERD_DOCKERFILE, env)
    assert report["verdict"] == "error", report
    error = report["error"]
    assert error.startswith("drill could not be set up: container drkit-drill-"), error
    assert "this image has no dockerd" in error, error
    console = re.search(r"console: (\S+\.log)\)", error)
    assert console and "this image has no dockerd" in Path(console[1]).read_text(), error
    assert_not_recorded(policy)
