"""Which image a drill runs in, and what its container is called.

A policy's drill file (``<drills dir>/<host>.toml``) may name the image
(``image = "vultr"``) and ``drkit drill --image`` overrides it; without either
the image is the one named like the host. A policy for ``vultr-2`` is drilled
in the vultr image, in a container named ``drkit-drill-vultr-2-<snapshot>``.

The top tests need no engine. The engine tests run two small drills (one env
file) of a ``vultr-2`` policy through the real CLI, and check how a name
already held by another container is handled on containers that are created
from an empty image and never started.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from drkit.drills.container import (
    DRILL_LABEL,
    HOST_LABEL,
    KEEP_LABEL,
    OWNER_LABEL,
    _left_by_killed_drill,
    claim_name,
    container_name,
    create_network,
    owner,
    remove_network,
)
from drkit.drills.report import DrillReport, junit_xml, markdown
from drkit.drills.spec import load_spec, spec_for
from drkit.errors import PolicyError, UsageError
from tests.drills.test_drill import engine  # noqa: F401 (the Docker engine fixture)
from tests.helpers import drkit, write_policy

ROOT = Path(__file__).resolve().parents[2]
IMAGES = "conversational-platform, dockerhost, e2i-droplet, visualkit-hetzner, vultr"
HOST = "vultr-2"


def write_drill_file(directory: Path, body: str, host: str = HOST) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / f"{host}.toml"
    path.write_text(f'host = "{host}"\n{body}')
    return path


# --- no engine -----------------------------------------------------------------------


def test_shipped_drill_files_name_their_image() -> None:
    files = sorted((ROOT / "restore_drills").glob("*.toml"))
    assert files
    for path in files:
        spec = load_spec(path)
        assert spec.image == path.stem, path
        assert spec.image_for(path.stem) == (path.stem, str(path))


def test_the_drill_file_names_the_image_and_image_overrides_it(tmp_path: Path) -> None:
    drills = tmp_path / "drills"
    path = write_drill_file(drills, 'image = "vultr"\n')
    spec = spec_for(HOST, drills)
    assert spec.image_for(HOST) == ("vultr", str(path))
    assert spec.image_for(HOST, "visualkit-hetzner") == ("visualkit-hetzner", "--image")
    with pytest.raises(
        UsageError, match=rf"^--image: unknown drill image 'nosuch': .*\(images: {IMAGES}\)$"
    ):
        spec.image_for(HOST, "nosuch")
    # No drill file: the image named like the host, as before.
    assert spec_for("vultr", drills).image_for("vultr") == ("vultr", "the host name")
    # ... and a host named like no image says how to choose one.
    with pytest.raises(UsageError) as failure:
        spec_for("vultr-3", drills).image_for("vultr-3")
    message = str(failure.value)
    assert message.startswith(
        f"no drill image for host 'vultr-3': {drills / 'vultr-3.toml'} (no such file) names none"
    ), message
    assert f"(images: {IMAGES})" in message and "--image" in message


def test_an_unknown_image_in_a_drill_file_names_the_file_and_the_images(tmp_path: Path) -> None:
    path = write_drill_file(tmp_path, 'image = "vultr2"\ncert_warn_days = "soon"\n')
    with pytest.raises(PolicyError) as failure:
        load_spec(path)
    problems = failure.value.problems
    assert len(problems) == 2, problems  # every problem at once
    assert problems[0].startswith(f"{path}: cert_warn_days: ")
    assert problems[1].startswith(f"{path}: image: unknown drill image 'vultr2': no ")
    assert problems[1].endswith(f"vultr2/Dockerfile (images: {IMAGES})")


def test_cli_refuses_unknown_images_before_any_drill(keys: Any, tmp_path: Path) -> None:
    repo = {"url": (tmp_path / "repo").as_uri()}
    sources = [{"kind": "env", "name": "env", "paths": [f"{tmp_path}/*.env"]}]
    policy = write_policy(tmp_path / "p.toml", HOST, repo, [keys.recipient], sources)
    drills = tmp_path / "drills"
    path = write_drill_file(drills, 'image = "vultr2"\n')
    common = ("drill", "--policy", str(policy), "--drills-dir", str(drills))
    res = drkit(*common)
    assert res.returncode == 2, res.output
    assert f"{path}: image: unknown drill image 'vultr2'" in res.stderr
    assert f"(images: {IMAGES})" in res.stderr
    res = drkit(*common, "--image", "nosuch")
    assert res.returncode == 2, res.output
    assert "--image: unknown drill image 'nosuch'" in res.stderr
    res = drkit("--policy-dir", str(tmp_path), "drill", "--all", "--image", "vultr")
    assert res.returncode == 2 and "--image applies to one host" in res.stderr, res.output


def test_a_host_without_an_image_fails_its_drill_saying_how_to_choose_one(
    keys: Any, tmp_path: Path
) -> None:
    """vultr-2 without a drill file: before this, `no drill image for host` and nothing
    to do about it. Resolved before any engine is needed."""
    policy = backed_up_policy(tmp_path, keys)
    drills = tmp_path / "drills"
    drills.mkdir()
    res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills),
                "--identity", str(keys.identity_file), "--json")  # fmt: skip
    assert res.returncode == 4, res.output
    [report] = json.loads(res.stdout)["drills"]
    assert report["error"].startswith(
        f"no drill image for host 'vultr-2': {drills / 'vultr-2.toml'} (no such file) names none"
    ), report
    assert 'image = "<image>"' in report["error"] and "--image" in report["error"]


def test_container_names_keep_to_what_docker_allows() -> None:
    snapshot = "20261207T054312.318Z-1a2b3c"
    assert container_name(HOST, snapshot) == f"drkit-drill-vultr-2-{snapshot}"
    assert container_name("a b/c", "x:y@@z") == "drkit-drill-a-b-c-x-y-z"


def test_only_a_drill_of_the_same_host_that_is_over_is_a_leftover() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    machine = owner().split(":")[0]
    gone = {DRILL_LABEL: "1", HOST_LABEL: HOST, OWNER_LABEL: f"{machine}:{dead.pid}:1"}

    def leftover(labels: dict[str, str], status: str = "running", host: str = HOST) -> bool:
        return _left_by_killed_drill(
            {"Config": {"Labels": labels}, "State": {"Status": status}}, host
        )

    assert leftover(gone)  # its drkit was killed
    assert leftover({**gone, OWNER_LABEL: owner()}, "exited")  # stopped (e.g. a reboot)
    assert not leftover({**gone, KEEP_LABEL: "1"})  # --keep
    assert not leftover({**gone, KEEP_LABEL: "1"}, "exited")
    assert not leftover({**gone, OWNER_LABEL: owner()})  # still running
    assert not leftover({**gone, OWNER_LABEL: f"other:{dead.pid}:1"})  # another machine's
    assert not leftover({**gone, OWNER_LABEL: ""})
    assert not leftover(gone, host="vultr")  # another host's
    assert not leftover({**gone, DRILL_LABEL: "0"}, "exited")  # not a drill's


def test_reports_say_which_image_and_container() -> None:
    report = DrillReport(
        host=HOST, drill_id="d1", snapshot="s1", started="", finished="", verdict="pass",
        rto_seconds=1.0, rpo_seconds=2.0, image_build_seconds=0.1, image="drkit-host-vultr:abc",
        image_name="vultr", image_from="restore_drills/vultr-2.toml",
        container="drkit-drill-vultr-2-s1",
    )  # fmt: skip
    data = json.loads(report.to_json())
    assert (data["image"], data["image_name"], data["container"]) == (
        "drkit-host-vultr:abc", "vultr", "drkit-drill-vultr-2-s1",
    )  # fmt: skip
    md = markdown([report])
    assert "| vultr-2 | **PASS** | s1 | 1.0 s | 0.0 h | vultr | 0.1 s (cached) |" in md
    assert (
        "Image `vultr` (drkit-host-vultr:abc; chosen by restore_drills/vultr-2.toml), "
        "container `drkit-drill-vultr-2-s1`." in md
    )
    props = {
        p.get("name"): p.get("value") for p in ET.fromstring(junit_xml([report])).iter("property")
    }
    assert props["image_name"] == "vultr" and props["container"] == "drkit-drill-vultr-2-s1"
    assert props["image_from"] == "restore_drills/vultr-2.toml"


# --- a real engine -------------------------------------------------------------------


def backed_up_policy(tmp_path: Path, keys: Any) -> Path:
    """A vultr-2 policy with one env file, backed up here (local connection)."""
    env = tmp_path / "root" / "db-proxy" / ".env"
    env.parent.mkdir(parents=True)
    env.write_text("PORT=3000\n")
    env.chmod(0o600)
    sources = [{"kind": "env", "name": "env", "paths": [f"{tmp_path}/root/*/.env"]}]
    repo = {"url": (tmp_path / "repo").as_uri()}
    policy = write_policy(tmp_path / f"{HOST}.toml", HOST, repo, [keys.recipient], sources)
    drkit("backup", "--policy", str(policy), check=True)
    return policy


def vultr_2_drill_file(tmp_path: Path) -> Path:
    """image = "vultr", and checks that tell the vultr image from the others."""
    drills = tmp_path / "drills"
    write_drill_file(
        drills,
        'image = "vultr"\n'
        '[[command]]\nname = "hostname"\nrun = ["hostname"]\ncontains = "vultr-2"\n'
        '[[command]]\nname = "pm2 is installed"\nrun = ["sh", "-c", "command -v pm2"]\n'
        f'[[env]]\npath = "{tmp_path}/root/db-proxy/.env"\nkeys = ["PORT"]\n',
    )
    return drills


def newest_snapshot(policy: Path) -> str:
    listed = json.loads(drkit("snapshots", "--policy", str(policy), "--json", check=True).stdout)
    return str(listed["snapshots"][-1]["snapshot"])


def inspect(name: str) -> dict[str, Any] | None:
    from drkit.drills.engine import docker

    done = docker("container", "inspect", name, check=False)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None


def remove_containers(prefix: str, host: str | None = None) -> None:
    """Remove this test's containers (named ``prefix...``, or labelled as drills of ``host``)
    and their drill networks."""
    from drkit.drills.engine import docker

    listed = docker("ps", "--all", "--quiet", "--filter", f"name=^/{prefix}").stdout.split()
    if host is not None:
        labelled = ("--filter", f"label={HOST_LABEL}={host}")
        listed += docker("ps", "--all", "--quiet", *labelled).stdout.split()
    for container_id in dict.fromkeys(c.decode() for c in listed):
        info = inspect(container_id)
        docker("rm", "--force", "--volumes", container_id, check=False, timeout=120)
        for net in (info or {}).get("NetworkSettings", {}).get("Networks") or {}:
            if net.startswith("drkit-drill-"):
                remove_network(net)


@pytest.mark.docker
@pytest.mark.timeout(1500)
@pytest.mark.usefixtures("engine")
def test_vultr_2_is_drilled_in_the_vultr_image_named_for_its_snapshot(
    keys: Any, tmp_path: Path
) -> None:
    policy = backed_up_policy(tmp_path, keys)
    drills = vultr_2_drill_file(tmp_path)
    name = container_name(HOST, newest_snapshot(policy))
    try:
        res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills), "--keep",
                    "--identity", str(keys.identity_file), "--report", str(tmp_path / "report"),
                    "--junit", str(tmp_path / "junit.xml"), "--json")  # fmt: skip
        assert res.returncode == 0, res.output
        [report] = json.loads(res.stdout)["drills"]
        assert (report["verdict"], report["error"]) == ("pass", None), report
        assert report["image_name"] == "vultr"
        assert report["image_from"] == str(drills / f"{HOST}.toml")
        assert report["image"].startswith("drkit-host-vultr:")
        assert report["container"] == name == f"drkit-drill-vultr-2-{report['snapshot']}"
        assert "| vultr-2 | **PASS** |" in (tmp_path / "report" / "drill-summary.md").read_text()
        assert 'name="image_name" value="vultr"' in (tmp_path / "junit.xml").read_text()
        # Kept (--keep): the container of that name runs the vultr image as host vultr-2.
        info = inspect(name)
        assert info is not None, f"no container {name}"
        assert info["Config"]["Image"] == report["image"]
        assert info["Config"]["Hostname"] == HOST
        labels = info["Config"]["Labels"]
        assert (labels[HOST_LABEL], labels[KEEP_LABEL]) == (HOST, "1")
        # A kept container is never taken for a leftover: the next drill gets "-2".
        assert claim_name(name, HOST) == f"{name}-2"
        assert inspect(name) is not None
    finally:
        remove_containers(name, HOST)
    assert inspect(name) is None


@pytest.mark.docker
@pytest.mark.timeout(1500)
@pytest.mark.usefixtures("engine")
def test_image_option_overrides_the_drill_files_image(keys: Any, tmp_path: Path) -> None:
    """--image visualkit-hetzner: the container runs that image (it has no pm2, so the
    drill file's pm2 check fails, and only that one) and is removed afterwards."""
    policy = backed_up_policy(tmp_path, keys)
    drills = vultr_2_drill_file(tmp_path)
    name = container_name(HOST, newest_snapshot(policy))
    try:
        res = drkit("drill", "--policy", str(policy), "--drills-dir", str(drills),
                    "--image", "visualkit-hetzner", "--identity", str(keys.identity_file),
                    "--json")  # fmt: skip
        assert res.returncode == 4, res.output
        [report] = json.loads(res.stdout)["drills"]
        assert (report["image_name"], report["image_from"]) == ("visualkit-hetzner", "--image")
        assert report["image"].startswith("drkit-host-visualkit-hetzner:")
        assert report["container"] == name and report["error"] is None, report
        failed = [c["name"] for c in report["checks"] if c["status"] != "pass"]
        assert failed == ["pm2 is installed"], report["checks"]
        assert inspect(name) is None, "the drill container was not removed"
    finally:
        remove_containers(name, HOST)


@pytest.fixture(scope="module")
def empty_image(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An image with nothing in it: containers created from it cost nothing (never started)."""
    from drkit.drills.engine import docker

    request.getfixturevalue("engine")

    root = tmp_path_factory.mktemp("empty-root")
    tag = f"drkit-test-empty:{os.getpid()}"
    tar = subprocess.run(["tar", "-C", str(root), "-c", "."], capture_output=True, check=True)
    docker("import", "-", tag, input=tar.stdout)
    yield tag
    docker("rmi", "--force", tag, check=False)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_a_name_held_by_a_killed_drill_is_reused_any_other_gets_a_suffix(
    empty_image: str, uniq: str
) -> None:
    from drkit.drills.engine import docker

    host = f"{HOST}-{uniq}"
    name = container_name(host, "20261207T054312.318Z-1a2b3c")
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = f"{owner().split(':')[0]}:{dead.pid}:1"

    def create(container: str, *labels: str, network: str | None = None) -> str:
        args = ["create", "--name", container]
        for label in labels:
            args += ["--label", label]
        if network is not None:
            args += ["--network", network]
        return docker(*args, empty_image, "/none").stdout.decode().strip()

    drill = (f"{DRILL_LABEL}=1", f"{HOST_LABEL}={host}")
    network = create_network(host)
    try:
        # A killed drill's container (and its network): removed, the name is free again.
        leftover = create(name, *drill, f"{OWNER_LABEL}={killed}", network=network)
        assert claim_name(name, host) == name
        assert inspect(leftover) is None
        nets = docker("network", "ls", "--quiet", "--filter", f"name=^{network}$").stdout
        assert nets.strip() == b"", "the killed drill's network was left"
        # A drill still running (this process), a kept one, another host's, and a
        # container that is no drill's: left alone, the next free suffix is used.
        create(name, *drill, f"{OWNER_LABEL}={owner()}")
        create(f"{name}-2", *drill, f"{OWNER_LABEL}={killed}", f"{KEEP_LABEL}=1")
        create(f"{name}-3", DRILL_LABEL + "=1", f"{HOST_LABEL}=vultr", f"{OWNER_LABEL}={killed}")
        create(f"{name}-4")
        assert claim_name(name, host) == f"{name}-5"
        assert all(inspect(f"{name}{s}") is not None for s in ("", "-2", "-3", "-4"))
    finally:
        remove_containers(name, host)
        remove_network(network)
