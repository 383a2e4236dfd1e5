"""Which of a policy's sources need a Docker engine inside the drill container.

A drill restores each source as on the real host. Sources that live in Docker
there (``docker_volume``; ``compose``; NATS ``mode = "stop-copy"``, which stops
its container; a ``postgres``, ``mysql`` or ``redis`` source with
``container``; a ``command`` source whose command or restore command runs
``docker``) can be restored only where an engine runs, so the drill starts its
container with an engine of its own (``drills/container.py``, ``engine=``)
exactly when ``engine_sources()`` names one: the policy decides, not a flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from drkit.policy.models import Policy, source_name


def engine_sources(policy: Policy, skip: Iterable[str] = ()) -> dict[str, str]:
    """Source name -> why it needs Docker in the drill, for the policy's data sources
    other than ``skip`` (a drill file's ``[skip]``), in the policy's order."""
    skipped = set(skip)
    needs: dict[str, str] = {}
    for src in policy.source:
        name = source_name(src)
        why = _why(src)
        if why and name not in skipped:
            needs[name] = why
    return needs


def describe(needs: dict[str, str]) -> str:
    """``"falkordb (command runs docker), ..."``: for logs and errors."""
    return ", ".join(f"{name} ({why})" for name, why in needs.items())


def _why(src: Any) -> str:
    kind = getattr(src, "kind", "")
    if kind in ("docker_volume", "compose"):
        return f"{kind} source"
    if kind == "nats":  # snapshot mode talks to the server, in Docker or not
        return "nats stop-copy stops its container" if src.mode == "stop-copy" else ""
    if kind != "snapshot" and getattr(src, "container", None):
        return f"runs in container {src.container}"
    if kind == "command":
        for argv in (src.command, src.restore_command or []):
            if argv and PurePosixPath(argv[0]).name == "docker":
                return "its command runs docker"
    return ""
