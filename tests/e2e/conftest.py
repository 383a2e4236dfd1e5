"""The ``repo`` fixture: every end-to-end test that takes it runs on both backends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.repos import RepoTarget


@pytest.fixture(params=["local", "s3"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RepoTarget]:
    if request.param == "local":
        root = tmp_path / "repo"
        yield RepoTarget("local", {"url": root.as_uri()}, root=root)
        return
    server = request.getfixturevalue("seaweed")
    bucket = "e2e-" + secrets.token_hex(4)
    client = server.client()
    client.create_bucket(Bucket=bucket)
    yield RepoTarget(
        "s3",
        {"url": f"s3://{bucket}/drkit", "endpoint": server.endpoint, "region": "us-east-1"},
        env=server.env(),
        s3=client,
        bucket=bucket,
        prefix="drkit",
    )
