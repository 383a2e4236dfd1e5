"""``caddy``: the Caddyfile(s) and Caddy's data dir (certificates, keys, ACME accounts).

Backup: one tar of ``config_paths`` and ``data_dir`` without ``locks/`` (a
lock restored on another machine would stall certificate maintenance). Modes
(0600 files, 0700 dirs) and owners are kept. Facts: every certificate under
``certificates/<issuer>/<domain>/<domain>.crt`` with its names, SHA-256
fingerprint and notAfter, whether its key is there, and which issuers have
an ACME account, all read from the tar stream.

The sites: every host name of the Caddyfile(s)' site blocks that has a
certificate in the data dir, with that certificate's fingerprint.

Restore: files back (refusing to overwrite differing ones unless forced; an
unmodified package default such as Debian's Caddyfile is not user data), then
``chown -R caddy:`` on the data dir when the target has a ``caddy`` user, so
the service can read its keys and does not request new certificates (Let's
Encrypt allows 5 duplicate certificates a week). Then Caddy is reloaded (or
started) so it serves them, and each site is probed over TLS on the target:
the certificate served must be the backed-up one (``services``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from drkit.policy.models import CaddyConfig
from drkit.sources.base import (
    Artifact,
    Check,
    Feed,
    RestoreOptions,
    RestoreReport,
    StepPlan,
    differs_from_policy,
)
from drkit.sources.caddyfile import https_port, tls_sites
from drkit.sources.certs import certificate_fact
from drkit.sources.services import Outcome, attempt, has_systemd_unit, installed, probe_certificate
from drkit.sources.tarball import TarSource
from drkit.sources.tarscan import Member

OWNER = "caddy"  # the Debian/Ubuntu package's service user


class CaddySource(TarSource):
    kind = "caddy"
    config: CaddyConfig
    ARTIFACT = "caddy.tar"
    keep_content = True

    @property
    def data_dir(self) -> str:
        return posixpath.normpath(self.config.data_dir)

    def policy_paths(self) -> list[str]:
        return [*self.config.config_paths, self.data_dir]

    def artifacts(self) -> Iterator[Artifact]:
        data = self.data_dir
        locks = _tar_pattern(data.lstrip("/") + "/locks")
        yield from self.tar_artifacts([*self.config.config_paths, data], [locks])
        facts = self.listing_facts()
        members = self._scanner.members
        try:
            facts.update(data_facts(members, data))
            names = config_names(members, data)
        finally:
            for member in members:
                member.content = None  # private keys must not outlive the scan
        facts["data_dir"] = data
        facts["config_files"] = [
            m.path for m in members if m.type == "file" and not _under(m.path, data)
        ]
        facts["sites"] = site_facts(names, facts["certificates"])
        self.facts.update(facts)

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        base = super().describe(facts, opts)
        data = self._target_data(facts, opts)
        actions = [*base.actions, *differs_from_policy(facts, {"data_dir": self.data_dir})]
        if self._owner_exists():
            actions.append(f"chown -R {OWNER}: {data}")
        else:
            actions.append(f"no {OWNER} user on the target: {data} keeps the backup's owners")
        actions += [certificate_line(c) for c in facts.get("certificates", [])]
        actions += self._service_plan(facts, opts)
        return StepPlan(actions, base.blocked)

    def _service_plan(self, facts: dict[str, Any], opts: RestoreOptions) -> list[str]:
        sites = site_urls(facts)
        probes = f"; then probe {', '.join(sites)}" if sites else ""
        if (opts.dest or "/") != "/":
            return ["restored under --dest: caddy is not reloaded, sites are not probed"]
        if not opts.reload:
            return ["caddy is not reloaded (--no-reload): sites are not probed"]
        if not installed(self.runner, "caddy"):
            return [
                "caddy is NOT installed on the target: nothing will serve "
                f"{', '.join(sites) or 'these certificates'} (the verdict fails)"
            ]
        if has_systemd_unit(self.runner, "caddy.service"):
            how = "systemctl reload-or-restart caddy.service"
        else:
            caddyfile = self._caddyfile(facts)
            how = f"caddy reload --config {caddyfile} --force (start it if not running)"
        return [f"reload caddy: {how}{probes}"]

    def reload(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        if (opts.dest or "/") != "/":
            return []
        serving = ", ".join(site_urls(facts)) or "its sites"
        if not opts.reload:
            detail = f"not reloaded (--no-reload): {serving} not probed"
            return [Check(self.name, "caddy reloaded", "warn", detail)]
        outcome = self._reload_caddy(facts)
        if outcome.ok:
            return [Check(self.name, "caddy reloaded", "pass", outcome.detail)]
        detail = f"{outcome.detail}: {serving} not served from the restored certificates"
        return [Check(self.name, "caddy reloaded", "fail", detail)]

    def _reload_caddy(self, facts: dict[str, Any]) -> Outcome:
        runner, user = self.runner, self.run_as
        if not installed(runner, "caddy"):
            return Outcome(False, "caddy is not installed on the target")
        if has_systemd_unit(runner, "caddy.service"):
            return attempt(runner, ["systemctl", "reload-or-restart", "caddy.service"], user=user)
        caddyfile = self._caddyfile(facts)
        # --force: the config may be unchanged while the certificates under it are new.
        reload = ["caddy", "reload", "--config", caddyfile, "--adapter", "caddyfile", "--force"]
        tried = attempt(runner, reload, user=user)
        if tried.ok:
            return tried
        # Its admin endpoint did not answer: not running. Start it as its package would
        # (as the caddy user, whose home holds the default data dir).
        started = attempt(runner, self._start_argv(caddyfile), user=user)
        if started.ok:
            return Outcome(True, f"caddy was not running: started ({started.detail})")
        return Outcome(False, f"{tried.detail}; then {started.detail}")

    def _start_argv(self, caddyfile: str) -> list[str]:
        start = ["caddy", "start", "--config", caddyfile, "--adapter", "caddyfile"]
        # `caddy start` leaves the server writing to the stdout it was given: a log file,
        # or the session that ran it would never end.
        log = "/var/log/caddy/drkit-start.log"
        script = f'mkdir -p /var/log/caddy && exec "$@" >>{log} 2>&1'
        home = self.runner.run(["getent", "passwd", OWNER])
        fields = home.stdout.decode("utf-8", "replace").strip().split(":")
        if home.returncode != 0 or len(fields) < 6:
            return ["sh", "-c", script, "sh", *start]
        as_owner = ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--init-groups"]
        return ["sh", "-c", script, "sh", *as_owner, "env", f"HOME={fields[5]}", *start]

    def _caddyfile(self, facts: dict[str, Any]) -> str:
        """The Caddyfile a reload loads: one named Caddyfile among the backed-up config
        files under the policy's config paths, else <first config path>/Caddyfile."""
        roots = [posixpath.normpath(p) for p in self.config.config_paths]
        for path in facts.get("config_files", []):
            path = "/" + str(path).lstrip("/")
            if posixpath.basename(path) == "Caddyfile" and any(_under(path, r) for r in roots):
                return path
        first = roots[0] if roots else "/etc/caddy"
        return first if posixpath.basename(first) == "Caddyfile" else first + "/Caddyfile"

    def restore(self, feed: Feed, facts: dict[str, Any], opts: RestoreOptions) -> RestoreReport:
        report = super().restore(feed, facts, opts)
        data = self._target_data(facts, opts)
        if self._owner_exists():
            # OWNER: = the user's login group (caddy:caddy under the package).
            self.runner.check(
                ["chown", "-R", f"{OWNER}:", "--", data],
                what=f"{self.label}: restore",
                user=self.run_as,
            )
            report.actions.append(f"{data}: owner set to {OWNER} (modes kept)")
        else:
            report.actions.append(
                f"no {OWNER} user on the target: {data} keeps the backup's owners"
            )
        report.actions += [certificate_line(c) for c in facts.get("certificates", [])]
        return report

    def check(self, facts: dict[str, Any], opts: RestoreOptions) -> list[Check]:
        """Files as backed up; the data dir owned by the caddy user; keys present."""
        checks = super().check(facts, opts)
        data = self._target_data(facts, opts)
        if self._owner_exists():
            out = self.runner.run(
                ["find", data, "!", "-user", OWNER, "-print", "-quit"], user=self.run_as
            )
            wrong = out.stdout.decode("utf-8", "replace").strip()
            if out.returncode != 0:
                status, detail = "fail", f"cannot read {data}"
            elif wrong:
                status, detail = "fail", f"{wrong} is not owned by {OWNER}"
            else:
                status, detail = "pass", f"everything under {data} is owned by {OWNER}"
            checks.append(Check(self.name, "data dir owner", status, detail))
        certs = facts.get("certificates", [])
        keyless = [c["domain"] for c in certs if not c.get("has_key")]
        if keyless:
            detail = f"certificate(s) without a private key in the backup: {', '.join(keyless)}"
            checks.append(Check(self.name, "certificate keys", "warn", detail))
        if (opts.dest or "/") == "/" and opts.reload:
            for site in facts.get("sites", []):
                status, detail = probe_certificate(
                    self.runner, site["name"], site["sha256"], port=int(site.get("port", 443))
                )
                checks.append(Check(self.name, f"https {site['name']}", status, detail))
        return checks

    def _target_data(self, facts: dict[str, Any], opts: RestoreOptions) -> str:
        return _join(opts.dest or "/", self.data_dir)

    def _owner_exists(self) -> bool:
        return self.runner.run(["id", "-u", OWNER]).returncode == 0


