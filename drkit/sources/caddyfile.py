"""The site addresses of a Caddyfile, to know which names a restored Caddy must serve.

Only what a probe needs: the host names of the top-level site blocks. A
Caddyfile is a list of blocks; at the top level a block is the global options
block (``{`` alone, first), a snippet (``(name) {``), or a site block whose
keys are addresses (``example.com, www.example.com:443 {`` or a single address
line without braces). Addresses may carry a scheme and a port; ``:80``,
``localhost``, IPs, placeholders and ``http://`` sites serve no public
certificate and are left out. Wildcards are kept as written (``*.example.com``).
"""

from __future__ import annotations

import ipaddress
import re

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`|[^\s]+')


def _tokens(line: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(line):
        if tok.startswith("#"):
            break  # a comment runs to the end of the line
        out.append(tok)
    return out


def site_addresses(text: str) -> list[str]:
    """Addresses of the top-level site blocks, in order, as written (commas removed)."""
    addresses: list[str] = []
    depth = 0
    first = True
    for raw in text.splitlines():
        tokens = _tokens(raw)
        if not tokens:
            continue
        if depth == 0:
            keys = tokens[: tokens.index("{")] if "{" in tokens else tokens
            is_global = first and not keys
            is_snippet = bool(keys) and keys[0].startswith("(") and keys[0].endswith(")")
            is_import = bool(keys) and keys[0] == "import"
            if keys and not is_global and not is_snippet and not is_import:
                addresses += [k for t in keys for k in t.split(",") if k]
                if "{" not in tokens:
                    break  # one site without braces: the lines after it are its directives
            first = False
        depth = max(depth + tokens.count("{") - tokens.count("}"), 0)
    return addresses


def https_port(text: str) -> int:
    """The global ``https_port`` option (first block of the file), else 443."""
    depth, first = 0, True
    for raw in text.splitlines():
        tokens = _tokens(raw)
        if not tokens:
            continue
        if depth == 0 and not (first and tokens[0] == "{"):
            return 443  # the global options block, if any, comes first
        first = False
        if depth == 1 and len(tokens) == 2 and tokens[0] == "https_port" and tokens[1].isdigit():
            return int(tokens[1])
        depth = max(depth + tokens.count("{") - tokens.count("}"), 0)
    return 443


def tls_sites(text: str) -> list[tuple[str, int]]:
    """(host name, port) of each site a Caddyfile serves over HTTPS, each name once."""
    default = https_port(text)
    sites: list[tuple[str, int]] = []
    for address in site_addresses(text):
        site = _site(address, default)
        if site and site[0] not in [n for n, _p in sites]:
            sites.append(site)
    return sites


def _site(address: str, default_port: int) -> tuple[str, int] | None:
    if address.startswith("http://") or "{" in address:
        return None
    rest = address.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):  # [::1]:443
        return None
    host, _, port = rest.partition(":")
    if not host or port == "80" or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    return host.lower(), int(port) if port.isdigit() else default_port
