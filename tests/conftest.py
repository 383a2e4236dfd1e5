"""Shared fixtures: a real PostgreSQL server, an isolated drkit home, an age identity."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from drkit.signing import SigningKey
from tests.servers.postgres import PgServer, postgres_server
from tests.servers.seaweed import SeaweedServer, seaweed_server

# Docker scenario suites beyond the vultr end to end (which stays in `make test`: the
# shipped policy's scenario, tests/e2e/test_shipped_vultr.py, and the first vultr drill
# test): they build three more host images, slow on a fresh machine, or repeat the vultr
# image's work (the older vultr acceptance test, the drill's failure cases, image
# selection). `make drills` runs them; CI runs it when the drill files changed since the
# last passing run (scripts/drills-stamp.sh).
DRILL_SUITES = {
    "tests/e2e/test_vultr_acceptance.py": None,
    "tests/drills/test_drill.py": ("test_drill_fails_", "test_drill_refuses_"),
    # builds a broken engine image (minutes on vfs); make test keeps the two quick ones
    "tests/drills/test_drill_setup_errors.py": ("test_an_engine_inside_",),
    "tests/drills/test_drill_image.py": None,
    "tests/drills/test_drill_all.py": None,  # None: every test of the file
    "tests/e2e/test_postgres_container.py": None,
    "tests/drills/test_images.py": ("test_isolated_", "test_bridge_mode_"),
    "tests/e2e/test_shipped_visualkit_hetzner.py": None,
    "tests/e2e/test_shipped_conversational_platform.py": None,
    "tests/e2e/test_shipped_e2i_droplet.py": None,
    "tests/drills/test_drill_supabase.py": None,
    "tests/e2e/test_stock_container.py": None,  # the workflow, the first hour: fresh containers
    "tests/e2e/test_discover.py": None,
    "tests/drills/test_drill_nats_under_load.py": None,
    # Live writes and kills (#17): minutes each; make test keeps one of each kind.
    "tests/sources/test_nats_live.py": (
        "test_backup_under_live_writes_",
        "test_resume_that_fails_",
        "test_memory_streams_",
    ),
    "tests/sources/test_docker_volume.py": (
        "test_drkit_killed_mid_copy_",
        "test_copy_killed_or_failing_",
        "test_copy_and_drkit_killed_together_",
        "test_restore_killed_with_",
    ),
    "tests/sources/test_pm2_deploy.py": (
        "test_backups_during_a_deploy_",
        "test_a_deploy_that_never_pauses_",
        "test_an_app_in_a_crash_loop_",
    ),
    # Session 12, CI time (make test was 27.5 min on a fresh machine): the bench
    # harness's smoke run (2-2.5 min), the Redis suite (~50 s) and compose's kill and
    # failing-copy windows (~40 s); make test keeps the planted-state-file test.
    "tests/bench/test_harness_smoke.py": ("test_quick_bench_runs_every_phase",),
    "tests/sources/test_redis.py": None,
    "tests/sources/test_compose_stop_window.py": (
        "test_the_next_backup_starts_",
        "test_a_failing_copy_is_named_",
    ),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent
    for item in items:
        try:
            rel = item.path.resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        if rel not in DRILL_SUITES:
            continue
        prefixes = DRILL_SUITES[rel]
        if prefixes is None or item.name.startswith(prefixes):
            item.add_marker(pytest.mark.drills)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One real SeaweedFS S3 server for the whole session (buckets keep tests apart)."""
    with seaweed_server() as server:
        yield server


@pytest.fixture(autouse=True)
def drkit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own config, state and catalog: nothing leaks between tests."""
    home = tmp_path / "home"
    monkeypatch.setenv("DRKIT_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("DRKIT_STATE_DIR", str(home / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.delenv("DRKIT_CATALOG_URL", raising=False)
    monkeypatch.delenv("DRKIT_IDENTITY", raising=False)
    monkeypatch.delenv("DRKIT_POLICY_DIR", raising=False)
    monkeypatch.delenv("DRKIT_SIGNING_KEY", raising=False)
    # This machine's signing key, as `drkit init` makes it: policies written by the
    # tests pin its public half (tests.helpers.local_signer).
    SigningKey.create(home / "config" / "signing.key")
    return home


@pytest.fixture
def uniq() -> str:
    """A short random suffix: tests sharing the session's PostgreSQL use their own names."""
    return secrets.token_hex(3)


class Keys:
    def __init__(self, directory: Path) -> None:
        identity = pyrage.x25519.Identity.generate()
        self.recipient = str(identity.to_public())
        self.identity_file = directory / "identity.txt"
        self.identity_file.write_text(f"{identity}\n")
        self.identity_file.chmod(0o600)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    d = tmp_path / "other"
    d.mkdir()
    return Keys(d)
