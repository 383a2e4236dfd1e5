"""``docker_volume``: a named Docker volume's contents, read from its mountpoint on the host.

Backup: ``docker volume inspect`` gives the volume's ``Mountpoint``
(``/var/lib/docker/volumes/NAME/_data`` with the ``local`` driver), and the
host's own GNU tar reads it: ``tar -C MOUNTPOINT -cf - --numeric-owner .``.
Reading the mountpoint rather than running ``docker run -v NAME:/v IMAGE tar``
needs no image on the host (drkit can't rely on any image being present, and
a missing one would be pulled from a registry in the middle of a backup),
starts no container, and keeps the numeric owners that matter inside the
containers. It needs root on the host: log in as root or set
``sudo_user = "root"``. Volumes of other drivers (NFS, plugins) have no host
mountpoint while unused; they are refused with the driver named.

``stop_label``: running containers carrying that label are stopped while the
volume is read (a consistent copy of a database's files, say) and always
started again, also when reading or storing fails, or drkit dies. The stop,
the read and the start are one shell on the host (drkit.sources.stop_window):
it stops them, runs tar, and starts them again when tar ends, however it ends
(an error, drkit killed with SIGKILL or SIGTERM, the SSH connection lost: tar's
output then goes nowhere and tar ends). drkit starts them too (a no-op then),
to report a failure to start. Only if that shell itself is killed before it
could start them do they stay stopped: it leaves a state file on the host
(``stop_window.STATE_DIR``), and the next backup of the source starts the
containers it names that are not running, with a warning. A container that was not running
when the backup began is never stopped, so never started.

Facts: the volume's driver and labels, each entry (path, type, mode, uid/gid,
size and sha256), file count, total bytes, and ``digest``: a sha256 over the
sorted entry lines, which ``check`` recomputes on the target from a ``find``
listing and ``sha256sum`` (no second transfer of the data).

Restore: into the volume of the same name (created with the same labels if
missing, so Docker Compose adopts it); a volume holding files is refused
unless ``--force-db``, and then the result equals the backup. Staged: the
archive is extracted into ``.drkit-staging-<id>/new`` beside the volume's
directory (``/var/lib/docker/volumes/NAME/``: the same filesystem), and only
after it was read whole and its digest checked is the old directory renamed
aside, the new one renamed into place and the old removed. A killed restore
leaves the old contents or the new ones; the next restore of the source first
puts back an old directory whose place is empty, then removes the staging
directory. ``--dest DIR`` extracts into ``DIR/<volume>`` instead and touches
no volume.

The tree's entries and digest are drkit.sources.tree_listing. This module stays
near 470 lines: one source class whose backup and restore share the volume's
inspection, the containers stopped around the read (the shell scripts and state
file are drkit.sources.stop_window, shared with drkit.sources.compose) and the
staged swap.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from drkit.errors import RestoreError, SourceError
from drkit.policy.models import DockerVolumeConfig
from drkit.remote.base import exit_text, tail_text
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    Source,
    StepPlan,
    differs_from_policy,
    pipe_into,
)
from drkit.sources.confine import confine
from drkit.sources.staging import PREFIX as STAGING_PREFIX
from drkit.sources.staging import human
from drkit.sources.stop_window import (
    RECORD,
    START_AGAIN,
    ShownStream,
    read_state,
    state_text,
    stopped_while,
)
from drkit.sources.stop_window import state_file as state_path
from drkit.sources.tarfilter import MemberRules, TarFilter
from drkit.sources.tarscan import TarScanner
from drkit.sources.tree_listing import (
    LIST_SCRIPT,
    entry_line,
    listing_digest,
    member_entries,
    parse_listing,
)

ARTIFACT = "volume.tar"
# Staged restores (see the module doc): $1 staging dir, $2 the volume's directory.
# An old directory whose place is empty goes back; then the staging dir goes.
_RECOVER = r"""s=$1 d=$2; [ -d "$s" ] || exit 0
if [ -d "$s/old" ] && [ ! -e "$d" ] && [ ! -L "$d" ]; then mv -T -- "$s/old" "$d" || exit 1; fi
rm -rf -- "$s"
"""
_PREPARE = 'mkdir -p -- "$(dirname -- "$1")" && mkdir -m 700 -- "$1" "$1/new"'
_SWAP = r"""s=$1 d=$2
if [ -e "$d" ] || [ -L "$d" ]; then mv -T -- "$d" "$s/old" || exit 1; fi
mv -T -- "$s/new" "$d" && rm -rf -- "$s/old"
"""


class DockerVolumeSource(Source):
    kind = "docker_volume"
    config: DockerVolumeConfig

    @property
    def volume(self) -> str:
        return self.config.volume

    # ---- docker on the host -------------------------------------------
    def _docker(self, *args: str, what: str, error: type[Exception] = SourceError) -> str:
        try:
            res = self.runner.run(["docker", *args], user=self.run_as)
        except OSError as exc:  # no docker client at all (local runner)
            raise error(f"{self.label}: {what}: {exc}") from None
        if res.returncode != 0:
            raise error(
                f"{self.label}: {what}: `{shlex.join(['docker', *args])}` "
                f"{exit_text(res.returncode)}{tail_text(res.stderr)}"
            )
        return res.stdout.decode()

    def inspect(self, volume: str) -> dict[str, Any] | None:
        """``docker volume inspect``'s record, or None when the volume does not exist."""
        argv = ["docker", "volume", "inspect", "--format", "{{json .}}", volume]
        try:
            res = self.runner.run(argv, user=self.run_as)
        except OSError as exc:
            raise SourceError(f"{self.label}: inspecting volume {volume}: {exc}") from None
        if res.returncode != 0:
            if "no such volume" in res.stderr.lower():
                return None
            raise SourceError(
                f"{self.label}: inspecting volume {volume}: `{shlex.join(argv)}` "
                f"{exit_text(res.returncode)}{tail_text(res.stderr)}"
            )
        record: dict[str, Any] = json.loads(res.stdout)
        return record

    def mountpoint(self, volume: str, record: dict[str, Any]) -> str:
        mp = str(record.get("Mountpoint") or "")
        if not mp.startswith("/"):
            raise SourceError(
                f"{self.label}: volume {volume} (driver {record.get('Driver')}) has no "
                "mountpoint on the host; only volumes with a host directory can be read"
            )
        return mp

    def running(self, *filters: str) -> dict[str, str]:
        """Running containers matching every ``docker ps --filter``: id -> name."""
        args = ["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]
        for f in filters:
            args += ["--filter", f]
        out = self._docker(*args, what="listing containers")
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    @contextmanager
    def labelled_stopped(self, error: type[Exception] = SourceError) -> Iterator[list[str]]:
        """Stop running containers labelled ``stop_label`` for the block; start them again
        afterwards whatever happened. Yields their names."""
        label = self.config.stop_label
        found = self.running(f"label={label}") if label else {}
        if not found:
            yield []
            return
        names = sorted(found.values())
        state = self.state_file()
        try:
            # Named on the host first: if drkit dies in the block, the next backup starts them.
            self.runner.check(
                ["sh", "-c", RECORD, "sh", state, state_text(found)],
                what=f"{self.label}: recording the containers it stops in {state}",
                user=self.run_as,
            )
            self._docker("stop", *found, what=f"stopping container(s) {', '.join(names)}")
            yield names
        except BaseException as exc:
            self._start_again(found, error, pending=exc, state=state)
            raise
        self._start_again(found, error, state=state)

    def _start_again(
        self,
        found: dict[str, str],
        error: type[Exception],
        pending: BaseException | None = None,
        state: str | None = None,
    ) -> None:
        """``docker start`` (a no-op on a running container: a partial stop is safe too),
        then the state file goes (``state``)."""
        names = ", ".join(sorted(found.values()))
        what = f"{self.label}: starting container(s) {names} again"
        argv = ["docker", "start", *found]
        if state:
            argv = ["sh", "-c", START_AGAIN, "sh", state, *found]
        try:
            try:
                res = self.runner.run(argv, user=self.run_as)
            except OSError as exc:
                raise error(f"{what}: {exc}") from None
            if res.returncode != 0:
                raise error(f"{what}: {exit_text(res.returncode)}{tail_text(res.stderr)}")
        except Exception as exc:
            if pending is None:
                raise
            raise error(f"{exc} (after: {pending})") from pending

    def state_file(self) -> str:
        """Where the host records the containers a backup of this source stopped."""
        return state_path(f"docker_volume/{self.name}/{self.volume}")

    def _left_stopped(self, state: str) -> list[str]:
        """Start the containers an interrupted backup left stopped (its state file names
        them) that are not running; warnings naming them."""
        recorded = read_state(self.runner, state, self.run_as)
        if not recorded:
            return []
        running = self.running()
        left = {cid: name for cid, name in recorded.items() if cid not in running}
        if not left:
            self.runner.run(["rm", "-f", "--", state], user=self.run_as)
            return []
        names = ", ".join(sorted(left.values()))
        self._start_again(left, SourceError, state=state)
        return [
            f"container(s) {names} were still stopped: an earlier backup or restore of volume "
            f"{self.volume} stopped them and was killed before it could start them "
            "again; started now"
        ]

    # ---- backup -------------------------------------------------------
    def artifacts(self) -> Iterator[Artifact]:
        record = self.inspect(self.volume)
        if record is None:
            raise SourceError(f"{self.label}: volume {self.volume} does not exist")
        mp = self.mountpoint(self.volume, record)
        self.facts.update(
            volume=self.volume,
            driver=record.get("Driver"),
            labels=record.get("Labels") or {},
            stop_label=self.config.stop_label,
        )
        excl = [f"--exclude={e}" for e in self.config.exclude]
        argv = ["tar", "-C", mp, "-c", "-f", "-", "--numeric-owner", *excl, "."]
        state = self.state_file()
        warnings = self._left_stopped(state)
        scanner = TarScanner()
        stopped: list[str] = []

        @contextmanager
        def opener() -> Iterator[BinaryIO]:
            label = self.config.stop_label
            found = self.running(f"label={label}") if label else {}
            if not found:
                with self.command_stream(argv) as stream:
                    yield stream
                return
            try:
                with ShownStream(self, stopped_while(state, found, argv), argv) as stream:
                    stopped.extend(sorted(found.values()))
                    yield stream
            except BaseException as exc:
                self._start_again(found, SourceError, pending=exc, state=state)
                raise
            self._start_again(found, SourceError, state=state)

        yield Artifact(ARTIFACT, opener, scanner.feed)
        entries = member_entries(scanner.members)
        files = [e for e in entries if e["type"] == "file"]  # hard links count, as find sees them
        self.facts.update(
            entries=entries,
            files=scanner.total_files if scanner.truncated else len(files),
            bytes=scanner.total_bytes if scanner.truncated else sum(e["size"] for e in files),
            truncated=scanner.truncated,
            # A truncated listing (huge trees) cannot vouch for the whole volume.
            digest=None if scanner.truncated else listing_digest(entries),
            stopped=stopped,
        )
        if warnings:
            self.facts["warnings"] = warnings

    # ---- restore ------------------------------------------------------
    def _target(self, facts: dict[str, Any], opts: RestoreOptions) -> tuple[str, str | None]:
        """(volume name, directory it is written to; None: a volume yet to be created)."""
        volume = self.volume
        if opts.dest:
            return volume, opts.dest.rstrip("/") + "/" + volume
        record = self.inspect(volume)
        return volume, None if record is None else self.mountpoint(volume, record)

    def _has_files(self, directory: str) -> bool:
        script = 'test ! -d "$1" || find "$1" -mindepth 1 -maxdepth 1 -print -quit'
        argv = ["sh", "-c", script, "sh", directory]
        out = self.runner.check(argv, what=f"{self.label}: reading {directory}", user=self.run_as)
        return bool(out.strip())

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        volume, directory = self._target(facts, opts)
        n = facts.get("files", 0)
        where = f"directory {directory}" if opts.dest else f"volume {volume}"
        actions = differs_from_policy(facts, {"volume": volume})
        if directory is None:
            labels = facts.get("labels") or {}
            actions.append(
                f"create volume {volume} with label(s) {', '.join(sorted(labels))}"
                if labels
                else f"create volume {volume}"
            )
            directory_has_files = False
        else:
            directory_has_files = self._has_files(directory)
        if self.config.stop_label and not opts.dest:
            label = self.config.stop_label
            actions.append(f"stop containers labelled {label} meanwhile, start them again after")
        write = f"write {n} file(s) into {where}, modes and owners as backed up"
        if directory_has_files and not opts.force_db:
            return StepPlan(
                [*actions, write],
                f"{where} holds files; use --force-db to replace its contents or --dest to "
                "restore into a directory",
            )
        if directory_has_files:
            actions.append(f"REPLACE the contents of {where} (--force-db)")
        actions.append(write)
        if directory is not None:
            stage, need = self._staging(directory), int(facts.get("bytes") or 0)
            free = self._free(posixpath.dirname(stage))
            actions.append(
                f"stage {human(need)} in {stage} ({human(free)} free there), then rename into place"
            )
            if need > free:
                return StepPlan(
                    actions,
                    f"staging needs {human(need)} free beside {directory}, which has "
                    f"{human(free)}: free space or restore with --dest elsewhere",
                )
        if directory is not None and not opts.dest:
            busy = self._busy(volume)
            if busy:
                return StepPlan(
                    actions,
                    f"running container(s) {', '.join(busy)} use volume {volume}; stop them "
                    "first (or set stop_label on this source)",
                )
        return StepPlan(actions)

    def _busy(self, volume: str) -> list[str]:
        """Running containers using ``volume`` that ``stop_label`` will not stop."""
        users = self.running(f"volume={volume}")
        if self.config.stop_label:
            for cid in self.running(f"label={self.config.stop_label}"):
                users.pop(cid, None)
        return sorted(users.values())

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        blocked = self.describe(facts, opts).blocked
        if blocked:
            raise RestoreError(f"{self.label}: {blocked}")
        volume, directory = self._target(facts, opts)
        report = RestoreReport()
        if not opts.dest:
            report.actions.extend(self._left_stopped(self.state_file()))
        stop = self.labelled_stopped(RestoreError) if not opts.dest else _nothing()
        with stop as stopped:
            if stopped:
                report.actions.append(f"stopped container(s) {', '.join(stopped)}")
            if directory is None:
                labels = facts.get("labels") or {}
                args = [a for k, v in sorted(labels.items()) for a in ("--label", f"{k}={v}")]
                what = f"creating volume {volume}"
                self._docker("volume", "create", *args, volume, what=what, error=RestoreError)
                report.actions.append(f"created volume {volume}")
                record = self.inspect(volume) or {}
                directory = self.mountpoint(volume, record)
            where = f"{self.label}: restore into {directory}"
            replaced = self._has_files(directory)  # allowed by describe: --force-db
            stage = self._staging(directory)
            self._sh(_RECOVER, [stage, directory], where)  # what a killed run left
            self._sh(_PREPARE, [stage], where)
            new = stage + "/new"
            tar = ["tar", "-C", new, "-x", "-p", "--same-owner", "--numeric-owner", "-f", "-"]
            rules = self._rules(directory)

            def consume(stream: BinaryIO) -> None:
                checked = TarFilter(stream, rules, self.label)
                pipe_into(self.runner, tar, checked, what=where, user=self.run_as)  # type: ignore[arg-type]

            try:
                feed(ARTIFACT, consume)  # raises on a bad digest: nothing swapped yet
                self._sh(_SWAP, [stage, directory], where)
            finally:
                self._sh(_RECOVER, [stage, directory], where)
            if replaced:
                report.actions.append(f"replaced the contents of {directory} (--force-db)")
            report.actions.append(
                f"extracted {facts.get('files', '?')} file(s) into {directory} (staged, renamed "
                "into place)"
            )
        if stopped:
            report.actions.append(f"started container(s) {', '.join(stopped)} again")
        return report

    def _staging(self, directory: str) -> str:
        ident = hashlib.sha256(f"docker_volume/{self.name}".encode()).hexdigest()[:12]
        parent = posixpath.dirname(directory.rstrip("/")) or "/"
        return posixpath.join(parent, f"{STAGING_PREFIX}{ident}")

    def _free(self, directory: str) -> int:
        """Bytes free on the filesystem of ``directory`` (or its deepest existing parent)."""
        script = 'q=$1; while [ ! -e "$q" ]; do q=$(dirname -- "$q"); done; df -Pk -- "$q"'
        out = self.runner.check(
            ["sh", "-c", script, "sh", directory], what=f"{self.label}: df", user=self.run_as
        )
        lines = out.decode("utf-8", "replace").splitlines()
        return int(lines[-1].split()[3]) * 1024 if len(lines) > 1 else 0

    def _sh(self, script: str, args: list[str], what: str) -> None:
        self.runner.check(["sh", "-c", script, "sh", *args], what=what, user=self.run_as)

    def _rules(self, directory: str) -> MemberRules:
        """Members anywhere in the volume, none through a symlink leading out of it."""
        conf = confine(self.runner, directory, ["/"], label=self.label, user=self.run_as)
        return MemberRules(
            ("/",), self.config.allow_setid, conf.escapes, tuple(self.config.symlinks_to)
        )

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """The restored tree's listing digest (or, for a truncated listing, its file count
        and bytes) equals the backup's; names up to five differing paths."""
        volume, directory = self._target(facts, opts)
        if directory is None:
            return [Check(self.name, "volume restored", "fail", f"volume {volume} is missing")]
        out = self.runner.check(
            ["sh", "-c", LIST_SCRIPT, "sh", directory],
            what=f"{self.label}: listing {directory}",
            user=self.run_as,
        )
        got = parse_listing(out)
        files = [e for e in got if e["type"] == "file"]
        totals = f"{len(files)} file(s), {sum(e['size'] for e in files)} bytes"
        if facts.get("digest") is None:
            size = sum(e["size"] for e in files)
            ok = len(files) == facts.get("files") and size == facts.get("bytes")
            detail = f"{totals}; backup: {facts.get('files')} file(s), {facts.get('bytes')} bytes"
            return [Check(self.name, f"{volume} restored", "pass" if ok else "fail", detail)]
        if listing_digest(got) == facts["digest"]:
            detail = f"{totals} identical to the backup (content, modes, owners, links)"
            return [Check(self.name, f"{volume} restored", "pass", detail)]
        want = {entry_line(e): e["path"] for e in facts.get("entries", [])}
        have = {entry_line(e): e["path"] for e in got}
        missing = {want[k] for k in want.keys() - have.keys()}
        differ = sorted(missing | {have[k] for k in have.keys() - want.keys()})
        shown = ", ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
        return [Check(self.name, f"{volume} restored", "fail", f"{totals}; differ: {shown}")]


@contextmanager
def _nothing() -> Iterator[list[str]]:
    yield []
