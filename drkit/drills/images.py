"""Drill images without a registry: a Debian base from the machine's mirror, one image per host.

- ``ensure_base_image()`` runs ``docker/base/build.sh`` (debootstrap from the
  mirror this machine's apt uses, then ``docker import``); the script tags the
  image with a content hash of itself and the mirror, and builds only when
  no image has that tag.
- ``ensure_host_image(name)`` builds ``docker/hosts/<name>/Dockerfile`` FROM
  that base. Its context is ``docker/hosts/common/`` (entrypoint, service
  helper, shared set-up) overlaid with ``docker/hosts/<name>/``, plus
  ``build-ca.crt``. The tag ``drkit-host-<name>:<hash>`` hashes that context,
  the base tag and the CA bundle, so an unchanged Dockerfile is never rebuilt.
  The image names are the seed hosts' (``image_names()``); a drill uses the
  one its drill file or ``--image`` names, else its host's own.
- Images the host's own containers need (an image with an engine of its own,
  ``docker/hosts/<name>/containers/<container>/Dockerfile``) are built by this
  machine's engine FROM the same base (``ensure_container_images()``), saved
  with ``docker save`` and put into the host image's context as
  ``containers.tar``, which ``drkit-engine`` loads inside (no registry is
  reachable from a drill). Their files are in the context, so the host tag
  covers them.

Where the base comes from (``DRKIT_BASE_IMAGE_SOURCE``, ``choose_base_source()``):
``debootstrap`` (``docker/base/build.sh``, from a Debian mirror, as root) or
``registry`` (``DRKIT_BASE_REGISTRY_IMAGE``, default ``debian:bookworm``, pulled by the
engine, with build.sh's image settings applied on top). ``auto`` (the default) uses a
registry image already in the engine, else debootstrap where it can run (a Debian
mirror is known, debootstrap is installed, root) and no registry image is named,
else probes the registry with ``docker pull`` (the engine contacts only the registry
that reference names, or its own configured mirrors) and falls back to debootstrap
when the pull fails. The choice and why are in each drill report (``base_from``).

Extra CA bundle (``DRKIT_BUILD_CA``): a PEM file whose certificates the image
trusts in addition to Debian's, during the build (``npm install -g pm2``
over https) and in the drill container. Unset: this machine's own bundle,
``/etc/ssl/certs/ca-certificates.crt``, so the image trusts what the machine
running the drill trusts (a TLS-inspecting proxy's CA, as on our CI
machines, or a company's); only certificates the image lacks are added.
``none`` or empty: no extra CA. Any other value: that file.

The files (``docker/``) are the ones drkit ships (package data in an installed
wheel, the checkout's ``docker/`` in a source tree) or, with ``DRKIT_DOCKER_DIR``
(``drkit drill --docker-dir``), a directory of one's own laid out the same way.

Each result is an ``ImageBuild(tag, built, seconds)``; build output is kept
in ``<state dir>/docker/build-<name>.log`` and its tail is in any error.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from drkit.drills.engine import DockerError, docker, docker_binary, ensure_engine, tail
from drkit.errors import UsageError
from drkit.paths import shipped, state_dir

DOCKER_DIR_ENV = "DRKIT_DOCKER_DIR"  # a directory laid out like docker/ (base/, hosts/)
CA_ENV = "DRKIT_BUILD_CA"
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_NAME = "build-ca.crt"  # the context file setup-image.sh reads
COMMON = "common"
BASE_SOURCE_ENV = "DRKIT_BASE_IMAGE_SOURCE"  # auto | debootstrap | registry
REGISTRY_IMAGE_ENV = "DRKIT_BASE_REGISTRY_IMAGE"
DEFAULT_REGISTRY_IMAGE = "debian:bookworm"
BASE_SOURCES = ("auto", "debootstrap", "registry")
PULL_TIMEOUT = 600.0
BASE_BUILD_TIMEOUT = 1800.0
HOST_BUILD_TIMEOUT = 3600.0
CONTAINERS_DIR = "containers"  # docker/hosts/<image>/containers/<name>/Dockerfile
CONTAINERS_TAR = "containers.tar"  # in the host image's context; drkit-engine loads it


class ImageBuild(NamedTuple):
    """An image that exists: its tag, whether this call built it, and how long the call took;
    for the base, ``source``: how it was made and why (``BaseChoice.describe()``)."""

    tag: str
    built: bool
    seconds: float
    source: str = ""


class BaseChoice(NamedTuple):
    """How the base image is made: ``method`` is "debootstrap" or "registry" (then
    ``image`` is the reference pulled), ``reason`` says what chose it."""

    method: Literal["debootstrap", "registry"]
    reason: str
    image: str | None = None

    def describe(self) -> str:
        made = f"registry image {self.image}" if self.method == "registry" else "debootstrap"
        return f"{made} ({self.reason})"


def docker_dir() -> Path:
    """The drill image files: ``$DRKIT_DOCKER_DIR`` (``drkit drill --docker-dir`` sets
    it), else the ``docker/`` directory drkit ships (``drkit.paths.shipped``: package
    data in an installed wheel, the checkout's ``docker/`` in a source tree)."""
    override = os.environ.get(DOCKER_DIR_ENV)
    return Path(override).expanduser() if override else shipped("docker")


def image_names() -> list[str]:
    """Drill images: the names with a ``docker/hosts/<name>/Dockerfile``, sorted."""
    hosts = docker_dir() / "hosts"
    return sorted(p.parent.name for p in hosts.glob("*/Dockerfile") if p.parent.name != COMMON)


def unknown_image(name: str) -> str | None:
    """None when ``name`` is a drill image, else why not, listing the images there are."""
    names = image_names()
    if name in names:
        return None
    hosts = docker_dir() / "hosts"
    have = ", ".join(names) or "none"
    return f"unknown drill image {name!r}: no {hosts}/{name}/Dockerfile (images: {have})"


def build_ca_bundle() -> Path | None:
    """The extra CA bundle chosen by ``DRKIT_BUILD_CA`` (see the module doc), or None.

    Raises ``UsageError`` when it names a file that does not exist.
    """
    value = os.environ.get(CA_ENV)
    if value is None:
        return SYSTEM_CA if SYSTEM_CA.is_file() else None
    if value.strip().lower() in ("", "none"):
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"{CA_ENV}={value}: no such file (a PEM CA bundle, or 'none')")
    return path


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False, timeout=30).returncode == 0


