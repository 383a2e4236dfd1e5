"""Repository targets for end-to-end tests: the same test runs on a local dir and on S3."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RepoTarget:
    """What a policy needs (``policy``), what the CLI's environment needs (``env``),
    and raw access to the objects for assertions and tampering."""

    kind: str
    policy: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    root: Path | None = None  # local
    s3: Any = None  # boto3 client
    bucket: str = ""
    prefix: str = ""

    def keys(self, contains: str = "") -> list[str]:
        if self.root is not None:
            found = [
                p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
            ]
        else:
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + "/"
            )
            found = [
                o["Key"][len(self.prefix) + 1 :] for page in pages for o in page.get("Contents", [])
            ]
        return sorted(k for k in found if contains in k and ".drkit-tmp-" not in k)

    def open_uploads(self) -> list[str]:
        if self.root is not None:
            return [p.name for p in self.root.rglob(".drkit-tmp-*")]
        res = self.s3.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"] for u in res.get("Uploads", [])]

    def read(self, key: str) -> bytes:
        if self.root is not None:
            return (self.root / key).read_bytes()
        return bytes(
            self.s3.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()
        )

    def write(self, key: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / key).parent.mkdir(parents=True, exist_ok=True)
            (self.root / key).write_bytes(data)
        else:
            self.s3.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}", Body=data)

    def flip_byte(self, key: str) -> None:
        data = bytearray(self.read(key))
        data[len(data) // 2] ^= 0x01
        self.write(key, bytes(data))

    def label(self, key: str) -> str:
        return key
