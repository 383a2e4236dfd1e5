"""Typed policy models: one TOML file per host.

Every field documents itself (``description``); ``docs/policy.md`` is the
reference. Secret-bearing fields take ``SecretRef`` (``env:NAME`` or
``file:PATH``); a literal value there is refused at validation.

Over 400 lines by design: one short model per source kind, in the order
``docs/policy.md`` is generated in; a policy's whole schema reads in one place.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from drkit.policy.checks import (
    AbsolutePath,
    ApiEndpoint,
    Cron,
    Duration,
    LockTtl,
    PositiveDuration,
    RecipientKey,
    SignerKey,
)
from drkit.secrets import check_reference

SecretRef = Annotated[str, AfterValidator(check_reference)]
NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Connection(Model):
    """How drkit reaches the host: run commands locally or over SSH."""

    type: Literal["local", "ssh"] = Field(
        "local", description="local: this machine; ssh: a remote host"
    )
    address: str | None = Field(None, description="SSH host name or IP")
    user: str = Field("root", description="SSH login user")
    port: int = Field(22, ge=1, le=65535, description="SSH port")
    identity_file: str | None = Field(None, description="private key used to log in")
    known_hosts: str | None = Field(None, description="known_hosts file to verify the host key")
    accept_new_host_key: bool = Field(
        False, description="trust an unknown host key once (never a changed one)"
    )
    jump: str | None = Field(None, description="jump host, user@host[:port]")


class RepositoryConfig(Model):
    """Where snapshots are stored."""

    url: str = Field(description="file:///abs/path or s3://bucket/prefix")
    endpoint: str | None = Field(None, description="S3 endpoint URL for non-AWS services")
    region: str | None = Field(None, description="S3 region (default us-east-1)")
    path_style: bool = Field(True, description="path-style addressing (most non-AWS services)")
    access_key_id: SecretRef | None = Field(None, description="else the standard AWS chain")
    secret_access_key: SecretRef | None = Field(None, description="else the standard AWS chain")
    immutable_days: int = Field(0, ge=0, description="S3 Object Lock retention in days")
    immutable_mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        "GOVERNANCE",
        description="Object Lock mode: COMPLIANCE cannot be lifted by anyone before its date",
    )
    dedup: bool = Field(
        True,
        description=(
            "store artifacts as content-defined chunks in packs, each chunk stored once "
            "per host (docs/dedup.md); false stores each artifact whole"
        ),
    )
    repack: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "prune repacks a pack once at least this share of it is garbage (its live "
            "chunks move to new packs, recorded signed by this machine's key: "
            "docs/dedup.md); 0: never ($DRKIT_REPACK when 0)"
        ),
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: str) -> str:
        if not re.match(r"^(file|s3)://", v):
            raise ValueError("must start with file:// or s3://")
        if re.match(r"^s3://[^/]*@", v):
            raise ValueError("credentials in the URL are refused; use access_key_id references")
        from drkit.errors import UsageError
        from drkit.repository.factory import check_url

        try:
            check_url(v)  # what opening the repository would refuse (e.g. file://relative)
        except UsageError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from None
        return v


class Encryption(Model):
    """Public recipients: backing up never needs the identity. Public signing keys: only
    snapshots and drill reports signed by one of them are trusted (docs/security.md)."""

    recipients: list[RecipientKey] = Field(
        default_factory=list, description="age1... or ssh-ed25519 keys"
    )
    recipients_file: str | None = Field(None, description="file with one recipient per line")
    signers: list[SignerKey] = Field(
        default_factory=list,
        description=(
            "ed25519:... public keys (printed by `drkit init`) of the machines that back up "
            "or drill this host; several for key rotation"
        ),
    )
    signers_file: str | None = Field(None, description="file with one signing key per line")
    drill_signers: list[SignerKey] = Field(
        default_factory=list,
        description=(
            "keys of machines that only run drills: trusted for drill reports, not snapshots"
        ),
    )


class Retention(Model):
    """Which snapshots `drkit prune` keeps (docs/operations.md); no rule keeps everything."""

    keep_last: int | None = Field(None, ge=0, description="the newest N snapshots")
    keep_hourly: int | None = Field(
        None, ge=0, description="the newest snapshot of each of N hours"
    )
    keep_daily: int | None = Field(None, ge=0, description="... of each of N days")
    keep_weekly: int | None = Field(None, ge=0, description="... of each of N weeks")
    keep_monthly: int | None = Field(None, ge=0, description="... of each of N months")
    keep_yearly: int | None = Field(None, ge=0, description="... of each of N years")
    keep_within: Duration | None = Field(None, description="duration such as 7d or 36h")


class SourceConfigBase(Model):
    name: str | None = Field(None, pattern=NAME_RE, description="defaults to the kind")
    schedule: Cron | None = Field(None, description="cron expression overriding the host's")
    retention: Retention | None = Field(None, description="overrides the host's retention")
    sudo_user: str | None = Field(None, description="run this source's commands as this user")
    timeout: PositiveDuration | None = Field(
        None, description="fail the source after this duration"
    )


class PostgresConfig(SourceConfigBase):
    """pg_dump of one database (uncompressed custom format; the pipeline compresses)
    plus the cluster's roles; facts: exact row counts per table in the dump's snapshot."""

    kind: Literal["postgres"]
    database: str = Field(description="database to dump")
    host: str | None = Field(None, description="server host or socket dir; default local socket")
    port: int = Field(5432, ge=1, le=65535)
    user: str | None = Field(None, description="database user (default: the OS user)")
    password: SecretRef | None = Field(None, description="passed as PGPASSWORD, never in argv")
    globals: bool = Field(True, description="also dump roles and tablespaces (pg_dumpall -g)")
    format: Literal["custom", "plain"] = Field("custom", description="pg_dump -Fc -Z0 or -Fp")
    flavor: Literal["plain", "supabase"] = Field("plain", description="supabase: its 3-part recipe")
    container: str | None = Field(None, description="run pg_dump inside this Docker container")
    bin_dir: str | None = Field(None, description="directory holding pg_dump and friends")
    restore_jobs: int | None = Field(
        None,
        ge=1,
        description="pg_restore -j for indexes and constraints when restoring into a fresh "
        "database; default min(4, target CPUs); 1 = one stream in one transaction",
    )


class ArchiveConfig(SourceConfigBase):
    """A source stored as a tar archive: restores check every member (docs/security.md)."""

    allow_setid: bool = Field(
        False,
        description="restore files with set-user/group-id bits (refused by default: "
        "a restore of a compromised host's snapshot must not plant setuid binaries)",
    )
    symlinks_to: list[AbsolutePath] = Field(
        default_factory=list,
        description="directories outside this source's paths that restored symlinks may "
        'point into (e.g. ["/usr/bin"] for a virtualenv\'s bin/python -> /usr/bin/python3); '
        "other outward symlinks are refused, and nothing is ever written through one",
    )


class FilesConfig(ArchiveConfig):
    """A tar of paths keeping modes, owners and symlinks; facts: each file's size and sha256."""

    kind: Literal["files"]
    paths: list[AbsolutePath] = Field(min_length=1, description="absolute paths")
    exclude: list[str] = Field(default_factory=list, description="tar --exclude patterns")


