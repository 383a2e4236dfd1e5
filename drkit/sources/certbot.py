"""``certbot``: ``/etc/letsencrypt`` with its symlinks intact.

Certbot keeps each certificate lineage as ``archive/<name>/<kind>N.pem``
files, ``live/<name>/<kind>.pem`` symlinks to the newest of them, and
``renewal/<name>.conf`` naming those links by absolute path. A copy that
dereferences the links (``cp -L``, ``rsync -L``, object sync) still serves
TLS but breaks renewal ("renewal configuration file ... is broken"): the tar
keeps the links as links, and the facts check every lineage the way certbot
does (``storage.RenewableCert._consistent``), offline, from the tar stream:
each live link resolves into ``archive/<name>/`` with the ``<kind>N.pem``
pattern, to a file that is in the backup; the renewal file's paths point at
those links. A renewal file naming an ACME account that is not under
``accounts/`` is a warning. Facts also hold each lineage's names, notAfter
and SHA-256 fingerprint.

Restore: to the same absolute paths (the renewal files require it), then
the live links on the target are read back and compared with the backup.
When the target has nginx, its configuration is tested (``nginx -t``) and it
is reloaded (or started) so it serves the restored certificates; then every
TLS server block of the restored configuration (``nginx -T``) whose
``ssl_certificate`` is one of these lineages is probed by name on the target:
it must serve that lineage's certificate (``services``).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any

from drkit.policy.models import CertbotConfig
from drkit.sources.base import Artifact, Check, Feed, RestoreOptions, RestoreReport, StepPlan
from drkit.sources.certs import certificate_fact
from drkit.sources.nginxconf import tls_servers
from drkit.sources.services import Outcome, attempt, has_systemd_unit, installed, probe_certificate
from drkit.sources.tarball import TarSource
from drkit.sources.tarscan import Member

KINDS = ("cert", "privkey", "chain", "fullchain")
_CONF_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
# Prints "path<TAB>link target" for each argument, NUL-terminated ("-" when not a link).
_READLINKS = 'for f; do printf "%s\\t%s\\0" "$f" "$(readlink -- "$f" || echo -)"; done'


class CertbotSource(TarSource):
    kind = "certbot"
    config: CertbotConfig
    ARTIFACT = "letsencrypt.tar"
    keep_content = True

    @property
    def root(self) -> str:
        return posixpath.normpath(self.config.dir)

    def policy_paths(self) -> list[str]:
        return [self.root]

    def artifacts(self) -> Iterator[Artifact]:
        yield from self.tar_artifacts([self.root], [])
        facts = self.listing_facts()
        members = self._scanner.members
        try:
            lineages = lineage_facts(members, self.root)
        finally:
            for member in members:
                member.content = None  # private keys must not outlive the scan
        facts.update(
            dir=self.root,
            lineages=lineages,
            consistent=all(lin["consistent"] for lin in lineages),
        )
        self.facts.update(facts)

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        base = super().describe(facts, opts)
        actions = list(base.actions)
        links = self._links(facts)
        actions.append(f"{len(links)} live/ symlink(s) restored as symlinks into archive/")
        note = self._dest_note(facts, opts)
        if note:
            actions.append(note)
        actions += [lineage_line(lin) for lin in facts.get("lineages", [])]
        actions.append(self._service_plan(opts))
        return StepPlan(actions, base.blocked)

    def _service_plan(self, opts: RestoreOptions) -> str:
        if (opts.dest or "/") != "/":
            return "restored under --dest: nginx is not reloaded, sites are not probed"
        if not installed(self.runner, "nginx", user=self.run_as):
            return "no nginx on the target: no web server is reloaded for these certificates"
        if not opts.reload:
            return "nginx is not reloaded (--no-reload): sites are not probed"
        how = (
            "systemctl reload-or-restart nginx.service"
            if has_systemd_unit(self.runner, "nginx.service")
            else "nginx -s reload (start it if not running)"
        )
        return (
            f"reload nginx: nginx -t, then {how}; then probe each TLS server of its "
            "configuration that uses these certificates"
        )

    def reload(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        if (opts.dest or "/") != "/" or not installed(self.runner, "nginx", user=self.run_as):
            return []
        if not opts.reload:
            detail = "not reloaded (--no-reload): its TLS sites were not probed"
            return [Check(self.name, "nginx reloaded", "warn", detail)]
        outcome = self._reload_nginx()
        if outcome.ok:
            return [Check(self.name, "nginx reloaded", "pass", outcome.detail)]
        detail = f"{outcome.detail}: the restored certificates are not served"
        return [Check(self.name, "nginx reloaded", "fail", detail)]

    def _reload_nginx(self) -> Outcome:
        runner, user = self.runner, self.run_as
        tested = attempt(runner, ["nginx", "-t", "-q"], user=user)
        if not tested.ok:
            return tested  # a broken configuration is never loaded
        if has_systemd_unit(runner, "nginx.service"):
            return attempt(runner, ["systemctl", "reload-or-restart", "nginx.service"], user=user)
        tried = attempt(runner, ["nginx", "-s", "reload"], user=user)
        if tried.ok:
            return tried
        started = attempt(runner, ["nginx"], user=user)  # daemonizes; not running before
        if started.ok:
            return Outcome(True, f"nginx was not running: started ({started.detail})")
        return Outcome(False, f"{tried.detail}; then {started.detail}")

    def _probes(self, facts: dict[str, Any]) -> list[Check]:
        """Each name of each restored TLS server block that uses one of these lineages
        must be served that lineage's certificate."""
        dumped = self.runner.run(["nginx", "-T", "-q"], user=self.run_as)
        if dumped.returncode != 0:
            return []  # the reload check already failed on `nginx -t`
        live = self.root.rstrip("/") + "/live/"
        by_name = {lin["name"]: lin for lin in facts.get("lineages", []) if lin.get("sha256")}
        checks = []
        for server in tls_servers(dumped.stdout.decode("utf-8", "replace")):
            if not server.certificate.startswith(live):
                continue
            lineage = by_name.get(server.certificate[len(live) :].split("/", 1)[0])
            if lineage is None:
                continue
            for name in server.names:
                status, detail = probe_certificate(
                    self.runner, name, lineage["sha256"], port=server.port
                )
                checks.append(Check(self.name, f"https {name}", status, detail))
        return checks

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        report = super().restore(feed, facts, opts)
        note = self._dest_note(facts, opts)
        if note:
            report.actions.append(note)
        report.actions += [lineage_line(lin) for lin in facts.get("lineages", [])]
        return report

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Files as backed up; every live/ link a symlink with its backed-up target;
        lineages that were already inconsistent at backup time are warnings."""
        checks = super().check(facts, opts)
        links = self._links(facts)
        if links:
            dest = opts.dest or "/"
            targets = {_join(dest, p): link for p, link in links.items()}
            got = self._read_links(list(targets))
            bad = sorted(p for p, link in targets.items() if got.get(p) != link)
            detail = (
                f"not symlinks to their backed-up targets: {', '.join(bad[:5])}"
                if bad
                else f"{len(targets)} live/ symlink(s) point where they did"
            )
            checks.append(Check(self.name, "live symlinks", "fail" if bad else "pass", detail))
        for lin in facts.get("lineages", []):
            if not lin.get("consistent"):
                detail = "inconsistent at backup time: " + "; ".join(lin.get("problems", []))
                checks.append(Check(self.name, f"lineage {lin.get('name')}", "warn", detail))
            for warning in lin.get("warnings", []):
                checks.append(Check(self.name, f"lineage {lin.get('name')}", "warn", warning))
        if (
            (opts.dest or "/") == "/"
            and opts.reload
            and installed(self.runner, "nginx", user=self.run_as)
        ):
            checks += self._probes(facts)
        return checks

    def _links(self, facts: dict[str, Any]) -> dict[str, str]:
        live = self.root.rstrip("/") + "/live/"
        return {
            e["path"]: e["link"]
            for e in facts.get("entries", [])
            if e.get("type") == "symlink" and e["path"].startswith(live)
        }

    def _dest_note(self, facts: dict[str, Any], opts: RestoreOptions) -> str | None:
        if (opts.dest or "/") == "/":
            return None
        root = self.root
        return (
            f"renewal files name absolute paths under {root}: certbot renews these "
            f"certificates only once the tree is back at {root}"
        )

    def _read_links(self, paths: list[str]) -> dict[str, str]:
        """Each path's symlink target on the target host ("-" when it is not a link)."""
        out = self.runner.check(
            ["sh", "-c", _READLINKS, "sh", *paths],
            what=f"{self.label}: reading live links",
            user=self.run_as,
        )
        found = {}
        for record in out.split(b"\0"):
            path, _, link = record.decode("utf-8", "surrogateescape").partition("\t")
            if path:
                found[path] = link
        return found