def image_size(tag: str) -> int:
    """Size in bytes of an image (its layers as the engine counts them)."""
    done = docker("image", "inspect", "--format", "{{.Size}}", tag, what=f"inspect image {tag}")
    return int(done.stdout.decode().strip())


def choose_base_source(*, pull_timeout: float = PULL_TIMEOUT) -> BaseChoice:
    """How to make the base image, by ``DRKIT_BASE_IMAGE_SOURCE`` and probing (module doc).

    Raises ``UsageError`` for an unknown setting, ``DockerError`` when ``registry`` is
    asked for and the pull fails, or when neither way can work here.
    """
    setting = (os.environ.get(BASE_SOURCE_ENV) or "auto").strip().lower()
    if setting not in BASE_SOURCES:
        raise UsageError(f"{BASE_SOURCE_ENV}={setting}: expected one of {', '.join(BASE_SOURCES)}")
    named = os.environ.get(REGISTRY_IMAGE_ENV, "").strip()
    image = named or DEFAULT_REGISTRY_IMAGE
    if setting == "debootstrap":
        return BaseChoice("debootstrap", f"{BASE_SOURCE_ENV}=debootstrap")
    if setting == "registry":
        problem = _pull(image, pull_timeout)
        if problem:
            raise DockerError(f"base image: {BASE_SOURCE_ENV}=registry, but {problem}")
        return BaseChoice("registry", f"{BASE_SOURCE_ENV}=registry", image)
    if image_exists(image):
        return BaseChoice("registry", f"auto: {image} is already in the engine", image)
    tag, why_not, built_before = _debootstrap_tag(), "", False
    if tag is None:
        why_not = "no Debian mirror in this machine's apt sources, DRKIT_DEBIAN_MIRROR unset"
    elif image_exists(tag):
        built_before = True
    elif shutil.which("debootstrap") is None:
        why_not = "debootstrap is not installed"
    elif os.geteuid() != 0:
        why_not = "debootstrap needs root"
    if not why_not and not named:
        known = f"{tag} was built before" if built_before else "a Debian mirror is known here"
        return BaseChoice("debootstrap", f"auto: {known}; no registry probed")
    problem = _pull(image, pull_timeout)
    if not problem:
        return BaseChoice("registry", f"auto: the probe pulled {image}", image)
    if not why_not:
        return BaseChoice("debootstrap", f"auto: the registry probe failed: {problem}")
    raise DockerError(
        f"base image: no way to make it here: {problem}, and no debootstrap ({why_not}); "
        f"see docker/README.md, 'The base image' ({BASE_SOURCE_ENV})"
    )


