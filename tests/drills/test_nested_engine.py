"""A drill container with a Docker engine of its own (issue 18 item 3), on a real engine.

The e2i-droplet image can run one (``org.drkit.engine=dockerd``): started with
``engine=True`` it brings up ``dockerd`` (vfs) inside, loads the images baked into it
(built by this machine's engine from docker/hosts/e2i-droplet/containers/) and starts
the host's containers under their seed names before it reports ready. The inner
engine's containers are as cut off as the drill container itself: on drkit's isolated
network, no name resolves and a never-routed address cannot be reached from them,
while they do reach each other. Bring-up times with and without the engine are
printed (``pytest -s``). An image without an engine is refused before anything starts.
"""

from __future__ import annotations

import secrets
import time

import pytest

from drkit.drills.container import host_container, image_has_engine
from drkit.drills.engine import DockerError, Engine, docker
from drkit.drills.images import ensure_base_image, ensure_host_image, image_size
from tests.drills.test_images import UNROUTED, engine  # noqa: F401 (the engine fixture)

pytestmark = [pytest.mark.docker, pytest.mark.drills, pytest.mark.timeout(2400)]

HOST = "e2i-droplet"
CONTAINERS = {"e2i_falkordb", "opik-mysql-1"}
INNER_IMAGE = "e2i-standin/falkordb:debian-redis"


@pytest.fixture(scope="module")
def engine_image(engine: Engine) -> str:  # noqa: F811
    base = ensure_base_image()
    return ensure_host_image(HOST, base_tag=base.tag).tag


def test_nested_engine_runs_the_hosts_containers_and_reaches_nothing_outside(
    engine_image: str,
) -> None:
    assert image_has_engine(engine_image)
    started = time.monotonic()
    with host_container(engine_image, host=HOST, authorized_keys="", engine=True) as box:
        with_engine = time.monotonic() - started
        assert box.engine and box.network is not None
        names = set(box.exec(["docker", "ps", "--format", "{{.Names}}"]).stdout.decode().split())
        assert names >= CONTAINERS, names
        pong = box.exec(["docker", "exec", "e2i_falkordb", "redis-cli", "ping"])
        assert pong.stdout.strip() == b"PONG"
        falkordb = (
            box.exec(
                ["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", "e2i_falkordb"]
            )
            .stdout.decode()
            .strip()
        )
        probes = {
            "resolve": "getent hosts example.com",
            "connect": f"timeout 5 bash -c 'exec 3<>/dev/tcp/{UNROUTED}/443'",
            "sibling": f"timeout 5 bash -c 'exec 3<>/dev/tcp/{falkordb}/6379'",
        }
        codes = {
            name: box.exec(
                ["docker", "run", "--rm", INNER_IMAGE, "sh", "-c", script],
                check=False, timeout=120,
            ).returncode
            for name, script in probes.items()
        }  # fmt: skip
        # An inner container reaches its neighbour on the inner bridge (so the probes
        # run and the network works), but no name resolves and nothing outside answers.
        assert codes["sibling"] == 0, codes
        assert codes["resolve"] != 0 and codes["connect"] != 0, codes
        # The drill container itself is still cut off too.
        outer = box.exec(["sh", "-c", f"exec 3<>/dev/tcp/{UNROUTED}/443"], check=False, timeout=30)
        assert outer.returncode != 0
        engine_log = box.exec(["cat", "/var/log/drkit/dockerd.log"]).stdout
        assert engine_log, "dockerd wrote no log"
        console = box.logs(60)
    started = time.monotonic()
    with host_container(engine_image, host=HOST, authorized_keys="", engine=False) as plain:
        without = time.monotonic() - started
        assert not plain.engine
        assert plain.exec(["docker", "info"], check=False).returncode != 0  # no engine runs
    lines = [line for line in console.splitlines() if line.startswith("drkit-engine:")]
    print(
        f"\n{HOST}: ready with its own engine in {with_engine:.1f} s, without {without:.1f} s "
        f"(image {image_size(engine_image) / 1e6:.0f} MB); " + "; ".join(lines)
    )


def test_an_engine_is_refused_for_an_image_without_one(engine: Engine) -> None:  # noqa: F811
    base = ensure_base_image()
    small = ensure_host_image("visualkit-hetzner", base_tag=base.tag).tag
    assert not image_has_engine(small)
    host = f"no-engine-{secrets.token_hex(3)}"
    refused = pytest.raises(DockerError, match=r"needs a Docker engine inside .* has none")
    with refused, host_container(small, host=host, authorized_keys="", engine=True):
        pass
    left = docker("ps", "-a", "--quiet", "--filter", f"label=org.drkit.host={host}").stdout
    assert left.strip() == b"", "a container was started"
