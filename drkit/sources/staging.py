"""Staged restores of tar artifacts: an interrupted restore leaves the old tree or the new one.

``tar -x`` straight onto the live paths leaves a fragment when it is killed (a
400 MB file cut at 40 MB). Instead each policy path's new tree is built in a
staging directory ``.drkit-staging-<id>-<depth>`` (mode 0700, next to the path,
so on the same filesystem) and renamed into place per *top-level path* (a
unit: a policy path; a glob's match; for ``/`` or a mount point, each entry
under it) only after the archive was read to its end and its digest checked.

Staging merges rather than wipes: live directories of the units are first
copied into the staging tree as hard links (``cp -al``: no data copied), and
``tar`` replaces a file by unlinking its name first, so the live inode is never
written and files the backup does not hold survive, as with a plain ``tar -x``.

A file unit replaces the old one with one rename(2). A directory cannot be
renamed over a non-empty one: the old is renamed into ``<staging>/old/`` (its
path written next to it first), the new renamed into place, then the old
removed. A kill between those two renames leaves the path missing with both
trees in the staging directory, nothing lost; the next restore of the source
(``--resume`` or not) first renames every old tree whose path is missing back
into place, then removes the staging directory: a leftover is never read as
data (backups exclude ``.drkit-staging-*``; archive members with that name are
refused).
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drkit.errors import RestoreError, SourceError
from drkit.remote.base import Process, Runner, exit_text, tail_text
from drkit.sources.confine import scan_root
from drkit.sources.tarfilter import TarFilter, within

PREFIX = ".drkit-staging-"

# Per path: "<exists 1|0> <device> <KiB free>" of the path or its deepest existing ancestor.
_SURVEY = r"""for p; do q=$p; while [ ! -e "$q" ]; do q=$(dirname -- "$q"); done
printf '%s %s %s\000' "$([ "$q" = "$p" ] && echo 1 || echo 0)" "$(stat -c %d -- "$q")" \
  "$(df -Pk -- "$q" | awk 'NR==2 {print $4}')"; done"""

# Every old tree whose path is missing goes back, then the staging dirs are removed.
_RECOVER = r"""for s; do [ -d "$s" ] || continue
  for j in "$s"/old/*/; do [ -f "$j/path" ] || continue
    t=$(cat -- "$j/path")
    if { [ -e "$j/x" ] || [ -L "$j/x" ]; } && [ ! -e "$t" ] && [ ! -L "$t" ]; then
      mv -T -- "$j/x" "$t" || exit 1
    fi
  done
  rm -rf -- "$s" || exit 1
done"""

# $1 staging dir; then "<dest dir>" "<tree dir>" and glob patterns (under dest) of live
# entries whose directories are copied into the tree as hard links.
_PREPARE = r"""s=$1 d=$2 t=$3; shift 3
mkdir -p -- "$(dirname -- "$s")" && mkdir -m 700 -- "$s" "$s/old" "$s/tree" || exit 1
IFS=""; for pat; do for m in $d$pat; do
  case ${m##*/} in .drkit-staging-*) continue ;; esac
  if [ -d "$m" ] && [ ! -L "$m" ]; then r=${m#"$d"}
    mkdir -p -- "$t$(dirname -- "$r")" && cp -al -- "$m" "$t$r" || exit 1
  fi
done; done"""

# $1 staging dir, $2 dest prefix ("" for /), then the new units (paths in the tree).
_SWAP = r"""s=$1 d=$2; shift 2; dev=$(stat -c %d -- "$s")
for n; do up=$(dirname -- "$d${n#"$s/tree"}")
  mkdir -p -- "$up" || exit 1
  # mv falls back to copying across filesystems: that would be the fragment again.
  [ "$(stat -c %d -- "$up")" = "$dev" ] || {
    echo "$up is not on the filesystem of $s: nothing renamed" >&2; exit 3; }
done
for n; do t=$d${n#"$s/tree"}
  if { [ -d "$t" ] && [ ! -L "$t" ]; } || { [ -d "$n" ] && [ ! -L "$n" ]; }; then
    if [ -e "$t" ] || [ -L "$t" ]; then
      j=$(mktemp -d "$s/old/XXXXXX") && printf '%s' "$t" > "$j/path" || exit 1
      mv -T -- "$t" "$j/x" || exit 1
      mv -T -- "$n" "$t" || exit 1
      rm -rf -- "$j" || exit 1
    else mv -T -- "$n" "$t" || exit 1; fi
  else mv -f -T -- "$n" "$t" || exit 1; fi
done"""


@dataclass(frozen=True)
class Group:
    """Policy paths staged in one directory, ``<base>/.drkit-staging-<id>-<depth>``:
    their units are the paths ``depth`` components below ``base`` (member paths);
    ``merge`` are glob patterns of the live entries copied (as hard links) first."""

    base: str
    depth: int
    roots: tuple[str, ...]
    merge: tuple[str, ...]


def plan_groups(roots: list[str], mounts: set[str]) -> list[Group]:
    """Group policy paths by where they are staged; ``mounts``: those that are mount points
    on the target (a mount point cannot be renamed: its entries are the units)."""
    found: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
    for root in roots:
        prefix, depth = scan_root(root)
        if depth is not None:
            key, merge = (prefix, depth), [root]
        elif prefix == "/" or prefix in mounts:
            inner = prefix.rstrip("/")
            key, merge = (prefix, 1), [f"{inner}/*", f"{inner}/.[!.]*", f"{inner}/..?*"]
        else:
            key, merge = (posixpath.dirname(prefix), 1), [prefix]
        group = found.setdefault(key, ([], []))
        group[0].append(root)
        group[1].extend(merge)
    return [Group(b, d, tuple(r), tuple(m)) for (b, d), (r, m) in found.items()]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Staging:
    """Staged extraction of one source's archive under ``dest`` on ``runner``.

    ``ident`` names the source (the same on every run, so a leftover is found);
    ``label`` names host and source in errors. Methods raise SourceError (a target
    command failed) or RestoreError.
    """

    def __init__(
        self,
        runner: Runner,
        dest: str,
        roots: list[str],
        *,
        ident: str,
        label: str,
        user: str | None,
    ) -> None:
        self.runner, self.roots, self.label, self.user = runner, roots, label, user
        self.prefix = "" if dest == "/" else dest.rstrip("/")
        self.ident = hashlib.sha256(ident.encode()).hexdigest()[:12]
        self.groups: list[Group] = []
        self.free: dict[str, int] = {}  # group base -> bytes free on its filesystem

    def target(self, path: str) -> str:
        return self.prefix + path if path != "/" or not self.prefix else self.prefix

    def dir(self, group: Group) -> str:
        return posixpath.join(self.target(group.base), f"{PREFIX}{self.ident}-{group.depth}")

    def survey(self) -> list[Group]:
        """Read the target: which policy paths are mount points, free space per group."""
        paths: list[str] = []
        fixed: list[str] = []  # plain policy paths: a mount point among them is staged inside
        for root in self.roots:
            prefix, depth = scan_root(root)
            paths.append(prefix)
            if depth is None and prefix != "/":
                fixed.append(prefix)
                paths.append(posixpath.dirname(prefix))
        out = self._sh(_SURVEY, [self.target(p) for p in paths], "reading free space")
        stats: dict[str, tuple[bool, str, int]] = {}
        for path, record in zip(paths, out.split(b"\0"), strict=False):
            exists, dev, kib = record.decode().split(" ")
            stats[path] = (exists == "1", dev, int(kib or 0) * 1024)
        mounts = {p for p in fixed if stats[p][0] and stats[p][1] != stats[posixpath.dirname(p)][1]}
        self.groups = plan_groups(self.roots, mounts)
        self.free = {g.base: stats[g.base][2] for g in self.groups}
        return self.groups

    def space(self, facts: dict[str, Any]) -> tuple[list[str], str | None]:
        """Plan lines for the staging, and why it cannot run (not enough space) or None."""
        if self.prefix == "" and any(scan_root(r) == ("/", None) for r in self.roots):
            return [], "a policy path of / cannot be replaced in place; restore with --dest"
        lines, blocked = [], None
        for g in self.survey():
            need = _bytes(facts, g.roots, len(self.groups) == 1)
            free = self.free[g.base]
            lines.append(
                f"stage {human(need)} in {self.dir(g)} ({human(free)} free there), then "
                "rename into place per top-level path"
            )
            if need > free and blocked is None:
                blocked = (
                    f"staging needs {human(need)} free on the filesystem of "
                    f"{self.target(g.base)}, which has {human(free)}: free space or restore "
                    "with --dest elsewhere"
                )
        return lines, blocked

    def recover(self) -> None:
        """Put back old trees a killed run left aside, remove this source's staging dirs."""
        dirs = [self.dir(g) for g in self.groups]
        self._sh(_RECOVER, dirs, "recovering an interrupted restore")

    def prepare(self) -> None:
        self.recover()
        for g in self.groups:
            s = self.dir(g)
            self._sh(_PREPARE, [s, self.prefix, s + "/tree", *g.merge], f"staging in {s}")

    def extract(self, checked: TarFilter) -> None:
        """Write ``checked``'s members into each group's staging tree (one tar per group)."""
        what = f"{self.label}: restore into {', '.join(self.dir(g) for g in self.groups)}"
        procs = [
            self.runner.start(
                ["tar", "-C", self.dir(g) + "/tree", "-x", "-p", "--same-owner", "-f", "-"],
                stdin=True,
                user=self.user,
            )
            for g in self.groups
        ]
        drains = [threading.Thread(target=p.stdout.read, daemon=True) for p in procs]
        for t in drains:
            t.start()
        try:
            _route(checked, procs, self._group_of)
        except BaseException:
            for p in procs:
                p.kill()
                p.wait()
            raise
        for p, t in zip(procs, drains, strict=True):
            rc = p.wait()
            t.join()
            if rc != 0:
                raise SourceError(
                    f"{what}: command `{shlex.join(p.argv)}` {exit_text(rc)}"
                    f"{tail_text(p.stderr_tail())}"
                )

    def swap(self) -> None:
        """Rename each unit's new tree into place, then remove the staging dirs."""
        for g in self.groups:
            s = self.dir(g)
            tree = s + "/tree" + (g.base if g.base != "/" else "")
            script = (
                f'[ -d "$1" ] || exit 0; find "$1" -mindepth {g.depth} -maxdepth {g.depth} '
                '-exec sh -c "$2" sh "$3" "$4" {} +'
            )
            self._sh(script, [tree, _SWAP, s, self.prefix], f"renaming into place from {s}")
        self.recover()

    def _group_of(self, path: str) -> int:
        if any(part.startswith(PREFIX) for part in path.split("/")):
            raise RestoreError(
                f"{self.label}: archive member {path!r} refused: {PREFIX}* names are drkit's "
                "staging directories; nothing of it was written"
            )
        return next((i for i, g in enumerate(self.groups) if within(path, g.roots)), 0)

    def _sh(self, script: str, args: list[str], doing: str) -> bytes:
        return self.runner.check(
            ["sh", "-c", script, "sh", *args], what=f"{self.label}: {doing}", user=self.user
        )


def _route(checked: TarFilter, procs: list[Process], group_of: Callable[[str], int]) -> None:
    """Send each member's bytes to its group's tar; the end-of-archive blocks to all."""
    dead: set[int] = set()  # a tar that exited early: its status says why
    for path, chunk in checked.chunks():
        targets = range(len(procs)) if path is None else [group_of(path)]
        for i in targets:
            stdin = procs[i].stdin
            if i in dead or stdin is None:
                continue
            try:
                stdin.write(chunk)
            except BrokenPipeError:
                dead.add(i)
    for p in procs:
        try:
            if p.stdin is not None:
                p.stdin.close()
        except BrokenPipeError:
            pass


def _bytes(facts: dict[str, Any], roots: tuple[str, ...], only: bool) -> int:
    """Bytes the archive's files under ``roots`` need (all of them for the only group,
    or when the listing was cut)."""
    if only or facts.get("truncated"):
        return int(facts.get("bytes") or 0)
    return sum(
        int(e.get("size") or 0)
        for e in facts.get("entries", [])
        if e.get("type") == "file" and within("/" + str(e.get("path", "")).lstrip("/"), roots)
    )
