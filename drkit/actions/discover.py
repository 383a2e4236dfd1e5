"""``drkit discover``: run the discovery script over the policy's connection, read-only,
and judge what it finds against the policy's sources (``drkit/discover/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drkit.discover.coverage import Finding, assess
from drkit.discover.facts import Facts, parse
from drkit.discover.script import SCRIPT
from drkit.discover.suggest import render, suggestions
from drkit.errors import SourceError
from drkit.policy.models import Policy
from drkit.remote.base import Runner, exit_text, tail_text
from drkit.remote.factory import open_runner

WHAT = "the discovery script (drkit/discover/script.py)"


@dataclass
class Discovery:
    """What ``discover`` found on one host."""

    host: str
    facts: Facts
    findings: list[Finding]
    suggested: list[dict[str, Any]] = field(default_factory=list)

    @property
    def uncovered(self) -> list[Finding]:
        return [f for f in self.findings if f.uncovered]

    def suggestion_toml(self) -> str:
        return render(self.suggested, self.host)

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "login_user": self.facts.user,
            "docker": self.facts.docker or None,
            "compose_projects": [
                {
                    "name": p.name,
                    "working_dir": p.working_dir,
                    "files": p.files,
                    "env_files": p.env_files,
                    "services": [
                        {
                            "service": c.service,
                            "container": c.name,
                            "image": c.image,
                            "state": c.state,
                        }
                        for c in p.containers
                    ],
                    "volumes": p.volumes,
                    "binds": p.binds,
                }
                for p in self.facts.projects
            ],
            "findings": [f.as_dict() for f in self.findings],
            "uncovered": len(self.uncovered),
            "errors": self.facts.errors,
        }


def collect(runner: Runner) -> str:
    """The discovery script's output from ``runner``'s host. Raises ``SourceError``."""
    done = runner.run(["sh", "-s"], input=SCRIPT.encode())
    if done.returncode != 0:
        raise SourceError(
            f"host {runner.host}: {WHAT} {exit_text(done.returncode)}{tail_text(done.stderr)}"
        )
    return done.stdout.decode("utf-8", "replace")


def judge(output: str, policy: Policy) -> Discovery:
    """``Discovery`` from the script's ``output`` (pure: used by tests on recorded outputs)."""
    facts = parse(output)
    findings = assess(facts, policy)
    return Discovery(policy.host, facts, findings, suggestions(facts, findings, policy))


def discover(policy: Policy) -> Discovery:
    """Discover ``policy``'s host over its connection (read-only)."""
    runner = open_runner(policy.host, policy.connection)
    try:
        output = collect(runner)
    finally:
        runner.close()
    return judge(output, policy)