def certificate_line(cert: dict[str, Any]) -> str:
    if "error" in cert:
        return f"certificate {cert['path']}: {cert['error']}"
    key = "" if cert.get("has_key") else " (its key is MISSING)"
    return (
        f"certificate {', '.join(cert['names'])} valid until {cert['not_after']}, "
        f"sha256 {cert['sha256'][:16]}...{key}"
    )


def data_facts(members: list[Member], data: str) -> dict[str, Any]:
    """Certificates and ACME accounts found in a certmagic data dir's tar members."""
    prefix = data.rstrip("/") + "/"
    by_path = {m.path: m for m in members}
    certificates = []
    accounts: set[str] = set()
    for m in members:
        if not m.path.startswith(prefix):
            continue
        parts = m.path[len(prefix) :].split("/")
        # certificates/<issuer>/<domain>/<domain>.crt
        if (
            m.type == "file"
            and len(parts) == 4
            and parts[0] == "certificates"
            and parts[3] == parts[2] + ".crt"
        ):
            fact = certificate_fact(m.path, m.content)
            key = by_path.get(m.path[: -len(".crt")] + ".key")
            fact.update(
                issuer_key=parts[1],
                domain=parts[2],
                has_key=key is not None and key.type == "file",
            )
            certificates.append(fact)
        # acme/<issuer>/users/<email or default>/...
        elif len(parts) >= 4 and parts[0] == "acme" and parts[2] == "users" and m.type == "file":
            accounts.add(parts[1])
    certificates.sort(key=lambda c: (c["issuer_key"], c["domain"]))
    return {"certificates": certificates, "acme_accounts": sorted(accounts)}


