"""`drkit init`: this machine's keys (an age identity, a signing key), a repository and
a sample policy; or, for a policy, its repository (bucket, Object Lock, format marker)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from drkit.actions.repository_access import open_repository, require_object_lock
from drkit.paths import config_dir, default_identity_file
from drkit.policy.loader import load_policy
from drkit.policy.models import Policy
from drkit.repository.layout import Repository
from drkit.signing import SigningKey, default_signing_key_file

SAMPLE_POLICY = """\
# A drkit policy: one file per host. Reference: docs/policy.md
host = "{host}"
rpo = "26h"
schedule = "17 3 * * *"

[repository]
url = "{repo}"
# Chunks stored once per host, in packs: an unchanged table costs nothing the next
# night (docs/dedup.md). `dedup = false` stores each artifact whole.
dedup = true

[encryption]
# Public keys only: the matching identity is needed to restore, never to back up.
recipients = ["{recipient}"]
# Only snapshots signed by these keys are listed, restored, drilled or pruned
# (docs/security.md). `drkit init` prints this machine's.
signers = ["{signer}"]

[retention]
keep_daily = 7
keep_weekly = 4

[[source]]
kind = "postgres"
database = "callmeback"
# password = "env:PGPASSWORD"   # secrets are references, never values

[[source]]
kind = "env"
paths = ["/root/*/.env"]
"""


@dataclass(frozen=True)
class InitResult:
    identity: Path
    identity_created: bool
    recipient: str
    signing_key_file: Path
    signing_key_created: bool
    signer: str
    repository: Repository
    bucket_created: bool
    sample_policy: Path | None  # written only where none existed
    policy_dedup: bool = True  # how the policy's repository stores (--policy; else the sample's)


def init_machine(
    *, repo: str | None, host: str, policy_file: Path | None, policy_dir: Path | None
) -> InitResult:
    """Create the config dir, an age identity (0600) and a signing key where missing.

    Then prepare the repository of the policy in ``policy_file``; or, without one, the
    repository at ``repo`` (default: a local directory in the data dir) and a sample
    policy for ``host`` in ``policy_dir`` (default: the config dir's policies/) unless
    one exists there."""
    from drkit.pipeline.age import generate_identity, recipient_of

    cdir = config_dir()
    cdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = default_identity_file()
    created_identity = not identity.exists()
    recipient = generate_identity(identity) if created_identity else recipient_of(identity)
    signing_file = default_signing_key_file()
    created_signing = not signing_file.exists()
    signing = SigningKey.create(signing_file) if created_signing else SigningKey.load(signing_file)
    sample: Path | None = None
    dedup = True
    if policy_file is not None:
        policy = load_policy(policy_file)
        repository, bucket_created = init_policy_repository(policy)
        dedup = policy.repository.dedup
    else:
        from drkit.repository.factory import open_store

        data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
        repo_url = repo or (data_home / "drkit" / "repository").as_uri()
        repository, bucket_created = Repository(open_store(repo_url)), False
        repository.init()
        policy_dir = policy_dir or cdir / "policies"
        policy_dir.mkdir(parents=True, exist_ok=True)
        if not (policy_dir / f"{host}.toml").exists():
            sample = policy_dir / f"{host}.toml"
            sample.write_text(
                SAMPLE_POLICY.format(
                    host=host, repo=repo_url, recipient=recipient, signer=signing.public
                )
            )
    return InitResult(
        identity=identity,
        identity_created=created_identity,
        recipient=recipient,
        signing_key_file=signing_file,
        signing_key_created=created_signing,
        signer=signing.public,
        repository=repository,
        bucket_created=bucket_created,
        sample_policy=sample,
        policy_dedup=dedup,
    )


def init_policy_repository(policy: Policy) -> tuple[Repository, bool]:
    """Open ``policy``'s repository, create its bucket if missing (S3: with Object Lock
    when ``immutable_days`` is set), refuse a bucket that cannot hold the retention the
    policy asks for, and write the format marker. Returns (repository, bucket created)."""
    repository = open_repository(policy)
    created = repository.store.ensure_bucket()
    require_object_lock(repository, policy.repository, policy.host)
    repository.init()
    return repository, created