class EnvConfig(ArchiveConfig):
    """.env files; every pattern must match; facts: key names and digests, never values."""

    kind: Literal["env"]
    paths: list[AbsolutePath] = Field(min_length=1, description="files or globs, e.g. /root/*/.env")


class CommandConfig(SourceConfigBase):
    """Any command whose stdout is the artifact; non-zero exit or no output fails it."""

    kind: Literal["command"]
    command: list[str] = Field(min_length=1, description="argv whose stdout is the artifact")
    restore_command: list[str] | None = Field(None, description="argv that reads it on stdin")
    artifact: str = Field("output", pattern=NAME_RE, description="artifact name")
    env: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], SecretRef] = Field(
        default_factory=dict,
        description="environment of command and restore_command, e.g. "
        '`{ API_TOKEN = "env:DB_API_TOKEN" }`: each value a secret reference, resolved by '
        "drkit and sent the way PGPASSWORD is (never in argv); output, errors, the catalog "
        "and notifications are scrubbed of the values",
    )


class Pm2Config(ArchiveConfig):
    """`pm2 save` dump and ecosystem files; facts: app names, cwd and script (never env)."""

    kind: Literal["pm2"]
    user: str = Field("root", description="user owning the PM2 daemon")
    pm2_bin: str = Field("pm2", description="the pm2 command (name on PATH or absolute path)")
    pm2_home: str | None = Field(None, description="default ~user/.pm2")
    ecosystem: list[str] = Field(default_factory=list, description="ecosystem.config.js paths")


