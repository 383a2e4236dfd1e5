"""Bring a restored service back and ask it what it serves, on the target.

A restore that puts certificates back but leaves the web server running on
its old state has not restored HTTPS. After the files are in place drkit
reloads the server the way the target runs it: systemd when the target boots
with it and knows the unit, else the server's own control command (``caddy
reload``, ``nginx -s reload``), else it starts the server. Then it probes: a
TLS handshake on the target's 127.0.0.1:443 with each site's name (SNI), and
the SHA-256 of the certificate served must be the one backed up (not a
re-issued one, not a default).

Everything runs through the target's Runner, so the same code serves a local
restore, ``--target ssh://`` and a drill container. The probe uses the
target's ``openssl`` (present wherever ``ca-certificates`` is installed).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass

from drkit.remote.base import Runner, exit_text, tail_text

PROBE_SECONDS = 20.0  # a reloaded server loads certificates in the background

# Prints the served leaf certificate's SHA-256 (hex) for SNI name $1 on 127.0.0.1:$2.
_PROBE = r"""
command -v openssl >/dev/null 2>&1 || { echo "openssl is not installed on the target" >&2; exit 3; }
pem=$(timeout 10 openssl s_client -connect "127.0.0.1:$2" -servername "$1" </dev/null 2>&1) ||
  { echo "$pem" | tail -n 3 >&2; exit 4; }
printf '%s\n' "$pem" | openssl x509 -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1
"""
# sha256 of nothing: openssl x509 found no certificate in the answer.
_NO_CERT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


def has_systemd_unit(runner: Runner, unit: str) -> bool:
    """Whether the target booted with systemd and knows ``unit`` (a container or a
    host without systemd has neither; ``systemctl`` there would only fail)."""
    script = 'test -d /run/systemd/system && systemctl cat -- "$1" >/dev/null 2>&1'
    return runner.run(["sh", "-c", script, "sh", unit]).returncode == 0


# Also the sbin directories: a login user's PATH lacks them (nginx is /usr/sbin/nginx), and
# a server that is installed must not look absent (nothing reloaded, nothing probed).
_COMMAND_V = 'PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v -- "$1"'


def installed(runner: Runner, program: str, *, user: str | None = None) -> bool:
    """Whether ``program`` is on the target (as ``user``, in its PATH or an sbin dir)."""
    return runner.run(["sh", "-c", _COMMAND_V, "sh", program], user=user).returncode == 0


def attempt(runner: Runner, argv: list[str], *, user: str | None = None) -> Outcome:
    """Run ``argv``; the outcome names the command and, on failure, why."""
    res = runner.run(argv, user=user)
    if res.returncode == 0:
        return Outcome(True, shlex.join(argv))
    why = f"{exit_text(res.returncode)}{tail_text(res.stderr)}"
    return Outcome(False, f"`{shlex.join(argv)}` {why}")


def served_fingerprint(runner: Runner, name: str, port: int = 443) -> tuple[str | None, str]:
    """The SHA-256 of the certificate the target serves for ``name`` on its loopback,
    or None and why not."""
    res = runner.run(["sh", "-c", _PROBE, "sh", name, str(port)])
    digest = res.stdout.decode("ascii", "replace").strip()
    if res.returncode == 0 and len(digest) == 64 and digest != _NO_CERT:
        return digest, ""
    if res.returncode == 3:
        return None, "openssl is not installed on the target: cannot probe"
    why = tail_text(res.stderr) or ": no certificate in the answer"
    return None, f"no TLS answer for {name} on 127.0.0.1:{port}{why}"


def probe_certificate(
    runner: Runner, name: str, expected: str, *, port: int = 443, wait: float = PROBE_SECONDS
) -> tuple[str, str]:
    """("pass" | "fail" | "warn", detail): does the target serve ``expected`` (hex
    SHA-256) for ``name``? Retries for ``wait`` seconds while the answer is missing or
    different (a reload loads certificates in the background)."""
    deadline = time.monotonic() + wait
    site = f"https://{name}{_port(port)}"
    while True:
        served, why = served_fingerprint(runner, name, port)
        if served is not None and served == expected.lower():
            return "pass", f"{site} serves the backed-up certificate ({served[:16]}...)"
        if served is None and why.startswith("openssl is not installed"):
            return "warn", why
        if time.monotonic() >= deadline:
            if served is None:
                return "fail", f"{site} is not served: {why}"
            return "fail", (
                f"{site} serves another certificate (sha256 {served[:16]}..., backed up "
                f"{expected[:16]}...): the restored one is not in use"
            )
        time.sleep(1.0)


def _port(port: int) -> str:
    return "" if port == 443 else f":{port}"
