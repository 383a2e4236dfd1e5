"""Containers stopped while a command reads their data, started again however it ends.

Used by drkit.sources.docker_volume (``stop_label``) and drkit.sources.compose
(a project's volumes read in one window). The stop, the read and the start are
one shell on the host (``STOPPED_WHILE``): it records the containers in a state
file, stops them, runs the command (tar) and starts them again when it ends,
however it ends (an error, drkit killed, the SSH connection lost: the command's
output then goes nowhere and it ends). Only if that shell itself is killed first
do they stay stopped; the state file (under ``STATE_DIR``) names them, and the
next backup of the source starts those not running (``read_state``).
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import BinaryIO

from drkit.remote.base import Runner
from drkit.sources.base import CommandStream, Source

# Survives a reboot: a container left stopped is still named. World-writable, so the file
# is created with O_EXCL after removing whatever is there, and read only if it is ours.
STATE_DIR = "/var/tmp"  # noqa: S108

# Stop containers, run a command (tar), start them again however it ends. $1 the state
# file, $2 its content ("id name" lines), then container ids, "--", the command. Its
# stdout is the command's; a signal to this shell (SIGHUP of a lost session, ...) is
# handled once the command ended, and the command ends when its reader is gone.
STOPPED_WHILE = r"""s=$1 text=$2; shift 2; ids=
while [ "$1" != -- ]; do ids="$ids $1"; shift; done; shift
again() { docker start $ids >/dev/null 2>&1 && rm -f -- "$s"; }
trap again EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
trap 'exit 141' PIPE
(umask 077 && rm -f -- "$s" && set -C && printf '%s' "$text" >"$s") || exit 1
docker stop $ids >/dev/null || exit 1
"$@"
"""
# $1 the state file, $2 its content. Created anew (noclobber: O_EXCL), never written
# through a symlink or into a file someone else put at that predictable name.
RECORD = '(umask 077 && rm -f -- "$1" && set -C && printf \'%s\' "$2" >"$1")'
# $1 the state file: printed only if it is a regular file of this user's, not a link.
READ = 'test -f "$1" && test ! -L "$1" && test -O "$1" && cat -- "$1"'
# $1 the state file, then container ids: start them, then forget the file.
START_AGAIN = 's=$1; shift; docker start "$@" >/dev/null && rm -f -- "$s"'


def state_file(key: str) -> str:
    """The host's state file for one source (``key`` names kind, source and what it stops)."""
    ident = hashlib.sha256(key.encode()).hexdigest()
    return posixpath.join(STATE_DIR, f".drkit-stopped-{ident[:16]}")


def state_text(found: dict[str, str]) -> str:
    """The state file's content: one "id name" line per container."""
    return "".join(f"{cid} {name}\n" for cid, name in found.items())


def parse_state(text: str) -> dict[str, str]:
    """A state file's content (``state_text``) read back: id -> name."""
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def read_state(runner: Runner, state: str, user: str | None) -> dict[str, str]:
    """The containers a state file names (id -> name); none when there is no file (the
    last run started what it stopped), or when it is a link or someone else's file (not
    drkit's: nobody gets a container started by planting one)."""
    res = runner.run(["sh", "-c", READ, "sh", state], user=user)
    return parse_state(res.stdout.decode()) if res.returncode == 0 else {}


def stopped_while(state: str, found: dict[str, str], argv: list[str]) -> list[str]:
    """``argv`` run by ``STOPPED_WHILE`` with ``found``'s containers (id -> name) stopped."""
    return ["sh", "-c", STOPPED_WHILE, "sh", state, state_text(found), *found, "--", *argv]


class ShownStream(CommandStream):
    """A command run inside ``STOPPED_WHILE``: errors name ``shown`` (tar), not the shell."""

    def __init__(self, source: Source, argv: list[str], shown: list[str]) -> None:
        super().__init__(source, argv, env=None, expect_output=True, user=None)
        self._shown = shown

    def __enter__(self) -> BinaryIO:
        stream = super().__enter__()
        self._argv = self._shown  # started: from now on it only names the command
        return stream
