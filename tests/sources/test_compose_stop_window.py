"""``compose``: what a killed stop window left stopped, the next backup starts again
(drkit.sources.stop_window's state file, as ``docker_volume``'s ``stop_label``).

On this machine's engine (the drill base image): a container and a named volume
labelled as compose labels a project's, no compose CLI needed for a backup. The
state file a killed window leaves is written as the window's shell writes it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.errors import SourceError
from drkit.policy.models import ComposeConfig
from drkit.remote.local import LocalRunner
from drkit.sources.compose import ComposeSource
from drkit.sources.stop_window import state_text
from tests.sources.test_docker_volume import base_image, docker, state  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


@pytest.fixture
def project(base_image: str, tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A one-service project "drkit-cs-<id>" with a named volume, its container running."""
    uniq = secrets.token_hex(4)
    name = f"drkit-cs-{uniq}"
    workdir = tmp_path / "proj"
    workdir.mkdir()
    (workdir / "compose.yml").write_text("services:\n  app:\n    image: base\n")
    names = {"project": name, "dir": str(workdir), "container": f"{name}-app-1"}
    names["volume"] = f"{name}_data"
    labels = {
        "com.docker.compose.project": name,
        "com.docker.compose.service": "app",
        "com.docker.compose.project.working_dir": str(workdir),
        "com.docker.compose.project.config_files": "compose.yml",
    }
    label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
    try:
        docker("volume", "create", "--label", f"com.docker.compose.project={name}", names["volume"])
        docker(
            "run",
            "--detach",
            "--init",
            "--name",
            names["container"],
            *label_args,
            "-v",
            f"{names['volume']}:/data",
            base_image,
            "sh",
            "-c",
            "echo kept > /data/kept.txt && exec sleep infinity",
        )
        names["id"] = docker("inspect", "--format", "{{.Id}}", names["container"])
        yield names
    finally:
        docker("rm", "--force", names["container"], check=False)
        docker("volume", "rm", "--force", names["volume"], check=False)


def backup(source: ComposeSource) -> dict[str, Any]:
    """Every artifact read whole, as a backup reads them; the source's facts."""
    for artifact in source.artifacts():
        with artifact.open() as stream:
            while chunk := stream.read(1 << 20):
                if artifact.observe is not None:
                    artifact.observe(chunk)
    return source.facts


def test_the_next_backup_starts_what_a_killed_window_left_stopped(
    project: dict[str, Any],
) -> None:
    config = ComposeConfig(kind="compose", project=project["project"], dir=project["dir"])
    source = ComposeSource("shop", config, LocalRunner("dockerbox"))
    state_file = Path(source.state_file())
    # A window killed with its shell: the containers stopped, the state file naming them.
    docker("stop", project["container"])
    state_file.write_text(state_text({project["id"]: project["container"]}))
    try:
        facts = backup(source)
        assert state(project["container"])["Running"]
        assert not state_file.exists()
        [warning] = facts["warnings"]
        assert warning.startswith(f"container(s) {project['container']} were still stopped")
        assert "killed before it could start them" in warning
        # The window of this backup stopped the container it found running, and started it.
        assert facts["stopped"] == [project["container"]]
        assert facts["volumes"][project["volume"]]["files"] == 1

        # A state file naming only running containers is stale: dropped, nothing said.
        state_file.write_text(state_text({project["id"]: project["container"]}))
        again = ComposeSource("shop", config, LocalRunner("dockerbox"))
        assert "warnings" not in backup(again)
        assert not state_file.exists()
        assert state(project["container"])["Running"]
    finally:
        state_file.unlink(missing_ok=True)


def test_a_planted_state_file_starts_nothing_and_is_never_written_through(
    project: dict[str, Any], tmp_path: Path
) -> None:
    """The state file's name is predictable in world-writable /var/tmp: a link planted there
    is not followed when the window records its containers, and a file someone else put
    there names no container to start."""
    config = ComposeConfig(kind="compose", project=project["project"], dir=project["dir"])
    source = ComposeSource("shop", config, LocalRunner("dockerbox"))
    state_file = Path(source.state_file())
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    state_file.symlink_to(victim)  # root's own link: the kernel's protected_symlinks allows it
    try:
        facts = backup(source)
        assert facts["stopped"] == [project["container"]]  # the window ran, over the link
        assert victim.read_text() == "untouched\n"
        assert not state_file.exists() and not state_file.is_symlink()

        docker("stop", project["container"])
        state_file.write_text(state_text({project["id"]: project["container"]}))
        os.chown(state_file, 65534, 65534)  # nobody's file, not drkit's
        facts = backup(ComposeSource("shop", config, LocalRunner("dockerbox")))
        assert "warnings" not in facts
        assert not state(project["container"])["Running"]
    finally:
        state_file.unlink(missing_ok=True)


def test_a_failing_copy_is_named_with_the_start_that_failed_after_it(
    project: dict[str, Any],
) -> None:
    """tar fails in the window (its volume directory gone), and the container cannot start
    without it: the error names both, tar not the window's shell; the state file stays, and
    once the directory is back the next backup starts the container."""
    config = ComposeConfig(kind="compose", project=project["project"], dir=project["dir"])
    source = ComposeSource("shop", config, LocalRunner("dockerbox"))
    data = Path(docker("volume", "inspect", "--format", "{{.Mountpoint}}", project["volume"]))
    aside = data.with_name("_data.aside")
    state_file = Path(source.state_file())
    try:
        artifacts = source.artifacts()
        files = next(artifacts)
        with files.open() as stream:
            while stream.read(1 << 20):
                pass
        volumes = next(artifacts)
        data.rename(aside)
        with pytest.raises(SourceError) as err, volumes.open() as stream:  # noqa: PT012
            while stream.read(1 << 20):
                pass
        msg = str(err.value)
        assert f"starting {project['container']} again: `docker start" in msg, msg
        assert "(after: host dockerbox: source shop (compose): command `tar -C " in msg, msg
        assert "again()" not in msg and "sh -c" not in msg, msg
        assert not state(project["container"])["Running"]
        assert state_file.exists()

        aside.rename(data)
        facts = backup(ComposeSource("shop", config, LocalRunner("dockerbox")))
        assert facts["warnings"][0].startswith(f"container(s) {project['container']} were")
        assert state(project["container"])["Running"]
    finally:
        if aside.exists():
            aside.rename(data)
        state_file.unlink(missing_ok=True)