def lineage_facts(members: list[Member], root: str) -> list[dict[str, Any]]:
    """One fact per lineage (a ``live/<name>/`` dir or a ``renewal/<name>.conf``)."""
    root = root.rstrip("/") or "/"
    by_path = {m.path: m for m in members}
    names: set[str] = set()
    for m in members:
        rel = _rel(m.path, root)
        if rel is None:
            continue
        parts = rel.split("/")
        if len(parts) == 2 and parts[0] == "live" and m.type == "dir":
            names.add(parts[1])
        elif len(parts) == 2 and parts[0] == "renewal" and parts[1].endswith(".conf"):
            names.add(parts[1][: -len(".conf")])
    account_dirs = {
        posixpath.basename(m.path)
        for m in members
        if m.type == "dir" and (_rel(m.path, root) or "").startswith("accounts/")
    }
    return [_lineage(name, root, by_path, account_dirs) for name in sorted(names)]


def _lineage(
    name: str, root: str, by_path: dict[str, Member], account_dirs: set[str]
) -> dict[str, Any]:
    problems: list[str] = []
    archive = f"{root}/archive/{name}"
    live = f"{root}/live/{name}"
    versions: dict[str, int] = {}
    cert_member: Member | None = None
    for kind in KINDS:
        path = f"{live}/{kind}.pem"
        rel = f"live/{name}/{kind}.pem"
        m = by_path.get(path)
        if m is None:
            problems.append(f"{rel} is missing")
            continue
        if m.type != "symlink":
            problems.append(
                f"{rel} is a {m.type}, not a symlink into archive/ "
                "(copied with links dereferenced?)"
            )
            if kind == "cert" and m.type == "file":
                cert_member = m
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(path), m.link))
        found = re.fullmatch(rf"{kind}(\d+)\.pem", posixpath.basename(target))
        tm = by_path.get(target)
        if posixpath.dirname(target) != archive:
            problems.append(f"{rel} -> {m.link} points outside archive/{name}/")
        elif not found:
            problems.append(f"{rel} -> {m.link} does not match {kind}N.pem")
        elif tm is None or tm.type != "file":
            problems.append(f"{rel} -> {m.link}: the target is not in the backup")
        else:
            versions[kind] = int(found.group(1))
            if kind == "cert":
                cert_member = tm
    conf_problems, conf = _renewal_conf(name, root, by_path)
    problems += conf_problems
    # Not part of certbot's consistency, but renewal needs the account it names.
    account = conf.get("renewalparams.account")
    warnings = []
    if account and account not in account_dirs:
        warnings.append(
            f"renewal/{name}.conf names ACME account {account}, which is not under accounts/"
        )
    fact: dict[str, Any] = {
        "name": name,
        "consistent": not problems,
        "problems": problems,
        "warnings": warnings,
        "account": account,
        "version": versions.get("cert"),
    }
    if cert_member is not None:
        cert = certificate_fact(cert_member.path, cert_member.content)
        fact.update({k: v for k, v in cert.items() if k != "path"})
        fact["cert_path"] = cert_member.path
    return fact


