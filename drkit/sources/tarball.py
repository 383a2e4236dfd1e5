"""Shared machinery for sources whose artifact is a tar of host paths.

Backup: ``tar -C / -cf - <relative paths>`` on the host (modes, owners and
symlinks kept; GNU tar's non-zero exit fails the artifact). A host keeps
writing while it is backed up: when tar's only complaints are files that
changed while it read them (their bytes in the archive may be torn) or that
vanished before it could (skipped), the changed regular files are read again
in a second, small archive (``<artifact>.reread-1.tar``) whose version replaces
the first on restore; a file that changes during that re-read too fails the
source, naming it. Never a torn file recorded as good. Facts: ``changed``
(re-read), ``vanished`` (not in the backup). Restore: refuse to
overwrite differing files unless forced, then ``tar -xpf -`` into a staging
directory beside each policy path, renamed into place once the whole archive
was read and checked (``staging``: a killed restore leaves the old tree or the
new one), fed through ``TarFilter``: only members under the policy's paths for
the source, no symlink leading out of them, none written through a symlink on
the target that leads outside the destination (``confine``), no device, fifo or
set-id member.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

from drkit.errors import RestoreError, SourceError
from drkit.remote.base import Runner
from drkit.sources.base import (
    Artifact,
    Check,
    CommandStream,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
)
from drkit.sources.confine import Confinement, confine, scan_root, written_through
from drkit.sources.pkgdefaults import unmodified_package_defaults
from drkit.sources.staging import PREFIX as STAGING_PREFIX
from drkit.sources.staging import Staging
from drkit.sources.tarfilter import MemberRules, TarFilter, within
from drkit.sources.tarscan import TarScanner


def tar_create_argv(paths: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    rel = [p.lstrip("/") or "." for p in paths]
    excl = [f"--exclude={e}" for e in exclude]
    # A restore's leftover staging dir (killed mid-restore) is never backed up as data.
    excl.append(f"--exclude={STAGING_PREFIX}*")
    return ["tar", "-C", "/", "-c", "-f", "-", *excl, "--", *rel]


# tar's messages go whole to $1 (on the host): the stderr tail a failure shows is 2 KB,
# and which files changed must be known for every one of them.
_TAR_WITH_LOG = (
    'umask 077; e=$1; shift; "$@" 2>"$e"; rc=$?; [ $rc -eq 0 ] || tail -c 2000 "$e" >&2; exit $rc'
)
_CHANGED = re.compile(r"^(?:\S*/)?tar: (.+): file changed as we read it$")
_SHRANK = re.compile(r"^(?:\S*/)?tar: (.+): File shrank by \d+ bytes; padding with zeros$")
_VANISHED = re.compile(
    r"^(?:\S*/)?tar: (.+): "
    r"(?:File removed before we read it|Cannot stat: No such file or directory)$"
)
_EXIT_FILES_DIFFER = 1  # GNU tar: "some files differ" (changed or vanished while read)


class TarStream(CommandStream):
    """tar's stdout. Exit status 1 with nothing but changed/vanished-file messages is a
    complete archive of what tar could read: those files are recorded, not fatal."""

    def __init__(self, source: TarSource, argv: list[str], log: str) -> None:
        super().__init__(
            source,
            ["sh", "-c", _TAR_WITH_LOG, "sh", log, *argv],
            env=None,
            expect_output=True,
            user=None,
        )
        self._runner, self._log, self._user = source.runner, log, source.run_as
        self.changed: list[str] = []
        self.vanished: list[str] = []

    def status_ok(self, rc: int) -> bool:
        if rc != _EXIT_FILES_DIFFER:
            return False
        lines = self._messages().splitlines()
        for line in lines:
            if m := _CHANGED.match(line) or _SHRANK.match(line):
                self.changed.append("/" + m.group(1))
            elif m := _VANISHED.match(line):
                self.vanished.append("/" + m.group(1))
            else:
                return False  # anything else: a real failure, fail closed
        return bool(lines)

    def _messages(self) -> str:
        res = self._runner.run(["cat", "--", self._log], user=self._user)
        return res.stdout.decode("utf-8", "surrogateescape") if res.returncode == 0 else ""

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            self._runner.run(["rm", "-f", "--", self._log], user=self._user)


class TarSource(Source):
    """A source that stores one tar artifact, ``ARTIFACT``, and facts from its listing."""

    ARTIFACT = "files.tar"
    keep_content = False
    content_limit = 1 << 20  # bytes of a member's content kept for facts (keep_content)

    def tar_artifact(
        self, paths: list[str], exclude: list[str], name: str | None = None
    ) -> Artifact:
        """One tar of ``paths``; ``self._scanner`` reads its listing, ``self._tar`` is
        the stream of the last one opened (its changed/vanished files)."""
        scanner = TarScanner(keep_content=self.keep_content, content_limit=self.content_limit)

        def opener() -> Any:
            log = f"/tmp/.drkit-tar-{secrets.token_hex(8)}.log"  # noqa: S108 (64 random bits)
            self._tar = TarStream(self, tar_create_argv(paths, exclude), log)
            return self._tar

        def observe(chunk: bytes) -> None:
            scanner.feed(chunk)

        self._scanner = scanner
        return Artifact(name or self.ARTIFACT, opener, observe)

    def tar_artifacts(self, paths: list[str], exclude: list[str]) -> Iterator[Artifact]:
        """The source's tar, then a re-read of the regular files that changed while tar
        read them (see the module doc). Afterwards ``self._scanner`` lists the members
        as restored (re-read versions in place of the first ones) and ``self.reread``
        names the extra artifacts."""
        self.changed, self.vanished, self.reread = [], [], []
        yield self.tar_artifact(paths, exclude)
        first, tar = self._scanner, self._tar
        self.vanished = sorted(set(tar.vanished))
        files = {"/" + m.path.lstrip("/") for m in first.members if m.type == "file"}
        changed = sorted({p for p in tar.changed if p in files})
        if not changed:
            return
        name = self.ARTIFACT.removesuffix(".tar") + ".reread-1.tar"
        yield self.tar_artifact(changed, [], name)
        again, tar = self._scanner, self._tar
        if tar.changed or tar.vanished:
            moving = ", ".join(sorted({*tar.changed, *tar.vanished})[:5])
            raise SourceError(
                f"{self.label}: {moving} changed again while read a second time: no "
                "consistent copy; back it up while it is quiet or exclude it"
            )
        newer = {m.path: m for m in again.members}
        for i, m in enumerate(first.members):
            if m.path in newer:
                first.total_bytes += newer[m.path].size - m.size
                first.members[i] = newer[m.path]
                m.content = None  # the torn version's bytes (a key, an env value) go now
        self._scanner, self.changed, self.reread = first, changed, [name]

    def listing_facts(self) -> dict[str, Any]:
        s = self._scanner
        facts: dict[str, Any] = {
            "entries": [m.fact() for m in s.members],
            "files": s.total_files,
            "bytes": s.total_bytes,
            "truncated": s.truncated,
        }
        for key in ("changed", "vanished", "reread"):
            if getattr(self, key, None):
                facts[key] = list(getattr(self, key))
        warnings = []
        if getattr(self, "changed", None):
            warnings.append(
                f"{len(self.changed)} file(s) changed while read, read again: "
                + _some(self.changed)
            )
        if getattr(self, "vanished", None):
            warnings.append(
                f"{len(self.vanished)} file(s) vanished before they were read (not in this "
                f"backup): {_some(self.vanished)}"
            )
        if warnings:
            facts["warnings"] = warnings
        return facts

    def policy_paths(self) -> list[str]:
        """The absolute paths (globs for env) the local policy names for this source:
        a restore writes nothing else."""
        raise NotImplementedError(f"{type(self).__name__} names no policy paths")

    def confinement(self, facts: dict[str, Any], opts: RestoreOptions) -> Confinement:
        """The target's symlinks under the policy paths; ``blocked`` also when a backed-up
        path (from the facts: a prediction, the filter decides) would go through one."""
        conf = confine(
            self.runner, opts.dest or "/", self.policy_paths(), label=self.label, user=self.run_as
        )
        path, up = written_through(facts.get("entries", []), conf.escapes)
        if conf.blocked is None and up:
            conf.blocked = (
                f"{path} would be written through {up}, a symlink on the target to "
                f"{conf.escapes[up]}, outside where this step may write"
            )
        return conf

    def member_rules(self, opts: RestoreOptions) -> MemberRules:
        """The archive filter's rules for a restore now; raises RestoreError when a
        policy path's way down on the target goes through an escaping symlink."""
        conf = self.confinement({}, opts)
        if conf.blocked:
            raise RestoreError(f"{self.label}: {conf.blocked}")
        return MemberRules(
            tuple(self.policy_paths()),
            self.config.allow_setid,
            conf.escapes,
            tuple(self.config.symlinks_to),
        )

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        dest = opts.dest or "/"
        files = _files(facts)
        confined = self.confinement(facts, opts)
        if confined.blocked:
            return StepPlan([f"write {len(files)} file(s) under {dest}"], confined.blocked)
        roots = tuple(self.policy_paths())
        outside = [str(e["path"]) for e in facts.get("entries", []) if not within(e["path"], roots)]
        if outside:
            return StepPlan(
                [f"write {len(files)} file(s) under {dest}"],
                f"the snapshot holds {len(outside)} path(s) outside this source's policy paths "
                f"(first: {outside[0]}; policy: {', '.join(roots)}): a restore writes only "
                "where the local policy says",
            )
        stage_lines, short = self.staging(opts).space(facts)
        action = f"write {len(files)} file(s) under {dest}, modes and owners as backed up"
        if short:
            return StepPlan([action, *stage_lines], short)
        conflicts = differing_files(self.runner, dest, files, user=self.run_as)
        defaults: set[str] = set()
        if conflicts and dest == "/":
            defaults = unmodified_package_defaults(self.runner, conflicts, user=self.run_as)
            conflicts = [c for c in conflicts if c not in defaults]
        replaced = [f"replaces package default {p} (unmodified)" for p in sorted(defaults)]
        stage_lines = replaced + stage_lines
        if conflicts and not opts.force_files:
            shown = ", ".join(conflicts[:5]) + (" ..." if len(conflicts) > 5 else "")
            return StepPlan(
                [action, *stage_lines],
                f"{len(conflicts)} existing file(s) under {dest} differ from the backup "
                f"({shown}); use --force-files to overwrite or --dest to restore elsewhere",
            )
        if conflicts:
            action += f"; OVERWRITE {len(conflicts)} differing file(s) (--force-files)"
        if facts.get("truncated") and self._holds_files(dest):
            # The comparison above saw only the listed files: the others may differ.
            cut = (
                f"the backup's listing was cut at {len(facts.get('entries', []))} entries "
                f"({facts.get('files', '?')} file(s) in the archive), and {dest} already holds "
                "files under this source's paths: files past the cut cannot be compared"
            )
            if not opts.force_files:
                return StepPlan(
                    [action, *stage_lines],
                    f"{cut}; use --force-files to overwrite whatever differs, or --dest to restore "
                    "into an empty directory",
                )
            action += f"; {cut}: OVERWRITE them unchecked (--force-files)"
        return StepPlan([action, *stage_lines])

    def staging(self, opts: RestoreOptions) -> Staging:
        """Where and how this source's archive is staged on the target (``staging.py``)."""
        return Staging(
            self.runner,
            opts.dest or "/",
            self.policy_paths(),
            ident=f"{self.kind}/{self.name}",
            label=self.label,
            user=self.run_as,
        )

    def _holds_files(self, dest: str) -> bool:
        """Whether anything but directories exists under the policy paths beneath ``dest``."""
        script = (
            'for r; do [ -e "$r" ] && find "$r" -name ".drkit-staging-*" -prune -o '
            "! -type d -print -quit; done; true"
        )
        roots = [_join(dest, scan_root(p)[0]) for p in self.policy_paths()]
        out = self.runner.check(
            ["sh", "-c", script, "sh", *roots],
            what=f"{self.label}: reading {dest}",
            user=self.run_as,
        )
        return bool(out.strip())

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
        checks = [Check(self.name, "files restored", "fail" if wrong else "pass", detail)]
        if facts.get("truncated"):
            unseen = f"{facts.get('files', '?')} file(s) in the archive, {len(files)} compared"
            checks.append(Check(self.name, "files past the listing's cut", "warn", unseen))
        return checks

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        dest = opts.dest or "/"
        report = RestoreReport()
        files = _files(facts)
        blocked = self.describe(facts, opts).blocked
        if blocked:
            raise RestoreError(f"{self.label}: {blocked}")
        rules = self.member_rules(opts)  # again: an earlier step may have planted a link
        self.runner.check(
            ["mkdir", "-p", "--", dest], what=f"{self.label}: restore", user=self.run_as
        )
        staging = self.staging(opts)
        staging.survey()
        try:
            # Inside the try: a stop while preparing discards the staging it made.
            staging.prepare()  # also recovers what a killed run left (see staging.py)
            # Files that changed while backed up were read again: those versions last.
            for name in [self.ARTIFACT, *facts.get("reread", [])]:
                feed(name, lambda stream: staging.extract(TarFilter(stream, rules, self.label)))
            staging.swap()
        except BaseException:
            staging.recover()
            raise
        report.actions.append(
            f"extracted {len(files)} file(s) under {dest} (staged, renamed into place)"
        )
        return report