def site_urls(facts: dict[str, Any]) -> list[str]:
    """https://name[:port] of each site the backup says this Caddy serves."""
    urls = []
    for site in facts.get("sites", []):
        port = int(site.get("port", 443))
        urls.append(f"https://{site['name']}" + ("" if port == 443 else f":{port}"))
    return urls


def config_names(members: list[Member], data: str) -> list[tuple[str, int]]:
    """(name, port) of the site blocks of every config file (not under the data dir)
    whose content the scan kept; a file that is not a Caddyfile yields junk names that
    match no certificate and are dropped by ``site_facts``. A file imported by the
    main Caddyfile does not see its global ``https_port``: the main file's wins."""
    texts = [
        m.content.decode("utf-8", "replace")
        for m in members
        if m.type == "file" and m.content is not None and not _under(m.path, data)
    ]
    default = max((https_port(t) for t in texts), key=lambda p: p != 443, default=443)
    names: list[tuple[str, int]] = []
    for text in texts:
        for name, port in tls_sites(text):
            port = default if port == 443 else port
            if name not in [n for n, _p in names]:
                names.append((name, port))
    return names


def site_facts(
    names: list[tuple[str, int]], certificates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each name with the backed-up certificate that covers it (its fingerprint is what
    the restored Caddy must serve); names without one are left out (Caddy will request
    a certificate for them: there is nothing to compare)."""
    sites = []
    for name, port in names:
        for cert in certificates:
            if "sha256" in cert and any(_covers(n, name) for n in cert.get("names", [])):
                sites.append(
                    {"name": name, "port": port, "sha256": cert["sha256"], "domain": cert["domain"]}
                )
                break
    return sites


def _covers(cert_name: str, name: str) -> bool:
    cert_name = cert_name.lower()
    if cert_name == name:
        return True
    # *.example.com covers a.example.com (one label), as TLS clients match it.
    return cert_name.startswith("*.") and name.partition(".")[2] == cert_name[2:]


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _join(dest: str, path: str) -> str:
    return path if dest == "/" else dest.rstrip("/") + "/" + path.lstrip("/")


def _tar_pattern(path: str) -> str:
    """A literal path as a GNU tar --exclude pattern (wildcards escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)
