"""The ``repo`` fixture: every end-to-end test that takes it runs on both backends."""

from __future__ import annotations

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
    bucket = server.new_bucket_name("e2e")
    client = server.client()
    client.create_bucket(Bucket=bucket)
    # SeaweedFS grows a volume on a bucket's first write: pay that once, here.
    client.put_object(Bucket=bucket, Key="warm-up", Body=b"x")
    client.delete_object(Bucket=bucket, Key="warm-up")
    yield RepoTarget(
        "s3",
        {"url": f"s3://{bucket}/drkit", "endpoint": server.endpoint, "region": server.region},
        # The CLI gets credentials the standard AWS way: from the environment.
        env={
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
        },
        s3=client,
        bucket=bucket,
        prefix="drkit",
    )