class CaddyConfig(ArchiveConfig):
    """Caddyfile(s) and the data dir (certificates, ACME account); facts: certificates."""

    kind: Literal["caddy"]
    config_paths: list[str] = Field(default_factory=lambda: ["/etc/caddy"])
    data_dir: str = "/var/lib/caddy/.local/share/caddy"


class CertbotConfig(ArchiveConfig):
    """/etc/letsencrypt with its symlinks intact; facts: each certificate's names and expiry."""

    kind: Literal["certbot"]
    dir: str = "/etc/letsencrypt"


class NatsConfig(ArchiveConfig):
    """JetStream streams (KV and object-store buckets included) through the snapshot API,
    or a stop-copy-start of the store directory; facts: messages, bytes, first/last
    sequence per stream."""

    kind: Literal["nats"]
    url: str = Field("nats://127.0.0.1:4222", description="server URL as seen from the host")
    streams: list[str] | Literal["all"] = Field("all", description="stream names, or all")
    mode: Literal["snapshot", "stop-copy"] = Field(
        "snapshot", description="snapshot: JetStream API; stop-copy: stop, tar store_dir, start"
    )
    store_dir: str | None = Field(None, description="stop-copy: the JetStream store directory")
    container: str | None = Field(None, description="stop-copy: the nats-server container")
    credentials: SecretRef | None = Field(None, description="a .creds file reference")
    memory_streams: Literal["skip", "export"] = Field(
        "skip",
        description="snapshot mode: memory-storage streams, which JetStream cannot snapshot: "
        "skip (reported at backup and in the plan) or export (their messages are read through "
        "an ordered consumer and published again on restore, with new sequence numbers)",
    )


class DockerVolumeConfig(ArchiveConfig):
    """A named Docker volume's contents, tarred from its mountpoint on the host (needs root
    or ``sudo_user = "root"``); facts: each file's size and sha256, a content digest."""

    kind: Literal["docker_volume"]
    volume: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the volume's name (docker volume ls)"
    )
    stop_label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=/:-]*$",
        description="stop running containers with this label (key or key=value) while the "
        "volume is read or restored; they are always started again",
    )
    exclude: list[str] = Field(
        default_factory=list, description="tar --exclude patterns, relative to the volume"
    )


ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
CONTAINER_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class RedisConfig(SourceConfigBase):
    """A Redis-protocol server (Redis, Valkey, FalkorDB) on the host or in a container:
    an RDB over the replication protocol (`redis-cli --rdb -`), restored by stopping the
    server, placing the RDB where its config says and starting it (docs/sources/redis.md);
    facts: keys and expiring keys per database, modules, server version."""

    kind: Literal["redis"]
    host: str = Field("127.0.0.1", description="server address as seen from the host")
    port: int = Field(6379, ge=1, le=65535, description="server port (inside the container)")
    user: str | None = Field(None, description="ACL user (--user); default the default user")
    password: SecretRef | None = Field(
        None, description="sent as REDISCLI_AUTH in the environment, never in argv"
    )
    container: str | None = Field(
        None, pattern=CONTAINER_RE, description="run redis-cli inside this Docker container"
    )
    cli: str = Field("redis-cli", description="the client binary (valkey-cli, ...)")
    service: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9@_.:-]+$",
        description="host server only: the systemd unit stopped and started by a restore",
    )
    start_command: list[str] | None = Field(
        None,
        min_length=1,
        description="host server only, without `service`: argv that starts the server "
        "after a restore (it is stopped with SHUTDOWN NOSAVE)",
    )
    start_timeout: PositiveDuration = Field(
        "5m", description="how long a restore waits for the server to load the RDB"
    )

    @field_validator("start_command")
    @classmethod
    def _start_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v[0]:
            raise ValueError("start_command needs a command")
        return v

    @model_validator(mode="after")
    def _one_way_to_restart(self) -> RedisConfig:
        if self.container and (self.service or self.start_command):
            raise ValueError(
                "container: the container is stopped and started; "
                "service and start_command are for a server on the host"
            )
        if self.service and self.start_command:
            raise ValueError("give service or start_command, not both")
        return self


