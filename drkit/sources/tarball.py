"""Shared machinery for sources whose artifact is a tar of host paths.

Backup: ``tar -C / -cf - <relative paths>`` on the host (modes, owners and
symlinks kept; GNU tar's non-zero exit fails the artifact). Restore: refuse to
overwrite differing files unless forced, then ``tar -xpf -`` under the
destination (``/`` = original paths).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

from drkit.errors import RestoreError
from drkit.remote.base import Runner
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
    pipe_into,
)
from drkit.sources.tarscan import TarScanner


def tar_create_argv(paths: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    rel = [p.lstrip("/") or "." for p in paths]
    excl = [f"--exclude={e}" for e in exclude]
    return ["tar", "-C", "/", "-c", "-f", "-", *excl, "--", *rel]


class TarSource(Source):
    """A source that stores one tar artifact, ``ARTIFACT``, and facts from its listing."""

    ARTIFACT = "files.tar"
    keep_content = False

    def tar_artifact(self, paths: list[str], exclude: list[str]) -> Artifact:
        scanner = TarScanner(keep_content=self.keep_content)

        def opener() -> Any:
            return self.command_stream(tar_create_argv(paths, exclude))

        def observe(chunk: bytes) -> None:
            scanner.feed(chunk)

        self._scanner = scanner
        return Artifact(self.ARTIFACT, opener, observe)

    def listing_facts(self) -> dict[str, Any]:
        s = self._scanner
        return {
            "entries": [m.fact() for m in s.members],
            "files": s.total_files,
            "bytes": s.total_bytes,
            "truncated": s.truncated,
        }

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        dest = opts.dest or "/"
        files = _files(facts)
        conflicts = differing_files(self.runner, dest, files, user=self.run_as)
        action = f"write {len(files)} file(s) under {dest}, modes and owners as backed up"
        if conflicts and not opts.force:
            shown = ", ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else "")
            return StepPlan(
                [action],
                f"{len(conflicts)} existing file(s) under {dest} differ from the backup "
                f"({shown}); use --force to overwrite or --dest to restore elsewhere",
            )
        if conflicts:
            action += f"; OVERWRITE {len(conflicts)} differing file(s) (--force)"
        return StepPlan([action])

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Every backed-up file is present under the destination with the same sha256."""
        dest = opts.dest or "/"
        files = _files(facts)
        if not files:
            return []
        digests = existing_digests(self.runner, dest, files, user=self.run_as)
        wrong = [
            _join(dest, f["path"])
            for f in files
            if digests.get(_join(dest, f["path"])) != f["sha256"]
        ]
        detail = f"{len(files) - len(wrong)}/{len(files)} file(s) identical to the backup"
        if wrong:
            detail += ": differ or missing: " + ", ".join(wrong[:5])
        return [Check(self.name, "files restored", "fail" if wrong else "pass", detail)]

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        dest = opts.dest or "/"
        report = RestoreReport()
        files = _files(facts)
        blocked = self.describe(facts, opts).blocked
        if blocked:
            raise RestoreError(f"{self.label}: {blocked}")
        self.runner.check(
            ["mkdir", "-p", "--", dest], what=f"{self.label}: restore", user=self.run_as
        )
        argv = ["tar", "-C", dest, "-x", "-p", "--same-owner", "-f", "-"]

        def consume(stream: BinaryIO) -> None:
            pipe_into(self.runner, argv, stream, what=f"{self.label}: restore", user=self.run_as)

        feed(self.ARTIFACT, consume)
        report.actions.append(f"extracted {len(files)} file(s) under {dest}")
        return report


def _files(facts: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in facts.get("entries", []) if e.get("type") == "file"]


def differing_files(
    runner: Runner, dest: str, files: list[dict[str, Any]], *, user: str | None = None
) -> list[str]:
    """Paths of existing files under ``dest`` whose content differs from the backup's
    (read as ``user``, the source's sudo_user, so root-only files are seen)."""
    expected = {_join(dest, f["path"]): f["sha256"] for f in files}
    found = existing_digests(runner, dest, files, user=user)
    return sorted(p for p, d in found.items() if expected.get(p) != d)


def existing_digests(
    runner: Runner, dest: str, files: list[dict[str, Any]], *, user: str | None = None
) -> dict[str, str]:
    """sha256 of each of ``files`` that exists under ``dest`` ("x" if unreadable)."""
    if not files:
        return {}
    targets = {_join(dest, f["path"]): f["sha256"] for f in files}
    # Prints "digest  path" for each existing target; unreadable ones count as differing.
    script = (
        'for f; do [ -e "$f" ] || [ -L "$f" ] && '
        '{ sha256sum -- "$f" 2>/dev/null || echo "x  $f"; }; done; true'
    )
    out = runner.check(
        ["sh", "-c", script, "sh", *targets], what="restore: checking existing files", user=user
    ).decode("utf-8", "surrogateescape")
    found: dict[str, str] = {}
    for line in out.splitlines():
        digest, _, path = line.partition("  ")
        if path in targets:
            found[path] = digest
    return found


def _join(dest: str, path: str) -> str:
    return "/" + path.lstrip("/") if dest == "/" else dest.rstrip("/") + "/" + path.lstrip("/")
