"""Which target files are package defaults nobody changed.

A fresh machine that got ``apt install caddy`` holds Debian's
``/etc/caddy/Caddyfile``: it differs from the backup, but it is not user data.
dpkg records the md5 of every conffile as shipped (``dpkg-query -W -f
'${Conffiles}'``); a file whose current md5 equals that record was never
edited, and a restore may replace it without ``--force-files``. A conffile that
was edited, or one dpkg does not know, still counts as user data. Machines
without dpkg (rpm-based) get no exemption: their differing files need the flag.
"""

from __future__ import annotations

from collections.abc import Iterable

from drkit.remote.base import Runner

# Prints "<md5> <path>" per conffile dpkg knows, then "--", then md5sum of each
# existing argument. No dpkg: prints nothing.
_SCRIPT = r"""
command -v dpkg-query >/dev/null 2>&1 || exit 0
dpkg-query -W -f='${Conffiles}\n' 2>/dev/null | awk 'NF >= 2 { print $2, $1 }'
echo --
for f; do [ -f "$f" ] && [ ! -L "$f" ] && md5sum -- "$f" 2>/dev/null; done
true
"""


def unmodified_package_defaults(
    runner: Runner, paths: Iterable[str], *, user: str | None = None
) -> set[str]:
    """The subset of ``paths`` (absolute, on the target) that are dpkg conffiles whose
    content is still exactly what their package shipped."""
    wanted = sorted(set(paths))
    if not wanted:
        return set()
    res = runner.run(["sh", "-c", _SCRIPT, "sh", *wanted], user=user)
    if res.returncode != 0:
        return set()
    text = res.stdout.decode("utf-8", "surrogateescape")
    shipped_part, _, current_part = text.partition("\n--\n")
    if text.startswith("--\n"):
        shipped_part, current_part = "", text[3:]
    shipped: dict[str, str] = {}
    for line in shipped_part.splitlines():
        md5, _, path = line.partition(" ")
        # Only real digests: dpkg writes "newconffile" for one not yet configured.
        if len(md5) == 32 and path in wanted:
            shipped[path] = md5
    defaults = set()
    for line in current_part.splitlines():
        md5, _, path = line.partition("  ")
        if path in shipped and shipped[path] == md5:
            defaults.add(path)
    return defaults
