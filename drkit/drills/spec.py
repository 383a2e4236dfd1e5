"""restore_drills/<host>.toml: the checks a drill runs besides the automatic fact checks.

```toml
host = "vultr"
cert_warn_days = 14

[[sql]]                       # a query on a restored database, its first value compared
name = "calls exist"
source = "callmeback"         # the postgres source whose database to query
query = "SELECT count(*) > 0 FROM calls"
expect = "t"

[[command]]                   # a command on the drill host
name = "caddy config is valid"
run = ["caddy", "validate", "--config", "/etc/caddy/Caddyfile"]
exit = 0
contains = "Valid configuration"

[[http]]                      # an HTTP endpoint inside the drill host
name = "db-proxy answers"
url = "http://127.0.0.1:3000/health"
status = 200

[[file]]                      # a file that must exist, optionally with a mode/owner
path = "/root/db-proxy/.env"
mode = "0600"

[[env]]                       # an env file that must hold these keys (values never read out)
path = "/root/voice-pipeline/.env"
keys = ["DEEPGRAM_API_KEY", "PORT"]
```
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drkit.errors import PolicyError


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlCheck(_M):
    name: str
    source: str
    query: str
    expect: str


class CommandCheck(_M):
    name: str
    run: list[str] = Field(min_length=1)
    exit: int = 0
    contains: str | None = None
    user: str | None = None


class HttpCheck(_M):
    name: str
    url: str
    status: int = 200
    contains: str | None = None


class FileCheck(_M):
    path: str
    mode: str | None = None
    owner: str | None = None


class EnvCheck(_M):
    path: str
    keys: list[str] = Field(min_length=1)


class DrillSpec(_M):
    host: str
    cert_warn_days: int = 14
    sql: list[SqlCheck] = Field(default_factory=list)
    command: list[CommandCheck] = Field(default_factory=list)
    http: list[HttpCheck] = Field(default_factory=list)
    file: list[FileCheck] = Field(default_factory=list)
    env: list[EnvCheck] = Field(default_factory=list)


def load_spec(path: Path) -> DrillSpec:
    """Parse a drill file; every problem is reported with file and key path (PolicyError)."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PolicyError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{path}: invalid TOML: {exc}"]) from None
    try:
        return DrillSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
            problems.append(f"{path}: {loc.lstrip('.')}: {e['msg']}")
        raise PolicyError(problems) from None


def spec_for(host: str, directory: Path) -> DrillSpec:
    """The host's drill file, or an empty spec (automatic fact checks only)."""
    path = directory / f"{host}.toml"
    return load_spec(path) if path.exists() else DrillSpec(host=host)
