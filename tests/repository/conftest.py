"""Fixtures for the store contract: one real SeaweedFS per session, a store per backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drkit.repository.factory import StoreOptions
from drkit.repository.local import LocalStore
from drkit.repository.object_lock import ObjectLockGuard
from drkit.repository.s3 import S3Store
from drkit.repository.store import Store
from tests.servers.seaweed import SeaweedServer

PART_SIZE = 5 << 20


def s3_options(server: SeaweedServer, **overrides: Any) -> StoreOptions:
    options = StoreOptions(
        endpoint=server.endpoint,
        region=server.region,
        path_style=True,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        part_size=PART_SIZE,
        concurrency=2,
    )
    return dataclasses.replace(options, **overrides)


def make_s3_store(server: SeaweedServer, prefix: str = "repo/sub", **overrides: Any) -> S3Store:
    """An S3Store on a fresh bucket of the session server."""
    store = S3Store(server.new_bucket_name(), prefix, s3_options(server, **overrides))
    assert store.ensure_bucket() is True
    # SeaweedFS grows a volume for a bucket on its first write; two parts
    # racing for it wait about a second, so pay the growth once, alone.
    store.put_bytes("warm-up", b"x")
    store.delete("warm-up")
    return store


@pytest.fixture
def s3_store(seaweed: SeaweedServer) -> Iterator[S3Store]:
    store = make_s3_store(seaweed)
    yield store
    store.close()


@pytest.fixture(params=["local", "s3", "s3-object-lock-guard"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "repo")
        return
    if request.param == "s3":
        yield request.getfixturevalue("s3_store")
        return
    # What a policy with immutable_days opens: the guard over a bucket with Object Lock,
    # asking the bucket before every write (a guard over a store without Object Lock
    # refuses every write: tests/unit/test_object_lock_guard.py).
    inner = make_s3_store(request.getfixturevalue("seaweed"), object_lock_days=1)
    guard = ObjectLockGuard(inner, days=1, enabled=inner.object_lock_enabled)
    yield guard
    guard.close()
