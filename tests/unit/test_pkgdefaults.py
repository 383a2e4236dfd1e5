"""Unmodified package defaults are told apart from edited files, on this machine's dpkg."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from drkit.remote.local import LocalRunner
from drkit.sources.pkgdefaults import unmodified_package_defaults

CADDYFILE = "/etc/caddy/Caddyfile"  # Debian's caddy package (scripts/setup.sh installs it)


def shipped_md5(path: str) -> str | None:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Conffiles}\n"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == path:
            return fields[1]
    return None


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
def test_a_conffile_as_shipped_is_a_default_and_an_edited_or_unknown_file_is_not(
    tmp_path: Path,
) -> None:
    md5 = shipped_md5(CADDYFILE)
    if md5 is None:
        pytest.fail("Debian's caddy package is not installed (scripts/setup.sh installs it)")
    current = hashlib.md5(Path(CADDYFILE).read_bytes()).hexdigest()
    runner = LocalRunner()
    other = tmp_path / "Caddyfile"
    other.write_bytes(Path(CADDYFILE).read_bytes())  # same bytes, but no package owns it
    found = unmodified_package_defaults(runner, [CADDYFILE, str(other), "/nonexistent/x"])
    if current == md5:
        assert found == {CADDYFILE}
    else:  # this machine's Caddyfile was edited: then it is user data
        assert found == set()
    assert unmodified_package_defaults(runner, []) == set()
