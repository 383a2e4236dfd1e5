"""``env``: bundles of ``.env`` files found by globs such as ``/root/*/.env``.

Facts hold, per file, its key *names* and digest: never a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from drkit.errors import SourceError
from drkit.policy.models import EnvConfig
from drkit.sources.base import Artifact
from drkit.sources.tarball import TarSource

_KEY = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.-]*)\s*=")

# Expands each pattern on the host (IFS empty: no word splitting, globbing only)
# and prints what exists, NUL-separated, prefixed by the pattern's index.
_EXPAND = (
    'IFS=""; i=0; for pat; do for f in $pat; do '
    '[ -f "$f" ] && printf "%s\\t%s\\0" "$i" "$f"; done; i=$((i+1)); done; true'
)


def env_key_names(content: bytes) -> list[str]:
    names = []
    for line in content.decode("utf-8", "replace").splitlines():
        m = _KEY.match(line)
        if m:
            names.append(m.group(1))
    return sorted(set(names))


class EnvSource(TarSource):
    kind = "env"
    config: EnvConfig
    ARTIFACT = "env.tar"
    keep_content = True

    def policy_paths(self) -> list[str]:
        return list(self.config.paths)

    def expand(self) -> list[str]:
        """Every file the patterns match on the host; a pattern matching nothing fails."""
        out = self.runner.check(
            ["sh", "-c", _EXPAND, "sh", *self.config.paths],
            what=f"{self.label}: listing files",
            user=self.run_as,
        )
        found: dict[int, list[str]] = {}
        for record in out.split(b"\0"):
            if record:
                idx, _, path = record.decode("utf-8", "surrogateescape").partition("\t")
                found.setdefault(int(idx), []).append(path)
        missing = [p for i, p in enumerate(self.config.paths) if i not in found]
        if missing:
            raise SourceError(f"{self.label}: no file matches {', '.join(missing)}")
        return sorted({p for paths in found.values() for p in paths})

    def artifacts(self) -> Iterator[Artifact]:
        yield from self.tar_artifacts(self.expand(), [])
        facts = self.listing_facts()
        files: list[dict[str, Any]] = []
        for member in self._scanner.members:
            if member.type != "file":
                continue
            entry = member.fact()
            entry["keys"] = env_key_names(member.content or b"")
            member.content = None  # values must not outlive the scan
            files.append(entry)
        facts["env_files"] = files
        self.facts.update(facts)
