"""Where a restore step may write on the target: no symlink may lead it elsewhere.

``tar -x`` follows a symlink that is already on the target when it is a
directory component of a member's path. Before a step writes (and at plan
time), the symlinks on the way to and under each of the source's policy
paths are resolved *on the target* (``realpath``): under ``--dest`` one that
leads outside the destination is refused; restoring to ``/`` one under a
policy path that leads outside the source's policy paths is. A policy path
whose own way down passes such a symlink blocks the whole step, naming it;
symlinks below the paths go to the archive filter as ``escapes`` (a member
written through one is refused). This also catches a symlink that an earlier
step of the same restore planted: the check runs again right before each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from drkit.remote.base import Runner
from drkit.sources.tarfilter import ancestors, resolve_link, within

# Arguments after the base: "A<path>" a path that may be a symlink, "R<path>" a
# path to resolve, "F<depth>:<path>" symlinks under path (depth "" = any).
# Prints NUL-separated records: B base-real, R real, L path real.
_SCRIPT = r"""b=$1; shift
printf 'B\000%s\000' "$(realpath -m -- "${b:-/}")"
for a; do
  case $a in
  A*) p="$b${a#A}"
      if [ -L "$p" ]; then printf 'L\000%s\000%s\000' "$p" "$(realpath -m -- "$p")"; fi ;;
  R*) printf 'R\000%s\000' "$(realpath -m -- "$b${a#R}")" ;;
  F*) d=${a#F}; n=${d%%:*}; r="$b${d#*:}"
      if [ -d "$r" ] && [ ! -L "$r" ]; then
        find "$r" -mindepth 1 ${n:+-maxdepth "$n"} -type l -exec sh -c \
          'for l; do printf "L\000%s\000%s\000" "$l" "$(realpath -m -- "$l")"; done' sh {} +
      fi ;;
  esac
done
true
"""
_GLOB = set("*?[")


@dataclass
class Confinement:
    """``escapes``: member path of a symlink on the target -> where it leads, for the
    archive filter. ``blocked``: why the step cannot run at all, or None."""

    escapes: dict[str, str] = field(default_factory=dict)
    blocked: str | None = None


def scan_root(root: str) -> tuple[str, int | None]:
    """A policy path as (fixed prefix, how many components a glob adds; None: any)."""
    parts = PurePosixPath(root).parts[1:]
    for i, part in enumerate(parts):
        if _GLOB & set(part):
            return "/" + "/".join(parts[:i]), len(parts) - i
    return "/" + "/".join(parts), None


def confine(
    runner: Runner, dest: str, roots: list[str], *, label: str, user: str | None = None
) -> Confinement:
    """Resolve the symlinks on the way to and under ``roots`` (member paths) beneath
    ``dest`` on the target. Raises SourceError naming ``label`` if it cannot."""
    base = "" if (dest or "/") == "/" else dest.rstrip("/")
    scans = [scan_root(r) for r in roots]
    args: list[str] = []
    for prefix, depth in scans:
        if base:  # the way down from --dest; restoring to / the live layout decides
            args += ["A" + p for p in [*ancestors(prefix), prefix] if p != "/"]
        args += ["R" + prefix, f"F{'' if depth is None else depth}:{prefix}"]
    out = runner.check(
        ["sh", "-c", _SCRIPT, "sh", base, *args],
        what=f"{label}: resolving symlinks under {dest or '/'}",
        user=user,
    )
    fields = out.decode("utf-8", "surrogateescape").split("\0")
    real_base, reals, links = "/", [], {}
    i = 0
    while i < len(fields) - 1:
        tag = fields[i]
        if tag == "B":
            real_base, i = fields[i + 1], i + 2
        elif tag == "R":
            reals.append(fields[i + 1])
            i += 2
        elif tag == "L":
            links[fields[i + 1][len(base) :] or "/"] = fields[i + 2]
            i += 3
        else:
            break
    allowed = (real_base,) if base else tuple(reals)
    where = f"--dest {dest}" if base else "the source's policy paths"
    result = Confinement()
    for path, real in sorted(links.items()):
        if within(real, allowed):
            continue
        result.escapes[path] = real
        on_the_way = any(path == p or path in ancestors(p) for p, _d in scans)
        if on_the_way and result.blocked is None:
            result.blocked = (
                f"{base}{path} on the target is a symlink to {real}, outside {where}: "
                "a restore never writes through it (remove it or restore elsewhere)"
            )
    return result


def escaping_links(entries: list[dict[str, Any]], dest: str) -> dict[str, str]:
    """Symlinks among backed-up ``entries`` that, written under ``dest`` (not /), lead
    outside it: an absolute target names the live system. Member path -> target."""
    out = {}
    for e in entries:
        if e.get("type") != "symlink" or not e.get("path"):
            continue
        link = str(e.get("link", ""))
        resolved = resolve_link(str(e["path"]), link)
        if resolved is None or (link.startswith("/") and not within(link, (dest,))):
            out[str(e["path"])] = link
    return out


def written_through(entries: list[dict[str, Any]], links: dict[str, str]) -> tuple[str, str]:
    """The first backed-up path among ``entries`` with one of ``links`` as an ancestor,
    and that ancestor; ("", "") when there is none."""
    for e in entries:
        path = str(e.get("path", ""))
        up = next((a for a in ancestors(path) if a in links), None)
        if up is not None:
            return path, up
    return "", ""