def _pull(image: str, timeout: float) -> str:
    """Pull ``image`` through the engine; "" when done, else why not."""
    try:
        done = docker("pull", "--quiet", image, check=False, timeout=timeout)
    except DockerError as exc:
        return f"pulling {image}: {exc}"
    if done.returncode != 0:
        return f"pulling {image} failed: {tail(done.stderr, 3)}"
    return ""


def _debootstrap_tag() -> str | None:
    """The tag ``build.sh`` would build (None when it knows no Debian mirror here)."""
    script = _base_script()
    done = subprocess.run(
        ["bash", str(script), "--tag-only"], capture_output=True, timeout=60, check=False
    )
    lines = done.stdout.decode("utf-8", "replace").split()
    return lines[-1] if done.returncode == 0 and lines else None


def _base_script() -> Path:
    script = docker_dir() / "base" / "build.sh"
    if not script.is_file():
        raise DockerError(
            f"base image: no {script}: {DOCKER_DIR_ENV} (or --docker-dir) must name a "
            "directory laid out like drkit's docker/ (base/build.sh, hosts/common/, "
            "hosts/<image>/Dockerfile); see docker/README.md"
        )
    return script


def ensure_base_image(timeout: float = BASE_BUILD_TIMEOUT) -> ImageBuild:
    """Build the Debian base image unless its tag exists, made as ``choose_base_source()``
    says. Raises ``DockerError`` (``UsageError`` for a wrong setting)."""
    ensure_engine()
    script = _base_script()
    choice = choose_base_source()
    if choice.method == "registry":
        assert choice.image is not None
        return _registry_base(script, choice, timeout)
    log_file = _log_file("base")
    started = time.monotonic()
    with open(log_file, "wb") as log:
        try:
            done = subprocess.run(
                ["bash", str(script)],
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DockerError(f"base image: {script} ran over {timeout:.0f} s") from exc
    seconds = time.monotonic() - started
    lines = done.stdout.decode("utf-8", "replace").split()
    if done.returncode != 0 or len(lines) < 2 or lines[-1] not in ("built", "cached"):
        raise DockerError(
            f"base image: {script} exited {done.returncode} (log {log_file}): "
            f"{tail(log_file.read_bytes())}"
        )
    return ImageBuild(lines[-2], lines[-1] == "built", seconds, choice.describe())


# The files build.sh writes into the root file system after debootstrap (apt and dpkg
# settings, policy-rc.d), read from the script itself so both ways agree.
_HEREDOC = re.compile(r"cat >\"\$rootfs(/[^\"]+)\" <<'EOF'\n(.*?)\nEOF\n", re.S)
_PRINTED = re.compile(r"^(?:echo (\S+)|printf '([^']*)') >\"\$rootfs(/[^\"]+)\"$", re.M)


def base_settings(script: Path) -> dict[str, str]:
    """Path -> content of each file ``build.sh`` writes into the base's root file system."""
    text = script.read_text()
    files = {path: body + "\n" for path, body in _HEREDOC.findall(text)}
    for echoed, printed, path in _PRINTED.findall(text):
        if echoed:
            files[path] = echoed + "\n"
        elif not path.startswith("/etc/apt/sources.list"):  # the registry image keeps its own
            files[path] = printed.encode().decode("unicode_escape")
    return files


def _registry_base(script: Path, choice: BaseChoice, timeout: float) -> ImageBuild:
    """``FROM`` the pulled image with build.sh's settings: ``drkit-base:r<hash>`` over
    the image's id and those settings."""
    started = time.monotonic()
    image = str(choice.image)
    done = docker("image", "inspect", "--format", "{{.Id}}", image, what=f"inspect {image}")
    image_id = done.stdout.decode().strip()
    files = base_settings(script)
    lines = [f"FROM {image}", "ENV LANG=C.UTF-8",
             f"LABEL org.drkit.kind=base org.drkit.from={image}"]  # fmt: skip
    lines += [f"COPY f{i} {path}" for i, path in enumerate(sorted(files))]
    lines += ["RUN chmod 755 /usr/sbin/policy-rc.d && rm -rf /var/lib/apt/lists/*"]
    dockerfile = "\n".join(lines) + "\n"
    digest = hashlib.sha256(f"{dockerfile}\0{image_id}".encode()).hexdigest()[:12]
    tag = f"drkit-base:r{digest}"
    with _build_lock(tag):
        if image_exists(tag):
            return ImageBuild(tag, False, time.monotonic() - started, choice.describe())
        members = {"Dockerfile": dockerfile.encode()}
        members |= {f"f{i}": files[path].encode() for i, path in enumerate(sorted(files))}
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        log_file = _log_file("base")
        built = docker("build", "--force-rm", "--tag", tag, "-", input=buffer.getvalue(),
                       check=False, timeout=timeout)  # fmt: skip
        log_file.write_bytes(built.stdout + built.stderr)
        if built.returncode != 0:
            raise DockerError(
                f"base image from {image}: docker build exited {built.returncode} "
                f"(log {log_file}): {tail(log_file.read_bytes())}"
            )
    return ImageBuild(tag, True, time.monotonic() - started, choice.describe())


def context_files(host: str) -> dict[str, Path]:
    """Build-context name -> file: ``docker/hosts/common/`` overlaid with the image's directory.

    Raises ``UsageError`` when ``host`` is not an image (``unknown_image()``).
    """
    problem = unknown_image(host)
    if problem is not None:
        raise UsageError(problem)
    hosts = docker_dir() / "hosts"
    files: dict[str, Path] = {}
    for directory in (hosts / COMMON, hosts / host):
        for path in sorted(directory.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(directory).as_posix()] = path
    files.pop(CA_NAME, None)  # always the chosen bundle, never a stray file
    files.pop(CONTAINERS_TAR, None)  # always the images built here, never a stray file
    return files


def container_dirs(host: str) -> list[Path]:
    """``docker/hosts/<host>/containers/<name>/``: one per image the host's containers
    need inside a drill with its own engine, sorted (none for most images)."""
    root = docker_dir() / "hosts" / host / CONTAINERS_DIR
    return sorted(p.parent for p in root.glob("*/Dockerfile"))


def container_image_tag(host: str, directory: Path, base_tag: str) -> str:
    """``drkit-container-<host>-<name>:<hash>`` over the directory's files and the base."""
    digest = hashlib.sha256(b"drkit container image v1\0" + base_tag.encode() + b"\0")
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        name = path.relative_to(directory).as_posix().encode()
        digest.update(name + b"\0" + executable + hashlib.sha256(path.read_bytes()).digest())
    return f"drkit-container-{host}-{directory.name}:{digest.hexdigest()[:12]}"


def ensure_container_images(
    host: str, base_tag: str, timeout: float = HOST_BUILD_TIMEOUT
) -> list[str]:
    """Build each of ``container_dirs(host)`` FROM ``base_tag`` unless its tag exists;
    their tags. Raises ``DockerError`` naming the image and the build log."""
    tags = []
    for directory in container_dirs(host):
        tag = container_image_tag(host, directory, base_tag)
        with _build_lock(tag):
            if not image_exists(tag):
                log_file = _log_file(f"{host}-{directory.name}")
                argv = ["build", "--force-rm", "--tag", tag, "--build-arg", f"BASE={base_tag}",
                        str(directory)]  # fmt: skip
                _build(argv, None, log_file, timeout, f"image {directory.name} for {host}'s "
                       f"containers ({directory})")  # fmt: skip
        tags.append(tag)
    return tags


def _build(argv: list[str], context: bytes | None, log_file: Path, timeout: float,
           what: str) -> None:  # fmt: skip
    """``docker ARGV`` (a build) with its output in ``log_file``; ``DockerError`` naming
    ``what`` and the log's tail when it fails or runs over ``timeout``."""
    with open(log_file, "wb") as log:
        try:
            done = subprocess.run(
                [docker_binary(), *argv],
                input=context,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DockerError(f"{what}: build ran over {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise DockerError(
            f"{what}: docker build exited {done.returncode} (log {log_file}): "
            f"{tail(log_file.read_bytes())}"
        )


def _saved_images(tags: list[str], directory: Path) -> Path | None:
    """``docker save`` of ``tags`` (layers they share stored once) into ``directory``."""
    if not tags:
        return None
    path = directory / CONTAINERS_TAR
    docker("save", "--output", str(path), *tags, timeout=HOST_BUILD_TIMEOUT,
           what=f"docker save {' '.join(tags)}")  # fmt: skip
    return path


def host_image_tag(host: str, base_tag: str, ca: bytes) -> str:
    """``drkit-host-<host>:<hash>`` over the context files (names, modes, contents), base and CA."""
    digest = hashlib.sha256(b"drkit host image v1\0")
    digest.update(base_tag.encode() + b"\0")
    for name, path in sorted(context_files(host).items()):
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(
            name.encode() + b"\0" + executable + hashlib.sha256(path.read_bytes()).digest()
        )
    digest.update(b"ca\0" + hashlib.sha256(ca).digest())
    return f"drkit-host-{host}:{digest.hexdigest()[:12]}"


def ensure_host_image(
    host: str,
    *,
    base_tag: str | None = None,
    ca_bundle: Path | Literal["default"] | None = "default",
    timeout: float = HOST_BUILD_TIMEOUT,
) -> ImageBuild:
    """Build ``docker/hosts/<host>/`` FROM the base image unless its tag exists.

    ``base_tag``: the base to build from (default: ``ensure_base_image()``,
    whose time is not counted here). ``ca_bundle``: the extra CA bundle,
    ``"default"`` meaning ``build_ca_bundle()``. Raises ``UsageError`` for an
    unknown host, ``DockerError`` when the build fails (with its log tail).
    """
    ensure_engine()
    if base_tag is None:
        base_tag = ensure_base_image().tag
    started = time.monotonic()
    bundle = build_ca_bundle() if ca_bundle == "default" else ca_bundle
    ca = bundle.read_bytes() if bundle is not None else b""
    tag = host_image_tag(host, base_tag, ca)
    with _build_lock(tag):
        if image_exists(tag):
            return ImageBuild(tag, False, time.monotonic() - started)
        inner = ensure_container_images(host, base_tag, timeout)
        log_file = _log_file(host)
        # No --label: the classic builder appends a step per label after the
        # big RUN, and each costs a full vfs copy; the Dockerfiles set them.
        # --force-rm: a failed step's container (a full copy too) goes as well.
        argv = ["build", "--force-rm", "--tag", tag, "--build-arg", f"BASE={base_tag}", "-"]
        with tempfile.TemporaryDirectory(dir=log_file.parent, prefix="context-") as tmp:
            saved = _saved_images(inner, Path(tmp))
            context = _context_tar(context_files(host), ca, saved)
            _build(argv, context, log_file, timeout, f"image for {host}")
    return ImageBuild(tag, True, time.monotonic() - started)


def _context_tar(files: dict[str, Path], ca: bytes, saved: Path | None = None) -> bytes:
    """The build context as a tar: fixed owners and times, so equal inputs give equal bytes;
    ``saved``: the host's container images (``docker save``), as ``containers.tar``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        if saved is not None:
            info = tarfile.TarInfo(CONTAINERS_TAR)
            info.size, info.mode, info.mtime = saved.stat().st_size, 0o644, 0
            with open(saved, "rb") as fh:
                tar.addfile(info, fh)
        members = [
            (n, p.read_bytes(), 0o755 if os.access(p, os.X_OK) else 0o644)
            for n, p in sorted(files.items())
        ]
        for name, data, mode in [*members, (CA_NAME, ca, 0o644)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _log_file(name: str) -> Path:
    path = state_dir() / "docker" / f"build-{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _build_lock(tag: str) -> Iterator[None]:
    """One build of a tag at a time on this machine (two drills starting together)."""
    path = state_dir() / "docker" / "locks" / (tag.replace(":", "_") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    """``python -m drkit.drills.images [HOST ...]``: build (or find) the base and host images."""
    parser = argparse.ArgumentParser(prog="python -m drkit.drills.images", description=main.__doc__)
    parser.add_argument("hosts", nargs="*", help="hosts (default: every docker/hosts/<host>/)")
    args = parser.parse_args(argv)
    base = ensure_base_image()
    print(_line("base", base))
    for host in args.hosts or image_names():
        print(_line(host, ensure_host_image(host, base_tag=base.tag)), flush=True)
    return 0


def _line(name: str, build: ImageBuild) -> str:
    state = "built" if build.built else "cached"
    size = image_size(build.tag) / 1e6
    return f"{name:<24} {build.tag:<52} {state:<6} {build.seconds:7.1f} s {size:7.0f} MB"


if __name__ == "__main__":
    raise SystemExit(main())