class MysqlConfig(SourceConfigBase):
    """MySQL or MariaDB on the host or in a container: `mysqldump --single-transaction
    --routines --triggers --events`, restored by loading it into the server
    (docs/sources/mysql.md); facts: rows per table, counted in the dump's snapshot."""

    kind: Literal["mysql"]
    databases: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_$-]{1,64}$")]] | Literal["all"] = (
        Field("all", description="database names, or all (system schemas excluded)")
    )
    host: str | None = Field(None, description="server host; default the local socket")
    port: int = Field(3306, ge=1, le=65535)
    socket: str | None = Field(None, description="the server's Unix socket")
    user: str = Field("root", description="database user")
    password: SecretRef | None = Field(
        None, description="sent as MYSQL_PWD in the environment, never in argv"
    )
    container: str | None = Field(
        None, pattern=CONTAINER_RE, description="run the client tools inside this container"
    )
    container_password_env: str | None = Field(
        None,
        pattern=ENV_NAME_RE,
        description="container only: read the password from this variable of the "
        "container's own environment (e.g. MYSQL_ROOT_PASSWORD), so it never leaves it",
    )
    dump: str = Field("mysqldump", description="the dump tool (mariadb-dump, ...)")
    client: str = Field("mysql", description="the client used for restores and counts")

    @model_validator(mode="after")
    def _password_source(self) -> MysqlConfig:
        if self.container_password_env and not self.container:
            raise ValueError("container_password_env needs container")
        if self.container_password_env and self.password:
            raise ValueError("give password or container_password_env, not both")
        return self


class ComposeConfig(ArchiveConfig):
    """One Docker Compose project as a unit: its directory (compose and env files, bind
    mounts under it), its named volumes read in one window with the project's containers
    stopped (always started again), optionally its images (`docker save`); restored with
    `docker compose up -d` and each service checked running and listening
    (docs/sources/compose.md)."""

    kind: Literal["compose"]
    project: str = Field(
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
        description="the compose project name (label com.docker.compose.project)",
    )
    dir: AbsolutePath = Field(
        description="the project's working directory, archived like a `files` path"
    )
    exclude: list[str] = Field(default_factory=list, description="tar --exclude patterns")
    dumps: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]] = Field(
        default_factory=list,
        description="services whose data an app-native source of the policy dumps "
        "(postgres/mysql/redis with container =): their volumes are not copied and "
        "they keep running during the copy",
    )
    images: bool = Field(
        False,
        description="also `docker save` the images the project runs, so a restore "
        "needs no registry",
    )
    start_timeout: PositiveDuration = Field(
        "2m", description="how long a restore waits for the services to run and listen"
    )


