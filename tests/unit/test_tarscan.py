"""The tar push-parser agrees with Python's tarfile on what GNU tar writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from drkit.sources.env import env_key_names
from drkit.sources.tarscan import TarScanner


def test_scanner_matches_gnu_tar(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    deep = root / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / ("long-name-" * 12 + ".txt")).write_bytes(os.urandom(5000))
    (root / "big.bin").write_bytes(os.urandom(700_001))
    (root / "empty").write_bytes(b"")
    (root / "link").symlink_to("big.bin")
    os.link(root / "big.bin", root / "hard")
    (root / "secret").write_text("x")
    (root / "secret").chmod(0o600)
    data = subprocess.run(
        ["tar", "-C", str(tmp_path), "-cf", "-", "tree"], check=True, capture_output=True
    ).stdout
    scanner = TarScanner()
    for i in range(0, len(data), 777):  # odd chunk sizes cross header boundaries
        scanner.feed(data[i : i + 777])
    by_path = {m.path: m for m in scanner.members}
    long_file = f"/tree/{'d' * 90}/{'e' * 90}/{'long-name-' * 12}.txt"
    assert long_file in by_path
    # big.bin and hard are one inode: tar stores whichever comes first, then a hard link.
    pair = sorted([by_path["/tree/big.bin"], by_path["/tree/hard"]], key=lambda m: m.type)
    big, hard = pair[0], pair[1]
    assert big.type == "file" and big.size == 700_001
    assert big.sha256 == hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    assert hard.type == "hardlink" and hard.link == big.path.lstrip("/")
    assert by_path["/tree/link"].type == "symlink" and by_path["/tree/link"].link == "big.bin"
    assert by_path["/tree/secret"].mode == 0o600
    assert by_path["/tree/empty"].sha256 == hashlib.sha256(b"").hexdigest()
    assert scanner.total_files == 4


def test_env_key_names_never_values() -> None:
    content = b"# comment\nexport API_KEY=abc\nDB_URL = postgres://x\n\nBAD LINE\nA.B=1\n"
    assert env_key_names(content) == ["A.B", "API_KEY", "DB_URL"]