def _renewal_conf(
    name: str, root: str, by_path: dict[str, Member]
) -> tuple[list[str], dict[str, str]]:
    """Problems with ``renewal/<name>.conf``, and its parsed settings."""
    rel = f"renewal/{name}.conf"
    m = by_path.get(f"{root}/{rel}")
    if m is None or m.type != "file":
        return [f"{rel} is missing"], {}
    if m.content is None:
        return [f"{rel} is too large to inspect"], {}
    conf = parse_renewal_conf(m.content)
    problems = []
    expected = {kind: f"{root}/live/{name}/{kind}.pem" for kind in KINDS}
    expected["archive_dir"] = f"{root}/archive/{name}"
    for key, want in expected.items():
        got = conf.get(key)
        if got is None:
            problems.append(f"{rel} has no {key}")
        elif posixpath.normpath(got) != want:
            problems.append(f"{rel}: {key} = {got}, expected {want}")
    return problems, conf


def parse_renewal_conf(content: bytes) -> dict[str, str]:
    """Top-level ``key = value`` pairs, and ``[renewalparams]`` ones as ``renewalparams.key``."""
    out: dict[str, str] = {}
    section = ""
    for line in content.decode("utf-8", "replace").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("["):
            section = stripped.strip("[]").strip()
            continue
        m = _CONF_LINE.match(line)
        if m:
            out[f"{section}.{m.group(1)}" if section else m.group(1)] = m.group(2)
    return out


def lineage_line(lin: dict[str, Any]) -> str:
    name = lin.get("name")
    expiry = f", valid until {lin['not_after']}" if lin.get("not_after") else ""
    notes = "".join(f"; {w}" for w in lin.get("warnings", []))
    if lin.get("consistent"):
        return f"lineage {name}: consistent{expiry}{notes}"
    problems = "; ".join(lin.get("problems", []))
    return f"lineage {name}: NOT consistent in the backup{expiry}: {problems}{notes}"


def _rel(path: str, root: str) -> str | None:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _join(dest: str, path: str) -> str:
    return path if dest == "/" else dest.rstrip("/") + "/" + path.lstrip("/")