class MachineImageConfig(SourceConfigBase):
    """A provider snapshot of the whole machine, taken beside the data sources and pruned
    by this source's own `retention` (drkit's own only); see drkit restore-machine."""

    kind: Literal["snapshot"]
    provider: Literal["digitalocean", "vultr", "hetzner"] = Field(description="whose API")
    resource_id: str = Field(description="droplet id, instance id or server id")
    token: SecretRef = Field(description="the provider API token")
    wait_timeout: PositiveDuration = Field(
        "45m", description="fail the snapshot if not complete by then"
    )
    region: str | None = Field(None, description="restore: region of the new machine")
    size: str | None = Field(None, description="restore: size/plan/type of the new machine")
    restore_timeout: PositiveDuration = Field(
        "15m", description="restore: wait this long for the machine"
    )
    poll_interval: PositiveDuration | None = Field(
        None, description="how often to poll (provider default)"
    )
    endpoint: ApiEndpoint | None = Field(
        None, description="API base URL (a proxy; plain http only to loopback)"
    )


SourceConfig = Annotated[
    PostgresConfig
    | FilesConfig
    | EnvConfig
    | CommandConfig
    | Pm2Config
    | CaddyConfig
    | CertbotConfig
    | NatsConfig
    | DockerVolumeConfig
    | RedisConfig
    | MysqlConfig
    | ComposeConfig
    | MachineImageConfig,
    Field(discriminator="kind"),
]


EventName = Literal["start", "success", "fail"]


class Notify(Model):
    """Where each run is reported (docs/operations.md); URLs and topics are secrets."""

    healthchecks: SecretRef | None = Field(
        None, description="healthchecks.io-style ping URL: /start, success, /fail + log tail"
    )
    ntfy: SecretRef | None = Field(None, description="ntfy topic URL")
    ntfy_token: SecretRef | None = Field(None, description="ntfy access token (Bearer)")
    ntfy_events: tuple[EventName, ...] = Field(("fail",), description="events sent to ntfy")
    webhook: SecretRef | None = Field(None, description="URL receiving a JSON POST per event")
    webhook_events: tuple[EventName, ...] = Field(
        ("success", "fail"), description="events sent to the webhook"
    )
    prometheus_textfile: AbsolutePath | None = Field(
        None, description="node_exporter textfile (*.prom) rewritten after each run"
    )
    timeout: PositiveDuration = Field(
        "10s", description="per request; a failed notification only warns"
    )

    @property
    def has_channels(self) -> bool:
        """True if any HTTP channel is configured (the textfile is not one)."""
        return bool(self.healthchecks or self.ntfy or self.webhook)


class Policy(Model):
    """One host: how to reach it, where to store, and what to back up."""

    host: str = Field(pattern=NAME_RE, description="host name: the key in the repository")
    description: str | None = Field(None, description="free text")
    connection: Connection = Connection()
    schedule: Cron | None = Field(
        None, description="cron expression (UTC) for backup --due; none: never due"
    )
    jitter: Duration | None = Field(
        None, description="delay every slot by a fixed per-host offset below this, e.g. 15m"
    )
    rpo: PositiveDuration | None = Field(
        None, description="alert when the newest backup is older, e.g. 26h"
    )
    lock_ttl: LockTtl = Field(
        "15m", description="a run's lock is taken over when its heartbeat is older"
    )
    repository: RepositoryConfig
    encryption: Encryption
    retention: Retention = Retention()
    notify: Notify | None = Field(None, description="[notify] table: pings, webhook, metrics")
    discover: bool = Field(
        True,
        description="at each backup, run discovery over the connection and warn about data "
        "no source covers (drkit discover; false: never)",
    )
    source: list[SourceConfig] = Field(min_length=1)
    # The file it was read from (set by the loader), for messages that must name it.
    _origin: str = PrivateAttr(default="")

    @property
    def origin(self) -> str:
        return self._origin or f"policy of host {self.host}"


def source_name(src: SourceConfigBase) -> str:
    """The name a source's artifacts are stored under (its ``name`` or its kind)."""
    return src.name or str(getattr(src, "kind"))  # noqa: B009 - every concrete source has kind
