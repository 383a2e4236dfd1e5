"""The command line drkit sends over SSH: a small ``sh`` wrapper, sudo, and env on stdin.

``env`` never reaches the command line (where ``ps`` on the host would show
it): it is sent as the first lines of stdin to ``WRAPPER``, which exports the
variables and execs the command with the rest of stdin.
"""

from __future__ import annotations

import re
import shlex

from drkit.errors import UsageError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Every command runs under this wrapper. It reports its PID on stderr (so kill()
# can reach the command: sshd ignores signal requests on root logins), reads
# NAME='value' lines from stdin up to an empty line and exports them, then execs
# the command with the rest of stdin. `read` takes one byte at a time from a
# pipe, so nothing past the empty line is consumed. Values are single-quoted; a
# newline inside one is written as '"$nl"'.
WRAPPER = (
    "echo \"drkit-pid $$\" >&2; nl='\n'; "
    'while IFS= read -r l && [ -n "$l" ]; do eval "export $l" || exit 125; done; '
    'exec "$@"'
)
PID_LINE = re.compile(rb"(?m)^drkit-pid (\d+)\n")
# Kills the command's process group (sshd makes the login shell, which execs the
# wrapper, a session leader), else the process alone (under sudo it may not lead).
KILL_SCRIPT = 'kill -s KILL -- "-$1" 2>/dev/null || kill -s KILL -- "$1"'


def env_preamble(env: dict[str, str]) -> bytes:
    """The stdin lines ``WRAPPER`` reads: one ``NAME='value'`` per variable, then ``\\n``."""
    lines = []
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise UsageError(f"environment variable name {name!r} is not valid")
        if "\0" in value:
            raise UsageError(f"environment variable {name} holds a NUL byte")
        quoted = value.replace("'", "'\\''").replace("\n", "'\"$nl\"'")
        lines.append(f"{name}='{quoted}'\n")
    return ("".join(lines) + "\n").encode()


def remote_command(argv: list[str], sudo_user: str | None, wrap: bool = True) -> str:
    """The command line the login shell runs: argv under ``WRAPPER`` and sudo, quoted."""
    inner = ["sh", "-c", WRAPPER, "drkit", *argv] if wrap else list(argv)
    if sudo_user:
        # -n: a sudo that needs a password fails at once instead of waiting for one.
        inner = ["sudo", "-n", "-u", sudo_user, "--", *inner]
    # exec: the login shell becomes the command, so it leads the session's process group.
    return "exec " + shlex.join(inner)