def _some(paths: list[str]) -> str:
    return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


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
    # Paths go in on stdin (NUL-separated: no argument-length limit, any byte in a name);
    # out come the existing ones, an empty record, then "digest  path" records from one
    # sha256sum per batch (not one process per file: trees of 100k files). An existing
    # path with no digest (unreadable, a dangling link) counts as differing ("x").
    script = (
        "t=$(mktemp) || exit 1; trap 'rm -f \"$t\"' EXIT; "
        'xargs -0 -r sh -c \'for f; do if [ -e "$f" ] || [ -L "$f" ]; then '
        'printf "%s\\0" "$f"; fi; done\' sh > "$t" || exit 1; '
        'cat "$t"; printf "\\0"; xargs -0 -r sha256sum --zero -- < "$t" 2>/dev/null; true'
    )
    listing = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in targets)
    out = runner.check(
        ["sh", "-c", script], input=listing, what="restore: checking existing files", user=user
    ).decode("utf-8", "surrogateescape")
    existing, _, digests = out.partition("\0\0")
    found = {path: "x" for path in existing.split("\0") if path in targets}
    for record in digests.split("\0"):
        digest, _, path = record.partition("  ")
        if path in found:
            found[path] = digest
    return found


def _join(dest: str, path: str) -> str:
    return "/" + path.lstrip("/") if dest == "/" else dest.rstrip("/") + "/" + path.lstrip("/")
