"""``caddy``: the Caddyfile(s) and Caddy's data dir (certificates, keys, ACME accounts).

Backup: one tar of ``config_paths`` and ``data_dir`` without ``locks/`` (a
lock restored on another machine would stall certificate maintenance). Modes
(0600 files, 0700 dirs) and owners are kept. Facts: every certificate under
``certificates/<issuer>/<domain>/<domain>.crt`` with its names, SHA-256
fingerprint and notAfter, whether its key is there, and which issuers have
an ACME account, all read from the tar stream.

Restore: files back (refusing to overwrite differing ones unless forced),
then ``chown -R caddy:`` on the data dir when the target has a ``caddy``
user, so the service can read its keys and does not request new
certificates (Let's Encrypt allows 5 duplicate certificates a week).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from drkit.policy.models import CaddySource as CaddyConfig
from drkit.sources.base import Artifact, Check, Feed, RestoreOptions, RestoreReport, StepPlan
from drkit.sources.certs import certificate_fact
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

    def artifacts(self) -> Iterator[Artifact]:
        data = self.data_dir
        locks = _tar_pattern(data.lstrip("/") + "/locks")
        yield self.tar_artifact([*self.config.config_paths, data], [locks])
        facts = self.listing_facts()
        members = self._scanner.members
        try:
            facts.update(data_facts(members, data))
        finally:
            for member in members:
                member.content = None  # private keys must not outlive the scan
        facts["data_dir"] = data
        facts["config_files"] = [
            m.path for m in members if m.type == "file" and not _under(m.path, data)
        ]
        self.facts.update(facts)

    def describe(self, facts: dict[str, Any], opts: RestoreOptions) -> StepPlan:
        base = super().describe(facts, opts)
        data = self._target_data(facts, opts)
        actions = list(base.actions)
        if self._owner_exists():
            actions.append(f"chown -R {OWNER}: {data}")
        else:
            actions.append(f"no {OWNER} user on the target: {data} keeps the backup's owners")
        actions += [certificate_line(c) for c in facts.get("certificates", [])]
        return StepPlan(actions, base.blocked)

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
        report.actions.append(
            "restart caddy (systemctl restart caddy) so it loads these certificates "
            "instead of requesting new ones"
        )
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
        return checks

    def _target_data(self, facts: dict[str, Any], opts: RestoreOptions) -> str:
        return _join(opts.dest or "/", str(facts.get("data_dir") or self.data_dir))

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


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _join(dest: str, path: str) -> str:
    return path if dest == "/" else dest.rstrip("/") + "/" + path.lstrip("/")


def _tar_pattern(path: str) -> str:
    """A literal path as a GNU tar --exclude pattern (wildcards escaped)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)
