"""restore_drills/<host>.toml: the drill's image and the checks it runs besides the
automatic fact checks.

A policy's drill file is ``<drills dir>/<policy host>.toml``; a host without one
gets the automatic checks only. The drills dir is ``--drills-dir`` or
``$DRKIT_DRILLS_DIR``, else the first of ``./restore_drills/``,
``<config dir>/restore_drills/`` and the drill files drkit ships (the seed
hosts') that holds a ``*.toml`` file (``drills_dir()``). Reference: docs/drills.md.

```toml
host = "vultr"
image = "vultr"               # docker/hosts/<image>/ (default: the host name; --image overrides)
cert_warn_days = 14

[skip]                        # sources the drill does not restore, each with why (the
falkordb = "docker exec: no Docker engine in the drill image"   # report says so: warn)

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

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from drkit.errors import PolicyError, UsageError
from drkit.paths import config_dir, shipped
from drkit.policy.loader import read_toml, schema_problems

DRILLS_DIR_ENV = "DRKIT_DRILLS_DIR"


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
    image: str | None = None
    cert_warn_days: int = 14
    sql: list[SqlCheck] = Field(default_factory=list)
    command: list[CommandCheck] = Field(default_factory=list)
    http: list[HttpCheck] = Field(default_factory=list)
    file: list[FileCheck] = Field(default_factory=list)
    env: list[EnvCheck] = Field(default_factory=list)
    # Sources the drill image cannot restore (a source run through Docker where the image
    # has no engine), each with why: not assembled or restored, named in the report (warn).
    skip: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    _path: Path | None = PrivateAttr(None)  # the file it was read from, for messages

    def image_for(self, host: str, override: str | None = None) -> tuple[str, str]:
        """(image, what chose it): ``override`` (``--image``), else this file's
        ``image``, else the image named like ``host``.

        Raises ``UsageError`` when the chosen name is not an image, naming the
        images there are and where to choose one.
        """
        from drkit.drills.images import docker_dir, image_names

        if override is not None:
            return check_image(override, "--image")
        if self.image is not None:
            return check_image(self.image, self.where)
        if host in image_names():
            return host, "the host name"
        missing = "" if self._path is None or self._path.exists() else " (no such file)"
        raise UsageError(
            f"no drill image for host {host!r}: {self.where}{missing} names none and "
            f"{docker_dir() / 'hosts'} has none named {host!r} "
            f"(images: {', '.join(image_names()) or 'none'}); "
            f'name one there (image = "<image>") or pass --image'
        )

    @property
    def where(self) -> str:
        """The drill file's path, for messages."""
        return str(self._path) if self._path is not None else f"the drill file of {self.host}"


def check_image(image: str, chosen_by: str) -> tuple[str, str]:
    """(image, chosen_by) when ``image`` is a drill image, else ``UsageError`` naming
    ``chosen_by`` and the images there are."""
    from drkit.drills.images import unknown_image

    problem = unknown_image(image)
    if problem is not None:
        raise UsageError(f"{chosen_by}: {problem}")
    return image, chosen_by


def load_spec(path: Path) -> DrillSpec:
    """Parse a drill file; every problem is reported with file and key path (PolicyError),
    including a file that cannot be read or is not UTF-8 TOML."""
    data = read_toml(path)
    problems = []
    spec = None
    try:
        spec = DrillSpec.model_validate(data)
    except ValidationError as exc:
        problems += schema_problems(exc, str(path))
    image = data.get("image")
    if isinstance(image, str):
        from drkit.drills.images import unknown_image

        problem = unknown_image(image)
        if problem is not None:
            problems.append(f"{path}: image: {problem}")
    if problems or spec is None:
        raise PolicyError(problems)
    spec._path = path
    return spec


def drill_dirs() -> list[Path]:
    """Where drill files are looked for when neither ``--drills-dir`` nor
    ``$DRKIT_DRILLS_DIR`` names a directory, in order: ``./restore_drills`` (a
    checkout, or a directory of one's own), ``<config dir>/restore_drills`` (beside
    the policies ``drkit init`` writes), the drill files drkit ships."""
    return [Path("restore_drills"), config_dir() / "restore_drills", shipped("restore_drills")]


def drills_dir(option: str | None = None) -> Path:
    """The drills dir: ``option`` (``--drills-dir``), else ``$DRKIT_DRILLS_DIR``, else
    the first of ``drill_dirs()`` holding a ``*.toml`` file (the shipped one if none)."""
    chosen = option or os.environ.get(DRILLS_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser()
    candidates = drill_dirs()
    return next((d for d in candidates if any(d.glob("*.toml"))), candidates[-1])


def spec_for(host: str, directory: Path) -> DrillSpec:
    """The host's drill file, ``<directory>/<host>.toml``, or an empty spec (automatic
    fact checks only, the image named like the host) when there is none."""
    path = directory / f"{host}.toml"
    if path.exists() or path.is_symlink():  # a dangling link is reported, not skipped
        return load_spec(path)
    spec = DrillSpec(host=host)
    spec._path = path
    return spec
